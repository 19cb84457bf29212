"""tools/time_truthfulqa.py, tools/time_bon.py and tools/time_heldout.py on the real-model experiment's smoke
config (a random-init tiny decoder, the real TruthfulQA and HH rows): their JSON, the packed
layouts' positions, and the two layouts' scores agreeing."""
import json

import pytest

from tools import time_bon, time_heldout, time_truthfulqa

SMOKE = "experiments/configs/real_model.py:proxy,smoke"


def test_time_truthfulqa_counts_both_layouts(shared_data, monkeypatch, tmp_path):
    out = tmp_path / "tqa.json"
    monkeypatch.setattr("sys.argv", ["time_truthfulqa.py", "--config", SMOKE, "--items", "3", "--out", str(out)])
    time_truthfulqa.main()
    result = json.loads(out.read_text())
    assert result["items"] == 3 and list(result["formats"]) == ["qa_primer"]
    fmt = result["formats"]["qa_primer"]
    p = fmt["positions"]
    # the ~200-token primer once per question instead of once per answer
    assert p["real"] <= p["padded"] and p["packed"] < p["real"] / 2
    assert len(fmt["logprobs"]) == 3 and 0.0 <= fmt["mc2"] <= 1.0 and fmt["seconds"] > 0


def test_time_bon_gives_the_padded_scores_and_times_decoding(shared_data, monkeypatch, tmp_path):
    out = tmp_path / "bon.json"
    monkeypatch.setattr("sys.argv", ["time_bon.py", "--config", SMOKE, "--prompts", "2", "--samples", "4",
                                     "--decode_rows", "3", "--out", str(out)])
    time_bon.main()
    result = json.loads(out.read_text())
    assert (result["prompts"], result["samples"]) == (2, 4)
    assert set(result["layouts"]) == {"padded", "packed"} and result["speedup"] > 0
    # the same float32 scores from rows of another length: rounding of values of size ~1
    assert result["max_abs_score_difference"] <= 1e-5 * max(1.0, result["score_spread"])
    assert result["score_spread"] > 0
    decode = result["decode"]["3"]  # 3 rows from 2 prompts: 2 copies each, 4 rows sampled
    assert decode["rows"] == 4 and decode["new_tokens"] == 6 and decode["seconds_per_token"] > 0


def test_time_heldout_gives_one_loss_in_both_layouts(shared_data, monkeypatch, tmp_path):
    out = tmp_path / "heldout.json"
    monkeypatch.setattr("sys.argv", ["time_heldout.py", "--config", SMOKE, "--rows", "12", "--out", str(out)])
    time_heldout.main()
    result = json.loads(out.read_text())
    assert (result["rows"], result["batch_size"], result["max_len"]) == (12, 8, 64)
    layouts = result["layouts"]
    assert set(layouts) == {"padded", "cut"} and all(v["seconds"] > 0 for v in layouts.values())
    # the same token sums from batches of another width and row order: float32 rounding over ~700 tokens
    assert result["val_loss_relative_difference"] <= 1e-5 and layouts["padded"]["val_loss"] > 0

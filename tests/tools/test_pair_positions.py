"""tools/pair_positions.py: positions per pair under each layout, against hand counts."""
import json

import numpy as np
import pytest

from tools import pair_positions as pp


def _pairs(lengths, prompts, T=8):
    """mask / loss_mask [N, 2, T] of pairs with these sequence lengths and prompt lengths."""
    n = len(lengths)
    mask, loss = np.zeros((n, 2, T), np.int32), np.zeros((n, 2, T), np.int32)
    for i, ((a, b), p) in enumerate(zip(lengths, prompts)):
        for j, length in enumerate((a, b)):
            mask[i, j, :length] = 1
            loss[i, j, p:length] = 1
    return {"tokens": np.zeros_like(mask), "mask": mask, "loss_mask": loss}


LENGTHS, PROMPTS = [(5, 7), (3, 4), (8, 6), (2, 2)], [3, 1, 4, 1]


def test_each_layout_counts_what_it_computes():
    out = pp.positions(_pairs(LENGTHS, PROMPTS), max_len=8, batch_size=4, epochs=2)
    per_pair = out["positions_per_pair"]
    assert per_pair["padded"] == 16.0
    assert per_pair["real"] == pytest.approx((12 + 7 + 14 + 4) / 4)
    # the prompt once: (5 + 7 - 3), (3 + 4 - 1), (8 + 6 - 4), (2 + 2 - 1)
    assert per_pair["shared_prompt"] == pytest.approx((9 + 6 + 10 + 3) / 4)
    assert per_pair["batch_longest"] == 16.0  # one batch of every pair: its longest sequence is 8
    assert out["mean_prompt"] == pytest.approx(9 / 4)
    assert out["mean_response"] == pytest.approx(((2 + 4) + (2 + 3) + (4 + 2) + (1 + 1)) / 8)
    assert out["share_of_padded"]["real"] == pytest.approx(37 / 4 / 16)
    # rm.pack's rows of 16: largest first, 10 then 6 fill one row, 9 and 3 share the second
    assert out["packed_rows_per_batch"] == {"2": 2}
    assert per_pair["packed"] == 2 * 16 / 4


def test_batches_of_one_pad_each_pair_to_its_longer_sequence():
    out = pp.positions(_pairs(LENGTHS, PROMPTS), max_len=8, batch_size=1, epochs=3)
    assert out["positions_per_pair"]["batch_longest"] == pytest.approx(2 * (7 + 4 + 8 + 2) / 4)
    assert out["packed_rows_per_batch"] == {"1": 12} and out["positions_per_pair"]["packed"] == 16


def test_the_real_model_smoke_config(shared_data, monkeypatch, tmp_path):
    # the smoke size's 32 proxy pairs of HH-RLHF, cut at 64 tokens, in batches of 8
    out = tmp_path / "positions.json"
    monkeypatch.setattr("sys.argv", ["pair_positions.py", "--config", "experiments/configs/real_model.py:proxy,smoke",
                                     "--out", str(out)])
    pp.main()
    result = json.loads(out.read_text())
    per_pair = result["positions_per_pair"]
    assert (result["pairs"], result["batch_size"], result["max_len"]) == (32, 8, 64)
    assert per_pair["shared_prompt"] < per_pair["real"] <= per_pair["batch_longest"] <= per_pair["padded"] == 128
    assert per_pair["shared_prompt"] <= per_pair["packed"] <= per_pair["padded"]
    assert per_pair["real"] - per_pair["shared_prompt"] == pytest.approx(result["mean_prompt"])


def test_the_task_world_is_refused(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pair_positions.py", "--config", "configs/instructgpt.py:tiny"])
    with pytest.raises(SystemExit, match="task world"):
        pp.main()

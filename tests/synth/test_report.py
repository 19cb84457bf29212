"""The diversity report's numbers on a hand-made set."""
import json

import pytest

from rlhf_jax.synth.io import write_jsonl
from rlhf_jax.synth.report import build_report, instruction_kind, verb_object, write_report

RECORDS = [
    {"prompt": "Write a poem about the sea.", "completion": "Waves roll in.",
     "instruction": "Write a poem about the sea.", "input": ""},
    {"prompt": "What is the capital of France?", "completion": "Paris.",
     "instruction": "What is the capital of France?", "input": ""},
    {"prompt": "Please list three fruits.\n\nfor a salad", "completion": "Apple, pear, plum and fig.",
     "instruction": "Please list three fruits.", "input": "for a salad"},
]
REJECTED = [{"reason": "malformed"}, {"reason": "rouge_similar"}, {"reason": "rouge_similar"}]
SEEDS = ["Write a poem about the sea."]


def test_verb_object_heuristic():
    assert verb_object("Write a short story about a dragon.") == ("write", "story")
    assert verb_object("Please list three fruits.") == ("list", "fruits")
    assert verb_object("Can you give me some examples of verbs?") == ("give", "examples")
    assert verb_object("What is the capital of France?") == (None, None)
    assert verb_object("Summarize.") == ("summarize", None)
    assert verb_object("Find the smallest and largest number.") == ("find", "smallest")
    assert verb_object("Compare apples and oranges.") == ("compare", "apples")
    assert verb_object("The sentence is long.") == (None, None) and instruction_kind("The sentence is long.") == "other"
    assert instruction_kind("Could you tell me why?") == "imperative"  # "could you" is dropped: "tell me why"
    assert instruction_kind("Why is the sky blue?") == "question"


def test_report_counts_lengths_verbs_and_overlap():
    rep = build_report(RECORDS, REJECTED, SEEDS)
    assert rep["counts"] == {"candidates": 6, "kept": 3, "rejected": {"malformed": 1, "rouge_similar": 2},
                             "kept_fraction": 0.5, "kept_output_cut_at_token_limit": 0}
    # instruction lengths 6, 6, 4 words; outputs 3, 1, 5 words (means rounded to 3 decimals)
    li, lo = rep["lengths"]["instruction_words"], rep["lengths"]["output_words"]
    assert li["n"] == 3 and li["mean"] == pytest.approx(16 / 3, abs=5e-4) and li["max"] == 6
    assert sum(li["counts"]) == 3 and lo["mean"] == pytest.approx(3.0)
    assert rep["lengths"]["input_words"]["mean"] == pytest.approx(1.0)
    vo = rep["verb_object"]
    assert vo["questions"] == 1 and vo["other"] == 0 and vo["distinct_verbs"] == 2 and vo["distinct_verb_object"] == 2
    assert {v["verb"]: v["objects"] for v in vo["top_verbs"]} == {"write": {"poem": 1}, "list": {"fruits": 1}}
    # max ROUGE-L to the seed: 1.0 (the seed itself); 1/6 ("the" shared of 6 and 6 tokens); 0
    r = rep["rouge_l_to_seeds"]
    assert r["counts"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert r["mean"] == pytest.approx((1 + 1 / 6) / 3, abs=5e-4)
    assert [e["prompt"] for e in rep["examples"]] == [r["prompt"] for r in RECORDS]  # all 3 of at most 10
    assert len(build_report(RECORDS, REJECTED, SEEDS, n_examples=2)["examples"]) == 2


def test_report_refuses_files_of_another_run():
    with pytest.raises(ValueError, match="hold 6 candidates, the run counted 7"):
        build_report(RECORDS, REJECTED, SEEDS, run={"counts": {"candidates": 7}})


def test_write_report_json_and_png(tmp_path):
    write_jsonl(tmp_path / "records.jsonl", RECORDS)
    write_jsonl(tmp_path / "rejected.jsonl", REJECTED)
    rep = write_report(tmp_path, SEEDS, title="hand-made")
    assert json.loads((tmp_path / "report.json").read_text())["counts"] == rep["counts"]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

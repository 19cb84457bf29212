"""Curation: duplicates, PII, filters, hash splits, conversions, and the CLI on a real file."""
import collections
import json
import subprocess
import sys

import pytest

from rlhf_jax.data import curate as C

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def pair(prompt, chosen="yes it is", rejected="no it is not"):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_exact_and_near_duplicates():
    base = "the quick brown fox jumps over the lazy dog near the river bank on a sunny day in june"
    records = [pair(base), pair("  THE quick brown fox jumps over the lazy dog near the river bank on a sunny day "
                                "in june"), pair(base.replace("june", "july")), pair("an unrelated question about tax")]
    kept, n_exact = C.exact_dedup(records)
    assert n_exact == 1 and len(kept) == 3
    kept2, n_near = C.near_dedup(kept, C.CurateConfig(near_dup_threshold=0.6))
    assert n_near == 1 and [r["prompt"] for r in kept2] == [base, "an unrelated question about tax"]
    strict, n = C.near_dedup(kept, C.CurateConfig(near_dup_threshold=0.99))
    assert n == 0 and len(strict) == 3


def test_lsh_dedup_equals_exhaustive_exact_jaccard():
    """datasketch's LSH finds every pair the all-pairs exact-Jaccard scan finds, on texts with
    near-copies with 2, 9 or 20 of 120 words changed (shingle Jaccard 0.84-0.90, 0.44-0.61 and
    0.18-0.32: only the first are duplicates at threshold 0.8)."""
    import numpy as np
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    texts = [list(rng.choice(vocab, 120)) for _ in range(150)]
    for src in range(0, 150, 3):  # edit 2, 9 or 20 words in a copy of every third text
        for n_edits in (2, 9, 20):
            copy = list(texts[src])
            for pos in rng.choice(120, n_edits, replace=False):
                copy[pos] = f"new{rng.integers(1e9)}"
            texts.append(copy)
    records = [{"text": " ".join(t)} for t in texts]
    cfg = C.CurateConfig(near_dup_threshold=0.8)
    hashes = [C.shingle_hashes(r["text"], cfg) for r in records]
    exhaustive = []
    for i, h in enumerate(hashes):
        if all(C.jaccard(hashes[j], h) < 0.8 for j in exhaustive):
            exhaustive.append(i)
    kept, n = C.near_dedup(records, cfg)
    assert [records.index(r) for r in kept] == exhaustive
    assert n == len(records) - len(exhaustive) == 50  # exactly the 2-word edits


def test_minhash_estimates_jaccard():
    cfg = C.CurateConfig(num_perm=256, bands=16, shingle=1)
    a = " ".join(f"w{i}" for i in range(100))
    b = " ".join(f"w{i}" for i in range(50, 150))  # Jaccard 50/150 = 1/3
    est = float((C.minhash(a, cfg) == C.minhash(b, cfg)).mean())
    assert abs(est - 1 / 3) < 0.08


def test_pii_is_scrubbed_and_counted():
    counts = collections.Counter()
    text = ("Mail jane.doe@example.com or call (555) 123-4567 / +1 555-987-6543. Server 192.168.1.20. "
            "Card 4111 1111 1111 1111, order 1234 5678 9012 3456, year 2023, version 1.2.3.")
    out = C.scrub_text(text, counts)
    assert out == ("Mail [EMAIL] or call [PHONE] / [PHONE]. Server [IP]. "
                   "Card [CARD], order 1234 5678 9012 3456, year 2023, version 1.2.3.")
    assert counts == {"email": 1, "phone": 2, "ip": 1, "card": 1}


def test_filters_and_english_score():
    cfg = C.CurateConfig(min_chars=10, max_chars=200)
    assert C.keep_record(pair("hi", "a", "b"), cfg) == "too_short"
    assert C.keep_record(pair("what is the capital of France?", "It is Paris.", "Rome."), cfg) is None
    assert C.keep_record(pair("Quelle est la capitale de la France ?", "Paris.", "Rome."), cfg) == "not_english"
    assert C.keep_record(pair("x" * 300), cfg) == "too_long"


def test_language_filter_on_real_english_and_hand_written_other_languages(shared_data):
    """lingua keeps Alpaca's English and drops all 60 sentences in 15 other languages, which the
    function-word heuristic it replaced let 16 of through (tools/benchmark_language.py)."""
    from rlhf_jax.data.sources import iter_rows
    from rlhf_jax.data.language_samples import NON_ENGLISH
    cfg = C.CurateConfig()
    rows = [row for _, row in iter_rows(shared_data / "alpaca_5000.json.gz")][:300]
    english = [{"prompt": r["instruction"] + "\n" + r["input"], "completion": r["output"]} for r in rows]
    kept = sum(C.keep_record(r, cfg) is None for r in english)
    assert kept >= 0.98 * len(english), kept
    assert [C.keep_record({"prompt": text, "completion": "Ok."}, cfg) for _, text in NON_ENGLISH] == \
        ["not_english"] * len(NON_ENGLISH)
    assert C.detect_language(NON_ENGLISH[0][1]) == "fr" and C.detect_language("你好，世界。今天天气很好。") == "zh"
    assert C.keep_record({"prompt": NON_ENGLISH[4][1], "completion": "Gut."}, C.CurateConfig(language="de")) is None
    with pytest.raises(ValueError, match="not an ISO 639-1 code"):
        C.CurateConfig(language="english")


def test_splits_are_deterministic_and_keep_prompts_together():
    cfg = C.CurateConfig(near_dup_threshold=None, language=None)
    records = [pair(f"question number {i % 40}", f"answer {i}", f"bad {i}") for i in range(200)]
    splits, counts = C.curate(records, cfg)
    where = {}
    for name, rows in splits.items():
        for r in rows:
            assert where.setdefault(r["prompt"], name) == name
    assert counts["output"]["train"] > counts["output"]["test"] > 0
    again, _ = C.curate(records, cfg)
    assert again == splits


def test_conversions():
    ranking = {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 0, 1]}
    assert C.convert([ranking], "ranking", "pair") == [
        {"prompt": "p", "chosen": "b", "rejected": "a"}, {"prompt": "p", "chosen": "b", "rejected": "c"}]
    assert C.convert([pair("p", "a", "b")], "pair", "ranking") == [{"prompt": "p", "responses": ["a", "b"],
                                                                    "ranks": [0, 1]}]
    mixed = C.convert([pair("q", "a", "b"), ranking], "preference", "pair")  # each as the kind it is
    assert mixed == [pair("q", "a", "b"), {"prompt": "p", "chosen": "b", "rejected": "a"},
                     {"prompt": "p", "chosen": "b", "rejected": "c"}]
    chat = C.convert([{"prompt": "hi", "completion": "yo"}], "sft", "chat")
    assert chat == [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    with pytest.raises(ValueError, match="no conversion from 'text' to 'pair'"):
        C.convert([{"text": "x"}], "text", "pair")


def test_cli_on_real_hh_file(shared_data, tmp_path):
    env = dict(__import__("os").environ, RLHF_JAX_DATA_DIR=str(shared_data))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "curate.py"), "run", "hh_rlhf", "--out",
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["load"]["kept"] == 1992 and report["load"]["skipped"] == {"empty_chosen": 4, "prompt_mismatch": 4}
    assert report["counts"]["pii_scrubbed"] == {"email": 7, "card": 0, "ip": 0, "phone": 10}
    assert sum(report["counts"]["output"].values()) == 1992
    lines = sum(1 for name in ("train", "validation", "test") for _ in open(tmp_path / f"{name}.jsonl"))
    assert lines == 1992 and (tmp_path / "report.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "curate.py"), "run", str(tmp_path / "nope.jsonl"),
                          "--kind", "pair", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr

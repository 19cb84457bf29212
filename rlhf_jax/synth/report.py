"""The diversity and quality report of a generated set: DIR/report.json and DIR/report.png.

- counts: candidates, kept, and rejected per filter or elimination rule (kept + rejected == candidates,
  checked), per round;
- lengths (words) of the kept instructions (prompts), inputs and outputs: summary and histogram;
- root verb / direct object of the kept instructions. No parser runs offline here (nltk's tagger data
  is not installed), so a small dependency-free heuristic stands in for the paper's Berkeley parser:
  drop leading politeness words ("please", "can you", "i want you to", ...); an instruction that then
  starts with a wh-word or an auxiliary ("what", "how", "is", "does", ...) is a question, one that
  starts with a determiner, pronoun, preposition or conjunction ("the", "i", "in", "if", ...) is
  `other` (a statement, not an imperative); neither has a root verb. Otherwise the verb is its first
  word, and the object is the next word that is not a determiner, pronoun, preposition, conjunction or
  one of a few common adjectives (`_SKIP`). It misreads nouns used as the first word ("Sentence: ...")
  and phrasal objects; it is a coarse view, named `heuristic` in the JSON;
- ROUGE-L overlap with the seed pool: each kept instruction's highest ROUGE-L F against the seed
  instructions (Self-Instruct's Figure 3), histogram over [0, 1] in bins of 0.1;
- `examples`: `n_examples` kept records drawn at random (random.Random(0)), to read.
"""
from __future__ import annotations

import collections
import json
import random
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlhf_jax.synth.filters import RougePool, words

POLITE = ("please", "kindly", "now", "also", "then", "can you", "could you", "would you", "will you",
          "i want you to", "i need you to", "i would like you to", "i'd like you to", "help me", "let's", "let us")
WH = frozenset("what how why which who whom whose where when is are was were do does did can could would should "
               "will shall may might am has have had".split())
_SKIP = frozenset("a an the this that these those some any each every all your my our their his her its me us "
                  "them him it you one two three few several many more new short brief simple good list of for to "
                  "in on about with from by into up out down following given next first best most interesting "
                  "possible different creative detailed and or but that which".split())
# words that cannot start an imperative ("list" can: "List three fruits")
NOT_VERB = (_SKIP - {"list"}) | frozenset("i we he she they there here if as at so because while after before since "
                                          "though although unless whether i'm i'd i'll it's here's there's "
                                          "sure yes no".split())
HEURISTIC = ("first-word verb / next non-determiner word object, after politeness words; a wh-word or auxiliary "
             "first = question, a determiner / pronoun / preposition / conjunction first = other")


def instruction_kind(instruction: str) -> str:
    """'question', 'other' or 'imperative' (see the module docstring)."""
    ws = _strip_polite(instruction).split()
    if not ws or ws[0] in WH:
        return "question"
    return "other" if ws[0] in NOT_VERB else "imperative"


def _strip_polite(instruction: str) -> str:
    text = " " + " ".join(re.findall(r"[a-z']+", instruction.lower())) + " "
    changed = True
    while changed:
        changed = False
        for p in POLITE:
            if text.startswith(f" {p} "):
                text, changed = text[len(p) + 1:], True
    return text


def verb_object(instruction: str) -> tuple[str | None, str | None]:
    """(root verb, direct object) by the heuristic of the module docstring; (None, None) for a question
    or another non-imperative, (verb, None) when no object word follows."""
    if instruction_kind(instruction) != "imperative":
        return None, None
    ws = _strip_polite(instruction).split()
    obj = next((w for w in ws[1:] if w not in _SKIP and not w.endswith("ly")), None)
    return ws[0], obj


def histogram(values: Sequence[float], bins) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    counts, edges = np.histogram(v, bins=bins)
    out: dict[str, Any] = {"n": int(len(v)), "counts": counts.tolist(),
                           "bin_edges": [round(float(e), 3) for e in edges]}
    if len(v):
        out.update(mean=round(float(v.mean()), 3), p50=float(np.percentile(v, 50)), max=float(v.max()))
    return out


def _length_bins(values: Sequence[int]):
    top = max([10, *values])
    return np.linspace(0, top, 21) if top > 40 else np.arange(0, top + 3, 2)


def instruction_of(record: dict) -> str:
    """The instruction of a kept record (Self-Instruct keeps it apart from the input; Evol's is the prompt)."""
    return record.get("instruction") or record["prompt"]


def build_report(records: list[dict], rejected: list[dict], seed_instructions: Sequence[str],
                 run: dict | None = None, top: int = 20, n_examples: int = 10) -> dict[str, Any]:
    """The report as a dict (see the module docstring)."""
    by = collections.Counter(r["reason"] for r in rejected)
    counts = {"candidates": len(records) + len(rejected), "kept": len(records), "rejected": dict(sorted(by.items()))}
    counts["kept_fraction"] = round(len(records) / counts["candidates"], 4) if counts["candidates"] else 0.0
    counts["kept_output_cut_at_token_limit"] = sum(bool(r.get("cut_at_token_limit")) for r in records)
    if run and "counts" in run and run["counts"].get("candidates") != counts["candidates"]:
        raise ValueError(f"records + rejected hold {counts['candidates']} candidates, the run counted "
                         f"{run['counts']['candidates']}: files from different runs?")
    instr = [instruction_of(r) for r in records]
    lengths = {
        "instruction_words": histogram([len(words(t)) for t in instr], _length_bins([len(words(t)) for t in instr])),
        "input_words": histogram([len(words(r.get("input", ""))) for r in records],
                                 _length_bins([len(words(r.get("input", ""))) for r in records])),
        "output_words": histogram([len(words(r["completion"])) for r in records],
                                  _length_bins([len(words(r["completion"])) for r in records])),
    }
    pairs = [verb_object(t) for t in instr]
    verbs = collections.Counter(v for v, _ in pairs if v)
    objects = {v: collections.Counter(o for vv, o in pairs if vv == v and o).most_common(4)
               for v, _ in verbs.most_common(top)}
    kinds = collections.Counter(instruction_kind(t) for t in instr)
    diversity = {"heuristic": HEURISTIC, "questions": kinds["question"], "other": kinds["other"],
                 "distinct_verbs": len(verbs), "distinct_verb_object": len({p for p in pairs if p[0] and p[1]}),
                 "top_verbs": [{"verb": v, "n": n, "objects": dict(objects[v])} for v, n in verbs.most_common(top)]}
    seeds = RougePool(seed_instructions)
    overlap = [seeds.max_score(t)[0] for t in instr]
    picked = random.Random(0).sample(range(len(records)), min(n_examples, len(records)))
    examples = [{k: records[i][k] for k in ("id", "prompt", "completion", "provenance") if k in records[i]}
                for i in sorted(picked)]
    out = {"counts": counts, "lengths": lengths, "verb_object": diversity,
           "rouge_l_to_seeds": histogram(overlap, np.linspace(0, 1, 11)), "examples": examples}
    if run:
        out["run"] = {k: run[k] for k in ("method", "model", "seconds", "rounds", "generator", "command") if k in run}
        if "rounds" in run and run["rounds"]:
            out["counts"]["per_round"] = run["rounds"]
    return out


def plot_report(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """A 2x2 figure: counts per reason, instruction lengths, top root verbs, ROUGE-L to the seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    c = report["counts"]
    names = ["kept"] + list(c["rejected"])
    colors = ["tab:green"] + ["tab:red"] * len(c["rejected"])
    ax[0, 0].barh(names[::-1], ([c["kept"]] + list(c["rejected"].values()))[::-1], color=colors[::-1])
    ax[0, 0].set_title(f"{c['candidates']} candidates: kept and rejected per reason")
    for name, h in (("instruction_words", "instruction"), ("output_words", "output")):
        hist = report["lengths"][name]
        if hist["n"]:
            edges = np.asarray(hist["bin_edges"])
            ax[0, 1].stairs(hist["counts"], edges, label=h, fill=False)
    ax[0, 1].set_xlabel("words")
    ax[0, 1].set_title("lengths of kept instructions and outputs")
    if any(report["lengths"][k]["n"] for k in ("instruction_words", "output_words")):
        ax[0, 1].legend()
    top = report["verb_object"]["top_verbs"][:15]
    ax[1, 0].barh([t["verb"] for t in top][::-1], [t["n"] for t in top][::-1])
    for i, t in enumerate(top[::-1]):
        obj = ", ".join(list(t["objects"])[:3])
        ax[1, 0].text(t["n"], i, f" {obj}", va="center", fontsize=7)
    vo = report["verb_object"]
    ax[1, 0].set_title(f"root verbs (objects), heuristic; {vo['questions']} questions, {vo.get('other', 0)} other")
    r = report["rouge_l_to_seeds"]
    ax[1, 1].stairs(r["counts"], np.asarray(r["bin_edges"]), fill=True)
    ax[1, 1].set_xlabel("max ROUGE-L F to an instruction of the input pool (seeds, or the evolved inputs)")
    ax[1, 1].set_title("overlap with the input pool")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(directory: str | Path, seed_instructions: Sequence[str], title: str = "") -> dict[str, Any]:
    """Read DIR/records.jsonl, DIR/rejected.jsonl (and DIR/run.json), write DIR/report.json and
    DIR/report.png; returns the report."""
    from rlhf_jax.synth.io import read_jsonl
    d = Path(directory)
    run = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else None
    report = build_report(read_jsonl(d / "records.jsonl") if (d / "records.jsonl").stat().st_size else [],
                          read_jsonl(d / "rejected.jsonl") if (d / "rejected.jsonl").stat().st_size else [],
                          seed_instructions, run)
    (d / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_report(report, d / "report.png", title)
    return report

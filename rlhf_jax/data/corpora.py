"""Readers for the standard datasets, each turned into canonical records (see records.py).

Files are looked up in `data_dir` (default: $RLHF_JAX_DATA_DIR). Each reader returns
(records, LoadReport) and takes the same `policy` switch as `read_records`.

| reader            | file                                   | records |
|-------------------|----------------------------------------|---------|
| hh_rlhf           | hh_rlhf_harmless_base_test.jsonl.gz    | pair (prompt = dialogue up to the last "Assistant:") |
| oasst_rankings    | oasst_en_100_trees.jsonl.gz            | ranking (sibling replies; prompt = chat history) |
| oasst_sft         | oasst_en_100_trees.jsonl.gz            | sft chat along top-ranked paths |
| alpaca            | alpaca_5000.json.gz                    | sft prompt/completion, Stanford template |
| qa_feedback       | qa_feedback_dev.json.gz                | fine_grained (+ pair via `qa_feedback_pairs`) |
| imdb_prompts      | imdb/{split}.jsonl.gz                  | prompt: review prefixes of 2-8 GPT-2 tokens, with label |
| alpaca_eval       | alpaca_eval_reference_davinci003.json  | prompt with reference output |
| truthfulqa        | truthfulqa.csv                         | multiple-choice items |
| tiny_shakespeare / imdb_unsup | tinyshakespeare.txt, imdb/unsup.jsonl.gz | text |
| imdb_reviews, imdb_sft, imdb_prefixes | imdb/{train,test}.jsonl.gz | see rlhf_jax.data.imdb |
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_jax.data import imdb
from rlhf_jax.data.records import FieldError, LoadReport
from rlhf_jax.data.sources import iter_rows, validate_rows
from rlhf_jax.data.tokenize import gpt2_tokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.paths import data_file

ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
HH_ASSISTANT = "\n\nAssistant:"


def split_hh(dialogue: str) -> tuple[str, str]:
    """(prompt ending in 'Assistant:', final reply) of an HH-RLHF dialogue."""
    cut = dialogue.rfind(HH_ASSISTANT)
    if cut < 0:
        raise FieldError("chosen", "has no '\\n\\nAssistant:' turn", reason="no_assistant_turn")
    cut += len(HH_ASSISTANT)
    return dialogue[:cut], dialogue[cut:].strip()


HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class ReaderArgumentError(UserError):
    """A reader refuses the value of one of its arguments (the caller names the spec)."""


HH_FORMS = ("transcript", "chat")


def hh_messages(prompt: str) -> list[dict]:
    """The turns of an HH prompt ("\n\nHuman: ... \n\nAssistant:") as chat messages (Human ->
    user, Assistant -> assistant), the final empty Assistant turn left for the generation prompt."""
    parts = HH_TURN.split(prompt)
    if parts[0].strip():
        raise FieldError("chosen", "has text before its first '\\n\\nHuman:' turn", reason="text_before_first_turn")
    turns = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
             for who, text in zip(parts[1::2], parts[2::2])]
    if turns[-1] != {"role": "assistant", "content": ""}:  # split_hh cut the prompt after its last "Assistant:"
        raise FieldError("chosen", "its prompt does not end in an empty Assistant turn", reason="no_assistant_turn")
    return turns[:-1]


def _hh_row(row, form: str = "transcript") -> dict:
    for field in ("chosen", "rejected"):
        if not isinstance(row.get(field), str):
            raise FieldError(field, "missing or not a string", reason="missing_" + field)
    prompt, chosen = split_hh(row["chosen"])
    prompt_r, rejected = split_hh(row["rejected"])
    if prompt != prompt_r:
        raise FieldError("rejected", "its dialogue differs from chosen before the final reply",
                         reason="prompt_mismatch")
    return {"prompt": hh_messages(prompt) if form == "chat" else prompt, "chosen": chosen, "rejected": rejected}


def hh_rlhf(data_dir=None, *, policy: str = "error", name: str = "hh_rlhf_harmless_base_test.jsonl.gz",
            form: str = "transcript"):
    """HH-RLHF pairs. form="transcript": the prompt is the dialogue text up to its last
    "Assistant:" (as the dataset stores it); form="chat": the same turns as chat messages, which a
    chat model reads in its own template ("corpus:hh_rlhf?form=chat"). Both keep the same rows."""
    if form not in HH_FORMS:
        raise ReaderArgumentError(f"hh_rlhf: form={form!r} is not one of {list(HH_FORMS)}")
    path = data_file(name, data_dir)
    return validate_rows(iter_rows(path), "pair", str(path), policy=policy, transform=lambda r: _hh_row(r, form))


def _oasst_walk(node: dict, history: list[dict], out_rank: list, out_sft: list, on_top_path: bool) -> None:
    role = "user" if node["role"] == "prompter" else "assistant"
    history = history + [{"role": role, "content": node["text"]}]
    replies = [r for r in node.get("replies", []) if not r.get("deleted")]
    if role == "user":
        ranked = [r for r in replies if r.get("rank") is not None]
        if len(ranked) >= 2:
            out_rank.append({"prompt": history, "responses": [r["text"] for r in ranked],
                             "ranks": [int(r["rank"]) for r in ranked], "_id": node.get("message_id")})
        best = min(ranked, key=lambda r: r["rank"]) if ranked else (replies[0] if len(replies) == 1 else None)
        for r in replies:
            _oasst_walk(r, history, out_rank, out_sft, on_top_path and r is best)
    else:
        if on_top_path and not any(r["role"] == "prompter" and r.get("replies") for r in replies):
            out_sft.append({"messages": history})  # end of a top-ranked path
        for r in replies:
            _oasst_walk(r, history, out_rank, out_sft, on_top_path)


def _oasst(data_dir, name):
    path = data_file(name, data_dir)
    rankings, sft = [], []
    for line, tree in iter_rows(path):
        if isinstance(tree, Exception):
            raise tree
        _oasst_walk(tree["prompt"], [], rankings, sft, True)
    return path, rankings, sft


def oasst_rankings(data_dir=None, *, policy: str = "error", name: str = "oasst_en_100_trees.jsonl.gz"):
    """K-wise rankings of sibling assistant replies (0 = best), prompt = chat history."""
    path, rankings, _ = _oasst(data_dir, name)
    return validate_rows(((f"node {r['_id']}", r) for r in rankings), "ranking", str(path), policy=policy)


def oasst_sft(data_dir=None, *, policy: str = "error", name: str = "oasst_en_100_trees.jsonl.gz"):
    """Chat SFT examples along top-ranked paths (the rank-0 reply at every branching)."""
    path, _, sft = _oasst(data_dir, name)
    return validate_rows(((f"path {i}", r) for i, r in enumerate(sft)), "sft", str(path), policy=policy)


def _alpaca_row(row) -> dict:
    instruction, inp = row.get("instruction"), row.get("input") or ""
    if not isinstance(instruction, str):
        raise FieldError("instruction", "missing or not a string", reason="missing_instruction")
    template = ALPACA_WITH_INPUT if inp.strip() else ALPACA_NO_INPUT
    return {"prompt": template.format(instruction=instruction, input=inp), "completion": row.get("output")}


def alpaca(data_dir=None, *, policy: str = "error", name: str = "alpaca_5000.json.gz"):
    path = data_file(name, data_dir)
    return validate_rows(iter_rows(path), "sft", str(path), policy=policy, transform=_alpaca_row)


def _qa_prompt(row) -> str:
    passages = " ".join(f"wikipage: {p[0]} text: {' '.join(p[1:])}" for p in row.get("passages", []))
    return f"question: {row['question']} context: {passages}"


def _as_obj(value):
    return ast.literal_eval(value) if isinstance(value, str) else value


def _qa_row(row) -> dict:
    feedback = _as_obj(row.get("feedback")) or {}
    spans = [{"start": e["start"], "end": e["end"], "category": e["error type"]}
             for e in feedback.get("errors", [])]
    return {"prompt": _qa_prompt(row), "response": row.get("prediction 1"), "spans": spans}


def qa_feedback(data_dir=None, *, policy: str = "error", name: str = "qa_feedback_dev.json.gz"):
    """Fine-grained records: prediction 1 with its labelled error spans (character offsets)."""
    path = data_file(name, data_dir)
    return validate_rows(iter_rows(path), "fine_grained", str(path), policy=policy, transform=_qa_row)


QA_PAIRS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]


def qa_feedback_pairs(data_dir=None, *, policy: str = "error", name: str = "qa_feedback_dev.json.gz"):
    """Preference pairs over the 4 predictions (label 1: first better, 2: second, 0: tie -> dropped)."""
    path = data_file(name, data_dir)
    rows, ties = [], 0
    for line, row in iter_rows(path):
        if isinstance(row, Exception):
            raise row
        prefs = _as_obj(row.get("preference"))
        for (a, b), label in zip(QA_PAIRS, prefs):
            if label == 0:
                ties += 1
                continue
            win, lose = (a, b) if label == 1 else (b, a)
            rows.append((f"{line} pair {a}-{b}", {"prompt": _qa_prompt(row), "chosen": row[f"prediction {win}"],
                                                  "rejected": row[f"prediction {lose}"]}))
    records, report = validate_rows(rows, "pair", str(path), policy=policy)
    report.read += ties
    report.skipped["tie"] += ties
    report.examples.setdefault("tie", "label 0")
    return records, report


def imdb_prompts(data_dir=None, *, split: str = "test", tokenizer=None, min_tokens: int = 2, max_tokens: int = 8,
                 limit: int | None = None, seed: int = 0):
    """IMDb review prefixes of min..max GPT-2 tokens as prompts, with the label and the full text."""
    path = data_file(f"imdb/{split}.jsonl.gz", data_dir)
    tokenizer = tokenizer or gpt2_tokenizer(data_dir)
    rng = np.random.default_rng(seed)
    out, report = [], LoadReport(str(path))
    for line, row in iter_rows(path):
        if limit is not None and len(out) >= limit:
            break
        report.read += 1
        if isinstance(row, Exception):
            report.skip(row.reason or "malformed_" + row.field.strip("<>"), f"line {line}")
            continue
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            report.skip("empty_text", f"line {line}")
            continue
        ids = tokenizer.encode(text[:200])
        n = int(rng.integers(min_tokens, max_tokens + 1))
        if len(ids) < n:
            report.skip("too_short", f"line {line}")
            continue
        out.append({"prompt": tokenizer.decode(ids[:n]), "label": row.get("label"), "text": text})
    report.kept = len(out)
    return out, report


def alpaca_eval(data_dir=None, *, policy: str = "error", name: str = "alpaca_eval_reference_davinci003.json"):
    path = data_file(name, data_dir)
    return validate_rows(iter_rows(path), "prompt", str(path), policy=policy,
                         transform=lambda r: {"prompt": r.get("instruction"), "reference": r.get("output")})


def truthfulqa(data_dir=None, *, name: str = "truthfulqa.csv") -> tuple[list[dict[str, Any]], LoadReport]:
    """Multiple-choice items: question, choices (true answers first), labels (1 true, 0 false)."""
    path = data_file(name, data_dir)
    out, report = [], LoadReport(str(path))
    for line, row in iter_rows(path):
        report.read += 1
        if isinstance(row, Exception):  # a malformed CSV row (wrong cell count): named, not guessed at
            raise row
        true = [a.strip() for a in row.get("Correct Answers", "").split(";") if a.strip()]
        false = [a.strip() for a in row.get("Incorrect Answers", "").split(";") if a.strip()]
        if not row.get("Question") or not true or not false:
            report.skip("missing_answers", f"line {line}")
            continue
        out.append({"question": row["Question"], "best_answer": row.get("Best Answer", ""),
                    "choices": true + false, "labels": [1] * len(true) + [0] * len(false),
                    "category": row.get("Category", "")})
    report.kept = len(out)
    return out, report


def tiny_shakespeare(data_dir=None, *, chunk_chars: int = 1000, name: str = "tinyshakespeare.txt"):
    """Pretraining text in chunks of about `chunk_chars`, cut at line breaks."""
    path = data_file(name, data_dir)
    text = path.read_text(encoding="utf-8")
    chunks, current = [], []
    size = 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= chunk_chars:
            chunks.append("".join(current))
            current, size = [], 0
    if current and "".join(current).strip():
        chunks.append("".join(current))
    return validate_rows(((f"chunk {i}", {"text": c}) for i, c in enumerate(chunks)), "text", str(path))


def imdb_unsup(data_dir=None, *, limit: int | None = None, policy: str = "error"):
    path = data_file("imdb/unsup.jsonl.gz", data_dir)

    def rows():
        for i, (line, row) in enumerate(iter_rows(path)):
            if limit is not None and i >= limit:
                return
            yield line, row

    return validate_rows(rows(), "text", str(path), policy=policy)


READERS = {
    "hh_rlhf": hh_rlhf, "oasst_rankings": oasst_rankings, "oasst_sft": oasst_sft, "alpaca": alpaca,
    "qa_feedback": qa_feedback, "qa_feedback_pairs": qa_feedback_pairs, "imdb_prompts": imdb_prompts,
    "alpaca_eval": alpaca_eval, "truthfulqa": truthfulqa, "tiny_shakespeare": tiny_shakespeare,
    "imdb_unsup": imdb_unsup,
    **imdb.READERS,  # the IMDb sentiment readers: reviews with labels, SFT, prefixes
}


def dump_jsonl(records, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

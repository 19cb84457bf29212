"""Each reader on its real file: counts and known rows."""
import collections

import pytest

from rlhf_jax.data import corpora as C
from rlhf_jax.data.records import DataError


@pytest.fixture(autouse=True)
def _data(shared_data, monkeypatch):
    monkeypatch.setenv("RLHF_JAX_DATA_DIR", str(shared_data))


def test_hh_rlhf_splits_dialogues_and_reports_bad_rows():
    records, report = C.hh_rlhf(policy="skip")
    assert (report.read, report.kept) == (2000, 1992)
    assert report.skipped == {"prompt_mismatch": 4, "empty_chosen": 4}
    first = records[0]
    assert first["prompt"].startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert first["prompt"].endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert first["chosen"].startswith("No, sorry!  All of these involve a pen")
    assert first["rejected"].startswith("There are lots of funny things you can do with pens")
    with pytest.raises(DataError, match=r"hh_rlhf_harmless_base_test.jsonl.gz:87: field 'chosen': is empty"):
        C.hh_rlhf()


def test_hh_rlhf_as_chat_messages_keeps_every_row_and_turn():
    """form=chat: the same rows and replies, the prompt's turns as user / assistant messages that the
    `hh` template renders back to the transcript (up to whitespace around a turn's text)."""
    text, _ = C.hh_rlhf(policy="skip")
    chat, report = C.hh_rlhf(policy="skip", form="chat")
    assert report.kept == 1992 and [(r["chosen"], r["rejected"]) for r in chat] == \
        [(r["chosen"], r["rejected"]) for r in text]
    first = chat[0]["prompt"]
    assert first[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first[-1] == {"role": "user", "content": "okay some of these do not have anything to do with pens"}
    assert [m["role"] for m in first] == ["user", "assistant"] * (len(first) // 2) + ["user"]
    from rlhf_jax.data.tokenize import _render_named
    back = ["".join(t for t, _ in _render_named(r["prompt"], "hh", True)) for r in chat]
    same = [b == t["prompt"] + " " for b, t in zip(back, text)]
    assert sum(same) == 1988  # the other 4 carry spaces or newlines at the edge of a turn's text
    assert all(b.split() == (t["prompt"]).split() for b, t in zip(back, text))
    with pytest.raises(C.ReaderArgumentError, match=r"form='html' is not one of \['transcript', 'chat'\]"):
        C.hh_rlhf(form="html")


def test_oasst_rankings_and_top_paths():
    rankings, report = C.oasst_rankings()
    assert len(rankings) == 212 and report.skipped == {}
    assert sum(len(r["responses"]) for r in rankings) == 641  # every ranked reply in the 100 trees
    assert collections.Counter(len(r["responses"]) for r in rankings) == {3: 117, 2: 57, 4: 27, 6: 6, 5: 3, 9: 1,
                                                                          8: 1}
    first = rankings[0]
    assert first["prompt"] == [{"role": "user", "content": first["prompt"][0]["content"]}]
    assert first["prompt"][0]["content"].startswith("How can I find the best 401k plan for my needs?")
    assert first["ranks"] == [0, 1, 2]
    sft, _ = C.oasst_sft()
    assert len(sft) == 101 and all(r["messages"][-1]["role"] == "assistant" for r in sft)
    top = first["responses"][first["ranks"].index(0)]
    assert sft[0]["messages"][1]["content"] == top


def test_alpaca_uses_the_standard_template():
    records, report = C.alpaca(policy="skip")
    assert report.kept == 4998 and report.skipped == {"empty_completion": 2}
    assert records[0]["prompt"].startswith("Below is an instruction that describes a task, paired with an input")
    assert records[0]["prompt"].endswith("Sentence 2: I goes to the store.\n\n### Response:\n")
    assert records[0]["completion"] == "No"
    no_input = next(r for r in records if "### Input:" not in r["prompt"])
    assert no_input["prompt"].startswith("Below is an instruction that describes a task. Write a response")


def test_qa_feedback_spans_and_pairs():
    records, _ = C.qa_feedback()
    assert len(records) == 500
    assert records[0]["spans"][0] == {"start": 283, "end": 401, "category": "Irrelevant"}
    counts = collections.Counter(s["category"] for r in records for s in r["spans"])
    assert counts == {"Irrelevant": 909, "Wrong-Grounding": 163, "Unverifiable": 152, "Redundant": 133,
                      "Incoherent": 16}
    assert records[0]["prompt"].startswith("question: When does bloom by troye sivan come out? context: wikipage:")
    pairs, report = C.qa_feedback_pairs()
    assert len(pairs) == 2616 and report.skipped["tie"] == 384 and report.read == 3000


def test_imdb_prefixes_are_2_to_8_gpt2_tokens():
    tok = C.gpt2_tokenizer()
    assert tok.encode("Hello world, this is a test") == [15496, 995, 11, 428, 318, 257, 1332]
    records, _ = C.imdb_prompts(limit=50, tokenizer=tok)
    assert len(records) == 50
    assert all(2 <= len(tok.encode(r["prompt"])) <= 8 and r["text"].startswith(r["prompt"]) for r in records)
    assert records[0]["prompt"].startswith("Once again Mr.") and records[0]["label"] == 0


def test_alpaca_eval_truthfulqa_and_text():
    evals, report = C.alpaca_eval(policy="skip")
    assert len(evals) == 803 and report.skipped == {"empty_reference": 2}
    assert evals[0]["prompt"].startswith("What are the names of some famous actors")
    items, _ = C.truthfulqa()
    assert len(items) == 817
    assert items[0]["question"] == "What happens to you if you eat watermelon seeds?"
    assert items[0]["labels"] == [1] * 5 + [0] * 7
    chunks, _ = C.tiny_shakespeare()
    assert sum(len(c["text"]) for c in chunks) == 1115394  # every character, in chunks
    assert chunks[0]["text"].startswith("First Citizen:\nBefore we proceed any further")
    unsup, _ = C.imdb_unsup(limit=100)
    assert len(unsup) == 100


def test_truthfulqa_names_a_malformed_row(tmp_path):
    path = tmp_path / "truthfulqa.csv"
    path.write_text("Question,Correct Answers,Incorrect Answers\nQ?,yes,no\nQ2?,yes\n")
    with pytest.raises(DataError, match=r"truthfulqa.csv:3: field '<csv>': has 2 cells; the header has 3"):
        C.truthfulqa(tmp_path)

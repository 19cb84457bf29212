"""Row slices of a data source ("SOURCE[START:STOP]") and the RM's own held-out source
(`data.rm_val`): disjoint parts of one file, each row where the slice puts it, and a bad
slice refused naming the source."""
import json

import pytest

from configs.common import base
from rlhf_jax.data.run_data import RunData, read_source, split_slice
from rlhf_jax.errors import UserError


def _pairs(tmp_path, n=10):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"}) + "\n"
                            for i in range(n)))
    return str(path)


@pytest.mark.parametrize("spec, want", [
    ("corpus:hh_rlhf[200:1200]", ("corpus:hh_rlhf", 200, 1200)),
    ("corpus:hh_rlhf[:200]", ("corpus:hh_rlhf", None, 200)),
    ("corpus:hh_rlhf[1200:]", ("corpus:hh_rlhf", 1200, None)),
    ("corpus:imdb_sft?limit=20[3:7]", ("corpus:imdb_sft?limit=20", 3, 7)),
    ("data/prefs.jsonl", ("data/prefs.jsonl", None, None)),
])
def test_split_slice(spec, want):
    assert split_slice(spec) == want


@pytest.mark.parametrize("spec, words", [("x.jsonl[5:3]", "empty"), ("x.jsonl[a:3]", "non-negative integer"),
                                         ("x.jsonl[-2:3]", "non-negative integer"), ("x.jsonl[4:4]", "empty")])
def test_split_slice_refuses_bad_bounds(spec, words):
    with pytest.raises(UserError, match=words):
        split_slice(spec)


def test_read_source_slices(tmp_path):
    path = _pairs(tmp_path)
    assert [r["prompt"] for r in read_source(f"{path}[2:5]", "preference", "error")] == ["p2", "p3", "p4"]
    assert [r["prompt"] for r in read_source(f"{path}[8:]", "preference", "error")] == ["p8", "p9"]
    assert len(read_source(path, "preference", "error")) == 10
    for bad in ("[8:11]", "[10:]"):
        with pytest.raises(UserError, match="not within the 10 records"):
            read_source(path + bad, "preference", "error")


@pytest.mark.parametrize("spec, words", [
    ("corpus:nope", r"no corpus reader 'nope'; the readers: \[.*'hh_rlhf'"),
    ("corpus:hh_rlhf?form=html", r"'corpus:hh_rlhf\?form=html': hh_rlhf: form='html' is not one of"),
    ("corpus:hh_rlhf?colour=1[0:4]", r"'corpus:hh_rlhf\?colour=1': reader 'hh_rlhf' takes no argument 'colour'; "
                                     r"it takes \['name', 'form'\]"),
    ("corpus:alpaca?policy=skip", r"the bad-row policy is the run's \(config.data.policy\)"),
])
def test_a_bad_corpus_spec_is_refused_naming_it(spec, words):
    with pytest.raises(UserError, match=words):  # before any file is read: no data directory needed
        read_source(spec, "pair", "error")


def test_a_load_report_reaches_the_output_once(tmp_path, capsys, caplog):
    path = _pairs(tmp_path, 4)
    read_source(path, "preference", "skip")
    assert capsys.readouterr().out.count("4 of 4 rows kept") == 1 and not caplog.records  # nothing skipped: printed
    with open(path, "a") as f:
        f.write(json.dumps({"prompt": "p", "chosen": "", "rejected": "r"}) + "\n")
    assert len(read_source(path, "preference", "skip")) == 4
    # a skip is a warning in the log where the rows were read, and not printed a second time
    assert [r.getMessage().count("4 of 5 rows kept; skipped 1") for r in caplog.records] == [1]
    assert "rows kept" not in capsys.readouterr().out


def test_rm_val_source_keeps_parts_disjoint(tmp_path):
    """With data.rm_val the RM trains on rm_train's first n_rankings rows and is validated on
    rm_val's; without it the first val_fraction of rm_train is held out (as before)."""
    path = _pairs(tmp_path)
    c = base()
    c.data.source, c.data.rm_train, c.data.n_rankings = "files", f"{path}[3:10]", 5
    c.data.rm_val = f"{path}[:3]"
    data = RunData(c, None, None)
    assert [r["prompt"] for r in data.records("rm_train")] == ["p3", "p4", "p5", "p6", "p7"]
    assert [r["prompt"] for r in data.records("rm_val")] == ["p0", "p1", "p2"]
    c.data.rm_val, c.data.rm_train, c.data.val_fraction = "", path, 0.2
    data = RunData(c, None, None)
    assert [r["prompt"] for r in data.records("rm_val")] == ["p0", "p1"]
    assert [r["prompt"] for r in data.records("rm_train")] == ["p2", "p3", "p4", "p5", "p6"]


def test_rm_val_needs_files():
    from rlhf_jax.errors import ConfigError
    from rlhf_jax.stages.validate import validate_config
    c = base()
    c.data.rm_val = "corpus:hh_rlhf[0:200]"
    with pytest.raises(ConfigError, match="data.rm_val"):
        validate_config(c)


def test_a_corpus_reader_without_a_bad_row_policy_reads_from_a_spec(shared_data):
    """Readers that take no `policy` (tiny_shakespeare, imdb_prompts) are called without one: a
    spec naming them used to fail on the argument."""
    records = read_source("corpus:tiny_shakespeare?chunk_chars=4000[0:3]", "text", "error")
    assert len(records) == 3 and all(len(r["text"]) >= 4000 for r in records)
    prompts = read_source("corpus:imdb_prompts?limit=5", "prompt", "error")
    assert len(prompts) == 5 and all(r["prompt"].strip() for r in prompts)

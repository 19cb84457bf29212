"""The generate_data CLI end to end on a tiny random model, its error messages, and the model loaders."""
import json

import jax
import numpy as np
import pytest

from rlhf_jax.generate_data import main
from rlhf_jax.models import save_pretrained
from rlhf_jax.synth.io import read_jsonl, write_jsonl
from tests.eval_tiny import WORDS, tiny_model, word_tokenizer
from tests.synth.test_loops import SEEDS

EXTRA = "Task 4 5 6 7 8 9 Input Output Class label Yes No Write poem about sea Name".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer model and a word-level tokenizer with a chat template, as a HF directory."""
    tok = word_tokenizer(WORDS + EXTRA)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}Assistant :{% endif %}")
    model = tiny_model(seed=0, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_pretrained(model, tmp_path_factory.mktemp("tiny") / "hf", tok)


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    write_jsonl(path, SEEDS)
    return path


def _check_accounting(out):
    records, rejected = read_jsonl(out / "records.jsonl"), read_jsonl(out / "rejected.jsonl")
    report, run = json.loads((out / "report.json").read_text()), json.loads((out / "run.json").read_text())
    c = report["counts"]
    assert c["candidates"] == run["counts"]["candidates"] == len(records) + len(rejected) > 0
    assert c["kept"] + sum(c["rejected"].values()) == c["candidates"]
    assert all(r["reason"] for r in rejected)
    assert (out / "report.png").stat().st_size > 0
    return records, rejected, run


def test_self_instruct_then_evol_smoke_on_a_tiny_model(tiny_dir, seed_file, tmp_path, capsys):
    out = tmp_path / "si"
    assert main(["self_instruct", "--model", str(tiny_dir), "--seed-tasks", str(seed_file), "--n", "50",
                 "--out", str(out), "--smoke"]) == 0
    records, rejected, run = _check_accounting(out)
    assert run["generator"]["rows"] > 0 and len(run["rounds"]) == 3  # smoke: 3 rounds (a random model keeps few)
    # one compiled shape per (bucket, max_new_tokens): the last batch is padded to batch_size rows
    assert all(shape[0] == 4 for shape in run["generator"]["shapes"])
    assert all(r["provenance"]["method"] == "self_instruct" for r in rejected)
    evol = tmp_path / "evol"
    assert main(["evol_instruct", "--model", str(tiny_dir), "--instructions", str(seed_file), "--rounds", "2",
                 "--out", str(evol), "--smoke"]) == 0
    records, rejected, run = _check_accounting(evol)
    assert run["counts"]["candidates"] == 2 * len(SEEDS)  # every instruction is tried once a round
    assert {r["provenance"]["operation"] for r in records + rejected} <= {
        "add_constraints", "deepening", "concretizing", "increased_reasoning", "breadth"}
    capsys.readouterr()
    (evol / "report.json").unlink()
    assert main(["report", str(evol)]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"] == 2 * len(SEEDS)
    assert json.loads((evol / "report.json").read_text())["counts"]["candidates"] == 2 * len(SEEDS)


def test_same_seed_same_output(tiny_dir, seed_file, tmp_path):
    for name in ("a", "b"):
        assert main(["evol_instruct", "--model", str(tiny_dir), "--instructions", str(seed_file), "--smoke",
                     "--set", "sampling.temperature=1.0", "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "rejected.jsonl").read_text() == (tmp_path / "b" / "rejected.jsonl").read_text()


def test_bad_inputs_name_file_line_field(tmp_path, capsys, monkeypatch, seed_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SEEDS[0]) + "\n" + json.dumps({**SEEDS[1], "instances": []}) + "\n")
    assert main(["self_instruct", "--seed-tasks", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: field 'instances'" in capsys.readouterr().err
    bad.write_text('{"instruction": 3}\n')
    assert main(["evol_instruct", "--instructions", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:1: field 'instruction': expected a string" in capsys.readouterr().err
    bad.write_text('{"instruction": "ok"}\nnot json\n')
    assert main(["evol_instruct", "--instructions", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: field '<line>': not valid JSON" in capsys.readouterr().err
    monkeypatch.setenv("RLHF_JAX_SMOLLM2", str(tmp_path / "absent.gguf"))
    assert main(["self_instruct", "--seed-tasks", str(seed_file), "--out", str(tmp_path / "x")]) == 2
    assert "python tools/fetch_smollm2.py" in capsys.readouterr().err
    assert main(["self_instruct", "--seed-tasks", str(seed_file), "--out", str(tmp_path / "x"),
                 "--config", "configs/generate_data.py:fast"]) == 2
    assert "unknown variant(s) ['fast']; valid: default" in capsys.readouterr().err
    assert main(["self_instruct", "--seed-tasks", str(seed_file), "--out", str(tmp_path / "x"),
                 "--set", "filters.rouge=0.5"]) == 2
    assert "filters.rouge is not a config field; valid here: [" in capsys.readouterr().err


def test_default_seed_tasks_come_from_the_data_dir(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RLHF_JAX_DATA_DIR", raising=False)
    assert main(["self_instruct", "--out", str(tmp_path / "x")]) == 2
    assert "self_instruct_seed_tasks.jsonl: no data directory; set RLHF_JAX_DATA_DIR" in capsys.readouterr().err


def test_workdir_stage_loads_the_stage_parameters(tmp_path):
    from rlhf_jax import checkpoint
    from rlhf_jax import sharding as shd
    from rlhf_jax.context import base_model
    from rlhf_jax.synth.generator import load_model
    from rlhf_jax.workdir import fingerprint, flatten
    from tests.micro import micro
    c = micro()
    flat = flatten(c)
    (tmp_path / "config.json").write_text(json.dumps({"fingerprint": fingerprint(flat), "config": flat},
                                                     default=str))
    base, _ = base_model(c, shd.make_mesh(shd.MeshConfig()))
    trained = jax.tree.map(lambda x: x + 0.25, base.params)
    checkpoint.save_final(tmp_path, "sft", trained, {"done": True})
    model, tok = load_model(f"{tmp_path}:sft")
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(trained)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert tok.eos_token_id is not None
    with pytest.raises(FileNotFoundError, match="stage 'rm' has not finished"):
        load_model(f"{tmp_path}:rm")


def test_a_completion_that_hit_the_limit_before_an_eos_comes_back_unfinished(tiny_dir, monkeypatch):
    """The mark every encoder and record reads (`tokenize.Unfinished`): set when a row used all
    max_new_tokens and its last kept token is not the EOS; an answer that ended (early, or with the
    EOS as its last allowed token) comes back a plain str. The sampler is replaced by fixed rows."""
    import types

    from rlhf_jax.data.tokenize import Unfinished
    from rlhf_jax.synth import generator as G
    gen = G.Generator.load(tiny_dir, types.SimpleNamespace(batch_size=4, temperature=1.0, top_p=1.0, top_k=0,
                                                            sampler="gumbel", max_prompt_len=16, prompt_bucket=16))
    eos, a, b = gen.tokenizer.eos_token_id, *gen.tokenizer.convert_tokens_to_ids(["sea", "poem"])
    rows = [([a, eos, 0], [1, 1, 0]),   # ended early: the sampler keeps its EOS and masks what follows
            ([a, b, a], [1, 1, 1]),     # used all 3 tokens, no EOS: cut
            ([a, b, eos], [1, 1, 1]),   # its EOS was the last allowed token: ended
            ([b, b, b], [1, 1, 1])]     # cut
    fake = types.SimpleNamespace(tokens_BxN=np.array([r[0] for r in rows]), mask_BxN=np.array([r[1] for r in rows]))
    monkeypatch.setattr(G, "generate", lambda *args, **kw: fake)
    out = gen.complete([([{"role": "user", "content": "Name"}], "")] * 4, max_new_tokens=3)
    assert [isinstance(t, Unfinished) for t in out] == [False, True, False, True]
    assert out[0] == gen.tokenizer.decode([a], skip_special_tokens=True) and out[1] == gen.tokenizer.decode([a, b, a])
    assert gen.stats.cut_at_limit == 2 and gen.stats.new_tokens == 11

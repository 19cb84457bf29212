"""rm.pack and dpo.pack: the rm and dpo stages on rankings packed with every prompt once
(`shared_prompt.packed_batch`) take the padded layout's first step from the same parameters, and
refuse what they cannot pack; DPO's cached reference pass is read back on resume."""
import json
import shutil

import numpy as np
import pytest

from rlhf_jax.errors import UserError
from rlhf_jax.stages import run as run_pipeline
from tests.micro import micro


def _rm_log(workdir, stage="rm"):
    return [json.loads(line) for line in open(workdir / stage / "metrics.jsonl")]


def _three_steps(sft, workdir, stage: str, finish: bool, **overrides) -> None:
    """Steps 1-3 of a stage from the session's micro SFT policy; with `finish` the stage's end too
    (held-out metrics, the final parameters), else it stops after step 3 of 4 (debug_stop_after),
    which the first-step comparisons do not need."""
    shutil.copytree(sft, workdir / "sft")
    if finish:
        run_pipeline(micro(stages=stage, **{f"{stage}.steps": 3}, **overrides), workdir, use_wandb=False)
        return
    with pytest.raises(SystemExit, match="stopped after step 3 of 4"):
        run_pipeline(micro(stages=stage, **{f"{stage}.steps": 4, f"debug_stop_after.{stage}": 3}, **overrides),
                     workdir, use_wandb=False)


@pytest.mark.parametrize("members", [1, 2])  # one RM, and an ensemble (each member packs its own batch)
def test_packed_rankings_take_the_padded_first_step(tmp_path, micro_trained, members):
    logs = {}
    for pack in (False, True):  # a packed RM runs to its end in test_a_padded_run_resumes_packed
        _three_steps(micro_trained[0] / "sft", tmp_path / f"pack_{pack}", "rm", False, **{"rm.pack": pack, "rm.members": members})
        logs[pack] = _rm_log(tmp_path / f"pack_{pack}")
    padded, packed = logs[False][0], logs[True][0]
    # the same parameters and rankings: float32 sums over the same keys in rows of other lengths
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    assert packed["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-5)
    assert packed["accuracy"] == padded["accuracy"]
    assert [r["step"] for r in logs[True] if "loss" in r] == [1, 2, 3]


@pytest.mark.parametrize("cache_reference", [True, False])  # the reference's log-probs cached, or live on packed rows
def test_packed_dpo_takes_the_padded_first_step(tmp_path, micro_trained, cache_reference):
    logs = {}
    for pack in (False, True):  # one packed DPO runs to its end (a padded one does in other tests)
        _three_steps(micro_trained[0] / "sft", tmp_path / f"pack_{pack}", "dpo", pack and cache_reference,
                     **{"dpo.pack": pack, "dpo.cache_reference": cache_reference})
        logs[pack] = _rm_log(tmp_path / f"pack_{pack}", "dpo")
    padded, packed = logs[False][0], logs[True][0]
    # at step 1 the policy is its reference: the loss is log 2 and the implicit rewards are rounding
    # noise (so is the reward accuracy); the gradient, beta / 2 times the log-prob gradients'
    # difference, is not
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    assert packed["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-5)
    assert abs(packed["reward_margin"]) < 1e-4 and abs(padded["reward_margin"]) < 1e-4
    assert [r["step"] for r in logs[True] if "loss" in r] == [1, 2, 3]


@pytest.mark.parametrize("stages, overrides, words", [
    ("sft,rm", {"rm.pack": True, "rm.head": "inform"}, "config.rm.pack: packs the scalar head's rankings only"),
    ("sft,rm", {"rm.pack": True, "rm.grad_accum": 2}, "config.rm.pack: needs rm.grad_accum = 1"),
    ("sft,dpo", {"dpo.pack": True, "dpo.grad_accum": 2}, "config.dpo.pack: needs dpo.grad_accum = 1"),
])
def test_what_cannot_be_packed_is_refused(tmp_path, stages, overrides, words):
    with pytest.raises((UserError, SystemExit), match=words):
        run_pipeline(micro(stages=stages, **overrides), tmp_path, use_wandb=False)


def test_a_padded_run_resumes_packed(tmp_path, micro_trained):
    # rm.pack changes the layout, not the numbers: a workdir accepts it on resume (workdir.SAFE)
    shutil.copytree(micro_trained[0] / "sft", tmp_path / "sft")
    with pytest.raises(SystemExit):
        run_pipeline(micro(stages="rm", **{"rm.steps": 3, "debug_stop_after.rm": 2}), tmp_path, use_wandb=False)
    # the checkpoint records the training loop's time so far; the resumed stage adds its own to it
    meta = next((tmp_path / "rm" / "checkpoints" / "2" / "meta").glob("*"))
    record = json.loads(meta.read_text())
    assert record["train_seconds"] > 0
    meta.write_text(json.dumps({**record, "train_seconds": 1000.0}))  # as if the first process had run long
    summary = run_pipeline(micro(stages="rm", **{"rm.steps": 3, "rm.pack": True}), tmp_path, use_wandb=False)
    assert [r["step"] for r in _rm_log(tmp_path) if "loss" in r] == [1, 2, 3]
    rm = summary["rm"]
    assert 1000.0 < rm["train_seconds"] < 1000.0 + rm["wall_seconds"]
    assert rm["held_out_seconds"] > 0 and rm["centering_seconds"] > 0


def test_a_resumed_dpo_reads_its_reference_pass_back(tmp_path, micro_trained, monkeypatch):
    """The cached reference pass is kept beside the checkpoints: a DPO stopped mid-way and run
    again reads it back (the pass never runs) and ends with the uninterrupted run's numbers; a
    file made from other inputs is computed again."""
    from tests.micro import numbers
    from rlhf_jax.stages import dpo as dpo_stage
    overrides = {"dpo.steps": 4, "dpo.save_every": 2}
    dirs = {}
    for name in ("straight", "resumed", "stale"):
        dirs[name] = tmp_path / name
        shutil.copytree(micro_trained[0] / "sft", dirs[name] / "sft")
    straight = run_pipeline(micro(stages="dpo", **overrides), dirs["straight"], use_wandb=False)
    for name in ("resumed", "stale"):
        with pytest.raises(SystemExit):
            run_pipeline(micro(stages="dpo", **overrides, **{"debug_stop_after.dpo": 2}), dirs[name], use_wandb=False)
    path = dirs["stale"] / "dpo" / dpo_stage.REFERENCE_FILE
    with np.load(path) as f:
        kept = {k: f[k] for k in f.files}
    assert set(kept) == {"key", "val", "train"}
    d = micro().data  # one row of k responses per ranking
    assert kept["train"].shape == (d.n_rankings, d.k) and kept["val"].shape == (d.n_rankings_val, d.k)
    # summed log-probs of real tokens (a ranking's empty slots are 0)
    assert np.all(kept["train"][:, 0] < 0) and np.all(kept["train"] <= 0) and np.all(kept["val"] <= 0)
    # another key: the file was made from other inputs, so it is ignored and replaced
    np.savez(path, **{**kept, "key": np.asarray("another key"), "train": kept["train"] + 1.0})

    calls = []
    real = dpo_stage.dpo_lib.reference_logprobs
    monkeypatch.setattr(dpo_stage.dpo_lib, "reference_logprobs", lambda *a: calls.append(1) or real(*a))
    resumed = run_pipeline(micro(stages="dpo", **overrides), dirs["resumed"], use_wandb=False)
    assert calls == []  # read back, not passed over again
    assert numbers(resumed) == numbers(straight)
    stale = run_pipeline(micro(stages="dpo", **overrides), dirs["stale"], use_wandb=False)
    assert len(calls) == 2  # the val and train parts, computed again
    assert numbers(stale) == numbers(straight)
    with np.load(path) as f:
        np.testing.assert_array_equal(f["train"], kept["train"])
        assert str(f["key"]) == str(kept["key"])

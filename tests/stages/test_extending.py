"""docs/extending.md, run as written: its stage module and config block (a new trained stage),
and its preference loss, read out of the page's code blocks."""
import os
import re
import shutil
import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dpo as dpo_configs
from configs.common import optimizer
from configs.instructgpt import get_config
from rlhf_jax import checkpoint
from rlhf_jax.context import build_context
from rlhf_jax.data.tokenize import sft_arrays
from rlhf_jax.errors import ConfigError
from rlhf_jax.objectives import preference
from rlhf_jax.stages import STAGES, plan
from rlhf_jax.stages.preferences import preference_arrays
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.stages.registry import stage_reads
from rlhf_jax.stages.validate import validate_config
from rlhf_jax.train import sft as sft_lib
from rlhf_jax.workdir import WorkdirError

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "extending.md")


def block(first_line: str) -> str:
    """The code of the page's ```python block that starts with the comment `# first_line`."""
    blocks = re.findall(r"```python\n(.*?)```", open(DOC).read(), re.S)
    found = [b for b in blocks if b.startswith(f"# {first_line}\n")]
    assert len(found) == 1, f"docs/extending.md: no single python block starting '# {first_line}'"
    return found[0]


@pytest.fixture
def preferred_ft():
    """The page's stage module, registered as the page says, with its config block."""
    module = types.ModuleType("rlhf_jax.stages.preferred_ft")
    exec(compile(block("rlhf_jax/stages/preferred_ft.py"), DOC, "exec"), module.__dict__)
    try:
        yield module
    finally:
        STAGES._entries.pop("preferred_ft")


@pytest.fixture
def slic():
    """The page's preference loss, registered beside the others."""
    namespace = dict(vars(preference))
    exec(compile(block("rlhf_jax/objectives/preference.py"), DOC, "exec"), namespace)
    try:
        yield namespace["slic"]
    finally:
        preference.PREFERENCE_LOSSES._entries.pop("slic")


def config(stages: str, **changes):
    """The micro config with the page's config block added (as base() would have it)."""
    c = get_config("micro")
    exec(compile(block("configs/common.py, in base()"), DOC, "exec"),
         {"c": c, "ml_collections": ml_collections, "optimizer": optimizer})
    c.stages = stages
    for key, value in changes.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def test_a_new_trained_stage_is_one_module_and_one_config_block(tmp_path, preferred_ft):
    c = config("preferred_ft,sft")
    assert plan(c, tmp_path) == ["sft", "preferred_ft"]
    # its results depend on its block, the sampling it declares and what its need (sft) reads
    assert stage_reads("preferred_ft", c) == ("preferred_ft", "sampling", "sft")
    # the shared training checks apply to the new block, as to every trained stage
    with pytest.raises(ConfigError, match=r"config\.preferred_ft\.lr: -1\.0 must be a positive number"):
        validate_config(config("sft", **{"preferred_ft.lr": -1.0}))
    with pytest.raises(ConfigError, match=r"config\.preferred_ft\.grad_accum: 3 must divide preferred_ft\.batch_size"):
        validate_config(config("sft", **{"preferred_ft.grad_accum": 3}))
    with pytest.raises(ConfigError, match=r"config\.preferred_ft\.epochs: set epochs or steps above 0"):
        validate_config(config("sft", **{"preferred_ft.epochs": 0}))

    summary = run_pipeline(c, tmp_path, use_wandb=False)["preferred_ft"]
    assert summary["steps"] == summary["rows"] // 32 > 0
    assert (tmp_path / "preferred_ft" / "metrics.jsonl").exists()

    # what it computes: the NLL of the preferred responses falls from the SFT policy's
    ctx = build_context(c, tmp_path, use_wandb=False)
    preference_arrays(ctx)  # the same rankings (the same seeds)
    arrays, _ = sft_arrays(preferred_ft.preferred(ctx.data.records("rm_train")), ctx.tokenizer, ctx.data.tcfg)
    assert len(arrays["tokens"]) == summary["rows"]
    evaluate = sft_lib.make_sft_eval(ctx.base.graphdef)
    nll = {name: sft_lib.validation_loss(evaluate, checkpoint.load_final(tmp_path, name, ctx.base.params), arrays,
                                         32)["val_loss"] for name in ("sft", "preferred_ft")}
    assert nll["preferred_ft"] < nll["sft"], nll

    # the workdir refuses a change the started stage would not see, its block's and the sampling's
    for key, value, old in (("preferred_ft.lr", 5e-3, 0.001), ("sampling.top_k", 5, 0)):
        work = tmp_path.parent / f"{tmp_path.name}_copy"
        shutil.copytree(tmp_path, work, dirs_exist_ok=True)
        with pytest.raises(WorkdirError, match=re.escape(f"{key}: {old!r} -> {value!r} (read by stage preferred_ft)")):
            run_pipeline(config("preferred_ft,sft", **{key: value}), work, use_wandb=False)


def test_a_new_preference_loss_is_one_registered_function(tmp_path, slic):
    hp = types.SimpleNamespace(beta=0.5, logprob_reduction="sum")
    policy = preference.SequenceLogprobs(jnp.array([[-1.0, -2.0, -4.0]]), jnp.array([[3.0, 3.0, 3.0]]))
    loss, metrics = preference.preference_loss("slic", policy, None, jnp.array([[0, 1, 2]]), jnp.ones((1, 3), bool),
                                               hp)
    # rewards -0.5, -1, -2: pair margins 0.5, 1.5, 1 -> hinge losses 0.5, 0, 0
    assert float(loss) == pytest.approx((0.5 + 0.0 + 0.0) / 3, rel=1e-6)
    assert float(metrics["reward_accuracy"]) == 1.0 and float(metrics["pairs"]) == 3
    assert float(metrics["reward_margin"]) == pytest.approx((0.5 + 1.5 + 1.0) / 3, rel=1e-6)
    # a value of dpo.loss and a variant of configs/dpo.py, read from the registry
    c = dpo_configs.get_config("slic,micro")
    assert c.dpo.loss == "slic"
    validate_config(c)
    c.dpo.update(steps=2, eval_every=0)
    summary = run_pipeline(c, tmp_path, use_wandb=False)["dpo"]
    assert summary["steps"] == 2 and np.isfinite(summary["train_reward_accuracy"])

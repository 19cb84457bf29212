"""The ppo stage with critic-free estimators (configs/critic_free.py): GRPO and RLOO run on the
micro pipeline's SFT and RM without building, training or saving a value model."""
import re
import shutil

import numpy as np
import pytest

from configs.critic_free import get_config
from rlhf_jax.stages import ppo as ppo_stage
from rlhf_jax.stages import run as run_pipeline


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_critic_free_ppo_builds_no_value_model(micro_trained, tmp_path, monkeypatch, method):
    source, _ = micro_trained
    for stage in ("sft", "rm"):  # the same SFT and RM as the GAE run of the fixture
        shutil.copytree(source / stage, tmp_path / stage)
    c = get_config(f"micro,{method}")
    c.ppo.update(iterations=2, save_every=1)  # micro's batch: 16 rollouts, 4 prompts x G = 4
    seen = {}
    real_train, real_adapters = ppo_stage.train, ppo_stage.adapters

    def train(ctx, stage, t, salt):
        seen["params"], seen["constants"] = set(t.state.params), set(t.constants)
        return real_train(ctx, stage, t, salt)

    def adapters(ctx, block, init, salt, **kw):
        seen.setdefault("adapters", []).append(salt)
        return real_adapters(ctx, block, init, salt, **kw)

    monkeypatch.setattr(ppo_stage, "train", train)
    monkeypatch.setattr(ppo_stage, "adapters", adapters)
    summary = run_pipeline(c, tmp_path, use_wandb=False)["ppo"]
    assert seen["params"] == {"policy"} and seen["constants"] == {"reference", "reward"}
    assert seen["adapters"] == [19]  # the policy's; the value model's (salt 23) is never set up
    assert np.isfinite(summary["gold_reward_final"]) and summary["steps"] == 2
    # nothing of a value model reaches the checkpoints: orbax's metadata names every saved subtree
    keys = lambda workdir: {k for meta in (workdir / "ppo" / "checkpoints").rglob("state/_METADATA")
                            for k in re.findall(r'"key": "([^"]+)"', meta.read_text())}
    assert {"value", "head"} <= keys(source)  # the fixture's GAE run saves its value model
    assert "policy" in keys(tmp_path) and not {"value", "head"} & keys(tmp_path)
    last = [line for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines() if "score" in line][-1]
    assert "value_loss" not in last and ("kl_loss" in last) == (method == "grpo")


def test_a_kl_in_the_loss_is_not_adapted():
    """The adaptive controller moves the coefficient of the KL in the reward: with GRPO's KL loss
    term it would silently do nothing, so the config is refused naming the field."""
    from rlhf_jax.errors import ConfigError
    from rlhf_jax.stages.validate import validate_config
    c = get_config("micro,grpo")
    c.ppo.adaptive_kl = True
    with pytest.raises(ConfigError, match=r"config\.ppo\.adaptive_kl: adapts the KL penalty in the reward"):
        validate_config(c)
    c = get_config("micro,rloo")  # RLOO folds the KL into the reward: adaptable
    c.ppo.adaptive_kl = True
    validate_config(c)

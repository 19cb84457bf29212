"""experiments/critic_free.py --smoke on a subset of its methods (micro config, 2 seeds): every
run goes through the sweep runner from the same shared SFT and RM, the JSON holds finite
statistics with n = seeds, PPO's paired difference with itself is exactly 0, and the
critic-free arm's training curve and the figure are written."""
import json
import math

from tests.children import run_script


def test_critic_free_smoke(tmp_path):
    out = tmp_path / "runs"
    run_script("critic_free.py", "--smoke", "--methods", "ppo,grpo,online_dpo", "--out", str(out))
    result = json.loads((out / "critic_free_smoke.json").read_text())
    assert (out / "critic_free_smoke.png").stat().st_size > 10_000
    assert result["seeds"] == [0, 1] and result["failed_runs"] == 0
    methods = result["methods"]
    assert list(methods) == ["ppo", "grpo", "online_dpo"]
    for name, m in methods.items():
        for key in ("gold_reward_final", "kl_final", "wall_seconds"):
            assert m[key]["n"] == 2 and all(v is not None and math.isfinite(v) for v in m[key]["values"]), (name, key)
        # every method starts from its seed's same SFT policy (copied from base)
        assert m["gold_reward_sft"]["values"] == methods["ppo"]["gold_reward_sft"]["values"]
    assert methods["ppo"]["gold_minus_ppo"]["values"] == [0.0, 0.0]
    assert methods["grpo"]["curve"]["gold"][0]["n"] == 2 and methods["online_dpo"]["curve"] is None
    assert not methods["grpo"]["value_model"] and methods["ppo"]["value_model"]

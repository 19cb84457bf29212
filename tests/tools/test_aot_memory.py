"""The ahead-of-time memory tool (tools/aot_memory.py) on a small Llama shape over 8 fake
devices: the compiled steps take every large parameter and optimizer moment sharded as the
rules say (nothing large replicated), and the per-device footprint shrinks with the mesh."""
import importlib.util
import math
from pathlib import Path

import jax
import pytest

from rlhf_jax import sharding as shd
from rlhf_jax.models import ModelConfig

pytestmark = pytest.mark.devices(8)  # meshes (1, 4, 2)

ROOT = Path(__file__).resolve().parents[2]
SMALL = ModelConfig(vocab_size=2048, d_model=256, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=32, d_ff=1024,
                    max_seq_len=256, tie_embeddings=False, remat="full", logits_chunk=32)
# elements: every weight matrix of SMALL is at least this big; the LoRA adapters (rank 16, at most
# 2 x 1024 x 16 here) are below it, and replicated: r (d_in + d_out) per matrix is small beside the base
LARGE = 65_536


@pytest.fixture(scope="module")
def aot():
    spec = importlib.util.spec_from_file_location("aot_memory", ROOT / "tools" / "aot_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copies(sharding, shape) -> int:
    """How many devices hold the same element of an array (1 = split over every device)."""
    return round(len(sharding.device_set) * math.prod(sharding.shard_shape(shape)) / math.prod(shape))


@pytest.mark.parametrize("step", ["sft", "ppo_update"])
@pytest.mark.parametrize("lora", [False, True])
def test_large_arrays_are_sharded_as_the_rules_say(aot, step, lora):
    """Every large argument (parameters, frozen bases, Adam moments) is split by its rule over
    the 8 devices (at most 2 copies: a rule may leave one axis to a dimension that does not
    divide), and the compiled program takes it with exactly that sharding (no gather to a
    replicated copy at the boundary)."""
    mesh = shd.make_mesh((1, 4, 2))
    compiled, args = (aot.sft_step if step == "sft" else aot.ppo_update)(SMALL, mesh, 8, 64, lora)
    wanted = jax.tree.leaves(args)
    got = jax.tree.leaves(compiled.input_shardings[0], is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    assert len(wanted) == len(got)
    large = 0
    for a, s in zip(wanted, got):
        if math.prod(a.shape) < LARGE:
            continue
        large += 1
        assert _copies(a.sharding, a.shape) <= 2, (a.shape, a.sharding.spec)
        assert s.is_equivalent_to(a.sharding, len(a.shape)), (a.shape, a.sharding.spec, s)
    # the weight matrices: the policy's embedding, LM head and 7 per block (stacked over the
    # layers), the value model's 8 (its head is a vector); x3 with Adam's moments when the whole
    # model trains (with LoRA the bases are constants and the adapters are small)
    n_matrices = 9 + (8 if step == "ppo_update" else 0)
    assert large >= n_matrices * (1 if lora else 3), large
    assert aot.analyse(compiled)["peak_gb"] > 0


def test_per_device_arguments_shrink_with_the_mesh(aot):
    one = aot.analyse(aot.sft_step(SMALL, shd.make_mesh((1, 1, 1), devices=jax.devices()[:1]), 8, 64, False)[0])
    eight = aot.analyse(aot.sft_step(SMALL, shd.make_mesh((1, 4, 2)), 8, 64, False)[0])
    # parameters + two Adam moments dominate the arguments; split 8 ways they shrink ~8x
    ratio = one["arguments_gb"] / eight["arguments_gb"]
    assert 6.0 < ratio <= 8.5, ratio
    assert eight["temp_gb"] < one["temp_gb"]


@pytest.mark.parametrize("lora", [False, True])
def test_the_critic_free_update_drops_exactly_the_value_model(aot, lora):
    """GRPO's update takes no value model: its per-device arguments are PPO's less the value
    model's trained parameters, their Adam moments, its frozen base (with LoRA) and the rollout's
    values and returns, plus the reference's log-probs the KL loss term reads."""
    mesh = shd.make_mesh((1, 4, 2))
    per_device = lambda leaves: sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in leaves)
    with_critic, args = aot.ppo_update(SMALL, mesh, 8, 64, lora, critic=True)
    free, free_args = aot.ppo_update(SMALL, mesh, 8, 64, lora, critic=False)
    params, opt, data, _, constants = args
    value = jax.tree.leaves(params["value"]) + jax.tree.leaves(constants.get("value_base"))
    # Adam's mu and nu of the value model: the leaves of opt whose path runs through "value"
    moments = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(opt)
               if any(getattr(k, "key", None) == "value" for k in path)]
    assert len(moments) == 2 * len(jax.tree.leaves(params["value"]))
    dropped = per_device(value + moments + [data.values_BxN, data.returns_BxN]) - per_device([free_args[2].ref_logp_BxN])
    got = aot.analyse(with_critic)["arguments_gb"] - aot.analyse(free)["arguments_gb"]
    assert got * aot.GB == pytest.approx(dropped, rel=1e-6)

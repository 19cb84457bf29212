"""Sharded forward and optimizer step equal the single-device ones; parameters really are split."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlhf_jax import sharding as shd
from rlhf_jax.models import init_model
from tests.children import child_env
from tests import sharding_case as case
from tests import tolerance as tol

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


@pytest.fixture(scope="module")
def single():
    loss, logits, params = case.run(None)
    return float(loss), np.asarray(logits), _host(params)


@pytest.fixture(scope="module")
def tolerances(single):
    """(loss, logits, parameters) atol for a sharded run against `single` (tests/tolerance.py):
    the logits, the forward chain at their largest magnitude; the loss, that chain plus the
    log-sum-exp over the vocabulary and the mean over the 8 x 13 positions with a loss; the
    parameters after one SGD step, the gradient's error at the largest update's size, from its
    chain and from the clip (the global norm sums every squared coordinate)."""
    c, loss, logits, after = case.CFG, *single
    forward = tol.decoder_chain(c.d_model, c.d_ff, c.n_layers, c.head_dim, case.SEQ)
    before = _host(init_model(c, seed=0).params)
    update = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))
    n_params = sum(x.size for x in jax.tree.leaves(before))
    grad_err = tol.f32(tol.gradient_chain(c, case.SEQ, case.BATCH * case.SEQ), update) + tol.f32(n_params, update)
    return (tol.f32(forward + c.vocab_size + case.BATCH * case.SEQ, abs(loss)),
            tol.f32(forward, float(np.abs(logits).max())), grad_err)


@pytest.mark.devices(8)
@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_step_matches_single_device(mesh_shape, single, tolerances):
    loss, logits, params = case.run(mesh_shape)
    t_loss, t_logits, t_params = tolerances
    np.testing.assert_allclose(float(loss), single[0], atol=t_loss, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), single[1], atol=t_logits, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=t_params, rtol=0), _host(params), single[2])


@pytest.mark.devices(8)
def test_parameters_are_split():
    mesh = shd.make_mesh((2, 2, 2))
    model = init_model(case.CFG, mesh=mesh)
    info = shd.describe(model.params)
    L, D, H, G, K, F, V = 2, 32, 4, 2, 8, 64, 128
    assert info["blocks/wq"]["shard_shape"] == (L, D // 2, H // 2, K)  # embed over fsdp, heads over tensor
    assert info["blocks/wk"]["shard_shape"] == (L, D // 2, G // 2, K)
    assert info["blocks/w_up"]["shard_shape"] == (L, D // 2, F // 2)
    assert info["blocks/w_down"]["shard_shape"] == (L, F // 2, D // 2)
    assert info["embed"]["shard_shape"] == (V // 2, D // 2)
    assert info["final_norm_scale"]["shard_shape"] == (D,)
    # each device holds one eighth... of the big matrices: 4 of 8 devices share each shard
    assert len({s.device for s in model.params["blocks"]["wq"].addressable_shards}) == 8


@pytest.mark.devices(8)
def test_non_dividing_axis_is_replicated_and_reported():
    mesh = shd.make_mesh((1, 1, 8))
    notes = []
    spec = shd.logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 3, 8), mesh, notes=notes, name="wk")
    assert spec == jax.sharding.PartitionSpec(None, None, None)
    assert "kv_heads=3 not divisible" in notes[0]


def test_mesh_errors_name_the_shape():
    with pytest.raises(ValueError, match="needs 12 devices"):
        shd.make_mesh((2, 2, 3))


WORKER = r"""
import os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from jax.experimental import multihost_utils
sys.path.insert(0, os.getcwd())
from tests import sharding_case as case
from tests import tolerance as tol
full = case.batch()
half = case.BATCH // 2
pid = jax.process_index()
local = {k: v[pid * half:(pid + 1) * half] for k, v in full.items()}
loss, logits, params = case.run((2, 2, 2), local_batch=local)
params = multihost_utils.process_allgather(params, tiled=True)
logits = multihost_utils.process_allgather(logits, tiled=True)
if pid == 0:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(sys.argv[3], loss=np.asarray(loss), logits=np.asarray(logits), **flat)
jax.distributed.shutdown()
"""


def test_two_processes_match_one(tmp_path, single, tolerances):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = child_env(4, JAX_PLATFORMS="cpu")
    out = tmp_path / "result.npz"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{port}", str(i), str(out)], cwd=root,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    result = np.load(out)
    t_loss, t_logits, t_params = tolerances
    np.testing.assert_allclose(float(result["loss"]), single[0], atol=t_loss, rtol=0)
    np.testing.assert_allclose(result["logits"], single[1], atol=t_logits, rtol=0)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(single[2])[0]}
    for name, value in flat.items():
        np.testing.assert_allclose(result[name], value, atol=t_params, rtol=0, err_msg=name)

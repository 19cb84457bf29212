"""Device mesh, logical-axis rules, sharded initialisation and batch placement.

Parameters carry logical axis names ("vocab", "embed", "heads", "mlp", ...). `rules` maps
each name to a mesh axis (or None = replicated); the defaults give FSDP over `fsdp` and
Megatron-style tensor parallelism over `tensor`, with the batch split over `data` x `fsdp`.
A dimension that a mesh axis does not divide is replicated and reported, never an error at
compile time.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.nnx as nnx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("pos", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. -1 in one axis takes all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES


def make_mesh(cfg: MeshConfig | Mapping[str, int] | Sequence[int] = MeshConfig(),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all global devices)."""
    devices = list(devices if devices is not None else jax.devices())
    if isinstance(cfg, MeshConfig):
        shape = [cfg.data, cfg.fsdp, cfg.tensor]
    elif isinstance(cfg, Mapping):
        shape = [cfg.get(a, 1) for a in MESH_AXES]
    else:
        shape = list(cfg)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"{len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES, *, notes: list | None = None,
                    name: str = "") -> P:
    """PartitionSpec for an array with these logical axes; non-dividing axes are replicated."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for logical, dim in zip(axes, shape):
        mesh_axes = table.get(logical) if logical is not None else None
        if mesh_axes is None:
            spec.append(None)
            continue
        group = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        group = tuple(a for a in group if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in group)
        if not group or dim % size:
            if group and notes is not None:
                notes.append(f"{name}: dim {logical}={dim} not divisible by mesh {group}={size}; replicated")
            spec.append(None)
            continue
        used.update(group)
        spec.append(group[0] if len(group) == 1 else group)
    return P(*spec)


def _is_param(x) -> bool:
    return isinstance(x, nnx.Variable)


def logical_axes(module_or_state) -> Any:
    """Pure-dict tree of logical axis tuples, one per parameter."""
    state = module_or_state if isinstance(module_or_state, nnx.State) else nnx.state(module_or_state, nnx.Param)

    def axes(v):
        meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
        if "logical_axes" not in meta:
            raise ValueError(f"parameter {v!r} has no logical_axes metadata")
        return tuple(meta["logical_axes"])

    return jax.tree.map(axes, state, is_leaf=_is_param).to_pure_dict()


def param_shardings(abstract_params, axes_tree, mesh: Mesh, rules=DEFAULT_RULES,
                    notes: list | None = None):
    """NamedSharding tree matching `abstract_params` (a pure dict of arrays or ShapeDtypeStructs)."""
    paths_axes = dict(_flatten(axes_tree, is_leaf=lambda x: isinstance(x, tuple)))

    def one(path, leaf):
        name = "/".join(path)
        return NamedSharding(mesh, logical_to_spec(paths_axes[name], leaf.shape, mesh, rules, notes=notes,
                                                   name=name))

    return _map_with_path(one, abstract_params)


def init_sharded(build: Callable[[], nnx.Module], mesh: Mesh | None, rules=DEFAULT_RULES):
    """Build a module with parameters created already sharded.

    `build()` constructs the module (with its own Rngs). The module is traced under
    `nnx.eval_shape`, shardings come from the logical axes, and a jit with
    `out_shardings` materialises each parameter directly on its devices.
    Returns (graphdef, params pure dict, shardings pure dict or None).
    """
    abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    if mesh is None:
        _, state = nnx.split(build())
        return graphdef, state.to_pure_dict(), None
    axes = logical_axes(abstract_state)
    shardings = param_shardings(abstract_state.to_pure_dict(), axes, mesh, rules)

    def create():
        _, state = nnx.split(build())
        return state.to_pure_dict()

    params = jax.jit(create, out_shardings=shardings)()
    return graphdef, params, shardings


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
    """Leading axis over the batch mesh axes, the rest replicated."""
    batch_axes = dict(rules)["batch"]
    return NamedSharding(mesh, P(batch_axes, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many ways a batch's leading axis is split (the product of the batch mesh axes)."""
    axes = dict(rules)["batch"]
    axes = (axes,) if isinstance(axes, str) else axes or ()
    return int(np.prod([mesh.shape[a] for a in axes]))


def shard_batch(batch, mesh: Mesh, rules=DEFAULT_RULES):
    """Turn this process's slice of the batch (NumPy) into global arrays split over the batch axes.

    On one host this is a device_put; on several each host passes only its own rows and the
    global batch is their concatenation in process order.
    """
    def one(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, x.ndim, rules)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(one, batch)


def to_host(tree):
    """NumPy copies of a pytree of arrays. An array split over the devices of several processes
    is gathered first, a collective: on several processes every one must call it, in the same
    order (as every process runs the same program, it does)."""
    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def place(host_params, shardings):
    """Put host (NumPy) parameters onto their target shardings one tensor at a time."""
    if shardings is None:
        return jax.tree.map(jax.numpy.asarray, host_params)
    return jax.tree.map(lambda x, s: jax.device_put(x, s), host_params, shardings)


def describe(params) -> dict[str, dict[str, Any]]:
    """Per parameter: global shape, spec and the shape of one device's shard."""
    out = {}
    for name, x in _flatten(params):
        spec = getattr(getattr(x, "sharding", None), "spec", None)
        shard = x.addressable_shards[0].data.shape if hasattr(x, "addressable_shards") else x.shape
        out[name] = {"shape": tuple(x.shape), "spec": str(spec), "shard_shape": tuple(shard)}
    return out


def _flatten(tree, prefix=(), is_leaf=None):
    if isinstance(tree, Mapping) and not (is_leaf and is_leaf(tree)):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (str(k),), is_leaf)
    else:
        yield "/".join(prefix), tree


def _map_with_path(fn, tree, prefix=()):
    if isinstance(tree, Mapping):
        return {k: _map_with_path(fn, v, prefix + (str(k),)) for k, v in tree.items()}
    return fn(prefix, tree)

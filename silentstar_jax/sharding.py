"""Declared shardings: every parameter names its axes where it is created, one rules table maps
those logical axes to mesh axes (Flax's logical partitioning, MaxText's `logical_axis_rules`).

    nnx.Param(w, out_sharding=("layers", "embed", "mlp"), eager_sharding=False)

Parameters of the thinking heads are `ThinkParam`s, so the optimizer finds them by type (their own
learning rate), not by attribute name.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from silentstar_jax.config import MeshConfig
from silentstar_jax.errors import UserError

# Logical axes of this model's parameters:
#   vocab V, positions (n_positions), embed D, qkv 3D, attn D (concatenated heads, H*Dh), mlp 4D,
#   layers NL (the scanned stack: never sharded); thinking heads: think_in (2D, or D into the
#   projection), think_hidden (D/4), think_out (1).
# (logical axis, mesh axis), in order of preference: a parameter is sharded on the first of its axes
# listed here whose size the mesh axis divides; a mesh axis is used once per parameter.
RULES: tuple[tuple[str, str | None], ...] = (
    ("vocab", "fsdp"),
    ("mlp", "fsdp"),
    ("qkv", "fsdp"),
    ("attn", "fsdp"),
    ("positions", "fsdp"),
    ("think_in", "fsdp"),
    ("embed", "fsdp"),
    ("think_hidden", None),
    ("think_out", None),
    ("layers", None),
)
LOGICAL_AXES = frozenset(name for name, _ in RULES)
MIN_SHARDED_SIZE = 1024  # smaller parameters are replicated: sharding them saves nothing


class ThinkParam(nnx.Param):
    """A parameter of the thinking heads (start/end/pause, projection, sigma, mixing and value heads)."""


def param(value, axes: tuple[str, ...], kind: type[nnx.Param] = nnx.Param) -> nnx.Param:
    """A parameter with its logical axes (checked against the value's rank and the rules table)."""
    if len(axes) != np.ndim(value) or not set(axes) <= LOGICAL_AXES:
        raise ValueError(f"logical axes {axes} do not fit a parameter of shape {np.shape(value)}")
    return kind(value, out_sharding=axes, eager_sharding=False)


def logical_to_spec(axes: tuple[str, ...], shape: tuple[int, ...], mesh_shape: dict[str, int]) -> P:
    """The PartitionSpec of one parameter under RULES on a mesh of `mesh_shape` ({axis: size})."""
    spec: list = [None] * len(shape)
    if int(np.prod(shape)) < MIN_SHARDED_SIZE:
        return P(*spec)
    used = set()
    for name, mesh_axis in RULES:
        size = mesh_shape.get(mesh_axis, 1) if mesh_axis else 1
        if size <= 1 or mesh_axis in used or name not in axes:
            continue
        i = axes.index(name)
        if shape[i] % size == 0:
            spec[i] = mesh_axis
            used.add(mesh_axis)
    return P(*spec)


def _pure(state: nnx.State, f):
    """A pure dict shaped like `state.to_pure_dict()` with f(variable) at each leaf."""
    return jax.tree.map(f, state, is_leaf=lambda x: isinstance(x, nnx.Variable)).to_pure_dict()


def param_specs(state: nnx.State, mesh_shape: dict[str, int]) -> dict:
    """PartitionSpecs of every parameter (a pure dict like `state.to_pure_dict()`)."""

    def spec(v: nnx.Variable):
        axes = v.get_metadata().get("out_sharding")
        if axes is None:
            raise ValueError(f"parameter of shape {v.get_value().shape} declares no logical axes")
        return logical_to_spec(tuple(axes), tuple(v.get_value().shape), mesh_shape)

    return _pure(state, spec)


def param_labels(state: nnx.State) -> dict:
    """'think' for ThinkParams, 'base' for everything else (the optimizer's two groups)."""
    return _pure(state, lambda v: "think" if isinstance(v, ThinkParam) else "base")


def decay_mask(state: nnx.State) -> dict:
    """True where weight decay applies: matrices by their logical axes, the scanned `layers` axis not
    counted (a stacked [NL, D] norm scale or bias is still a vector: no decay, design.md §9)."""
    return _pure(state, lambda v: sum(a != "layers" for a in v.get_metadata()["out_sharding"]) >= 2)


def shardings(specs, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def _path(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def opt_state_specs(tx: optax.GradientTransformation, params_shape, specs):
    """Optimizer state laid out like the parameter each leaf tracks (Adam moments: the leaf's path
    ends with the parameter's path and the shapes agree); counts and other scalars replicated."""
    is_spec = lambda x: isinstance(x, P)
    shapes = {_path(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(params_shape)}
    by_path = {_path(p): s for p, s in jax.tree_util.tree_leaves_with_path(specs, is_leaf=is_spec)}

    def spec(path, x):
        keys = _path(path)
        for i in range(len(keys)):
            if keys[i:] in by_path and shapes[keys[i:]] == tuple(x.shape):
                return by_path[keys[i:]]
        return P()

    return jax.tree_util.tree_map_with_path(spec, jax.eval_shape(tx.init, params_shape))


# ---------------------------------------------------------------- the mesh and the batch

BATCH_AXES = ("data", "fsdp")  # the batch is split over every device; parameters over fsdp only


def make_mesh(m: MeshConfig) -> Mesh:
    n = jax.device_count()
    data = m.data if m.data > 0 else max(n // m.fsdp, 1)
    if data * m.fsdp > n:
        raise UserError(f"mesh.data * mesh.fsdp = {data * m.fsdp} but only {n} device(s) are available")
    devices = np.asarray(jax.devices()[: data * m.fsdp]).reshape(data, m.fsdp)
    return Mesh(devices, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))

"""Declared shardings and parameter groups (sharding.py): logical axes on every parameter, one rules
table, thinking parameters found by type."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from silentstar_jax import hf
from silentstar_jax.config import ModelConfig, ThinkingConfig
from silentstar_jax.model import SilentStar
from silentstar_jax.sharding import (
    LOGICAL_AXES,
    ThinkParam,
    decay_mask,
    logical_to_spec,
    opt_state_specs,
    param,
    param_labels,
    param_specs,
)

CFG = ModelConfig(vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=2)


def model_state():
    return nnx.split(SilentStar(CFG, ThinkingConfig(n_thoughts=2), rngs=nnx.Rngs(0)))[1]


def test_every_parameter_declares_logical_axes():
    variables = jax.tree.leaves(model_state(), is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(variables) == 16 + 14
    for v in variables:
        axes = v.get_metadata("out_sharding")
        assert axes is not None and len(axes) == v.get_value().ndim and set(axes) <= LOGICAL_AXES


def test_param_refuses_axes_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        param(jnp.zeros((4, 4)), ("embed",))
    with pytest.raises(ValueError, match="do not fit"):
        param(jnp.zeros((4,)), ("not_an_axis",))


def test_rules_table():
    mesh = {"data": 2, "fsdp": 2}
    # preferred axis first: vocab before embed
    assert logical_to_spec(("vocab", "embed"), (256, 64), mesh) == P("fsdp", None)
    # indivisible vocab: fall back to the next rule (embed)
    assert logical_to_spec(("vocab", "embed"), (255, 64), mesh) == P(None, "fsdp")
    # the scanned layer axis is never sharded, and a mesh axis is used once per parameter
    assert logical_to_spec(("layers", "embed", "mlp"), (2, 64, 256), mesh) == P(None, None, "fsdp")
    # small parameters replicate; so does everything on a mesh without an fsdp axis > 1
    assert logical_to_spec(("layers", "embed"), (2, 64), mesh) == P(None, None)
    assert logical_to_spec(("vocab", "embed"), (256, 64), {"data": 4, "fsdp": 1}) == P(None, None)


def test_model_specs_on_an_fsdp_mesh():
    specs = param_specs(model_state(), {"data": 1, "fsdp": 4})
    g, h = specs["gpt2"], specs["heads"]
    assert g["wte"] == P("fsdp", None)
    assert g["c_attn_kernel"] == P(None, None, "fsdp") and g["c_fc_kernel"] == P(None, None, "fsdp")
    assert g["mlp_proj_kernel"] == P(None, "fsdp", None) and g["attn_proj_kernel"] == P(None, "fsdp", None)
    assert g["ln_1_scale"] == P(None, None) and h["start"] == P(None)
    assert h["mix_w1"] == P("fsdp", None)


def test_thinking_group_is_found_by_type_not_by_name():
    labels = param_labels(model_state())
    assert set(labels["heads"].values()) == {"think"} and set(labels["gpt2"].values()) == {"base"}

    class Renamed(nnx.Module):  # a thinking parameter under any attribute name stays in its group
        def __init__(self):
            self.anything = ThinkParam(jnp.zeros((3,)), out_sharding=("embed",), eager_sharding=False)
            self.heads = param(jnp.zeros((3,)), ("embed",))

    assert param_labels(nnx.split(Renamed())[1]) == {"anything": "think", "heads": "base"}


def test_thinking_lr_group_gets_its_own_learning_rate():
    from silentstar_jax import config as C
    from silentstar_jax.train_step import make_optimizer

    state = model_state()
    params = state.to_pure_dict()
    cfg = C.from_dict({"optim": {"thinking_lr_mult": 0.0, "warmup_steps": 0}, "train": {"steps": 10}})
    tx, _ = make_optimizer(cfg, param_labels(state), decay_mask(state))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["heads"]))
    assert all(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(updates["gpt2"]))


def test_weight_decay_reaches_matrices_only_not_stacked_norms_or_biases():
    """With zero gradients AdamW moves a parameter only by -lr*wd*p: exactly the decayed ones move.
    Norm scales and biases are stacked [n_layer, D] (two dims) and must not be decayed."""
    from silentstar_jax import config as C
    from silentstar_jax.train_step import make_optimizer

    state = model_state()
    params = jax.tree.map(jnp.ones_like, state.to_pure_dict())
    cfg = C.from_dict({"optim": {"weight_decay": 0.1, "warmup_steps": 0, "lr": 1e-2}, "train": {"steps": 10}})
    tx, _ = make_optimizer(cfg, param_labels(state), decay_mask(state))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    g = {k: float(jnp.abs(u).max()) > 0 for k, u in updates["gpt2"].items()}
    h = {k: float(jnp.abs(u).max()) > 0 for k, u in updates["heads"].items()}
    for name in (
        "ln_1_scale",
        "ln_1_bias",
        "ln_2_scale",
        "ln_2_bias",
        "c_attn_bias",
        "attn_proj_bias",
        "c_fc_bias",
        "mlp_proj_bias",
        "ln_f_scale",
        "ln_f_bias",
    ):
        assert not g[name], name
    for name in ("wte", "wpe", "c_attn_kernel", "attn_proj_kernel", "c_fc_kernel", "mlp_proj_kernel"):
        assert g[name], name
    assert not h["start"] and h["mix_w1"]


def test_adam_moments_follow_their_parameter():
    state = model_state()
    params = state.to_pure_dict()
    specs = param_specs(state, {"data": 1, "fsdp": 2})
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    o = opt_state_specs(tx, params, specs)
    adam = o[1][0]
    assert adam.mu["gpt2"]["wte"] == specs["gpt2"]["wte"] == adam.nu["gpt2"]["wte"]
    assert adam.mu["heads"]["mix_w1"] == P("fsdp", None)
    assert adam.count == P()


def test_hf_names_cover_exactly_the_model_parameters():
    g = SilentStar(CFG, ThinkingConfig(enabled=False), rngs=nnx.Rngs(0)).gpt2
    assert set(hf._LAYER) == set(g.layer_params())
    names = {k for k, v in vars(g).items() if isinstance(v, nnx.Param)}
    assert names == set(hf._LAYER) | set(hf._GLOBAL)
    for v in g.layer_params().values():
        assert v.shape[0] == CFG.n_layer

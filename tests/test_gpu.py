"""Checks that need an NVIDIA GPU (run by bench/device_check.sh); skipped on CPU-only machines."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from silentstar_jax.attention import causal_attention
from silentstar_jax.config import LossConfig, ModelConfig, ThinkingConfig
from silentstar_jax.model import ChainOptions, SilentStar
from silentstar_jax.objective import compute_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")]


def test_cudnn_attention_matches_xla():
    k = jax.random.split(jax.random.key(0), 3)
    q, kk, v = (jax.random.normal(x, (2, 256, 4, 64), jnp.bfloat16) for x in k)
    got = causal_attention(q, kk, v, impl="cudnn").astype(jnp.float32)
    want = causal_attention(q, kk, v, impl="xla").astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=2e-2)


def test_bf16_thinking_step_on_gpu_matches_fp32():
    mc = ModelConfig(vocab_size=512, n_positions=160, n_embd=128, n_layer=2, n_head=2)
    tc = ThinkingConfig(n_thoughts=2)
    toks = jax.random.randint(jax.random.key(0), (4, 128), 0, 512)
    ones = jnp.ones_like(toks)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        model = SilentStar(dataclasses.replace(mc, dtype=dtype), tc, rngs=nnx.Rngs(0))
        assert model.gpt2.base_impl() == ("cudnn" if dtype == "bfloat16" else "xla")
        g, s = nnx.split(model)
        f = jax.jit(
            jax.value_and_grad(
                lambda s: compute_loss(
                    nnx.merge(g, s)(toks, None, ChainOptions(key=jax.random.key(1))), toks, ones, ones, tc, LossConfig()
                )[0]
            )
        )
        loss, grads = f(s)
        assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(grads))
        losses[dtype] = float(loss)
    assert abs(losses["float32"] - losses["bfloat16"]) < 5e-2

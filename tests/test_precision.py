"""Mixed precision: bf16 compute with float32 parameters gives the float32 loss within tolerance."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from silentstar_jax.config import LossConfig, ModelConfig, ThinkingConfig
from silentstar_jax.model import ChainOptions, SilentStar
from silentstar_jax.objective import compute_loss

# bf16 has an 8-bit mantissa (~3 significant digits): losses of order 4 agree to ~2e-2.
TOLERANCE = 2e-2


def test_bf16_loss_matches_fp32():
    mc = ModelConfig(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    tc = ThinkingConfig(n_thoughts=2, n_ahead=2)
    toks = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
    ones = jnp.ones_like(toks)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        model = SilentStar(dataclasses.replace(mc, dtype=dtype), tc, rngs=nnx.Rngs(0))
        assert model.gpt2.wte[...].dtype == jnp.float32  # parameters stay float32
        out = model(toks, None, ChainOptions(key=jax.random.key(1)))
        assert out.mixed_logits.dtype == jnp.float32  # logits / softmax / loss in float32
        losses[dtype] = compute_loss(out, toks, ones, ones, tc, LossConfig())[1]
    for k in ("loss_base", "loss_think"):
        assert abs(float(losses["float32"][k]) - float(losses["bfloat16"][k])) < TOLERANCE, k
    assert float(losses["float32"]["loss_base"]) != float(losses["bfloat16"]["loss_base"])  # bf16 really ran

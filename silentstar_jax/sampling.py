"""Next-token sampling: greedy, temperature, top-k, top-p (nucleus). Pure, jittable."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class SamplingConfig:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off


def filter_logits(logits_BV, cfg: SamplingConfig):
    """Apply temperature, top-k and top-p; removed tokens get -inf."""
    logits_BV = logits_BV.astype(jnp.float32) / max(cfg.temperature, 1e-6)
    if cfg.top_k and cfg.top_k < logits_BV.shape[-1]:
        kth = jax.lax.top_k(logits_BV, cfg.top_k)[0][..., -1:]
        logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
    if cfg.top_p < 1.0:
        order = jnp.argsort(-logits_BV, axis=-1)
        sorted_logits = jnp.take_along_axis(logits_BV, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above this token
        keep_sorted = before < cfg.top_p  # the top token is always kept
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits_BV.shape[0])[:, None], order].set(keep_sorted)
        logits_BV = jnp.where(keep, logits_BV, -jnp.inf)
    return logits_BV


def sample(logits_BV, key, cfg: SamplingConfig):
    """Token ids [B]."""
    if cfg.greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits_BV, cfg), axis=-1).astype(jnp.int32)

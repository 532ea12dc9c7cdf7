"""Alignment of the forward outputs (docs/design.md §3, §5.5): the chain at position t, talk step s,
predicts x_{t+1+s}, so targets and inputs are the sequence shifted left; with n_samples = K each
row's chains are sampled K times, rows b*K .. b*K+K-1."""

from __future__ import annotations

import jax.numpy as jnp


def shift_left(x_BL, s: int, fill=0):
    """x[:, t + s] at t (the tail filled): aligns look-ahead targets/inputs with their chain."""
    if s == 0:
        return x_BL
    pad = jnp.full((x_BL.shape[0], s) + x_BL.shape[2:], fill, x_BL.dtype)
    return jnp.concatenate([x_BL[:, s:], pad], axis=1)


def lookahead(x_BL, A: int, fill=0):
    """[B, L, A]: x_{t+1+s} at (t, s)."""
    return jnp.stack([shift_left(x_BL, 1 + s, fill) for s in range(A)], axis=-1)


def repeat_samples(x, K: int, axis: int = 0):
    """[B, ...] -> [B*K, ...] along `axis`: each row repeated for its K sampled chains."""
    return jnp.repeat(x, K, axis=axis) if K > 1 else x

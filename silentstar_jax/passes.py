"""The whole-sequence anchored chain (thinking.anchor: sequence; docs/design.md §5.4).

Pass 0 is the plain model. Pass p = 1..n re-runs the same GPT-2 over the whole sequence; position t's
input is its own token embedding plus the thoughts fed back so far,

    e_p(t) = wte[x_t] + wpe[t] + a * (u_1(t) + ... + u_p(t)),   u_p ~ N(feedback(h_{p-1}(t)), sigma^2),

and the prediction is the lens of h_n (PonderLM; Zeng et al. 2025). `a` (heads.feedback_scale) starts
at 0, so thinking starts as the base model exactly. Position t + 1's pass p attends to position t's
pass-p state: a thought at t can help t + 1, unlike the private chain. Generation keeps one KV cache per
pass; a new token runs the n passes against them (`run_passes_cached`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from silentstar_jax.gpt2 import GPT2
from silentstar_jax.thought import ThoughtHeads, draw_thought, feedback_mean


def run_passes(gpt2: GPT2, heads: ThoughtHeads, n: int, tokens_BL, attn_mask_BL, h0_BLD, key=None, scan: bool = True):
    """(h [n, B, L, D] every pass's output after ln_f, z [n, B, L, D] each pass's thought input
    a * u_p, logp [B, L] summed over passes). key None: deterministic thoughts u_p = mean.
    scan: passes under lax.scan (one compiled pass, O(n) saved activations) or written out."""
    B, L = tokens_BL.shape
    x_BLD = gpt2.embed(tokens_BL, jnp.arange(L)[None])
    sampled = key is not None and heads.cfg.feedback != "pause"
    a = heads.feedback_scale[...]

    def one(carry, p):
        h_prev, acc, logp = carry
        mu = feedback_mean(gpt2, heads, h_prev)
        eps = jax.random.normal(jax.random.fold_in(key, p), mu.shape) if sampled else None
        u, lp = draw_thought(heads, mu, eps)
        z = a * u
        acc = acc + z
        h, _ = gpt2.forward_embedded(x_BLD + acc, attn_mask_BL)
        return (h, acc, logp + lp), (h, z)

    if heads.cfg.remat:
        one = jax.checkpoint(one)
    carry = (h0_BLD, jnp.zeros_like(x_BLD), jnp.zeros((B, L)))
    if scan and n:
        carry, (h, z) = jax.lax.scan(one, carry, jnp.arange(1, n + 1))
        return h, z, carry[2]
    hs, zs = [], []
    for p in range(1, n + 1):
        carry, (h, z) = one(carry, p)
        hs.append(h)
        zs.append(z)
    empty = jnp.zeros((0,) + x_BLD.shape, x_BLD.dtype)
    return (jnp.stack(hs), jnp.stack(zs), carry[2]) if n else (empty, empty, carry[2])


def init_pass_caches(gpt2: GPT2, n: int, batch: int, length: int):
    """(k, v) [n, NL, B, T, H, Dh]: one KV cache per pass."""
    k, v = gpt2.init_cache(batch, length)
    return jnp.broadcast_to(k, (n,) + k.shape), jnp.broadcast_to(v, (n,) + v.shape)


def run_passes_cached(gpt2: GPT2, heads: ThoughtHeads, tokens_BQ, h0_BQD, caches, start):
    """Generation: Q new tokens at positions [start, start + Q) through the n passes, each against
    and into its own cache (deterministic thoughts). Returns h [n, B, Q, D], z [n, B, Q, D] and the
    updated caches."""
    a = heads.feedback_scale[...]

    def one(carry, cache_p):
        h_prev, acc = carry
        z = a * feedback_mean(gpt2, heads, h_prev)
        acc = acc + z
        h, cache_p = gpt2.forward_cached(tokens_BQ, cache_p, start, acc)
        return (h, acc), (h, z, cache_p)

    _, (h, z, caches) = jax.lax.scan(one, (h0_BQD, jnp.zeros_like(h0_BQD)), caches)
    return h, z, caches

"""Attention kernels. Queries never see a key they should not: masks are built from positions.

All take q/k/v as [B, L, H, Dh]; scores and softmax are float32 whatever the compute dtype.
Three cases (the chain's softmax spans several key sets without concatenating them):
  * causal_attention: the base pass over a whole sequence;
  * cached_attention: decoding against a preallocated KV cache;
  * chain_attention:  one thought-chain step at many positions, each seeing base keys through a mask
                      plus *its own* chain's keys only ("diagonal" attention, docs/design.md §4),
                      earlier chain keys from an [S] buffer (lax.scan carry) and/or per-step arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from silentstar_jax.kernels import einsum_acc32

NEG_INF = -1e30


def _scores(q_BQHD, k_BKHD):
    scale = q_BQHD.shape[-1] ** -0.5
    return jnp.einsum("bqhd,bkhd->bhqk", q_BQHD, k_BKHD, preferred_element_type=jnp.float32) * scale


def _attend(scores_BHQK, mask, v_BKHD):
    scores_BHQK = jnp.where(mask, scores_BHQK, NEG_INF)
    probs = jax.nn.softmax(scores_BHQK, axis=-1).astype(v_BKHD.dtype)
    return einsum_acc32("bhqk,bkhd->bqhd", probs, v_BKHD)


def causal_mask(L: int, key_mask_BL=None):
    """[L, L] lower-triangular, or [B, 1, L, L] when some keys are padding."""
    m = jnp.tril(jnp.ones((L, L), bool))
    if key_mask_BL is None:
        return m
    return m[None, None] & key_mask_BL[:, None, None, :].astype(bool)


def causal_attention(q_BLHD, k_BLHD, v_BLHD, key_mask_BL=None, impl: str = "xla"):
    """Plain causal self-attention (the base pass)."""
    if impl == "cudnn" and key_mask_BL is None:
        return jax.nn.dot_product_attention(q_BLHD, k_BLHD, v_BLHD, is_causal=True, implementation="cudnn")
    L = q_BLHD.shape[1]
    return _attend(_scores(q_BLHD, k_BLHD), causal_mask(L, key_mask_BL), v_BLHD)


def cached_attention(q_BQHD, k_BQHD, v_BQHD, cache_k_BTHD, cache_v_BTHD, start):
    """Write the new keys at [start, start+Q) and attend to every cached key at or before each query."""
    idx = (0, start, 0, 0)
    cache_k_BTHD = jax.lax.dynamic_update_slice(cache_k_BTHD, k_BQHD.astype(cache_k_BTHD.dtype), idx)
    cache_v_BTHD = jax.lax.dynamic_update_slice(cache_v_BTHD, v_BQHD.astype(cache_v_BTHD.dtype), idx)
    Q, T = q_BQHD.shape[1], cache_k_BTHD.shape[1]
    mask_QT = jnp.arange(T)[None, :] <= (start + jnp.arange(Q))[:, None]
    out = _attend(_scores(q_BQHD, cache_k_BTHD), mask_QT, cache_v_BTHD)
    return out, (cache_k_BTHD, cache_v_BTHD)


def _split_softmax(*scores):
    """One softmax over the concatenation of `scores` (last axes), returned in the same parts
    without materialising the concatenation."""
    m = jax.lax.stop_gradient(jnp.max(jnp.stack([x.max(-1) for x in scores]), axis=0))[..., None]
    es = [jnp.exp(x - m) for x in scores]
    denom = sum(e.sum(-1, keepdims=True) for e in es)
    return [e / denom for e in es]


def chain_attention(
    q_BLHD, k_BLHD, v_BLHD, base_k_BKHD, base_v_BKHD, base_mask, buf_k_SBLHD, buf_v_SBLHD, n_buf, prev_k, prev_v
):
    """One chain step at every position l. Keys: the base keys allowed by `base_mask` ([L, K] or
    [B, 1, L, K]); the chain keys of earlier steps at the same l, from two places: the first `n_buf`
    entries of the buffer [S, B, L, H, Dh] (steps of earlier lax.scan iterations; None: no buffer) and
    the tuples prev_k/prev_v of [B, L, H, Dh] (earlier steps written out in this iteration); and the
    step's own key. Cost O(L*K + L*S), never L*S*L.

    Why two places: under lax.scan the buffer is a carry that the backward pass saves whole at every
    iteration (O(S^2) copies when each iteration is one step); keys written out step by step are read
    where they are, nothing copied."""
    scale = q_BLHD.shape[-1] ** -0.5
    ks, vs = tuple(prev_k) + (k_BLHD,), tuple(prev_v) + (v_BLHD,)
    scores = [jnp.where(base_mask, _scores(q_BLHD, base_k_BKHD), NEG_INF)]  # [B, H, L, K]
    scores.append(
        jnp.stack([jnp.einsum("blhd,blhd->bhl", q_BLHD, k, preferred_element_type=jnp.float32) for k in ks], -1) * scale
    )  # [B, H, L, j]
    if buf_k_SBLHD is not None:
        s_buf = jnp.einsum("blhd,sblhd->bhls", q_BLHD, buf_k_SBLHD, preferred_element_type=jnp.float32) * scale
        scores.append(jnp.where(jnp.arange(buf_k_SBLHD.shape[0]) < n_buf, s_buf, NEG_INF))  # [B, H, L, S]
    probs = [p.astype(v_BLHD.dtype) for p in _split_softmax(*scores)]
    out = einsum_acc32("bhlk,bkhd->blhd", probs[0], base_v_BKHD)
    for j, v in enumerate(vs):
        out = out + jnp.swapaxes(probs[1][..., j], 1, 2)[..., None] * v
    if buf_k_SBLHD is not None:
        out = out + einsum_acc32("bhls,sblhd->blhd", probs[2], buf_v_SBLHD)
    return out

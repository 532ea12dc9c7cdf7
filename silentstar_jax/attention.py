"""Attention kernels. Queries never see a key they should not: masks are built from positions.

All take q/k/v as [B, L, H, Dh]; scores and softmax are float32 whatever the compute dtype.
Three cases (the chain's softmax spans two key sets without concatenating them):
  * causal_attention: the base pass over a whole sequence;
  * cached_attention: decoding against a preallocated KV cache;
  * chain_attention:  one thought-chain step at many positions, each seeing base keys through a mask
                      plus *its own* chain's keys only ("diagonal" attention, DESIGN.md 1.1),
                      with an [S] key buffer under lax.scan or per-step keys when unrolled.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def _scores(q_BQHD, k_BKHD):
    scale = q_BQHD.shape[-1] ** -0.5
    return jnp.einsum("bqhd,bkhd->bhqk", q_BQHD, k_BKHD, preferred_element_type=jnp.float32) * scale


def _pv(probs, v, eq):
    """probs @ v, accumulated in float32 (bf16 inputs then take XLA:CPU's fast bf16 dot)."""
    return jnp.einsum(eq, probs, v, preferred_element_type=jnp.float32).astype(v.dtype)


def _attend(scores_BHQK, mask, v_BKHD):
    scores_BHQK = jnp.where(mask, scores_BHQK, NEG_INF)
    probs = jax.nn.softmax(scores_BHQK, axis=-1).astype(v_BKHD.dtype)
    return _pv(probs, v_BKHD, "bhqk,bkhd->bqhd")


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


def _split_softmax(s_base, s_chain):
    """One softmax over the concatenation [s_base | s_chain] (last axes), returned as its two parts
    without materialising the concatenation."""
    m = jax.lax.stop_gradient(jnp.maximum(s_base.max(-1, keepdims=True), s_chain.max(-1, keepdims=True)))
    e_base, e_chain = jnp.exp(s_base - m), jnp.exp(s_chain - m)
    denom = e_base.sum(-1, keepdims=True) + e_chain.sum(-1, keepdims=True)
    return e_base / denom, e_chain / denom


def chain_attention(q_BLHD, k_BLHD, v_BLHD, base_k_BKHD, base_v_BKHD, base_mask,
                    chain_k_SBLHD, chain_v_SBLHD, step):
    """Chain step `step` (traced, under lax.scan) at every position l: keys = base keys allowed by
    `base_mask` ([L, K] or [B, 1, L, K]) plus the chain keys of steps 0..step at the same l, kept in
    an [S] carry buffer. Cost O(L*K + L*S), never L*S*L.

    Returns the attention output and the chain buffers with this step's keys written in.
    """
    chain_k_SBLHD = jax.lax.dynamic_update_index_in_dim(chain_k_SBLHD, k_BLHD.astype(chain_k_SBLHD.dtype), step, 0)
    chain_v_SBLHD = jax.lax.dynamic_update_index_in_dim(chain_v_SBLHD, v_BLHD.astype(chain_v_SBLHD.dtype), step, 0)
    S = chain_k_SBLHD.shape[0]
    s_base = jnp.where(base_mask, _scores(q_BLHD, base_k_BKHD), NEG_INF)      # [B, H, L, K]
    s_chain = jnp.einsum("blhd,sblhd->bhls", q_BLHD, chain_k_SBLHD,
                         preferred_element_type=jnp.float32) * q_BLHD.shape[-1] ** -0.5
    s_chain = jnp.where(jnp.arange(S) <= step, s_chain, NEG_INF)              # [B, H, L, S]
    p_base, p_chain = (p.astype(v_BLHD.dtype) for p in _split_softmax(s_base, s_chain))
    out = _pv(p_base, base_v_BKHD, "bhlk,bkhd->blhd") + _pv(p_chain, chain_v_SBLHD, "bhls,sblhd->blhd")
    return out, (chain_k_SBLHD, chain_v_SBLHD)


def chain_attention_unrolled(q_BLHD, k_BLHD, v_BLHD, base_k_BKHD, base_v_BKHD, base_mask, prev_k, prev_v):
    """chain_attention for a chain unrolled in Python: the earlier steps' keys/values come as tuples
    of [B, L, H, Dh] arrays, so step j reads exactly j + 1 chain keys. Under lax.scan the [S] buffer
    is a carry, saved whole at every step for the backward pass (O(S^2) memory traffic); here
    nothing is copied."""
    ks, vs = tuple(prev_k) + (k_BLHD,), tuple(prev_v) + (v_BLHD,)
    scale = q_BLHD.shape[-1] ** -0.5
    s_base = jnp.where(base_mask, _scores(q_BLHD, base_k_BKHD), NEG_INF)      # [B, H, L, K]
    s_chain = jnp.stack([jnp.einsum("blhd,blhd->bhl", q_BLHD, k, preferred_element_type=jnp.float32)
                         for k in ks], -1) * scale                            # [B, H, L, j + 1]
    p_base, p_chain = (p.astype(v_BLHD.dtype) for p in _split_softmax(s_base, s_chain))
    out = _pv(p_base, base_v_BKHD, "bhlk,bkhd->blhd")
    for j, v in enumerate(vs):
        out = out + jnp.swapaxes(p_chain[..., j], 1, 2)[..., None] * v
    return out

"""SilentStar: GPT-2 plus thinking heads. The parallel training forward (every position thinks at
once) and the single-position thinking used by generation share `thought.run_chain`."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from silentstar_jax.attention import causal_mask
from silentstar_jax.config import ModelConfig, ThinkingConfig
from silentstar_jax.gpt2 import GPT2
from silentstar_jax.thought import ThoughtHeads, run_chain


def shift_left(x_BL, s: int, fill=0):
    """x[:, t + s] at t (the tail filled): aligns look-ahead targets/inputs with their chain."""
    if s == 0:
        return x_BL
    pad = jnp.full((x_BL.shape[0], s) + x_BL.shape[2:], fill, x_BL.dtype)
    return jnp.concatenate([x_BL[:, s:], pad], axis=1)


class SilentStar(nnx.Module):
    def __init__(self, model_cfg: ModelConfig, think_cfg: ThinkingConfig, *, rngs: nnx.Rngs,
                 gpt2: Optional[GPT2] = None):
        self.gpt2 = gpt2 if gpt2 is not None else GPT2(model_cfg, rngs=rngs)
        self.think_cfg = think_cfg
        self.heads = ThoughtHeads(self.gpt2, think_cfg, rngs=rngs) if think_cfg.enabled else None

    def __call__(self, tokens_BL, attn_mask_BL=None, key=None, n_samples: int = 1, thought_logits: bool = False):
        """Parallel forward over a batch of sequences (DESIGN.md 1.1).

        Returns a dict:
          base_logits [B, L, V]      the plain GPT-2 logits (position t predicts x_{t+1})
          mixed_logits [BK, L, A, V] thinking logits: chain at t, talk step s predicts x_{t+1+s}
          mix_weight [BK, L, A], value [BK, L], logp [BK, L] (policy log-prob of the thoughts),
          thoughts [BK, L, n, D] (thought inputs z), sigma []
        BK = B * n_samples: each sequence's chains are sampled n_samples times (rows b*K .. b*K+K-1).
        key None -> deterministic thoughts (z = mu), as in evaluation and generation.
        thought_logits: also return thought_logits [BK, L, A, V], the thought path alone (unmixed).
        """
        g = self.gpt2
        B, L = tokens_BL.shape
        h0, (k0, v0) = g.forward_hidden(tokens_BL, attn_mask_BL)
        out = {"base_logits": g.logits(h0)}
        if self.heads is None:
            return out
        cfg = self.think_cfg
        K, A, n = n_samples, cfg.n_ahead, cfg.n_thoughts
        rep = (lambda x, axis=0: jnp.repeat(x, K, axis=axis)) if K > 1 else (lambda x, axis=0: x)
        tokens, h0 = rep(tokens_BL), rep(h0)
        k0, v0 = rep(k0, 1), rep(v0, 1)
        mask = causal_mask(L, None if attn_mask_BL is None else rep(attn_mask_BL))
        talk = jnp.stack([g.embed_tokens(shift_left(tokens, s)) for s in range(1, A)]) if A > 1 \
            else jnp.zeros((0, B * K, L, g.cfg.n_embd))
        pos = jnp.broadcast_to(jnp.arange(L), (B * K, L))
        y, z, logp = run_chain(g, self.heads, n, pos, k0, v0, mask, talk, key)
        h0_s = jnp.stack([shift_left(h0, s) for s in range(A)], axis=2)     # [BK, L, A, D]
        y_s = jnp.moveaxis(y[n + 1:], 0, 2)                                  # [BK, L, A, D]
        w = self.heads.mix_weight(h0_s, y_s)
        mixed = (1 - w[..., None]) * h0_s + w[..., None] * y_s
        out.update(mixed_logits=g.logits(mixed), mix_weight=w, value=self.heads.value(h0), logp=logp,
                   thoughts=jnp.moveaxis(z[1:n + 1], 0, 2), sigma=jnp.exp(self.heads.sigma_log()).mean())
        if thought_logits:
            out["thought_logits"] = g.logits(y_s)
        return out

    def think_at(self, h0_BD, cache, pos, n_thoughts: Optional[int] = None, trace_top_k: int = 0):
        """Generation: the chain (start, n thoughts, end) for one position `pos` per row, against the
        KV cache (keys at positions <= pos). Returns mixed logits [B, V] and a trace dict."""
        g, heads = self.gpt2, self.heads
        n = self.think_cfg.n_thoughts if n_thoughts is None else n_thoughts
        k_cache, v_cache = cache
        B, T = k_cache.shape[1], k_cache.shape[2]
        mask = (jnp.arange(T) <= pos)[None, :]                               # [L=1, T]
        pos_BL = jnp.full((B, 1), pos)
        talk = jnp.zeros((0, B, 1, g.cfg.n_embd))
        y, z, _ = run_chain(g, heads, n, pos_BL, k_cache, v_cache, mask, talk, None)
        y_end = y[n + 1, :, 0]
        w = heads.mix_weight(h0_BD, y_end)
        logits = g.logits((1 - w[:, None]) * h0_BD + w[:, None] * y_end)
        trace = {"mix_weight": w, "value": heads.value(h0_BD)}
        if trace_top_k and n:
            trace.update(thought_trace(g, y[:n, :, 0], z[1:n + 1, :, 0], trace_top_k))
        return logits, trace


def thought_trace(g: GPT2, y_nBD, z_nBD, k: int) -> dict:
    """What each thought 'says'. Thought j is the vector z_j = P(y_{j-1}) fed as the next input:
    logit lens = softmax of the tied head on the hidden state y_{j-1} that produced it; cosine =
    nearest token embeddings to z_j (scale-free: thought norms drift from token norms)."""
    probs = jax.nn.softmax(g.logits(y_nBD), axis=-1)
    lens_p, lens_id = jax.lax.top_k(probs, k)
    wte = g.wte[...]
    cos = (z_nBD @ wte.T) / (jnp.linalg.norm(z_nBD, axis=-1, keepdims=True) * jnp.linalg.norm(wte, axis=-1) + 1e-9)
    cos_v, cos_id = jax.lax.top_k(cos, k)
    sw = lambda a: jnp.swapaxes(a, 0, 1)                                     # -> [B, n, ...]
    return {"lens_id": sw(lens_id), "lens_p": sw(lens_p), "cos_id": sw(cos_id), "cos": sw(cos_v),
            "norm": sw(jnp.linalg.norm(z_nBD, axis=-1))}

"""The thinking parameters and the thought chain (docs/design.md §3 Chain layout, §4 Chain attention).

A chain at base position t runs S steps: start, n continuous thoughts, end, then A-1 teacher-forced
talk tokens. Step i (0-based) gets position id t + i + 1. The same `run_chain` serves training
(all L positions at once, base keys = the sequence's own, causal) and generation (one position,
base keys = the KV cache): only the base-key mask differs.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from silentstar_jax.attention import chain_attention
from silentstar_jax.config import ChainLayout, ThinkingConfig
from silentstar_jax.gpt2 import GPT2
from silentstar_jax.sharding import ThinkParam, param

LOG_2PI = math.log(2 * math.pi)


def gaussian_logprob(z, mu, log_sigma):
    """mean_d log N(z; mu, sigma^2): averaged (not summed) over D so the scale is independent of D."""
    return jnp.mean(-0.5 * jnp.square((z - mu) * jnp.exp(-log_sigma)) - log_sigma - 0.5 * LOG_2PI, axis=-1)


def _mlp(x, w1, b1, w2, b2):
    return jax.nn.relu(x @ w1 + b1) @ w2 + b2


class ThoughtHeads(nnx.Module):
    """start/end/pause embeddings (stored value/scale, used scale*param), thought projection P,
    policy scale log_sigma, mixing head [2D -> D -> 1] and value head [D -> D/4 -> 1]."""

    def __init__(self, gpt2: GPT2, cfg: ThinkingConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D = gpt2.cfg.n_embd
        wte = gpt2.wte[...]
        emb_rms = jnp.sqrt(jnp.mean(jnp.square(wte)))
        rows = jax.random.choice(rngs.params(), wte.shape[0], (3,), replace=False)
        scale = cfg.emb_grad_scale
        # start/end/pause begin as real token embeddings: in-distribution inputs for a pretrained model
        tp = lambda value, *axes: param(value, axes, ThinkParam)
        self.start = tp(wte[rows[0]] / scale, "embed")
        self.end = tp(wte[rows[1]] / scale, "embed")
        self.pause = tp(wte[rows[2]] / scale, "embed")
        # P maps an ln_f output (RMS ~ |ln_f scale|) to the RMS of token embeddings, near identity
        ln_rms = jnp.sqrt(jnp.mean(jnp.square(gpt2.ln_f_scale[...])))
        self.proj_kernel = tp(jnp.eye(D) * (emb_rms / ln_rms), "think_in", "embed")
        self.proj_bias = tp(jnp.zeros((D,)), "embed")
        sigma_axes = ("embed",) if cfg.sigma_per_dim else ()
        self.log_sigma = tp(jnp.full((D,) if cfg.sigma_per_dim else (), jnp.log(cfg.sigma_init * emb_rms)), *sigma_axes)
        normal = lambda shape, std: std * jax.random.normal(rngs.params(), shape)
        H = max(D // 4, 1)
        self.mix_w1, self.mix_b1 = tp(normal((2 * D, D), 0.02), "think_in", "embed"), tp(jnp.zeros((D,)), "embed")
        # zero last layer + negative bias: w = sigmoid(bias) ~ 0 whatever the input, i.e. the base model
        self.mix_w2 = tp(jnp.zeros((D, 1)), "embed", "think_out")
        self.mix_b2 = tp(jnp.full((1,), cfg.mix_init_bias, jnp.float32), "think_out")
        self.value_w1, self.value_b1 = tp(normal((D, H), 0.02), "embed", "think_hidden"), tp(jnp.zeros((H,)), "think_hidden")
        self.value_w2, self.value_b2 = tp(jnp.zeros((H, 1)), "think_hidden", "think_out"), tp(jnp.zeros((1,)), "think_out")

    def embedding(self, name: str):
        return self.cfg.emb_grad_scale * getattr(self, name)[...]

    def sigma_log(self):
        return jnp.clip(self.log_sigma[...], self.cfg.log_sigma_min, self.cfg.log_sigma_max)  # clamp *before* exp

    def project(self, y):
        return y @ self.proj_kernel[...] + self.proj_bias[...]

    def mix_weight(self, h0, y):
        """w in (0, 1) [...]: weight of the thought path."""
        x = jnp.concatenate([h0, y], axis=-1)
        return jax.nn.sigmoid(_mlp(x, self.mix_w1[...], self.mix_b1[...], self.mix_w2[...], self.mix_b2[...]))[..., 0]

    def value(self, h0):
        h0 = jax.lax.stop_gradient(h0)
        return _mlp(h0, self.value_w1[...], self.value_b1[...], self.value_w2[...], self.value_b2[...])[..., 0]


@dataclasses.dataclass(frozen=True)
class _Chain:
    """What every step of one run_chain call reads (trace-time constants and arrays)."""
    gpt2: GPT2
    heads: ThoughtHeads
    layout: ChainLayout
    pos_BL: jax.Array
    base_k: jax.Array            # [NL, B, K, H, Dh]
    base_v: jax.Array
    base_mask: jax.Array         # [L, K] or [B, 1, L, K]
    talk_ABLD: jax.Array         # [A-1, B, L, D]
    key: Optional[jax.Array]     # None: deterministic thoughts
    h0_BLD: Optional[jax.Array]  # thinking.seed: base
    noise_len: Optional[int]

    @property
    def sampled(self) -> bool:
        return self.key is not None and self.heads.cfg.feedback == "latent"


def _noise(c: _Chain, i, shape):
    """N(0, 1) noise of thought i; drawn for whole rows of noise_len and taken at pos_BL if given."""
    k = jax.random.fold_in(c.key, i)
    if c.noise_len is None:
        return jax.random.normal(k, shape)
    eps = jax.random.normal(k, (shape[0], c.noise_len, shape[-1]))
    return jnp.take_along_axis(eps, c.pos_BL[..., None], axis=1)


def _thought(c: _Chain, i, y_prev_BLD):
    """Input z [B, L, D] of thought step i and its policy log-prob [B, L] (0 when not sampled)."""
    heads, cfg = c.heads, c.heads.cfg
    if cfg.feedback == "pause":
        return jnp.broadcast_to(heads.embedding("pause"), y_prev_BLD.shape), jnp.zeros(y_prev_BLD.shape[:-1])
    if cfg.seed == "base":   # i is a Python int (written-out steps) or traced (inside the scan)
        first = i == 1
        y_prev_BLD = (c.h0_BLD if first else y_prev_BLD) if isinstance(i, int) else \
            jnp.where(first, c.h0_BLD, y_prev_BLD)
    mu = heads.project(y_prev_BLD)
    if not c.sampled:
        return mu, jnp.zeros(mu.shape[:-1])
    log_sigma = heads.sigma_log()
    z_raw = mu + jnp.exp(log_sigma) * _noise(c, i, mu.shape)
    z = z_raw if cfg.estimator in ("pathwise", "both") else jax.lax.stop_gradient(z_raw)
    return z, gaussian_logprob(jax.lax.stop_gradient(z_raw), mu, log_sigma)


def _step_input(c: _Chain, i, y_prev_BLD):
    """(input [B, L, D], log-prob [B, L]) of step i: a Python int (branches resolved while tracing)
    or traced (inside the scan: every branch computed, one selected)."""
    lay, heads = c.layout, c.heads
    start, end = heads.embedding("start"), heads.embedding("end")
    zero_lp = jnp.zeros(y_prev_BLD.shape[:-1])
    if isinstance(i, int):
        kind = lay.kind(i)
        if kind == "thought":
            return _thought(c, i, y_prev_BLD)
        inp = {"start": start, "end": end}[kind] if kind != "talk" else c.talk_ABLD[i - lay.talk.start]
        return jnp.broadcast_to(inp, y_prev_BLD.shape), zero_lp
    z, lp = _thought(c, i, y_prev_BLD)
    is_thought = (i >= 1) & (i <= lay.n_thoughts)
    n_talk = len(lay.talk)
    talk = c.talk_ABLD[jnp.clip(i - lay.talk.start, 0, max(n_talk - 1, 0))] if n_talk else z
    inp = jnp.where(i == lay.start, start, jnp.where(is_thought, z, jnp.where(i == lay.end, end, talk)))
    return inp, jnp.where(is_thought, lp, 0.0)


def _one_step(c: _Chain, i, y_prev_BLD, buf, n_buf, prev_k, prev_v):
    """Step i at every position: (output y [B, L, D], input, log-prob, its keys and values
    [NL, B, L, H, Dh]). Earlier steps' keys: buf (first n_buf entries) and prev_k/prev_v."""
    inp_BLD, lp_BL = _step_input(c, i, y_prev_BLD)
    buf_k, buf_v = buf if buf is not None else (None, None)

    def attend(q, k, v, layer_kv):
        base_k, base_v, bk, bv, pk, pv = layer_kv
        return chain_attention(q, k, v, base_k, base_v, c.base_mask, bk, bv, n_buf, pk, pv), (k, v)

    x = inp_BLD + c.gpt2.wpe[...][c.pos_BL + i + 1]
    x, (k_i, v_i) = c.gpt2.run_layers(x, attend, (c.base_k, c.base_v, buf_k, buf_v, prev_k, prev_v))
    return c.gpt2.final_norm(x), inp_BLD, lp_BL, k_i.astype(c.base_k.dtype), v_i.astype(c.base_v.dtype)


def _chunk(c: _Chain, first, count: int, y_prev_BLD, buf, logp_BL):
    """Steps first .. first+count-1 written out (first: int or traced); keys of steps < first are in buf.
    Returns the last output, the chunk's keys/values (tuples), y and z [count, B, L, D], logp."""
    step = lambda i, *args: _one_step(c, i, *args)
    if c.heads.cfg.remat:
        step = jax.checkpoint(step, static_argnums=(0,) if isinstance(first, int) else ())
    ks, vs, ys, zs = (), (), [], []
    for r in range(count):
        y_prev_BLD, inp, lp, k_i, v_i = step(first + r, y_prev_BLD, buf, first, ks, vs)
        ks, vs = ks + (k_i,), vs + (v_i,)
        ys.append(y_prev_BLD)
        zs.append(inp)
        logp_BL = logp_BL + lp
    return y_prev_BLD, ks, vs, jnp.stack(ys), jnp.stack(zs), logp_BL


def run_chain(gpt2: GPT2, heads: ThoughtHeads, n_thoughts: int, pos_BL, base_k, base_v, base_mask,
              talk_ABLD, key=None, h0_BLD=None, noise_len=None):
    """Run start, n thoughts, end, talk tokens at every query position in [B, L] at once.

    base_k/base_v: [NL, B, K, H, Dh]; base_mask: [L, K] or [B, 1, L, K]; talk_ABLD: [A-1, B, L, D]
    teacher-forced talk embeddings (A-1 may be 0). key None -> deterministic thoughts z = mu.
    h0_BLD: the base hidden state at each position; with thinking.seed: base the first thought's
    mean is P(h0) instead of P(start-step output), so thought 1 starts with the token in hand.
    noise_len: the queries are positions pos_BL of rows of this length; the noise is drawn for whole
    rows and taken at pos_BL, so chains at a subset of positions sample what all positions would.
    Returns y_SBLD (ln_f output of every step), z_SBLD (step inputs) and logp_BL = sum over thought
    steps of mean_d log N(stop_grad(z); mu, sigma^2).

    The S steps run in chunks of c = thinking.unroll (all S with thinking.chain: unrolled): the full
    chunks under lax.scan, the rest after it. Inside a chunk the steps are written out and read each
    other's keys directly; earlier chunks' keys come from an [S] buffer carried by the scan, which the
    backward pass saves at every iteration (S/c times). Compile time grows with c, not with n; the
    numbers and the sampled noise do not depend on c.
    """
    cfg, mcfg = heads.cfg, gpt2.cfg
    if cfg.seed == "base" and cfg.feedback == "latent" and n_thoughts and h0_BLD is None:
        raise ValueError("thinking.seed=base needs the base hidden state h0_BLD")
    lay = ChainLayout(n_thoughts, talk_ABLD.shape[0] + 1)
    c = _Chain(gpt2, heads, lay, pos_BL, base_k, base_v, base_mask, talk_ABLD, key, h0_BLD, noise_len)
    S, B, L = lay.n_steps, pos_BL.shape[0], pos_BL.shape[1]
    size = S if cfg.chain == "unrolled" else min(cfg.unroll, S)
    n_scan = S // size if size < S else 0            # full chunks under lax.scan; the rest written out
    y_prev, logp = jnp.zeros((B, L, mcfg.n_embd)), jnp.zeros((B, L))
    ys, zs, buf = [], [], None
    if n_scan:
        shape = (mcfg.n_layer, S, B, L, mcfg.n_head, mcfg.head_dim)
        buf = (jnp.zeros(shape, base_k.dtype), jnp.zeros(shape, base_v.dtype))

        def body(carry, ci):
            y_prev, buf, logp = carry
            first = ci * size
            y_prev, ks, vs, y, z, logp = _chunk(c, first, size, y_prev, buf, logp)
            write = lambda b, new: jax.lax.dynamic_update_slice_in_dim(b, jnp.stack(new, 1), first, 1)
            return (y_prev, (write(buf[0], ks), write(buf[1], vs)), logp), (y, z)

        (y_prev, buf, logp), (y, z) = jax.lax.scan(body, (y_prev, buf, logp), jnp.arange(n_scan))
        ys.append(y.reshape((n_scan * size,) + y.shape[2:]))
        zs.append(z.reshape((n_scan * size,) + z.shape[2:]))
    if S - n_scan * size:
        _, _, _, y, z, logp = _chunk(c, n_scan * size, S - n_scan * size, y_prev, buf, logp)
        ys.append(y)
        zs.append(z)
    return jnp.concatenate(ys), jnp.concatenate(zs), logp

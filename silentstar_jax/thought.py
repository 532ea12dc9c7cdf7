"""The thinking parameters and the thought chain (DESIGN.md 1.1).

A chain at base position t runs S steps: start, n continuous thoughts, end, then A-1 teacher-forced
talk tokens. Step i (0-based) gets position id t + i + 1. The same `run_chain` serves training
(all L positions at once, base keys = the sequence's own, causal) and generation (one position,
base keys = the KV cache): only the base-key mask differs.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from silentstar_jax.attention import chain_attention
from silentstar_jax.config import ModelConfig, ThinkingConfig
from silentstar_jax.gpt2 import GPT2

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
        self.start = nnx.Param(wte[rows[0]] / scale)
        self.end = nnx.Param(wte[rows[1]] / scale)
        self.pause = nnx.Param(wte[rows[2]] / scale)
        # P maps an ln_f output (RMS ~ |ln_f scale|) to the RMS of token embeddings, near identity
        ln_rms = jnp.sqrt(jnp.mean(jnp.square(gpt2.ln_f_scale[...])))
        self.proj_kernel = nnx.Param(jnp.eye(D) * (emb_rms / ln_rms))
        self.proj_bias = nnx.Param(jnp.zeros((D,)))
        self.log_sigma = nnx.Param(jnp.full((D,) if cfg.sigma_per_dim else (), jnp.log(cfg.sigma_init * emb_rms)))
        normal = lambda shape, std: std * jax.random.normal(rngs.params(), shape)
        H = max(D // 4, 1)
        self.mix_w1, self.mix_b1 = nnx.Param(normal((2 * D, D), 0.02)), nnx.Param(jnp.zeros((D,)))
        # zero last layer + negative bias: w = sigmoid(bias) ~ 0 whatever the input, i.e. the base model
        self.mix_w2, self.mix_b2 = nnx.Param(jnp.zeros((D, 1))), nnx.Param(jnp.full((1,), cfg.mix_init_bias, jnp.float32))
        self.value_w1, self.value_b1 = nnx.Param(normal((D, H), 0.02)), nnx.Param(jnp.zeros((H,)))
        self.value_w2, self.value_b2 = nnx.Param(jnp.zeros((H, 1))), nnx.Param(jnp.zeros((1,)))

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


def run_chain(gpt2: GPT2, heads: ThoughtHeads, n_thoughts: int, pos_BL, base_k, base_v, base_mask,
              talk_ABLD, key=None):
    """Run start, n thoughts, end, talk tokens at every query position in [B, L] at once.

    base_k/base_v: [NL, B, K, H, Dh]; base_mask: [L, K] or [B, 1, L, K]; talk_ABLD: [A-1, B, L, D]
    teacher-forced talk embeddings (A-1 may be 0). key None -> deterministic thoughts z = mu.
    Returns y [S, B, L, D] (ln_f output of every step), z [S, B, L, D] (step inputs) and
    logp [B, L] = sum over thought steps of mean_d log N(stop_grad(z); mu, sigma^2).

    The S steps run in chunks of c = thinking.unroll (all S with thinking.chain: unrolled): the full
    chunks under lax.scan, the rest after it. Inside a chunk the steps are written out and read each
    other's keys directly; earlier chunks' keys come from an [S] buffer carried by the scan, which the
    backward pass saves at every iteration (S/c times). Compile time grows with c, not with n; the
    numbers and the sampled noise do not depend on c.
    """
    cfg, mcfg = heads.cfg, gpt2.cfg
    n, A1 = n_thoughts, talk_ABLD.shape[0]
    S = n + 2 + A1
    NL, B, L = mcfg.n_layer, pos_BL.shape[0], pos_BL.shape[1]
    log_sigma = heads.sigma_log()
    start, end = heads.embedding("start"), heads.embedding("end")
    pause = heads.embedding("pause")
    wpe = gpt2.wpe[...]
    latent = cfg.feedback == "latent"
    pathwise = cfg.estimator in ("pathwise", "both")
    sampled = key is not None and latent
    c = S if cfg.chain == "unrolled" else min(cfg.unroll, S)
    n_scan = S // c if c < S else 0            # full chunks under lax.scan; the rest written out

    def thought(i, y_prev):
        """Input z of a thought step and its policy log-prob [B, L] (0 when not sampled)."""
        if not latent:
            return jnp.broadcast_to(pause, y_prev.shape), jnp.zeros(y_prev.shape[:-1])
        mu = heads.project(y_prev)
        if not sampled:
            return mu, jnp.zeros(mu.shape[:-1])
        z_raw = mu + jnp.exp(log_sigma) * jax.random.normal(jax.random.fold_in(key, i), mu.shape)
        z = z_raw if pathwise else jax.lax.stop_gradient(z_raw)
        return z, gaussian_logprob(jax.lax.stop_gradient(z_raw), mu, log_sigma)

    def step_input(i, y_prev):
        """(input [B, L, D], log-prob [B, L]) of step i: a Python int (branches resolved while tracing)
        or traced (inside the scan: every branch computed, one selected)."""
        if isinstance(i, int):
            if 1 <= i <= n:
                return thought(i, y_prev)
            inp = start if i == 0 else end if i == n + 1 else talk_ABLD[i - n - 2]
            return jnp.broadcast_to(inp, y_prev.shape), jnp.zeros(y_prev.shape[:-1])
        z, lp = thought(i, y_prev)
        is_thought = (i >= 1) & (i <= n)
        tk = talk_ABLD[jnp.clip(i - n - 2, 0, max(A1 - 1, 0))] if A1 else z
        inp = jnp.where(i == 0, start, jnp.where(is_thought, z, jnp.where(i == n + 1, end, tk)))
        return inp, jnp.where(is_thought, lp, 0.0)

    def one_step(i, y_prev, buf, n_buf, prev_k, prev_v):
        inp, lp = step_input(i, y_prev)

        def attend(q, k, v, xs):
            bk, bv, fk, fv, pk, pv = xs
            return chain_attention(q, k, v, bk, bv, base_mask, fk, fv, n_buf, pk, pv), (k, v)

        fk, fv = buf if buf is not None else (None, None)
        x, (k_i, v_i) = gpt2.run_layers(inp + wpe[pos_BL + i + 1], attend, (base_k, base_v, fk, fv, prev_k, prev_v))
        return gpt2.final_norm(x), inp, lp, k_i.astype(base_k.dtype), v_i.astype(base_v.dtype)

    def chunk(first, count, y_prev, buf, logp):
        """Steps first .. first+count-1 (first: int or traced); keys of steps < first are in buf."""
        step = jax.checkpoint(one_step, static_argnums=(0,) if isinstance(first, int) else ()) \
            if cfg.remat else one_step
        ks, vs, ys, zs = (), (), [], []
        for r in range(count):
            y_prev, inp, lp, k_i, v_i = step(first + r, y_prev, buf, first, ks, vs)
            ks, vs = ks + (k_i,), vs + (v_i,)
            ys.append(y_prev), zs.append(inp)
            logp = logp + lp
        return y_prev, ks, vs, jnp.stack(ys), jnp.stack(zs), logp

    y_prev, logp = jnp.zeros((B, L, mcfg.n_embd)), jnp.zeros((B, L))
    ys, zs, buf = [], [], None
    if n_scan:
        shape = (NL, S, B, L, mcfg.n_head, mcfg.head_dim)
        buf = (jnp.zeros(shape, base_k.dtype), jnp.zeros(shape, base_v.dtype))

        def body(carry, ci):
            y_prev, buf, logp = carry
            first = ci * c
            y_prev, ks, vs, y, z, logp = chunk(first, c, y_prev, buf, logp)
            write = lambda b, new: jax.lax.dynamic_update_slice_in_dim(b, jnp.stack(new, 1), first, 1)
            return (y_prev, (write(buf[0], ks), write(buf[1], vs)), logp), (y, z)

        (y_prev, buf, logp), (y, z) = jax.lax.scan(body, (y_prev, buf, logp), jnp.arange(n_scan))
        ys.append(y.reshape((n_scan * c,) + y.shape[2:])), zs.append(z.reshape((n_scan * c,) + z.shape[2:]))
    if S - n_scan * c:
        _, _, _, y, z, logp = chunk(n_scan * c, S - n_scan * c, y_prev, buf, logp)
        ys.append(y), zs.append(z)
    return jnp.concatenate(ys), jnp.concatenate(zs), logp

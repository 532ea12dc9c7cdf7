"""The thinking parameters and the thought chain (docs/design.md §3 Chain layout, §4 Chain attention).

A chain at base position t runs S steps: start, n continuous thoughts, end, then A-1 teacher-forced
talk tokens. Step i (0-based) gets position id t + i + 1 (thinking.positions: same: t + 1 up to the
end step). The same `run_chain` serves training (all L positions at once, base keys = the sequence's
own, causal) and generation (one position, base keys = the KV cache): only the base-key mask differs.
"""

from __future__ import annotations

import dataclasses
import math

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


# start/end/pause are stored as value / EMB_GRAD_SCALE and used as EMB_GRAD_SCALE * param, so these three
# vectors learn that many times faster than the learning rate says (docs/design.md §3)
EMB_GRAD_SCALE = 100.0
LOG_SIGMA_RANGE = (-10.0, 2.0)  # log σ clamped before the exp: no overflow or zero σ


class ThoughtHeads(nnx.Module):
    """start/end/pause embeddings (stored value/scale, used scale*param), thought projection P,
    policy scale log_sigma, mixing head [2D -> D -> 1] and value head [D -> D/4 -> 1]."""

    def __init__(self, gpt2: GPT2, cfg: ThinkingConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D = gpt2.cfg.n_embd
        wte = gpt2.wte[...]
        emb_rms = jnp.sqrt(jnp.mean(jnp.square(wte)))
        rows = jax.random.choice(rngs.params(), wte.shape[0], (3,), replace=False)
        scale = EMB_GRAD_SCALE
        # start/end/pause begin as real token embeddings: in-distribution inputs for a pretrained model
        tp = lambda value, *axes: param(value, axes, ThinkParam)
        self.start = tp(wte[rows[0]] / scale, "embed")
        self.end = tp(wte[rows[1]] / scale, "embed")
        self.pause = tp(wte[rows[2]] / scale, "embed")
        # P maps an ln_f output (RMS ~ |ln_f scale|) to the RMS of token embeddings, near identity
        ln_rms = jnp.sqrt(jnp.mean(jnp.square(gpt2.ln_f_scale[...])))
        self.proj_kernel = tp(jnp.eye(D) * (emb_rms / ln_rms), "think_in", "embed")
        self.proj_bias = tp(jnp.zeros((D,)), "embed")
        self.log_sigma = tp(jnp.log(cfg.sigma_init * emb_rms))  # one scalar policy scale
        normal = lambda shape, std: std * jax.random.normal(rngs.params(), shape)
        H = max(D // 4, 1)
        self.mix_w1, self.mix_b1 = tp(normal((2 * D, D), 0.02), "think_in", "embed"), tp(jnp.zeros((D,)), "embed")
        # zero last layer + negative bias: w = sigmoid(bias) ~ 0 whatever the input, i.e. the base model
        self.mix_w2 = tp(jnp.zeros((D, 1)), "embed", "think_out")
        self.mix_b2 = tp(jnp.full((1,), cfg.mix_init_bias, jnp.float32), "think_out")
        self.value_w1, self.value_b1 = (
            tp(normal((D, H), 0.02), "embed", "think_hidden"),
            tp(jnp.zeros((H,)), "think_hidden"),
        )
        self.value_w2, self.value_b2 = (
            tp(jnp.zeros((H, 1)), "think_hidden", "think_out"),
            tp(jnp.zeros((1,)), "think_out"),
        )
        # anchored chains start as the base model exactly: Δ's projection and the feedback scale are 0
        self.delta_kernel = tp(jnp.zeros((D, D)), "think_in", "embed") if cfg.anchor == "residual" else None
        self.feedback_scale = tp(jnp.zeros(())) if cfg.anchor == "sequence" else None

    def embedding(self, name: str):
        return EMB_GRAD_SCALE * getattr(self, name)[...]

    def sigma_log(self):
        return jnp.clip(self.log_sigma[...], *LOG_SIGMA_RANGE)  # clamp *before* exp

    def project(self, y):
        return y @ self.proj_kernel[...] + self.proj_bias[...]

    def mix_weight(self, h0, y):
        """w in (0, 1) [...]: weight of the thought path."""
        x = jnp.concatenate([h0, y], axis=-1)
        return jax.nn.sigmoid(_mlp(x, self.mix_w1[...], self.mix_b1[...], self.mix_w2[...], self.mix_b2[...]))[..., 0]

    def combine(self, h0, y):
        """(w [...], path [..., D]): the thought path's weight and state from h0 and the chain's mixed
        step y; the prediction is (1 - w) h0 + w path. anchor: residual: path = h0 + Δ(y), w = 1."""
        if self.cfg.anchor == "residual":
            return jnp.ones(h0.shape[:-1], h0.dtype), h0 + y @ self.delta_kernel[...]
        return self.mix_weight(h0, y), y

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
    base_k: jax.Array  # [NL, B, K, H, Dh]
    base_v: jax.Array
    base_mask: jax.Array  # [L, K] or [B, 1, L, K]
    talk_ABLD: jax.Array  # [A-1, B, L, D]
    key: jax.Array | None  # None: deterministic thoughts
    h0_BLD: jax.Array | None  # thinking.seed: base
    noise_len: int | None
    n_detach: jax.Array | None = None  # thinking.progressive: thoughts 1..n_detach are constants

    @property
    def sampled(self) -> bool:
        return self.key is not None and self.heads.cfg.feedback != "pause"


def _noise(c: _Chain, i, shape, draw=jax.random.normal):
    """Noise of thought i (N(0, 1), or `draw`'s); drawn for whole rows of noise_len and taken at pos_BL
    if given, so that one position of a row gets the same noise alone (generation) as in the row."""
    k = jax.random.fold_in(c.key, i)
    if c.noise_len is None:
        return draw(k, shape)
    eps = draw(k, (shape[0], c.noise_len, shape[-1]))
    return jnp.take_along_axis(eps, c.pos_BL[..., None], axis=1)


def feedback_mean(gpt2: GPT2, heads: ThoughtHeads, y_BLD):
    """The mean of the next thought's input from a step output y [B, L, D] (thinking.feedback)."""
    cfg = heads.cfg
    if cfg.feedback == "pause":
        return jnp.broadcast_to(heads.embedding("pause"), y_BLD.shape)
    if cfg.feedback == "latent":
        return heads.project(y_BLD)
    p_BLV = jax.nn.softmax(gpt2.logits(y_BLD) / cfg.feedback_temperature, axis=-1)
    tok_BLD = p_BLV @ gpt2.wte[...]  # the lens's expected token embedding
    return tok_BLD + heads.project(y_BLD) if cfg.feedback == "token+latent" else tok_BLD


def draw_thought(heads: ThoughtHeads, mu, eps):
    """(z, log-prob [...]) of a Gaussian thought around mu; eps None: deterministic (z = mu, 0).
    Pathwise estimators differentiate through z; REINFORCE sees a constant z and its log-prob."""
    if eps is None:
        return mu, jnp.zeros(mu.shape[:-1])
    log_sigma = heads.sigma_log()
    z_raw = mu + jnp.exp(log_sigma) * eps
    z = z_raw if heads.cfg.estimator in ("pathwise", "both") else jax.lax.stop_gradient(z_raw)
    return z, gaussian_logprob(jax.lax.stop_gradient(z_raw), mu, log_sigma)


def _detached(c: _Chain, i, x, prefix: int = 0):
    """x without gradient at thought steps i <= n_detach + prefix when n_detach > 0 (thinking.progressive)."""
    if c.n_detach is None:
        return x
    return jnp.where((c.n_detach > 0) & (i <= c.n_detach + prefix), jax.lax.stop_gradient(x), x)


def _thought(c: _Chain, i, y_prev_BLD):
    """Input z [B, L, D] of thought step i and its policy log-prob [B, L] (0 when not sampled).
    Under thinking.progressive thoughts 1..n_detach are constants and thought n_detach + 1 reads a
    constant output: the gradient starts at thought n_detach + 1."""
    z, lp = _thought_raw(c, i, _detached(c, i, y_prev_BLD, prefix=1))
    return _detached(c, i, z), _detached(c, i, lp)


def _thought_raw(c: _Chain, i, y_prev_BLD):
    heads, cfg = c.heads, c.heads.cfg
    if cfg.feedback == "pause":
        return jnp.broadcast_to(heads.embedding("pause"), y_prev_BLD.shape), jnp.zeros(y_prev_BLD.shape[:-1])
    if cfg.feedback == "sample":
        return _sampled_token(c, i, y_prev_BLD)
    if cfg.seed == "base":  # i is a Python int (written-out steps) or traced (inside the scan)
        first = i == 1
        y_prev_BLD = (
            (c.h0_BLD if first else y_prev_BLD) if isinstance(i, int) else jnp.where(first, c.h0_BLD, y_prev_BLD)
        )
    mu = feedback_mean(c.gpt2, heads, y_prev_BLD)
    return draw_thought(heads, mu, _noise(c, i, mu.shape) if c.sampled else None)


def _sampled_token(c: _Chain, i, y_prev_BLD):
    """feedback: sample (Quiet-STaR's thoughts are tokens): the next input is the embedding of a token
    drawn from softmax(lens(y) / feedback_temperature) (Gumbel-max), with its log-prob [B, L] as the
    policy's; the lens's argmax when thoughts are deterministic (evaluation, generation).
    Under seed: base thought 1 is P(h0), deterministic: the chain starts from the context's state (h0's
    lens predicts the next token, not a thought; a token drawn from it drops the current one), and its
    later steps speak in tokens."""
    if c.heads.cfg.seed != "base" or (isinstance(i, int) and i > 1):
        return _token_draw(c, i, y_prev_BLD)
    seed_BLD, zero_BL = c.heads.project(c.h0_BLD), jnp.zeros(y_prev_BLD.shape[:-1])
    if isinstance(i, int):  # thought 1, written out
        return seed_BLD, zero_BL
    z_BLD, lp_BL = _token_draw(c, i, y_prev_BLD)  # inside the scan: select
    return jnp.where(i == 1, seed_BLD, z_BLD), jnp.where(i == 1, zero_BL, lp_BL)


def _token_draw(c: _Chain, i, y_prev_BLD):
    logits_BLV = c.gpt2.logits(y_prev_BLD) / c.heads.cfg.feedback_temperature
    if not c.sampled:
        return c.gpt2.wte[...][jnp.argmax(logits_BLV, axis=-1)], jnp.zeros(logits_BLV.shape[:-1])
    tok_BL = jnp.argmax(logits_BLV + _noise(c, i, logits_BLV.shape, jax.random.gumbel), axis=-1)
    logp_BL = jnp.take_along_axis(jax.nn.log_softmax(logits_BLV, axis=-1), tok_BL[..., None], axis=-1)[..., 0]
    return jax.lax.stop_gradient(c.gpt2.wte[...][tok_BL]), logp_BL


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
    n_talk = len(lay.talk)
    talk = c.talk_ABLD[jnp.clip(i - lay.talk.start, 0, max(n_talk - 1, 0))] if n_talk else end
    inp = jnp.where(i == lay.start, start, jnp.where(i == lay.end, end, talk))
    if not lay.n_thoughts:
        return jnp.broadcast_to(inp, y_prev_BLD.shape), zero_lp
    z, lp = _thought(c, i, y_prev_BLD)
    is_thought = (i >= 1) & (i <= lay.n_thoughts)
    return jnp.where(is_thought, z, inp), jnp.where(is_thought, lp, 0.0)


def _one_step(c: _Chain, i, y_prev_BLD, buf, n_buf, prev_k, prev_v):
    """Step i at every position: (output y [B, L, D], input, log-prob, its keys and values
    [NL, B, L, H, Dh]). Earlier steps' keys: buf (first n_buf entries) and prev_k/prev_v."""
    inp_BLD, lp_BL = _step_input(c, i, y_prev_BLD)
    buf_k, buf_v = buf if buf is not None else (None, None)

    def attend(q, k, v, layer_kv):
        base_k, base_v, bk, bv, pk, pv = layer_kv
        return chain_attention(q, k, v, base_k, base_v, c.base_mask, bk, bv, n_buf, pk, pv), (k, v)

    x = inp_BLD + c.gpt2.wpe[...][c.pos_BL + c.layout.offset(i)]
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


def _scan_chunks(c: _Chain, n_scan: int, size: int, y0_BLD, logp0_BL):
    """The first n_scan chunks of `size` steps under lax.scan, with a hand-written backward.

    Returns (last output, final key/value buffers [NL, S, B, L, H, Dh], y and z [n_scan, size, B, L, D],
    logp). Autodiff of the plain scan would save the carried [S] buffer at every iteration, O(S^2)
    memory. But a step reads only the buffer entries of earlier steps (the rest are masked to exactly
    zero weight), so the *final* buffer serves every step's backward. The forward takes each chunk's
    VJP and keeps its residuals except those that are the chunk's inputs (parameters, base keys, the
    buffer): those are the same every iteration, or (the buffer) replaced by the final one. The
    backward runs the chunks' VJPs in reverse; the cotangent of chunk ci's own keys is complete by
    then, as only later chunks read them. Saved: what the written-out chain saves, plus one buffer.
    """
    gdef, state = nnx.split((c.gpt2, c.heads))
    mcfg, S = c.gpt2.cfg, c.layout.n_steps
    B, L = c.pos_BL.shape
    shape = (mcfg.n_layer, S, B, L, mcfg.n_head, mcfg.head_dim)
    put = lambda buf, new, ci: tuple(jax.lax.dynamic_update_slice_in_dim(b, n, ci * size, 1) for b, n in zip(buf, new))

    def chunk(diff, fixed, ci, y_prev, buf, logp):
        (gpt2, heads), (base_k, base_v, talk, h0), (pos, mask, key, n_detach) = (
            nnx.merge(gdef, diff[0]),
            diff[1:],
            fixed,
        )
        cc = dataclasses.replace(
            c,
            gpt2=gpt2,
            heads=heads,
            pos_BL=pos,
            base_k=base_k,
            base_v=base_v,
            base_mask=mask,
            talk_ABLD=talk,
            key=key,
            h0_BLD=h0,
            n_detach=n_detach,
        )
        y_last, ks, vs, y, z, logp = _chunk(cc, ci * size, size, y_prev, buf, logp)
        return y_last, (jnp.stack(ks, 1), jnp.stack(vs, 1)), y, z, logp

    def run(diff, fixed, with_vjp: bool):
        inputs = jax.tree.leaves((diff, fixed))

        def body(carry, ci):
            y_prev, buf, logp = carry
            f = lambda diff, y_prev, buf, logp: chunk(diff, fixed, ci, y_prev, buf, logp)
            if not with_vjp:
                y_last, new, y, z, logp = f(diff, y_prev, buf, logp)
                return (y_last, put(buf, new, ci), logp), (y, z, ())
            (y_last, new, y, z, logp), pull = jax.vjp(f, diff, y_prev, buf, logp)
            leaves, pullback["tree"] = jax.tree.flatten(pull)
            known = {id(x): j for j, x in enumerate(inputs + jax.tree.leaves(buf))}
            pullback["where"] = [known.get(id(x)) for x in leaves]
            saved = tuple(x for x, j in zip(leaves, pullback["where"]) if j is None)
            return (y_last, put(buf, new, ci), logp), (y, z, saved)

        buf0 = (jnp.zeros(shape, c.base_k.dtype), jnp.zeros(shape, c.base_v.dtype))
        (y_last, buf, logp), (y, z, saved) = jax.lax.scan(body, (y0_BLD, buf0, logp0_BL), jnp.arange(n_scan))
        return (y_last, buf, y, z, logp), saved

    pullback = {}  # the chunk VJP's structure, and which residuals are inputs: set by fwd, read by bwd

    @jax.custom_vjp
    def scan_chunks(diff, fixed):
        return run(diff, fixed, with_vjp=False)[0]

    def fwd(diff, fixed):
        out, saved = run(diff, fixed, with_vjp=True)
        return out, (diff, fixed, out[1], saved)

    def bwd(res, cot):
        diff, fixed, buf, saved = res
        d_last, d_buf, d_y, d_z, d_logp = cot
        known = jax.tree.leaves((diff, fixed)) + jax.tree.leaves(buf)

        def body(carry, xs):
            d_next, d_buf, d_diff = carry
            ci, saved, dy, dz = xs
            it = iter(saved)
            pull = jax.tree.unflatten(
                pullback["tree"], [next(it) if j is None else known[j] for j in pullback["where"]]
            )
            d_new = tuple(jax.lax.dynamic_slice_in_dim(b, ci * size, size, 1) for b in d_buf)
            g_diff, g_prev, g_buf, _ = pull((d_next, d_new, dy, dz, d_logp))
            add = lambda a, b: jax.tree.map(jnp.add, a, b)
            return (g_prev, add(d_buf, g_buf), add(d_diff, g_diff)), None

        zeros = jax.tree.map(jnp.zeros_like, diff)
        (_, _, d_diff), _ = jax.lax.scan(
            body, (d_last, d_buf, zeros), (jnp.arange(n_scan), saved, d_y, d_z), reverse=True
        )
        return d_diff, None

    scan_chunks.defvjp(fwd, bwd)
    diff = (state, c.base_k, c.base_v, c.talk_ABLD, c.h0_BLD)
    return scan_chunks(diff, (c.pos_BL, c.base_mask, c.key, c.n_detach))


def run_chain(
    gpt2: GPT2,
    heads: ThoughtHeads,
    n_thoughts: int,
    pos_BL,
    base_k,
    base_v,
    base_mask,
    talk_ABLD,
    key=None,
    h0_BLD=None,
    noise_len=None,
    n_detach=None,
):
    """Run start, n thoughts, end, talk tokens at every query position in [B, L] at once.

    base_k/base_v: [NL, B, K, H, Dh]; base_mask: [L, K] or [B, 1, L, K]; talk_ABLD: [A-1, B, L, D]
    teacher-forced talk embeddings (A-1 may be 0). key None -> deterministic thoughts z = mu.
    h0_BLD: the base hidden state at each position; with thinking.seed: base the first thought's
    mean is P(h0) instead of P(start-step output), so thought 1 starts with the token in hand.
    noise_len: the queries are positions pos_BL of rows of this length; the noise is drawn for whole
    rows and taken at pos_BL, so chains at a subset of positions sample what all positions would.
    n_detach: a traced int (thinking.progressive): thoughts 1..n_detach are given as constants.
    Returns y_SBLD (ln_f output of every step), z_SBLD (step inputs) and logp_BL = sum over thought
    steps of mean_d log N(stop_grad(z); mu, sigma^2).

    The S steps run in chunks of c = thinking.unroll (all S with thinking.chain: unrolled): the full
    chunks under lax.scan (`_scan_chunks`), the rest after it. Inside a chunk the steps are written out
    and read each other's keys directly; earlier chunks' keys come from an [S] buffer carried by the
    scan. Compile time grows with c, not with n; the numbers and the sampled noise do not depend on c.
    """
    cfg, mcfg = heads.cfg, gpt2.cfg
    if cfg.seed == "base" and cfg.feedback != "pause" and n_thoughts and h0_BLD is None:
        raise ValueError("thinking.seed=base needs the base hidden state h0_BLD")
    lay = ChainLayout(n_thoughts, talk_ABLD.shape[0] + 1, cfg.positions)
    c = _Chain(
        gpt2,
        heads,
        lay,
        pos_BL,
        base_k,
        base_v,
        base_mask,
        talk_ABLD,
        key,
        h0_BLD,
        noise_len,
        None if n_detach is None else jnp.asarray(n_detach, jnp.int32),
    )
    S, B, L = lay.n_steps, pos_BL.shape[0], pos_BL.shape[1]
    size = S if cfg.chain == "unrolled" else min(cfg.unroll, S)
    n_scan = S // size if size < S else 0  # full chunks under lax.scan; the rest written out
    y_prev, logp = jnp.zeros((B, L, mcfg.n_embd)), jnp.zeros((B, L))
    ys, zs, buf = [], [], None
    if n_scan:
        y_prev, buf, y, z, logp = _scan_chunks(c, n_scan, size, y_prev, logp)
        ys.append(y.reshape((n_scan * size,) + y.shape[2:]))
        zs.append(z.reshape((n_scan * size,) + z.shape[2:]))
    if S - n_scan * size:
        _, _, _, y, z, logp = _chunk(c, n_scan * size, S - n_scan * size, y_prev, buf, logp)
        ys.append(y)
        zs.append(z)
    return jnp.concatenate(ys), jnp.concatenate(zs), logp

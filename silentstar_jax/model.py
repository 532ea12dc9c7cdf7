"""SilentStar: GPT-2 plus thinking heads. The parallel training forward (every position thinks at
once) and the single-position thinking used by generation share `thought.run_chain`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from silentstar_jax.align import repeat_samples, shift_left
from silentstar_jax.config import ChainLayout, ModelConfig, ThinkingConfig
from silentstar_jax.gpt2 import GPT2
from silentstar_jax.passes import run_passes, run_passes_cached
from silentstar_jax.thought import ThoughtHeads, run_chain


@struct.dataclass
class ChainOptions:
    """How `SilentStar.__call__` runs its chains, as one value; the defaults are evaluation's (deterministic
    thoughts, one chain per position, thinking.n_thoughts, every position thinking)."""

    key: jax.Array | None = None  # None: deterministic thoughts z = mu (evaluation, generation)
    think_idx_BQ: jax.Array | None = None  # [B, Q] chains only at these positions (index L = padding);
    # elsewhere the base model (w = 0): thinking.think_at: targets
    n_detach: jax.Array | None = None  # thoughts 1..n_detach without gradient (thinking.progressive)
    n_samples: int = struct.field(pytree_node=False, default=1)  # K chains per position
    n_thoughts: int | None = struct.field(pytree_node=False, default=None)  # None: thinking.n_thoughts


@struct.dataclass
class Forward:
    """SilentStar's parallel forward: outputs only; the objective (objective.py) turns them into losses.
    BK = B * n_samples (each sequence's chains sampled n_samples times: rows b*K .. b*K+K-1);
    A = thinking.n_ahead, n = thoughts, S = chain steps (layout.n_steps). The thinking fields are None
    when thinking is off."""

    base_logits: jax.Array  # [B, L, V] plain GPT-2: position t predicts x_{t+1}
    hidden: jax.Array  # [B, L, D] the base hidden state h0 (after ln_f)
    mixed_logits: jax.Array | None = None  # [BK, L, A, V] chain at t, talk step s predicts x_{t+1+s}
    mix_weight: jax.Array | None = None  # [BK, L, A] weight of the thought path
    value: jax.Array | None = None  # [BK, L] value-head baseline
    logp: jax.Array | None = None  # [BK, L] policy log-prob of the sampled thoughts
    thoughts: jax.Array | None = None  # [BK, L, n, D] thought inputs z
    think_mask: jax.Array | None = None  # [BK, L] positions that ran a chain
    sigma: jax.Array | None = None  # [] mean policy scale
    chain_out: jax.Array | None = None  # [BK, L, A, D] the thought path's state, unmixed (h0 where no chain)
    steps: jax.Array | None = None  # [BK, L, S, D] every chain step's output (0 where no chain)
    layout: ChainLayout | None = struct.field(pytree_node=False, default=None)  # which step is which

    @property
    def thinking(self) -> bool:
        return self.mixed_logits is not None


class SilentStar(nnx.Module):
    def __init__(self, model_cfg: ModelConfig, think_cfg: ThinkingConfig, *, rngs: nnx.Rngs, gpt2: GPT2 | None = None):
        self.gpt2 = gpt2 if gpt2 is not None else GPT2(model_cfg, rngs=rngs)
        self.think_cfg = think_cfg
        self.heads = ThoughtHeads(self.gpt2, think_cfg, rngs=rngs) if think_cfg.enabled else None

    def __call__(self, tokens_BL, attn_mask_BL=None, chain: ChainOptions = ChainOptions()) -> Forward:
        """Parallel forward over a batch of sequences (docs/design.md §3-§5): every position's chain at once."""
        g = self.gpt2
        B, L = tokens_BL.shape
        h0_BLD, (k0, v0) = g.forward_hidden(tokens_BL, attn_mask_BL)
        base_logits = g.logits(h0_BLD)
        if self.heads is None:
            return Forward(base_logits=base_logits, hidden=h0_BLD)
        cfg, hidden = self.think_cfg, h0_BLD
        K, A = chain.n_samples, cfg.n_ahead
        BK = B * K
        n = cfg.n_thoughts if chain.n_thoughts is None else chain.n_thoughts
        rep = lambda x, axis=0: repeat_samples(x, K, axis)
        tokens_BL, h0_BLD = rep(tokens_BL), rep(h0_BLD)
        if cfg.anchor == "sequence":
            mask = None if attn_mask_BL is None else rep(attn_mask_BL)
            return self._passes(tokens_BL, mask, h0_BLD, n, chain.key, base_logits, hidden)
        k0, v0 = rep(k0, 1), rep(v0, 1)
        key_mask_BL = jnp.ones((BK, L), bool) if attn_mask_BL is None else rep(attn_mask_BL).astype(bool)
        if chain.think_idx_BQ is None:  # every position thinks
            idx_BQ = pos_BQ = jnp.broadcast_to(jnp.arange(L), (BK, L))
            take, put = (lambda x: x), (lambda full, part: part)
        else:  # [BK, Q], L = padding
            idx_BQ = rep(chain.think_idx_BQ)
            pos_BQ = jnp.minimum(idx_BQ, L - 1)
            take = lambda x: jnp.take_along_axis(x, pos_BQ.reshape(pos_BQ.shape + (1,) * (x.ndim - 2)), axis=1)
            put = lambda full, part: full.at[jnp.arange(BK)[:, None], idx_BQ].set(part, mode="drop")
        mask_BQL = (jnp.arange(L)[None, None, :] <= pos_BQ[:, :, None]) & key_mask_BL[:, None, :]
        talk_ABQD = (
            jnp.stack([take(g.embed_tokens(shift_left(tokens_BL, s))) for s in range(1, A)])
            if A > 1
            else jnp.zeros((0,) + pos_BQ.shape + (g.cfg.n_embd,))
        )
        lay = cfg.layout(n)
        gc = g if not cfg.throttle else _grad_scaled(g, 1.0 / lay.n_steps)
        y_SBQD, z_SBQD, logp_BQ = run_chain(
            gc,
            self.heads,
            n,
            pos_BQ,
            k0,
            v0,
            mask_BQL[:, None],
            talk_ABQD,
            chain.key,
            take(h0_BLD),
            None if chain.think_idx_BQ is None else L,
            chain.n_detach,
        )
        h0_BLAD = jnp.stack([shift_left(h0_BLD, s) for s in range(A)], axis=2)
        y_BQAD = jnp.stack([y_SBQD[i] for i in lay.mixed(cfg.mix_from)], axis=2)
        w_BQA, y_BQAD = self.heads.combine(take(h0_BLAD), y_BQAD)
        # back to [BK, L, ...]: positions without a chain keep the base model (w = 0, no thoughts)
        w_BLA = put(jnp.zeros((BK, L, A), w_BQA.dtype), w_BQA)
        y_BLAD = put(h0_BLAD, y_BQAD)
        mixed_BLAD = (1 - w_BLA[..., None]) * h0_BLAD + w_BLA[..., None] * y_BLAD
        z_BQnD = jnp.moveaxis(z_SBQD[lay.thoughts.start : lay.thoughts.stop], 0, 2)
        D = g.cfg.n_embd
        return Forward(
            base_logits=base_logits,
            hidden=hidden,
            mixed_logits=g.logits(mixed_BLAD),
            mix_weight=w_BLA,
            value=self.heads.value(h0_BLD),
            logp=put(jnp.zeros((BK, L), logp_BQ.dtype), logp_BQ),
            thoughts=put(jnp.zeros((BK, L, n, D), z_SBQD.dtype), z_BQnD),
            think_mask=put(jnp.zeros((BK, L), bool), jnp.ones(pos_BQ.shape, bool)),
            sigma=jnp.exp(self.heads.sigma_log()).mean(),
            chain_out=y_BLAD,
            steps=put(jnp.zeros((BK, L, lay.n_steps, D), y_SBQD.dtype), jnp.moveaxis(y_SBQD, 0, 2)),
            layout=lay,
        )

    def _passes(self, tokens_BL, attn_mask_BL, h0_BLD, n, key, base_logits, hidden) -> Forward:
        """thinking.anchor: sequence (passes.py): n passes over the whole sequence; rows already
        repeated K times. The layout's start step holds h0, thought j pass j's output, end pass n's."""
        g, cfg = self.gpt2, self.think_cfg
        gc = g if not cfg.throttle else _grad_scaled(g, 1.0 / max(n, 1))
        h_nBLD, z_nBLD, logp_BL = run_passes(
            gc, self.heads, n, tokens_BL, attn_mask_BL, h0_BLD, key, cfg.chain == "scan"
        )
        h_last = h_nBLD[-1] if n else h0_BLD
        steps = jnp.concatenate([h0_BLD[None], h_nBLD, h_last[None]])
        BK, L = tokens_BL.shape
        return Forward(
            base_logits=base_logits,
            hidden=hidden,
            mixed_logits=g.logits(h_last)[:, :, None],
            mix_weight=jnp.ones((BK, L, 1), h_last.dtype),
            value=self.heads.value(h0_BLD),
            logp=logp_BL,
            thoughts=jnp.moveaxis(z_nBLD, 0, 2),
            think_mask=jnp.ones((BK, L), bool),
            sigma=jnp.exp(self.heads.sigma_log()).mean(),
            chain_out=h_last[:, :, None],
            steps=jnp.moveaxis(steps, 0, 2),
            layout=cfg.layout(n),
        )

    def think_at(self, h0_BD, cache, pos, n_thoughts: int | None = None, trace_top_k: int = 0):
        """Generation: the chain (start, n thoughts, end) for one position `pos` per row, against the
        KV cache (keys at positions <= pos). Returns mixed logits [B, V] and a trace dict."""
        g, heads = self.gpt2, self.heads
        n = self.think_cfg.n_thoughts if n_thoughts is None else n_thoughts
        k_cache, v_cache = cache
        B, T = k_cache.shape[1], k_cache.shape[2]
        mask = (jnp.arange(T) <= pos)[None, :]  # [L=1, T]
        pos_BL = jnp.full((B, 1), pos)
        talk = jnp.zeros((0, B, 1, g.cfg.n_embd))
        y, z, _ = run_chain(g, heads, n, pos_BL, k_cache, v_cache, mask, talk, None, h0_BD[:, None])
        lay = self.think_cfg.layout(n)
        w, y_mix = heads.combine(h0_BD, y[lay.mixed(self.think_cfg.mix_from)[0], :, 0])
        logits = g.logits((1 - w[:, None]) * h0_BD + w[:, None] * y_mix)
        trace = {"mix_weight": w, "value": heads.value(h0_BD)}
        if trace_top_k and n:
            y_prev = thought_sources(y[:, :, 0], h0_BD, n, self.think_cfg)
            trace.update(thought_trace(g, y_prev, z[lay.thoughts.start : lay.thoughts.stop, :, 0], trace_top_k))
        return logits, trace

    def think_passes(self, tokens_BQ, h0_BQD, caches, start, last, trace_top_k: int = 0):
        """Generation under thinking.anchor: sequence: Q new tokens through the passes, each against
        its own cache (passes.init_pass_caches; their count is the thought count). Returns the
        logits [B, V] and trace at query `last`, and the updated caches."""
        g = self.gpt2
        h, z, caches = run_passes_cached(g, self.heads, tokens_BQ, h0_BQD, caches, start)
        at = lambda x: jax.lax.dynamic_index_in_dim(x, last, axis=x.ndim - 2, keepdims=False)
        h0_BD = at(h0_BQD)
        h_last = at(h[-1]) if h.shape[0] else h0_BD
        trace = {"mix_weight": jnp.ones(h0_BD.shape[:1], h0_BD.dtype), "value": self.heads.value(h0_BD)}
        if trace_top_k and h.shape[0]:
            sources = jnp.concatenate([h0_BD[None], at(h[:-1])])  # [n, B, D]: what each thought was fed from
            trace.update(thought_trace(g, sources, at(z), trace_top_k))
        return g.logits(h_last), trace, caches


def _grad_scaled(module, scale: float):
    """The same module whose parameters pass `scale` x the gradient (values unchanged): the chain's
    gradient on the shared weights divided by its steps (McLeish et al.'s throttle)."""
    graphdef, state = nnx.split(module)
    f = lambda x: x * scale + jax.lax.stop_gradient(x) * (1.0 - scale)
    return nnx.merge(graphdef, jax.tree.map(f, state))


def thought_sources(y_S, h0, n: int, cfg: ThinkingConfig):
    """[n, ...] the state each thought was fed from: step j - 1's output, or h0 for thought 1 under
    thinking.seed: base. y_S: [S, ...] every chain step's output; h0: [...] the base hidden state."""
    src = y_S[:n]
    return src.at[0].set(h0) if cfg.seed == "base" else src


def forward_thought_sources(out: Forward, cfg: ThinkingConfig):
    """[BK, L, n, D] the state each thought of a parallel forward was fed from (its logit lens is what the
    trace shows); positions without a chain hold zeros (h0 under thinking.seed: base)."""
    K = out.steps.shape[0] // out.hidden.shape[0]
    n = out.layout.n_thoughts
    src = thought_sources(jnp.moveaxis(out.steps, 2, 0), repeat_samples(out.hidden, K), n, cfg)
    return jnp.moveaxis(src, 0, 2)


def thought_trace(g: GPT2, y_nBD, z_nBD, k: int) -> dict:
    """What each thought 'says'. Thought j is the vector z_j = P(y_{j-1}) fed as the next input:
    logit lens = softmax of the tied head on the hidden state y_{j-1} that produced it; cosine =
    nearest token embeddings to z_j (scale-free: thought norms drift from token norms)."""
    probs = jax.nn.softmax(g.logits(y_nBD), axis=-1)
    lens_p, lens_id = jax.lax.top_k(probs, k)
    wte = g.wte[...]
    cos = (z_nBD @ wte.T) / (jnp.linalg.norm(z_nBD, axis=-1, keepdims=True) * jnp.linalg.norm(wte, axis=-1) + 1e-9)
    cos_v, cos_id = jax.lax.top_k(cos, k)
    sw = lambda a: jnp.swapaxes(a, 0, 1)  # -> [B, n, ...]
    return {
        "lens_id": sw(lens_id),
        "lens_p": sw(lens_p),
        "cos_id": sw(cos_id),
        "cos": sw(cos_v),
        "norm": sw(jnp.linalg.norm(z_nBD, axis=-1)),
    }


def build_model(cfg, tok=None) -> SilentStar:
    """The model a Config describes: from scratch (model.* shape) or from HF weights (model.init_from),
    plus thinking heads; `tok`: refuse a vocabulary smaller than the tokenizer's."""
    from silentstar_jax.errors import UserError

    m, rngs = cfg.model, nnx.Rngs(cfg.run.seed)
    gpt2 = None
    if m.init_from:
        from silentstar_jax.hf import load_gpt2

        gpt2, _ = load_gpt2(
            m.init_from, allow_pickle=m.allow_pickle, dtype=m.dtype, remat=m.remat, attention=m.attention
        )
        m = gpt2.cfg
    if tok is not None and tok.vocab_size > m.vocab_size:
        raise UserError(f"model.vocab_size = {m.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    return SilentStar(m, cfg.thinking, rngs=rngs, gpt2=gpt2)

"""KV-cached generation with static shapes: one compilation per prompt bucket and one for the
single-token step, none per token. With thinking, each token runs its thought chain for the last
position only, against the cache plus the chain's own keys (docs/design.md §8 Generation)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from silentstar_jax.config import ChainLayout
from silentstar_jax.errors import UserError
from silentstar_jax.model import ChainOptions, forward_thought_sources, thought_trace
from silentstar_jax.objective import token_logprob
from silentstar_jax.passes import init_pass_caches
from silentstar_jax.sampling import SamplingConfig, sample

PREFILL_BUCKET = 64


@dataclass
class TokenEvent:
    step: int
    token_id: int
    logprob: float  # log p(token) under the model's final (mixed) distribution
    logprob_base: float  # log p(token) under the plain GPT-2 path
    extra: dict  # thinking trace (empty without thinking)


def prompt_bucket(n_tokens: int, cap: int | None = None) -> int:
    """Prompts are padded to a multiple of PREFILL_BUCKET (at most `cap`): one compilation per bucket."""
    bucket = -(-n_tokens // PREFILL_BUCKET) * PREFILL_BUCKET
    return bucket if cap is None else min(bucket, cap)


def token_room(n_positions: int, lay: ChainLayout) -> int:
    """The most tokens a sequence may hold when each of its positions runs the chain `lay`: the chain
    at position t uses position ids up to t + lay.position_span < n_positions."""
    room = n_positions - lay.position_span
    if room < 2:
        if lay.positions != "advance":  # the span does not depend on the count
            raise UserError(f"the model's context of {n_positions} positions (n_positions) holds no token with a chain")
        most = n_positions - 2 - (lay.n_steps - lay.n_thoughts)  # the largest count with room == 2
        raise UserError(
            f"{lay.n_thoughts} thoughts per token do not fit the model's context of "
            f"{n_positions} positions (n_positions); use at most {max(most, 0)}"
        )
    return room


def context_room(model, think: bool, n_thoughts: int) -> int:
    """The most tokens one sequence may hold when `model` (a SilentStar, or a plain GPT2) thinks with n thoughts
    per token (or does not)."""
    n_positions = getattr(model, "gpt2", model).cfg.n_positions
    if not think or model.think_cfg.anchor == "sequence":  # passes use the tokens' own positions
        return n_positions
    return token_room(n_positions, ChainLayout(n_thoughts, 1, model.think_cfg.positions))


def score(model, ids: list[int], think: bool, n_thoughts: int | None = None, trace_top_k: int = 0) -> dict:
    """Teacher-forced log-probs of ids[1:] (each given the tokens before it), base and mixed,
    from the parallel forward with deterministic thoughts. Arrays of length len(ids) - 1.
    n_thoughts: thought steps per position (None: as configured). trace_top_k: also the thought trace
    of each position (generation's TokenEvent.extra entries, [len(ids) - 1, n, k])."""
    L = len(ids)
    bucket = prompt_bucket(L)
    toks = np.zeros((1, bucket), np.int32)
    toks[0, :L] = ids
    mask = np.zeros((1, bucket), np.int32)
    mask[0, :L] = 1
    graphdef, state = nnx.split(model)
    fn = _score_fn(graphdef, think, n_thoughts if think else None, trace_top_k if think else 0)
    out = fn(state, jnp.asarray(toks), jnp.asarray(mask))
    return {k: np.asarray(v)[0, : L - 1] for k, v in out.items()}


# (graphdef, think, n_thoughts, jitted fn): the parameters are an argument of the jitted function, so
# one compilation serves every model of the same structure, whatever its (current) parameter values.
# Looked up by equality: a GraphDef holding configs with lists is not hashable.
_SCORE_FNS: list = []


def _score_fn(graphdef, think: bool, n_thoughts: int | None, trace_top_k: int = 0):
    for gd, th, n, k, fn in _SCORE_FNS:
        if th == think and n == n_thoughts and k == trace_top_k and gd == graphdef:
            return fn

    @jax.jit
    def fn(state, tokens, mask):
        m = nnx.merge(graphdef, state)
        out = m(tokens, mask, ChainOptions(n_thoughts=n_thoughts)) if think else m(tokens, mask)
        target = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)

        def lp(logits):
            return token_logprob(logits, target)

        res = {"logprob_base": lp(out.base_logits)}
        if think and out.thinking:
            res.update(logprob=lp(out.mixed_logits[:, :, 0]), mix_weight=out.mix_weight[:, :, 0], value=out.value)
            if trace_top_k and out.layout.n_thoughts:  # [1, L, n, D] -> the trace of each position
                flat = lambda a: jnp.moveaxis(a[0], 1, 0)  # [n, L, D]
                sources = forward_thought_sources(out, m.think_cfg)
                trace = thought_trace(m.gpt2, flat(sources), flat(out.thoughts), trace_top_k)
                res.update({k: v[None] for k, v in trace.items()})
        else:
            res.update(logprob=res["logprob_base"], mix_weight=jnp.zeros_like(res["logprob_base"]))
        return res

    _SCORE_FNS.append((graphdef, think, n_thoughts, trace_top_k, fn))
    return fn


class Generator:
    """Decode from `model` (a GPT2, or a SilentStar whose thinking runs when `think` is true)."""

    def __init__(
        self, model, sampling: SamplingConfig, think: bool = False, n_thoughts: int | None = None, trace_top_k: int = 0
    ):
        self.gpt2 = getattr(model, "gpt2", model)
        self.think = think
        n = model.think_cfg.n_thoughts if (think and n_thoughts is None) else (n_thoughts or 0)
        self.n_thoughts = n
        # chain positions run past the token's own (generation has no talk steps)
        self.n_positions = self.gpt2.cfg.n_positions
        # thinking.anchor: sequence: n passes over the tokens' own positions, one KV cache each
        self.passes = think and model.think_cfg.anchor == "sequence"
        self.room = context_room(model, think, n)
        self.sampling = sampling
        graphdef, self.state = nnx.split(model)

        def decode(state, cache, tokens_BQ, start, last, key):
            m = nnx.merge(graphdef, state)
            g = getattr(m, "gpt2", m)
            cache, pass_caches = cache if self.passes else (cache, None)
            h_BQD, cache = g.forward_cached(tokens_BQ, cache, start)
            h0_BD = jax.lax.dynamic_index_in_dim(h_BQD, last, axis=1, keepdims=False)
            logits_base = g.logits(h0_BD)
            extra = {}
            logits = logits_base
            if self.passes:
                logits, extra, pass_caches = m.think_passes(tokens_BQ, h_BQD, pass_caches, start, last, trace_top_k)
                cache = (cache, pass_caches)
            elif think:
                logits, extra = m.think_at(h0_BD, cache, start + last, n_thoughts, trace_top_k)
            token = sample(logits, key, sampling)
            return cache, token, token_logprob(logits, token), token_logprob(logits_base, token), extra

        self._decode = jax.jit(decode, donate_argnums=(1,))

    def stream(
        self, prompt_ids: list[int], max_new_tokens: int, seed: int = 0, stop_id: int | None = None
    ) -> Iterator[TokenEvent]:
        """Yield one TokenEvent per generated token (batch of one prompt)."""
        Lp = len(prompt_ids)
        if Lp == 0:
            raise UserError("the prompt is empty")
        if Lp >= self.room:
            raise UserError(
                f"the prompt has {Lp} tokens; with {self.n_thoughts} thoughts per token the "
                f"context ({self.n_positions} positions) holds {self.room}: no room to generate"
            )
        max_new_tokens = min(max_new_tokens, self.room - Lp)
        bucket = prompt_bucket(Lp, self.n_positions)
        tokens = np.zeros((1, bucket), np.int32)
        tokens[0, :Lp] = prompt_ids
        cache = self.gpt2.init_cache(1, self.n_positions)
        if self.passes:
            cache = (cache, init_pass_caches(self.gpt2, self.n_thoughts, 1, self.n_positions))
        key = jax.random.key(seed)
        # Prefill: pad slots beyond the prompt are written to the cache but never attended to
        # before a real token overwrites them (queries only see keys at or before their position).
        args = (jnp.asarray(tokens), jnp.int32(0), jnp.int32(Lp - 1))
        for step in range(max_new_tokens):
            key, sub = jax.random.split(key)
            cache, token, lp, lpb, extra = self._decode(self.state, cache, *args, sub)
            tid = int(token[0])
            yield TokenEvent(step, tid, float(lp[0]), float(lpb[0]), jax.tree.map(lambda a: np.asarray(a)[0], extra))
            if stop_id is not None and tid == stop_id:
                return
            args = (token[:, None], jnp.int32(Lp + step), jnp.int32(0))

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, seed: int = 0, stop_id: int | None = None
    ) -> tuple[list[TokenEvent], float]:
        """All events and tokens/s (excluding the first call's compilation is the caller's job)."""
        t0 = time.perf_counter()
        events = list(self.stream(prompt_ids, max_new_tokens, seed, stop_id))
        dt = time.perf_counter() - t0
        return events, len(events) / max(dt, 1e-9)

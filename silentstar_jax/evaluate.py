"""Held-out evaluation, base vs thinking (deterministic thoughts).

Exact match is computed from one teacher-forced pass: greedy decoding reproduces an answer
exactly iff the argmax is right at every answer token given the right prefix, and generation's
logits equal the parallel pass's (tested), so this *is* greedy-decoding exact match.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from silentstar_jax.align import shift_left
from silentstar_jax.data import Batch
from silentstar_jax.model import ChainOptions
from silentstar_jax.objective import target_weights, token_logprob

MAX_LOG_PERPLEXITY = 50.0  # perplexity reported as at most e^50 (a diverged model stays JSON-finite)


def make_eval_fn(graphdef, n_thoughts=None):
    """n_thoughts: think with this many thoughts (test-time scaling); None: thinking.n_thoughts."""

    def eval_fn(params, batch):
        model = nnx.merge(graphdef, params)
        tokens, attn, lmask = batch.tokens, batch.attn_mask, batch.loss_mask
        out = model(tokens, attn, ChainOptions(n_thoughts=n_thoughts))
        target = shift_left(tokens, 1)
        w_tok = target_weights(attn, jnp.ones_like(attn), 1)[..., 0]
        w_ans = target_weights(attn, lmask, 1)[..., 0]
        paths = {"base": out.base_logits}
        if out.thinking:
            paths["thinking"] = out.mixed_logits[:, :, 0]
        res = {"n_tok": w_tok.sum(), "n_ans": w_ans.sum(), "n_rows_ans": (w_ans.sum(-1) > 0).sum()}
        for name, logits in paths.items():
            hit = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
            lp = token_logprob(logits, target)
            res[f"{name}/nll"] = -(lp * w_tok).sum()
            res[f"{name}/nll_ans"] = -(lp * w_ans).sum()
            res[f"{name}/hit"] = (hit * w_tok).sum()
            res[f"{name}/hit_ans"] = (hit * w_ans).sum()
            all_right = ((hit * w_ans).sum(-1) == w_ans.sum(-1)) & (w_ans.sum(-1) > 0)
            res[f"{name}/exact"] = all_right.sum()
        return res

    return jax.jit(eval_fn)


def evaluate(eval_fn, params, rows: Batch, batch_size: int, put_batch) -> dict:
    """{"base": {...}, "thinking": {...}, "gain": {...}} over the eval rows (padded to full batches)."""
    rows = rows._replace(thought_targets=None)
    n = len(rows.tokens)
    totals: dict = {}
    for i in range(math.ceil(n / batch_size)):
        b = rows.take(slice(i * batch_size, (i + 1) * batch_size))
        short = batch_size - len(b.tokens)
        if short:  # padding rows: attn_mask 0, so they count nowhere
            b = Batch(*(np.concatenate([v, np.zeros((short, v.shape[1]), v.dtype)]) for v in b[:3]))
        for k, v in jax.device_get(eval_fn(params, put_batch(b))).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    result = {}
    for name in ("base", "thinking"):
        if f"{name}/nll" not in totals:
            continue
        ce = totals[f"{name}/nll"] / max(totals["n_tok"], 1)
        r = {
            "ce": ce,
            "perplexity": math.exp(min(ce, MAX_LOG_PERPLEXITY)),
            "accuracy": totals[f"{name}/hit"] / max(totals["n_tok"], 1),
        }
        if totals["n_ans"] and totals["n_ans"] != totals["n_tok"]:
            r["answer_ce"] = totals[f"{name}/nll_ans"] / totals["n_ans"]
            r["answer_accuracy"] = totals[f"{name}/hit_ans"] / totals["n_ans"]
            r["exact_match"] = totals[f"{name}/exact"] / max(totals["n_rows_ans"], 1)
        result[name] = r
    if "thinking" in result:
        result["gain"] = {k: result["thinking"][k] - result["base"][k] for k in result["base"]}
    return result

"""Does REINFORCE's gradient point where the true one does? (the policy gradient's signal-to-noise)

With `estimator: reinforce` the thoughts are stop-gradient samples z ~ N(mu, sigma^2), and what flows
through them is estimated by the policy loss, -a * log pi(z). The pathwise gradient of the same
objective (the mixed CE, L_think) through the same samples is its low-variance reference. Per batch:

  g_rf = grad L_policy                                   (the run's reward, baseline, K, clipping)
  g_pw = grad L_think(z with gradient) - grad L_think(z stop-gradient)   (what flows through z)

and their cosine, on the thought projection P alone (only z depends on it) and on every parameter;
also the cosine of two REINFORCE estimates from independent noise (its self-agreement). A cosine
near 0 means the policy gradient is mostly noise at this batch size; the mean over batches says
whether it points the right way at all. A zero REINFORCE gradient (every advantage 0) gives NaN.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from silentstar_jax.config import Config, LossConfig
from silentstar_jax.model import build_model
from silentstar_jax.train_step import make_loss_fn

THOUGHT_PROJECTION = ("proj_kernel", "proj_bias")


def _flat(tree, only_projection: bool):
    if only_projection:
        tree = {k: tree["heads"][k] for k in THOUGHT_PROJECTION}
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _cos(a, b) -> float:
    na, nb = float(jnp.linalg.norm(a)), float(jnp.linalg.norm(b))
    return float(jnp.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else float("nan")


def gradient_agreement(cfg: Config, tok, params, batches, n_think_pos: int = 0, seed: int = 0) -> dict:
    """Cosines per batch (lists) and their summary for `params` (a pure parameter dict of cfg's model)."""
    if not cfg.thinking.enabled or cfg.thinking.feedback == "pause" or not cfg.thinking.n_thoughts:
        raise ValueError("the policy gradient needs sampled thoughts: thinking on, feedback not pause, n_thoughts >= 1")
    if cfg.thinking.feedback == "sample":
        raise ValueError(
            "thinking.feedback=sample draws discrete tokens: there is no pathwise gradient to compare with"
        )
    none = LossConfig(base=0, think=0, policy=0, value=0, thought=0, thought_supervision=0)

    def grad_fn(estimator: str, **weights):
        c = dataclasses.replace(
            cfg,
            thinking=dataclasses.replace(cfg.thinking, estimator=estimator),
            loss=dataclasses.replace(none, **weights),
        )
        graphdef = nnx.split(build_model(c, tok))[0]
        grad = jax.grad(make_loss_fn(graphdef, c, n_think_pos), has_aux=True)
        return jax.jit(lambda p, b, k: grad(p, b, k)[0])

    g_policy = grad_fn("reinforce", policy=1.0)
    g_think_pw, g_think_sg = grad_fn("pathwise", think=1.0), grad_fn("reinforce", think=1.0)
    rows = []
    for i, batch in enumerate(batches):
        key = jax.random.fold_in(jax.random.key(seed), i)
        other = jax.random.fold_in(jax.random.key(seed + 1), i)
        rf, rf2 = g_policy(params, batch, key), g_policy(params, batch, other)
        pw = jax.tree.map(jnp.subtract, g_think_pw(params, batch, key), g_think_sg(params, batch, key))
        row = {}
        for name, proj in (("P", True), ("all", False)):
            a, b, a2 = _flat(rf, proj), _flat(pw, proj), _flat(rf2, proj)
            row[f"cos_{name}"] = _cos(a, b)
            row[f"self_{name}"] = _cos(a, a2)
            row[f"norm_ratio_{name}"] = float(jnp.linalg.norm(a) / jnp.maximum(jnp.linalg.norm(b), 1e-30))
            row[f"_rf_{name}"], row[f"_pw_{name}"] = np.asarray(a), np.asarray(b)
        rows.append(row)
    out = {"batches": len(rows)}
    for name in ("P", "all"):
        for m in ("cos", "self", "norm_ratio"):
            v = np.array([r[f"{m}_{name}"] for r in rows])
            ok = v[np.isfinite(v)]  # NaN: a zero gradient (e.g. an accuracy reward that never changes)
            out[f"{m}_{name}"] = {
                "mean": float(ok.mean()) if len(ok) else float("nan"),
                "std": float(ok.std()) if len(ok) else float("nan"),
                "per_batch": v.tolist(),
            }
        # averaged over batches: does the estimate point the right way once its noise averages out?
        out[f"cos_of_means_{name}"] = _cos(
            jnp.asarray(np.mean([r[f"_rf_{name}"] for r in rows], 0)),
            jnp.asarray(np.mean([r[f"_pw_{name}"] for r in rows], 0)),
        )
    return out

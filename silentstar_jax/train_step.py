"""Optimizer, initial state and the one jitted train step (pure: params, opt state and
batch in; new params, opt state and metrics out; params and opt state donated)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from silentstar_jax.config import Config
from silentstar_jax.model import ChainOptions
from silentstar_jax.objective import compute_loss, supervision_weight, target_weights
from silentstar_jax.sharding import batch_sharding


def make_optimizer(cfg: Config, labels, decay_mask) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with warmup + cosine; `labels` (sharding.param_labels) puts ThinkParams in their own
    learning-rate group (optim.thinking_lr_mult); `decay_mask` (sharding.decay_mask): which decay."""
    o = cfg.optim
    sched = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, min(o.warmup_steps, max(cfg.train.steps - 1, 0)), max(cfg.train.steps, 1), o.lr * o.min_lr_ratio
    )
    think_sched = lambda step: sched(step) * o.thinking_lr_mult
    adamw = lambda lr: optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
    tx = optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.multi_transform({"base": adamw(sched), "think": adamw(think_sched)}, labels),
    )
    return tx, sched


def think_positions(attn_mask_BL, loss_mask_BL, A: int, Q: int):
    """[B, Q] indices of the positions whose chain predicts a scored target (padding index L)."""
    scored = target_weights(attn_mask_BL, loss_mask_BL, A).sum(-1) > 0
    L = scored.shape[1]
    return jax.vmap(lambda m: jnp.nonzero(m, size=Q, fill_value=L)[0])(scored)


def n_think_positions(rows, A: int) -> int:
    """The most positions of one row (data.Batch) whose chain predicts a scored target (static Q of
    think_at: targets)."""
    scored = target_weights(jnp.asarray(rows.attn_mask), jnp.asarray(rows.loss_mask), A).sum(-1) > 0
    return max(int(scored.sum(1).max()), 1)


def n_thoughts_at(cfg: Config, step: int) -> int:
    """Thoughts at a training step: thinking.n_thoughts, or drawn from n_thoughts_train = [lo, hi]
    by (seed, step), so a resumed run draws the same counts."""
    t = cfg.thinking
    if not t.n_thoughts_train:
        return t.n_thoughts
    lo, hi = t.n_thoughts_train
    return int(np.random.default_rng([cfg.run.seed, step]).integers(lo, hi + 1))


def progressive_prefix(key, n: int):
    """thinking.progressive: how many leading thoughts of this step are constants, U{0..n-1} (0 if n = 0),
    from its own stream of the step's key."""
    return jax.random.randint(jax.random.fold_in(key, 0x5EED), (), 0, max(n, 1))


def make_loss_fn(graphdef, cfg: Config, n_think_pos: int = 0):
    """loss_fn(params, batch, key, n_thoughts, step). n_think_pos > 0: chains only at that many
    positions per row (thinking.think_at: targets)."""
    t = cfg.thinking

    def loss_fn(params, batch, key, n_thoughts=None, step_idx=0):
        model = nnx.merge(graphdef, params)
        chain = ChainOptions()
        if t.enabled:
            chain = ChainOptions(
                key=key,
                n_samples=t.n_samples,
                n_thoughts=n_thoughts,
                n_detach=progressive_prefix(key, t.n_thoughts if n_thoughts is None else n_thoughts)
                if t.progressive
                else None,
                think_idx_BQ=think_positions(batch.attn_mask, batch.loss_mask, t.n_ahead, n_think_pos)
                if n_think_pos
                else None,
            )
        out = model(batch.tokens, batch.attn_mask, chain)
        return compute_loss(
            out,
            batch.tokens,
            batch.attn_mask,
            batch.loss_mask,
            t,
            cfg.loss,
            batch.thought_targets,
            supervision_weight(cfg.loss, step_idx, cfg.train.steps),
            lens=model.gpt2.logits,
        )

    return loss_fn


def thought_counts(cfg: Config) -> list[int] | None:
    """The counts a variable-count run draws from (thinking.n_thoughts_train); None: one fixed count."""
    t = cfg.thinking
    return list(range(t.n_thoughts_train[0], t.n_thoughts_train[1] + 1)) if t.enabled and t.n_thoughts_train else None


def switch_over_counts(fn, counts: list[int]):
    """fn(*args, n) with n a Python int -> g(*args, n) with n traced: one compiled program holding a
    branch per count, of which lax.switch runs only the chosen one (the cost of the fixed-count
    program, not of the largest). Metrics a count does not define (sup_ce_j for j > n) are NaN."""

    def g(*args, n):
        shapes = [jax.eval_shape(functools.partial(fn, n=k), *args) for k in counts]
        keys = sorted(set().union(*(s[0].keys() for s in shapes)))

        def branch(k):
            def run(*a):
                metrics, rest = fn(*a, n=k)
                return {key: metrics.get(key, jnp.float32(jnp.nan)) for key in keys}, rest

            return run

        return jax.lax.switch(jnp.asarray(n, jnp.int32) - counts[0], [branch(k) for k in counts], *args)

    return g


def make_step_fn(graphdef, cfg: Config, tx, sched, n_think_pos: int = 0):
    """The pure step: (params, opt_state, batch (data.Batch [accum*B, T]), step, base_key, n_thoughts) ->
    (params, opt_state, metrics). The randomness is fold_in(base_key, step): base_key = key(run.seed).
    With thinking.n_thoughts_train = [lo, hi], n_thoughts may be traced (switch_over_counts).
    metrics["nonfinite"] = 1: this step's update was not applied (non-finite loss/gradient/parameters)."""
    loss_fn = make_loss_fn(graphdef, cfg, n_think_pos)
    accum = cfg.train.grad_accum
    counts = thought_counts(cfg)

    def metrics_and_grads(params, batch, step_idx, base_key, n):
        key = jax.random.fold_in(base_key, step_idx)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if accum == 1:
            (_, metrics), grads = grad_fn(params, batch, key, n, step_idx)
            return metrics, grads
        micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), batch)

        def body(acc, xs):
            mb, i = xs
            (_, m), g = grad_fn(params, mb, jax.random.fold_in(key, i), n, step_idx)
            return jax.tree.map(jnp.add, acc, g), m

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, metrics = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
        return jax.tree.map(jnp.mean, metrics), jax.tree.map(lambda g: g / accum, grads)

    if counts is not None:
        metrics_and_grads = switch_over_counts(metrics_and_grads, counts)

    def step(params, opt_state, batch, step_idx, base_key, n_thoughts=None):
        metrics, grads = metrics_and_grads(params, batch, step_idx, base_key, n=n_thoughts)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # a non-finite loss, gradient or updated parameter: the update is not applied (the trainer
        # stops or skips, train.on_nonfinite), so non-finite parameters never exist, nor get saved
        grad_norm = optax.global_norm(grads)
        finite = (
            jnp.isfinite(metrics["loss"])
            & jnp.isfinite(grad_norm)
            & jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(new_params)]))
        )
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = dict(metrics, grad_norm=grad_norm, lr=sched(step_idx), nonfinite=1.0 - finite.astype(jnp.float32))
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics

    return step


def init_state(params, tx, p_shard, o_shard):
    """(params, opt_state) placed as the jitted step returns them (p_shard, o_shard). jit keys its
    cache on where each argument lies: an eager tx.init leaves Adam's step counts on one device
    outside the mesh, and the step's second call, given the state the first returned, compiled again."""
    params = jax.device_put(params, p_shard)
    return params, jax.jit(tx.init, out_shardings=o_shard)(params)


def make_train_step(graphdef, cfg: Config, tx, sched, mesh: Mesh, p_shard, o_shard, n_think_pos: int = 0):
    """jit(step)(params, opt_state, batch [accum*B, T], step, n_thoughts) -> (params, opt_state, metrics)
    for run.seed. With thinking.n_thoughts_train = [lo, hi], n_thoughts is data: one compiled program
    for every count (switch_over_counts); otherwise it is static (one program per count asked for).
    params and opt_state come from init_state (or a checkpoint restored onto p_shard, o_shard): placed
    anywhere else, the second call compiles the step again."""
    pure = make_step_fn(graphdef, cfg, tx, sched, n_think_pos)
    base_key = jax.random.key(cfg.run.seed)
    counts = thought_counts(cfg)

    def step(params, opt_state, batch, step_idx, n_thoughts=None):
        return pure(params, opt_state, batch, step_idx, base_key, n_thoughts)

    b_shard = batch_sharding(mesh)  # every array of the Batch: rows split over the devices
    if counts is not None:  # the count is data
        return jax.jit(
            step,
            in_shardings=(p_shard, o_shard, b_shard, None, None),
            out_shardings=(p_shard, o_shard, None),
            donate_argnums=(0, 1),
        )
    return jax.jit(
        step,
        in_shardings=(p_shard, o_shard, b_shard, None),
        out_shardings=(p_shard, o_shard, None),
        donate_argnums=(0, 1),
        static_argnums=(4,),
    )

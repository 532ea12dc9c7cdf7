"""Optimizer, device mesh, shardings and the one jitted train step (pure: params, opt state and
batch in; new params, opt state and metrics out; params and opt state donated)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from silentstar_jax.config import Config, MeshConfig
from silentstar_jax.errors import UserError
from silentstar_jax.objective import compute_loss, supervision_weight, target_weights

BATCH_AXES = ("data", "fsdp")   # the batch is split over every device; parameters over fsdp only


def make_mesh(m: MeshConfig) -> Mesh:
    n = jax.device_count()
    data = m.data if m.data > 0 else max(n // m.fsdp, 1)
    if data * m.fsdp > n:
        raise UserError(f"mesh.data * mesh.fsdp = {data * m.fsdp} but only {n} device(s) are available")
    devices = np.asarray(jax.devices()[:data * m.fsdp]).reshape(data, m.fsdp)
    return Mesh(devices, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def make_optimizer(cfg: Config, params, labels) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with warmup + cosine; `labels` (sharding.param_labels) puts ThinkParams in their own
    learning-rate group (optim.thinking_lr_mult)."""
    o = cfg.optim
    sched = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, min(o.warmup_steps, max(cfg.train.steps - 1, 0)), max(cfg.train.steps, 1), o.lr * o.min_lr_ratio)
    think_sched = lambda step: sched(step) * o.thinking_lr_mult
    decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)          # no decay on biases, norms, vectors
    adamw = lambda lr: optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                     optax.multi_transform({"base": adamw(sched), "think": adamw(think_sched)}, labels))
    return tx, sched


def think_positions(attn_mask_BL, loss_mask_BL, A: int, Q: int):
    """[B, Q] indices of the positions whose chain predicts a scored target (padding index L)."""
    scored = target_weights(attn_mask_BL, loss_mask_BL, A).sum(-1) > 0
    L = scored.shape[1]
    return jax.vmap(lambda m: jnp.nonzero(m, size=Q, fill_value=L)[0])(scored)


def n_think_positions(rows: dict, A: int) -> int:
    """The most positions of one row whose chain predicts a scored target (static Q of think_at: targets)."""
    scored = target_weights(jnp.asarray(rows["attn_mask"]), jnp.asarray(rows["loss_mask"]), A).sum(-1) > 0
    return max(int(scored.sum(1).max()), 1)


def n_thoughts_at(cfg: Config, step: int) -> int:
    """Thoughts at a training step: thinking.n_thoughts, or drawn from n_thoughts_train = [lo, hi]
    by (seed, step), so a resumed run draws the same counts."""
    t = cfg.thinking
    if not t.n_thoughts_train:
        return t.n_thoughts
    lo, hi = t.n_thoughts_train
    return int(np.random.default_rng([cfg.run.seed, step]).integers(lo, hi + 1))


def make_loss_fn(graphdef, cfg: Config, n_think_pos: int = 0):
    """loss_fn(params, batch, key, n_thoughts, step). n_think_pos > 0: chains only at that many
    positions per row (thinking.think_at: targets)."""
    t = cfg.thinking

    def loss_fn(params, batch, key, n_thoughts=None, step_idx=0):
        model = nnx.merge(graphdef, params)
        kw = {}
        targets = batch.get("thought_targets")
        if t.enabled:
            kw = dict(key=key, n_samples=t.n_samples, thought_logits=cfg.loss.thought > 0, n_thoughts=n_thoughts)
            if n_think_pos:
                kw["think_idx_BQ"] = think_positions(batch["attn_mask"], batch["loss_mask"], t.n_ahead, n_think_pos)
            if cfg.loss.thought_supervision > 0 and targets is not None:
                kw["n_supervised"] = targets.shape[-1]
        out = model(batch["tokens"], batch["attn_mask"], **kw)
        return compute_loss(out, batch["tokens"], batch["attn_mask"], batch["loss_mask"], t, cfg.loss,
                            targets, supervision_weight(cfg.loss, step_idx, cfg.train.steps))

    return loss_fn


def make_train_step(graphdef, cfg: Config, tx, sched, mesh: Mesh, p_shard, o_shard, batch_keys=None,
                    n_think_pos: int = 0):
    """jit(step)(params, opt_state, batch [accum*B, T], step, n_thoughts) -> (params, opt_state, metrics).
    n_thoughts is static: one compiled program per count (thinking.n_thoughts_train draws a few).
    metrics["nonfinite"] = 1: this step's update was not applied (non-finite loss/gradient/parameters)."""
    loss_fn = make_loss_fn(graphdef, cfg, n_think_pos)
    accum = cfg.train.grad_accum
    base_key = jax.random.key(cfg.run.seed)

    def step(params, opt_state, batch, step_idx, n_thoughts=None):
        key = jax.random.fold_in(base_key, step_idx)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if accum == 1:
            (_, metrics), grads = grad_fn(params, batch, key, n_thoughts, step_idx)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), batch)

            def body(acc, xs):
                mb, i = xs
                (_, m), g = grad_fn(params, mb, jax.random.fold_in(key, i), n_thoughts, step_idx)
                return jax.tree.map(jnp.add, acc, g), m

            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, metrics = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
            grads = jax.tree.map(lambda g: g / accum, grads)
            metrics = jax.tree.map(jnp.mean, metrics)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # a non-finite loss, gradient or updated parameter: the update is not applied (the trainer
        # stops or skips, train.on_nonfinite), so non-finite parameters never exist, nor get saved
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(optax.global_norm(grads)) & \
            jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(new_params)]))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=sched(step_idx),
                       nonfinite=1.0 - finite.astype(jnp.float32))
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics

    b_shard = {k: batch_sharding(mesh) for k in (batch_keys or ("tokens", "attn_mask", "loss_mask"))}
    return jax.jit(step, in_shardings=(p_shard, o_shard, b_shard, None), out_shardings=(p_shard, o_shard, None),
                   donate_argnums=(0, 1), static_argnums=(4,))

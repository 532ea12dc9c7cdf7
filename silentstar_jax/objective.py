"""The training objective (docs/design.md §6 Objective) as pure functions of the forward outputs.

Conventions: `tokens`, `attn_mask` (1 = real token) and `loss_mask` (weight of a token *as a
target*, e.g. answer tokens only) are [B, L]. The chain at position t, talk step s, predicts
x_{t+1+s}; `weights[b, t, s]` is that target's weight (0 past the end, on padding, or masked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from silentstar_jax.align import lookahead, repeat_samples, shift_left
from silentstar_jax.config import LossConfig, ThinkingConfig
from silentstar_jax.model import Forward

sg = jax.lax.stop_gradient


def token_logprob(logits, targets):
    """log p(target) under logits [..., V]; targets [...]."""
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]


def masked_mean(x, w):
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-9)


def target_weights(attn_mask_BL, loss_mask_BL, A: int):
    m = attn_mask_BL.astype(jnp.float32) * loss_mask_BL.astype(jnp.float32)
    return lookahead(m, A, 0.0)


def rewards(lp_mix, lp_base, weights):
    """Per-position reward [BK, L]: the chain's log-prob gain over the base path, summed over the look-ahead
    targets; no gradient."""
    return sg(jnp.sum(weights * (lp_mix - lp_base), axis=-1))


def advantages(r_BL, v_BL, pos_mask, cfg: ThinkingConfig, K: int):
    """r - baseline. group_mean is leave-one-out over the K chains of a position (unbiased);
    value+group_mean averages that with the value estimate."""
    if cfg.baseline == "value":
        b = sg(v_BL)
    else:
        rk = r_BL.reshape(-1, K, r_BL.shape[-1])
        loo = ((rk.sum(1, keepdims=True) - rk) / (K - 1)).reshape(r_BL.shape)
        b = loo if cfg.baseline == "group_mean" else 0.5 * (sg(v_BL) + loo)
    a = r_BL - b
    if cfg.clip_negative_advantages:
        a = jnp.maximum(a, 0.0)
    return sg(a)


@struct.dataclass
class PerPosition:
    """Per-(position, look-ahead) quantities behind the losses; rows repeated K times (BK = B*K)."""

    targets_BLA: jax.Array  # [BK, L, A] x_{t+1+s}
    weights_BLA: jax.Array  # [BK, L, A] each target's weight
    lp_mix_BLA: jax.Array  # [BK, L, A] log p(target) under the mixed logits
    hit_mix_BLA: jax.Array  # [BK, L, A] argmax == target
    lp_base_BLA: jax.Array  # [BK, L, A] the base model's log p of the same target (no gradient)
    r_BL: jax.Array  # [BK, L] reward
    pos_mask_BL: jax.Array  # [BK, L] positions with every look-ahead target (policy/value terms)
    K: int = struct.field(pytree_node=False, default=1)


def per_position(out: Forward, tokens, attn_mask, loss_mask, tcfg: ThinkingConfig) -> PerPosition:
    A = tcfg.n_ahead
    K = out.mixed_logits.shape[0] // tokens.shape[0]
    rep = lambda x: repeat_samples(x, K)
    targets = rep(lookahead(tokens, A))  # [BK, L, A]
    weights = rep(target_weights(attn_mask, loss_mask, A))
    next_BL = targets[::K, :, 0]
    lp_base = rep(token_logprob(out.base_logits, next_BL))
    # base log-prob of x_{t+1+s} is the base model's prediction at position t+s
    lp_base_s = sg(jnp.stack([shift_left(lp_base, s) for s in range(A)], -1))
    lp_mix = token_logprob(out.mixed_logits, targets)
    hit_mix = (jnp.argmax(out.mixed_logits, -1) == targets).astype(jnp.float32)
    r = rewards(lp_mix, lp_base_s, weights)
    complete = lookahead(attn_mask.astype(jnp.float32), A)[..., -1]  # all A targets exist
    pos_mask = rep(attn_mask.astype(jnp.float32) * complete) * (weights.sum(-1) > 0)
    return PerPosition(
        targets_BLA=targets,
        weights_BLA=weights,
        lp_mix_BLA=lp_mix,
        hit_mix_BLA=hit_mix,
        lp_base_BLA=lp_base_s,
        r_BL=r,
        pos_mask_BL=pos_mask,
        K=K,
    )


def supervision_loss(sup_logits_BLJV, thought_targets_BLJ):
    """Mean CE of thought j's logit lens toward intermediate target j (-1: none), and per j.

    thought_targets are aligned like loss_mask (at the token *as a target*): the chain at t, which
    predicts x_{t+1}, is supervised with the targets stored at t + 1."""
    J = sup_logits_BLJV.shape[2]
    K = sup_logits_BLJV.shape[0] // thought_targets_BLJ.shape[0]
    tt = shift_left(thought_targets_BLJ, 1, fill=-1)[:, :, :J]
    tt = repeat_samples(tt, K)
    valid = (tt >= 0).astype(jnp.float32)
    lp = token_logprob(sup_logits_BLJV[:, :, : tt.shape[2]], jnp.maximum(tt, 0))
    per_j = [-masked_mean(lp[..., j], valid[..., j]) for j in range(tt.shape[2])]
    return -masked_mean(lp, valid), per_j


def supervision_weight(lcfg: LossConfig, step, total_steps: int):
    """loss.thought_supervision, annealed linearly to 0 between the supervision_anneal fractions."""
    start, end = lcfg.supervision_anneal
    frac = step / max(total_steps, 1)
    if end <= start:
        return lcfg.thought_supervision * (frac < start)
    return lcfg.thought_supervision * jnp.clip((end - frac) / (end - start), 0.0, 1.0)


def uses_policy(tcfg: ThinkingConfig) -> bool:
    """The score-function term exists: sampled (non-pause) thoughts under reinforce or both."""
    return tcfg.feedback != "pause" and tcfg.estimator in ("reinforce", "both")


def supervised_steps(out: Forward, n_targets: int, stride: int = 1):
    """[BK, L, J, D] the outputs of thought steps s, 2s, .., Js (s = loss.supervision_stride: s thoughts per
    intermediate target; J = the targets that fit, min(n_targets, n // s)); None when none fits."""
    J = min(n_targets, out.layout.n_thoughts // stride)
    if not J:
        return None
    first = out.layout.thoughts.start + stride - 1
    return out.steps[:, :, first : first + stride * (J - 1) + 1 : stride]


def compute_loss(
    out: Forward,
    tokens,
    attn_mask,
    loss_mask,
    tcfg: ThinkingConfig,
    lcfg: LossConfig,
    thought_targets=None,
    sup_weight=0.0,
    lens=None,
):
    """Total loss and a dict of every metric, from the forward outputs (model.Forward).
    thought_targets [B, L, J] and sup_weight (a traced scalar): the thought supervision term.
    lens: the tied LM head (GPT2.logits), for the terms that read a chain state through it (loss.thought,
    thought supervision)."""
    next_token = shift_left(tokens, 1)
    w0 = target_weights(attn_mask, loss_mask, 1)[..., 0]
    lp_base = token_logprob(out.base_logits, next_token)  # [B, L]
    hit_base = (jnp.argmax(out.base_logits, -1) == next_token).astype(jnp.float32)
    loss_base = -masked_mean(lp_base, w0)
    metrics = {"loss_base": loss_base, "acc_base": masked_mean(hit_base, w0)}
    if not out.thinking:
        metrics["loss"] = lcfg.base * loss_base
        return metrics["loss"], metrics

    p = per_position(out, tokens, attn_mask, loss_mask, tcfg)
    weights, r, pos_mask = p.weights_BLA, p.r_BL, p.pos_mask_BL
    w0 = weights[..., 0]
    loss_think = -masked_mean(p.lp_mix_BLA, weights)
    use_policy = uses_policy(tcfg)
    # trained whenever loss.value > 0, also where nothing reads it (pathwise): docs/design.md §5.2 says why
    loss_value = masked_mean(jnp.square(out.value - r), pos_mask)
    a = advantages(r, out.value, pos_mask, tcfg, p.K)
    loss_policy = -masked_mean(a * out.logp, pos_mask) if use_policy else jnp.zeros(())

    total = lcfg.base * loss_base + lcfg.think * loss_think + lcfg.policy * loss_policy + lcfg.value * loss_value
    if lcfg.thought > 0:
        loss_thought = -masked_mean(token_logprob(lens(out.chain_out), p.targets_BLA), weights)
        total = total + lcfg.thought * loss_thought
        metrics["loss_thought"] = loss_thought
    sup = None
    if lcfg.thought_supervision > 0 and thought_targets is not None and thought_targets.shape[-1]:
        sup = supervised_steps(out, thought_targets.shape[-1], lcfg.supervision_stride)
    if sup is not None:
        loss_sup, per_j = supervision_loss(lens(sup), thought_targets)
        total = total + sup_weight * loss_sup
        metrics.update(
            loss_sup=loss_sup,
            sup_weight=jnp.asarray(sup_weight, jnp.float32),
            **{f"sup_ce_{j + 1}": v for j, v in enumerate(per_j)},
        )
    acc_think = masked_mean(p.hit_mix_BLA[..., 0], w0)
    n = out.thoughts.shape[2]
    metrics.update(
        loss=total,
        loss_think=loss_think,
        loss_policy=loss_policy,
        loss_value=loss_value,
        ce_think=-masked_mean(p.lp_mix_BLA[..., 0], w0),
        reward=masked_mean(r, pos_mask),
        advantage=masked_mean(a, pos_mask),
        value_error=jnp.sqrt(loss_value),
        mix_weight=masked_mean(out.mix_weight[..., 0], w0),
        sigma=out.sigma,
        thought_norm=masked_mean(jnp.linalg.norm(out.thoughts, axis=-1).mean(-1), out.think_mask)
        if n
        else jnp.zeros(()),
        acc_think=acc_think,
        thinking_gain=acc_think - metrics["acc_base"],
    )
    return total, metrics

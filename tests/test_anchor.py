"""Anchored chains (thinking.anchor, docs/design.md §5.4): at initialisation thinking is the base model
exactly, in training and in KV-cached generation; training can move it; the whole-sequence passes
against a slow per-prefix reference; generation ≡ scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_thinking import MC, forward, hidden_from_embeddings, loss_fn_for, make_model, tokens, value_and_grad

from silentstar_jax.config import LossConfig, ThinkingConfig, validate_thinking
from silentstar_jax.errors import UserError
from silentstar_jax.generation import Generator, score
from silentstar_jax.model import SilentStar
from silentstar_jax.sampling import SamplingConfig

ANCHORS = ["residual", "sequence"]


def fresh(**think):
    return SilentStar(MC, ThinkingConfig(**think), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("anchor", ANCHORS)
@pytest.mark.parametrize("estimator", ["pathwise", "reinforce"])
def test_starts_as_the_base_model(anchor, estimator):
    """Sampled thoughts (K = 2), every feedback kind that is not the control: the thinking logits are
    the base logits at initialisation (the gated chain's are not: its gate starts at 0.018, not 0)."""
    toks = tokens(B=2, L=12)
    for feedback in ("latent", "token+latent"):
        model = fresh(anchor=anchor, estimator=estimator, feedback=feedback, n_thoughts=2)
        out = forward(model, toks, key=jax.random.key(3), n_samples=2)
        base = jnp.repeat(out.base_logits, 2, axis=0)
        np.testing.assert_allclose(out.mixed_logits[:, :, 0], base, atol=1e-6, rtol=0)
    gated = forward(fresh(estimator=estimator, n_thoughts=2), toks)
    assert np.abs(np.asarray(gated.mixed_logits[:, :, 0] - gated.base_logits)).max() > 1e-6


@pytest.mark.parametrize("anchor", ANCHORS)
def test_generation_starts_as_the_base_model(anchor):
    model = fresh(anchor=anchor, n_thoughts=2, feedback="token+latent")
    events, _ = Generator(model, SamplingConfig(greedy=True), think=True).generate([3, 17, 5], 6)
    got = np.array([[e.logprob, e.logprob_base] for e in events])
    np.testing.assert_allclose(got[:, 0], got[:, 1], atol=1e-6)


@pytest.mark.parametrize("anchor", ANCHORS)
@pytest.mark.parametrize("estimator", ["pathwise", "reinforce"])
def test_training_can_move_away_from_the_base(anchor, estimator):
    """At initialisation the anchor's zero parameter (Δ's projection, the feedback scale) gets a
    gradient from the thinking loss: the exact start is not a fixed point."""
    tc = ThinkingConfig(anchor=anchor, estimator=estimator, n_thoughts=2, feedback="token+latent")
    model = SilentStar(MC, tc, rngs=nnx.Rngs(0))
    _, grads = value_and_grad(loss_fn_for(tc, LossConfig(base=0.0)))(model, tokens())
    g = grads.heads.delta_kernel if anchor == "residual" else grads.heads.feedback_scale
    assert float(jnp.abs(g[...]).max()) > 1e-6


def _reference_passes(model, toks_L, t: int, n: int):
    """Slow and explicit: the passes over the prefix x_0..x_t only (each a causal pass over input
    embeddings), the thought fed back written out from the config; logits of position t."""
    g, h, cfg = model.gpt2, model.heads, model.think_cfg
    wte, wpe = g.wte[...], g.wpe[...]
    x = jnp.stack([wte[toks_L[i]] + wpe[i] for i in range(t + 1)])[None]
    hp = hidden_from_embeddings(g, x)
    acc = jnp.zeros_like(x)
    for _ in range(n):
        latent = hp @ h.proj_kernel[...] + h.proj_bias[...]
        expected = jax.nn.softmax(g.logits(hp) / cfg.feedback_temperature, -1) @ wte
        mean = {"latent": latent, "token": expected, "token+latent": expected + latent}[cfg.feedback]
        acc = acc + h.feedback_scale[...] * mean
        hp = hidden_from_embeddings(g, x + acc)
    return g.logits(hp)[0, -1]


@pytest.mark.parametrize("chain", ["scan", "unrolled"])
@pytest.mark.parametrize("feedback", ["latent", "token+latent"])
def test_sequence_passes_equal_per_prefix_reference(chain, feedback):
    """Position t's prediction is the passes over its prefix alone: causal, and it attends to the
    earlier positions' states of the same pass."""
    n = 3
    model = make_model(anchor="sequence", n_thoughts=n, chain=chain, feedback=feedback)
    toks = tokens(B=1, L=9)
    out = forward(model, toks)
    assert np.abs(np.asarray(out.mixed_logits[:, :, 0] - out.base_logits)).max() > 1e-3
    for t in range(9):
        np.testing.assert_allclose(out.mixed_logits[0, t, 0], _reference_passes(model, toks[0], t, n), atol=1e-5)
    # fewer passes: the same prefix logic; 0 passes is the base model
    two = forward(model, toks, n_thoughts=2)
    np.testing.assert_allclose(two.mixed_logits[0, 4, 0], _reference_passes(model, toks[0], 4, 2), atol=1e-5)
    zero = forward(model, toks, n_thoughts=0)
    np.testing.assert_allclose(zero.mixed_logits[:, :, 0], zero.base_logits, atol=1e-6)


@pytest.mark.parametrize("anchor", ANCHORS)
def test_generation_equals_scoring(anchor):
    model = make_model(anchor=anchor, n_thoughts=2, feedback="token+latent")
    prompt = [3, 17, 5, 9]
    events, _ = Generator(model, SamplingConfig(greedy=True), think=True, trace_top_k=3).generate(prompt, 8)
    ids = prompt + [e.token_id for e in events]
    s = score(model, ids, think=True, trace_top_k=3)
    got = np.array([[e.logprob, e.logprob_base] for e in events])
    want = np.stack([s["logprob"], s["logprob_base"]], -1)[len(prompt) - 1 :]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got[:, 0] - got[:, 1]).max() > 1e-3  # thinking really changed the distribution
    for e in events:
        i = len(prompt) - 1 + e.step
        np.testing.assert_array_equal(s["lens_id"][i], e.extra["lens_id"])
        for k in ("lens_p", "cos", "norm", "mix_weight", "value"):
            np.testing.assert_allclose(s[k][i], e.extra[k], atol=1e-4, err_msg=k)


def test_sequence_generation_uses_the_whole_context():
    """Passes take no extra position ids: the room to generate is the model's context."""
    model = make_model(anchor="sequence", n_thoughts=4)
    assert Generator(model, SamplingConfig(greedy=True), think=True).room == MC.n_positions
    gated = make_model(n_thoughts=4)
    assert Generator(gated, SamplingConfig(greedy=True), think=True).room < MC.n_positions


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"n_ahead": 2}, "n_ahead"),
        ({"think_at": "targets"}, "think_at"),
        ({"feedback": "sample", "estimator": "reinforce"}, "sample"),
        ({"progressive": True}, "progressive"),
        ({"n_thoughts_train": [1, 2]}, "n_thoughts_train"),
    ],
)
def test_sequence_refuses_what_it_does_not_support(bad, words):
    with pytest.raises(UserError, match=words):
        validate_thinking(ThinkingConfig(anchor="sequence", **bad), MC, 16)
    validate_thinking(ThinkingConfig(anchor="sequence", n_thoughts=40), MC, MC.n_positions)  # no span


@pytest.mark.parametrize("anchor", ANCHORS)
def test_one_training_run_end_to_end(tmp_path, anchor):
    """Train, checkpoint, evaluate and reload an anchored run: the reloaded model scores held-out text
    as the trainer's final evaluation did, and the anchor's parameter has left zero."""
    import json
    import os

    from conftest import MICRO_RUN, ROOT

    from silentstar_jax import config as C
    from silentstar_jax.loading import load_run
    from silentstar_jax.trainer import Run

    out = tmp_path / "run"
    over = [f"run.out_dir={out}", "model.n_positions=24", f"thinking.anchor={anchor}", "optim.lr=1e-2"]
    Run(C.load_config(os.path.join(ROOT, "configs", "tiny.yaml"), MICRO_RUN + over)).train()
    ev = json.loads((out / "eval.json").read_text())
    assert ev["step"] == 3 and np.isfinite(ev["thinking"]["ce"])
    model, tok, cfg, step = load_run(str(out))
    assert step == 3 and cfg.thinking.anchor == anchor
    moved = model.heads.delta_kernel if anchor == "residual" else model.heads.feedback_scale
    assert float(jnp.abs(moved[...]).max()) > 0
    s = score(model, tok.encode("12*3=36"), think=True)
    assert np.abs(s["logprob"] - s["logprob_base"]).max() > 0  # thinking is no longer the base model

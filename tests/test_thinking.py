"""The thinking forward pass and objective (docs/design.md §3-§6) on tiny shapes."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from silentstar_jax.attention import causal_attention
from silentstar_jax.config import LossConfig, ModelConfig, ThinkingConfig
from silentstar_jax.gpt2 import GPT2
from silentstar_jax.model import ChainOptions, SilentStar
from silentstar_jax.objective import compute_loss, per_position
from silentstar_jax.thought import gaussian_logprob

MC = ModelConfig(vocab_size=40, n_positions=48, n_embd=32, n_layer=2, n_head=4)


def make_model(init_seed=0, mc=MC, **think):
    """A model whose thinking heads are perturbed away from their (near-no-op) initialisation."""
    model = SilentStar(mc, ThinkingConfig(**think), rngs=nnx.Rngs(init_seed))
    if model.heads is not None:
        k = jax.random.split(jax.random.key(init_seed + 100), 3)
        h = model.heads
        h.mix_w2.set_value(0.3 * jax.random.normal(k[0], h.mix_w2[...].shape))
        h.mix_b2.set_value(jnp.zeros((1,)))
        h.proj_kernel.set_value(h.proj_kernel[...] + 0.05 * jax.random.normal(k[1], h.proj_kernel[...].shape))
        h.value_w2.set_value(0.1 * jax.random.normal(k[2], h.value_w2[...].shape))
        if h.delta_kernel is not None:  # anchor: residual
            h.delta_kernel.set_value(0.3 * jax.random.normal(k[0], h.delta_kernel[...].shape))
        if h.feedback_scale is not None:  # anchor: sequence
            h.feedback_scale.set_value(jnp.asarray(0.7))
    return model


# Model calls in these tests are compiled (nnx.jit): eagerly, the layer scan is traced and compiled
# anew at every call (a fresh closure), which made one forward of this tiny model take seconds.


def _attend(q, k, v, _):
    return causal_attention(q, k, v), None


@nnx.jit
def hidden_from_embeddings(gpt2, x_BLD):
    """Causal pass over given input embeddings (positions already added); h after ln_f. The slow
    references below build their sequences as embeddings and run them through this."""
    return gpt2.final_norm(gpt2.run_layers(x_BLD, _attend)[0])


@nnx.jit
def base_hidden(gpt2, toks_BL):
    """h0 [B, L, D]: the plain model's states after ln_f."""
    return gpt2.forward_hidden(toks_BL)[0]


@functools.partial(nnx.jit, static_argnums=(5, 6))
def _forward(model, toks, attn, key, think_idx_BQ, n_samples, n_thoughts):
    return model(
        toks, attn, ChainOptions(key=key, think_idx_BQ=think_idx_BQ, n_samples=n_samples, n_thoughts=n_thoughts)
    )


def forward(model, toks, attn=None, key=None, think_idx_BQ=None, n_samples=1, n_thoughts=None):
    """model(toks, attn, ChainOptions(...)), compiled."""
    return _forward(model, toks, attn, key, think_idx_BQ, n_samples, n_thoughts)


def value_and_grad(loss_fn):
    return nnx.jit(nnx.value_and_grad(loss_fn))


def tokens(B=2, L=12, seed=1):
    return jax.random.randint(jax.random.key(seed), (B, L), 0, MC.vocab_size)


def loss_fn_for(tc, lc=LossConfig(), key=jax.random.key(7), n_samples=1):
    def loss_fn(model, toks):
        out = model(toks, None, ChainOptions(key=key, n_samples=n_samples))
        ones = jnp.ones_like(toks)
        return compute_loss(out, toks, ones, ones, tc, lc)[0]

    return loss_fn


def test_thinking_off_is_exactly_gpt2():
    toks = tokens()
    gpt2 = GPT2(MC, rngs=nnx.Rngs(0))
    plain = SilentStar(MC, ThinkingConfig(enabled=False), rngs=nnx.Rngs(1), gpt2=gpt2)
    out = plain(toks)
    assert not out.thinking
    assert [f.name for f in dataclasses.fields(out) if getattr(out, f.name) is not None] == ["base_logits", "hidden"]
    np.testing.assert_array_equal(out.base_logits, gpt2(toks))
    np.testing.assert_array_equal(out.hidden, gpt2.forward_hidden(toks)[0])
    thinking = SilentStar(MC, ThinkingConfig(), rngs=nnx.Rngs(1), gpt2=gpt2)
    np.testing.assert_array_equal(thinking(toks).base_logits, gpt2(toks))


def _reference_mixed_logits(model, toks_L, t, n, A):
    """Slow and explicit: for one position t, concatenate x_0..x_t, start, z_1..z_n, end, talk
    tokens and run ordinary causal attention over it, one thought at a time. Position ids advance by
    one per step; under thinking.positions: same start, the thoughts and end all take t + 1."""
    g, h = model.gpt2, model.heads
    wte, wpe = g.wte[...], g.wpe[...]
    seq = [wte[toks_L[i]] + wpe[i] for i in range(t + 1)]
    pos = t + 1
    step = 1 if model.think_cfg.positions == "advance" else 0
    run = lambda: hidden_from_embeddings(g, jnp.stack(seq)[None])[0, -1]
    seq.append(h.embedding("start") + wpe[pos])
    for _ in range(n):
        pos += step
        seq.append(h.project(run()) + wpe[pos])  # deterministic thought z = mu
    pos += step
    seq.append(h.embedding("end") + wpe[pos])
    ys = [run()]
    for s in range(1, A):
        pos += 1
        seq.append(wte[toks_L[t + s]] + wpe[pos])
        ys.append(run())
    h0 = base_hidden(g, toks_L[None])[0]
    out = []
    for s, y in enumerate(ys):
        if model.think_cfg.anchor == "residual":  # h0 + Δ(y), no gate
            out.append(g.logits(h0[t + s] + y @ h.delta_kernel[...]))
            continue
        w = h.mix_weight(h0[t + s], y)
        out.append(g.logits((1 - w) * h0[t + s] + w * y))
    return jnp.stack(out)


@pytest.mark.parametrize(
    "chain,unroll,positions",
    [
        ("scan", 1, "advance"),
        ("scan", 4, "advance"),
        ("unrolled", 1, "advance"),
        ("scan", 1, "same"),
        ("scan", 4, "same"),
        ("unrolled", 1, "same"),
    ],
)
@pytest.mark.parametrize("n,A", [(3, 2), (0, 1)])
def test_parallel_forward_equals_sequential_reference(n, A, chain, unroll, positions):
    _check_against_reference(n, A, chain=chain, unroll=unroll, positions=positions)


@pytest.mark.parametrize("chain", ["scan", "unrolled"])
def test_residual_anchor_equals_sequential_reference(chain):
    _check_against_reference(3, 2, chain=chain, anchor="residual")


def _check_against_reference(n, A, positions="advance", **think):
    model = make_model(n_thoughts=n, n_ahead=A, positions=positions, **think)
    toks = tokens(B=1, L=10)
    out = forward(model, toks)  # key None: deterministic thoughts
    if positions == "same" and n:  # the option changes the result
        other = forward(make_model(n_thoughts=n, n_ahead=A, **think), toks).mixed_logits
        assert np.abs(np.asarray(out.mixed_logits - other)).max() > 1e-3
    w = out.mix_weight
    assert float(w.min()) > 0.05, "mixing must be active for the comparison to mean anything"
    if n:  # the thought path really changed the prediction
        assert np.abs(np.asarray(out.mixed_logits[:, :, 0] - out.base_logits)).max() > 1e-3
    for t in range(10 - A + 1):
        ref = _reference_mixed_logits(model, toks[0], t, n, A)
        np.testing.assert_allclose(out.mixed_logits[0, t], ref, atol=1e-5, rtol=0)


def test_causality():
    """Changing x_j changes each output from the first position that reads it, and nothing before:
    the base logits and the value (functions of h0_t) from t = j; the mixed logits from t = j - A + 1,
    whose last talk step takes x_j as input; the reward r from t = j - A, whose targets
    x_{t+1..t+A} include x_j."""
    A, j = 2, 8
    tc = ThinkingConfig(n_thoughts=2, n_ahead=A)
    model = make_model(n_thoughts=2, n_ahead=A)
    a = tokens(B=1, L=12)
    b = a.at[0, j].set((a[0, j] + 1) % MC.vocab_size)
    ones = jnp.ones_like(a)
    res = []
    for toks in (a, b):
        out = forward(model, toks)
        p = per_position(out, toks, ones, ones, tc)
        res.append({"base_logits": out.base_logits, "mixed_logits": out.mixed_logits, "value": out.value, "r": p.r_BL})
    first = {"base_logits": j, "mixed_logits": j - A + 1, "value": j, "r": j - A}
    for name, t in first.items():
        x, y = np.asarray(res[0][name]), np.asarray(res[1][name])
        np.testing.assert_allclose(x[:, :t], y[:, :t], atol=1e-6, err_msg=name)
        assert np.abs(x[:, t] - y[:, t]).max() > 1e-4, name


@pytest.mark.parametrize(
    "estimator,levers",
    [
        ("reinforce", {}),
        ("pathwise", {}),
        ("both", dict(seed="base", throttle=True, n_samples=2)),
        ("reinforce", dict(feedback="token")),
        ("both", dict(feedback="token+latent", seed="base")),
        ("reinforce", dict(feedback="sample", n_samples=2)),
        ("reinforce", dict(feedback="sample", seed="base")),
    ],
)
def test_unrolled_chain_equals_scan(estimator, levers):
    """Chunked the three ways (5 steps: one per scan iteration; 2 per iteration + 1 after the scan;
    all written out) the chain computes the same sampled thoughts, loss and gradients: the scan's
    hand-written backward (thought._scan_chunks) is autodiff of the written-out chain. The levers
    compare one per iteration with written out (a partial last chunk is the same code for them)."""
    toks = tokens()
    res = []
    ways = (("scan", 1), ("scan", 2), ("unrolled", 1)) if not levers else (("scan", 1), ("unrolled", 1))
    for chain, unroll in ways:
        think = dict(n_thoughts=2, n_ahead=2, estimator=estimator, chain=chain, unroll=unroll, **levers)
        loss_fn = loss_fn_for(ThinkingConfig(**think), n_samples=think.get("n_samples", 1))
        loss, grads = value_and_grad(loss_fn)(make_model(**think), toks)
        res.append((loss, nnx.state(grads, nnx.Param)))
    (l_ref, g_ref) = res[0]
    lever = {"token": "log_sigma", "sample": "mix_w1"}.get(levers.get("feedback"), "proj_kernel")
    assert _norm(g_ref["heads"][lever]) > 0
    for loss, grads in res[1:]:
        np.testing.assert_allclose(l_ref, loss, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g_ref, grads)


def _grads(model, loss_fn, toks):
    return nnx.jit(nnx.grad(loss_fn))(model, toks)


def _norm(tree):
    return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("estimator", ["reinforce", "pathwise", "both"])
def test_gradient_routing(estimator):
    tc = ThinkingConfig(n_thoughts=2, estimator=estimator)
    model = make_model(n_thoughts=2, estimator=estimator)
    toks = tokens()
    only = lambda **w: dataclasses.replace(LossConfig(base=0, think=0, policy=0, value=0), **w)
    g_think = _grads(model, loss_fn_for(tc, only(think=1)), toks)
    g_policy = _grads(model, loss_fn_for(tc, only(policy=1)), toks)
    proj = lambda g: _norm(g.heads.proj_kernel)
    if estimator == "reinforce":
        assert proj(g_think) == 0.0
    else:
        assert proj(g_think) > 0.0
    if estimator == "pathwise":
        assert _norm(g_policy) == 0.0
    else:
        assert proj(g_policy) > 0.0
    g_value = _grads(model, loss_fn_for(tc, only(value=1)), toks)
    value_params = {"value_w1", "value_b1", "value_w2", "value_b2"}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(g_value)):
        is_value = any(getattr(k, "key", None) in value_params for k in path)
        assert (float(jnp.abs(leaf).sum()) > 0) == is_value or (is_value and "b" in str(path[-2:])), path


def test_gaussian_logprob_closed_form_and_extremes():
    rng = np.random.default_rng(0)
    z, mu = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    ls = np.log(0.7)
    want = np.mean(-0.5 * ((z - mu) / 0.7) ** 2 - np.log(0.7 * np.sqrt(2 * np.pi)), axis=-1)
    np.testing.assert_allclose(gaussian_logprob(z, mu, ls), want, rtol=1e-5)
    tc = ThinkingConfig(n_thoughts=2)
    for extreme in (-1e4, 1e4):
        model = make_model(n_thoughts=2)
        model.heads.log_sigma.set_value(jnp.full((), extreme))
        loss, grads = value_and_grad(loss_fn_for(tc))(model, tokens())
        assert np.isfinite(float(loss))
        assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(grads))


def test_reinforce_estimator_matches_true_gradient():
    """Score-function estimate E[(r - b) grad log pi] with our Gaussian log-prob equals the exact
    gradient of E[r] for r(z) = -mean_d (z - c)^2, z ~ N(mu, sigma^2) -- up to the factor 1/D that
    the per-dimension *mean* log-prob puts on every policy gradient (absorbed by loss.policy)."""
    D, N, sigma = 4, 200_000, 0.5
    mu = jnp.array([0.3, -0.2, 1.0, 0.0])
    c = jnp.array([1.0, 0.5, -0.5, 0.2])
    eps = jax.random.normal(jax.random.key(0), (N, D))
    z = jax.lax.stop_gradient(mu + sigma * eps)
    r = -jnp.mean((z - c) ** 2, -1)
    a = r - r.mean()
    policy_loss = lambda m: -jnp.mean(a * gaussian_logprob(z, m, jnp.log(sigma)))
    estimate = -jax.grad(policy_loss)(mu)
    true = -2 * (mu - c) / D
    np.testing.assert_allclose(D * estimate, true, atol=0.02)


def test_group_mean_baseline_and_samples():
    tc = ThinkingConfig(n_thoughts=1, n_samples=3, baseline="group_mean")
    model = make_model(n_thoughts=1)
    toks = tokens()
    out = forward(model, toks, key=jax.random.key(0), n_samples=3)
    assert out.mixed_logits.shape[0] == 6
    # different samples of one position differ, the base pass does not repeat
    assert float(jnp.abs(out.mixed_logits[0] - out.mixed_logits[1]).max()) > 0
    ones = jnp.ones_like(toks)
    _, m = compute_loss(out, toks, ones, ones, tc, LossConfig())
    assert abs(float(m["advantage"])) < 1e-5  # leave-one-out advantages sum to zero per group


def test_pause_control_has_no_policy():
    tc = ThinkingConfig(n_thoughts=2, feedback="pause")
    model = make_model(n_thoughts=2, feedback="pause")
    toks = tokens()
    out = forward(model, toks, key=jax.random.key(0))
    np.testing.assert_array_equal(out.logp, 0.0)
    np.testing.assert_allclose(out.thoughts[:, :, 0], out.thoughts[:, :, 1])
    ones = jnp.ones_like(toks)
    _, m = compute_loss(out, toks, ones, ones, tc, LossConfig())
    assert float(m["loss_policy"]) == 0.0


def test_loss_mask_and_padding_respected():
    tc = ThinkingConfig(n_thoughts=1, n_ahead=2)
    model = make_model(n_thoughts=1, n_ahead=2)
    toks = tokens(B=1, L=12)
    attn = (jnp.arange(12) < 9)[None].astype(jnp.int32)
    lmask = (jnp.arange(12) >= 5)[None].astype(jnp.int32)
    padding = toks.at[0, 10].set((toks[0, 10] + 3) % MC.vocab_size)
    unscored = toks.at[0, 1].set((toks[0, 1] + 3) % MC.vocab_size)
    metrics = lambda t: compute_loss(forward(model, t, attn), t, attn, lmask, tc, LossConfig())[1]
    ref = metrics(toks)
    # token 10 is padding: it can never matter
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), ref, metrics(padding))
    # token 1 is unscored (loss_mask 0) but it is context: the loss moves
    assert abs(float(metrics(unscored)["loss"]) - float(ref["loss"])) > 1e-5
    # the base CE counts only targets 5..8
    p = per_position(forward(model, toks, attn), toks, attn, lmask, tc)
    assert float(p.weights_BLA[0, :, 0].sum()) == 4.0  # targets x_5..x_8 (x_9+ are padding)
    assert float(p.pos_mask_BL[0, 7:].sum()) == 0.0  # t=7 needs x_8, x_9: x_9 is padding


def _step_program_size(n, chain):
    """StableHLO ops in the lowered training step (forward + backward): what the compiler must
    chew through, measured without a clock."""
    tc = ThinkingConfig(n_thoughts=n, chain=chain)
    mc = dataclasses.replace(MC, n_positions=64)
    model = nnx.eval_shape(lambda: SilentStar(mc, tc, rngs=nnx.Rngs(0)))
    gdef, state = nnx.split(model)

    def step(state, toks):
        return jax.grad(lambda s: loss_fn_for(tc)(nnx.merge(gdef, s), toks))(state)

    text = jax.jit(step).lower(state, jax.ShapeDtypeStruct((2, 16), jnp.int32)).as_text()
    return text.count("stablehlo.")


def test_program_size_does_not_grow_with_thoughts():
    """chain=scan: one chain step in the program whatever n, so compile time does not grow with n;
    chain=unrolled writes every step out (the test would catch a scan that got unrolled)."""
    scan2, scan8 = _step_program_size(2, "scan"), _step_program_size(8, "scan")
    assert scan8 <= 1.05 * scan2, (scan2, scan8)
    unrolled2, unrolled8 = _step_program_size(2, "unrolled"), _step_program_size(8, "unrolled")
    assert unrolled8 > 1.5 * unrolled2, (unrolled2, unrolled8)


def _temp_bytes(n, chain, remat=False):
    """Temporary memory of the compiled training step (forward + backward)."""
    tc = ThinkingConfig(n_thoughts=n, remat=remat, chain=chain)
    mc = dataclasses.replace(MC, n_embd=64, remat=remat)
    model = nnx.eval_shape(lambda: SilentStar(mc, tc, rngs=nnx.Rngs(0)))
    gdef, state = nnx.split(model)
    step = lambda s, toks: jax.grad(lambda s: loss_fn_for(tc)(nnx.merge(gdef, s), toks))(s)
    compiled = jax.jit(step).lower(state, jax.ShapeDtypeStruct((4, 32), jnp.int32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("chain", ["scan", "unrolled"])
def test_remat_lowers_temporary_memory(chain):
    plain, remat = _temp_bytes(4, chain, False), _temp_bytes(4, chain, True)
    assert remat < plain, (plain, remat)


def test_scan_backward_does_not_save_the_buffer_per_step():
    """The scan's hand-written backward keeps the final [S] key buffer once: its memory grows like
    unrolled's (linearly in S), where autodiff of the carried buffer saved it at every step (S^2;
    at n=12 that was 2.3x unrolled's on this shape; the ratio grows like S: about 1.6x at n=8)."""
    scan, unrolled = _temp_bytes(8, "scan"), _temp_bytes(8, "unrolled")
    assert scan <= 1.2 * unrolled, (scan, unrolled)

"""The training levers for latent thoughts (docs/design.md §10): wiring options against a sequential
reference and against generation, chains only at scored positions, thought supervision and its
anneal, a variable number of thoughts, the gradient throttle, learning rates written 1e-3."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_thinking import MC, base_hidden, forward, hidden_from_embeddings, make_model, tokens, value_and_grad

from silentstar_jax import model as model_lib
from silentstar_jax.config import Config, LossConfig, ThinkingConfig, load_config
from silentstar_jax.data import Batch
from silentstar_jax.generation import Generator, score
from silentstar_jax.model import ChainOptions, forward_thought_sources
from silentstar_jax.objective import compute_loss, supervised_steps, supervision_loss, supervision_weight
from silentstar_jax.sampling import SamplingConfig
from silentstar_jax.train_step import n_think_positions, n_thoughts_at, progressive_prefix, think_positions


def _reference_feedback(g, h, cfg, y_D):
    """The next thought's input from a step output, written from the definitions in config.py."""
    if cfg.feedback == "latent":
        return h.project(y_D)
    logits = y_D @ g.wte[...].T
    if cfg.feedback == "sample":  # deterministic thoughts: the lens's argmax token
        return g.wte[...][int(np.argmax(logits))]
    p = np.exp((logits - logits.max()) / cfg.feedback_temperature)
    tok = (p / p.sum()) @ g.wte[...]
    return tok + h.project(y_D) if cfg.feedback == "token+latent" else tok


def _reference_logits(model, toks_L, t, n, detach=0):
    """One position t, written out: x_0..x_t, start, z_1..z_n, end through ordinary causal attention;
    z_1 = P(h0_t) under seed=base; the gate mixes the end step's or the last thought's output.
    detach j > 0 (thinking.progressive): z_1..z_j are constants, and z_{j+1} is built from a constant."""
    g, h, cfg = model.gpt2, model.heads, model.think_cfg
    wte, wpe = g.wte[...], g.wpe[...]
    seq = [wte[toks_L[i]] + wpe[i] for i in range(t + 1)]
    run = lambda: hidden_from_embeddings(g, jnp.stack(seq)[None])[0, -1]
    h0 = base_hidden(g, toks_L[None])[0, t]
    step = 1 if cfg.positions == "advance" else 0  # positions: same: every step at t + 1
    seq.append(h.embedding("start") + wpe[t + 1])
    outs = [run()]
    for j in range(1, n + 1):
        src = h0 if (cfg.seed == "base" and j == 1) else outs[-1]
        src = jax.lax.stop_gradient(src) if detach and j <= detach + 1 else src
        # feedback: sample under seed: base starts from the context's state itself, P(h0)
        z = (
            h.project(h0)
            if (cfg.feedback == "sample" and cfg.seed == "base" and j == 1)
            else _reference_feedback(g, h, cfg, src)
        )
        z = jax.lax.stop_gradient(z) if j <= detach else z
        seq.append(z + wpe[t + 1 + step * j])
        outs.append(run())
    seq.append(h.embedding("end") + wpe[t + 1 + step * (n + 1)])
    outs.append(run())
    y = outs[n] if cfg.mix_from == "last_thought" else outs[n + 1]
    w = h.mix_weight(h0, y)
    return g.logits((1 - w) * h0 + w * y), outs


@pytest.mark.parametrize("seed,mix_from", [("base", "end"), ("start", "last_thought"), ("base", "last_thought")])
def test_wiring_options_equal_sequential_reference(seed, mix_from):
    model = make_model(n_thoughts=2, seed=seed, mix_from=mix_from, chain="unrolled")
    toks = tokens(B=1, L=8)
    out = forward(model, toks)
    sup_logits = model.gpt2.logits(supervised_steps(out, 2))
    default = forward(make_model(n_thoughts=2, chain="unrolled"), toks).mixed_logits
    assert np.abs(np.asarray(out.mixed_logits - default)).max() > 1e-3  # the option changes the result
    for t in range(8):
        ref, outs = _reference_logits(model, toks[0], t, 2)
        np.testing.assert_allclose(out.mixed_logits[0, t, 0], ref, atol=1e-5)
        # sup_logits: thought j's logit lens = the tied head on step j's output
        np.testing.assert_allclose(sup_logits[0, t, 1], model.gpt2.logits(outs[2]), atol=1e-5)


def test_supervision_stride_supervises_every_s_th_thought():
    """loss.supervision_stride = s: target j is read by the lens of thought s*j (binding in one layer
    needs two attention steps per hop), from the sequential reference, and the training step uses it."""
    from silentstar_jax.train_step import make_loss_fn

    model = make_model(n_thoughts=4, seed="base", chain="unrolled")
    toks = tokens(B=1, L=6)
    out = forward(model, toks)
    every = supervised_steps(out, 4)
    strided = supervised_steps(out, 2, stride=2)
    assert strided.shape[2] == 2
    np.testing.assert_allclose(strided, every[:, :, 1::2], atol=1e-6)
    _, outs = _reference_logits(model, toks[0], 3, 4)
    for j, step in enumerate((2, 4)):
        np.testing.assert_allclose(model.gpt2.logits(strided[0, 3, j]), model.gpt2.logits(outs[step]), atol=1e-5)
    assert supervised_steps(out, 3, stride=2).shape[2] == 2  # fits n // s
    # the training loss reads the config: its sup CE j is thought 2j's lens CE toward target j
    cfg = Config(model=MC, thinking=model.think_cfg, loss=LossConfig(thought_supervision=1.0, supervision_stride=2))
    targets = np.full((1, 6, 2), -1, np.int32)
    targets[0, 4] = np.asarray(model.gpt2.logits(strided[0, 3]).argmax(-1))  # at t + 1 = 4 for the chain at t = 3
    loss_mask = np.zeros(toks.shape, np.int32)
    loss_mask[:, 4] = 1
    batch = Batch(jnp.asarray(toks), jnp.ones(toks.shape, jnp.int32), jnp.asarray(loss_mask), jnp.asarray(targets))
    graphdef, params = nnx.split(model)
    loss_fn = make_loss_fn(graphdef, cfg)
    got = loss_fn(params, batch, None)[1]
    want = -jax.nn.log_softmax(model.gpt2.logits(strided[0, 3]), -1)[jnp.arange(2), targets[0, 4]]
    np.testing.assert_allclose([got["sup_ce_1"], got["sup_ce_2"]], want, rtol=1e-4)


def test_last_thought_with_no_thoughts_mixes_the_start_step():
    """Test-time N = 0 under mix_from: last_thought (a trained recipe's --thoughts 0): the gate mixes the
    start step's output, the last step before end, as the sequential reference says; --thoughts accepts it."""
    import os

    from conftest import ROOT

    from silentstar_jax.train_cli import _thought_counts

    model = make_model(n_thoughts=2, seed="base", mix_from="last_thought", chain="unrolled")
    toks = tokens(B=1, L=6)
    out = forward(model, toks, n_thoughts=0)
    for t in range(6):
        np.testing.assert_allclose(out.mixed_logits[0, t, 0], _reference_logits(model, toks[0], t, 0)[0], atol=1e-5)
    cfg = load_config(os.path.join(ROOT, "configs", "hops-reinforce.yaml"))
    assert cfg.thinking.mix_from == "last_thought" and _thought_counts("0,2,3", True, cfg) == [0, 2, 3]


@pytest.mark.parametrize(
    "feedback,temperature,seed,chain",
    [
        ("token", 1.0, "base", "unrolled"),
        ("token", 0.3, "start", "scan"),
        ("token+latent", 1.0, "base", "scan"),
        ("sample", 1.0, "base", "scan"),
        ("sample", 0.5, "start", "unrolled"),
    ],
)
def test_token_feedback_equals_sequential_reference(feedback, temperature, seed, chain):
    """thinking.feedback: token: a thought's input is its predecessor's expected token embedding under
    the logit lens at temperature tau; token+latent adds P(y)."""
    think = dict(n_thoughts=3, seed=seed, chain=chain, feedback=feedback, feedback_temperature=temperature)
    model = make_model(**think)
    toks = tokens(B=1, L=8)
    out = forward(model, toks)
    other_model = make_model(**{**think, "feedback": "latent" if feedback == "token" else "token"})
    other = forward(other_model, toks).mixed_logits
    assert np.abs(np.asarray(out.mixed_logits - other)).max() > 1e-3  # the option changes the result
    for t in range(8):
        ref, _ = _reference_logits(model, toks[0], t, 3)
        np.testing.assert_allclose(out.mixed_logits[0, t, 0], ref, atol=1e-5)


@pytest.mark.parametrize(
    "seed,mix_from,feedback,positions",
    [
        ("base", "end", "latent", "advance"),
        ("base", "last_thought", "latent", "advance"),
        ("base", "end", "token", "advance"),
        ("start", "end", "token+latent", "advance"),
        ("start", "end", "sample", "advance"),
        ("base", "end", "sample", "advance"),
        ("base", "end", "latent", "same"),
    ],
)
def test_generation_equals_scoring_with_wiring_options(seed, mix_from, feedback, positions):
    model = make_model(n_thoughts=2, seed=seed, mix_from=mix_from, feedback=feedback, positions=positions)
    prompt = [3, 17, 5, 9]
    events, _ = Generator(model, SamplingConfig(greedy=True), think=True).generate(prompt, 6)
    s = score(model, prompt + [e.token_id for e in events], think=True)
    np.testing.assert_allclose([e.logprob for e in events], s["logprob"][len(prompt) - 1 :], atol=1e-4)


@pytest.mark.parametrize("chain", ["unrolled", "scan"])
def test_sampled_token_thoughts_follow_the_lens(chain):
    """feedback: sample with a key: each thought's input is one token's embedding, drawn with the
    probabilities softmax(lens / tau) of the state it is fed from; logp sums the drawn tokens' log-probs."""
    tau, K = 3.0, 3000
    model = make_model(n_thoughts=2, seed="start", chain=chain, feedback="sample", feedback_temperature=tau)
    out = forward(model, tokens(B=1, L=4), key=jax.random.key(3), n_samples=K)
    wte = np.asarray(model.gpt2.wte[...])
    z = np.asarray(out.thoughts)  # [K, L, n, D]
    dist = np.abs(z[..., None, :] - wte).max(-1)  # [K, L, n, V]
    assert dist.min(-1).max() == 0.0  # every input is a token's embedding
    tok = dist.argmin(-1)
    logp_all = np.asarray(
        jax.nn.log_softmax(model.gpt2.logits(forward_thought_sources(out, model.think_cfg)) / tau, axis=-1)
    )
    ref_logp = np.take_along_axis(logp_all, tok[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(np.asarray(out.logp), ref_logp, atol=1e-4)
    # thought 1 is fed from the start step, the same in all K samples: the draws' frequencies are its lens's
    p1 = np.exp(logp_all[0, :, 0])  # [L, V]
    freq = np.stack([np.bincount(tok[:, t, 0], minlength=wte.shape[0]) / K for t in range(4)])
    assert p1.max() < 0.5 and np.abs(freq - p1).max() < 0.035
    assert len({tuple(r) for r in tok[:, 1, :]}) > 10  # the samples differ


def _task_batch(B=4, L=10, seed=0):
    """Rows with a scored answer of 1-3 tokens somewhere after a prompt, and padding after it."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, MC.vocab_size, (B, L)).astype(np.int32)
    attn, loss = np.zeros((B, L), np.int32), np.zeros((B, L), np.int32)
    for b in range(B):
        p, a = rng.integers(3, 6), rng.integers(1, 4)
        attn[b, : p + a] = 1
        loss[b, p : p + a] = 1
    return jnp.asarray(toks), jnp.asarray(attn), jnp.asarray(loss)


@pytest.mark.parametrize("A", [1, 2])
def test_think_at_targets_same_loss_and_gradients(A):
    """Chains only where a scored token is predicted: the losses and gradients of thinking everywhere."""
    tc = ThinkingConfig(n_thoughts=2, n_ahead=A, estimator="both", chain="unrolled")
    toks, attn, lmask = _task_batch()
    Q = n_think_positions(Batch(toks, attn, lmask), A)
    assert Q == int(lmask.sum(1).max()) + A - 1  # an answer of a tokens: a + A - 1 chains see it
    idx = think_positions(attn, lmask, A, Q)
    assert idx.shape == (4, Q) and int((idx < toks.shape[1]).sum()) < toks.size  # fewer chains than positions

    def loss(model, think_idx):
        out = model(toks, attn, ChainOptions(key=jax.random.key(3), think_idx_BQ=think_idx))
        return compute_loss(out, toks, attn, lmask, tc, LossConfig(thought=1.0), lens=model.gpt2.logits)[0]

    model = make_model(**dataclasses.asdict(tc))
    l_all, g_all = value_and_grad(loss)(model, None)
    l_tgt, g_tgt = value_and_grad(loss)(model, idx)
    np.testing.assert_allclose(l_all, l_tgt, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
        nnx.state(g_all, nnx.Param),
        nnx.state(g_tgt, nnx.Param),
    )


def test_think_positions_are_the_scored_ones():
    attn = jnp.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    lmask = jnp.array([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]])
    idx = think_positions(attn, lmask, 1, 2)
    np.testing.assert_array_equal(idx, [[2, 3], [4, 6]])  # 6 = padding (L)


def test_supervision_loss_against_numpy():
    rng = np.random.default_rng(0)
    B, L, J, V = 2, 5, 2, 7
    logits = rng.normal(size=(B, L, J, V)).astype(np.float32)
    tt = np.full((B, L, J), -1, np.int32)
    tt[0, 3] = [1, 4]  # targets of the token at 3: the chain at position 2 is supervised
    tt[1, 2, 0] = 6  # only j = 1 at the chain at 1
    total, per_j = supervision_loss(jnp.asarray(logits), jnp.asarray(tt))
    lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ces = [-lsm[0, 2, 0, 1], -lsm[0, 2, 1, 4], -lsm[1, 1, 0, 6]]
    np.testing.assert_allclose(total, np.mean(ces), rtol=1e-5)
    np.testing.assert_allclose(per_j[0], (ces[0] + ces[2]) / 2, rtol=1e-5)
    np.testing.assert_allclose(per_j[1], ces[1], rtol=1e-5)


def test_supervision_anneal_schedule():
    lc = LossConfig(thought_supervision=2.0, supervision_anneal=[0.5, 0.75])
    got = [float(supervision_weight(lc, s, 100)) for s in (0, 49, 50, 60, 70, 75, 99)]
    np.testing.assert_allclose(got, [2.0, 2.0, 2.0, 2 * 0.6, 2 * 0.2, 0.0, 0.0], atol=1e-6)
    never = LossConfig(thought_supervision=1.0)
    assert float(supervision_weight(never, 99, 100)) == 1.0


def test_supervised_thoughts_get_the_supervision_gradient():
    """The supervision term reaches the thinking heads through the chain, and is 0 at weight 0."""
    tc = ThinkingConfig(n_thoughts=2, chain="unrolled", seed="base", estimator="pathwise")
    toks, attn, lmask = _task_batch()
    tt = np.full(toks.shape + (2,), -1, np.int32)
    tt[:, 4] = [[1, 2]] * 4
    lc = LossConfig(base=0.0, think=0.0, policy=0.0, value=0.0, thought_supervision=1.0)

    def loss(model, w):
        out = model(toks, attn)
        return compute_loss(out, toks, attn, lmask, tc, lc, jnp.asarray(tt), w, lens=model.gpt2.logits)[0]

    model = make_model(**dataclasses.asdict(tc))
    g1 = nnx.jit(nnx.grad(loss))(model, 1.0)
    g0 = nnx.jit(nnx.grad(loss))(model, 0.0)
    assert float(jnp.abs(nnx.state(g1, nnx.Param)["heads"]["proj_kernel"][...]).sum()) > 0
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(nnx.state(g0, nnx.Param)))


def test_n_thoughts_override_equals_configured_count():
    toks = tokens(B=1, L=8)
    m3 = make_model(n_thoughts=3)
    m1 = make_model(n_thoughts=1)  # the same parameters (they do not depend on n)
    out = forward(m3, toks, n_thoughts=1)
    np.testing.assert_allclose(out.mixed_logits, forward(m1, toks).mixed_logits, atol=1e-6)
    assert out.thoughts.shape[2] == 1


def test_n_thoughts_train_draws_are_deterministic_and_in_range():
    cfg = Config(thinking=ThinkingConfig(n_thoughts=3, n_thoughts_train=[1, 4]))
    draws = [n_thoughts_at(cfg, s) for s in range(200)]
    assert set(draws) == {1, 2, 3, 4}
    assert draws == [n_thoughts_at(cfg, s) for s in range(200)]
    assert n_thoughts_at(Config(thinking=ThinkingConfig(n_thoughts=3)), 5) == 3


@pytest.mark.parametrize("chain,seed", [("scan", "start"), ("unrolled", "base"), ("scan", "base")])
def test_progressive_prefix_changes_the_gradient_not_the_values(chain, seed):
    """thinking.progressive with n_detach = j: the same logits; the gradient is the sequential
    reference's with z_1..z_j constants and z_{j+1} built from a constant; j = 0 is the plain gradient."""
    n, j, L = 3, 2, 6
    model = make_model(n_thoughts=n, chain=chain, seed=seed, progressive=True)
    toks = tokens(B=1, L=L)
    R = jax.random.normal(jax.random.key(3), (L, MC.vocab_size))
    main = lambda m, nd: jnp.sum(m(toks, None, ChainOptions(n_detach=nd)).mixed_logits[0, :, 0] * R)
    grad = nnx.jit(nnx.grad(main))
    params = lambda g: nnx.state(g, nnx.Param)
    np.testing.assert_allclose(nnx.jit(main)(model, j), nnx.jit(main)(model, None), rtol=1e-6)
    g_plain, g_j, g_0 = params(grad(model, None)), params(grad(model, j)), params(grad(model, 0))
    ref = lambda m: sum(jnp.sum(_reference_logits(m, toks[0], t, n, detach=j)[0] * R[t]) for t in range(L))
    g_ref = params(nnx.grad(ref)(model))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), g_ref, g_j)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6), g_plain, g_0)
    diff = float(jnp.abs(g_plain["heads"]["proj_kernel"][...] - g_j["heads"]["proj_kernel"][...]).max())
    assert diff > 1e-5, "the detached prefix must change the thought projection's gradient"


def test_progressive_prefix_draws_and_the_policy_term():
    """The prefix is U{0..n-1}; under REINFORCE the detached thoughts' log-probs get no gradient: with
    every thought detached the policy term's gradient is exactly zero, with none it is not."""
    draws = {int(progressive_prefix(jax.random.key(s), 3)) for s in range(100)}
    assert draws == {0, 1, 2} and int(progressive_prefix(jax.random.key(0), 0)) == 0
    tc = ThinkingConfig(n_thoughts=2, estimator="reinforce", progressive=True)
    model = make_model(n_thoughts=2, estimator="reinforce", progressive=True)
    toks = tokens(B=2, L=8)
    ones = jnp.ones_like(toks)
    policy_only = LossConfig(base=0, think=0, policy=1, value=0)

    def loss(m, nd):
        out = m(toks, None, ChainOptions(key=jax.random.key(7), n_detach=nd))
        return compute_loss(out, toks, ones, ones, tc, policy_only)[0]

    g = lambda nd: float(
        sum(jnp.abs(x).sum() for x in jax.tree.leaves(nnx.state(nnx.jit(nnx.grad(loss))(model, nd), nnx.Param)))
    )
    assert g(0) > 0.0 and g(2) == 0.0


def test_throttle_divides_only_the_chain_gradient_on_shared_weights(monkeypatch):
    """grad(throttle) = grad_without_chain + (grad_full - grad_without_chain) / S on GPT-2 weights;
    the thinking heads' gradients are unchanged; the loss value is unchanged."""
    toks = tokens(B=2, L=8)
    tc = dict(n_thoughts=2, chain="unrolled", estimator="pathwise")

    def run(throttle, scale=None):
        if scale is not None:
            orig = model_lib._grad_scaled
            monkeypatch.setattr(model_lib, "_grad_scaled", lambda g, s: orig(g, scale))
        m = make_model(throttle=throttle, **tc)
        ones = jnp.ones_like(toks)
        f = lambda mm: compute_loss(mm(toks), toks, ones, ones, mm.think_cfg, LossConfig())[0]
        l, g = nnx.value_and_grad(f)(m)  # eager: a compiled pair would differ by fusion's rounding
        monkeypatch.undo()
        return l, nnx.state(g, nnx.Param)

    l1, g1 = run(False)
    lt, gt = run(True)
    l0, g0 = run(True, scale=0.0)
    S = 2 + 2
    np.testing.assert_allclose(l1, lt, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1["heads"], gt["heads"])
    want = jax.tree.map(lambda a, b: b + (a - b) / S, g1["gpt2"], g0["gpt2"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), want, gt["gpt2"])
    assert float(jnp.abs(g1["gpt2"]["wpe"][...] - gt["gpt2"]["wpe"][...]).max()) > 1e-6


def test_learning_rates_written_like_1e_3(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3e-4}\n")
    assert load_config(str(path)).optim.lr == pytest.approx(3e-4)
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)


def test_hops_recipe_trains_end_to_end(tmp_path):
    """configs/hops.yaml at micro size: supervision + anneal, seeded thoughts, chains at the answer only,
    a random thought count; every metric logged, the eval history written, supervision annealed."""
    import json
    import os

    from conftest import ROOT

    from silentstar_jax.trainer import Run

    micro = [
        "model.n_embd=32",
        "model.n_head=2",
        "data.n_symbols=6",
        "data.n_train=64",
        "data.n_eval=16",
        "train.steps=6",
        "train.batch_size=8",
        "train.seq_len=9",
        "train.log_every=1",
        "train.eval_every=3",
        "train.save_every=0",
        "mesh.data=1",
        "checkpoint.async_save=false",
        "thinking.n_thoughts_train=[2,3]",
        "loss.supervision_anneal=[0.3,0.6]",
        f"run.out_dir={tmp_path}",
    ]
    run = Run(load_config(os.path.join(ROOT, "configs", "hops.yaml"), micro))
    assert run.eval_rows.thought_targets is not None
    res = run.train()
    logs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {"loss_sup", "sup_ce_1", "sup_ce_2", "sup_weight", "ce_think", "mix_weight"} <= set(logs[0])
    np.testing.assert_allclose(
        [r["sup_weight"] for r in logs], [1, 1, 8 / 9, 1 / 3, 0, 0], atol=1e-6
    )  # steps 0..5 of 6
    assert [json.loads(line)["step"] for line in open(tmp_path / "evals.jsonl")] == [3, 6]
    assert 0.0 <= res["thinking"]["exact_match"] <= 1.0


@pytest.mark.parametrize(
    "name,extra",
    [
        ("demo", ["data.chain=3", "train.seq_len=10"]),
        ("hops-reinforce", ["data.chain=3", "train.seq_len=10"]),
        ("unsupervised", ["data.chain=3", "train.seq_len=12"]),
        ("unsupervised-scaling", ["data.chain=3", "train.seq_len=12"]),
        ("unsupervised-scaling", ["data.chain=3", "train.seq_len=12", "thinking.progressive=true"]),
        ("unsupervised-k2", ["data.chain=3", "train.seq_len=12"]),
        ("unsupervised-k3", ["data.chain=3", "train.seq_len=12"]),
    ],
)
def test_demo_and_unsupervised_recipes_train_end_to_end(tmp_path, name, extra):
    """configs/demo.yaml (a chain of answers, supervised), configs/hops-reinforce.yaml (the same with
    token thoughts and REINFORCE), configs/unsupervised.yaml (mixed k, no targets, the hardest k
    held out), its variable-thought-count variant and its two- and three-hop curricula at micro size: a few steps, and what each evaluation reports."""
    import json
    import os

    from conftest import ROOT

    from silentstar_jax.data import CurriculumIterator
    from silentstar_jax.trainer import Run

    micro = [
        "model.n_embd=32",
        "model.n_head=2",
        "data.n_symbols=5",
        "data.n_train=64",
        "data.n_eval=16",
        "train.steps=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.eval_every=0",
        "train.save_every=0",
        "mesh.data=1",
        "checkpoint.async_save=false",
        f"run.out_dir={tmp_path}",
        *extra,
    ]
    run = Run(load_config(os.path.join(ROOT, "configs", f"{name}.yaml"), micro))
    res = run.train()
    ev = json.load(open(tmp_path / "eval.json"))
    logs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    if name in ("demo", "hops-reinforce"):
        assert int((run.data.rows.thought_targets[0] >= 0).any(-1).sum()) == 3  # every answer letter
        assert "exact_match_k1" not in ev["thinking"] and logs[0]["loss_sup"] > 0
        # REINFORCE's policy term is live (nonzero advantages times log-probs) only with token thoughts
        assert (max(abs(r["loss_policy"]) for r in logs) > 0) == (name == "hops-reinforce")
    else:
        assert run.data.rows.thought_targets is not None and "loss_sup" not in logs[0]  # no supervision term
        assert {"exact_match_k1", "exact_match_k2"} <= set(ev["thinking"]) <= set(ev["base"]) | {"exact_match"}
        assert isinstance(run.data, CurriculumIterator) == (name in ("unsupervised-k2", "unsupervised-k3"))
        k = run.cfg.data.hops  # held out: the hardest k only
        assert (
            ev["thinking"]["exact_match"] == res["thinking"][f"exact_match_k{k}"] and f"exact_match_k{k}" in ev["base"]
        )


def test_binding_queries_recipe_trains_end_to_end(tmp_path):
    """configs/binding-mq.yaml at micro size: several queries per problem, only their digits scored, each
    digit thinking with its own supervised hops (the later query letters neither think nor carry targets)."""
    import json
    import os

    from conftest import ROOT

    from silentstar_jax.trainer import Run

    micro = [
        "model.n_embd=32",
        "model.n_head=2",
        "data.n_vars=6",
        "data.queries=2",
        "data.n_train=64",
        "data.n_eval=16",
        "train.seq_len=30",
        "train.steps=2",
        "train.batch_size=8",
        "train.log_every=1",
        "train.eval_every=0",
        "train.save_every=0",
        "mesh.data=1",
        "checkpoint.async_save=false",
        f"run.out_dir={tmp_path}",
    ]
    run = Run(load_config(os.path.join(ROOT, "configs", "binding-mq.yaml"), micro))
    rows = run.data.rows
    scored = rows.loss_mask.astype(bool) & rows.attn_mask.astype(bool)
    targets = (rows.thought_targets >= 0).any(-1)
    assert (scored.sum(1) == 3).all() and (targets.sum(1) == 2).all()  # two digits + end-of-text; two with hops
    assert not (targets & ~scored).any()
    run.train()
    ev = json.load(open(tmp_path / "eval.json"))
    logs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert logs[0]["loss_sup"] > 0 and {"sup_ce_1", "sup_ce_2"} <= set(logs[0])
    assert 0.0 <= ev["thinking"]["exact_match"] <= ev["thinking"]["answer_accuracy"] <= 1.0


def test_chain_layout():
    from silentstar_jax.config import ChainLayout

    lay = ChainLayout(3, 2)  # start, 3 thoughts, end, 1 talk token
    assert lay.n_steps == 6 and list(lay.thoughts) == [1, 2, 3] and lay.end == 4 and list(lay.talk) == [5]
    assert [lay.kind(i) for i in range(6)] == ["start", "thought", "thought", "thought", "end", "talk"]
    assert lay.mixed() == [4, 5] and lay.mixed("last_thought") == [3, 5]
    with pytest.raises(IndexError):
        lay.kind(6)
    assert ThinkingConfig(n_thoughts=2, n_ahead=3).n_steps == ChainLayout(2, 3).n_steps == 6
    # position ids: advance = t + i + 1; same = t + 1 up to the end step, the talk tokens after it
    assert [lay.offset(i) for i in range(6)] == [1, 2, 3, 4, 5, 6] and lay.position_span == 6
    same = ChainLayout(3, 2, "same")
    assert [same.offset(i) for i in range(6)] == [1, 1, 1, 1, 1, 2] and same.position_span == 2
    assert [int(same.offset(jnp.int32(i))) for i in range(6)] == [1, 1, 1, 1, 1, 2]  # traced steps (the scan)
    assert ChainLayout(7, 2, "same").position_span == 2  # the span does not grow with the count


def test_same_positions_fix_the_end_step_position_and_the_context_room():
    """thinking.positions: same: one position id for every step up to end, so a test-time count never
    puts the end step on an id training did not give it, and the context's room for tokens (generation,
    config validation) does not shrink with the count."""
    from silentstar_jax.config import validate_thinking
    from silentstar_jax.errors import UserError

    small = dataclasses.replace(MC, n_positions=12)
    with pytest.raises(UserError, match="exceeds model.n_positions"):
        validate_thinking(ThinkingConfig(n_thoughts=4), small, seq_len=7)
    validate_thinking(ThinkingConfig(n_thoughts=4, positions="same"), small, seq_len=7)
    for n in (2, 9):  # 9 thoughts would need 11 ids past the last token under advance
        m = make_model(n_thoughts=2, positions="same", mc=small)
        gen = Generator(m, SamplingConfig(greedy=True), think=True, n_thoughts=n)
        assert gen.room == 11
        events, _ = gen.generate([3, 17, 5], 4)
        s = score(m, [3, 17, 5] + [e.token_id for e in events], think=True, n_thoughts=n)
        np.testing.assert_allclose([e.logprob for e in events], s["logprob"][2:], atol=1e-4)
    with pytest.raises(UserError, match="use at most"):
        Generator(make_model(n_thoughts=2, mc=small), SamplingConfig(greedy=True), think=True, n_thoughts=9)


def test_variable_count_step_is_one_program_equal_to_each_fixed_count(tmp_path):
    """thinking.n_thoughts_train: the count is data (one compiled step for every count), and the step
    at count n equals the fixed-n step: loss, metrics and updated parameters."""
    import os

    from conftest import ROOT

    from silentstar_jax.train_step import make_train_step
    from silentstar_jax.trainer import Run

    micro = [
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "model.n_positions=24",
        "data.digits_a=2",
        "data.digits_b=1",
        "data.n_train=64",
        "data.n_eval=8",
        "train.batch_size=4",
        "train.seq_len=8",
        "mesh.data=1",
        "loss.thought=0.5",
        f"run.out_dir={tmp_path}",
    ]
    run = Run(load_config(os.path.join(ROOT, "configs", "tiny.yaml"), micro + ["thinking.n_thoughts_train=[1,2]"]))
    fixed_cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), micro)
    args = (run.graphdef, run.tx, run.sched, run.mesh, run.p_shard, run.o_shard)
    variable = make_train_step(args[0], run.cfg, *args[1:])
    fixed = make_train_step(args[0], fixed_cfg, *args[1:])
    batch = run.put_batch(next(run.data))
    fresh = lambda: (jax.tree.map(jnp.copy, run.params), jax.tree.map(jnp.copy, run.opt_state))
    for n in (2, 1, 2):
        p_var, _, m_var = variable(*fresh(), batch, 5, n)
        p_fix, _, m_fix = fixed(*fresh(), batch, 5, n)
        np.testing.assert_allclose(float(m_var["loss"]), float(m_fix["loss"]), rtol=1e-6)
        for k in m_fix:
            np.testing.assert_allclose(float(m_var[k]), float(m_fix[k]), rtol=1e-5, atol=1e-7, err_msg=k)
        for a, b in zip(jax.tree.leaves(p_var), jax.tree.leaves(p_fix)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert variable._cache_size() == 1 and fixed._cache_size() == 2

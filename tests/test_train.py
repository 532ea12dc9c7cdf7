"""The training system on micro shapes: configs, CLI errors, exact resume, sharding, no recompiles."""

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import MICRO_SHAPE, ROOT, run_cli

from silentstar_jax import config as C
from silentstar_jax.trainer import Run

MICRO = [
    *MICRO_SHAPE,
    "train.save_every=0",
    "thinking.n_thoughts=1",
    "mesh.data=1",
    "checkpoint.async_save=false",
]


def micro_cfg(tmp_path, *extra):
    return C.load_config(os.path.join(ROOT, "configs", "tiny.yaml"), MICRO + [f"run.out_dir={tmp_path}", *extra])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_shipped_config_loads(path):
    cfg = C.load_config(path)
    assert cfg.train.steps >= 1 and cfg.run.out_dir


@pytest.mark.parametrize(
    "override,needle",
    [
        ("thinking.n_thougths=3", "did you mean 'thinking.n_thoughts'"),
        ("train.steps=abc", "expected an integer"),
        ("thinking.estimator=magic", "not one of"),
        ("thinking.n_ahead=0", "n_ahead must be >= 1"),
        ("thinking.n_thoughts=40", "exceeds model.n_positions"),
        ("loss.supervision_stride=0", "supervision_stride must be >= 1"),
        ("thinking.enabled=false loss.base=0", "the model would have no loss"),
        ("thinking.feedback=sample thinking.estimator=both", "needs thinking.estimator=reinforce"),
    ],
)
def test_config_errors_are_one_line(tmp_path, override, needle):
    out = tmp_path / "never"
    proc = run_cli("train.py", "--config", "configs/tiny.yaml", *override.split(), f"run.out_dir={out}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr
    assert not out.exists()


def test_missing_config_file():
    proc = run_cli("train.py", "--config", "configs/nope.yaml")
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def _losses(out_dir):
    recs = [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in recs}


def test_resume_is_exact(tmp_path):
    straight = Run(micro_cfg(tmp_path / "a", "train.steps=6"))
    straight.train()
    first = Run(micro_cfg(tmp_path / "b", "train.steps=6"))
    first.train(stop_after=3)  # as if stopped by SIGTERM after 3 steps
    resumed = Run(micro_cfg(tmp_path / "b", "train.steps=6"))
    resumed.train()
    assert resumed.step == 6
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(lb) == list(range(1, 7)) and la == lb
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert os.path.isfile(tmp_path / "b" / "eval.json") and os.path.isfile(tmp_path / "b" / "config.yaml")
    assert glob.glob(str(tmp_path / "b" / "tb" / "events.*"))


@pytest.mark.parametrize("thinking", [True, False], ids=["thinking", "plain"])
def test_one_compilation_and_metrics_schema(tmp_path, thinking):
    """The trainer's step compiles once over a warm-up and three more steps (its initial state is
    placed as the step returns it), and every step logs every metric."""
    from silentstar_jax.benchmark import Compiles

    run = Run(micro_cfg(tmp_path, "train.steps=4", f"thinking.enabled={str(thinking).lower()}"))
    with Compiles() as c:
        run.train()
    assert c.names.count("jit(step)") == 1, c.names
    rec = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert len(rec) == 4
    keys = ("step", "loss", "loss_base", "tokens_per_second")
    if thinking:
        keys += ("loss_think", "loss_policy", "loss_value", "reward", "thinking_gain")
    for key in keys:
        assert key in rec[-1]


def test_sharded_loss_equals_single_device(tmp_path):
    from silentstar_jax.train_step import make_loss_fn

    assert jax.device_count() >= 4
    single = Run(micro_cfg(tmp_path / "s", "mesh.data=1", "mesh.fsdp=1", "model.n_embd=64"))
    sharded = Run(micro_cfg(tmp_path / "m", "mesh.data=2", "mesh.fsdp=2", "model.n_embd=64"))
    wte = sharded.params["gpt2"]["wte"]
    assert wte.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp") or "fsdp" in str(wte.sharding.spec)
    assert len(wte.sharding.device_set) == 4
    batch = next(single.data)
    key = jax.random.key(0)
    loss = lambda run: jax.jit(make_loss_fn(run.graphdef, run.cfg))(run.params, run.put_batch(batch), key)[0]
    a, b = float(loss(single)), float(loss(sharded))
    assert abs(a - b) < 1e-5, (a, b)


def test_restore_onto_different_device_count(tmp_path):
    first = Run(micro_cfg(tmp_path, "train.steps=2", "mesh.data=4"))
    first.train()
    other = Run(micro_cfg(tmp_path, "train.steps=2", "mesh.data=1", "mesh.fsdp=2"))
    assert other.restore_latest() and other.step == 2
    for x, y in zip(jax.tree.leaves(first.params), jax.tree.leaves(other.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_data_state_round_trip():
    from silentstar_jax.data import Batch, RowIterator

    rows = Batch(np.arange(30).reshape(10, 3), np.ones((10, 3)), np.ones((10, 3)))
    it = RowIterator(rows, 4, seed=1)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.state))
    want = [next(it).tokens for _ in range(3)]
    again = RowIterator(rows, 4, seed=1)
    again.restore(state)
    for w in want:
        np.testing.assert_array_equal(next(again).tokens, w)


def test_text_files_source(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(200)))
    cfg = C.load_config(
        os.path.join(ROOT, "configs", "text-files.yaml"),
        MICRO
        + [
            f"run.out_dir={tmp_path / 'run'}",
            f"data.files=[{text}]",
            "train.steps=2",
            "train.seq_len=16",
            "model.n_positions=32",
        ],
    )
    run = Run(cfg)
    res = run.train()
    assert res["base"]["ce"] > 0 and "exact_match" not in res["base"]


def test_exact_match_equals_greedy_decoding(tmp_path):
    """Eval's teacher-forced exact match agrees row by row with real greedy decoding, with and without
    thinking, on rows decoded right and rows decoded wrong (not 0 == 0). Beside each held-out row: the
    row answered with what greedy decoding writes (right by construction) and that answer with its
    last token changed (wrong by construction)."""
    from flax import nnx

    from silentstar_jax.evaluate import evaluate
    from silentstar_jax.generation import Generator
    from silentstar_jax.sampling import SamplingConfig

    run = Run(micro_cfg(tmp_path, "train.steps=30", "optim.lr=0.01"))
    run.train()
    model = nnx.merge(run.graphdef, run.params)
    rows = run.eval_rows
    for think in (False, True):
        gen = Generator(model, SamplingConfig(greedy=True), think=think)
        seen = set()
        for i in range(6):
            T = int(rows.attn_mask[i].sum())
            p = int(np.argmax(rows.loss_mask[i]))  # the prompt ends where the answer is scored
            events, _ = gen.generate(rows.tokens[i, :p].tolist(), T - p)
            decoded = [e.token_id for e in events]
            greedy, wrong = rows.tokens[i].copy(), rows.tokens[i].copy()
            greedy[p:T] = wrong[p:T] = decoded
            wrong[T - 1] = (decoded[-1] + 1) % run.cfg.model.vocab_size
            for tokens_T in (rows.tokens[i], greedy, wrong):
                greedy_right = tokens_T[p:T].tolist() == decoded
                one = rows.take(np.full(8, i))._replace(tokens=np.tile(tokens_T, (8, 1)))
                res = evaluate(run.eval_fn, run.params, one, 8, run.put_batch)
                assert (res["thinking" if think else "base"]["exact_match"] == 1.0) == greedy_right, (think, i)
                seen.add(greedy_right)
        assert seen == {True, False}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_128_plus_signal(tmp_path, sig):
    """Stopped by SIGTERM / SIGINT: the checkpoint is saved, then exit 143 / 130 (not 0: `train.py &&
    next-step` must not go on with a half-trained model)."""
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
    args = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        "configs/tiny.yaml",
        *MICRO,
        f"run.out_dir={tmp_path}",
        "train.steps=100000",
    ]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name} at step" in err and "Traceback" not in err
    steps = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert steps and max(steps) > 0


def _text_cfg(tmp_path, name, files, *extra):
    return C.load_config(
        os.path.join(ROOT, "configs", "text-files.yaml"),
        MICRO
        + [
            f"run.out_dir={tmp_path / name}",
            f"data.files=[{','.join(map(str, files))}]",
            "train.seq_len=16",
            "model.n_positions=32",
            *extra,
        ],
    )


def test_gradient_accumulation_equals_full_batch(tmp_path):
    """With every row weighted alike (packed text), 2 micro-batches of 8 = one batch of 16."""
    text = tmp_path / "c.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"doc {i}: pack me into blocks please"}) for i in range(300)))
    runs = []
    for name, extra in (("full", ["train.batch_size=16"]), ("accum", ["train.batch_size=8", "train.grad_accum=2"])):
        run = Run(_text_cfg(tmp_path, name, [text], "thinking.enabled=false", "train.steps=2", *extra))
        run.train()
        runs.append(run)
    for x, y in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    la, lb = _losses(tmp_path / "full"), _losses(tmp_path / "accum")
    assert abs(la[2] - lb[2]) < 1e-5


@pytest.mark.parametrize("arm,override", [("nothink", "thinking.enabled=false"), ("pause", "thinking.feedback=pause")])
def test_arm_control_is_the_experiment_arm(arm, override):
    """`train.py --arm A` is the config with experiment.py's arm override and nothing else, in its own directory."""
    from silentstar_jax.experiment.plan import ARM_OVERRIDES, arm_config

    path = os.path.join(ROOT, "configs", "demo.yaml")
    control = arm_config(path, ["train.steps=7"], arm)
    derived = C.load_config(path, ["train.steps=7", override])
    assert ARM_OVERRIDES[arm] == (override,)
    assert control == dataclasses.replace(derived, run=dataclasses.replace(derived.run, out_dir=control.run.out_dir))
    assert control.run.out_dir == derived.run.out_dir + "-" + arm
    assert control.thinking != C.load_config(path, ["train.steps=7"]).thinking  # the arm changed something


def test_arm_flag_refuses_unknown_arm(tmp_path):
    proc = run_cli("train.py", "--config", "configs/tiny.yaml", "--arm", "nothing", f"run.out_dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "choose from" in proc.stderr
    assert not (tmp_path / "x").exists()

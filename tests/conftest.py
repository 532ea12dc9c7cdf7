"""Test setup: 4 simulated CPU devices (for sharding tests), shared tiny fixtures.
`silentstar_jax` is imported as installed (`pip install -r requirements-dev.txt` installs it editable)."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "tiny-gpt2")


@pytest.fixture(scope="session")
def fixture_dir():
    return FIXTURE


@pytest.fixture(scope="session")
def expected():
    import numpy as np

    return dict(np.load(os.path.join(FIXTURE, "expected.npz")))


@pytest.fixture(scope="session")
def tiny_gpt2():
    from silentstar_jax.hf import load_gpt2

    return load_gpt2(FIXTURE)[0]


def run_cli(script: str, *args: str, timeout: int = 300, cwd: str = ROOT, stdin=None):
    """Run an entry point as a user would; returns CompletedProcess with text output."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
    )


# The micro shape of configs/tiny.yaml the training tests share (each adds its steps, saves and devices).
MICRO_SHAPE = [
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "model.n_positions=24",
    "data.digits_a=2",
    "data.digits_b=1",
    "data.n_train=256",
    "data.n_eval=32",
    "train.batch_size=8",
    "train.seq_len=8",
    "train.log_every=1",
]

# A micro thinking run (3 steps) for the generation tests; its context is the caller's n_positions.
MICRO_RUN = [
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "data.digits_a=2",
    "data.digits_b=1",
    "data.n_train=256",
    "data.n_eval=16",
    "train.batch_size=8",
    "train.seq_len=8",
    "train.steps=3",
    "train.log_every=1",
    "thinking.n_thoughts=2",
    "mesh.data=1",
    "checkpoint.async_save=false",
]


def train_micro_run(tmp_path_factory, n_positions: int) -> str:
    from silentstar_jax import config as C
    from silentstar_jax.trainer import Run

    out = tmp_path_factory.mktemp("runs") / "micro"
    cfg = C.load_config(
        os.path.join(ROOT, "configs", "tiny.yaml"),
        MICRO_RUN + [f"model.n_positions={n_positions}", f"run.out_dir={out}"],
    )
    Run(cfg).train()
    return str(out)


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop compiled programs after each test module: one long pytest process otherwise keeps every
    executable of the suite (a full-suite run once died with a segfault inside an XLA compile)."""
    yield
    import jax

    jax.clear_caches()

"""Multi-host training, on one machine: 2 processes x 2 CPU devices (jax.distributed with a localhost
coordinator, gloo collectives) against one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
from conftest import MICRO_SHAPE, ROOT

from silentstar_jax import config as C

MICRO = [
    *MICRO_SHAPE,
    "train.save_every=2",
    "train.steps=4",
    "thinking.n_thoughts=1",
    "checkpoint.async_save=false",
    "mesh.data=4",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def test_two_processes_train_like_one(tmp_path):
    """The README's recipe (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and
    mesh.distributed=true) on 2 processes x 2 devices: the same losses as 1 process x 4 devices,
    one set of logs and checkpoints written cooperatively, restorable by a single process."""
    from silentstar_jax.loading import load_run
    from silentstar_jax.trainer import Run

    multi = str(tmp_path / "multi")
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(ROOT, "train.py"),
                    "--config",
                    os.path.join(ROOT, "configs", "tiny.yaml"),
                    *MICRO,
                    "mesh.distributed=true",
                    f"run.out_dir={multi}",
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "held-out evaluation" in outs[0][0] and "held-out evaluation" not in outs[1][0]  # process 0 reports

    single = str(tmp_path / "single")
    run = Run(C.load_config(os.path.join(ROOT, "configs", "tiny.yaml"), MICRO + [f"run.out_dir={single}"]))
    assert run.mesh.size == 4
    run.train()

    got, want = _losses(multi), _losses(single)
    assert [s for s, _ in got] == [1, 2, 3, 4]  # written once, not once per process
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["2", "4"]
    model, _, _, step = load_run(multi)  # restores on one process
    assert step == 4
    from flax import nnx

    restored = nnx.state(model, nnx.Param).to_pure_dict()
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(run.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

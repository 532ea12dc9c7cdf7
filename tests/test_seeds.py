"""Several seeds in one program (seeds.py): each seed's logs, checkpoints and evaluation equal a
single-seed run of that seed."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import MICRO_SHAPE, ROOT

from silentstar_jax import config as C
from silentstar_jax.errors import UserError

MICRO = [
    *MICRO_SHAPE,
    "train.save_every=2",
    "train.eval_every=2",
    "train.steps=4",
    "thinking.n_thoughts=1",
    "mesh.data=1",
    "checkpoint.async_save=false",
]


def cfg(*extra):
    return C.load_config(os.path.join(ROOT, "configs", "tiny.yaml"), MICRO + list(extra))


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_seed_group_equals_single_seed_runs(tmp_path):
    from silentstar_jax.loading import load_run
    from silentstar_jax.seeds import SeedGroup, seed_configs
    from silentstar_jax.trainer import Run

    seeds = [0, 3]
    SeedGroup(seed_configs(cfg(f"run.out_dir={tmp_path / 'group'}"), seeds)).train()
    for s in seeds:
        single = str(tmp_path / f"single{s}")
        Run(cfg(f"run.out_dir={single}", f"run.seed={s}")).train()
        grouped = str(tmp_path / "group" / f"seed{s}")
        got, want = records(os.path.join(grouped, "metrics.jsonl")), records(os.path.join(single, "metrics.jsonl"))
        assert [r["step"] for r in got] == [1, 2, 3, 4]
        for a, b in zip(got, want):
            for k in b:
                if k != "tokens_per_second" and b[k] is not None:
                    np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=k)
        ev_got, ev_want = (
            json.load(open(os.path.join(grouped, "eval.json"))),
            json.load(open(os.path.join(single, "eval.json"))),
        )
        for path in ("base", "thinking"):
            for k, v in ev_want[path].items():
                np.testing.assert_allclose(ev_got[path][k], v, rtol=2e-5, atol=1e-6, err_msg=f"{path}/{k}")
        assert [r["step"] for r in records(os.path.join(grouped, "evals.jsonl"))] == [2, 4]
        assert sorted(os.listdir(os.path.join(grouped, "checkpoints"))) == ["2", "4"]
        m_got, m_want = load_run(grouped)[0], load_run(single)[0]
        from flax import nnx

        for a, b in zip(jax.tree.leaves(nnx.state(m_got, nnx.Param)), jax.tree.leaves(nnx.state(m_want, nnx.Param))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    # the seeds really differ: their parameters are not the same
    a, b = (load_run(str(tmp_path / "group" / f"seed{s}"))[0] for s in seeds)
    assert not np.allclose(np.asarray(a.gpt2.wte[...]), np.asarray(b.gpt2.wte[...]))


def test_seed_group_step_compiles_once(tmp_path):
    """A two-seed group's vmapped step compiles once over a warm-up and three more steps."""
    from silentstar_jax.benchmark import Compiles
    from silentstar_jax.seeds import SeedGroup, seed_configs

    group = SeedGroup(seed_configs(cfg(f"run.out_dir={tmp_path}", "train.save_every=0", "train.eval_every=0"), [0, 1]))
    with Compiles() as c:
        group.train()
    assert c.names.count("jit(step)") == 1, c.names


@pytest.mark.parametrize(
    "extra,needle", [(["thinking.n_thoughts_train=[1,2]"], "different count per seed"), (["mesh.data=2"], "one device")]
)
def test_seed_group_refuses_what_it_cannot_do(tmp_path, extra, needle):
    from silentstar_jax.seeds import seed_configs

    with pytest.raises(UserError, match=needle):
        seed_configs(cfg(f"run.out_dir={tmp_path}", *extra), [0, 1])


def test_seed_group_with_a_variable_count_is_refused_without_assert(tmp_path):
    """SeedGroup built directly (not through seed_configs) refuses a per-step thought count with a
    UserError, which `python -O` keeps (an assert would vanish)."""
    from silentstar_jax.seeds import SeedGroup

    c = cfg(f"run.out_dir={tmp_path}", "thinking.n_thoughts_train=[1,2]")
    with pytest.raises(UserError, match="different count per seed"):
        SeedGroup([c, c])


def test_seeds_sigterm_saves_every_seed_then_resumes_with_wall_time(tmp_path):
    """`--seeds` behaves like a single run: SIGTERM saves each seed and exits 143; the same command
    resumes every seed from that step; eval.json records the wall time."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "g"
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
    args = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        "configs/tiny.yaml",
        *MICRO,
        f"run.out_dir={out}",
        "--seeds",
        "0,1",
    ]
    proc = subprocess.Popen(
        args + ["train.steps=100000", "train.save_every=0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "seed1" / "metrics.jsonl").exists():
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    stopped = []
    for s in (0, 1):
        steps = [int(d) for d in os.listdir(out / f"seed{s}" / "checkpoints") if d.isdigit()]
        assert steps, f"seed {s} saved nothing"
        stopped.append(max(steps))
    assert stopped[0] == stopped[1] > 0
    done = subprocess.run(
        args + [f"train.steps={stopped[0] + 2}", "train.save_every=0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for s in (0, 1):
        run = out / f"seed{s}"
        assert f"resuming {run} from step {stopped[0]}" in done.stderr
        assert [r["step"] for r in records(run / "metrics.jsonl")] == list(range(1, stopped[0] + 3))
        ev = json.load(open(run / "eval.json"))
        assert ev["step"] == stopped[0] + 2 and ev["wall_s"] > 0

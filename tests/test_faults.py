"""Fault injection on the training side: each test states the fault and the promise.

One micro run (6 steps, checkpoints 2, 4, 6) is trained once; each case damages a copy of it and runs
`train.py` in this process (a traceback would fail the test), or as a separate process where the
fault needs one (SIGKILL, a second trainer)."""

import builtins
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import MICRO_SHAPE, ROOT

from silentstar_jax import train_cli
from silentstar_jax.checkpoint import Checkpointer
from silentstar_jax.errors import UserError

TINY = os.path.join(ROOT, "configs", "tiny.yaml")
MICRO = [
    *MICRO_SHAPE,
    "train.save_every=2",
    "thinking.n_thoughts=1",
    "mesh.data=1",
    "checkpoint.async_save=false",
]


def train(capsys, run_dir, *extra, config=TINY):
    """train.py in this process -> (exit code, stderr)."""
    capsys.readouterr()
    try:
        train_cli.main(["--config", config, *MICRO, f"run.out_dir={run_dir}", *extra])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def steps_of(run_dir) -> list[int]:
    return sorted(
        int(os.path.basename(d))
        for d in glob.glob(os.path.join(run_dir, "checkpoints", "*"))
        if os.path.basename(d).isdigit()
    )


def logged_steps(run_dir, name="metrics.jsonl") -> list[int]:
    with open(os.path.join(run_dir, name)) as f:
        return [json.loads(line)["step"] for line in f]


def checkpoint_params(run_dir, step):
    """The stored parameters of one step, read without a target (as saved)."""
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), 10)
    import orbax.checkpoint as ocp

    r = ckpt.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    ckpt.close()
    return r["params"]


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Every case builds a fresh trainer of the same micro shape: a persistent compilation cache
    compiles its programs once for the module (and for the subprocesses, via the environment)."""
    path = str(tmp_path_factory.mktemp("xla_cache"))
    old = {
        k: getattr(jax.config, k)
        for k in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes",
        )
    }
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield path
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("faults") / "base")
    train_cli.main(["--config", TINY, *MICRO, f"run.out_dir={run_dir}", "train.steps=6"])
    assert steps_of(run_dir) == [2, 4, 6]
    return run_dir


@pytest.fixture
def run(base_run, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(base_run, dst)
    return dst


def _largest_file(d):
    files = [f for f in glob.glob(os.path.join(d, "**", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def damage(step_dir, kind):
    data = _largest_file(os.path.join(step_dir, "params"))
    if kind == "truncated":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif kind == "garbled":
        with open(data, "r+b") as f:
            f.seek(os.path.getsize(data) // 3)
            f.write(bytes(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8)))
    elif kind == "bit_flip":
        size = os.path.getsize(data)
        with open(data, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)[0]
            f.seek(size // 2)
            f.write(bytes([b ^ 0x10]))
    elif kind == "checksum":  # the arrays are intact but do not match what was recorded at save time
        meta = os.path.join(step_dir, "meta", "metadata")
        with open(meta) as f:
            m = json.load(f)
        key = next(iter(m["checksums"]["params"]))
        m["checksums"]["params"][key] ^= 1
        with open(meta, "w") as f:
            json.dump(m, f)
    elif kind == "no_metadata":
        os.remove(os.path.join(step_dir, "meta", "metadata"))
    elif kind == "empty_dir":
        shutil.rmtree(step_dir)
        os.makedirs(step_dir)
    elif kind == "deleted":
        shutil.rmtree(step_dir)
    else:
        raise ValueError(kind)


# ---------------------------------------------------------------- 1. checkpoints
@pytest.mark.parametrize(
    "kind", ["truncated", "garbled", "bit_flip", "checksum", "no_metadata", "empty_dir", "deleted"]
)
def test_damaged_newest_checkpoint_falls_back_to_the_newest_valid(run, capsys, kind):
    """Fault: the newest checkpoint (step 6) is damaged. Promise: the run resumes from step 4 with one
    warning naming step 6 (moved aside, so step 6 can be saved again), trains on, and logs every step once."""
    damage(os.path.join(run, "checkpoints", "6"), kind)
    code, err = train(capsys, run, "train.steps=8")
    assert code == 0, err
    assert "from step 4" in err, err
    if kind != "deleted":
        warnings = [line for line in err.splitlines() if "checkpoint step 6 is damaged" in line]
        assert len(warnings) == 1, err
        assert os.path.isdir(os.path.join(run, "damaged-checkpoints", "6"))
    assert steps_of(run)[-1] == 8 and 6 in steps_of(run)
    assert logged_steps(run) == list(range(1, 9))


def test_every_checkpoint_damaged_stops_and_never_restarts(run, capsys):
    """Fault: every checkpoint is damaged. Promise: exit 2 with one line saying so; the run is not
    silently started from scratch over its directory (no new checkpoint, logs untouched)."""
    for s in (2, 4, 6):
        damage(os.path.join(run, "checkpoints", str(s)), "no_metadata")
    before = open(os.path.join(run, "metrics.jsonl")).read()
    code, err = train(capsys, run, "train.steps=8")
    assert code == 2 and len(error_lines(err)) == 1 and "no checkpoint can be restored" in err
    assert "--restart" in error_lines(err)[0]
    assert not glob.glob(os.path.join(run, "checkpoints", "8"))
    assert open(os.path.join(run, "metrics.jsonl")).read() == before


def test_the_same_command_again_is_refused_too_until_restart(run, capsys):
    """Fault (F1): every checkpoint damaged, and the same command run a second time, when the first
    has moved them all to damaged-checkpoints/. Promise: refused again in one line (not trained from
    step 0 over the old records); `--restart` archives the records and trains from step 0."""
    for s in (2, 4, 6):
        damage(os.path.join(run, "checkpoints", str(s)), "bit_flip")
    before = {n: open(os.path.join(run, n)).read() for n in ("metrics.jsonl", "config.yaml")}
    assert train(capsys, run, "train.steps=8")[0] == 2
    assert steps_of(run) == [] and len(os.listdir(os.path.join(run, "damaged-checkpoints"))) == 3
    code, err = train(capsys, run, "train.steps=8")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert "checkpoints are all damaged (moved to" in err and "--restart" in err
    assert steps_of(run) == [] and {n: open(os.path.join(run, n)).read() for n in before} == before
    code, err = train(capsys, run, "train.steps=4", "--restart")
    assert code == 0, err
    archived = glob.glob(os.path.join(run, "archive", "*"))
    assert len(archived) == 1 and "moved to" in err
    assert sorted(os.listdir(os.path.join(archived[0], "damaged-checkpoints"))) == ["2", "4", "6"]
    assert open(os.path.join(archived[0], "metrics.jsonl")).read() == before["metrics.jsonl"]
    assert logged_steps(run) == [1, 2, 3, 4] and steps_of(run) == [2, 4]


def test_logs_without_any_checkpoint_are_not_trained_over(run, capsys):
    """Fault: a run directory with an earlier training's logs but no checkpoints (deleted by hand).
    Promise: refused in one line naming the records; nothing written."""
    shutil.rmtree(os.path.join(run, "checkpoints"))
    before = open(os.path.join(run, "metrics.jsonl")).read()
    code, err = train(capsys, run, "train.steps=8")
    assert code == 2 and len(error_lines(err)) == 1 and "metrics.jsonl" in err and "--restart" in err
    assert open(os.path.join(run, "metrics.jsonl")).read() == before and steps_of(run) == []


def _edit_saved_config(run, **model):
    import yaml

    path = os.path.join(run, "config.yaml")
    with open(path) as f:
        raw = yaml.safe_load(f)
    raw["model"].update(model)
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)


@pytest.mark.parametrize("config_yaml", ["kept", "edited", "deleted"])
def test_a_model_that_does_not_fit_is_a_mismatch_not_damage(run, capsys, config_yaml):
    """Fault (F3, F4): train.py resumes with another model.n_embd while config.yaml is kept, edited to
    match the override, or deleted. Promise: the checkpoints' own record decides: one line naming
    model.n_embd, exit 2; no step called damaged, nothing moved, nothing written."""
    if config_yaml == "edited":
        _edit_saved_config(run, n_embd=48)
    elif config_yaml == "deleted":
        os.remove(os.path.join(run, "config.yaml"))
    code, err = train(capsys, run, "train.steps=8", "model.n_embd=48")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert "model.n_embd: 32 -> 48" in err and "damaged" not in err
    assert steps_of(run) == [2, 4, 6] and not os.path.exists(os.path.join(run, "damaged-checkpoints"))
    assert os.path.exists(os.path.join(run, "config.yaml")) == (config_yaml != "deleted")


def test_generate_on_an_edited_config_is_a_mismatch_and_a_deleted_one_is_recovered(run, capsys):
    """Fault (F2): config.yaml edited by hand (another n_embd), then generate.py; or deleted.
    Promise: edited -> one line naming model.n_embd, nothing moved; deleted -> the model is built from
    the config its checkpoints record, with a warning."""
    from silentstar_jax.loading import load_run

    _edit_saved_config(run, n_embd=48)
    with pytest.raises(UserError, match=r"model\.n_embd: 32 -> 48"):
        load_run(run)
    with pytest.raises(UserError, match=r"model\.n_embd: 32 -> 48"):
        load_run(os.path.join(run, "checkpoints", "4"))
    assert steps_of(run) == [2, 4, 6] and not os.path.exists(os.path.join(run, "damaged-checkpoints"))
    os.remove(os.path.join(run, "config.yaml"))
    capsys.readouterr()
    model, _, cfg, step = load_run(run)
    assert step == 6 and cfg.model.n_embd == 32 and model.gpt2.wte.shape[1] == 32
    assert "config.yaml is missing" in capsys.readouterr().err


def _clean_exit(proc, code: int) -> None:
    """No traceback of any kind reaches the terminal, Orbax's background threads' included."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in out and "Exception ignored" not in out, proc.stderr


def test_no_orbax_tracebacks_on_error_paths(run, compile_cache):
    """Fault (F2, F5): generate.py on a run whose config.yaml does not fit its checkpoints, and on a
    run whose newest parameter file is truncated (1 run in 6 printed ~130 lines of Orbax's "Exception
    ignored" tracebacks after the warning). Promise: the one line / the warning, and nothing else."""
    from conftest import run_cli

    damage(os.path.join(run, "checkpoints", "6"), "truncated")
    for _ in range(6):
        proc = run_cli("generate.py", "--checkpoint", run, "--prompt", "12*3=", "--max-new-tokens", "1", "--json")
        _clean_exit(proc, 0)
        assert "checkpoint step 6 is damaged" in proc.stderr
    _edit_saved_config(run, n_embd=48)
    for _ in range(2):
        proc = run_cli("generate.py", "--checkpoint", run, "--prompt", "12*3=", "--max-new-tokens", "1")
        _clean_exit(proc, 2)
        assert len(proc.stderr.strip().splitlines()) == 1 and "model.n_embd" in proc.stderr


@pytest.mark.parametrize("lr", ["nan", "inf", "-inf", "0", "-1e-3"])
def test_a_learning_rate_that_can_never_train_is_refused_before_anything_is_written(tmp_path, capsys, lr):
    code, err = train(capsys, str(tmp_path / "r"), f"optim.lr={lr}")
    assert code == 2 and len(error_lines(err)) == 1 and "optim.lr" in err
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "is empty"),
        (b"\x00\x01\x02binary\xff" * 50, "not UTF-8 text"),
        (b"caf\xe9 latin-1 text", "not UTF-8 text"),
    ],
)
def test_an_unreadable_data_file_is_named(tmp_path, capsys, content, needle):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("some text to train on\n" * 50)
    bad.write_bytes(content)
    code, err = train(
        capsys,
        str(tmp_path / "r"),
        f"data.files=[{good},{bad}]",
        "train.seq_len=16",
        "model.n_positions=32",
        config=os.path.join(ROOT, "configs", "text-files.yaml"),
    )
    assert code == 2 and len(error_lines(err)) == 1, err
    assert str(bad) in err and needle in err


def test_generate_loads_the_newest_valid_checkpoint(run, capsys):
    """Fault: generate.py on a run whose newest checkpoint is damaged, or a step that does not exist.
    Promise: the newest valid one is loaded with a warning; a missing step is one clear error."""
    from silentstar_jax.loading import load_run

    damage(os.path.join(run, "checkpoints", "6"), "garbled")
    _, _, _, step = load_run(run)
    assert step == 4 and "checkpoint step 6 is damaged" in capsys.readouterr().err
    with pytest.raises(UserError, match="no checkpoint at step 99"):
        load_run(os.path.join(run, "checkpoints", "99"))
    with pytest.raises(UserError, match="damaged"):
        load_run(os.path.join(run, "checkpoints", "6"))


def test_latest_run_closes_every_checkpoint_manager(run, tmp_path, monkeypatch):
    """latest_run looks into every candidate run's checkpoints: each Orbax manager it opens is closed
    (open ones keep background threads and, at exit, print Orbax's 'Exception ignored' tracebacks)."""
    from silentstar_jax import checkpoint, loading

    opened, closed = [], []
    real_init, real_close = Checkpointer.__init__, Checkpointer.close
    monkeypatch.setattr(
        checkpoint.Checkpointer, "__init__", lambda self, *a, **k: (opened.append(self), real_init(self, *a, **k))[1]
    )
    monkeypatch.setattr(checkpoint.Checkpointer, "close", lambda self: (closed.append(self), real_close(self))[1])
    root = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(run, root / name)
    (root / "empty" / "checkpoints").mkdir(parents=True)
    assert loading.latest_run(str(root)) in {str(root / "a"), str(root / "b")}
    assert len(opened) == 3 and sorted(map(id, closed)) == sorted(map(id, opened))


@pytest.mark.parametrize("after_step", [3, 8])
def test_sigkill_during_training_and_saving_resumes(tmp_path, capsys, compile_cache, after_step):
    """Fault: the trainer is killed with SIGKILL while it trains and saves asynchronously every step.
    Promise: the next start resumes from the newest complete checkpoint, never a half-written one,
    and the logs hold every step exactly once."""
    run = str(tmp_path / "killed")
    args = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        TINY,
        *MICRO,
        f"run.out_dir={run}",
        "train.steps=400",
        "train.save_every=1",
        "checkpoint.async_save=true",
    ]
    env = dict(
        os.environ,
        XLA_FLAGS="",
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 240
        for line in proc.stderr:
            if line.startswith(f"step {after_step}/") or time.time() > deadline:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert steps_of(run), "the killed run saved nothing"
    code, err = train(capsys, run, "train.steps=20")
    assert code == 0, err
    assert "resuming" in err
    assert logged_steps(run) == list(range(1, 21))
    assert steps_of(run)[-1] == 20


# ---------------------------------------------------------------- 2. non-finite loss
def test_nonfinite_loss_stops_without_touching_good_checkpoints(run, capsys):
    """Fault: the run diverges (optim.lr=1e30 from step 7: the loss is non-finite at step 8).
    Promise: one line naming step 8, exit code 3, checkpoints 2/4/6 intact and finite, none added."""
    before = {s: jax.tree.leaves(checkpoint_params(run, s)) for s in (2, 4, 6)}
    code, err = train(capsys, run, "train.steps=8", "optim.lr=1e30")
    assert code == 3, err
    assert error_lines(err) == [e for e in error_lines(err) if "step 8" in e] and len(error_lines(err)) == 1
    assert steps_of(run) == [2, 4, 6]
    for s, leaves in before.items():
        for a, b in zip(leaves, jax.tree.leaves(checkpoint_params(run, s))):
            np.testing.assert_array_equal(a, b)
            assert np.isfinite(b).all()


def test_nonfinite_skip_mode_never_applies_a_bad_update(run, capsys):
    """Fault: every update is non-finite (optim.lr=1e39 overflows float32), with
    train.on_nonfinite=skip. Promise: the run finishes, names the skipped steps, and its final
    parameters are the last good ones (no non-finite update was applied)."""
    code, err = train(capsys, run, "train.steps=8", "optim.lr=1e39", "train.on_nonfinite=skip")
    assert code == 0, err
    assert "step(s) 7" in err and "step(s) 8" in err and "update(s) skipped" in err
    for a, b in zip(jax.tree.leaves(checkpoint_params(run, 6)), jax.tree.leaves(checkpoint_params(run, 8))):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- 3. two writers
def test_second_trainer_is_refused_and_a_stale_lock_taken_over(run, capsys):
    """Fault: a live process holds the run directory; later it dies without releasing it.
    Promise: a second trainer is refused with one line naming the owner's PID; after the owner's
    death its lock is taken over with a note."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from silentstar_jax.run_dir import RunLock\n"
            f"with RunLock({run!r}):\n    print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = train(capsys, run, "train.steps=8")
        assert code == 2 and len(error_lines(err)) == 1 and f"process {holder.pid}" in err
        assert steps_of(run) == [2, 4, 6]
    finally:
        holder.kill()
        holder.wait()
    code, err = train(capsys, run, "train.steps=8")
    assert code == 0, err
    assert f"took over the lock of process {holder.pid}" in err


# ---------------------------------------------------------------- 4. resume with a changed config
@pytest.mark.parametrize(
    "override,key", [("model.n_embd=64", "model.n_embd"), ("thinking.n_thoughts=2", "thinking.n_thoughts")]
)
def test_resume_with_a_changed_shape_is_refused(run, capsys, override, key):
    """Fault: resuming with a setting that changes what the checkpoints mean. Promise: one line naming
    the key, exit 2, and the run directory (config.yaml, checkpoints) untouched."""
    cfg_before = open(os.path.join(run, "config.yaml")).read()
    code, err = train(capsys, run, "train.steps=8", override)
    assert code == 2 and len(error_lines(err)) == 1 and key in err and "new run.out_dir" in err
    assert open(os.path.join(run, "config.yaml")).read() == cfg_before
    assert steps_of(run) == [2, 4, 6]


def test_resume_with_allowed_changes_says_so(run, capsys):
    """Allowed changes (steps, learning rate) are applied knowingly: a note names them."""
    code, err = train(capsys, run, "train.steps=8", "optim.lr=2e-3")
    assert code == 0, err
    assert "resuming with changed settings" in err and "optim.lr" in err and "train.steps" in err


# ---------------------------------------------------------------- 5. logs after interruption
def test_metrics_hold_every_step_once_after_resuming_from_an_older_step(run, capsys):
    """Fault: the log ran ahead of the newest checkpoint (killed after step 6 was logged, before it
    was saved). Promise: after the resume every step appears exactly once, in order."""
    shutil.rmtree(os.path.join(run, "checkpoints", "6"))
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"step": 7, "loss": 1.0')  # a torn last line, too
    code, err = train(capsys, run, "train.steps=8")
    assert code == 0, err
    assert logged_steps(run) == list(range(1, 9))
    sessions = [json.loads(line) for line in open(os.path.join(run, "code.jsonl"))]  # the code of each session
    assert [c["step"] for c in sessions] == [0, 4]
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert all(c["commit"] == head and isinstance(c["dirty"], bool) for c in sessions), sessions


# ---------------------------------------------------------------- 6. file system
def test_a_file_where_the_run_directory_should_be(tmp_path, capsys):
    """Fault: run.out_dir names a file. Promise: one line, exit 2, the file untouched."""
    path = tmp_path / "not_a_dir"
    path.write_text("precious")
    code, err = train(capsys, str(path), "train.steps=2")
    assert code == 2 and len(error_lines(err)) == 1 and "not a directory" in err
    assert path.read_text() == "precious"


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk_for(monkeypatch, wanted):
    """Writes to files whose name `wanted(name)` accepts fail with ENOSPC (as on a full disk)."""
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f, self.name = f, f.name

        def write(self, *a):
            _enospc()

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return (
            Full(f) if isinstance(file, str) and wanted(os.path.basename(file)) and any(c in mode for c in "wa") else f
        )

    monkeypatch.setattr(builtins, "open", full_open)


@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_during_a_save_stops_at_once(run, capsys, caplog, monkeypatch, async_save):
    """Fault: the disk fills up while checkpoint step 8 is written (ENOSPC from the writer, in Orbax's
    background save thread when saving asynchronously). Promise: training stops there (step 10 is never
    reached), one line naming the disk, the step and the newest good checkpoint, exit 4; the half-written
    step is removed, steps 2, 4, 6 untouched, and the same command then resumes from step 6."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch

    real, failed = jch.JsonCheckpointHandler._save_fn, []

    async def full_at_8(self, x, directory):
        if x.get("step") == 8:
            failed.append(8)
            _enospc()
        return await real(self, x, directory)

    monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", full_at_8)
    before = os.path.getmtime(os.path.join(run, "checkpoints", "6"))
    code, err = train(capsys, run, "train.steps=12", f"checkpoint.async_save={str(async_save).lower()}")
    assert code == 4 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    line = error_lines(err)[0]
    assert "disk full on /" in line and "checkpoint step 8" in line and "(step 6) is intact" in line, line
    assert failed == [8] and "Traceback" not in caplog.text  # nor in Orbax's logs of its threads
    assert steps_of(run) == [2, 4, 6] and not glob.glob(os.path.join(run, "checkpoints", "*tmp*"))
    assert max(logged_steps(run)) < 10  # stopped at once, not at the end
    assert os.path.getmtime(os.path.join(run, "checkpoints", "6")) == before
    monkeypatch.undo()
    code, err = train(capsys, run, "train.steps=8")
    assert code == 0 and "from step 6" in err and steps_of(run)[-2:] == [6, 8]  # checkpoint.keep: 3


def test_disk_full_writing_the_logs_stops_with_the_step(run, capsys, monkeypatch):
    """Fault: metrics.jsonl cannot be appended to (ENOSPC). Promise: one line naming the file, the step
    and the newest checkpoint, exit 4; the log's earlier lines and the checkpoints untouched."""
    log = open(os.path.join(run, "metrics.jsonl")).read()
    _full_disk_for(monkeypatch, lambda name: name == "metrics.jsonl")
    code, err = train(capsys, run, "train.steps=8")
    monkeypatch.undo()
    assert code == 4 and len(error_lines(err)) == 1, err
    line = error_lines(err)[0]
    assert "metrics.jsonl at step 7" in line and "newest checkpoint (step 6) is intact" in line, line
    assert open(os.path.join(run, "metrics.jsonl")).read() == log and steps_of(run) == [2, 4, 6]


def test_disk_full_writing_eval_json_keeps_the_old_one(run, capsys, monkeypatch):
    """Fault: eval.json cannot be written (ENOSPC). Promise: the table printed, one line, exit 4; the
    earlier eval.json whole (written beside it, moved in only once complete) and no partial file left."""
    path = os.path.join(run, "eval.json")
    old = open(path).read()
    _full_disk_for(monkeypatch, lambda name: name.startswith(".eval.json"))
    code, err = train(capsys, run, "train.steps=6")
    monkeypatch.undo()
    assert code == 4 and len(error_lines(err)) == 1 and "printed above" in err and "step 6" in err, err
    assert open(path).read() == old and not glob.glob(os.path.join(run, ".eval.json*"))


def _read_only(monkeypatch, root):
    """Writes under `root` fail as on a read-only file system (tests may run as root, where chmod
    does not stop writes)."""
    real_open = builtins.open

    def ro_open(file, mode="r", *a, **k):
        if isinstance(file, str) and os.path.abspath(file).startswith(root) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), file)
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", ro_open)


def test_read_only_run_directory(run, capsys, monkeypatch):
    """Fault: the run directory is read-only. Promise: training says so in one line (exit 2) before
    touching anything; --eval-only prints its evaluation, then one line that it could not be saved."""
    _read_only(monkeypatch, run)
    code, err = train(capsys, run, "train.steps=8")
    assert code == 2 and len(error_lines(err)) == 1 and "Read-only file system" in err
    capsys.readouterr()
    try:
        train_cli.main(["--config", TINY, *MICRO, f"run.out_dir={run}", "--eval-only"])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code == 2 and "exact_match" in out.out and "it is printed above" in out.err
    assert steps_of(run) == [2, 4, 6]


# ---------------------------------------------------------------- 7. hostile and broken configs
def test_yaml_with_python_object_tags_is_refused(tmp_path, capsys):
    """Fault: a config that would run a command if loaded unsafely. Promise: refused, nothing runs."""
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'train: !!python/object/apply:os.system ["touch {marker}"]\n')
    code, err = train(capsys, str(tmp_path / "r"), config=str(cfg))
    assert code == 2 and len(error_lines(err)) == 1 and "not valid YAML" in err
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        ("optim: {lr: 2e-3, lr: 5}\n", "key 'lr' appears twice in one mapping (lines 1 and 1)"),
        (
            "train:\n  steps: 2\noptim:\n  lr: 0.001\ntrain:\n  steps: 9\n",
            "key 'train' appears twice in one mapping (lines 1 and 5)",
        ),
    ],
)
def test_a_key_written_twice_is_refused(tmp_path, capsys, content, needle):
    """Fault: a key given twice in one mapping (it used to be read as the last one: lr 5, the second
    train: block). Promise: one line naming the key and both lines, exit 2, nothing created."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    code, err = train(capsys, str(tmp_path / "r"), config=str(cfg))
    assert code == 2 and len(error_lines(err)) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(content)  # a run's saved config: the same loader
    from silentstar_jax.run_dir import read_saved_config

    with pytest.raises(UserError, match="appears twice"):
        read_saved_config(str(tmp_path / "r"))


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"- 1\n- 2\n", "must be a YAML mapping"),
        (b"just a string\n", "must be a YAML mapping"),
        (bytes(range(256)) * 4, "not a text file"),
    ],
)
def test_config_that_is_not_a_mapping(tmp_path, capsys, content, needle):
    """Fault: a config file that is a list, a scalar or binary, plus overrides. Promise: one line, exit 2."""
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    code, err = train(capsys, str(tmp_path / "r"), "train.steps=2", config=str(cfg))
    assert code == 2 and len(error_lines(err)) == 1 and needle in err


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.n_positions=8", "exceeds model.n_positions"),  # checked with thinking off too
        ("train.save_every=-1", "train.save_every must be >= 0"),
        ("train.eval_every=-5", "train.eval_every must be >= 0"),
        ("data.n_eval=0", "data.n_eval must be >= 1"),
    ],
)
def test_settings_refused_up_front(tmp_path, capsys, override, needle):
    code, err = train(capsys, str(tmp_path / "r"), "thinking.enabled=false", override)
    assert code == 2 and len(error_lines(err)) == 1 and needle in err


def test_evaluation_json_has_no_bare_nan():
    """A diverged evaluation is still valid JSON (null, not NaN)."""
    from silentstar_jax.trainer import _json_safe

    text = json.dumps(_json_safe({"step": 3, "base": {"nll": float("nan"), "acc": 0.5}}), allow_nan=False)
    assert json.loads(text) == {"step": 3, "base": {"nll": None, "acc": 0.5}}


def test_only_orbax_abandoned_reads_are_silenced():
    """The filters drop the errors of Orbax's abandoned reads and nothing else of asyncio's or Python's."""
    import logging

    from silentstar_jax import checkpoint

    keep = checkpoint._AbandonedReadLog().filter
    rec = lambda msg: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)
    assert not keep(
        rec(
            "Task exception was never retrieved\nfuture: <Task coro=<async_deserialize() "
            "defined at /x/orbax/checkpoint/_src/serialization/serialization.py:394>>"
        )
    )
    assert keep(rec("Task exception was never retrieved\nfuture: <Task coro=<my_job() defined at /x/mine.py:3>>"))
    assert checkpoint._orbax_teardown_noise(RuntimeError("Event loop is closed"), None)
    assert not checkpoint._orbax_teardown_noise(RuntimeError("something else"), None)

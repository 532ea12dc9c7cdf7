"""The run directory: the one place that reads one (its saved config, the latest run, a trained model
with `load_run`) and its guards: one trainer at a time (a lock), a resume that cannot change what the
checkpoints mean (the saved config compared first), and logs that hold each step once."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
from typing import Optional

import yaml

from silentstar_jax.errors import UserError

LOCK_NAME = ".lock"
# Settings a resumed run may change: they do not change what its checkpoints hold or mean.
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.save_every", "train.on_nonfinite",
             "optim.", "checkpoint.", "mesh.", "model.dtype", "model.remat", "model.attention",
             "model.init_from", "model.allow_pickle", "data.n_eval", "run.name")
IGNORED = ("run.out_dir",)   # the same directory, however it is spelled (or after a copy)


def make_run_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: exists and is not a directory (run.out_dir must be a directory)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the run directory ({e.strerror})") from None


class RunLock:
    """An exclusive lock on the run directory for the life of this process (flock on `.lock`, which
    names the owner): the kernel releases it when the owner dies, so a stale lock is simply taken."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._f = None
        self.previous_owner: Optional[dict] = None   # a dead owner whose lock was taken over

    def __enter__(self):
        try:
            f = open(self.path, "a+")
        except OSError as e:
            raise UserError(f"{os.path.dirname(self.path)}: cannot write to the run directory ({e.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            owner = _owner(f.read())
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{self.path}: cannot lock ({e.strerror})") from None
            who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
            raise UserError(f"{os.path.dirname(self.path)} is being trained by {who}; "
                            "wait for it to finish or stop it (one trainer per run directory)") from None
        f.seek(0)
        self.previous_owner = _owner(f.read()) or None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc):
        if self._f is not None:
            self._f.truncate(0)          # an empty lock file: released cleanly (a PID left = owner died)
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


def _owner(text: str) -> dict:
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
    except ValueError:
        return {}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(allowed, refused) changes of `current` against the config a run was trained with, as
    'key: old -> new' strings. Refused: anything outside RESUMABLE (shapes, thinking, data, seed)."""
    old, new = _flatten(saved), _flatten(current)
    allowed, refused = [], []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED or key in old and key in new and old[key] == new[key]:
            continue
        if key not in old and key in new:    # a setting added since the run was saved: its default
            continue
        text = f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        (allowed if key.startswith(RESUMABLE) else refused).append(text)
    return allowed, refused


def setup_mismatch(meta: dict, current: dict, shapes: dict[str, list[int]]) -> Optional[str]:
    """What keeps a healthy checkpoint (its metadata: `meta`) from being this setup, or None.
    current: the config being built (as saved: `json_config`); shapes: the parameter shapes it builds.
    The checkpoint's own record decides, not the editable config.yaml."""
    if isinstance(meta.get("config"), dict):
        refused = config_changes(meta["config"], current)[1]
        if refused:
            return f"the checkpoints hold another setup ({'; '.join(refused)}; checkpoint -> this config)"
    saved = meta.get("shapes")
    if isinstance(saved, dict):
        wrong = [k for k in sorted(set(saved) | set(shapes)) if saved.get(k) != shapes.get(k)]
        if wrong:
            return "the checkpoints hold other parameter shapes (" + "; ".join(
                f"{k}: {saved.get(k)} -> {shapes.get(k)}" for k in wrong[:3]) + \
                (f"; {len(wrong) - 3} more" if len(wrong) > 3 else "") + "; checkpoint -> this config)"
    return None


def json_config(cfg) -> dict:
    """A Config as its checkpoints record it (JSON types: what `setup_mismatch` compares)."""
    from silentstar_jax import config as C
    return json.loads(json.dumps(C.to_dict(cfg)))


CODE_LOG = "code.jsonl"
RECORDS = ("metrics.jsonl", "evals.jsonl", "eval.json", CODE_LOG, "damaged-checkpoints")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_version(root: str = PACKAGE_ROOT) -> dict:
    """{"commit", "dirty"} of the git checkout whose code is running (dirty: its tracked files differ
    from the commit), so that a result names the code that made it; {} outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head.stdout.strip(), "dirty": status.returncode != 0 or bool(status.stdout.strip())}


def record_code(run_dir: str, step: int) -> None:
    """One line of code.jsonl per training session: the step it starts from and the code it runs."""
    with open(os.path.join(run_dir, CODE_LOG), "a") as f:
        f.write(json.dumps({"step": step, **code_version()}) + "\n")


def records_without_checkpoint(run_dir: str) -> list[str]:
    """The records of an earlier training here (logs, evaluations, damaged checkpoints moved aside),
    where there is no checkpoint to resume: training would start over them."""
    found = []
    for name in RECORDS:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and os.listdir(path) or os.path.isfile(path) and os.path.getsize(path):
            found.append(name)
    return found


def archive_records(run_dir: str) -> Optional[str]:
    """`train.py --restart`: move an earlier training's records and checkpoints to
    RUN/archive/<UTC time>/ (nothing is deleted); returns that folder, or None if there was nothing."""
    import glob
    import shutil
    import time
    names = [*RECORDS, "checkpoints", "config.yaml", "tb"]
    present = [n for n in names if os.path.exists(os.path.join(run_dir, n))]
    present += [os.path.basename(p) for p in glob.glob(os.path.join(run_dir, "eval_thoughts_*.json"))]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dst, i = os.path.join(run_dir, "archive", stamp), 1
    while os.path.exists(dst):
        dst, i = os.path.join(run_dir, "archive", f"{stamp}.{i}"), i + 1
    os.makedirs(dst)
    for n in present:
        shutil.move(os.path.join(run_dir, n), os.path.join(dst, n))
    return dst


def read_saved_config(run_dir: str) -> Optional[dict]:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    from silentstar_jax.config import load_yaml
    try:
        with open(path, encoding="utf-8") as f:
            raw = load_yaml(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read this run's saved config ({str(e).splitlines()[0][:120]}); "
                        "restore it or start a new run.out_dir") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: this run's saved config is not a YAML mapping; restore it or start a new run.out_dir")
    return raw


def truncate_log(path: str, last_step: int) -> int:
    """Keep the lines of a JSON-lines log with step <= last_step (a resumed run rewrites the rest);
    a torn last line is dropped. Returns the number of lines removed."""
    if not os.path.isfile(path):
        return 0
    keep, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and int(rec.get("step", -1)) <= last_step and line.endswith("\n")
            except ValueError:
                ok = False
            if ok:
                keep.append(line)
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return dropped


def latest_run(root: str = "runs") -> Optional[str]:
    """The most recently modified run directory under `root` that holds checkpoints."""
    from silentstar_jax.checkpoint import Checkpointer
    if not os.path.isdir(root):
        return None
    runs = []
    for d in os.listdir(root):
        ckpt_dir = os.path.join(root, d, "checkpoints")
        if os.path.isdir(ckpt_dir):
            with contextlib.closing(Checkpointer(ckpt_dir, 1)) as ckpt:
                if ckpt.latest_step() is not None:
                    runs.append(os.path.join(root, d))
    return max(runs, key=lambda r: os.path.getmtime(os.path.join(r, "checkpoints")), default=None)


def resolve_checkpoint(path: str) -> tuple[str, Optional[int]]:
    """What a `--checkpoint` path names, as (run directory, step or None for its newest valid step):
    a run directory (config.yaml or checkpoints/ in it, whatever its name: `runs/42` too), or
    `RUN/checkpoints/<step>`. The one reading of such paths (generate, corpus score, export); anything
    else, a checkpoint set aside as damaged or a half-written one included, is refused in one line."""
    norm = os.path.normpath(path)
    parent, name = os.path.split(norm)
    is_run = os.path.isfile(os.path.join(norm, "config.yaml")) or os.path.isdir(os.path.join(norm, "checkpoints"))
    if os.path.basename(parent) == "checkpoints" and name.isdigit() and os.path.isdir(parent) \
            and not os.path.isfile(norm) and not is_run:   # a step; one that is gone: load_run lists those there are
        return os.path.dirname(parent), int(name)
    if not os.path.exists(norm):
        raise UserError(f"{path}: no such run directory or checkpoint")
    if not os.path.isdir(norm):
        raise UserError(f"{path}: is a file; --checkpoint takes a run directory or RUN/checkpoints/<step>")
    if os.path.basename(parent) == "damaged-checkpoints":
        raise UserError(f"{path}: a checkpoint set aside as damaged (a restore found it unreadable or not "
                        "matching its checksums); it is never loaded: use its run directory or another "
                        "RUN/checkpoints/<step>")
    if ".orbax-checkpoint-tmp" in name:
        raise UserError(f"{path}: a half-written checkpoint (its save never finished); it is never loaded: "
                        "use its run directory or a finished RUN/checkpoints/<step>")
    if is_run:
        return norm, None
    raise UserError(f"{path}: not a training run (no config.yaml, no checkpoints/); --checkpoint takes a "
                    "run directory or RUN/checkpoints/<step>")


def load_run(path: str):
    """(SilentStar with the latest checkpoint's parameters, tokenizer, config, step) of a run dir, or
    of one step (`RUN/checkpoints/<step>`). The model is built from config.yaml (or, where it is gone,
    from the checkpoints' own record of the config) and must be what the checkpoints hold."""
    import dataclasses

    from flax import nnx

    from silentstar_jax import config as C
    from silentstar_jax.checkpoint import Checkpointer, abstract_like, damage_reason, shapes
    from silentstar_jax.model import build_model
    from silentstar_jax.sharding import param_specs, shardings
    from silentstar_jax.tokenizer import tokenizer_for
    from silentstar_jax.train_step import make_mesh
    run_dir, wanted = resolve_checkpoint(path)
    raw = read_saved_config(run_dir)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise UserError(f"{run_dir}: no checkpoint yet")
    with contextlib.closing(Checkpointer(ckpt_dir, 1)) as ckpt:
        steps = ckpt.all_steps()
        if not steps:
            raise UserError(f"{run_dir}: no checkpoint yet")
        if wanted is not None and wanted not in steps:
            raise UserError(f"{path}: no checkpoint at step {wanted} (this run has steps {sorted(steps)})")
        if raw is None:
            raw = _config_from_checkpoints(ckpt, [wanted] if wanted is not None else steps, run_dir)
        cfg = C.from_dict(raw)
        tok = tokenizer_for(cfg)
        cfg_nohub = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None))
        graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg_nohub)))
        mesh = make_mesh(C.MeshConfig(data=1, fsdp=1))
        pure = state.to_pure_dict()
        target = abstract_like(pure, shardings(param_specs(state, dict(mesh.shape)), mesh))
        current, want_shapes = json_config(cfg), shapes(pure)

        def check(step: int, meta: dict) -> None:
            why = setup_mismatch(meta, current, want_shapes)
            if why:
                raise UserError(f"{run_dir}: config.yaml does not describe its checkpoints: {why}; "
                                "nothing was changed: restore config.yaml (or delete it: the checkpoints' "
                                "own record is then used)")
        if wanted is not None:
            try:
                meta = ckpt.read_meta(wanted)
            except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged data
                raise UserError(f"{path}: checkpoint is damaged ({damage_reason(e)})") from None
            check(wanted, meta)
            try:
                params, _ = ckpt.restore_params(wanted, target)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"{path}: checkpoint is damaged ({damage_reason(e)})") from None
            step = wanted
        else:
            warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)
            step, (params, _) = ckpt.restore_newest_valid(lambda s: ckpt.restore_params(s, target), warn,
                                                          check=check)
    return nnx.merge(graphdef, params), tok, cfg, step


def _config_from_checkpoints(ckpt, steps: list[int], run_dir: str) -> dict:
    """config.yaml is gone: the config recorded in the newest checkpoint whose metadata reads."""
    for step in steps:
        try:
            cfg = ckpt.read_meta(step).get("config")
        except Exception:  # noqa: BLE001 - a damaged step: the next older one
            continue
        if isinstance(cfg, dict):
            print(f"warning: {run_dir}/config.yaml is missing; using the config recorded in checkpoint "
                  f"step {step}", file=sys.stderr)
            return cfg
    raise UserError(f"{run_dir}: no config.yaml, and no checkpoint records a readable config")

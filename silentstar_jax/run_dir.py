"""The run directory: its records (saved config, logs, code versions) and its guards: one trainer at a time
(a lock), a resume that cannot change what the checkpoints mean (the saved config compared first: one
mismatch check for training and loading), and logs that hold each step once. Loading a trained model from
one: `loading.py`."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess

import yaml

from silentstar_jax.errors import UserError

LOCK_NAME = ".lock"
# Settings a resumed run may change: they do not change what its checkpoints hold or mean.
RESUMABLE = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.save_every",
    "train.on_nonfinite",
    "optim.",
    "checkpoint.",
    "mesh.",
    "model.dtype",
    "model.remat",
    "model.attention",
    "model.init_from",
    "model.allow_pickle",
    "data.n_eval",
    "run.name",
)
IGNORED = ("run.out_dir",)  # the same directory, however it is spelled (or after a copy)


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
        self.previous_owner: dict | None = None  # a dead owner whose lock was taken over

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
            raise UserError(
                f"{os.path.dirname(self.path)} is being trained by {who}; "
                "wait for it to finish or stop it (one trainer per run directory)"
            ) from None
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
            self._f.truncate(0)  # an empty lock file: released cleanly (a PID left = owner died)
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
        if key not in old and key in new:  # a setting added since the run was saved: its default
            continue
        text = f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        (allowed if key.startswith(RESUMABLE) else refused).append(text)
    return allowed, refused


def setup_mismatch(meta: dict, current: dict, shapes: dict[str, list[int]]) -> str | None:
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
            return (
                "the checkpoints hold other parameter shapes ("
                + "; ".join(f"{k}: {saved.get(k)} -> {shapes.get(k)}" for k in wrong[:3])
                + (f"; {len(wrong) - 3} more" if len(wrong) > 3 else "")
                + "; checkpoint -> this config)"
            )
    return None


def mismatch_check(cfg, shapes: dict[str, list[int]], refusal):
    """The `check` of Checkpointer.restore_newest_valid: a healthy checkpoint of another setup than `cfg` (with
    parameter `shapes`) stops with one line, refusal(why), before anything is moved or written."""
    current = json_config(cfg)

    def check(step: int, meta: dict) -> None:
        why = setup_mismatch(meta, current, shapes)
        if why:
            raise UserError(refusal(why))

    return check


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


def archive_records(run_dir: str) -> str | None:
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


def read_saved_config(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    from silentstar_jax.config import load_yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = load_yaml(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(
            f"{path}: cannot read this run's saved config ({str(e).splitlines()[0][:120]}); "
            "restore it or start a new run.out_dir"
        ) from None
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

"""Orbax checkpoints: parameters, optimizer state, step, RNG seed, data position, config.

Kept in one module because Orbax's API churns (notes: V0 CheckpointManager is the verified path).
Restoring takes the *current* shardings as target, so a run can resume on another device count.
Orbax stores no checksums, so each save records a CRC-32 of every array in its metadata and a restore
verifies them: a damaged step (truncated, garbled, bit-flipped, missing metadata) is skipped, never
loaded as wrong weights. The metadata also records the config and every parameter's shape: a step that
does not fit the model being built is a mismatch (the caller's `check`: one line, nothing moved), not
damage. Every manager opened is closed, at the latest when the process exits: an open one leaves Orbax
threads whose teardown prints "Exception ignored" tracebacks.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import glob
import io
import logging
import os
import shutil
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from silentstar_jax.errors import UserError, is_disk_full

logging.getLogger("absl").setLevel(logging.ERROR)
_OPEN: weakref.WeakSet[Checkpointer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Whatever error path left a manager open: closed before Orbax's own exit handlers run."""
    for c in list(_OPEN):
        c.close()


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts)
        self._saving: int | None = None  # the step an asynchronous save is writing
        _OPEN.add(self)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps(), reverse=True)

    def save(self, step: int, params, opt_state, meta: dict) -> None:
        if self._saving is not None:  # the previous save's failure is its own, reported as such
            self.wait()
        meta = {
            **meta,
            "checksums": {"params": checksums(params), "opt_state": checksums(opt_state)},
            "shapes": shapes(params),
        }
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(params),
                    opt_state=ocp.args.StandardSave(opt_state),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for a failed write
            raise self._save_failed(step, e) from None
        self._saving = step

    def poll(self) -> None:
        """Raises (as `wait`) once an asynchronous save has failed, so that training stops at the
        next step rather than after every later step's work is lost too."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def _save_failed(self, step: int, e: Exception) -> Exception:
        """The error of a failed save of `step`, in one line, after its half-written directory
        (`<step>.orbax-checkpoint-tmp*`) is removed; earlier steps are not touched. A full disk:
        DiskFull (exit 4); another OSError: UserError; anything else: `e` itself."""
        from silentstar_jax.fs import disk_full, remove

        for t in threading.enumerate():  # Orbax's writers of this step end before its files are removed
            if t is not threading.current_thread() and type(t).__module__.startswith("orbax"):
                t.join(timeout=10)
        partial = glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))
        left = [p for p in partial if not remove(p)]
        with contextlib.suppress(Exception):
            self.manager.reload()
        older = [s for s in self.all_steps() if s < step]
        kept = f"the newest earlier checkpoint (step {older[0]}) is intact" if older else "no earlier checkpoint"
        half = (
            f"the half-written {', '.join(left)} could not be removed"
            if left
            else "its half-written files were removed"
            if partial
            else "nothing of it was kept"
        )
        doing = f"saving checkpoint step {step} in {self.directory}"
        if is_disk_full(e):
            return disk_full(
                doing, self.directory, f"{half}; {kept}; free space, then the same command resumes from it"
            )
        if isinstance(e, OSError):
            return UserError(f"{doing} failed ({e.strerror or e}); {half}; {kept}")
        return e

    def restore(self, step: int, params_target, opt_target) -> tuple[Any, Any, dict]:
        """Targets: pytrees of jax.ShapeDtypeStruct carrying the wanted shardings."""
        with _drained_on_failure():
            r = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(params_target),
                    opt_state=ocp.args.StandardRestore(opt_target),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        _verify(step, r["meta"], params=r["params"], opt_state=r["opt_state"])
        return r["params"], r["opt_state"], r["meta"]

    def read_meta(self, step: int) -> dict:
        """The step's JSON metadata alone (step, data position, config, checksums, shapes)."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise DamagedCheckpoint("its metadata is not a JSON object")
        return meta

    def restore_params(self, step: int, params_target) -> tuple[Any, dict]:
        with _drained_on_failure():
            r = self.manager.restore(
                step,
                args=ocp.args.Composite(params=ocp.args.StandardRestore(params_target), meta=ocp.args.JsonRestore()),
            )
        _verify(step, r["meta"], params=r["params"])
        return r["params"], r["meta"]

    def restore_newest_valid(
        self,
        restore: Callable[[int], Any],
        warn: Callable[[str], None],
        set_aside: bool = False,
        check: Callable[[int, dict], None] | None = None,
    ):
        """(step, restore(step)) for the newest step that restores and verifies, warning once per
        damaged newer step (moved to `damaged-checkpoints/` next to this directory if set_aside, so
        that saving that step number again cannot collide with it); None if there is no checkpoint.
        check(step, meta), before a step is restored: raises (a UserError) where the step is healthy
        but does not fit what the caller builds; that stops here, with nothing moved.
        Checkpoints that are all damaged stop the program: never a silent start from scratch."""
        steps = self.all_steps()
        moved = []
        for step in steps:
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged data
                moved += self._damaged(step, e, warn, set_aside)
                continue
            if check is not None:
                check(step, meta)
            try:
                return step, restore(step)
            except Exception as e:  # noqa: BLE001
                moved += self._damaged(step, e, warn, set_aside)
        if steps:
            where = f" (moved to {os.path.dirname(moved[0])})" if moved else ""
            raise UserError(
                f"{self.directory}: no checkpoint can be restored: steps {steps} are all damaged{where}; "
                "to start over, use a new run.out_dir or --restart"
            )
        return None

    def _damaged(self, step: int, e: Exception, warn, set_aside: bool) -> list[str]:
        reason = damage_reason(e)
        moved = [self._set_aside(step)] if set_aside else []
        warn(f"checkpoint step {step} is damaged ({reason}); skipping it" + (f"; moved to {moved[0]}" if moved else ""))
        return moved

    def _set_aside(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dst_root = os.path.join(os.path.dirname(self.directory), "damaged-checkpoints")
        os.makedirs(dst_root, exist_ok=True)
        dst, i = os.path.join(dst_root, str(step)), 1
        while os.path.exists(dst):
            dst, i = os.path.join(dst_root, f"{step}.{i}"), i + 1
        shutil.move(src, dst)
        self.manager.reload()
        return dst

    def wait(self) -> None:
        """Until the asynchronous save is written; a failed one raises (see `_save_failed`)."""
        step, self._saving = self._saving, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if step is None:
                raise
            raise self._save_failed(step, e) from None

    def close(self) -> None:
        """Never raises: a failed save was reported by `wait` / `poll`, or the program is already
        stopping on another error (its half-written step is still removed)."""
        if self in _OPEN:
            _OPEN.discard(self)
            with contextlib.suppress(Exception):
                self.wait()
            with contextlib.suppress(Exception):
                self.manager.close()


def _orbax_teardown_noise(exc: BaseException, obj) -> bool:
    """The errors Orbax's abandoned reads raise after a failed restore: its closed event loop, and
    its array-read coroutines finalised with the read error they were never awaited for."""
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


def _filtered_unraisable(previous):
    def hook(u):
        if not _orbax_teardown_noise(u.exc_value, u.object):
            previous(u)

    return hook


class _AbandonedReadLog(logging.Filter):
    """asyncio logs "Task exception was never retrieved" when it collects one of those reads' tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + repr(getattr(record, "future", "")) + repr(record.args)
        return not ("never retrieved" in text and "orbax" in text)


class _FailedSaveLog(logging.Filter):
    """Orbax logs a failed write (with its traceback) from each thread it failed in; a full disk is
    said in one line by `Checkpointer._save_failed` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and is_disk_full(exc) or is_disk_full(Exception(record.getMessage())))


sys.unraisablehook = _filtered_unraisable(sys.unraisablehook)
logging.getLogger("asyncio").addFilter(_AbandonedReadLog())
logging.getLogger("absl").addFilter(_FailedSaveLog())


@contextlib.contextmanager
def _drained_on_failure(quiet_s: float = 0.3, max_s: float = 3.0):
    """A restore that fails on damaged bytes (a truncated file) fails while Orbax's other reads of
    that step are in flight; their callbacks then hit its closed event loop from tensorstore's
    threads and print "Event loop is closed" tracebacks, during the restore and after it. So the
    restore's stderr (Python's and the file descriptor) is held back: written out if it succeeds;
    if it fails, dropped once the abandoned reads have run (no new output for quiet_s)."""
    import tempfile

    sys.stderr.flush()
    held, fd_copy, py_err = tempfile.TemporaryFile(), os.dup(2), sys.stderr
    sink = io.StringIO()
    os.dup2(held.fileno(), 2)
    sys.stderr = sink
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        start = changed = time.monotonic()
        seen = -1
        while time.monotonic() - changed < quiet_s and time.monotonic() - start < max_s:
            time.sleep(0.05)
            gc.collect()  # abandoned coroutines are finalised here, not at exit
            size = len(sink.getvalue()) + os.fstat(held.fileno()).st_size
            if size != seen:
                seen, changed = size, time.monotonic()
        raise
    finally:
        os.dup2(fd_copy, 2)
        os.close(fd_copy)
        sys.stderr = py_err
        if not failed:  # a restore that worked: whatever it said is shown
            held.seek(0)
            py_err.write(held.read().decode("utf-8", "replace") + sink.getvalue())
        held.close()


def damage_reason(e: BaseException) -> str:
    """Why a restore failed, in a short line: the innermost error's text (Orbax wraps TensorStore's
    error in one whose message holds `<bound method ...>`, the repr of a method it never called)."""
    while (inner := e.__cause__ or e.__context__) is not None:
        e = inner
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text.split(" [tensorstore_spec")[0].split("<bound method")[0].strip(" .:")[:200] or type(e).__name__


def abstract_like(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class DamagedCheckpoint(Exception):
    """A checkpoint whose arrays do not match the checksums recorded when it was saved."""


def shapes(tree) -> dict[str, list[int]]:
    """Every array's shape, by tree path (the key `checksums` uses)."""
    return {jax.tree_util.keystr(p): list(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def checksums(tree) -> dict[str, int]:
    """CRC-32 of each array's bytes, by tree path. Arrays not fully addressable from this process
    (multi-host shards) are not summed."""
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            continue
        a = np.ascontiguousarray(jax.device_get(x))
        out[jax.tree_util.keystr(path)] = zlib.crc32(a.tobytes()) & 0xFFFFFFFF
    return out


def _verify(step: int, meta: dict, **trees) -> None:
    recorded = (meta or {}).get("checksums")
    if recorded is None:  # written before checksums existed: nothing to compare
        return
    for name, tree in trees.items():
        want = recorded.get(name, {})
        for key, crc in checksums(tree).items():
            if key in want and want[key] != crc:
                raise DamagedCheckpoint(f"{name}{key} does not match its checksum")

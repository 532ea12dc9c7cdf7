"""Orbax checkpoints: parameters, optimizer state, step, RNG seed, data position, config.

Kept in one module because Orbax's API churns (notes: V0 CheckpointManager is the verified path).
Restoring takes the *current* shardings as target, so a run can resume on another device count.
Orbax stores no checksums, so each save records a CRC-32 of every array in its metadata and a restore
verifies them: a damaged step (truncated, garbled, bit-flipped, missing metadata) is skipped, never
loaded as wrong weights.
"""
from __future__ import annotations

import logging
import os
import shutil
import zlib
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from silentstar_jax.errors import UserError

logging.getLogger("absl").setLevel(logging.ERROR)


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                            create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps(), reverse=True)

    def save(self, step: int, params, opt_state, meta: dict) -> None:
        meta = {**meta, "checksums": {"params": checksums(params), "opt_state": checksums(opt_state)}}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, params_target, opt_target) -> tuple[Any, Any, dict]:
        """Targets: pytrees of jax.ShapeDtypeStruct carrying the wanted shardings."""
        r = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params_target), opt_state=ocp.args.StandardRestore(opt_target),
            meta=ocp.args.JsonRestore()))
        _verify(step, r["meta"], params=r["params"], opt_state=r["opt_state"])
        return r["params"], r["opt_state"], r["meta"]

    def restore_params(self, step: int, params_target) -> tuple[Any, dict]:
        r = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params_target), meta=ocp.args.JsonRestore()))
        _verify(step, r["meta"], params=r["params"])
        return r["params"], r["meta"]

    def restore_newest_valid(self, restore: Callable[[int], Any], warn: Callable[[str], None],
                             set_aside: bool = False):
        """(step, restore(step)) for the newest step that restores and verifies, warning once per
        damaged newer step (moved to `damaged-checkpoints/` next to this directory if set_aside, so
        that saving that step number again cannot collide with it); None if there is no checkpoint.
        Checkpoints that are all damaged stop the program: never a silent start from scratch."""
        steps = self.all_steps()
        for step in steps:
            try:
                return step, restore(step)
            except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged data
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:120]
                where = ""
                if set_aside:
                    where = f"; moved to {self._set_aside(step)}"
                warn(f"checkpoint step {step} is damaged ({reason}); skipping it{where}")
        if steps:
            raise UserError(f"{self.directory}: no checkpoint can be restored (steps {steps} are all damaged); "
                            "remove them to start this run again, or use a new run.out_dir")
        return None

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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class DamagedCheckpoint(Exception):
    """A checkpoint whose arrays do not match the checksums recorded when it was saved."""


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
    if recorded is None:        # written before checksums existed: nothing to compare
        return
    for name, tree in trees.items():
        want = recorded.get(name, {})
        for key, crc in checksums(tree).items():
            if key in want and want[key] != crc:
                raise DamagedCheckpoint(f"{name}{key} does not match its checksum")

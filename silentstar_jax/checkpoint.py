"""Orbax checkpoints: parameters, optimizer state, step, RNG seed, data position, config.

Kept in one module because Orbax's API churns (notes: V0 CheckpointManager is the verified path).
Restoring takes the *current* shardings as target, so a run can resume on another device count.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

logging.getLogger("absl").setLevel(logging.ERROR)


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                            create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, params_target, opt_target) -> tuple[Any, Any, dict]:
        """Targets: pytrees of jax.ShapeDtypeStruct carrying the wanted shardings."""
        r = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params_target), opt_state=ocp.args.StandardRestore(opt_target),
            meta=ocp.args.JsonRestore()))
        return r["params"], r["opt_state"], r["meta"]

    def restore_params(self, step: int, params_target) -> tuple[Any, dict]:
        r = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params_target), meta=ocp.args.JsonRestore()))
        return r["params"], r["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

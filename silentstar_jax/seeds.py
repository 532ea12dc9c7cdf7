"""Several seeds of one config in one jitted program (`train.py --seeds 0,1,2`).

A seed here is `run.seed`: the initialisation and the chains' noise; the batches are the same for
every seed (their order is `data.shuffle_seed`'s). The K models' parameters and optimizer states are
stacked on a leading [K] axis and one `jax.vmap`ped step trains them all: on a small model the
matmuls get K times bigger, which a CPU runs far better than K small ones. Each seed keeps its own
run directory (RUN/seed<S>), logs and checkpoints, equal to a single-seed run of that seed (tested).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from silentstar_jax import config as C
from silentstar_jax.errors import UserError
from silentstar_jax.sharding import batch_sharding
from silentstar_jax.train_step import make_step_fn, thought_counts
from silentstar_jax.trainer import Run, train_loop


def stack_seeds(states: list, mesh: Mesh):
    """K seeds' (params, opt_state) -> one (params [K, ...], opt_state [K, ...]), placed as the
    multi-seed step returns them (on the one device of `mesh`), so that its second call does not
    compile again."""
    return jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), NamedSharding(mesh, P()))


def make_multi_seed_step(graphdef, cfg: C.Config, tx, sched, mesh: Mesh, seeds: list[int], n_think_pos: int = 0):
    """jit(step)(params [K, ...], opt_state [K, ...], batch, step, n_thoughts) -> stacked results, the
    state from stack_seeds; seed k's randomness is fold_in(key(seeds[k]), step), as in its single-seed run."""
    pure = make_step_fn(graphdef, cfg, tx, sched, n_think_pos)
    keys = jnp.stack([jax.random.key(s) for s in seeds])

    def step(params, opt_state, batch, step_idx, n_thoughts=None):
        one = lambda p, o, k: pure(p, o, batch, step_idx, k, n_thoughts)
        return jax.vmap(one)(params, opt_state, keys)

    state = NamedSharding(mesh, P())
    return jax.jit(
        step,
        in_shardings=(state, state, batch_sharding(mesh), None),
        out_shardings=(state, state, None),
        donate_argnums=(0, 1),
        static_argnums=(4,),
    )


def seed_configs(cfg: C.Config, seeds: list[int]) -> list[C.Config]:
    """One config per seed: run.seed = S, run.out_dir = <out_dir>/seed<S>, run.name = <name>-seed<S>."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"--seeds must list distinct seeds, got {seeds}")
    _refuse(cfg)
    if cfg.mesh.distributed or cfg.mesh.fsdp != 1 or cfg.mesh.data not in (1, -1):
        raise UserError("--seeds trains on one device: set mesh.data=1 (and no fsdp, no distributed)")
    mesh = dataclasses.replace(cfg.mesh, data=1)
    return [
        dataclasses.replace(
            cfg,
            mesh=mesh,
            run=dataclasses.replace(
                cfg.run, seed=s, out_dir=os.path.join(cfg.run.out_dir, f"seed{s}"), name=f"{cfg.run.name}-seed{s}"
            ),
        )
        for s in seeds
    ]


def _refuse(cfg: C.Config) -> None:
    if thought_counts(cfg) is not None:
        raise UserError(
            "--seeds: thinking.n_thoughts_train draws a different count per seed; train those seeds one by one"
        )


class SeedGroup:
    """K single-seed Runs trained together by one vmapped step, through the one training loop
    (trainer.train_loop); each logs, saves, evaluates and stops as it would alone."""

    def __init__(self, cfgs: list[C.Config]):
        _refuse(cfgs[0])
        self.runs = [Run(c) for c in cfgs]
        r0 = self.runs[0]
        self.seeds = [r.cfg.run.seed for r in self.runs]
        self.step_fn = make_multi_seed_step(r0.graphdef, r0.cfg, r0.tx, r0.sched, r0.mesh, self.seeds, r0.n_think_pos)

    def train(self, console=None, stop_after: int | None = None, restart: bool = False) -> list[dict]:
        """Each seed's final evaluation ([] when stopped by `stop_after`, with checkpoints saved)."""
        return (
            train_loop(self.runs, self.step_fn, stacked=True, console=console, stop_after=stop_after, restart=restart)
            or []
        )

"""Several seeds of one config in one jitted program (`train.py --seeds 0,1,2`).

A seed here is `run.seed`: the initialisation and the chains' noise; the batches are the same for
every seed (their order is `data.shuffle_seed`'s). The K models' parameters and optimizer states are
stacked on a leading [K] axis and one `jax.vmap`ped step trains them all: on a small model the
matmuls get K times bigger, which a CPU runs far better than K small ones. Each seed keeps its own
run directory (RUN/seed<S>), logs and checkpoints, equal to a single-seed run of that seed (tested).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import jax
import jax.numpy as jnp

from silentstar_jax import config as C
from silentstar_jax.errors import UserError
from silentstar_jax.train_step import make_step_fn, n_think_positions, thought_counts
from silentstar_jax.trainer import Run


def make_multi_seed_step(graphdef, cfg: C.Config, tx, sched, seeds: list[int], n_think_pos: int = 0):
    """jit(step)(params [K, ...], opt_state [K, ...], batch, step, n_thoughts) -> stacked results;
    seed k's randomness is fold_in(key(seeds[k]), step), as in its single-seed run."""
    pure = make_step_fn(graphdef, cfg, tx, sched, n_think_pos)
    keys = jnp.stack([jax.random.key(s) for s in seeds])

    def step(params, opt_state, batch, step_idx, n_thoughts=None):
        one = lambda p, o, k: pure(p, o, batch, step_idx, k, n_thoughts)
        return jax.vmap(one)(params, opt_state, keys)

    return jax.jit(step, donate_argnums=(0, 1), static_argnums=(4,))


def stack_trees(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, k: int):
    return jax.tree.map(lambda x: x[k], tree)


def seed_configs(cfg: C.Config, seeds: list[int]) -> list[C.Config]:
    """One config per seed: run.seed = S, run.out_dir = <out_dir>/seed<S>, run.name = <name>-seed<S>."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise UserError(f"--seeds must list distinct seeds, got {seeds}")
    if cfg.thinking.enabled and cfg.thinking.n_thoughts_train:
        raise UserError("--seeds: thinking.n_thoughts_train draws a different count per seed; train those seeds one by one")
    if cfg.mesh.distributed or cfg.mesh.fsdp != 1 or cfg.mesh.data not in (1, -1):
        raise UserError("--seeds trains on one device: set mesh.data=1 (and no fsdp, no distributed)")
    mesh = dataclasses.replace(cfg.mesh, data=1)
    return [dataclasses.replace(cfg, mesh=mesh, run=dataclasses.replace(
        cfg.run, seed=s, out_dir=os.path.join(cfg.run.out_dir, f"seed{s}"), name=f"{cfg.run.name}-seed{s}"))
        for s in seeds]


class SeedGroup:
    """K single-seed Runs trained together; each logs, saves and evaluates as it would alone."""

    def __init__(self, cfgs: list[C.Config]):
        self.runs = [Run(c) for c in cfgs]
        r0 = self.runs[0]
        t, rows = r0.cfg.thinking, getattr(r0.data, "rows", None)
        n_pos = n_think_positions(rows, t.n_ahead) if t.enabled and t.think_at == "targets" and rows else 0
        self.seeds = [r.cfg.run.seed for r in self.runs]
        self.step_fn = make_multi_seed_step(r0.graphdef, r0.cfg, r0.tx, r0.sched, self.seeds, n_pos)
        assert thought_counts(r0.cfg) is None

    def _sync(self, params, opt_state, step: int) -> None:
        for k, run in enumerate(self.runs):
            run.params, run.opt_state, run.step = unstack(params, k), unstack(opt_state, k), step

    def train(self, console=None) -> list[dict]:
        from rich.console import Console
        console = console or Console(stderr=True)
        runs, tc = self.runs, self.runs[0].cfg.train
        with contextlib.ExitStack() as stack:
            for run in runs:
                run.open_run_dir(stack, console)
            if len({r.step for r in runs}) > 1:
                raise UserError(f"seeds {self.seeds} are at different steps ({[r.step for r in runs]}): "
                                "resume them one by one, then train them together")
            data, step = runs[0].data, runs[0].step
            for r in runs[1:]:
                r.data = data       # one iterator (one data order) for every seed; saved by each
                r.eval_fn = runs[0].eval_fn        # one compiled evaluation
            files = [stack.enter_context(open(os.path.join(r.out_dir, "metrics.jsonl"), "a")) for r in runs]
            writers = [_tb(r, stack) for r in runs]
            params = stack_trees([r.params for r in runs])
            opt_state = stack_trees([r.opt_state for r in runs])
            n = runs[0].cfg.thinking.n_thoughts if runs[0].cfg.thinking.enabled else None
            tokens = tc.batch_size * tc.grad_accum * (tc.seq_len + 1)      # per seed and step
            pending, t_last, since = [], time.perf_counter(), 0
            for r in runs:
                r.skipped = 0
            while step < tc.steps:
                batch = runs[0].put_batch(next(data))
                params, opt_state, metrics = self.step_fn(params, opt_state, batch, step, n)
                step += 1
                since += 1
                pending.append((step, metrics["nonfinite"]))
                log = step % tc.log_every == 0 or step == tc.steps
                evals = tc.eval_every and step % tc.eval_every == 0 and step < tc.steps
                save = tc.save_every and step % tc.save_every == 0
                if log or evals or save:
                    self._check_finite(pending)
                if log:
                    now = time.perf_counter()
                    tps = since * tokens / (now - t_last)
                    t_last, since = now, 0
                    for k, r in enumerate(runs):
                        r.step = step
                        info = r._log_step(unstack(metrics, k), tps, files[k], writers[k])
                        console.print(f"seed {self.seeds[k]} step {step}/{tc.steps}  {info}", soft_wrap=True)
                if evals or save:
                    self._sync(params, opt_state, step)
                    for k, r in enumerate(runs):
                        if evals:
                            r._log_eval(r.evaluate(), writers[k])
                        if save:
                            r.save()
            self._check_finite(pending)
            self._sync(params, opt_state, step)
            results = []
            for k, r in enumerate(runs):
                if r.ckpt.latest_step() != step:
                    r.save()
                r.ckpt.wait()
                results.append(r.finish_eval(console, writers[k]))
            return results

    def _check_finite(self, pending: list) -> None:
        """As Run._check_finite, seed by seed: a seed that diverges stops the group (train.on_nonfinite=stop)."""
        for k, r in enumerate(self.runs):
            r._check_finite([(s, f[k]) for s, f in pending])
        pending.clear()


def _tb(run: Run, stack: contextlib.ExitStack):
    from tensorboardX import SummaryWriter
    w = SummaryWriter(os.path.join(run.out_dir, "tb"))
    stack.callback(w.close)
    return w


"""A training run (`Run`: model, data, mesh, optimizer, run directory, built from a Config) and the one
training loop (`train_loop`): log, evaluate, checkpoint, stop on a signal, resume exactly where the run
stopped (params, optimizer, step, data position; RNG = f(seed, step)). A `--seeds` group goes through
the same loop: K Runs whose parameters are stacked and trained by one vmapped step (seeds.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time

import jax
import numpy as np
from flax import nnx

from silentstar_jax import config as C
from silentstar_jax.checkpoint import Checkpointer, abstract_like, shapes
from silentstar_jax.data import Batch, build_data, eval_rows_by_k
from silentstar_jax.display import print_eval_table
from silentstar_jax.errors import NonFiniteError, Stopped, UserError, is_disk_full
from silentstar_jax.evaluate import evaluate, make_eval_fn
from silentstar_jax.fs import disk_full, staged
from silentstar_jax.model import build_model
from silentstar_jax.run_dir import (
    CODE_LOG,
    RunLock,
    archive_records,
    config_changes,
    json_config,
    make_run_dir,
    mismatch_check,
    record_code,
    records_without_checkpoint,
    truncate_log,
)
from silentstar_jax.sharding import (
    batch_sharding,
    decay_mask,
    make_mesh,
    opt_state_specs,
    param_labels,
    param_specs,
    shardings,
)
from silentstar_jax.tokenizer import tokenizer_for
from silentstar_jax.train_step import init_state, make_optimizer, make_train_step, n_think_positions, n_thoughts_at


def resolved_model_config(cfg: C.Config) -> C.Config:
    """Replace model shape by the HF checkpoint's when init_from is set (so config.yaml is complete)."""
    if not cfg.model.init_from:
        return cfg
    from silentstar_jax.hf import config_from_hf, resolve

    hf = config_from_hf(resolve(cfg.model.init_from))
    keep = {k: getattr(cfg.model, k) for k in ("init_from", "allow_pickle", "dtype", "remat", "attention")}
    model = dataclasses.replace(hf, **keep)
    C.validate_thinking(cfg.thinking, model, cfg.train.seq_len + 1)
    return dataclasses.replace(cfg, model=model)


class _Stopper:
    """SIGTERM/SIGINT -> finish the current step, save, then stop (exit 128 + the signal)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


class Run:
    """Everything a training run holds; `train()` and `evaluate()` are the two things it does."""

    def __init__(self, cfg: C.Config):
        cfg = resolved_model_config(cfg)
        self.cfg = cfg
        self.out_dir = cfg.run.out_dir
        self.tok = tokenizer_for(cfg)
        self.mesh = make_mesh(cfg.mesh)
        n_dev = self.mesh.size
        if cfg.train.batch_size % n_dev:
            raise UserError(
                f"train.batch_size ({cfg.train.batch_size}) must be divisible by the {n_dev} devices of the mesh"
            )
        model = build_model(cfg, self.tok)
        self.graphdef, state = nnx.split(model)
        params = state.to_pure_dict()
        self.tx, self.sched = make_optimizer(cfg, param_labels(state), decay_mask(state))
        p_specs = param_specs(state, dict(self.mesh.shape))
        self.p_shard = shardings(p_specs, self.mesh)
        self.o_shard = shardings(opt_state_specs(self.tx, params, p_specs), self.mesh)
        self.params, self.opt_state = init_state(params, self.tx, self.p_shard, self.o_shard)
        self.data, self.eval_rows = build_data(cfg, self.tok)
        self.eval_by_k = eval_rows_by_k(cfg.data, self.tok, cfg.train.seq_len + 1)
        self.step = 0
        self.primary = jax.process_index() == 0  # the one process that writes logs and config
        make_run_dir(self.out_dir)
        self.ckpt = Checkpointer(
            os.path.join(self.out_dir, "checkpoints"), cfg.checkpoint.keep, cfg.checkpoint.async_save
        )
        self._bshard = batch_sharding(self.mesh)
        self.eval_fn = make_eval_fn(self.graphdef)
        self.wall_s = 0.0  # training wall time over every session of this run (saved in checkpoints)
        self.skipped = 0  # updates skipped as non-finite in this session (train.on_nonfinite=skip)

    # ---------------------------------------------------------------- checkpoints
    def restore_latest(self, warn=None, set_aside: bool = False, say=None) -> bool:
        """The newest checkpoint that restores and verifies (damaged newer ones are skipped with a
        warning, and moved aside if set_aside); False if the run has none. A healthy checkpoint of
        another setup (model shape, thinking, data, seed...: its own recorded config and shapes against
        this one) stops with one line, before anything is moved or written."""
        warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        p_target = abstract_like(self.params, self.p_shard)
        o_target = abstract_like(self.opt_state, self.o_shard)
        current = json_config(self.cfg)
        check = mismatch_check(
            self.cfg,
            shapes(self.params),
            lambda why: (
                f"{self.out_dir}: {why}: resuming would change what they mean; nothing was changed: set these back, "
                "or train in a new run.out_dir"
            ),
        )
        found = self.ckpt.restore_newest_valid(
            lambda s: self.ckpt.restore(s, p_target, o_target), warn, set_aside, check
        )
        if found is None:
            return False
        params, opt, meta = found[1]
        self.params, self.opt_state, self.step = params, opt, int(meta["step"])
        self.wall_s = float(meta.get("wall_s", 0.0))
        self.data.restore(meta["data"])
        allowed = config_changes(meta["config"], current)[0] if isinstance(meta.get("config"), dict) else []
        if allowed and say is not None:
            say(f"resuming with changed settings: {'; '.join(allowed)}")
        return True

    def save(self) -> None:
        meta = {
            "step": self.step,
            "seed": self.cfg.run.seed,
            "data": self.data.state,
            "wall_s": self.wall_s,
            "config": C.to_dict(self.cfg),
        }
        self.ckpt.save(self.step, self.params, self.opt_state, meta)  # a failed save: one line (checkpoint.py)

    def write_failed(self, path: str, e: OSError) -> Exception:
        """A log or evaluation that could not be written during training: a full disk stops with one
        line naming the disk, the step and the newest checkpoint (exit 4); other errors go on as they are."""
        if not is_disk_full(e):
            return e
        return disk_full(f"writing {path} at step {self.step}", path, self._resumes_from())

    def _resumes_from(self) -> str:
        good = self.ckpt.latest_step()
        kept = f"the newest checkpoint (step {good}) is intact" if good is not None else "no checkpoint yet"
        return f"{kept}; free space, then the same command resumes from it"

    def _nonfinite(self, bad: list[int]) -> None:
        """Steps whose update was not applied (non-finite): skipped with a warning, or training stops."""
        if not bad:
            return
        if self.cfg.train.on_nonfinite == "skip":
            self.skipped += len(bad)
            print(
                f"warning: {self.cfg.run.name}: non-finite loss or gradients at step(s) {', '.join(map(str, bad))}: "
                f"update(s) skipped ({self.skipped} so far)",
                file=sys.stderr,
            )
            return
        newest = self.ckpt.latest_step()
        raise NonFiniteError(
            f"non-finite loss or gradients at step {bad[0]}: the update was not applied and training stopped "
            f"({'newest checkpoint: step ' + str(newest) if newest is not None else 'no checkpoint written'}); "
            "lower optim.lr, or set train.on_nonfinite=skip to skip such batches"
        )

    def put_batch(self, rows: Batch) -> Batch:
        """Global batch -> arrays sharded over the mesh. Every process builds the same global batch
        (deterministic iterators); with several processes each contributes its own rows."""
        if jax.process_count() == 1:
            return jax.tree.map(lambda v: jax.device_put(np.asarray(v), self._bshard), rows)
        n, i = jax.process_count(), jax.process_index()
        per = len(rows.tokens) // n
        return jax.tree.map(
            lambda v: jax.make_array_from_process_local_data(self._bshard, np.asarray(v)[i * per : (i + 1) * per]), rows
        )

    # ---------------------------------------------------------------- the two jobs
    def evaluate(self) -> dict:
        """The held-out metrics per path; with mixed hop counts also exact_match_k{k} on each k's own set."""
        ev = lambda rows: evaluate(self.eval_fn, self.params, rows, self.cfg.train.batch_size, self.put_batch)
        result = ev(self.eval_rows)
        for k, rows in self.eval_by_k.items():
            for path, metrics in ev(rows).items():
                result[path][f"exact_match_k{k}"] = metrics["exact_match"]
        return result

    @property
    def n_think_pos(self) -> int:
        """Chains only at scored positions (thinking.think_at: targets): the static count per row; 0: all."""
        t, rows = self.cfg.thinking, getattr(self.data, "rows", None)
        return n_think_positions(rows, t.n_ahead) if t.enabled and t.think_at == "targets" and rows else 0

    def step_fn(self):
        """The jitted train step for this run's batches."""
        return make_train_step(
            self.graphdef, self.cfg, self.tx, self.sched, self.mesh, self.p_shard, self.o_shard, self.n_think_pos
        )

    def train(self, console=None, stop_after: int | None = None, restart: bool = False) -> dict:
        """Train to train.steps (or stop, with a checkpoint, after `stop_after` steps of this session:
        returns {}); the held-out evaluation at the end. restart: archive an earlier training's records."""
        results = train_loop(
            [self], self.step_fn(), stacked=False, console=console, stop_after=stop_after, restart=restart
        )
        return results[0] if results else {}

    def open_run_dir(self, stack: contextlib.ExitStack, console, restart: bool = False) -> None:
        """Before training: the lock (held until `stack` closes), the newest valid checkpoint restored
        (its recorded setup compared with this one), the logs cut to the restored step, the config
        written. A directory with records but no checkpoint is refused (never trained over), unless
        `restart` moves them to RUN/archive/ first."""
        say = lambda msg: console.print(msg, soft_wrap=True, markup=False, highlight=False)  # one line each
        stack.callback(lambda: self.ckpt.close())  # the manager open at the end (restart replaces it)
        if self.primary:
            lock = stack.enter_context(RunLock(self.out_dir))
            if lock.previous_owner:
                say(
                    f"note: took over the lock of process {lock.previous_owner.get('pid')}, "
                    "which ended without releasing it"
                )
            if restart:
                self.ckpt.close()
                archived = archive_records(self.out_dir)
                self.ckpt = Checkpointer(
                    os.path.join(self.out_dir, "checkpoints"), self.cfg.checkpoint.keep, self.cfg.checkpoint.async_save
                )
                if archived:
                    say(f"--restart: the earlier training's records and checkpoints moved to {archived}")
        if jax.process_count() > 1 and restart:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("run directory archived")
        if self.restore_latest(lambda msg: say(f"warning: {msg}"), set_aside=self.primary, say=say):
            say(f"resuming {self.out_dir} from step {self.step}")
        elif found := records_without_checkpoint(self.out_dir):
            damaged = os.path.join(self.out_dir, "damaged-checkpoints")
            why = (
                f"its checkpoints are all damaged (moved to {damaged})"
                if "damaged-checkpoints" in found
                else f"it holds an earlier training's records ({', '.join(found)}) but no checkpoint"
            )
            raise UserError(f"{self.out_dir}: {why}; to start over, use a new run.out_dir or --restart")
        if jax.process_count() > 1:  # every process has read the run directory before it changes
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("run directory checked")
        if self.primary:
            for log in ("metrics.jsonl", "evals.jsonl", CODE_LOG):  # each step once: drop what follows the restore
                truncate_log(os.path.join(self.out_dir, log), self.step)
            record_code(self.out_dir, self.step)
            with open(os.path.join(self.out_dir, "config.yaml"), "w") as f:
                f.write(C.dump_yaml(self.cfg))

    def _writers(self, stack: contextlib.ExitStack):
        """(metrics.jsonl, TensorBoard writer) of this run; open until `stack` closes. Only the primary
        process writes (multi-host)."""
        if not self.primary:
            return stack.enter_context(open(os.devnull, "w")), _NoWriter()
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(os.path.join(self.out_dir, "tb"))
        stack.callback(writer.close)
        f = open(os.path.join(self.out_dir, "metrics.jsonl"), "a")
        stack.callback(_close_quietly, f)
        return f, writer

    def _log_step(self, metrics, tps: float, metrics_f, writer) -> str:
        """One line of metrics.jsonl (every metric the objective returns) and TensorBoard; the progress text."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        rec = _json_safe({"step": self.step, **m, "tokens_per_second": tps})  # NaN (undefined) -> null
        try:
            metrics_f.write(json.dumps(rec, allow_nan=False) + "\n")
            metrics_f.flush()
        except OSError as e:
            raise self.write_failed(metrics_f.name, e) from None
        for k, v in rec.items():
            if k != "step" and v is not None:
                writer.add_scalar(f"train/{k}", v, self.step)
        info = f"{tps:,.0f} tok/s  loss {m['loss']:.4f}"
        if "reward" in m:
            info += f"  reward {m['reward']:+.4f}  gain {m['thinking_gain']:+.4f}"
        return info

    def _log_eval(self, result: dict, writer=None) -> None:
        """One line of evals.jsonl (held-out metrics vs step) and the TensorBoard scalars."""
        if not self.primary:
            return
        path = os.path.join(self.out_dir, "evals.jsonl")
        try:
            with open(path, "a") as f:
                f.write(json.dumps(_json_safe({"step": self.step, **result}), allow_nan=False) + "\n")
        except OSError as e:
            raise self.write_failed(path, e) from None
        if writer is not None:
            for path, vals in result.items():
                for k, v in vals.items():
                    writer.add_scalar(f"eval/{path}/{k}", v, self.step)

    def finish_eval(self, console, writer=None, name: str = "eval.json") -> dict:
        result = self.evaluate()
        if not self.primary:
            return result
        from rich.console import Console

        print_eval_table(
            result, f"{self.cfg.run.name}: held-out evaluation at step {self.step}", Console(file=sys.stdout)
        )
        path = os.path.join(self.out_dir, name)
        try:
            with (
                staged(
                    path,
                    f"the evaluation of step {self.step}",  # an earlier eval.json stays whole
                    then=f"it is printed above; {self._resumes_from()}",
                ) as tmp,
                open(tmp, "w") as f,
            ):
                json.dump(
                    _json_safe({"step": self.step, "wall_s": self.wall_s, **result}), f, indent=2, allow_nan=False
                )
        except OSError as e:
            raise UserError(f"{path}: cannot write the evaluation ({e.strerror}); it is printed above") from None
        if writer is not None:  # the end of training: the last point of the eval history
            self._log_eval(result, writer)
        return result


def _unstack(tree, k: int):
    return jax.tree.map(lambda x: x[k], tree)


def train_loop(
    runs: list[Run], step_fn, stacked: bool, console=None, stop_after: int | None = None, restart: bool = False
) -> list[dict] | None:
    """The one training loop. `runs`: one Run (`step_fn` = its jitted step), or K Runs of one config
    whose parameters, optimizer states and metrics carry a leading [K] axis (`stacked`; seeds.py).
    Each run logs, evaluates, saves, keeps its wall time and is stopped by a signal as it would be alone.
    Returns each run's final evaluation; None when stopped by `stop_after` (steps of this session).
    restart: each run's earlier records are archived first (`train.py --restart`)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    pick = _unstack if stacked else (lambda tree, k: tree)
    r0 = runs[0]
    cfg, tc = r0.cfg, r0.cfg.train
    with contextlib.ExitStack() as stack:
        for r in runs:
            r.open_run_dir(stack, console, restart)
        if len({r.step for r in runs}) > 1:
            raise UserError(
                f"{', '.join(r.cfg.run.name for r in runs)} are at different steps "
                f"({[r.step for r in runs]}): resume them one by one, then train them together"
            )
        for r in runs[1:]:
            r.data, r.eval_fn = r0.data, r0.eval_fn  # one data order for every member; one compiled evaluation
        if stacked:
            from silentstar_jax.seeds import stack_seeds

            params, opt_state = stack_seeds([(r.params, r.opt_state) for r in runs], r0.mesh)
        else:
            params, opt_state = r0.params, r0.opt_state
        step = first_step = r0.step

        def sync():  # the members' own state, before they save or evaluate
            for k, r in enumerate(runs):
                r.params, r.opt_state, r.step = pick(params, k), pick(opt_state, k), step
                r.wall_s = walls[k] + time.perf_counter() - t_session

        def check_finite():  # one device read for every step since the last check
            flags = jax.device_get([f for _, f in pending])
            for k, r in enumerate(runs):
                r._nonfinite([s for (s, _), f in zip(pending, flags) if pick(f, k) > 0])
            pending.clear()

        tokens_per_step = tc.batch_size * tc.grad_accum * (tc.seq_len + 1)  # per member
        live = console.is_terminal
        progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            disable=not live,
        )
        task = progress.add_task("train", total=tc.steps, completed=step, info="compiling...")
        t_session, walls = time.perf_counter(), [r.wall_s for r in runs]
        t_last, steps_since, pending = t_session, 0, []  # pending: (step, non-finite flag) not yet read
        for r in runs:
            r.skipped = 0
        writers = [r._writers(stack) for r in runs]
        stopper = stack.enter_context(_Stopper())
        stack.enter_context(progress)
        while step < tc.steps and stopper.signum is None:
            if stop_after is not None and step - first_step >= stop_after:
                break
            for r in runs:
                r.ckpt.poll()  # an asynchronous save that failed stops training here
            batch = r0.put_batch(next(r0.data))
            n = n_thoughts_at(cfg, step) if cfg.thinking.enabled else None
            params, opt_state, metrics = step_fn(params, opt_state, batch, step, n)
            step += 1
            pending.append((step, metrics["nonfinite"]))
            steps_since += 1
            log = step % tc.log_every == 0 or step == tc.steps
            evals = tc.eval_every and step % tc.eval_every == 0 and step < tc.steps
            save = tc.save_every and step % tc.save_every == 0
            if log or save:
                check_finite()
            if log or evals or save:
                sync()
            if log:
                now = time.perf_counter()
                tps = steps_since * tokens_per_step / (now - t_last)
                t_last, steps_since = now, 0
                infos = [r._log_step(pick(metrics, k), tps, *writers[k]) for k, r in enumerate(runs)]
                progress.update(task, completed=step, info=infos[0] + (f"  ({len(runs)} seeds)" if stacked else ""))
                if not live:
                    for r, info in zip(runs, infos):
                        prefix = f"seed {r.cfg.run.seed} " if stacked else ""
                        console.print(f"{prefix}step {step}/{tc.steps}  {info}", soft_wrap=True)
            for k, r in enumerate(runs):
                if evals:
                    r._log_eval(r.evaluate(), writers[k][1])
                if save:
                    r.save()
        check_finite()
        sync()
        for r in runs:
            if r.ckpt.latest_step() != step:
                r.save()
            r.ckpt.wait()
        saved = f"checkpoint{'s' if len(runs) > 1 else ''} saved in " + ", ".join(
            os.path.join(r.out_dir, "checkpoints") for r in runs
        )
        if stopper.signum is not None:
            raise Stopped(f"stopped by {signal.Signals(stopper.signum).name} at step {step}; {saved}", stopper.signum)
        if step < tc.steps:
            console.print(f"stopped at step {step}; {saved}")
            return None
        return [r.finish_eval(console, writers[k][1]) for k, r in enumerate(runs)]


def _close_quietly(f) -> None:
    """Close a log whose failed write was already reported (its unwritten buffer would raise again)."""
    try:
        f.close()
    except OSError:
        pass


class _NoWriter:
    """TensorBoard for the processes that do not write (multi-host: process 0 writes)."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _json_safe(x):
    """Non-finite floats -> null (JSON has no NaN; a diverged evaluation stays readable)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x

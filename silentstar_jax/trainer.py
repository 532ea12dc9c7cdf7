"""The training loop: build model, data, mesh and step from a Config; log, evaluate, checkpoint,
resume exactly where the run stopped (params, optimizer, step, data position; RNG = f(seed, step))."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Optional

import jax
import numpy as np
import yaml
from flax import nnx

from silentstar_jax import config as C
from silentstar_jax.checkpoint import Checkpointer, abstract_like
from silentstar_jax.data import build_data
from silentstar_jax.errors import NonFiniteError, UserError
from silentstar_jax.evaluate import evaluate, make_eval_fn
from silentstar_jax.model import SilentStar
from silentstar_jax.run_dir import RunLock, config_changes, make_run_dir, read_saved_config, truncate_log
from silentstar_jax.sharding import decay_mask, opt_state_specs, param_labels, param_specs, shardings
from silentstar_jax.tokenizer import load_tokenizer
from silentstar_jax.train_step import (batch_sharding, make_mesh, make_optimizer, make_train_step,
                                       n_think_positions, n_thoughts_at)

BATCH_KEYS = ("tokens", "attn_mask", "loss_mask", "thought_targets")


def create_model(cfg: C.Config, tok=None) -> SilentStar:
    """From scratch (model.* shape) or from HF weights (model.init_from), plus thinking heads."""
    m, rngs = cfg.model, nnx.Rngs(cfg.run.seed)
    gpt2 = None
    if m.init_from:
        from silentstar_jax.hf import load_gpt2
        gpt2, _ = load_gpt2(m.init_from, allow_pickle=m.allow_pickle, dtype=m.dtype, remat=m.remat,
                            attention=m.attention)
        m = gpt2.cfg
    if tok is not None and tok.vocab_size > m.vocab_size:
        raise UserError(f"model.vocab_size = {m.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    return SilentStar(m, cfg.thinking, rngs=rngs, gpt2=gpt2)


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


def tokenizer_for(cfg: C.Config):
    spec = cfg.data.tokenizer
    if spec == "auto":
        if not cfg.model.init_from:
            raise UserError("data.tokenizer=auto needs model.init_from")
        from silentstar_jax.hf import resolve
        spec = resolve(cfg.model.init_from)
    return load_tokenizer(spec)


class _Stopper:
    """SIGTERM/SIGINT -> finish the current step, save, exit cleanly."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _print_eval_table(result: dict, title: str, console) -> None:
    from rich.table import Table
    table = Table(title=title)
    table.add_column("held-out metric")
    cols = [c for c in ("base", "thinking", "gain") if c in result]
    for c in cols:
        table.add_column(c, justify="right")
    for metric in result["base"]:
        table.add_row(metric, *[f"{result[c][metric]:+.4f}" if c == "gain" else f"{result[c][metric]:.4f}"
                                for c in cols])
    console.print(table)


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
            raise UserError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by the "
                            f"{n_dev} devices of the mesh")
        model = create_model(cfg, self.tok)
        self.graphdef, state = nnx.split(model)
        params = state.to_pure_dict()
        self.tx, self.sched = make_optimizer(cfg, param_labels(state), decay_mask(state))
        p_specs = param_specs(state, dict(self.mesh.shape))
        self.p_shard = shardings(p_specs, self.mesh)
        self.o_shard = shardings(opt_state_specs(self.tx, params, p_specs), self.mesh)
        self.params = jax.device_put(params, self.p_shard)
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.o_shard)(self.params)
        self.data, self.eval_rows = build_data(cfg, self.tok)
        self.step = 0
        self.primary = jax.process_index() == 0     # the one process that writes logs and config
        make_run_dir(self.out_dir)
        self.ckpt = Checkpointer(os.path.join(self.out_dir, "checkpoints"), cfg.checkpoint.keep,
                                 cfg.checkpoint.async_save)
        self._bshard = batch_sharding(self.mesh)
        self.eval_fn = make_eval_fn(self.graphdef)
        self.wall_s = 0.0   # training wall time over every session of this run (saved in checkpoints)

    # ---------------------------------------------------------------- checkpoints
    def restore_latest(self, warn=None, set_aside: bool = False) -> bool:
        """The newest checkpoint that restores and verifies (damaged newer ones are skipped with a
        warning, and moved aside if set_aside); False if the run has none."""
        warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        p_target = abstract_like(self.params, self.p_shard)
        o_target = abstract_like(self.opt_state, self.o_shard)
        found = self.ckpt.restore_newest_valid(lambda s: self.ckpt.restore(s, p_target, o_target), warn, set_aside)
        if found is None:
            return False
        params, opt, meta = found[1]
        self.params, self.opt_state, self.step = params, opt, int(meta["step"])
        self.wall_s = float(meta.get("wall_s", 0.0))
        self.data.restore(meta["data"])
        return True

    def save(self) -> None:
        meta = {"step": self.step, "seed": self.cfg.run.seed, "data": self.data.state, "wall_s": self.wall_s,
                "config": C.to_dict(self.cfg)}
        try:
            self.ckpt.save(self.step, self.params, self.opt_state, meta)
        except OSError as e:
            older = [s for s in self.ckpt.all_steps() if s < self.step]
            kept = f"the newest earlier checkpoint (step {older[0]}) is intact" if older else "no earlier checkpoint"
            raise UserError(f"saving checkpoint step {self.step} in {self.ckpt.directory} failed "
                            f"({e.strerror or e}); {kept}") from None

    def _check_config(self, say) -> None:
        """Before anything is written: a resumed run may change only RESUMABLE settings."""
        saved = read_saved_config(self.out_dir)
        if saved is None or not self.ckpt.all_steps():
            return
        current = yaml.safe_load(C.dump_yaml(self.cfg))
        allowed, refused = config_changes(saved, current)
        if refused:
            raise UserError(f"{self.out_dir} holds checkpoints of another setup ({'; '.join(refused)}): "
                            "resuming would change what they mean; set these back, or train in a new run.out_dir")
        if allowed:
            say(f"resuming with changed settings: {'; '.join(allowed)}")

    def _check_finite(self, pending: list) -> None:
        """pending: (step, nonfinite flag) since the last check; one device read for all of them."""
        if not pending:
            return
        flags = jax.device_get([f for _, f in pending])
        bad = [s for (s, _), f in zip(pending, flags) if f > 0]
        pending.clear()
        if not bad:
            return
        if self.cfg.train.on_nonfinite == "skip":
            self.skipped += len(bad)
            print(f"warning: non-finite loss or gradients at step(s) {', '.join(map(str, bad))}: "
                  f"update(s) skipped ({self.skipped} so far)", file=sys.stderr)
            return
        newest = self.ckpt.latest_step()
        raise NonFiniteError(
            f"non-finite loss or gradients at step {bad[0]}: the update was not applied and training stopped "
            f"({'newest checkpoint: step ' + str(newest) if newest is not None else 'no checkpoint written'}); "
            "lower optim.lr, or set train.on_nonfinite=skip to skip such batches")

    def put_batch(self, rows: dict):
        """Global batch -> arrays sharded over the mesh. Every process builds the same global batch
        (deterministic iterators); with several processes each contributes its own rows."""
        keys = [k for k in BATCH_KEYS if k in rows]
        if jax.process_count() == 1:
            return {k: jax.device_put(np.asarray(rows[k]), self._bshard) for k in keys}
        n, i = jax.process_count(), jax.process_index()
        per = len(rows["tokens"]) // n
        return {k: jax.make_array_from_process_local_data(self._bshard, np.asarray(rows[k])[i * per:(i + 1) * per])
                for k in keys}

    # ---------------------------------------------------------------- the two jobs
    def evaluate(self) -> dict:
        return evaluate(self.eval_fn, self.params, self.eval_rows, self.cfg.train.batch_size, self.put_batch)

    def _step_fn(self):
        """The jitted train step for this run's batches (chains only at scored positions if asked)."""
        t, rows = self.cfg.thinking, getattr(self.data, "rows", None)
        n_pos = n_think_positions(rows, t.n_ahead) if t.enabled and t.think_at == "targets" and rows else 0
        keys = [k for k in BATCH_KEYS if k in rows] if rows else list(BATCH_KEYS[:3])
        return make_train_step(self.graphdef, self.cfg, self.tx, self.sched, self.mesh, self.p_shard,
                               self.o_shard, keys, n_pos)

    def _log_step(self, metrics, tps: float, metrics_f, writer) -> str:
        """One line of metrics.jsonl (every metric the objective returns) and TensorBoard; the progress text."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        rec = _json_safe({"step": self.step, **m, "tokens_per_second": tps})   # NaN (undefined) -> null
        metrics_f.write(json.dumps(rec, allow_nan=False) + "\n")
        metrics_f.flush()
        for k, v in rec.items():
            if k != "step" and v is not None:
                writer.add_scalar(f"train/{k}", v, self.step)
        info = f"{tps:,.0f} tok/s  loss {m['loss']:.4f}"
        if "reward" in m:
            info += f"  reward {m['reward']:+.4f}  gain {m['thinking_gain']:+.4f}"
        return info

    def train(self, console=None, stop_after: Optional[int] = None) -> dict:
        """Train to train.steps (or stop, with a checkpoint, after `stop_after` steps of this session)."""
        from rich.console import Console
        console = console or Console(stderr=True)
        with contextlib.ExitStack() as stack:
            self.open_run_dir(stack, console)
            return self._train_loop(console, stack, stop_after)

    def open_run_dir(self, stack: contextlib.ExitStack, console) -> None:
        """Before training: the lock (held until `stack` closes), the saved config compared, the newest
        valid checkpoint restored, the logs cut to the restored step, the config written."""
        say = lambda msg: console.print(msg, soft_wrap=True, markup=False, highlight=False)   # one line each
        stack.callback(self.ckpt.close)
        if self.primary:
            lock = stack.enter_context(RunLock(self.out_dir))
            if lock.previous_owner:
                say(f"note: took over the lock of process {lock.previous_owner.get('pid')}, "
                    "which ended without releasing it")
        self._check_config(say)
        if self.restore_latest(lambda msg: say(f"warning: {msg}"), set_aside=self.primary):
            say(f"resuming {self.out_dir} from step {self.step}")
        if jax.process_count() > 1:   # every process has read the run directory before it changes
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("run directory checked")
        if self.primary:
            for log in ("metrics.jsonl", "evals.jsonl"):   # each step once: drop what follows the restore
                truncate_log(os.path.join(self.out_dir, log), self.step)
            with open(os.path.join(self.out_dir, "config.yaml"), "w") as f:
                f.write(C.dump_yaml(self.cfg))

    def _train_loop(self, console, stack: contextlib.ExitStack, stop_after: Optional[int]) -> dict:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from tensorboardX import SummaryWriter
        cfg, tc = self.cfg, self.cfg.train
        step_fn = self._step_fn()
        tokens_per_step = tc.batch_size * tc.grad_accum * (tc.seq_len + 1)
        live = console.is_terminal
        progress = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
                            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=console, disable=not live)
        task = progress.add_task("train", total=tc.steps, completed=self.step, info="compiling...")
        t_session, wall_before = time.perf_counter(), self.wall_s
        t_last, steps_since, first_step = t_session, 0, self.step
        pending, self.skipped = [], 0         # (step, non-finite flag) not yet read back
        writer = SummaryWriter(os.path.join(self.out_dir, "tb")) if self.primary else _NoWriter()
        stack.callback(writer.close)
        metrics_f = stack.enter_context(open(os.path.join(self.out_dir, "metrics.jsonl"), "a") if self.primary
                                        else open(os.devnull, "w"))
        stopper = stack.enter_context(_Stopper())
        stack.enter_context(progress)
        while self.step < tc.steps and not stopper.stop:
            if stop_after is not None and self.step - first_step >= stop_after:
                stopper.stop = True
                break
            batch = self.put_batch(next(self.data))
            n = n_thoughts_at(cfg, self.step) if cfg.thinking.enabled else None
            self.params, self.opt_state, metrics = step_fn(self.params, self.opt_state, batch, self.step, n)
            self.step += 1
            pending.append((self.step, metrics["nonfinite"]))
            self.wall_s = wall_before + time.perf_counter() - t_session
            steps_since += 1
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                self._check_finite(pending)
                now = time.perf_counter()
                info = self._log_step(metrics, steps_since * tokens_per_step / (now - t_last), metrics_f, writer)
                t_last, steps_since = now, 0
                progress.update(task, completed=self.step, info=info)
                if not live:
                    console.print(f"step {self.step}/{tc.steps}  {info}")
            if tc.eval_every and self.step % tc.eval_every == 0 and self.step < tc.steps:
                self._log_eval(self.evaluate(), writer)
            if tc.save_every and self.step % tc.save_every == 0:
                self._check_finite(pending)
                self.save()
        self._check_finite(pending)
        if self.ckpt.latest_step() != self.step:
            self.save()
        self.ckpt.wait()
        if stopper.stop:
            console.print(f"stopped at step {self.step}; checkpoint saved in {self.out_dir}/checkpoints")
            return {}
        return self.finish_eval(console, writer)

    def _log_eval(self, result: dict, writer=None) -> None:
        """One line of evals.jsonl (held-out metrics vs step) and the TensorBoard scalars."""
        if not self.primary:
            return
        with open(os.path.join(self.out_dir, "evals.jsonl"), "a") as f:
            f.write(json.dumps(_json_safe({"step": self.step, **result}), allow_nan=False) + "\n")
        if writer is not None:
            for path, vals in result.items():
                for k, v in vals.items():
                    writer.add_scalar(f"eval/{path}/{k}", v, self.step)

    def finish_eval(self, console, writer=None, name: str = "eval.json") -> dict:
        result = self.evaluate()
        if not self.primary:
            return result
        from rich.console import Console
        _print_eval_table(result, f"{self.cfg.run.name}: held-out evaluation at step {self.step}",
                          Console(file=sys.stdout))
        path = os.path.join(self.out_dir, name)
        try:
            with open(path, "w") as f:
                json.dump(_json_safe({"step": self.step, "wall_s": self.wall_s, **result}), f, indent=2,
                          allow_nan=False)
        except OSError as e:
            raise UserError(f"{path}: cannot write the evaluation ({e.strerror}); it is printed above") from None
        if writer is not None:   # the end of training: the last point of the eval history
            self._log_eval(result, writer)
        return result


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


def latest_run(root: str = "runs") -> Optional[str]:
    """The most recently modified run directory under `root` that holds checkpoints."""
    if not os.path.isdir(root):
        return None
    runs = [os.path.join(root, d) for d in os.listdir(root)
            if os.path.isdir(os.path.join(root, d, "checkpoints"))]
    runs = [r for r in runs if Checkpointer(os.path.join(r, "checkpoints"), 1).latest_step() is not None]
    return max(runs, key=lambda r: os.path.getmtime(os.path.join(r, "checkpoints")), default=None)


def load_run(path: str):
    """(SilentStar with the latest checkpoint's parameters, tokenizer, config, step) of a run dir."""
    run_dir = path
    if os.path.basename(os.path.normpath(path)).isdigit():          # .../checkpoints/<step>
        run_dir = os.path.dirname(os.path.dirname(os.path.normpath(path)))
    raw = read_saved_config(run_dir)
    if raw is None:
        raise UserError(f"{path}: not a training run (no config.yaml)")
    cfg = C.from_dict(raw)
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), cfg.checkpoint.keep)
    steps = ckpt.all_steps()
    if not steps:
        raise UserError(f"{run_dir}: no checkpoint yet")
    wanted = int(os.path.basename(os.path.normpath(path))) if run_dir != path else None
    if wanted is not None and wanted not in steps:
        raise UserError(f"{path}: no checkpoint at step {wanted} (this run has steps {sorted(steps)})")
    tok = tokenizer_for(cfg)
    cfg_nohub = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None))
    model = nnx.eval_shape(lambda: create_model(cfg_nohub))
    graphdef, state = nnx.split(model)
    pure = state.to_pure_dict()
    mesh = make_mesh(C.MeshConfig(data=1, fsdp=1))
    target = abstract_like(pure, shardings(param_specs(state, dict(mesh.shape)), mesh))
    if wanted is not None:
        try:
            params, _ = ckpt.restore_params(wanted, target)
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged data
            raise UserError(f"{path}: checkpoint is damaged ({str(e).strip().splitlines()[0][:160]})") from None
        step = wanted
    else:
        warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)
        step, (params, _) = ckpt.restore_newest_valid(lambda s: ckpt.restore_params(s, target), warn)
    ckpt.close()
    return nnx.merge(graphdef, params), tok, cfg, step

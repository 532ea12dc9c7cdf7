"""Training the planned runs in subprocesses: finished runs skipped, unfinished ones resumed.

Each training is its own process (one crash or OOM loses one run, not the experiment); its output
goes to the run's train.log and its wall time to runner.json, so the report needs no runner state.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from silentstar_jax.experiment.plan import TRAIN_CMD, RunSpec, default_thoughts, train_command
from silentstar_jax.experiment.records import finished_eval, metric, read_config, read_json
from silentstar_jax.experiment.report import fmt

STOPPED = (130, 143)  # train.py's exit codes after SIGINT / SIGTERM (checkpoint saved)


@dataclass
class Runner:
    config: str
    overrides: list[str]
    out: str
    thoughts: list[int] | None
    total: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    count: int = 0

    def say(self, text: str) -> None:
        with self.lock:
            print(text, file=sys.stderr, flush=True)

    def _call(self, cmd: list[str], run_dir: str) -> tuple[int, float]:
        with open(os.path.join(run_dir, "train.log"), "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        return rc, time.perf_counter() - t0

    def _add_wall(self, run_dir: str, key: str, seconds: float) -> None:
        path = os.path.join(run_dir, "runner.json")
        rec = read_json(path) or {}
        rec[key] = rec.get(key, 0.0) + seconds
        with open(path, "w") as f:
            json.dump(rec, f, indent=2)

    def _failed(self, spec: RunSpec, what: str, run_dir: str) -> str:
        with open(os.path.join(run_dir, "train.log"), errors="replace") as f:
            tail = f.read().splitlines()[-15:]
        msg = f"FAILED {spec.label}: {what}; last lines of {run_dir}/train.log:\n" + "\n".join(
            "    " + line for line in tail
        )
        self.say(msg)
        return f"{spec.label}: {what}"

    def execute(self, spec: RunSpec) -> str | None:
        """Train (unless finished), then test-time thought counts; a failure message or None."""
        if self.stop.is_set():
            return None
        d = spec.dir(self.out)
        with self.lock:
            self.count += 1
            i = f"[{self.count}/{self.total}]"
        ev = finished_eval(d)
        if ev is not None:
            self.say(f"{i} skip {spec.label}: finished, exact match {fmt(metric(ev, 'exact_match'))}")
        else:
            os.makedirs(d, exist_ok=True)
            self.say(f"{i} start {spec.label}")
            rc, wall = self._call(train_command(self.config, self.overrides, spec, self.out), d)
            self._add_wall(d, "wall_s", wall)
            ev = finished_eval(d)
            stopped = rc in STOPPED or rc == 0 and ev is None
            if stopped:  # the trainer was stopped (Ctrl-C / SIGTERM), saved: start nothing new
                self.stop.set()
            if rc != 0 or ev is None:
                return self._failed(spec, "stopped before train.steps" if stopped else f"train.py exited {rc}", d)
            self.say(f"{i} done {spec.label} in {wall:.0f}s: exact match {fmt(metric(ev, 'exact_match'))}")
        cfg = read_config(d)
        if not cfg.thinking.enabled:
            return None
        counts = self.thoughts
        if counts is None:  # --thoughts counts were checked by plan_runs
            counts, left = default_thoughts(cfg)
            if left:
                self.say(f"    {spec.label}: thoughts {','.join(map(str, left))} skipped (beyond model.n_positions)")
        todo = [n for n in counts if not os.path.isfile(os.path.join(d, f"eval_thoughts_{n}.json"))]
        if self.stop.is_set() or not todo:
            return None
        # one process: one data build, one restore; out_dir = d, so a copied directory is evaluated in place
        cmd = [
            *TRAIN_CMD,
            "--config",
            os.path.join(d, "config.yaml"),
            "--eval-only",
            "--thoughts",
            ",".join(map(str, todo)),
            f"run.out_dir={d}",
        ]
        rc, wall = self._call(cmd, d)
        self._add_wall(d, "thoughts_wall_s", wall)
        for n in todo:
            tt = read_json(os.path.join(d, f"eval_thoughts_{n}.json"))
            if rc != 0 or tt is None:
                return self._failed(
                    spec,
                    f"--eval-only --thoughts {','.join(map(str, todo))} exited {rc}"
                    if rc
                    else f"no eval_thoughts_{n}.json written",
                    d,
                )
            self.say(f"    {spec.label} thoughts={n}: exact match {fmt(metric(tt, 'exact_match'))}")
        return None

    def run_all(self, specs: list[RunSpec], jobs: int) -> list[str]:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = [pool.submit(self.execute, s) for s in specs]
            results = [f.result() for f in futures]
        except BaseException:
            self.stop.set()  # Ctrl-C: the trainers save a checkpoint; start nothing new
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return [r for r in results if r]

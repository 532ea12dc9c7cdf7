"""`python experiment.py`: a thinking run, its controls, a grid and several seeds as one command.

Why: a claim "thinking helps" needs the controls trained exactly like the thinking run (same
config, same steps, same seeds), several seeds, and the same learning-rate search for every arm;
done by hand, the controls drift. Here the arms are derived from the one config (`latent` = as
given, `pause` = thinking.feedback=pause, `nothink` = thinking.enabled=false), every arm x grid
point x seed is an ordinary run directory trained by `train.py` in a subprocess
(OUT/runs/<arm>/<gridtag>/seed<S>), finished runs are skipped and unfinished ones resume, and the
report (results.md / results.json / PNGs) is rebuilt from the run directories alone.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import yaml

from silentstar_jax import config as C
from silentstar_jax.errors import UserError, cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
ARM_OVERRIDES: dict[str, tuple[str, ...]] = {
    "latent": (),
    "pause": ("thinking.feedback=pause",),
    "nothink": ("thinking.enabled=false",),
}
PLOTS = ("exact_match_vs_step.png", "thoughts_scaling.png")


# ---------------------------------------------------------------- plan: arms x grid points x seeds

@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[str, ...]      # as the user wrote them (passed through to train.py)


@dataclass(frozen=True)
class GridPoint:
    items: tuple[tuple[str, str], ...] = ()

    @property
    def tag(self) -> str:
        return ",".join(f"{k}={tag_value(v)}" for k, v in self.items) or "default"

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.items]


@dataclass(frozen=True)
class RunSpec:
    arm: str
    point: GridPoint
    seed: int

    @property
    def label(self) -> str:
        return f"{self.arm}/{self.point.tag}/seed{self.seed}"

    def dir(self, out: str) -> str:
        return os.path.join(out, "runs", self.arm, self.point.tag, f"seed{self.seed}")


def tag_value(v: str) -> str:
    """A grid value as it appears in a directory name: numbers normalised (1e-3 -> 0.001)."""
    for conv in (int, float):
        try:
            return repr(conv(v))
        except ValueError:
            pass
    return v


def split_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise UserError(f"{what}: expected a comma-separated list, got {text!r}")
    if len(set(items)) != len(items):
        raise UserError(f"{what}: repeated value in {text!r}")
    return items


def int_list(text: str, what: str, minimum: int = 0) -> list[int]:
    try:
        vals = [int(s) for s in split_list(text, what)]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if any(v < minimum for v in vals):
        raise UserError(f"{what}: values must be >= {minimum}, got {text!r}")
    return vals


def parse_arms(text: str) -> list[str]:
    arms = split_list(text, "--arms")
    bad = [a for a in arms if a not in ARM_OVERRIDES]
    if bad:
        raise UserError(f"--arms: unknown arm {bad[0]!r} (choose from {', '.join(ARM_OVERRIDES)})")
    return arms


def parse_grid(specs: list[str]) -> list[GridAxis]:
    """`--grid optim.lr=1e-3,3e-3` (repeatable) -> axes; keys must be dotted config keys."""
    axes: list[GridAxis] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", key):
            raise UserError(f"--grid {spec!r}: expected section.key=v1,v2,... (e.g. optim.lr=1e-3,3e-3)")
        vals = split_list(values, f"--grid {key}")
        if any("/" in v for v in vals):
            raise UserError(f"--grid {key}: values become directory names and may not contain '/'")
        if len({tag_value(v) for v in vals}) != len(vals):
            raise UserError(f"--grid {key}: two values are the same number ({values})")
        if key in (a.key for a in axes):
            raise UserError(f"--grid {key} given twice")
        axes.append(GridAxis(key, tuple(vals)))
    return axes


def grid_points(axes: list[GridAxis], arm: str) -> list[GridPoint]:
    """Cross product of the axes; `nothink` ignores thinking.* axes (they would change nothing)."""
    axes = [a for a in axes if not (arm == "nothink" and a.key.startswith("thinking."))]
    return [GridPoint(tuple(zip((a.key for a in axes), combo)))
            for combo in itertools.product(*(a.values for a in axes))]


def _yaml_str(s: str) -> str:
    """A string override value that YAML reads back as exactly this string."""
    try:
        same = yaml.safe_load(s) == s
    except yaml.YAMLError:
        same = False
    return s if same else json.dumps(s)


def train_command(config: str, overrides: list[str], spec: RunSpec, out: str) -> list[str]:
    d = spec.dir(out)
    return [sys.executable, TRAIN_PY, "--config", config, *overrides, *ARM_OVERRIDES[spec.arm],
            *spec.point.overrides, f"run.seed={spec.seed}", f"run.name={_yaml_str(spec.label)}",
            f"run.out_dir={_yaml_str(d)}"]


def plan_runs(config: str, overrides: list[str], arms: list[str], axes: list[GridAxis],
              seeds: list[int]) -> list[RunSpec]:
    """Every run, after checking that each arm x grid point config loads (one-line errors up front)."""
    specs = []
    for a, arm in enumerate(arms):
        for g, point in enumerate(grid_points(axes, arm)):
            C.load_config(config, [*overrides, *ARM_OVERRIDES[arm], *point.overrides])
            specs += [((si, g, a), RunSpec(arm, point, s)) for si, s in enumerate(seeds)]
    # seed-major: every arm's first seed lands first, so a partial experiment already compares arms
    return [spec for _, spec in sorted(specs, key=lambda x: x[0])]


# ---------------------------------------------------------------- a run directory on disk

def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_jsonl(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def read_config(run_dir: str) -> Optional[C.Config]:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return C.from_dict(yaml.safe_load(f) or {})
        except UserError as e:
            raise UserError(f"{path}: {e}") from None


def finished_eval(run_dir: str) -> Optional[dict]:
    """eval.json when the run is finished (its step equals the resolved config's train.steps)."""
    cfg, ev = read_config(run_dir), _read_json(os.path.join(run_dir, "eval.json"))
    return ev if cfg is not None and ev is not None and ev.get("step") == cfg.train.steps else None


def main_path(ev: dict) -> str:
    """The arm's own answer: the thinking path when there is one, else the base path."""
    return "thinking" if "thinking" in ev else "base"


def metric(ev: Optional[dict], name: str, path: Optional[str] = None) -> Optional[float]:
    if ev is None:
        return None
    v = ev.get(path or main_path(ev), {}).get(name)
    return None if v is None else float(v)


@dataclass
class RunRecord:
    arm: str
    tag: str
    seed: int
    dir: str
    cfg: Optional[C.Config]
    final: Optional[dict]                    # eval.json of a finished run
    wall_s: Optional[float]
    thoughts: dict[int, dict] = field(default_factory=dict)   # N -> eval_thoughts_N.json
    evals: list[dict] = field(default_factory=list)           # evals.jsonl

    @property
    def thinking(self) -> bool:
        return self.cfg is not None and self.cfg.thinking.enabled


def load_record(run_dir: str, arm: str, tag: str, seed: int) -> RunRecord:
    runner = _read_json(os.path.join(run_dir, "runner.json")) or {}
    final = finished_eval(run_dir)
    # the trainer's own count (training steps over every session, kept in checkpoints) when there is one
    wall = final["wall_s"] if final and "wall_s" in final else runner.get("wall_s")
    thoughts = {}
    for name in os.listdir(run_dir):
        m = re.fullmatch(r"eval_thoughts_(\d+)\.json", name)
        if m and (ev := _read_json(os.path.join(run_dir, name))) is not None:
            thoughts[int(m.group(1))] = ev
    return RunRecord(arm, tag, seed, run_dir, read_config(run_dir), final, wall, dict(sorted(thoughts.items())),
                     _read_jsonl(os.path.join(run_dir, "evals.jsonl")))


def discover(out: str) -> list[RunRecord]:
    """Every OUT/runs/<arm>/<gridtag>/seed<S> directory."""
    root = os.path.join(out, "runs")
    recs = []
    for arm in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        for tag in sorted(os.listdir(os.path.join(root, arm))) if os.path.isdir(os.path.join(root, arm)) else ():
            for name in os.listdir(os.path.join(root, arm, tag)):
                if (m := re.fullmatch(r"seed(\d+)", name)) and os.path.isdir(d := os.path.join(root, arm, tag, name)):
                    recs.append(load_record(d, arm, tag, int(m.group(1))))
    return recs


# ---------------------------------------------------------------- running

@dataclass
class Runner:
    config: str
    overrides: list[str]
    out: str
    thoughts: Optional[list[int]]
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
        rec = _read_json(path) or {}
        rec[key] = rec.get(key, 0.0) + seconds
        with open(path, "w") as f:
            json.dump(rec, f, indent=2)

    def _failed(self, spec: RunSpec, what: str, run_dir: str) -> str:
        with open(os.path.join(run_dir, "train.log"), errors="replace") as f:
            tail = f.read().splitlines()[-15:]
        msg = f"FAILED {spec.label}: {what}; last lines of {run_dir}/train.log:\n" + \
              "\n".join("    " + line for line in tail)
        self.say(msg)
        return f"{spec.label}: {what}"

    def execute(self, spec: RunSpec) -> Optional[str]:
        """Train (unless finished), then test-time thought counts; a failure message or None."""
        if self.stop.is_set():
            return None
        d = spec.dir(self.out)
        with self.lock:
            self.count += 1
            i = f"[{self.count}/{self.total}]"
        ev = finished_eval(d)
        if ev is not None:
            self.say(f"{i} skip {spec.label}: finished, exact match {_fmt(metric(ev, 'exact_match'))}")
        else:
            os.makedirs(d, exist_ok=True)
            self.say(f"{i} start {spec.label}")
            rc, wall = self._call(train_command(self.config, self.overrides, spec, self.out), d)
            self._add_wall(d, "wall_s", wall)
            ev = finished_eval(d)
            if rc == 0 and ev is None:     # the trainer was stopped (Ctrl-C / SIGTERM): start nothing new
                self.stop.set()
            if rc != 0 or ev is None:
                return self._failed(spec, f"train.py exited {rc}" if rc else "stopped before train.steps", d)
            self.say(f"{i} done {spec.label} in {wall:.0f}s: exact match {_fmt(metric(ev, 'exact_match'))}")
        cfg = read_config(d)
        if not cfg.thinking.enabled:
            return None
        counts = self.thoughts if self.thoughts is not None else range(2 * max(trained_thoughts(cfg)) + 1)
        todo = [n for n in counts if not os.path.isfile(os.path.join(d, f"eval_thoughts_{n}.json"))]
        if self.stop.is_set() or not todo:
            return None
        cmd = [sys.executable, TRAIN_PY, "--config", os.path.join(d, "config.yaml"), "--eval-only",
               "--thoughts", ",".join(map(str, todo))]          # one process: one data build, one restore
        rc, wall = self._call(cmd, d)
        self._add_wall(d, "thoughts_wall_s", wall)
        for n in todo:
            tt = _read_json(os.path.join(d, f"eval_thoughts_{n}.json"))
            if rc != 0 or tt is None:
                return self._failed(spec, f"--eval-only --thoughts {','.join(map(str, todo))} exited {rc}" if rc
                                    else f"no eval_thoughts_{n}.json written", d)
            self.say(f"    {spec.label} thoughts={n}: exact match {_fmt(metric(tt, 'exact_match'))}")
        return None

    def run_all(self, specs: list[RunSpec], jobs: int) -> list[str]:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = [pool.submit(self.execute, s) for s in specs]
            results = [f.result() for f in futures]
        except BaseException:
            self.stop.set()             # Ctrl-C: the trainers save a checkpoint; start nothing new
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return [r for r in results if r]


# ---------------------------------------------------------------- aggregation

@dataclass(frozen=True)
class Stat:
    mean: float
    min: float
    max: float
    n: int


def stat(xs: list[Optional[float]]) -> Optional[Stat]:
    xs = [x for x in xs if x is not None]
    return Stat(sum(xs) / len(xs), min(xs), max(xs), len(xs)) if xs else None


def paired(a: dict[int, float], b: dict[int, float]) -> Optional[Stat]:
    """a - b over the seeds both have: mean, per-seed min and max."""
    return stat([a[s] - b[s] for s in sorted(a) if s in b])


def think_fraction(cfg: C.Config) -> float:
    """Fraction of a block's positions that run a chain: 1, or with thinking.think_at=targets the
    trainer's static count Q (train_step.n_think_positions over the training rows) / (seq_len + 1)."""
    if not cfg.thinking.enabled or cfg.thinking.think_at != "targets":
        return 1.0
    from silentstar_jax.data import build_data
    from silentstar_jax.train_step import n_think_positions
    from silentstar_jax.trainer import tokenizer_for
    data, _ = build_data(cfg, tokenizer_for(cfg))
    if not hasattr(data, "rows"):           # the trainer then thinks at every position too
        return 1.0
    return n_think_positions(data.rows, cfg.thinking.n_ahead) / (cfg.train.seq_len + 1)


def trained_thoughts(cfg: C.Config) -> list[int]:
    t = cfg.thinking
    return list(range(t.n_thoughts_train[0], t.n_thoughts_train[1] + 1)) if t.n_thoughts_train else [t.n_thoughts]


def flops_per_token(cfg: C.Config) -> float:
    """Model FLOPs per token of one training step (forward + backward = 3x forward) from
    benchmark.ideal_flops on a block of seq_len + 1 tokens. Its chain part (every position thinking)
    is scaled by the fraction of positions thinking and by K sampled chains, and averaged over the
    thought counts drawn in training (thinking.n_thoughts_train)."""
    from silentstar_jax.benchmark import Shape, ideal_flops
    m, t, T = cfg.model, cfg.thinking, cfg.train.seq_len + 1
    s = Shape(batch=1, seq=T, layers=m.n_layer, d_model=m.n_embd, heads=m.n_head, vocab=m.vocab_size)
    f = ideal_flops(s, None)
    if t.enabled:
        ns = trained_thoughts(cfg)
        chain = sum(ideal_flops(s, n, t.n_ahead) - f for n in ns) / len(ns)
        f += t.n_samples * think_fraction(cfg) * chain
    return 3 * f / T


@dataclass
class Group:
    """One arm x grid point over its finished seeds."""
    arm: str
    tag: str
    runs: list[RunRecord]
    best: bool = False

    @property
    def thinking(self) -> bool:
        return any(r.thinking for r in self.runs)

    def per_seed(self, name: str = "exact_match", path: Optional[str] = None) -> dict[int, float]:
        vals = {r.seed: metric(r.final, name, path) for r in self.runs}
        return {s: v for s, v in vals.items() if v is not None}

    def gap(self) -> dict[int, float]:
        base = self.per_seed(path="base")
        return {s: v - base[s] for s, v in self.per_seed().items() if s in base} if self.thinking else {}

    def metrics(self) -> dict[str, Optional[Stat]]:
        out = {"answer_accuracy": stat(list(self.per_seed("answer_accuracy").values())),
               "exact_match": stat(list(self.per_seed().values()))}
        if self.thinking:
            out["base_exact_match"] = stat(list(self.per_seed(path="base").values()))
            out["gap"] = stat(list(self.gap().values()))
        return out

    def thought_scaling(self) -> dict[int, Stat]:
        ns = sorted({n for r in self.runs for n in r.thoughts})
        res = {n: stat([metric(r.thoughts.get(n), "exact_match") for r in self.runs]) for n in ns}
        return {n: s for n, s in res.items() if s is not None}

    @property
    def cfg(self) -> C.Config:
        return self.runs[0].cfg


def _arm_key(arm: str):
    order = list(ARM_OVERRIDES)
    return (order.index(arm) if arm in order else len(order), arm)


def _tag_key(tag: str):
    def one(item: str):
        k, _, v = item.partition("=")
        try:
            return (k, 0, float(v), "")
        except ValueError:
            return (k, 1, 0.0, v)
    return [one(i) for i in tag.split(",")]


def group_runs(records: list[RunRecord]) -> list[Group]:
    """Finished runs grouped by arm x grid point, sorted; the best grid point per arm marked."""
    keys = sorted({(r.arm, r.tag) for r in records if r.final is not None},
                  key=lambda k: (_arm_key(k[0]), _tag_key(k[1])))
    groups = [Group(a, t, sorted((r for r in records if (r.arm, r.tag) == (a, t) and r.final is not None),
                                 key=lambda r: r.seed)) for a, t in keys]
    for arm in dict.fromkeys(g.arm for g in groups):
        scored = [(g.metrics()["exact_match"].mean, -i, g) for i, g in enumerate(groups)
                  if g.arm == arm and g.metrics()["exact_match"] is not None]
        if scored:
            max(scored, key=lambda x: x[:2])[2].best = True
    return groups


def best_vs_best(groups: list[Group]) -> dict:
    best = {g.arm: g for g in groups if g.best}
    rows = {arm: {"gridtag": g.tag, "exact_match": g.metrics()["exact_match"]} for arm, g in best.items()}
    diffs = {}
    if "latent" in best:
        lat = best["latent"].per_seed()
        for other in ("nothink", "pause"):
            if other in best:
                diffs[f"latent - {other}"] = paired(lat, best[other].per_seed())
        diffs["latent - own base"] = stat(list(best["latent"].gap().values()))
    return {"arms": rows, "differences": diffs}


# ---------------------------------------------------------------- report

def _fmt(x: Optional[float], signed: bool = False) -> str:
    return "–" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _fmt_stat(s: Optional[Stat], signed: bool = False) -> str:
    if s is None:
        return "–"
    return f"{_fmt(s.mean, signed)} ({_fmt(s.min, signed)}–{_fmt(s.max, signed)})"


def _fmt_flops(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _band(curves: list[dict[int, float]]):
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    cols = [[c[s] for c in curves] for s in steps]
    return steps, [sum(c) / len(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def plot_steps(groups: list[Group], path: str) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    drawn = False
    for i, g in enumerate(x for x in groups if x.best):
        lines = [("thinking", "-", "thinking path"), ("base", "--", "own base path")] if g.thinking \
            else [("base", "-", "base path")]
        for p, style, what in lines:
            curves = [{e["step"]: e[p]["exact_match"] for e in r.evals if "exact_match" in e.get(p, {})}
                      for r in g.runs]
            steps, mean, lo, hi = _band([c for c in curves if c])
            if steps:
                ax.plot(steps, mean, style, color=f"C{i}", label=f"{g.arm} ({g.tag}): {what}")
                ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.15)
                drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no periodic evaluations (evals.jsonl) yet", ha="center", transform=ax.transAxes)
    ax.set(xlabel="training step", ylabel="held-out exact match",
           title="exact match vs step (best grid point per arm; band: min–max over seeds)")
    fig.savefig(path, dpi=120)


def plot_thoughts(groups: list[Group], path: str) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    drawn = False
    for i, g in enumerate(x for x in groups if x.best):
        sc = g.thought_scaling()
        if not g.thinking or not sc:
            continue
        ns = list(sc)
        ax.plot(ns, [sc[n].mean for n in ns], "o-", color=f"C{i}", label=f"{g.arm} ({g.tag})")
        ax.fill_between(ns, [sc[n].min for n in ns], [sc[n].max for n in ns], color=f"C{i}", alpha=0.15)
        tr = trained_thoughts(g.cfg)
        label = f"{g.arm}: trained with {tr[0]}" + (f"–{tr[-1]}" if len(tr) > 1 else "")
        if len(tr) > 1:
            ax.axvspan(tr[0], tr[-1], color=f"C{i}", alpha=0.1, label=label)
        else:
            ax.axvline(tr[0], color=f"C{i}", ls=":", label=label)
        drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no test-time thought evaluations yet", ha="center", transform=ax.transAxes)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="thoughts at test time", ylabel="held-out exact match (thinking path)",
           title="test-time scaling (band: min–max over seeds)")
    fig.savefig(path, dpi=120)


def _asdict(x):
    if isinstance(x, Stat):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): _asdict(v) for k, v in x.items()}
    return x


def build_report(out: str, command: str) -> dict:
    records = discover(out)
    groups = group_runs(records)
    flops = {(g.arm, g.tag): flops_per_token(g.cfg) for g in groups}
    bvb = best_vs_best(groups)
    scaling = {g.arm: {"gridtag": g.tag, "trained_n": g.cfg.thinking.n_thoughts, "exact_match": g.thought_scaling()}
               for g in groups if g.best and g.thinking}

    md = ["# Experiment results", "", f"Command: `{command}`", "",
          f"{sum(r.final is not None for r in records)} of {len(records)} run directories finished "
          f"(`{os.path.join(out, 'runs')}`). Held-out metrics, over seeds: mean (min–max).", "",
          "## Arms × grid points", "",
          "| arm | grid point | seeds | answer accuracy | exact match | own base exact match | "
          "gap (thinking − own base) | train FLOPs/token | wall s/run |",
          "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        m = g.metrics()
        walls = [r.wall_s for r in g.runs if r.wall_s is not None]
        tag = f"**{g.tag}** ★" if g.best else g.tag
        md.append(f"| {g.arm} | {tag} | {','.join(str(r.seed) for r in g.runs)} | {_fmt_stat(m['answer_accuracy'])} "
                  f"| {_fmt_stat(m['exact_match'])} | {_fmt_stat(m.get('base_exact_match'))} "
                  f"| {_fmt_stat(m.get('gap'), True)} | {_fmt_flops(flops[g.arm, g.tag])} "
                  f"| {(sum(walls) / len(walls)) if walls else math.nan:.0f} |")
    md += ["", "Accuracy and exact match are the thinking path's for thinking arms, the base path's for "
           "`nothink`. ★ = best grid point of the arm (highest mean exact match). Train FLOPs/token: model "
           "FLOPs of one forward + backward training step per token (3 × `benchmark.ideal_flops`). "
           "Wall s/run: mean training wall time per run (the trainer's count over every session, "
           "compilation included, evaluation and start-up not; on a shared 2-core CPU with two runs at once).", "",
           "## Best vs best", "", "| | grid point | exact match (mean) | min over seeds | max over seeds |",
           "|---|---|---|---|---|"]
    for arm, row in bvb["arms"].items():
        s = row["exact_match"]
        md.append(f"| {arm} | {row['gridtag']} | {_fmt(s.mean)} | {_fmt(s.min)} | {_fmt(s.max)} |")
    for name, s in bvb["differences"].items():
        md.append(f"| {name.replace(' - ', ' − ')} | | {_fmt(s and s.mean, True)} | {_fmt(s and s.min, True)} "
                  f"| {_fmt(s and s.max, True)} |")
    md += ["", "Differences are paired by seed; their min is the per-seed minimum of the difference.", "",
           "## Test-time scaling", ""]
    ns = sorted({n for v in scaling.values() for n in v["exact_match"]})
    if ns:
        md += ["Exact match of the thinking path with N thoughts at evaluation (trained count in bold).", "",
               "| arm (grid point) | trained n | " + " | ".join(f"N={n}" for n in ns) + " |",
               "|---|---|" + "---|" * len(ns)]
        for arm, v in scaling.items():
            cells = [("**{}**" if n == v["trained_n"] else "{}").format(_fmt_stat(v["exact_match"].get(n)))
                     for n in ns]
            md.append(f"| {arm} ({v['gridtag']}) | {v['trained_n']} | " + " | ".join(cells) + " |")
    else:
        md.append("No test-time thought evaluations yet.")
    plot_steps(groups, os.path.join(out, PLOTS[0]))
    plot_thoughts(groups, os.path.join(out, PLOTS[1]))
    md += ["", "## Plots", "", f"- `{PLOTS[0]}` (solid: thinking path, dashed: own base path)", "",
           f"  ![exact match vs step]({PLOTS[0]})", "",
           f"- `{PLOTS[1]}` (dotted line / shaded span: thought count(s) used in training)", "",
           f"  ![test-time scaling]({PLOTS[1]})", ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md))

    res = {"command": command,
           "groups": [{"arm": g.arm, "gridtag": g.tag, "best": g.best, "seeds": [r.seed for r in g.runs],
                       "metrics": _asdict(g.metrics()), "flops_per_token": flops[g.arm, g.tag],
                       "wall_s": _asdict(stat([r.wall_s for r in g.runs]))}
                      for g in groups],
           "best_vs_best": _asdict(bvb), "thoughts_scaling": _asdict(scaling), "plots": list(PLOTS),
           "runs": [{"arm": r.arm, "gridtag": r.tag, "seed": r.seed, "dir": r.dir, "finished": r.final is not None,
                     "wall_s": r.wall_s, "eval": r.final, "eval_thoughts": {str(n): e for n, e in r.thoughts.items()}}
                    for r in sorted(records, key=lambda r: (_arm_key(r.arm), _tag_key(r.tag), r.seed))]}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


# ---------------------------------------------------------------- CLI

class _Parser(argparse.ArgumentParser):
    def error(self, message):                       # one line, exit 2 (cli_main), no usage dump
        raise UserError(message)


@cli_main
def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _Parser(prog="experiment.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config of the thinking run (see configs/)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--out", required=True, help="output directory (runs/ and the report go here)")
    p.add_argument("--arms", default="latent,pause,nothink", help="subset of latent,pause,nothink")
    p.add_argument("--grid", action="append", default=[], help="key=v1,v2 (repeatable; cross product)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (default 1)")
    p.add_argument("--thoughts", help="test-time thought counts (default 0..2x the trained n_thoughts)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from OUT/runs, no training")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.steps=500")
    args = p.parse_intermixed_args(argv)
    command = shlex.join(["python", "experiment.py", *argv])
    failures: list[str] = []
    if not args.report_only:
        if not args.config or not args.seeds:
            raise UserError("--config and --seeds are required (unless --report-only)")
        if args.jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {args.jobs}")
        seeds = int_list(args.seeds, "--seeds")
        thoughts = int_list(args.thoughts, "--thoughts") if args.thoughts is not None else None
        specs = plan_runs(args.config, args.overrides, parse_arms(args.arms), parse_grid(args.grid), seeds)
        os.makedirs(args.out, exist_ok=True)
        runner = Runner(args.config, args.overrides, args.out, thoughts, len(specs))
        failures = runner.run_all(specs, args.jobs)
    elif not os.path.isdir(os.path.join(args.out, "runs")):
        raise UserError(f"{args.out}: no runs/ directory to report on")
    build_report(args.out, command)
    print(f"report: {os.path.join(args.out, 'results.md')}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} run(s) failed: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)

"""A finished (or unfinished) run directory read back: config, final evaluation, thought evaluations.

The report is rebuilt from these files alone, so a run is "finished" only when its eval.json is of
the resolved config's last step.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from silentstar_jax import config as C
from silentstar_jax.errors import UserError
from silentstar_jax.run_dir import CODE_LOG, read_saved_config


def read_json(path: str) -> dict | None:
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


def read_config(run_dir: str) -> C.Config | None:
    """The run's resolved config.yaml, None when there is none; unreadable or invalid -> UserError."""
    raw = read_saved_config(run_dir)
    if raw is None:
        return None
    try:
        return C.from_dict(raw)
    except UserError as e:
        raise UserError(f"{os.path.join(run_dir, 'config.yaml')}: {e}") from None


def finished_eval(run_dir: str) -> dict | None:
    """eval.json when the run is finished (its step equals the resolved config's train.steps)."""
    cfg, ev = read_config(run_dir), read_json(os.path.join(run_dir, "eval.json"))
    return ev if cfg is not None and ev is not None and ev.get("step") == cfg.train.steps else None


def main_path(ev: dict) -> str:
    """The arm's own answer: the thinking path when there is one, else the base path."""
    return "thinking" if "thinking" in ev else "base"


def metric(ev: dict | None, name: str, path: str | None = None) -> float | None:
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
    cfg: C.Config | None
    final: dict | None  # eval.json of a finished run
    wall_s: float | None
    thoughts: dict[int, dict] = field(default_factory=dict)  # N -> eval_thoughts_N.json
    evals: list[dict] = field(default_factory=list)  # evals.jsonl
    code: list[dict] = field(default_factory=list)  # code.jsonl: each session's commit

    @property
    def commits(self) -> list[str]:
        """The commits that trained this run, in order ("<sha>+dirty" where tracked files had changes)."""
        seen = []
        for c in self.code:
            if "commit" in c and (tag := c["commit"] + ("+dirty" if c.get("dirty") else "")) not in seen:
                seen.append(tag)
        return seen

    @property
    def thinking(self) -> bool:
        return self.cfg is not None and self.cfg.thinking.enabled


def load_record(run_dir: str, arm: str, tag: str, seed: int) -> RunRecord:
    runner = read_json(os.path.join(run_dir, "runner.json")) or {}
    final = finished_eval(run_dir)
    # the trainer's own count (training steps over every session, kept in checkpoints) when there is one
    wall = final["wall_s"] if final and "wall_s" in final else runner.get("wall_s")
    thoughts = {}
    for name in os.listdir(run_dir):
        m = re.fullmatch(r"eval_thoughts_(\d+)\.json", name)
        if m and (ev := read_json(os.path.join(run_dir, name))) is not None:
            thoughts[int(m.group(1))] = ev
    return RunRecord(
        arm,
        tag,
        seed,
        run_dir,
        read_config(run_dir),
        final,
        wall,
        dict(sorted(thoughts.items())),
        _read_jsonl(os.path.join(run_dir, "evals.jsonl")),
        _read_jsonl(os.path.join(run_dir, CODE_LOG)),
    )


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

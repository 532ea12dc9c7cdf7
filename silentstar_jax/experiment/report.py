"""results.md and results.json (and the plots), rebuilt from the run directories alone.

Nothing comes from the runner's memory, so `--report-only` after a partial or interrupted
experiment gives the same report as the run that trained it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from silentstar_jax.experiment.plots import plot_steps, plot_thoughts
from silentstar_jax.experiment.records import discover
from silentstar_jax.experiment.stats import Stat, arm_key, best_vs_best, flops_per_token, group_runs, stat, tag_key

PLOTS = ("exact_match_vs_step.png", "thoughts_scaling.png")


def fmt(x: float | None, signed: bool = False) -> str:
    return "–" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _fmt_stat(s: Stat | None, signed: bool = False) -> str:
    if s is None:
        return "–"
    return f"{fmt(s.mean, signed)} ({fmt(s.min, signed)}–{fmt(s.max, signed)})"


def _fmt_flops(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _asdict(x):
    if isinstance(x, Stat):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): _asdict(v) for k, v in x.items()}
    return x


COMMANDS = "commands.txt"


def record_command(out: str, command: str) -> None:
    """OUT/commands.txt: every training command that wrote into OUT, once each, in order (an experiment is
    often built by several: lanes, added seeds, a second grid), so a rebuilt report still names them."""
    if command not in read_commands(out):
        with open(os.path.join(out, COMMANDS), "a") as f:
            f.write(command + "\n")


def read_commands(out: str) -> list[str]:
    try:
        with open(os.path.join(out, COMMANDS)) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError:
        return []


def _code_line(records) -> str:
    """Which code trained the runs (their code.jsonl), e.g. `Code: commit 1a2b3c4 (every run).`"""
    by_commit: dict[str, dict[str, list[int]]] = {}  # commit -> arm/gridtag -> seeds
    for r in sorted(records, key=lambda r: (arm_key(r.arm), tag_key(r.tag), r.seed)):
        for c in r.commits or ["not recorded"]:
            by_commit.setdefault(c, {}).setdefault(f"{r.arm}/{r.tag}", []).append(r.seed)
    name = lambda c: c if c == "not recorded" else c[:7] + c[40:]  # short sha, "+dirty" kept
    if not by_commit:
        return ""
    if len(by_commit) == 1:
        ((c, _),) = by_commit.items()
        return f"Code: {'' if c == 'not recorded' else 'commit '}{name(c)} (every run)."
    return (
        "Code: "
        + "; ".join(
            name(c) + " (" + ", ".join(f"{g} seeds {','.join(map(str, seeds))}" for g, seeds in groups.items()) + ")"
            for c, groups in by_commit.items()
        )
        + "."
    )


def build_report(out: str, command: str) -> dict:
    records = discover(out)
    groups = group_runs(records)
    flops = {(g.arm, g.tag): flops_per_token(g.cfg) for g in groups}
    bvb = best_vs_best(groups)
    scaling = {
        g.arm: {
            "gridtag": g.tag,
            "trained_n": g.cfg.thinking.n_thoughts,
            "exact_match": g.thought_scaling(),
            "exact_match_per_k": g.thought_scaling_per_k(),
        }
        for g in groups
        if g.best and g.thinking
    }

    trained_by = read_commands(out)
    md = [
        "# Experiment results",
        "",
        *(
            [
                "Training commands (every one that wrote here, in order):",
                "",
                "```bash",
                *trained_by,
                "```",
                "",
                f"Report: `{command}`",
            ]
            if trained_by and trained_by != [command]
            else [f"Command: `{command}`"]
        ),
        "",
        f"{sum(r.final is not None for r in records)} of {len(records)} run directories finished "
        f"(`runs/` beside this file). {_code_line(records)} Held-out metrics, over seeds: mean (min–max).",
        "",
        "## Arms × grid points",
        "",
        "| arm | grid point | seeds | answer accuracy | exact match | own base exact match | "
        "gap (thinking − own base) | train FLOPs/token | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        m = g.metrics()
        walls = [r.wall_s for r in g.runs if r.wall_s is not None]
        tag = f"**{g.tag}** ★" if g.best else g.tag
        md.append(
            f"| {g.arm} | {tag} | {','.join(str(r.seed) for r in g.runs)} | {_fmt_stat(m['answer_accuracy'])} "
            f"| {_fmt_stat(m['exact_match'])} | {_fmt_stat(m.get('base_exact_match'))} "
            f"| {_fmt_stat(m.get('gap'), True)} | {_fmt_flops(flops[g.arm, g.tag])} "
            f"| {(sum(walls) / len(walls)) if walls else math.nan:.0f} |"
        )
    md += [
        "",
        "Accuracy and exact match are the thinking path's for thinking arms, the base path's for "
        "`nothink`. ★ = best grid point of the arm (highest mean exact match). Train FLOPs/token: model "
        "FLOPs of one forward + backward training step per token (3 × `benchmark.ideal_flops`). "
        "Wall s/run: mean training wall time per run (the trainer's count over every session, "
        "compilation included, evaluation and start-up not; on a shared 2-core CPU with two runs at once).",
        "",
        "## Best vs best",
        "",
        "| | grid point | exact match (mean) | min over seeds | max over seeds |",
        "|---|---|---|---|---|",
    ]
    for arm, row in bvb["arms"].items():
        s = row["exact_match"]
        md.append(f"| {arm} | {row['gridtag']} | {fmt(s.mean)} | {fmt(s.min)} | {fmt(s.max)} |")
    for name, s in bvb["differences"].items():
        md.append(
            f"| {name.replace(' - ', ' − ')} | | {fmt(s and s.mean, True)} | {fmt(s and s.min, True)} "
            f"| {fmt(s and s.max, True)} |"
        )
    md += [
        "",
        "Differences are paired by seed; their min is the per-seed minimum of the difference.",
        "",
        "## Test-time scaling",
        "",
    ]
    ns = sorted({n for v in scaling.values() for n in v["exact_match"]})
    if ns:
        md += [
            "Exact match of the thinking path with N thoughts at evaluation (trained count in bold): on "
            "the held-out set, then on each hop count k's own held-out set where the task mixes them.",
            "",
            "| arm (grid point) | held-out set | trained n | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---|---|---|" + "---|" * len(ns),
        ]
        for arm, v in scaling.items():
            for what, sc in [("all", v["exact_match"])] + [(f"k = {k}", s) for k, s in v["exact_match_per_k"].items()]:
                cells = [("**{}**" if n == v["trained_n"] else "{}").format(_fmt_stat(sc.get(n))) for n in ns]
                md.append(f"| {arm} ({v['gridtag']}) | {what} | {v['trained_n']} | " + " | ".join(cells) + " |")
    else:
        md.append("No test-time thought evaluations yet.")
    plot_steps(groups, os.path.join(out, PLOTS[0]))
    plot_thoughts(groups, os.path.join(out, PLOTS[1]))
    md += [
        "",
        "## Plots",
        "",
        f"- `{PLOTS[0]}` (solid: thinking path, dashed: own base path)",
        "",
        f"  ![exact match vs step]({PLOTS[0]})",
        "",
        f"- `{PLOTS[1]}` (dotted line / shaded span: thought count(s) used in training)",
        "",
        f"  ![test-time scaling]({PLOTS[1]})",
        "",
    ]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md))

    res = {
        "command": command,
        "training_commands": trained_by,
        "groups": [
            {
                "arm": g.arm,
                "gridtag": g.tag,
                "best": g.best,
                "seeds": [r.seed for r in g.runs],
                "metrics": _asdict(g.metrics()),
                "flops_per_token": flops[g.arm, g.tag],
                "wall_s": _asdict(stat([r.wall_s for r in g.runs])),
            }
            for g in groups
        ],
        "best_vs_best": _asdict(bvb),
        "thoughts_scaling": _asdict(scaling),
        "plots": list(PLOTS),
        "runs": [
            {
                "arm": r.arm,
                "gridtag": r.tag,
                "seed": r.seed,
                "dir": os.path.relpath(r.dir, out),
                "finished": r.final is not None,
                "commits": r.commits,
                "wall_s": r.wall_s,
                "eval": r.final,
                "eval_thoughts": {str(n): e for n, e in r.thoughts.items()},
            }
            for r in sorted(records, key=lambda r: (arm_key(r.arm), tag_key(r.tag), r.seed))
        ],
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res

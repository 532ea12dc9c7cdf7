"""The language-model report: held-out cross-entropy of every arm, from experiment directories alone.

The experiment report (report.py) ranks arms by exact match at the answers of a task. On text there
are no answers: the number is the held-out CE per token, lower is better. This report gathers arms
from one or more experiment directories (each arm x grid point a row, named by the user), pairs them by
seed, and draws CE vs step:

    python -m silentstar_jax.experiment.lm_report --out results/anchored \\
        --row "anchored=/tmp/exp/text:latent" --row "no-think=/tmp/exp/text:nothink" ...

A row is NAME=DIR:ARM[:GRIDTAG] (GRIDTAG needed only where the arm has several grid points). The
first row is the one the differences are taken from; `--controls` names the rows it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.experiment.records import RunRecord, _read_jsonl, discover
from silentstar_jax.experiment.stats import paired, stat
from silentstar_jax.runtime import entry_point


def parse_row(spec: str) -> tuple[str, str, str, str | None]:
    name, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) not in (2, 3):
        raise UserError(f"--row {spec!r}: expected NAME=DIR:ARM[:GRIDTAG]")
    return name, parts[0], parts[1], parts[2] if len(parts) == 3 else None


def row_runs(out: str, arm: str, tag: str | None) -> list[RunRecord]:
    """The finished runs of one arm (and grid point) of an experiment directory, by seed."""
    recs = [r for r in discover(out) if r.arm == arm and r.final is not None]
    tags = sorted({r.tag for r in recs})
    if tag is None and len(tags) > 1:
        raise UserError(f"{out}: arm {arm} has grid points {', '.join(tags)}; name one (NAME=DIR:ARM:GRIDTAG)")
    recs = [r for r in recs if tag is None or r.tag == tag]
    if not recs:
        raise UserError(f"{out}: no finished run of arm {arm}" + (f" at grid point {tag}" if tag else ""))
    return sorted(recs, key=lambda r: r.seed)


def final_ce(r: RunRecord, path: str) -> float | None:
    """Held-out CE of a path ('thinking' or 'base') at the end; a no-think run's thinking path is its base."""
    ev = r.final.get(path) or (r.final.get("base") if path == "thinking" else None)
    return None if ev is None else float(ev["ce"])


def curve(r: RunRecord, path: str) -> dict[int, float]:
    out = {}
    for e in r.evals:
        ev = e.get(path) or (e.get("base") if path == "thinking" else None)
        if ev is not None and "ce" in ev:
            out[int(e["step"])] = float(ev["ce"])
    return out


def mix_weight_curve(r: RunRecord) -> dict[int, float]:
    """The training log's mean mixing weight by step (thinking runs); {} when none was logged."""
    return {
        int(m["step"]): float(m["mix_weight"])
        for m in _read_jsonl(os.path.join(r.dir, "metrics.jsonl"))
        if "mix_weight" in m
    }


def _d(x):
    return None if x is None else {"mean": x.mean, "min": x.min, "max": x.max, "n": x.n}


def build(rows: list[tuple[str, str, str, str | None]], controls: list[str], out: str, title: str) -> dict:
    """lm_results.json and ce_vs_step.png in `out`: per row, the final held-out CE per seed (thinking path;
    a no-think row's base path), its own base path's, the last logged mixing weight; the first row minus
    each control and minus its own base, paired by seed, absolute and relative."""
    runs = {name: row_runs(d, arm, tag) for name, d, arm, tag in rows}
    names = [r[0] for r in rows]
    bad = [c for c in controls if c not in runs]
    if bad:
        raise UserError(f"--controls: {bad[0]!r} is not a row ({', '.join(names)})")
    res_rows = {}
    for name in names:
        rs = runs[name]
        think = {r.seed: final_ce(r, "thinking") for r in rs}
        base = {r.seed: final_ce(r, "base") for r in rs} if rs[0].thinking else None
        gates = [mix_weight_curve(r) for r in rs] if rs[0].thinking else []
        res_rows[name] = {
            "runs": [f"{r.arm}/{r.tag}/seed{r.seed}" for r in rs],
            "seeds": sorted(think),
            "ce": think,
            "base_ce": base,
            "ce_stat": _d(stat(list(think.values()))),
            "gap_vs_own_base": _d(paired(think, base)) if base else None,
            "final_mix_weight": _d(stat([g[max(g)] for g in gates if g])),
            "commits": sorted({c for r in rs for c in r.commits}),
            "wall_s": _d(stat([r.wall_s for r in rs])),
        }
    lead = res_rows[names[0]]
    relative = lambda a, b: _d(stat([a[s] / b[s] - 1 for s in sorted(a) if s in b]))
    diffs = {
        f"{names[0]} - {c}": {
            "ce": _d(paired(lead["ce"], res_rows[c]["ce"])),
            "relative": relative(lead["ce"], res_rows[c]["ce"]),
        }
        for c in controls
    }
    if lead["base_ce"]:
        diffs[f"{names[0]} - own base"] = {
            "ce": lead["gap_vs_own_base"],
            "relative": relative(lead["ce"], lead["base_ce"]),
        }
    plot_ce(runs, names, os.path.join(out, "ce_vs_step.png"), title, controls[0] if controls else None)
    res = {"title": title, "rows": res_rows, "differences": diffs, "plots": ["ce_vs_step.png"]}
    with open(os.path.join(out, "lm_results.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


def markdown(res: dict) -> str:
    """The rows and differences as markdown tables (for results.md)."""
    f = lambda s, signed=False: "–" if s is None else (f"{s:+.4f}" if signed else f"{s:.4f}")
    st = lambda d, signed=False: (
        "–" if d is None else f"{f(d['mean'], signed)} ({f(d['min'], signed)} to {f(d['max'], signed)})"
    )
    md = [
        "| arm | seeds | held-out CE per token, per seed | mean | thinking − own base | final mixing weight |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in res["rows"].items():
        ce = {int(k): v for k, v in r["ce"].items()}  # int keys, or str after a JSON round trip
        per = " / ".join(f(ce[s]) for s in r["seeds"])
        md.append(
            f"| {name} | {','.join(map(str, r['seeds']))} | {per} | {f(r['ce_stat']['mean'])} "
            f"| {st(r['gap_vs_own_base'], True)} | {st(r['final_mix_weight'])} |"
        )
    md += ["", "| difference (paired by seed) | CE | relative |", "| --- | --- | --- |"]
    pct = lambda d: "–" if d is None else f"{100 * d['mean']:+.2f}% ({100 * d['min']:+.2f}% to {100 * d['max']:+.2f}%)"
    for name, d in res["differences"].items():
        md.append(f"| {name.replace(' - ', ' − ')} | {st(d['ce'], True)} | {pct(d['relative'])} |")
    return "\n".join(md) + "\n"


def plot_ce(runs: dict[str, list[RunRecord]], names: list[str], path: str, title: str, reference: str | None = None):
    """Left: held-out CE vs step per row (thinking path solid, own base dashed; band min–max over seeds).
    Right (with a reference row): each row's thinking path relative to the reference, paired by seed, in %."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13 if reference else 7.5, 4.8))
    axes = fig.subplots(1, 2 if reference else 1)
    ax, rel = (axes[0], axes[1]) if reference else (axes, None)
    band = lambda a, xs, cols, **kw: (
        a.plot(xs, [sum(c) / len(c) for c in cols], **kw),
        a.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], color=kw["color"], alpha=0.12),
    )
    for i, name in enumerate(names):
        rs = runs[name]
        for p, style in (("thinking", "-"), ("base", "--")) if rs[0].thinking else (("base", "-"),):
            curves = [curve(r, p) for r in rs]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if all(curves) else []
            if steps:
                what = "" if not rs[0].thinking else (" (thinking)" if p == "thinking" else " (own base)")
                band(ax, steps, [[c[s] for c in curves] for s in steps], color=f"C{i}", ls=style, label=name + what)
        if rel is not None and name != reference:
            ref = {r.seed: curve(r, "thinking") for r in runs[reference]}
            pairs = [(curve(r, "thinking"), ref[r.seed]) for r in rs if r.seed in ref]
            steps = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs))) if pairs else []
            if steps:
                cols = [[100 * (a[s] / b[s] - 1) for a, b in pairs] for s in steps]
                band(rel, steps, cols, color=f"C{i}", ls="-", label=name)
    ax.legend(fontsize=7)
    ax.set(xlabel="training step", ylabel="held-out CE per token (nats)", title=title)
    if rel is not None:
        rel.axhline(0, color="k", lw=1)
        rel.legend(fontsize=7)
        rel.set(
            xlabel="training step", ylabel=f"CE relative to {reference} (%)", title=f"minus {reference}, paired by seed"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m silentstar_jax.experiment.lm_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="directory for lm_results.json and ce_vs_step.png")
    p.add_argument("--row", action="append", required=True, help="NAME=DIR:ARM[:GRIDTAG] (repeatable; first: the lead)")
    p.add_argument("--controls", default="", help="comma-separated row names the lead row is compared with")
    p.add_argument("--title", default="held-out CE vs step (band: min–max over seeds)")
    return p


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = [parse_row(r) for r in args.row]
    res = build(rows, [c for c in args.controls.split(",") if c], args.out, args.title)
    print(markdown(res))


run = entry_point(main)

if __name__ == "__main__":
    run()

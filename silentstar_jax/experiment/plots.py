"""The report's two PNGs: exact match vs training step, and exact match vs test-time thoughts (overall
and, where the task mixes hop counts, per k).

matplotlib is imported only when a plot is drawn (its Figure API: no display, no global state).
"""

from __future__ import annotations

from silentstar_jax.experiment.stats import Group, trained_thoughts

_K_STYLES = ("s--", "^:", "v-.", "d--")


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
        lines = (
            [("thinking", "-", "thinking path"), ("base", "--", "own base path")]
            if g.thinking
            else [("base", "-", "base path")]
        )
        for p, style, what in lines:
            curves = [
                {e["step"]: e[p]["exact_match"] for e in r.evals if "exact_match" in e.get(p, {})} for r in g.runs
            ]
            steps, mean, lo, hi = _band([c for c in curves if c])
            if steps:
                ax.plot(steps, mean, style, color=f"C{i}", label=f"{g.arm} ({g.tag}): {what}")
                ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.15)
                drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no periodic evaluations (evals.jsonl) yet", ha="center", transform=ax.transAxes)
    ax.set(
        xlabel="training step",
        ylabel="held-out exact match",
        title="exact match vs step (best grid point per arm; band: min–max over seeds)",
    )
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
        for j, (k, sk) in enumerate(g.thought_scaling_per_k().items()):  # each k's own held-out set
            nk = list(sk)
            ax.plot(
                nk,
                [sk[n].mean for n in nk],
                _K_STYLES[j % len(_K_STYLES)],
                color=f"C{i}",
                alpha=0.8,
                label=f"{g.arm}: k = {k} problems",
            )
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
    ax.set(
        xlabel="thoughts at test time",
        ylabel="held-out exact match (thinking path)",
        title="test-time scaling (band: min–max over seeds)",
    )
    fig.savefig(path, dpi=120)

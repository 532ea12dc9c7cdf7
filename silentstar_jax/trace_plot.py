"""A picture of the thinking (`generate.py --plot`): one column per generated or scored token, one row
per thought; each cell the probability of the thought's logit-lens top token, labelled with it;
beneath, p(token) with and without thinking and the mixing weight. Drawn from the same per-token
records that --json prints (display.event_json), so the picture and the JSON cannot disagree.
matplotlib is imported here only (its Figure API: no display, no global state)."""

from __future__ import annotations

import json
import math

import numpy as np

from silentstar_jax.display import _tok
from silentstar_jax.errors import UserError


def _label(token: str) -> str:
    return "eot" if token == "<|endoftext|>" else _tok(token)


def trace_cells(records: list[dict]) -> dict:
    """The numbers the figure shows: top-1 lens probability [n, T] and its token labels, p(token)
    with and without thinking [T], mixing weight [T], the tokens [T]."""
    n = max((len(r.get("thoughts", [])) for r in records), default=0)
    p_top = np.full((n, len(records)), np.nan)
    labels = [["" for _ in records] for _ in range(n)]
    for t, r in enumerate(records):
        for j, th in enumerate(r.get("thoughts", [])):
            tok, p = th["top"][0]
            p_top[j, t], labels[j][t] = p, tok
    return {
        "p_top": p_top,
        "labels": labels,
        "tokens": [r["token"] for r in records],
        "p_think": np.array([math.exp(r["logprob"]) for r in records]),
        "p_base": np.array([math.exp(r["logprob_base"]) for r in records]),
        "mix_weight": np.array([r.get("mix_weight", 0.0) for r in records]),
    }


def plot_trace(records: list[dict], path: str, title: str = "") -> dict:
    """Draw the trace of `records` to `path` (PNG); returns trace_cells(records)."""
    if not records:
        raise UserError("--plot: nothing to draw (no tokens)")
    from matplotlib.figure import Figure

    c = trace_cells(records)
    n, T = c["p_top"].shape
    fig = Figure(figsize=(max(4.0, 0.75 * T + 1.5), 1.2 + 0.55 * max(n, 1) + 1.8), layout="constrained")
    axes = fig.subplots(2, 1, height_ratios=[max(n, 1), 1.6], sharex=True)
    ax = axes[0]
    if n:
        im = ax.imshow(c["p_top"], vmin=0, vmax=1, cmap="Blues", aspect="auto")
        for j in range(n):
            for t in range(T):
                if c["labels"][j][t]:
                    p = c["p_top"][j, t]
                    ax.text(
                        t,
                        j,
                        f"{_label(c['labels'][j][t])}\n{p:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if p > 0.6 else "black",
                    )
        ax.set_yticks(range(n), [f"thought {j + 1}" for j in range(n)])
        fig.colorbar(im, ax=ax, label="p(lens top token)", shrink=0.8)
    else:
        ax.text(0.5, 0.5, "no thoughts (thinking off)", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_title(title or "thought trace: logit lens of each thought")
    x = np.arange(T)
    b = axes[1]
    b.bar(x - 0.2, c["p_think"], 0.4, label="p(token), thinking", color="tab:green")
    b.bar(x + 0.2, c["p_base"], 0.4, label="p(token), no thinking", color="tab:gray")
    b.plot(x, c["mix_weight"], "o-", color="tab:orange", label="mix weight w")
    b.set_ylim(0, 1.05)
    b.set_xticks(x, [_label(s) for s in c["tokens"]])
    b.set_xlabel("token")
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    cells = {
        "p_top": [[None if math.isnan(v) else float(v) for v in row] for row in c["p_top"]],
        "labels": c["labels"],
        "tokens": c["tokens"],
        "p_think": c["p_think"].tolist(),
        "p_base": c["p_base"].tolist(),
        "mix_weight": c["mix_weight"].tolist(),
    }
    try:  # the cells ride along as the PNG's Description text: a reader can check the picture's numbers
        fig.savefig(path, dpi=110, metadata={"Description": json.dumps(cells)})
    except OSError as e:
        raise UserError(f"--plot {path}: cannot write ({e.strerror})") from None
    return c

"""Where thinking helps on text: per-token Δ log-prob (thinking path − its own base path) over held-out text,
bucketed by how hard the token is for the base path, by character class, and drawn as coloured text.

Quiet-STaR reports the largest gains on hard tokens; `gain_table` asks the same of a run here. A text longer
than the context is scored in consecutive windows that fit it (each window's first token has no context and
is not scored), so every scored token is predicted from the same prefix by both paths.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("letter", "digit", "space", "newline", "punctuation", "other")


def char_class(s: str) -> str:
    """The class of a token's text, by its first character (byte tokens: one character, or part of one)."""
    c = s[:1]
    if c in ("", "\ufffd"):  # a byte of a multi-byte character, or nothing
        return "other"
    if c == "\n":
        return "newline"
    if c.isspace():
        return "space"
    if c.isalpha():
        return "letter"
    if c.isdigit():
        return "digit"
    if c.isprintable():
        return "punctuation"
    return "other"


def score_document(model, ids: list[int], think: bool, n_thoughts: int | None, room: int) -> dict:
    """{"index": [N] positions in ids, "logprob", "logprob_base": [N]}: every token but the first of each
    window of `room` tokens, predicted from the window's tokens before it."""
    from silentstar_jax.generation import score

    out = {"index": [], "logprob": [], "logprob_base": []}
    for start in range(0, max(len(ids) - 1, 0), room):
        w = ids[start : start + room]
        if len(w) < 2:
            break
        s = score(model, w, think, n_thoughts)
        out["index"].append(np.arange(start + 1, start + len(w)))
        out["logprob"].append(s["logprob"])
        out["logprob_base"].append(s["logprob_base"])
    return {k: np.concatenate(v) if v else np.zeros(0, int if k == "index" else float) for k, v in out.items()}


def gain_table(lp, lp_base, classes: list[str], n_buckets: int = 5) -> dict:
    """Mean Δ log-prob (nats, > 0: thinking helps) overall, per base-loss quantile bucket (easy to hard),
    at the hardest 10% of tokens by base loss (and its ratio to the overall mean), and per character class."""
    lp, lp_base = np.asarray(lp, np.float64), np.asarray(lp_base, np.float64)
    if lp.size == 0:
        raise ValueError("no scored tokens")
    delta, loss = lp - lp_base, -lp_base
    order = np.argsort(loss, kind="stable")
    buckets = []
    for i, part in enumerate(np.array_split(order, n_buckets)):
        if part.size:
            buckets.append(
                {
                    "bucket": f"{i + 1}/{n_buckets}",
                    "tokens": int(part.size),
                    "base_loss": float(loss[part].mean()),
                    "delta": float(delta[part].mean()),
                }
            )
    hard = order[int(np.floor(0.9 * order.size)) :]
    mean = float(delta.mean())
    cls = np.asarray(classes)
    by_class = {
        c: {"tokens": int((cls == c).sum()), "delta": float(delta[cls == c].mean())}
        for c in CLASSES
        if (cls == c).any()
    }
    return {
        "tokens": int(delta.size),
        "delta": mean,
        "base_loss": float(loss.mean()),
        "buckets": buckets,
        "hardest_10pct": {"tokens": int(hard.size), "delta": float(delta[hard].mean())},
        "hardest_10pct_over_mean": float(delta[hard].mean() / mean) if mean else None,
        "by_class": by_class,
    }


def table_markdown(t: dict) -> str:
    rows = [
        f"{t['tokens']} tokens; mean Δ log-prob (thinking − own base, nats; > 0: thinking helps) {t['delta']:+.4f}",
        "",
        "| tokens, easy to hard by base loss | n | base loss | Δ log-prob |",
        "| --- | --- | --- | --- |",
        *(f"| {b['bucket']} | {b['tokens']} | {b['base_loss']:.3f} | {b['delta']:+.4f} |" for b in t["buckets"]),
        f"| hardest 10% | {t['hardest_10pct']['tokens']} | | {t['hardest_10pct']['delta']:+.4f} |",
        "",
        "| character class | n | Δ log-prob |",
        "| --- | --- | --- |",
        *(f"| {c} | {v['tokens']} | {v['delta']:+.4f} |" for c, v in t["by_class"].items()),
    ]
    ratio = t["hardest_10pct_over_mean"]
    rows.append("")
    rows.append(f"hardest 10% / mean: {ratio:.2f}" if ratio is not None else "hardest 10% / mean: – (mean 0)")
    return "\n".join(rows) + "\n"


def plot_coloured_text(pieces: list[tuple[str, float]], path: str, title: str, width: int = 100) -> int:
    """A PNG of the text, each character on a cell coloured by its token's Δ log-prob (blue: thinking
    helps, red: it hurts; scale ±the 98th percentile of |Δ|). Wraps at `width` characters and at newlines.
    Returns the number of characters drawn."""
    from matplotlib.figure import Figure

    rows, row = [], []
    for text, d in pieces:
        for ch in text:
            if ch == "\n":
                rows.append(row)
                row = []
                continue
            row.append((ch if ch.isprintable() else "·", d))
            if len(row) == width:
                rows.append(row)
                row = []
    rows.append(row)
    grid = np.full((len(rows), width), np.nan)
    for r, cells in enumerate(rows):
        for c, (_, d) in enumerate(cells):
            grid[r, c] = d
    finite = np.abs(grid[np.isfinite(grid)])
    vmax = float(np.percentile(finite, 98)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig = Figure(figsize=(width * 0.11 + 1, len(rows) * 0.2 + 1.2))
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    for r, cells in enumerate(rows):
        for c, (ch, _) in enumerate(cells):
            if ch != " ":
                ax.text(c, r, ch, ha="center", va="center", fontsize=7, family="monospace")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="Δ log-prob (nats)")
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Description": f"{sum(map(len, rows))} chars"})
    return sum(len(r) for r in rows)


def read_documents(path: str, text_field: str = "text") -> list[str]:
    """A .txt file is one document; .jsonl / .json: a document per record's `text_field`, read as training
    reads them (data.py: a bad line stops with file:line)."""
    from silentstar_jax.data import _as_text, _json_docs
    from silentstar_jax.errors import UserError

    try:
        if path.lower().endswith((".jsonl", ".json")):
            return [_as_text(d[text_field], text_field) for d in _json_docs([path], text_field, skip_bad=False)]
        with open(path, encoding="utf-8") as f:
            return [f.read()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def analyse(model, tok, docs: list[str], n_thoughts: int | None, room: int) -> tuple[dict, list]:
    """(gain_table over every document's scored tokens, the first document as (text, Δ) pieces)."""
    from silentstar_jax.errors import UserError

    lp, lpb, cls, first = [], [], [], []
    for i, doc in enumerate(docs):
        ids = tok.encode(doc)
        s = score_document(model, ids, True, n_thoughts, room)
        lp.append(s["logprob"])
        lpb.append(s["logprob_base"])
        cls += [char_class(tok.decode([ids[j]])) for j in s["index"]]
        if i == 0:
            delta = dict(zip(s["index"].tolist(), (s["logprob"] - s["logprob_base"]).tolist()))
            first = [(tok.decode([t]), delta.get(j, 0.0)) for j, t in enumerate(ids)]
    if not cls:
        raise UserError("no document has two tokens to score")
    return gain_table(np.concatenate(lp), np.concatenate(lpb), cls), first

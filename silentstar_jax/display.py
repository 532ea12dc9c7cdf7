"""Terminal rendering of thinking (rich): per-token thought traces, the coloured final text, the
scoring view. Kept apart from generation so JSON and display read the same TokenEvents."""
from __future__ import annotations

import math

from rich.console import Console
from rich.text import Text


def _tok(s: str) -> str:
    """Control characters and newlines escaped; a backslash stays one (byte tokens arrive as '\\xaa')."""
    return repr(s)[1:-1].replace("\\\\", "\\")


def event_json(e, tok, think: bool) -> dict:
    rec = {"step": e.step, "token_id": e.token_id, "token": tok.token_str(e.token_id),
           "logprob": e.logprob, "logprob_base": e.logprob_base}
    if think:
        x = e.extra
        rec.update(mix_weight=float(x["mix_weight"]), value=float(x["value"]), thoughts=[
            {"top": [[tok.token_str(int(i)), float(p)] for i, p in zip(x["lens_id"][j], x["lens_p"][j])],
             "cosine": [[tok.token_str(int(i)), float(c)] for i, c in zip(x["cos_id"][j], x["cos"][j])],
             "norm": float(x["norm"][j])}
            for j in range(len(x.get("norm", [])))])
    return rec


def _delta_style(d: float) -> str:
    """Green where thinking raised log p(token), red where it lowered it; stronger = larger change."""
    if abs(d) < 0.01:
        return "default"
    strength = min(abs(d) / 1.0, 1.0)
    level = int(80 + 175 * strength)
    return f"rgb(0,{level},0)" if d > 0 else f"rgb({level},0,0)"


def render_event(console: Console, e, tok, think: bool, show: int) -> None:
    rec = event_json(e, tok, think)
    if think:
        for j, th in enumerate(rec["thoughts"]):
            lens = "  ".join(f"{_tok(t)!s} {p:.2f}" for t, p in th["top"][:show])
            cos = "  ".join(f"{_tok(t)!s} {c:.2f}" for t, c in th["cosine"][:show])
            console.print(Text.assemble(("  thought ", "dim"), (f"{j + 1}", "bold"),
                                        (f"  |z|={th['norm']:.2f}", "dim"),
                                        ("  lens: ", "cyan"), lens, ("  cos: ", "magenta"), cos))
    p, pb = math.exp(rec["logprob"]), math.exp(rec["logprob_base"])
    line = Text.assemble(("→ ", "bold"), (_tok(rec["token"]), "bold yellow"), f"   p={p:.3f}")
    if think:
        line.append(f"  (no thinking {pb:.3f})", style=_delta_style(rec["logprob"] - rec["logprob_base"]))
        line.append(f"   mix w={rec['mix_weight']:.3f}  value={rec['value']:+.3f}", style="dim")
    console.print(line)


def coloured_text(pieces: list[tuple[str, float]]) -> Text:
    """Text whose tokens are coloured by log p(with thinking) - log p(without)."""
    out = Text()
    for s, d in pieces:
        out.append(s, style=_delta_style(d))
    return out


def legend() -> Text:
    return Text.assemble(("green", _delta_style(1.0)), ": thinking raised p(token)   ",
                         ("red", _delta_style(-1.0)), ": lowered it")

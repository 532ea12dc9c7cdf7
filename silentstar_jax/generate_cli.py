"""`python generate.py`: watch a latent-thinking model think, token by token.

With no arguments it loads the latest checkpoint of the most recent run under runs/ and opens a
prompt loop (Ctrl-C stops a generation once the token being computed is done, Ctrl-D / quit / exit
leave). --prompt for one shot, --json for machines, --score TEXT to see where thinking helped on a
given text. Mistakes (a flag out of range, a broken checkpoint) end in one line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.runtime import entry_point
from silentstar_jax.sampling import SamplingConfig

TRAIN_HINT = "python train.py --config configs/tiny.yaml"
MAX_SEED = 2**63 - 1  # jax.random.key takes an int64


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("model")
    src.add_argument("--checkpoint", help="run directory or one checkpoint (default: latest run under --runs)")
    src.add_argument("--runs", default="runs", help="where to look for runs (default: runs)")
    src.add_argument("--init-from", help="HF GPT-2 directory or hub name (fresh, untrained thinking heads)")
    src.add_argument("--allow-pickle", action="store_true", help="allow loading pytorch_model.bin (runs pickle)")
    p.add_argument("--prompt", help="generate once for this prompt (no prompt loop)")
    p.add_argument("--score", metavar="TEXT", help="teacher-forced scoring of TEXT: where did thinking help?")
    p.add_argument(
        "--score-file",
        metavar="FILE",
        help="where thinking helps over a text file (.txt: one document; .jsonl: a document per line's 'text'): "
        "Δ log-prob by base-loss bucket and character class; --plot draws the first document coloured by it",
    )
    p.add_argument("--plot-chars", type=int, default=3000, help="--score-file --plot: characters drawn (default 3000)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate, >= 1 (default: 50)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="> 0 (default: 1); for argmax use --greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens; 0: off (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]; 1: off (default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, 0 .. 2**63 - 1 (default: 0)")
    p.add_argument("--no-think", action="store_true", help="plain GPT-2 path, no thought chain")
    p.add_argument(
        "--thoughts",
        type=int,
        help="thought steps per token, >= 0 and within the model's context (default: as trained)",
    )
    p.add_argument(
        "--show-thoughts",
        type=int,
        default=3,
        metavar="K",
        help="top-K tokens shown per thought (at most the vocabulary)",
    )
    p.add_argument("--quiet", action="store_true", help="text only")
    p.add_argument("--json", action="store_true", help="one JSON object per token, then a summary line")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the thought trace (with --prompt or --score): a row per thought, a column per token",
    )
    return p


def _check_text(text: str, what: str) -> str:
    """Bytes that are not UTF-8 reach Python as lone surrogates (argv) and no tokenizer can encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} is not valid UTF-8 text; pass it as UTF-8") from None
    return text


def _check_args(args) -> SamplingConfig:
    """Every flag checked before the model loads: a mistake costs no loading time and prints one line."""
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    if not args.greedy and not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise UserError("--temperature must be a finite number > 0 (use --greedy for argmax decoding)")
    if args.top_k < 0:
        raise UserError("--top-k must be >= 0")
    if not 0 < args.top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    if args.thoughts is not None and args.thoughts < 0:
        raise UserError("--thoughts must be >= 0")
    if args.show_thoughts < 1:
        raise UserError("--show-thoughts must be >= 1")
    if not 0 <= args.seed <= MAX_SEED:
        raise UserError("--seed must be in 0 .. 2**63 - 1")
    if sum(x is not None for x in (args.prompt, args.score, args.score_file)) > 1:
        raise UserError("give one of --prompt, --score, --score-file")
    if args.plot_chars < 1:
        raise UserError("--plot-chars must be >= 1")
    if args.score_file is not None and not os.path.isfile(args.score_file):
        raise UserError(f"--score-file {args.score_file}: no such file")
    if args.plot is not None:
        if args.prompt is None and args.score is None and args.score_file is None:
            raise UserError("--plot needs --prompt TEXT, --score TEXT or --score-file FILE (a text to draw)")
        if not args.plot.lower().endswith(".png"):
            raise UserError(f"--plot {args.plot}: the picture is a PNG; name it FILE.png")
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise UserError(f"--plot {args.plot}: folder {folder} does not exist")
    for flag, text in (("--prompt", args.prompt), ("--score", args.score)):
        if text is not None:
            _check_text(text, flag)
    return SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def load_model(args):
    """SilentStar (or plain GPT2 wrapped), tokenizer, description, whether thinking is untrained."""
    from flax import nnx

    from silentstar_jax.config import ThinkingConfig
    from silentstar_jax.loading import latest_run, load_run
    from silentstar_jax.model import SilentStar
    from silentstar_jax.tokenizer import load_tokenizer

    if args.init_from:
        from silentstar_jax.hf import load_gpt2

        gpt2, path = load_gpt2(args.init_from, allow_pickle=args.allow_pickle)
        model = SilentStar(gpt2.cfg, ThinkingConfig(enabled=not args.no_think), rngs=nnx.Rngs(args.seed), gpt2=gpt2)
        tok = load_tokenizer(path)
        if tok.vocab_size > gpt2.cfg.vocab_size:  # ids past the embedding would be clamped silently
            raise UserError(
                f"{path}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                f"vocab_size {gpt2.cfg.vocab_size}: its tokenizer files belong to another model"
            )
        return model, tok, args.init_from, not args.no_think
    run = args.checkpoint or latest_run(args.runs)
    if run is None:
        raise UserError(f"no trained run found under {args.runs}/; train one with: {TRAIN_HINT}")
    model, tok, _, step = load_run(run)
    return model, tok, f"{run} (step {step})", False


def _thinking(model, args) -> tuple[bool, int]:
    """Whether the thought chain runs, and its thoughts per token (--thoughts, else as trained).
    The model's config stays as trained: the count is handed to scoring and generation."""
    think = model.heads is not None and not args.no_think
    if not think:
        return False, 0
    return True, model.think_cfg.n_thoughts if args.thoughts is None else args.thoughts


def _fit_prompt(ids, gen, err, quiet_json: bool):
    room = gen.room - 1  # at least one token to generate
    if len(ids) > room:
        if not quiet_json:
            err.print(
                f"[yellow]note:[/] prompt has {len(ids)} tokens; keeping the newest {room} (context {gen.n_positions})"
            )
        ids = ids[-room:]
    return ids


def score_ids(model, tok, args, think, n_thoughts) -> list[int]:
    """--score's tokens, checked against the context (before anything else is printed)."""
    from silentstar_jax.generation import context_room

    ids = tok.encode(args.score)
    if len(ids) < 2:
        raise UserError("--score needs a text of at least two tokens")
    n_pos = context_room(model, think, n_thoughts)
    if len(ids) > n_pos:
        raise UserError(f"--score text has {len(ids)} tokens; at most {n_pos} fit the context")
    return ids


def score_records(s: dict, ids: list[int], tok, think: bool) -> list[dict]:
    """One record per scored token, in generation's JSON schema (display.event_json) plus its position."""
    from silentstar_jax.display import event_json
    from silentstar_jax.generation import TokenEvent

    per_pos = [k for k in ("mix_weight", "value", "lens_id", "lens_p", "cos_id", "cos", "norm") if k in s]
    records = []
    for i in range(len(ids) - 1):
        e = TokenEvent(
            i, ids[i + 1], float(s["logprob"][i]), float(s["logprob_base"][i]), {k: s[k][i] for k in per_pos}
        )
        rec = {"pos": i + 1, **event_json(e, tok, think), "mix_weight": float(s["mix_weight"][i])}
        del rec["step"]
        records.append(rec)
    return records


def _plot(records, args, desc: str, what: str, err) -> None:
    from silentstar_jax.trace_plot import plot_trace

    plot_trace(records, args.plot, f"{what} — {desc}")
    if not args.json:
        err.print(f"[dim]thought trace drawn to {args.plot}[/]")


def run_score(model, tok, ids, args, think, n_thoughts, out, err=None, desc=""):
    from silentstar_jax.display import coloured_text, legend
    from silentstar_jax.generation import score

    traced = think and (args.json or args.plot)  # the coloured text view needs no trace
    s = score(model, ids, think, n_thoughts if think else None, args.show_thoughts if traced else 0)
    records = score_records(s, ids, tok, think) if args.json or args.plot else None
    if args.plot:
        _plot(records, args, desc, f"scored {args.score!r}", err)
    if args.json:
        for rec in records:
            print(json.dumps(rec))
        return
    deltas = s["logprob"] - s["logprob_base"]
    pieces = [(tok.token_str(ids[0]), 0.0)] + [
        (tok.token_str(ids[i + 1]), float(deltas[i])) for i in range(len(ids) - 1)
    ]
    out.print(coloured_text(pieces))
    out.print(legend())
    out.print(
        f"total log p: with thinking {s['logprob'].sum():.3f}, without {s['logprob_base'].sum():.3f}, "
        f"gain {deltas.sum():+.3f} nats over {len(ids) - 1} tokens; mean mix weight "
        f"{s['mix_weight'].mean():.3f}"
    )


def run_score_file(model, tok, args, think, n_thoughts, out, err, desc) -> None:
    """--score-file: the gain table (--json: as one object) and, with --plot, the coloured first document."""
    from silentstar_jax import token_gain as tg
    from silentstar_jax.generation import context_room

    docs = tg.read_documents(args.score_file)
    table, first = tg.analyse(model, tok, docs, n_thoughts, context_room(model, think, n_thoughts))
    if args.plot:
        pieces, n = [], 0
        for text, d in first:
            if n + len(text) > args.plot_chars:
                break
            pieces.append((text, d))
            n += len(text)
        tg.plot_coloured_text(
            pieces, args.plot, f"Δ log-prob, thinking − own base: {os.path.basename(args.score_file)} — {desc}"
        )
        if not args.json:
            err.print(f"[dim]coloured text drawn to {args.plot}[/]")
    if args.json:
        print(json.dumps({"file": args.score_file, "documents": len(docs), "n_thoughts": n_thoughts, **table}))
        return
    out.print(tg.table_markdown(table), markup=False)


@contextlib.contextmanager
def _sigint_handler(handler):
    """SIGINT goes to `handler` inside the block, the previous handler after it; only the main thread
    can change handlers, elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


@contextlib.contextmanager
def ctrl_c_sets_flag():
    """While generating, Ctrl-C only sets the yielded flag, which the token loop reads between tokens.
    A KeyboardInterrupt raised wherever the main thread happens to be can land inside JAX's lazy
    imports or first compilation and leave them half done: the next generation then dies ("Dialect
    namespace 'mhlo' is already registered"). So a long compile finishes, then the loop stops.
    The previous handler (KeyboardInterrupt, for the prompt) is back on exit."""
    stop = threading.Event()
    with _sigint_handler(lambda *_: stop.set()):
        yield stop


def generate_once(gen, tok, prompt: str, args, think, out, err, desc: str = "") -> None:
    with ctrl_c_sets_flag() as stop:
        events = _generate_once(gen, tok, prompt, args, think, out, err, stop)
    if args.plot:
        from silentstar_jax.display import event_json

        _plot([event_json(e, tok, think) for e in events], args, desc, f"prompt {prompt!r}", err)


def _generate_once(gen, tok, prompt: str, args, think, out, err, stop) -> list:
    from rich.text import Text

    from silentstar_jax.display import coloured_text, event_json, legend, printable, render_event

    ids = _fit_prompt(tok.encode(_check_text(prompt, "the prompt")), gen, err, args.json)
    if not ids:
        raise UserError("the prompt encodes to no tokens")
    events = []
    t_mark = []  # steady-state tokens/s: the first two calls compile
    stream = gen.stream(ids, args.max_new_tokens, seed=args.seed, stop_id=tok.eos_id)
    status = None if (args.json or args.quiet) else out.status("Thinking…" if think else "Generating…")
    try:
        if status is not None:
            status.start()
        for e in stream:
            events.append(e)
            if len(t_mark) < 2:
                t_mark.append(time.perf_counter())
            if args.json:
                print(json.dumps(event_json(e, tok, think)), flush=True)
            elif args.quiet:
                out.print(printable(tok.token_str(e.token_id)), end="", markup=False, highlight=False)
            else:
                status.stop()
                render_event(out, e, tok, think, args.show_thoughts)
                status.start()
            if stop.is_set():
                break
    finally:
        if status is not None:
            status.stop()
    if stop.is_set():
        (err if args.json else out).print("\n[dim](stopped)[/]")
    # the rate of the tokens after the first two (which compile); undefined for 2 tokens or fewer
    tps = (len(events) - 2) / max(time.perf_counter() - t_mark[-1], 1e-9) if len(events) > 2 else None
    text = tok.decode([e.token_id for e in events])
    if args.json:
        print(json.dumps({"text": text, "tokens_per_second": tps}), flush=True)
    elif args.quiet:
        out.print()
    else:
        pieces = [(tok.token_str(e.token_id), e.logprob - e.logprob_base) for e in events]
        out.print(Text.assemble(Text(printable(prompt), style="dim"), coloured_text(pieces)))
        if think:
            out.print(legend())
        rate = f", {tps:.1f} tokens/s" if tps is not None else ""
        out.print(f"[dim]{len(events)} token{'s' if len(events) != 1 else ''}{rate}[/]")
    return events


def ctrl_c_interrupts():
    """Ctrl-C raises KeyboardInterrupt, even in a process started with SIGINT ignored (what a
    non-interactive shell does to a background job, inherited by its children): the prompt promises
    that Ctrl-C stops a generation and asks again."""
    return _sigint_handler(signal.default_int_handler)


def prompt_loop(gen, tok, args, think, out, err) -> None:
    with ctrl_c_interrupts():
        _prompt_loop(gen, tok, args, think, out, err)


def _prompt_loop(gen, tok, args, think, out, err) -> None:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    out.print("[bold]SilentSTaR[/] — type a prompt; Ctrl-C stops a generation; Ctrl-D, 'quit' or 'exit' leave.")
    while True:
        try:
            prompt = input("prompt> ")
        except EOFError:
            out.print()
            return
        except KeyboardInterrupt:
            out.print()
            continue
        except UnicodeDecodeError:
            err.print("error: the prompt is not valid UTF-8 text")
            continue
        if prompt.strip() in ("quit", "exit"):
            return
        if not prompt.strip():
            continue
        try:
            generate_once(gen, tok, prompt, args, think, out, err)
        except UserError as e:
            err.print(f"error: {e}", markup=False, highlight=False)
        except KeyboardInterrupt:  # in the instants around the generation, where JAX is not running
            out.print("\n[dim](stopped)[/]")


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    sampling = _check_args(args)
    from rich.console import Console

    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    from silentstar_jax.generation import Generator

    model, tok, desc, fresh_heads = load_model(args)
    think, n_thoughts = _thinking(model, args)
    args.show_thoughts = min(args.show_thoughts, model.gpt2.cfg.vocab_size)
    # what does not fit the context fails here, before any other line is printed
    if args.score is not None:
        ids = score_ids(model, tok, args, think, n_thoughts)
    elif args.score_file is not None:
        if not think:
            raise UserError("--score-file compares the thinking path with its own base path: it needs a thinking run")
    else:
        gen = Generator(
            model,
            sampling,
            think=think,
            n_thoughts=n_thoughts if think else None,
            trace_top_k=args.show_thoughts if think else 0,
        )
    if fresh_heads:
        err.print(
            "[yellow]warning:[/] thinking parameters are freshly initialised (untrained): "
            "thinking starts at the plain model"
        )
    if not (args.json or args.quiet):
        thinking = f"{n_thoughts} thought(s) per token" if think else "off"
        err.print(f"[dim]model: {desc}; thinking: {thinking}[/]")
    if args.score is not None:
        return run_score(model, tok, ids, args, think, n_thoughts, out, err, desc)
    if args.score_file is not None:
        return run_score_file(model, tok, args, think, n_thoughts, out, err, desc)
    if args.prompt is not None:
        return generate_once(gen, tok, args.prompt, args, think, out, err, desc)
    if not sys.stdin.isatty() and args.json:
        raise UserError("give --prompt TEXT with --json")
    prompt_loop(gen, tok, args, think, out, err)


run = entry_point(main)  # console script, `python -m`, the script at the repo root


if __name__ == "__main__":
    run()

"""`python generate.py`: watch a latent-thinking model think, token by token.

With no arguments it loads the latest checkpoint of the most recent run under runs/ and opens a
prompt loop (Ctrl-C stops a generation, Ctrl-D / quit / exit leave). --prompt for one shot,
--json for machines, --score TEXT to see where thinking helped on a given text.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.sampling import SamplingConfig

TRAIN_HINT = "python train.py --config configs/tiny.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--checkpoint",
                     help="run directory or one checkpoint (default: latest run under --runs)")
    src.add_argument("--runs", default="runs", help="where to look for runs (default: runs)")
    src.add_argument("--init-from", help="HF GPT-2 directory or hub name (fresh, untrained thinking heads)")
    src.add_argument("--allow-pickle", action="store_true",
                     help="allow loading pytorch_model.bin (runs pickle)")
    p.add_argument("--prompt", help="generate once for this prompt (no prompt loop)")
    p.add_argument("--score", metavar="TEXT", help="teacher-forced scoring of TEXT: where did thinking help?")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-think", action="store_true", help="plain GPT-2 path, no thought chain")
    p.add_argument("--thoughts", type=int, help="thought steps per token (default: as trained)")
    p.add_argument("--show-thoughts", type=int, default=3, metavar="K",
                   help="top-K tokens shown per thought")
    p.add_argument("--quiet", action="store_true", help="text only")
    p.add_argument("--json", action="store_true", help="one JSON object per token, then a summary line")
    return p


def _check_args(args) -> SamplingConfig:
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    if not args.greedy and args.temperature <= 0:
        raise UserError("--temperature must be > 0 (use --greedy for argmax decoding)")
    if args.top_k < 0:
        raise UserError("--top-k must be >= 0")
    if not 0 < args.top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    if args.thoughts is not None and args.thoughts < 0:
        raise UserError("--thoughts must be >= 0")
    if args.show_thoughts < 1:
        raise UserError("--show-thoughts must be >= 1")
    return SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p)


def load_model(args, err):
    """SilentStar (or plain GPT2 wrapped), tokenizer, description."""
    from flax import nnx
    from silentstar_jax.config import ThinkingConfig
    from silentstar_jax.model import SilentStar
    from silentstar_jax.tokenizer import load_tokenizer
    from silentstar_jax.trainer import latest_run, load_run
    if args.init_from:
        from silentstar_jax.hf import load_gpt2
        gpt2, path = load_gpt2(args.init_from, allow_pickle=args.allow_pickle)
        model = SilentStar(gpt2.cfg, ThinkingConfig(enabled=not args.no_think), rngs=nnx.Rngs(args.seed),
                           gpt2=gpt2)
        if not args.no_think:
            err.print("[yellow]warning:[/] thinking parameters are freshly initialised (untrained): "
                      "thinking starts at the plain model")
        return model, load_tokenizer(path), args.init_from
    run = args.checkpoint or latest_run(args.runs)
    if run is None:
        raise UserError(f"no trained run found under {args.runs}/; train one with: {TRAIN_HINT}")
    model, tok, _, step = load_run(run)
    return model, tok, f"{run} (step {step})"


def _thinking(model, args) -> tuple[bool, int]:
    """Whether the thought chain runs, and its thoughts per token (--thoughts, else as trained).
    The model's config stays as trained: the count is handed to scoring and generation."""
    think = model.heads is not None and not args.no_think
    if not think:
        return False, 0
    return True, model.think_cfg.n_thoughts if args.thoughts is None else args.thoughts


def _fit_prompt(ids, gen, err, quiet_json: bool):
    room = gen.n_positions - gen.chain_len - 1
    if len(ids) > room:
        if not quiet_json:
            err.print(f"[yellow]note:[/] prompt has {len(ids)} tokens; keeping the newest {room} (context "
                      f"{gen.n_positions})")
        ids = ids[-room:]
    return ids


def run_score(model, tok, args, think, n_thoughts, out):
    from silentstar_jax.display import coloured_text, legend
    from silentstar_jax.generation import score
    ids = tok.encode(args.score)
    if len(ids) < 2:
        raise UserError("--score needs a text of at least two tokens")
    chain = dataclasses.replace(model.think_cfg, n_thoughts=n_thoughts).n_steps if think else 0
    n_pos = model.gpt2.cfg.n_positions - chain
    if len(ids) > n_pos:
        raise UserError(f"--score text has {len(ids)} tokens; at most {n_pos} fit the context")
    s = score(model, ids, think, n_thoughts if think else None)
    if args.json:
        for i in range(len(ids) - 1):
            print(json.dumps({"pos": i + 1, "token_id": ids[i + 1], "token": tok.token_str(ids[i + 1]),
                              "logprob": float(s["logprob"][i]),
                              "logprob_base": float(s["logprob_base"][i]),
                              "mix_weight": float(s["mix_weight"][i])}))
        return
    deltas = s["logprob"] - s["logprob_base"]
    pieces = [(tok.token_str(ids[0]), 0.0)] + [(tok.token_str(ids[i + 1]), float(deltas[i]))
                                               for i in range(len(ids) - 1)]
    out.print(coloured_text(pieces))
    out.print(legend())
    out.print(f"total log p: with thinking {s['logprob'].sum():.3f}, without {s['logprob_base'].sum():.3f}, "
              f"gain {deltas.sum():+.3f} nats over {len(ids) - 1} tokens; mean mix weight "
              f"{s['mix_weight'].mean():.3f}")


def generate_once(gen, tok, prompt: str, args, think, out, err) -> None:
    from rich.text import Text
    from silentstar_jax.display import coloured_text, event_json, legend, render_event
    ids = _fit_prompt(tok.encode(prompt), gen, err, args.json)
    if not ids:
        raise UserError("the prompt encodes to no tokens")
    events = []
    t_mark = []                                      # steady-state tokens/s: the first two calls compile
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
                out.print(tok.token_str(e.token_id), end="", markup=False, highlight=False)
            else:
                status.stop()
                render_event(out, e, tok, think, args.show_thoughts)
                status.start()
    except KeyboardInterrupt:
        if status is not None:
            status.stop()
        out.print("\n[dim](stopped)[/]")
    finally:
        if status is not None:
            status.stop()
    tps = (len(events) - 2) / max(time.perf_counter() - t_mark[-1], 1e-9) if len(events) > 2 else 0.0
    text = tok.decode([e.token_id for e in events])
    if args.json:
        print(json.dumps({"text": text, "tokens_per_second": tps}), flush=True)
    elif args.quiet:
        out.print()
    else:
        pieces = [(tok.token_str(e.token_id), e.logprob - e.logprob_base) for e in events]
        out.print(Text.assemble(Text(prompt, style="dim"), coloured_text(pieces)))
        if think:
            out.print(legend())
        out.print(f"[dim]{len(events)} tokens, {tps:.1f} tokens/s[/]")


def prompt_loop(gen, tok, args, think, out, err) -> None:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    out.print("[bold]SilentSTaR[/] — type a prompt; Ctrl-C stops a generation; "
              "Ctrl-D, 'quit' or 'exit' leave.")
    while True:
        try:
            prompt = input("prompt> ")
        except EOFError:
            out.print()
            return
        except KeyboardInterrupt:
            out.print()
            continue
        if prompt.strip() in ("quit", "exit"):
            return
        if not prompt.strip():
            continue
        try:
            generate_once(gen, tok, prompt, args, think, out, err)
        except UserError as e:
            err.print(f"error: {e}")
        except KeyboardInterrupt:
            out.print("\n[dim](stopped)[/]")


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    sampling = _check_args(args)
    from rich.console import Console
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    from silentstar_jax.generation import Generator
    model, tok, desc = load_model(args, err)
    think, n_thoughts = _thinking(model, args)
    if not (args.json or args.quiet):
        thinking = f"{n_thoughts} thought(s) per token" if think else "off"
        err.print(f"[dim]model: {desc}; thinking: {thinking}[/]")
    if args.score is not None:
        return run_score(model, tok, args, think, n_thoughts, out)
    gen = Generator(model, sampling, think=think, n_thoughts=n_thoughts if think else None,
                    trace_top_k=args.show_thoughts if think else 0)
    if args.prompt is not None:
        return generate_once(gen, tok, args.prompt, args, think, out, err)
    if not sys.stdin.isatty() and args.json:
        raise UserError("give --prompt TEXT with --json")
    prompt_loop(gen, tok, args, think, out, err)

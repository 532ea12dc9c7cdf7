"""`python generate.py`: generate text from a GPT-2 checkpoint (HF directory or hub name)."""
from __future__ import annotations

import argparse
import json
import sys

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.sampling import SamplingConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__)
    p.add_argument("--init-from", help="HF GPT-2 directory or hub name (e.g. gpt2)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pytorch_model.bin (runs pickle)")
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--greedy", action="store_true", help="argmax decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
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
    return SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    sampling = _check_args(args)
    if not args.init_from:
        raise UserError("give --init-from PATH_OR_HUB_NAME")
    if args.prompt is None:
        raise UserError("give --prompt TEXT")

    from silentstar_jax.generation import Generator
    from silentstar_jax.hf import load_gpt2
    from silentstar_jax.tokenizer import load_tokenizer

    model, path = load_gpt2(args.init_from, allow_pickle=args.allow_pickle)
    tok = load_tokenizer(path)
    ids = tok.encode(args.prompt)
    gen = Generator(model, sampling)
    events, tps = gen.generate(ids, args.max_new_tokens, seed=args.seed)
    out_ids = [e.token_id for e in events]
    text = tok.decode(out_ids)
    if args.json:
        for e in events:
            print(json.dumps({"step": e.step, "token_id": e.token_id, "token": tok.token_str(e.token_id),
                              "logprob": e.logprob, "logprob_base": e.logprob_base}))
        print(json.dumps({"text": text, "tokens_per_second": tps}))
    else:
        print(args.prompt + text)
        print(f"[{len(events)} tokens, {tps:.1f} tokens/s]", file=sys.stderr)

"""`python bench.py`: training / generation speed report (see silentstar_jax/benchmark.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.runtime import entry_point


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__)
    p.add_argument(
        "--preset", default="cpu", help="cpu (4 layers, d 256, T 128, batch 16) or gpt2-small (124M, T 1024, bf16)"
    )
    p.add_argument("--config", help="take the shape from a training config instead (model.* and train.*)")
    p.add_argument("--thoughts", default="0,2,4,8", help="comma-separated thought counts")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="override the compute dtype")
    p.add_argument("--batch", type=int, help="override the batch size")
    p.add_argument(
        "--chain",
        default="scan,unrolled",
        help="chain implementations to time: scan, scan:C (thinking.unroll=C), unrolled; anchored (written out): "
        "residual, sequence",
    )
    p.add_argument(
        "--compare-dtype",
        default="bfloat16",
        help="also time the plain step in this dtype ('' to skip); compare with the main dtype",
    )
    p.add_argument(
        "--variable-n",
        type=int,
        default=0,
        metavar="N",
        help="also time the variable-count step (counts 0..N in one program) running the "
        "smallest positive --thoughts count (0: skip)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="K",
        help="also time K seeds of each thought count in one vmapped step (1: skip)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gen-tokens", type=int, default=256, help="tokens generated per timing (0: skip)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    a = p.parse_args(argv)
    from silentstar_jax.benchmark import PRESETS, Shape, format_report, run_benchmarks

    if a.config:
        from silentstar_jax.config import load_config

        c = load_config(a.config)
        m = c.model
        shape = Shape(c.train.batch_size, c.train.seq_len + 1, m.n_layer, m.n_embd, m.n_head, m.vocab_size, m.dtype)
    elif a.preset in PRESETS:
        shape = PRESETS[a.preset]
    else:
        raise UserError(f"unknown preset {a.preset!r}; choose one of {', '.join(PRESETS)}")
    if a.dtype:
        shape = dataclasses.replace(shape, dtype=a.dtype)
    if a.batch:
        shape = dataclasses.replace(shape, batch=a.batch)
    try:
        thoughts = [int(x) for x in a.thoughts.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--thoughts must be comma-separated integers, got {a.thoughts!r}") from None
    chains = tuple(x.strip() for x in a.chain.split(",") if x.strip())
    if not chains or not all(re.fullmatch(r"unrolled|residual|sequence|scan(:[1-9][0-9]*)?", c) for c in chains):
        raise UserError(f"--chain must list scan, scan:C (C >= 1), unrolled, residual and/or sequence, got {a.chain!r}")
    if a.compare_dtype not in ("", "float32", "bfloat16"):
        raise UserError(f"--compare-dtype must be float32, bfloat16 or '', got {a.compare_dtype!r}")
    log = (lambda msg: print(msg, file=sys.stderr)) if a.json else print
    report = run_benchmarks(
        shape,
        thoughts,
        rounds=a.rounds,
        gen_tokens=a.gen_tokens,
        chains=chains,
        other_dtype=a.compare_dtype or None,
        variable_n=a.variable_n,
        seeds=a.seeds,
        log=log,
    )
    report["command"] = "python bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(report) if a.json else "\n" + format_report(report))


run = entry_point(main)  # console script, `python -m`, the script at the repo root


if __name__ == "__main__":
    run()

"""`python export.py --checkpoint runs/NAME [--out DIR] [--force]`: a trained run's GPT-2 for `transformers`.

Writes config.json + model.safetensors (+ the tokenizer's files when it is a Hugging Face tokenizer)
that `transformers.GPT2LMHeadModel.from_pretrained(DIR)` loads: the base model, whose logits are the
run's plain GPT-2 path. The thinking heads (start/end/pause embeddings, thought projection, mixing
and value heads) have no counterpart in GPT-2 and are not exported.
"""

from __future__ import annotations

import argparse
import os

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.runtime import entry_point

TRAIN_HINT = "python train.py --config configs/tiny.yaml"
EXPORT_SUBDIR = "hf"  # default --out: RUN/hf
NOT_EXPORTED = "start/end/pause embeddings, thought projection, mixing and value heads"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="run directory or one checkpoint (default: latest run under --runs)")
    p.add_argument("--runs", default="runs", help="where to look for runs (default: runs)")
    p.add_argument("--out", help=f"output directory (default: RUN/{EXPORT_SUBDIR})")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    return p


def check_out_dir(out: str, force: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise UserError(f"--out {out}: directory exists and is not empty (--force writes into it)")


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from silentstar_jax.loading import latest_run, load_run, resolve_checkpoint

    run = args.checkpoint or latest_run(args.runs)
    if run is None:
        raise UserError(f"no trained run found under {args.runs}/; train one with: {TRAIN_HINT}")
    out = args.out or os.path.join(resolve_checkpoint(run)[0], EXPORT_SUBDIR)
    check_out_dir(out, args.force)
    model, tok, _, step = load_run(run)
    from silentstar_jax.fs import staged
    from silentstar_jax.hf import export_gpt2

    with staged(out, f"the export of {run} (step {step})", is_dir=True) as tmp:  # --out: whole or untouched
        export_gpt2(model.gpt2, tmp, tok)
    saved_tok = os.path.isfile(os.path.join(out, "tokenizer_config.json"))
    tok_note = "with its tokenizer" if saved_tok else f"without tokenizer files ({tok.name} tokenizer)"
    print(
        f"wrote {out}: the base GPT-2 of {run} (step {step}) for transformers' "
        f"GPT2LMHeadModel.from_pretrained, {tok_note}; the thinking heads ({NOT_EXPORTED}) "
        "are not part of the exported model"
    )


run = entry_point(main)  # console script, `python -m`, the script at the repo root


if __name__ == "__main__":
    run()

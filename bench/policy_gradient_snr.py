"""The policy gradient's signal-to-noise for a run or a config (silentstar_jax/policy_snr.py): per
batch, the cosine between REINFORCE's estimate of the gradient through the thoughts and the pathwise
gradient of the same objective through the same samples, on the thought projection P and on every
parameter; and two REINFORCE estimates' agreement with each other.

    python bench/policy_gradient_snr.py --checkpoint runs/hops --batches 16        # a trained run
    python bench/policy_gradient_snr.py --config configs/hops.yaml thinking.n_samples=8 thinking.baseline=group_mean
    python bench/policy_gradient_snr.py ... --json                                # + one JSON line

The run's (or config's) baseline, samples per position and clipping are used;
its estimator is not (both gradients are computed). Prints a table: mean (std) over batches, and the
cosine of the batch means.
"""

from __future__ import annotations

import argparse
import json
import os

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.runtime import entry_point


def build_parser():
    p = argparse.ArgumentParser(
        prog="policy_gradient_snr.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", help="a run directory: its config and latest parameters")
    p.add_argument("--config", help="a config (fresh parameters from run.seed)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--batches", type=int, default=16, help="training batches to measure on (default 16)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    return p


@cli_main
def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    if (args.checkpoint is None) == (args.config is None):
        raise UserError("give one of --checkpoint RUN or --config FILE")
    if args.batches < 1:
        raise UserError("--batches must be >= 1")
    import itertools

    from flax import nnx

    from silentstar_jax import config as C
    from silentstar_jax.data import build_data
    from silentstar_jax.loading import load_run
    from silentstar_jax.model import build_model
    from silentstar_jax.policy_snr import gradient_agreement
    from silentstar_jax.tokenizer import tokenizer_for
    from silentstar_jax.train_step import n_think_positions
    from silentstar_jax.trainer import resolved_model_config

    if args.checkpoint:
        model, tok, cfg, step = load_run(args.checkpoint)
        if args.overrides:  # e.g. another reward or baseline for the same parameters
            cfg = C.load_config(os.path.join(args.checkpoint, "config.yaml"), args.overrides)
        what = f"{args.checkpoint} (step {step})"
    else:
        cfg = resolved_model_config(C.load_config(args.config, args.overrides))
        tok = tokenizer_for(cfg)
        model, what = build_model(cfg, tok), f"{args.config} (fresh parameters)"
    params = nnx.split(model)[1].to_pure_dict()
    data, _ = build_data(cfg, tok)
    t = cfg.thinking
    q = n_think_positions(data.rows, t.n_ahead) if t.think_at == "targets" and hasattr(data, "rows") else 0
    try:
        res = gradient_agreement(cfg, tok, params, list(itertools.islice(data, args.batches)), q, args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(
        f"{what}: baseline {t.baseline}, K={t.n_samples}, clip_negative="
        f"{t.clip_negative_advantages}; {res['batches']} batches"
    )
    print(f"{'parameters':<12}{'cos(RF, PW)':>16}{'cos(RF, RF2)':>16}{'|RF|/|PW|':>14}{'cos of means':>14}")
    for name, label in (("P", "projection"), ("all", "all")):
        cell = lambda m: f"{res[f'{m}_{name}']['mean']:+.3f} ({res[f'{m}_{name}']['std']:.3f})"
        print(
            f"{label:<12}{cell('cos'):>16}{cell('self'):>16}{res[f'norm_ratio_{name}']['mean']:>14.3g}"
            f"{res[f'cos_of_means_{name}']:>+14.3f}"
        )
    if args.json:
        print(json.dumps({"source": what, **res}))


if __name__ == "__main__":
    entry_point(main)()

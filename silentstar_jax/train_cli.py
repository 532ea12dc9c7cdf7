"""`python train.py --config configs/NAME.yaml [--arm nothink|pause] [key=value ...] [--eval-only]`."""

from __future__ import annotations

import argparse

from silentstar_jax.errors import cli_main
from silentstar_jax.runtime import entry_point


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__)
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the latest checkpoint of the run")
    p.add_argument(
        "--thoughts",
        default=None,
        metavar="N[,N...]",
        help="with --eval-only: evaluate with N thoughts (test-time scaling), each written to eval_thoughts_N.json",
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="S[,S...]",
        help="train these run.seed values together in one program (one device), each in run.out_dir/seed<S>",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="train the run directory from step 0: its earlier records and checkpoints are moved "
        "to run.out_dir/archive/<time>/ (without it, a directory with records is resumed or refused)",
    )
    p.add_argument(
        "--arm",
        default=None,
        metavar="nothink|pause",
        help="train a control of the config as experiment.py derives it: nothink (thinking disabled) or "
        "pause (pause thoughts, same compute), in run.out_dir-<arm>",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=20 mesh.data=4")
    args = p.parse_intermixed_args(argv)  # flags and key=value overrides in any order
    if args.arm is not None:
        from silentstar_jax.experiment.plan import arm_config

        cfg = arm_config(args.config, args.overrides, args.arm)
    else:
        from silentstar_jax.config import load_config

        cfg = load_config(args.config, args.overrides)

    if cfg.mesh.distributed:
        from silentstar_jax.runtime import init_distributed

        init_distributed()
    from rich.console import Console

    from silentstar_jax.errors import UserError
    from silentstar_jax.trainer import Run

    console = Console(stderr=True)
    counts = _thought_counts(args.thoughts, args.eval_only, cfg) if args.thoughts is not None else [None]
    if args.seeds is not None:
        if args.eval_only:
            raise UserError("--seeds trains; evaluate each run.out_dir/seed<S> with --eval-only on its own")
        from silentstar_jax.seeds import SeedGroup, seed_configs

        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--seeds: expected seeds like 0,1,2, got {args.seeds!r}") from None
        SeedGroup(seed_configs(cfg, seeds)).train(console, restart=args.restart)
        return
    if args.eval_only and args.restart:
        raise UserError("--restart trains from step 0; --eval-only evaluates what is there: use one")
    run = Run(cfg)
    if args.eval_only:
        try:
            if not run.restore_latest():
                raise UserError(f"{cfg.run.out_dir}: no checkpoint to evaluate")
            from silentstar_jax.evaluate import make_eval_fn

            for n in counts:  # one process, one restore; one compiled evaluation per count
                run.eval_fn = make_eval_fn(run.graphdef, n)
                run.finish_eval(console, name="eval.json" if n is None else f"eval_thoughts_{n}.json")
        finally:
            run.ckpt.close()
        return
    run.train(console, restart=args.restart)


def _thought_counts(text: str, eval_only: bool, cfg) -> list[int]:
    """--thoughts 0,2,6 -> [0, 2, 6], each checked to fit the model's context."""
    from silentstar_jax.config import check_eval_thoughts
    from silentstar_jax.errors import UserError

    if not eval_only:
        raise UserError("--thoughts N is for --eval-only (training uses thinking.n_thoughts)")
    if not cfg.thinking.enabled:
        raise UserError("--thoughts: this run has thinking disabled")
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--thoughts: expected counts like 0,2,4, got {text!r}") from None
    for n in counts:
        check_eval_thoughts(cfg, n)
    return counts


run = entry_point(main)  # console script, `python -m`, the script at the repo root


if __name__ == "__main__":
    run()

"""`python experiment.py` (also `silentstar-experiment`, `python -m silentstar_jax.experiment.cli`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from silentstar_jax import experiment
from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.experiment.plan import int_list, parse_arms, parse_grid, plan_runs
from silentstar_jax.experiment.report import build_report, record_command
from silentstar_jax.experiment.runner import Runner
from silentstar_jax.runtime import entry_point


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (cli_main), no usage dump
        raise UserError(message)


@cli_main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = _Parser(
        prog="experiment.py", description=experiment.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="YAML config of the thinking run (see configs/)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--out", required=True, help="output directory (runs/ and the report go here)")
    p.add_argument("--arms", default="latent,pause,nothink", help="subset of latent,pause,nothink")
    p.add_argument("--grid", action="append", default=[], help="key=v1,v2 (repeatable; cross product)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (default 1)")
    p.add_argument(
        "--thoughts",
        help="test-time thought counts, checked up front (default 0..2x the trained n_thoughts, those that fit)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from OUT/runs, no training")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.steps=500")
    args = p.parse_intermixed_args(argv)
    command = shlex.join(["python", "experiment.py", *argv])
    failures: list[str] = []
    if not args.report_only:
        if not args.config or not args.seeds:
            raise UserError("--config and --seeds are required (unless --report-only)")
        if args.jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {args.jobs}")
        seeds = int_list(args.seeds, "--seeds")
        thoughts = int_list(args.thoughts, "--thoughts") if args.thoughts is not None else None
        specs = plan_runs(args.config, args.overrides, parse_arms(args.arms), parse_grid(args.grid), seeds, thoughts)
        os.makedirs(args.out, exist_ok=True)
        record_command(args.out, command)
        runner = Runner(args.config, args.overrides, args.out, thoughts, len(specs))
        failures = runner.run_all(specs, args.jobs)
    elif not os.path.isdir(os.path.join(args.out, "runs")):
        raise UserError(f"{args.out}: no runs/ directory to report on")
    build_report(args.out, command)
    print(f"report: {os.path.join(args.out, 'results.md')}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} run(s) failed: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


run = entry_point(main)  # console script, `python -m`, the script at the repo root


if __name__ == "__main__":
    run()

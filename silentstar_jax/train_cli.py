"""`python train.py --config configs/NAME.yaml [key=value ...] [--eval-only]`."""
from __future__ import annotations

import argparse

from silentstar_jax.errors import cli_main


@cli_main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__)
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the latest checkpoint of the run")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=20 mesh.data=4")
    args = p.parse_args(argv)
    from silentstar_jax.config import load_config
    cfg = load_config(args.config, args.overrides)

    if cfg.mesh.distributed:
        import jax
        jax.distributed.initialize()
    from rich.console import Console
    from silentstar_jax.errors import UserError
    from silentstar_jax.trainer import Run
    console = Console(stderr=True)
    run = Run(cfg)
    if args.eval_only:
        if not run.restore_latest():
            raise UserError(f"{cfg.run.out_dir}: no checkpoint to evaluate")
        run.finish_eval(console)
        run.ckpt.close()
        return
    run.train(console)

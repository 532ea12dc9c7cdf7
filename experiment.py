"""Train a thinking run, its controls, a grid and seeds, and report (see `python experiment.py --help`)."""

from silentstar_jax.experiment.cli import run

if __name__ == "__main__":
    run()

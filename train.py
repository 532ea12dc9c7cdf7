"""Train a SilentSTaR model (see `python train.py --help`)."""

from silentstar_jax.train_cli import run

if __name__ == "__main__":
    run()

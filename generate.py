"""Generate text (see `python generate.py --help`)."""

from silentstar_jax.generate_cli import run

if __name__ == "__main__":
    run()

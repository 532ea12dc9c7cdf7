"""Export a trained run's base GPT-2 for `transformers` (see `python export.py --help`)."""

from silentstar_jax.export_cli import run

if __name__ == "__main__":
    run()

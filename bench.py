"""Benchmark report: `python bench.py [--preset cpu|gpt2-small | --config configs/X.yaml] [--json]`."""

from silentstar_jax.bench_cli import run

if __name__ == "__main__":
    run()

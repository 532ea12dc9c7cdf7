"""Benchmark report: `python bench.py [--preset cpu|gpt2-small | --config configs/X.yaml] [--json]`."""
from silentstar_jax.runtime import tune_malloc

tune_malloc()   # before anything allocates: see runtime.py

from silentstar_jax.bench_cli import main  # noqa: E402

if __name__ == "__main__":
    main()

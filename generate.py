"""Generate text (see `python generate.py --help`)."""
from silentstar_jax.runtime import tune_malloc

tune_malloc()   # before anything allocates: see runtime.py

from silentstar_jax.generate_cli import main  # noqa: E402

if __name__ == "__main__":
    main()

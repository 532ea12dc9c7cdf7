"""Train a SilentSTaR model (see `python train.py --help`)."""
from silentstar_jax.runtime import tune_malloc

tune_malloc()   # before anything allocates: see runtime.py

from silentstar_jax.train_cli import main  # noqa: E402

if __name__ == "__main__":
    main()

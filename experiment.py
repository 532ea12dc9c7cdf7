"""Train a thinking run, its controls, a grid and seeds, and report (see `python experiment.py --help`)."""
from silentstar_jax.experiment import main

if __name__ == "__main__":
    main()

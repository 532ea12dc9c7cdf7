"""Generate text (see `python generate.py --help`)."""
from silentstar_jax.generate_cli import main

if __name__ == "__main__":
    main()

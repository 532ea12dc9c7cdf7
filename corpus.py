"""Write a task as text lines, and score a run at their answers (see `python corpus.py --help`)."""

from silentstar_jax.corpus import run

if __name__ == "__main__":
    run()

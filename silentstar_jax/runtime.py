"""Process set-up shared by the entry points."""

from __future__ import annotations

import ctypes
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
TUNED = False  # set once tune_malloc has applied its settings


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc only; SILENTSTAR_MALLOC=default to skip).

    XLA:CPU allocates its step's scratch buffers (hundreds of MiB) anew on every call. By default
    glibc serves each with a fresh mmap, which the kernel page-faults and zero-fills, then returns it
    on free (up to ~20% of a CPU training step in some runs, within the noise in others: README,
    Performance). With mmap off and trimming off the same pages are reused. The price: the process
    keeps its peak heap. Returns whether the setting was applied."""
    global TUNED
    if os.environ.get("SILENTSTAR_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        TUNED = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass
    return TUNED


def init_distributed() -> None:
    """jax.distributed.initialize for mesh.distributed=true, before anything touches a device.

    Cluster environments (SLURM, Open MPI, TPU pods) are detected by JAX itself. The explicit
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID recipe is read here and passed on:
    JAX reads only the address from the environment and stops with "Number of processes must be
    defined". Collectives between CPU processes go through gloo (no effect on GPU/TPU)."""
    import jax

    from silentstar_jax.errors import UserError

    kw: dict = {}
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kw["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        for arg, var in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if var not in env:
                raise UserError(f"mesh.distributed with JAX_COORDINATOR_ADDRESS also needs {var}")
            try:
                kw[arg] = int(env[var])
            except ValueError:
                raise UserError(f"{var} must be an integer, got {env[var]!r}") from None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kw)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"mesh.distributed: {str(e).strip().splitlines()[0][:200]}") from None


def entry_point(main):
    """The `run` of every command (`train.py`, `silentstar-train`, `python -m silentstar_jax.train_cli`):
    malloc tuned before anything allocates, then the command (its errors already one line: errors.cli_main)."""

    def run() -> None:
        tune_malloc()
        main()

    return run

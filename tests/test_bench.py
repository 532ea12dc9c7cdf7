"""bench.py's FLOP model (against XLA's own count), its warm-up (no compile is timed) and its command line."""

import jax
import jax.numpy as jnp
import pytest
from conftest import run_cli
from flax import nnx

from silentstar_jax import benchmark as bm
from silentstar_jax.config import ThinkingConfig
from silentstar_jax.model import SilentStar
from silentstar_jax.runtime import tune_malloc

SHAPE = bm.Shape(batch=2, seq=8, layers=2, d_model=64, heads=2, vocab=128)


def _xla_forward_flops(n, anchor="none"):
    tc = ThinkingConfig(enabled=False) if n is None else ThinkingConfig(n_thoughts=n, chain="unrolled", anchor=anchor)
    graphdef, state = nnx.split(SilentStar(SHAPE.model_config(4), tc, rngs=nnx.Rngs(0)))
    fwd = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t))
    cost = fwd.lower(state, jnp.zeros((SHAPE.batch, SHAPE.seq), jnp.int32)).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_flop_ratios_match_xla_cost_analysis():
    """The ideal thinking/plain FLOP ratio the bench divides by agrees with XLA's count of the
    compiled forward (unrolled chain: XLA counts a scan body once, not per step)."""
    plain = _xla_forward_flops(None)
    for n, anchor in ((0, "none"), (3, "none"), (3, "sequence")):
        ours = bm.ideal_flops(SHAPE, n, anchor=anchor) / bm.ideal_flops(SHAPE, None)
        xla = _xla_forward_flops(n, anchor) / plain
        assert abs(ours / xla - 1) < 0.05, (n, anchor, ours, xla)


@pytest.mark.parametrize("n,n_seeds", [(None, 1), (1, 1), (1, 2)], ids=["plain", "thinking", "two-seed"])
def test_harness_step_compiles_once(n, n_seeds):
    """The step the bench times compiles on its first call only: the state it is given is placed as
    the step returns it (a second compile was timed as a step at --rounds 1 or 2)."""
    step, p, o = bm.train_step_fn(SHAPE, n, 1, n_seeds=n_seeds)
    with bm.Compiles() as c:
        for i in range(4):  # a warm-up and three more
            p, o, loss = step(p, o, i)
    assert c.names == ["jit(step)"], c.names


def test_warmup_runs_until_a_call_compiles_nothing():
    """Timer warms a callable up until a call compiles nothing, at most MAX_WARMUP_CALLS calls."""
    f = jax.jit(lambda x: x * 2)
    sizes = iter([1, 2, 2, 2])  # compiles on calls 1 and 2, not on call 3
    always = iter(range(1, 100))  # a new shape every call: never done compiling
    timer = bm.Timer()
    timer.add("settles", lambda: f(jnp.ones(next(sizes))).block_until_ready())
    timer.add("never", lambda: f(jnp.ones(100 + next(always))).block_until_ready())
    assert timer.warmup_calls == {"settles": 3, "never": bm.MAX_WARMUP_CALLS}
    assert timer.still_compiling == ["never"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--chain", "loop"], "--chain"),
        (["--chain", "scan:0"], "--chain"),
        (["--thoughts", "2,x"], "--thoughts"),
        (["--preset", "tpu"], "unknown preset"),
    ],
)
def test_bench_cli_errors(args, needle):
    proc = run_cli("bench.py", *args, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr.strip().splitlines()[-1]


def test_tune_malloc_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SILENTSTAR_MALLOC", "default")
    assert tune_malloc() is False

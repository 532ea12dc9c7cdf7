"""bench.py's FLOP model (against XLA's own count) and its command line."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import run_cli
from silentstar_jax import benchmark as bm
from silentstar_jax.config import ThinkingConfig
from silentstar_jax.model import SilentStar
from silentstar_jax.runtime import tune_malloc

SHAPE = bm.Shape(batch=2, seq=8, layers=2, d_model=64, heads=2, vocab=128)


def _xla_forward_flops(n):
    tc = ThinkingConfig(enabled=False) if n is None else ThinkingConfig(n_thoughts=n, chain="unrolled")
    graphdef, state = nnx.split(SilentStar(SHAPE.model_config(4), tc, rngs=nnx.Rngs(0)))
    fwd = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t))
    cost = fwd.lower(state, jnp.zeros((SHAPE.batch, SHAPE.seq), jnp.int32)).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_flop_ratios_match_xla_cost_analysis():
    """The ideal thinking/plain FLOP ratio the bench divides by agrees with XLA's count of the
    compiled forward (unrolled chain: XLA counts a scan body once, not per step)."""
    plain = _xla_forward_flops(None)
    for n in (0, 3):
        ours = bm.ideal_flops(SHAPE, n) / bm.ideal_flops(SHAPE, None)
        xla = _xla_forward_flops(n) / plain
        assert abs(ours / xla - 1) < 0.05, (n, ours, xla)


@pytest.mark.parametrize("args,needle", [(["--chain", "loop"], "--chain"), (["--chain", "scan:0"], "--chain"),
                                         (["--thoughts", "2,x"], "--thoughts"),
                                         (["--preset", "tpu"], "unknown preset")])
def test_bench_cli_errors(args, needle):
    proc = run_cli("bench.py", *args, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr.strip().splitlines()[-1]


def test_tune_malloc_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SILENTSTAR_MALLOC", "default")
    assert tune_malloc() is False

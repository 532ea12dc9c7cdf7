"""One benchmark report (`python bench.py`): training throughput and FLOP efficiency for n thoughts,
the cost of each thinking step against its FLOP-ideal ratio, compile time, compiled peak memory with
and without remat, and generation speed with and without thinking against recomputing the prefix.

Timings are interleaved in rounds (every configuration once per round, rotating order) so that a
noisy shared machine slows all alike; medians are reported. The device's own matmul FLOP/s
(fp32 on CPU, bf16 on GPU) is measured in the same run and is the reference for "of peak".
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from silentstar_jax import runtime
from silentstar_jax.config import ChainLayout, Config, MeshConfig, ModelConfig, OptimConfig, ThinkingConfig, TrainConfig
from silentstar_jax.model import SilentStar


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    seq: int
    layers: int
    d_model: int
    heads: int
    vocab: int
    dtype: str = "float32"

    def model_config(self, n_max: int, **kw) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab,
            n_positions=self.seq + n_max + 8,
            n_embd=self.d_model,
            n_layer=self.layers,
            n_head=self.heads,
            dtype=self.dtype,
            **kw,
        )


PRESETS = {
    "cpu": Shape(batch=16, seq=128, layers=4, d_model=256, heads=4, vocab=512),
    # GPT-2 small (124M) at T=1024; positions are extended past 1024 for the chain (random weights)
    "gpt2-small": Shape(batch=8, seq=1024, layers=12, d_model=768, heads=12, vocab=50257, dtype="bfloat16"),
}


def ideal_flops(s: Shape, n: int | None, A: int = 1, anchor: str = "none") -> float:
    """Forward FLOPs of one batch (training = 3x); n None = plain LM. Matmuls, attention (causal
    average T/2 keys; chain step i adds i+1 chain keys), LM heads, thinking heads. anchor: sequence:
    n more causal passes, the thought projection per pass, the final logits (token feedback's lens not counted)."""
    B, T, D, NL, V = s.batch, s.seq, s.d_model, s.layers, s.vocab
    mm = 2 * B * T * (D * 3 * D + D * D + 2 * D * 4 * D)
    att = lambda K: 2 * 2 * B * T * K * D
    f = NL * (mm + att(T / 2)) + 2 * B * T * D * V
    if n is None:
        return f
    if anchor == "sequence":
        f += n * (NL * (mm + att(T / 2)) + 2 * B * T * D * D) + 2 * B * T * D * V
        return f + 2 * B * T * (D * (D // 4) + D // 4)  # value head
    S = ChainLayout(n, A).n_steps
    f += sum(NL * (mm + att(T / 2 + i + 1)) for i in range(S))
    f += S * 2 * B * T * D * D  # thought projection
    f += A * (2 * B * T * (2 * D * D + D) + 2 * B * T * D * V)  # mixing head + mixed logits
    f += 2 * B * T * (D * (D // 4) + D // 4)  # value head
    return f


def _think_cfg(n: int | None, remat: bool, chain: str) -> ThinkingConfig:
    """chain: "scan", "scan:C" (C steps written out per scan iteration: thinking.unroll), "unrolled", or an
    anchored chain written out: "residual" (thinking.anchor: residual), "sequence" (anchor: sequence)."""
    if n is None:
        return ThinkingConfig(enabled=False)
    if chain in ("residual", "sequence"):
        return ThinkingConfig(n_thoughts=n, remat=remat, chain="unrolled", anchor=chain)
    kind, _, unroll = chain.partition(":")
    return ThinkingConfig(n_thoughts=n, remat=remat, chain=kind, unroll=int(unroll or 1))


def train_step_fn(
    s: Shape,
    n: int | None,
    n_max: int,
    remat: bool = False,
    chain: str = "scan",
    counts: list[int] | None = None,
    n_seeds: int = 1,
):
    """(step, initial params, opt state) for the trainer's own step (train_step.make_train_step:
    forward + backward + clipping + AdamW + the non-finite guard, donated) on one device; step(p, o, i).
    counts: the step holds a branch per thought count (thinking.n_thoughts_train) and is told to run
    n as data, as a variable-count training run does. n_seeds > 1: that many models stacked and
    trained by the vmapped step of `train.py --seeds` (seeds.make_multi_seed_step)."""
    from silentstar_jax.data import Batch
    from silentstar_jax.model import build_model
    from silentstar_jax.seeds import make_multi_seed_step, stack_seeds
    from silentstar_jax.sharding import (
        batch_sharding,
        decay_mask,
        make_mesh,
        opt_state_specs,
        param_labels,
        param_specs,
        shardings,
    )
    from silentstar_jax.train_step import init_state, make_optimizer, make_train_step

    tc = _think_cfg(n, remat, chain)
    if counts is not None:
        tc = dataclasses.replace(tc, n_thoughts_train=[counts[0], counts[-1]])
    cfg = Config(
        model=s.model_config(n_max, remat=remat),
        thinking=tc,
        optim=OptimConfig(lr=1e-4, warmup_steps=0, weight_decay=0.01),
        train=TrainConfig(steps=10**6, batch_size=s.batch, seq_len=s.seq - 1),
    )
    graphdef, state = nnx.split(build_model(cfg))
    params = state.to_pure_dict()
    tx, sched = make_optimizer(cfg, param_labels(state), decay_mask(state))
    mesh = make_mesh(MeshConfig(data=1, fsdp=1))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, s.vocab, (s.batch, s.seq), dtype=np.int32))
    ones = jnp.ones_like(tokens)
    batch = jax.device_put(Batch(tokens, ones, ones), batch_sharding(mesh))
    p_specs = param_specs(state, dict(mesh.shape))
    p_shard, o_shard = shardings(p_specs, mesh), shardings(opt_state_specs(tx, params, p_specs), mesh)
    params, opt = init_state(params, tx, p_shard, o_shard)
    if n_seeds > 1:
        step = make_multi_seed_step(graphdef, cfg, tx, sched, mesh, list(range(n_seeds)))
        params, opt = stack_seeds([(params, opt)] * n_seeds, mesh)
    else:
        step = make_train_step(graphdef, cfg, tx, sched, mesh, p_shard, o_shard)
    n_arg = jnp.int32(n or 0) if counts is not None else (n if tc.enabled else None)  # data, or static

    def run(p, o, i):
        p, o, metrics = step(p, o, batch, i, n_arg)
        return p, o, metrics["loss"]

    run.lower = lambda p, o, i: step.lower(p, o, batch, i, n_arg)
    return run, params, opt


def peak_memory_bytes(s: Shape, n: int, remat: bool, chain: str) -> int:
    """Temporary memory of the compiled training step (compiled.memory_analysis)."""
    step, p, o = train_step_fn(s, n, n, remat, chain)
    ma = step.lower(p, o, 0).compile().memory_analysis()
    return int(ma.temp_size_in_bytes) if ma is not None else -1


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring: one per XLA compile
MAX_WARMUP_CALLS = 5


class Compiles:
    """The XLA compilations while open, by function name ("jit(step)"): a call that compiles is
    timing the compiler, not the step."""

    def __enter__(self) -> Compiles:
        self.names: list[str] = []
        jax.monitoring.register_event_duration_secs_listener(self._record)
        return self

    def _record(self, event: str, secs: float, fun_name: str = "", **kw) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.names.append(fun_name)

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._record)


class Timer:
    """Callables timed in interleaved rounds; median seconds per call. Each is first warmed up until
    a call compiles nothing (at most MAX_WARMUP_CALLS calls): a second compile (a state that the
    step returns placed differently from how it came in) must not be timed as a step."""

    def __init__(self):
        self.fns: dict[str, Callable[[], None]] = {}
        self.times: dict[str, list[float]] = {}
        self.warmup_calls: dict[str, int] = {}
        self.still_compiling: list[str] = []  # names whose last warm-up call compiled (cap reached)

    def add(self, name: str, fn: Callable[[], None]) -> float:
        """Warm `fn` up; returns the seconds of its warm-up calls (compiles + steps)."""
        t = time.perf_counter()
        for calls in range(1, MAX_WARMUP_CALLS + 1):  # noqa: B007 - read after the loop
            with Compiles() as c:
                fn()
            if not c.names:
                break
        else:
            self.still_compiling.append(name)
        self.fns[name], self.times[name], self.warmup_calls[name] = fn, [], calls
        return time.perf_counter() - t

    def run(self, rounds: int, reps: dict[str, int]) -> dict[str, float]:
        names = list(self.fns)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                for _ in range(reps.get(name, 1)):
                    t = time.perf_counter()
                    self.fns[name]()
                    self.times[name].append(time.perf_counter() - t)
        return {k: statistics.median(v) for k, v in self.times.items()}


# square matmul that measures the device's peak: large enough to saturate it, small enough to be quick
MATMUL_PROBE_SIZE = {"gpu": 8192, "cpu": 1024}


def matmul_probe(dtype, size: int):
    x = jax.random.normal(jax.random.key(1), (size, size), dtype)
    w = jax.random.normal(jax.random.key(2), (size, size), dtype)
    f = jax.jit(jnp.dot)
    return (lambda: f(x, w).block_until_ready()), 2 * size**3


def generation_speeds(s: Shape, n: int, gen_tokens: int, rounds: int) -> tuple[dict, Timer]:
    """tokens/s: KV-cached no-think, KV-cached with n thoughts, and recomputing the whole prefix
    (every position thinking) per token as Quiet-STaR's evaluation did; the Timer that measured them."""
    from silentstar_jax.generation import Generator
    from silentstar_jax.sampling import SamplingConfig

    prompt = 8
    mc = ModelConfig(
        vocab_size=s.vocab,
        n_positions=prompt + gen_tokens + n + 4,
        n_embd=s.d_model,
        n_layer=s.layers,
        n_head=s.heads,
        dtype=s.dtype,
    )
    model = SilentStar(mc, ThinkingConfig(n_thoughts=n), rngs=nnx.Rngs(0))
    ids = list(range(1, prompt + 1))
    greedy = SamplingConfig(greedy=True)
    gens = {
        "generate no-think": Generator(model, greedy, think=False),
        f"generate n={n}": Generator(model, greedy, think=True),
    }
    P = prompt + gen_tokens
    graphdef, state = nnx.split(model)

    @jax.jit
    def full(tokens, mask, pos):
        logits = nnx.merge(graphdef, state)(tokens, mask).mixed_logits[0, :, 0]
        return jnp.argmax(logits[pos])

    def recompute(n_tok: int):
        toks = np.zeros((1, P), np.int32)
        toks[0, :prompt] = ids
        for i in range(n_tok):
            cur = prompt + i
            mask = (np.arange(P) < cur)[None].astype(np.int32)
            toks[0, cur] = int(full(jnp.asarray(toks), jnp.asarray(mask), cur - 1))

    timer, per = Timer(), {}
    for name, g in gens.items():
        timer.add(name, lambda g=g: g.generate(ids, gen_tokens))
        per[name] = gen_tokens
    n_re = max(gen_tokens // 16, 4)  # the baseline is slow: time fewer tokens, same context
    timer.add(f"recompute prefix n={n}", lambda: recompute(n_re))
    per[f"recompute prefix n={n}"] = n_re
    med = timer.run(rounds, {})
    return {k: per[k] / v for k, v in med.items()}, timer


def run_benchmarks(
    s: Shape,
    thoughts: list[int],
    rounds: int = 3,
    gen_tokens: int = 256,
    chains: tuple[str, ...] = ("scan", "unrolled"),
    other_dtype: str | None = None,
    variable_n: int = 0,
    seeds: int = 1,
    log: Callable[[str], None] = print,
) -> dict:
    """other_dtype: also time the plain LM step in this compute dtype (e.g. bf16 against fp32).
    variable_n = N: also time the variable-count step holding counts 0..N, running the smallest
    positive count of `thoughts` (compare with the fixed step of that count).
    seeds = K > 1: also time K seeds of each thought count in one vmapped step (first chain)."""
    gpu = jax.default_backend() == "gpu"
    mm_dtype = jnp.bfloat16 if gpu else jnp.float32
    timer, flops, warm_s = Timer(), {}, {}
    n_max = max(thoughts, default=0)
    configs = [("plain LM", s, None, "scan")]
    if other_dtype and other_dtype != s.dtype:
        configs.append((f"plain LM {other_dtype}", dataclasses.replace(s, dtype=other_dtype), None, "scan"))
    configs += [(f"n={n} {chain}", s, n, chain) for n in thoughts for chain in chains]
    counts = {}
    run_n = min([n for n in thoughts if n > 0], default=0)
    if variable_n and run_n and run_n <= variable_n:
        name = f"n={run_n} of 0..{variable_n} {chains[0]}"
        configs.append((name, s, run_n, chains[0]))
        counts[name] = list(range(variable_n + 1))
    n_seeds = {}
    if seeds > 1:
        for n in thoughts:
            name = f"n={n} {chains[0]} x{seeds} seeds"
            configs.append((name, s, n, chains[0]))
            n_seeds[name] = seeds
    pos_max = max(n_max, variable_n)  # every step gets the same position table
    for name, shape, n, chain in configs:
        step, p, o = train_step_fn(
            shape, n, pos_max, chain=chain, counts=counts.get(name), n_seeds=n_seeds.get(name, 1)
        )
        state = {"p": p, "o": o, "i": 0}

        def call(state=state, step=step):
            state["i"] += 1
            state["p"], state["o"], loss = step(state["p"], state["o"], state["i"])
            loss.block_until_ready()

        warm_s[name] = timer.add(name, call)
        flops[name] = 3 * ideal_flops(s, n, anchor=chain if chain == "sequence" else "none") * n_seeds.get(name, 1)
        log(f"{name}: warm-up {timer.warmup_calls[name]} call(s) (compile + steps) {warm_s[name]:.1f}s")
    size = MATMUL_PROBE_SIZE["gpu" if gpu else "cpu"]
    mm, mm_flops = matmul_probe(mm_dtype, size)
    timer.add("matmul", mm)
    med = timer.run(rounds, {"matmul": 5})
    peak = mm_flops / med.pop("matmul")
    plain = med["plain LM"]
    rows = {}
    for name, t in med.items():
        ideal = flops[name] / flops["plain LM"]
        rows[name] = {
            "ms_per_step": 1e3 * t,
            "tokens_per_s": s.batch * s.seq / t,
            "model_flop_per_s": flops[name] / t,
            "fraction_of_matmul_peak": flops[name] / t / peak,
            "time_ratio": t / plain,
            "flop_ratio": ideal,
            "time_over_flop_ratio": (t / plain) / ideal,
            "compile_s": max(warm_s[name] - timer.warmup_calls[name] * t, 0.0),  # each also ran a step
            "timed_calls": len(timer.times[name]),
            "warmup_calls": timer.warmup_calls[name],
        }
    memory = {}
    for chain in chains if thoughts else ():
        for remat in (False, True):
            memory[chain + (" + remat" if remat else "")] = peak_memory_bytes(s, n_max, remat, chain)
    gen, gen_calls = {}, {}
    if gen_tokens:
        gen, gen_timer = generation_speeds(s, max(thoughts, default=2) if thoughts else 2, gen_tokens, rounds)
        gen_calls = {k: len(v) for k, v in gen_timer.times.items()}
        timer.still_compiling += gen_timer.still_compiling
    for name in timer.still_compiling:
        log(f"warning: {name} still compiled on warm-up call {MAX_WARMUP_CALLS}; its timed calls may include compiles")
    return {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "shape": dataclasses.asdict(s),
        "matmul_peak_flop_per_s": peak,
        "matmul": f"{size}x{size} {jnp.dtype(mm_dtype).name}",
        "train": rows,
        "peak_memory_bytes": {"n": n_max, **memory},
        "generation_tokens_per_s": gen,
        "generation_timed_calls": gen_calls,
        "malloc_tuned": runtime.TUNED,
    }  # the entry points call runtime.tune_malloc


def format_report(r: dict) -> str:
    s = r["shape"]
    lines = [
        f"device: {r['backend']} ({r['device']}), jax {r['jax']}; "
        f"shape: {s['layers']} layers, d={s['d_model']}, "
        f"{s['heads']} heads, T={s['seq']}, batch {s['batch']}, vocab {s['vocab']}, {s['dtype']}; "
        f"malloc tuned: {'yes' if r.get('malloc_tuned') else 'no'}",
        f"measured matmul peak ({r['matmul']}): {r['matmul_peak_flop_per_s'] / 1e9:,.1f} GFLOP/s",
        "",
        f"{'training step':<20}{'ms/step':>9}{'tokens/s':>10}{'GFLOP/s':>10}{'of peak':>9}"
        f"{'time x':>8}{'FLOP x':>8}{'time/FLOP':>10}{'compile s':>10}{'warm-up':>8}{'timed':>6}",
    ]
    for name, x in r["train"].items():
        lines.append(
            f"{name:<20}{x['ms_per_step']:>9.1f}{x['tokens_per_s']:>10,.0f}"
            f"{x['model_flop_per_s'] / 1e9:>10.1f}{x['fraction_of_matmul_peak']:>9.1%}"
            f"{x['time_ratio']:>8.2f}{x['flop_ratio']:>8.2f}"
            f"{x['time_over_flop_ratio']:>10.2f}{x['compile_s']:>10.1f}"
            f"{x['warmup_calls']:>8}{x['timed_calls']:>6}"
        )
    m = r["peak_memory_bytes"]
    if len(m) > 1:
        lines += [
            "",
            f"compiled step temp memory, n={m['n']}: "
            + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in m.items() if k != "n"),
        ]
    if r["generation_tokens_per_s"]:
        lines += ["", f"{'generation (batch 1, greedy)':<32}{'tokens/s':>10}{'timed':>6}"]
        lines += [
            f"{k:<32}{v:>10,.1f}{r['generation_timed_calls'][k]:>6}" for k, v in r["generation_tokens_per_s"].items()
        ]
    lines += ["", "ms/step, tokens/s: median of the timed calls; warm-up: calls until one compiled nothing"]
    return "\n".join(lines)

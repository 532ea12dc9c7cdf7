"""The numbers the report shows: statistics over seeds, best grid point per arm, training FLOPs.

Every comparison is over seeds (mean, min, max; differences paired by seed), and arms are compared
best grid point against best grid point, so each arm gets the same search.
"""

from __future__ import annotations

from dataclasses import dataclass

from silentstar_jax import config as C
from silentstar_jax.experiment.plan import ARM_OVERRIDES
from silentstar_jax.experiment.records import RunRecord, metric


@dataclass(frozen=True)
class Stat:
    mean: float
    min: float
    max: float
    n: int


def stat(xs: list[float | None]) -> Stat | None:
    xs = [x for x in xs if x is not None]
    return Stat(sum(xs) / len(xs), min(xs), max(xs), len(xs)) if xs else None


def paired(a: dict[int, float], b: dict[int, float]) -> Stat | None:
    """a - b over the seeds both have: mean, per-seed min and max."""
    return stat([a[s] - b[s] for s in sorted(a) if s in b])


def think_fraction(cfg: C.Config) -> float:
    """Fraction of a block's positions that run a chain: 1, or with thinking.think_at=targets the
    trainer's static count Q (train_step.n_think_positions over the training rows) / (seq_len + 1)."""
    if not cfg.thinking.enabled or cfg.thinking.think_at != "targets":
        return 1.0
    from silentstar_jax.data import build_data
    from silentstar_jax.tokenizer import tokenizer_for
    from silentstar_jax.train_step import n_think_positions

    data, _ = build_data(cfg, tokenizer_for(cfg))
    if not hasattr(data, "rows"):  # the trainer then thinks at every position too
        return 1.0
    return n_think_positions(data.rows, cfg.thinking.n_ahead) / (cfg.train.seq_len + 1)


def trained_thoughts(cfg: C.Config) -> list[int]:
    t = cfg.thinking
    return list(range(t.n_thoughts_train[0], t.n_thoughts_train[1] + 1)) if t.n_thoughts_train else [t.n_thoughts]


def flops_per_token(cfg: C.Config) -> float:
    """Model FLOPs per token of one training step (forward + backward = 3x forward) from
    benchmark.ideal_flops on a block of seq_len + 1 tokens. Its chain part (every position thinking)
    is scaled by the fraction of positions thinking and by K sampled chains, and averaged over the
    thought counts drawn in training (thinking.n_thoughts_train)."""
    from silentstar_jax.benchmark import Shape, ideal_flops

    m, t, T = cfg.model, cfg.thinking, cfg.train.seq_len + 1
    s = Shape(batch=1, seq=T, layers=m.n_layer, d_model=m.n_embd, heads=m.n_head, vocab=m.vocab_size)
    f = ideal_flops(s, None)
    if t.enabled:
        ns = trained_thoughts(cfg)
        chain = sum(ideal_flops(s, n, t.n_ahead, t.anchor) - f for n in ns) / len(ns)
        f += t.n_samples * think_fraction(cfg) * chain
    return 3 * f / T


@dataclass
class Group:
    """One arm x grid point over its finished seeds."""

    arm: str
    tag: str
    runs: list[RunRecord]
    best: bool = False

    @property
    def thinking(self) -> bool:
        return any(r.thinking for r in self.runs)

    def per_seed(self, name: str = "exact_match", path: str | None = None) -> dict[int, float]:
        vals = {r.seed: metric(r.final, name, path) for r in self.runs}
        return {s: v for s, v in vals.items() if v is not None}

    def gap(self) -> dict[int, float]:
        base = self.per_seed(path="base")
        return {s: v - base[s] for s, v in self.per_seed().items() if s in base} if self.thinking else {}

    def metrics(self) -> dict[str, Stat | None]:
        out = {
            "answer_accuracy": stat(list(self.per_seed("answer_accuracy").values())),
            "exact_match": stat(list(self.per_seed().values())),
        }
        if self.thinking:
            out["base_exact_match"] = stat(list(self.per_seed(path="base").values()))
            out["gap"] = stat(list(self.gap().values()))
        return out

    def thought_scaling(self, name: str = "exact_match") -> dict[int, Stat]:
        ns = sorted({n for r in self.runs for n in r.thoughts})
        res = {n: stat([metric(r.thoughts.get(n), name) for r in self.runs]) for n in ns}
        return {n: s for n, s in res.items() if s is not None}

    def hop_counts(self) -> list[int]:
        """The k of the per-k held-out sets (exact_match_k<k>) in the test-time evaluations; [] if none."""
        names = {
            m for r in self.runs for ev in r.thoughts.values() for p in ev.values() if isinstance(p, dict) for m in p
        }
        return sorted(
            int(m[len("exact_match_k") :])
            for m in names
            if m.startswith("exact_match_k") and m[len("exact_match_k") :].isdigit()
        )

    def thought_scaling_per_k(self) -> dict[int, dict[int, Stat]]:
        """k -> N -> exact match on k-hop held-out problems with N thoughts: does a k-hop problem need N >= k?"""
        return {k: self.thought_scaling(f"exact_match_k{k}") for k in self.hop_counts()}

    @property
    def cfg(self) -> C.Config:
        return self.runs[0].cfg


def arm_key(arm: str):
    order = list(ARM_OVERRIDES)
    return (order.index(arm) if arm in order else len(order), arm)


def tag_key(tag: str):
    def one(item: str):
        k, _, v = item.partition("=")
        try:
            return (k, 0, float(v), "")
        except ValueError:
            return (k, 1, 0.0, v)

    return [one(i) for i in tag.split(",")]


def group_runs(records: list[RunRecord]) -> list[Group]:
    """Finished runs grouped by arm x grid point, sorted; the best grid point per arm marked."""
    keys = sorted(
        {(r.arm, r.tag) for r in records if r.final is not None}, key=lambda k: (arm_key(k[0]), tag_key(k[1]))
    )
    groups = [
        Group(
            a, t, sorted((r for r in records if (r.arm, r.tag) == (a, t) and r.final is not None), key=lambda r: r.seed)
        )
        for a, t in keys
    ]
    for arm in dict.fromkeys(g.arm for g in groups):
        scored = [
            (g.metrics()["exact_match"].mean, -i, g)
            for i, g in enumerate(groups)
            if g.arm == arm and g.metrics()["exact_match"] is not None
        ]
        if scored:
            max(scored, key=lambda x: x[:2])[2].best = True
    return groups


def best_vs_best(groups: list[Group]) -> dict:
    best = {g.arm: g for g in groups if g.best}
    rows = {arm: {"gridtag": g.tag, "exact_match": g.metrics()["exact_match"]} for arm, g in best.items()}
    diffs = {}
    if "latent" in best:
        lat = best["latent"].per_seed()
        for other in ("nothink", "pause"):
            if other in best:
                diffs[f"latent - {other}"] = paired(lat, best[other].per_seed())
        diffs["latent - own base"] = stat(list(best["latent"].gap().values()))
    return {"arms": rows, "differences": diffs}

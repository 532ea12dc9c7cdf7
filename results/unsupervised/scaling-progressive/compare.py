"""Test-time scaling of the three variable-count runs side by side: ids advance (scaling/), ids the same
(scaling-same/) and the same with the progressive loss (scaling-progressive/). Reads each results.json
(every run's eval_thoughts_N) and writes compare.png and compare.md beside this file.

    python results/unsupervised/scaling-progressive/compare.py
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS = [
    ("ids advance (default)", "scaling"),
    ("`positions: same`", "scaling-same"),
    ("`same` + `progressive`", "scaling-progressive"),
]
TRAINED = 4


def per_seed(name: str, k: int) -> dict[int, dict[int, float]]:
    """{seed: {N: exact match on k's held-out set}}."""
    runs = json.load(open(os.path.join(HERE, "..", name, "results.json")))["runs"]
    return {
        r["seed"]: {int(n): e["thinking"][f"exact_match_k{k}"] for n, e in r["eval_thoughts"].items()}
        for r in runs
        if r["finished"]
    }


def main():
    lines = [
        "| run | k | seeds | N = 1 | N = 2 | N = 4 (trained max) | N = 6 | N = 8 | N = 6 − N = 4, per seed | N = 8 − N = 4, per seed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for k, ax in zip((1, 2), axes):
        for label, name in ARMS:
            seeds = per_seed(name, k)
            ns = sorted(next(iter(seeds.values())))
            mean = [sum(s[n] for s in seeds.values()) / len(seeds) for n in ns]
            lo = [min(s[n] for s in seeds.values()) for n in ns]
            hi = [max(s[n] for s in seeds.values()) for n in ns]
            ax.plot(ns, mean, marker="o", label=label.replace("`", ""))
            ax.fill_between(ns, lo, hi, alpha=0.15)
            m = dict(zip(ns, mean))
            fall = lambda n: " / ".join(f"{100 * (seeds[s][n] - seeds[s][TRAINED]):+.1f}" for s in sorted(seeds))
            lines.append(
                f"| {label} | {k} | {','.join(map(str, sorted(seeds)))} | "
                + " | ".join(f"{m[n]:.3f}" for n in (1, 2, 4, 6, 8))
                + f" | {fall(6)} | {fall(8)} |"
            )
        ax.axvspan(2, TRAINED, color="grey", alpha=0.1)
        ax.set_title(f"{k}-hop problems")
        ax.set_xlabel("thoughts at test time N (shaded: trained 2-4)")
    axes[0].set_ylabel("held-out exact match (mean, min-max band)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "compare.png"), dpi=110)
    open(os.path.join(HERE, "compare.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""pilots.png: held-out accuracy vs step of every binding pilot in results.json (answer accuracy where it was
recorded, else exact match, which for one answer per problem is the same number). Run from the repository root:

    python results/binding/plot.py
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
runs = json.load(open(os.path.join(HERE, "results.json")))["runs"]
fig, ax = plt.subplots(figsize=(8, 4.5))
for r in runs:
    evals = [e for e in r.get("evals", []) if e.get("thinking", e.get("base"))]
    if not evals:
        continue
    path = "thinking" if "thinking" in evals[0] else "base"
    metric = "answer_accuracy" if "answer_accuracy" in evals[0][path] else "exact_match"
    queries = r["data"].get("queries", 1)
    ax.plot(
        [e["step"] for e in evals],
        [e[path][metric] for e in evals],
        marker="o",
        ms=3,
        ls="-" if queries > 1 else "--",
        label=f"{r['run']} ({r['model']['n_layer']} layer{'s' * (r['model']['n_layer'] > 1)}, "
        f"{r['data']['hops']} hop{'s' * (r['data']['hops'] > 1)}, {queries} quer{'ies' if queries > 1 else 'y'})",
    )
ax.axhspan(0.30, 0.37, color="0.9", label="guessing level, one query (a digit of the prompt)")
ax.set(
    xlabel="training step",
    ylabel="held-out accuracy at the answers",
    ylim=(0, 1),
    title="binding pilots: no look-up learned (solid: dense queries)",
)
ax.legend(fontsize=6.5, loc="upper right")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "pilots.png"), dpi=120)
print(os.path.join("results", "binding", "pilots.png"))

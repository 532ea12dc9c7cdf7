"""Collect the text-k2 runs' held-out scores (`corpus.py score --json runs/RUN/score.json`) into results.json, with the
run directories named relative to this folder. Run from the repository root:

    python results/unsupervised/text-k2/collect.py
"""

import glob
import json
import os

from silentstar_jax.experiment.records import load_record, main_path, read_json

HERE = os.path.dirname(os.path.abspath(__file__))
out = {}
for path in sorted(glob.glob(os.path.join(HERE, "runs", "*", "score.json"))):
    run_dir = os.path.dirname(path)
    run = os.path.basename(run_dir)  # e.g. latent-s0, nothink-lr1e-3-s1
    rec = load_record(run_dir, run.split("-")[0], run, int(run.rsplit("-s", 1)[1]))
    out[run] = {
        **read_json(path),
        "checkpoint": f"runs/{run}",
        "wall_s": rec.wall_s,
        "finished": rec.final is not None,
        "commits": [c[:7] for c in rec.commits],
    }
json.dump(out, open(os.path.join(HERE, "results.json"), "w"), indent=1)
for run, r in out.items():
    path = main_path(r)
    print(
        f"{run:22s} two-hop answer accuracy {r[path]['2']['answer_accuracy']:.3f}  all 8 right "
        f"{r[path]['2']['exact_match']:.3f}  one-hop {r[path]['1']['answer_accuracy']:.3f}  step {r['step']}"
    )

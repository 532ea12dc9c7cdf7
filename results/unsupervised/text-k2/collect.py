"""Collect the text-k2 runs' held-out scores (`corpus.py score --json runs/RUN/score.json`) into results.json, with the
run directories named relative to this folder. Run from the repository root:

    python results/unsupervised/text-k2/collect.py
"""
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
out = {}
for path in sorted(glob.glob(os.path.join(HERE, "runs", "*", "score.json"))):
    run = os.path.basename(os.path.dirname(path))
    score = json.load(open(path))
    score["checkpoint"] = f"runs/{run}"
    ev_path = os.path.join(HERE, "runs", run, "eval.json")   # absent for a run stopped before its end
    ev = json.load(open(ev_path)) if os.path.exists(ev_path) else {}
    code = [json.loads(line) for line in open(os.path.join(HERE, "runs", run, "code.jsonl"))]
    out[run] = {**score, "wall_s": ev.get("wall_s"), "finished": bool(ev),
                "commits": sorted({c["commit"][:7] for c in code})}
json.dump(out, open(os.path.join(HERE, "results.json"), "w"), indent=1)
for run, r in out.items():
    path = "thinking" if "thinking" in r else "base"
    print(f"{run:22s} two-hop answer accuracy {r[path]['2']['answer_accuracy']:.3f}  all 8 right "
          f"{r[path]['2']['exact_match']:.3f}  one-hop {r[path]['1']['answer_accuracy']:.3f}  step {r['step']}")

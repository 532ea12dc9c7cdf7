#!/bin/bash
# Rebuilds this folder's tables and plot from the experiment directories that trained them: EXP=DIR bash collect.sh
set -e
: "${EXP:?set EXP to the folder holding the experiments text, text-residual, text-reinforce, text-gated}"
HERE=$(dirname "$0")
python -m silentstar_jax.experiment.lm_report --out "$HERE" \
  --row "anchored sequence (pathwise)=$EXP/text:latent" \
  --row "no-think=$EXP/text:nothink" \
  --row "pause (same passes)=$EXP/text:pause" \
  --row "anchored residual (pathwise)=$EXP/text-residual:latent" \
  --row "anchored sequence (REINFORCE)=$EXP/text-reinforce:latent" \
  --row "gated unanchored chain (pathwise)=$EXP/text-gated:latent" \
  --controls "no-think,pause (same passes)" \
  --title "stdlib text, held-out CE per byte vs step (band: min–max over seeds)"
for e in text text-residual text-reinforce text-gated; do
  mkdir -p "$HERE/experiments/$e"
  # the experiment's own report, renamed: a results.md here would be indexed as a results folder of its own
  cp "$EXP/$e/results.md" "$HERE/experiments/$e/report.md"
  cp "$EXP/$e/results.json" "$HERE/experiments/$e/report.json"
  cp "$EXP/$e/commands.txt" "$HERE/experiments/$e/"
  sed -i "s|$EXP|EXP|g" "$HERE/experiments/$e/"*   # no machine paths in the record
done
# results.json: the report's numbers plus the index block (index.json, written by hand) that the results
# index and the README's table read (python -m silentstar_jax.experiment.index)
python - "$HERE" <<'PY'
import json, os, sys
here = sys.argv[1]
res = json.load(open(os.path.join(here, "lm_results.json")))
res["index"] = json.load(open(os.path.join(here, "index.json")))
# how far each anchored run moved from the base model: the feedback scale a (sequence), |W_Δ| (residual)
from silentstar_jax.loading import load_run
exp = os.environ["EXP"]
res["anchor_parameters"] = {}
for name, row in res["rows"].items():
    for run in row["runs"]:
        d = os.path.join(exp, {"anchored sequence (pathwise)": "text", "pause (same passes)": "text",
                               "anchored residual (pathwise)": "text-residual",
                               "anchored sequence (REINFORCE)": "text-reinforce"}.get(name, ""), "runs", run)
        if not os.path.isdir(d) or name in ("no-think", "gated unanchored chain (pathwise)"):
            continue
        h = load_run(d)[0].heads
        p = h.feedback_scale if h.feedback_scale is not None else h.delta_kernel
        res["anchor_parameters"][f"{name} {run}"] = float(abs(p[...]).max()) if p.ndim == 0 else float((p[...] ** 2).sum() ** 0.5)
json.dump(res, open(os.path.join(here, "results.json"), "w"), indent=2)
os.remove(os.path.join(here, "lm_results.json"))
PY

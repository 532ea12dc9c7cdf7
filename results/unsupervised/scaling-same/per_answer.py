"""Which answer of a chain fails when a model thinks with N thoughts: accuracy of the thinking path at
each answer index j (the j-th scored token of a row) on each k's held-out set, and the position id
the end step of that answer's chain gets (thinking.positions). The diagnostic behind
`thinking.positions: same` (results.md here). Run from the repository root:

    python results/unsupervised/scaling-same/per_answer.py RUN_DIR 4,6,8 [--rows 300]
"""

import argparse

import jax.numpy as jnp
import numpy as np

from silentstar_jax.align import shift_left
from silentstar_jax.data import eval_rows_by_k
from silentstar_jax.run_dir import load_run

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("thoughts", help="comma-separated test-time counts, e.g. 4,6,8")
ap.add_argument("--rows", type=int, default=300, help="held-out rows per k")
args = ap.parse_args()
model, tok, cfg, step = load_run(args.run)
print(f"{args.run} (step {step}, thinking.positions: {cfg.thinking.positions})")
for k, rows in eval_rows_by_k(cfg.data, tok, cfg.train.seq_len + 1).items():
    toks, attn, lmask = (jnp.asarray(a[: args.rows]) for a in (rows.tokens, rows.attn_mask, rows.loss_mask))
    target = shift_left(toks, 1)
    scored = np.asarray(shift_left(lmask, 1) * shift_left(attn, 1)) > 0  # position t predicts x_{t+1}
    t_RJ = np.stack([np.nonzero(r)[0] for r in scored])  # [rows, answers]: every row alike
    assert (t_RJ == t_RJ[0]).all(), "rows with answers at different positions"
    for n in (int(x) for x in args.thoughts.split(",")):
        hit = np.asarray(jnp.argmax(model(toks, attn, n_thoughts=n).mixed_logits[:, :, 0], -1) == target)
        acc_J = np.take_along_axis(hit, t_RJ, axis=1).mean(0)
        exact = np.take_along_axis(hit, t_RJ, axis=1).all(1).mean()
        end_id = [int(cfg.thinking.layout(n).offset(n + 1)) + int(t) for t in t_RJ[0]]
        print(
            f"k={k} N={n} exact match {exact:.3f} | accuracy per answer: "
            + " ".join(f"{a:.2f}" for a in acc_J)
            + " | end-step position id: "
            + " ".join(map(str, end_id))
        )

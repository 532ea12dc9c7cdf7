"""Language-model training step on the CPU: this project's JAX GPT2 vs Hugging Face PyTorch GPT2LMHeadModel.

One step = forward + next-token cross-entropy + backward + AdamW(lr=1e-4, weight_decay=0.01) update, on
the same shape and the same random batch for both frameworks (dropout off). After a warm-up (JAX compiles
there), the two are timed in alternating rounds, `--steps-per-round` steps each, so that a noisy, shared
machine slows both alike; the median step time of each is reported.

    python bench/bench_lm_step.py                       # defaults: 4 layers, d 256, 4 heads, T 128, batch 16, vocab 512
    python bench/bench_lm_step.py --batch 8 --rounds 3  # shape / length overrides
    python bench/bench_lm_step.py --json                # also print one JSON object as the last stdout line

Output: machine info, then a table (framework, median ms/step, tokens/s, minor page faults per step) and the
ratio JAX tokens/s / torch tokens/s. With --json, the same numbers as one JSON object on the last stdout line.
Page faults matter on the CPU: XLA allocates each step's temporaries (hundreds of MiB here) afresh, and the
kernel zero-fills them page by page (sys time), which torch's smaller per-op allocations largely avoid.
The machine should be otherwise idle: on an oversubscribed CPU torch's OpenMP threads degrade far more than
XLA's, and the ratio means little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

from silentstar_jax.runtime import tune_malloc  # installed by requirements-dev.txt (pip install -e .)

tune_malloc()  # as train.py does (SILENTSTAR_MALLOC=default to compare without); it applies to torch too

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from flax import nnx

from silentstar_jax.config import ModelConfig
from silentstar_jax.gpt2 import GPT2

LR, WEIGHT_DECAY = 1e-4, 0.01


def make_jax_step(a, tokens_np):
    """Returns step() -> loss (blocks until done); params and optimizer state are donated and carried."""
    cfg = ModelConfig(vocab_size=a.vocab, n_positions=a.seq, n_embd=a.d_model, n_layer=a.layers, n_head=a.heads)
    graphdef, params = nnx.split(GPT2(cfg, rngs=nnx.Rngs(0)))  # nnx.State: optax takes it as it is
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

    def loss_fn(params, tokens):
        logits = nnx.merge(graphdef, params)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    def train_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    state = {"params": params, "opt": tx.init(params)}
    tokens = jnp.asarray(tokens_np)

    def step():
        state["params"], state["opt"], loss = train_step(state["params"], state["opt"], tokens)
        return float(loss.block_until_ready())

    return step


def make_torch_step(a, tokens_np):
    """Returns step() -> loss for GPT2LMHeadModel with AdamW, and the attention implementation in use."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=a.layers,
        n_embd=a.d_model,
        n_head=a.heads,
        n_positions=a.seq,
        vocab_size=a.vocab,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=a.vocab - 1,
        eos_token_id=a.vocab - 1,
    )
    model = transformers.GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    ids = torch.from_numpy(tokens_np.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        return loss.item()

    return step, model.config._attn_implementation


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per framework before timing")
    p.add_argument(
        "--torch-threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all CPUs)"
    )
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line (last line)")
    a = p.parse_args()

    torch.set_num_threads(a.torch_threads)
    tokens = np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq), dtype=np.int32)
    jax_step = make_jax_step(a, tokens)
    torch_step, attn_impl = make_torch_step(a, tokens)
    print(
        f"cpu_count={os.cpu_count()} ({platform.processor() or platform.machine()}), "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"(threads {torch.get_num_threads()}), transformers {transformers.__version__}, "
        f"HF attention: {attn_impl}"
    )
    print(
        f"shape: layers={a.layers} d_model={a.d_model} heads={a.heads} T={a.seq} batch={a.batch} vocab={a.vocab}; "
        f"{a.rounds} rounds x {a.steps_per_round} steps, interleaved"
    )

    t0 = time.perf_counter()
    loss0 = {"jax": jax_step()}
    compile_s = time.perf_counter() - t0
    loss0["torch"] = torch_step()
    for _ in range(a.warmup):
        jax_step()
        torch_step()

    times = {"jax": [], "torch": []}
    faults = {"jax": 0, "torch": 0}  # minor page faults: fresh large buffers, touched page by page
    steps = {"jax": jax_step, "torch": torch_step}
    for r in range(a.rounds):
        order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")  # alternate who goes first
        for name in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(a.steps_per_round):
                t = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - t)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    tokens_per_step = a.batch * a.seq
    res = {
        name: {
            "ms_per_step": 1e3 * statistics.median(ts),
            "tokens_per_s": tokens_per_step / statistics.median(ts),
            "page_faults_per_step": faults[name] / len(ts),
            "first_loss": loss0[name],
        }
        for name, ts in times.items()
    }
    ratio = res["jax"]["tokens_per_s"] / res["torch"]["tokens_per_s"]
    print(
        f"(JAX first step incl. compile: {compile_s:.1f} s; first loss jax {loss0['jax']:.4f}, "
        f"torch {loss0['torch']:.4f}, ln(V) = {np.log(a.vocab):.4f})"
    )
    print(f"{'framework':<10} {'ms/step':>9} {'tokens/s':>10} {'faults/step':>12}")
    for name, r in res.items():
        print(f"{name:<10} {r['ms_per_step']:>9.1f} {r['tokens_per_s']:>10.0f} {r['page_faults_per_step']:>12.0f}")
    print(f"ratio jax/torch tokens/s: {ratio:.2f}")
    if a.json:
        print(
            json.dumps(
                {
                    "shape": {k: getattr(a, k) for k in ("batch", "seq", "layers", "d_model", "heads", "vocab")},
                    "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "jax": jax.__version__,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "hf_attention": attn_impl,
                    "jax_compile_s": compile_s,
                    "results": res,
                    "ratio_jax_over_torch": ratio,
                }
            )
        )


if __name__ == "__main__":
    main()

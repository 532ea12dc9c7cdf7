"""Corpora for `data.source: files`: real text held out by file (`gather`), a task as a user's own text
(`write`), and the score at its answers (`score`).

    python corpus.py gather --out corpus/stdlib       # the Python standard library, held out by file
    python train.py --config configs/text-lm.yaml      # reads corpus/stdlib/{train,heldout}.jsonl

The recipe must not need the built-in task's metadata (loss masks, thought targets, hop counts):

    python corpus.py write --config configs/unsupervised.yaml --out corpus/hops
    python train.py --config configs/unsupervised-text.yaml            # reads corpus/hops/train.txt
    python corpus.py score --checkpoint runs/unsupervised-text --heldout corpus/hops/heldout.jsonl

`write` puts the task's training problems, one per line (prompt + answer, mixed difficulty as the
config mixes it), in train.txt (and, where it mixes hop counts, the same lines split by k in
train_k<k>.txt: easy to hard by file with data.files_curriculum), and held-out problems of each hop
count k in heldout.jsonl, whose
`prompt` field says where the answer starts (for scoring only; training never reads it). `score`
teacher-forces each held-out line through `generation.score` (what `generate.py --score` shows) and
reports, per k, the accuracy at the answer tokens (the share with p > 0.5) and the share of lines
whose every answer token has p > 0.5, with and without thinking.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from silentstar_jax.errors import UserError, cli_main
from silentstar_jax.runtime import entry_point


def write_corpus(cfg, out: str) -> dict:
    """train.txt (data.n_train training problems, one per line) and heldout.jsonl (data.n_eval held-out
    problems per hop count, {text, prompt, answer, k}). Returns the paths and line counts."""
    from silentstar_jax import tasks
    from silentstar_jax.data import hop_counts, single_k, task_kwargs

    d = cfg.data
    if d.source != "task":
        raise UserError(
            f"corpus write: the config's data.source is {d.source!r}; it needs a built-in task "
            "(data.source: task) to write out"
        )
    try:
        train = tasks.make_examples(d.task, d.n_train, seed=cfg.run.seed, split="train", **task_kwargs(d))
        held = {
            k: tasks.make_examples(
                d.task, d.n_eval, seed=d.shuffle_seed + 1, split="eval", **task_kwargs(single_k(d, k), "eval")
            )
            for k in (hop_counts(d) or [None])
        }
    except ValueError as e:
        raise UserError(f"corpus write: {e}") from None
    lines = [ex.prompt + ex.answer for ex in train]
    if any("\n" in x for x in lines):
        raise UserError(f"corpus write: a {d.task} problem holds a newline; it cannot be one line of text")
    from silentstar_jax.fs import staged

    names = {"train": "train.txt", "heldout": "heldout.jsonl"}
    ks = hop_counts(d)
    for k in ks if len(ks) > 1 else ():  # the same lines by difficulty, for data.files_curriculum
        names[f"train_k{k}"] = f"train_k{k}.txt"
    with staged(out, "the corpus", is_dir=True) as tmp:  # all of it, or nothing (files already there stay)
        with open(os.path.join(tmp, names["train"]), "w") as f:
            f.write("\n".join(lines) + "\n")
        for k in ks if len(ks) > 1 else ():
            with open(os.path.join(tmp, names[f"train_k{k}"]), "w") as f:
                f.write("".join(line + "\n" for line, ex in zip(lines, train) if len(ex.thoughts) == k))
        with open(os.path.join(tmp, names["heldout"]), "w") as f:
            for k, exs in held.items():
                for ex in exs:
                    f.write(
                        json.dumps({"text": ex.prompt + ex.answer, "prompt": ex.prompt, "answer": ex.answer, "k": k})
                        + "\n"
                    )
    paths = {key: os.path.join(out, name) for key, name in names.items()}
    return {"paths": paths, "train_lines": len(lines), "heldout_lines": sum(len(v) for v in held.values())}


def default_source() -> str:
    """The Python standard library's source: real text (code and its English docstrings) on every machine."""
    import sysconfig

    return sysconfig.get_paths()["stdlib"]


def gather_text(
    src: str | None, out: str, ext: str = ".py", heldout_every: int = 10, max_mb: float = 8.0, heldout_mb: float = 0.1
) -> dict:
    """train.jsonl and heldout.jsonl: one document ({text, path}) per file under `src` whose name ends in
    `ext`, held out *by file*: a file is held out when crc32 of its path (relative to src) % heldout_every == 0,
    so the split of a file does not depend on which other files exist. Files are taken in that hash
    order up to max_mb of training text and heldout_mb of held-out text; files.json records every file
    used and where it went. src None: the Python standard library (recorded by version, not path)."""
    import platform
    import zlib

    from silentstar_jax.fs import staged

    label = src or f"python {platform.python_version()} standard library"
    src = src or default_source()

    if not os.path.isdir(src):
        raise UserError(f"corpus gather: {src} is not a directory")
    if heldout_every < 2:
        raise UserError(f"corpus gather: --heldout-every must be >= 2, got {heldout_every}")
    paths = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        paths += [os.path.relpath(os.path.join(root, f), src) for f in sorted(files) if f.endswith(ext)]
    crc = lambda rel: zlib.crc32(rel.encode())
    split = {"train": [], "heldout": []}
    budget = {"train": max_mb * 1e6, "heldout": heldout_mb * 1e6}
    for rel in sorted(paths, key=lambda r: (crc(r), r)):
        which = "heldout" if crc(rel) % heldout_every == 0 else "train"
        try:
            with open(os.path.join(src, rel), encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and budget[which] >= len(text):
            budget[which] -= len(text)
            split[which].append((rel, text))
    if not split["train"] or not split["heldout"]:
        raise UserError(f"corpus gather: {src} holds too few {ext} files for a train / held-out split")
    with staged(out, "the corpus", is_dir=True) as tmp:
        for which, docs in split.items():
            with open(os.path.join(tmp, f"{which}.jsonl"), "w") as f:
                f.writelines(json.dumps({"text": t, "path": rel}) + "\n" for rel, t in docs)
        manifest = {w: [rel for rel, _ in docs] for w, docs in split.items()}
        with open(os.path.join(tmp, "files.json"), "w") as f:
            json.dump({"source": label, "ext": ext, "heldout_every": heldout_every, **manifest}, f, indent=1)
    return {w: {"files": len(d), "bytes": sum(len(t) for _, t in d)} for w, d in split.items()}


def read_heldout(path: str) -> list[dict]:
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        raise UserError(f"--heldout {path}: {e.strerror}") from None
    except json.JSONDecodeError:
        raise UserError(f"--heldout {path}: not JSON lines (write it with: python corpus.py write ...)") from None
    bad = [
        r
        for r in rows
        if not (
            isinstance(r, dict)
            and isinstance(r.get("text"), str)
            and isinstance(r.get("prompt"), str)
            and r["text"].startswith(r["prompt"])
            and len(r["text"]) > len(r["prompt"])
        )
    ]
    if not rows or bad:
        raise UserError(f"--heldout {path}: each line must be {{text, prompt, k}} with text = prompt + answer")
    return rows


def answer_scores(model, tok, rows: list[dict], think: bool, n_thoughts=None) -> list[dict]:
    """Per held-out line: p of each answer token given everything before it (teacher-forced), from the
    thinking path (think) or the base path."""
    from silentstar_jax.generation import score

    out = []
    for r in rows:
        ids, n_prompt = tok.encode(r["text"]), len(tok.encode(r["prompt"]))
        s = score(model, ids, think, n_thoughts)
        lp = s["logprob"] if think else s["logprob_base"]  # lp[i]: log p(ids[i + 1] | ids[: i + 1])
        out.append({"k": r.get("k"), "p": np.exp(lp[n_prompt - 1 : len(ids) - 1]).tolist()})
    return out


def summarize(scored: list[dict]) -> dict:
    """Per k: accuracy at the answer tokens (p > 0.5) and the share of lines with every answer token right."""
    res = {}
    for k in sorted({s["k"] for s in scored}, key=lambda x: (x is None, x)):
        ps = [np.asarray(s["p"]) for s in scored if s["k"] == k]
        res[str(k)] = {
            "lines": len(ps),
            "answer_accuracy": float(np.mean(np.concatenate(ps) > 0.5)),
            "exact_match": float(np.mean([bool((p > 0.5).all()) for p in ps])),
        }
    return res


def score_run(checkpoint: str, heldout: str, n_thoughts=None) -> dict:
    """{"thinking": per-k summary, "base": per-k summary} of a run (only "base" without thinking)."""
    from silentstar_jax.loading import load_run

    rows = read_heldout(heldout)
    model, tok, _, step = load_run(checkpoint)
    res = {"checkpoint": checkpoint, "step": step, "base": summarize(answer_scores(model, tok, rows, False))}
    if model.heads is not None:
        res["thinking"] = summarize(answer_scores(model, tok, rows, True, n_thoughts))
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corpus.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write a task config's problems as text lines")
    w.add_argument("--config", required=True, help="a config with data.source: task")
    w.add_argument("--out", required=True, help="directory for train.txt and heldout.jsonl")
    w.add_argument("overrides", nargs="*", help="config overrides, key=value")
    g = sub.add_parser("gather", help="real text held out by file: train.jsonl, heldout.jsonl, files.json")
    g.add_argument("--src", help="directory of text files (default: the Python standard library's source)")
    g.add_argument("--out", required=True, help="directory for the corpus")
    g.add_argument("--ext", default=".py", help="file names ending in this (default .py)")
    g.add_argument("--heldout-every", type=int, default=10, help="about one file in this many is held out")
    g.add_argument("--max-mb", type=float, default=8.0, help="training text at most this many MB")
    g.add_argument("--heldout-mb", type=float, default=0.1, help="held-out text at most this many MB")
    s = sub.add_parser("score", help="accuracy at the held-out lines' answer tokens, with and without thinking")
    s.add_argument("--checkpoint", required=True, help="run directory or one checkpoint")
    s.add_argument("--heldout", required=True, help="heldout.jsonl from `corpus.py write`")
    s.add_argument("--thoughts", type=int, help="thoughts per token (default: as trained)")
    s.add_argument("--json", help="also write the result to this file")
    return p


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd == "write":
        from silentstar_jax.config import load_config

        res = write_corpus(load_config(args.config, args.overrides), args.out)
        by_k = [os.path.basename(v) for k, v in res["paths"].items() if k.startswith("train_k")]
        print(
            f"wrote {res['paths']['train']} ({res['train_lines']} lines"
            + (f"; split by hop count: {', '.join(by_k)}" if by_k else "")
            + f") and {res['paths']['heldout']} ({res['heldout_lines']} held-out lines)"
        )
        return
    if args.cmd == "gather":
        res = gather_text(args.src, args.out, args.ext, args.heldout_every, args.max_mb, args.heldout_mb)
        for which, v in res.items():
            print(f"{which}: {v['files']} files, {v['bytes'] / 1e6:.2f} MB -> {os.path.join(args.out, which)}.jsonl")
        return
    if args.thoughts is not None and args.thoughts < 0:
        raise UserError(f"--thoughts must be >= 0, got {args.thoughts}")
    res = score_run(args.checkpoint, args.heldout, args.thoughts)
    for path in ("base", "thinking"):
        for k, v in res.get(path, {}).items():
            print(
                f"{path:8s} k={k}: answer accuracy (p > 0.5) {v['answer_accuracy']:.3f}, all answer tokens "
                f"{v['exact_match']:.3f} over {v['lines']} lines"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    sys.stdout.flush()


run = entry_point(main)  # console script, `python -m`, the script at the repo root


if __name__ == "__main__":
    run()

"""The user's data path (corpus.py): a task written as text lines, trained through data.source: files,
scored at the held-out answers with generate.py --score's numbers."""

import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_cli

from silentstar_jax.config import load_config
from silentstar_jax.corpus import gather_text, summarize, write_corpus

TASK = ["data.n_symbols=5", "data.chain=3", "data.n_train=48", "data.n_eval=6", "train.seq_len=11"]
MICRO = [
    "model.n_embd=32",
    "model.n_head=2",
    "train.steps=2",
    "train.batch_size=4",
    "train.log_every=1",
    "train.eval_every=0",
    "train.save_every=2",
    "checkpoint.async_save=false",
]


def _answer(line: str, n: int) -> tuple[int, str]:
    """k and the chain of answers of a hops line "table|k q answers", computed from its table."""
    table, rest = line[:n], line[n + 1 :]
    k, q = int(rest[0]), rest[1]
    f = {chr(ord("a") + i): c for i, c in enumerate(table)}
    out, x = "", q
    for _ in range(len(rest) - 2):
        for _ in range(k):
            x = f[x]
        out += x
    return k, out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    res = write_corpus(load_config(os.path.join(ROOT, "configs", "unsupervised.yaml"), TASK), str(out))
    return out, res


def test_written_lines_are_the_task_problems_and_held_out(corpus):
    out, res = corpus
    lines = (out / "train.txt").read_text().splitlines()
    assert len(lines) == res["train_lines"] == 48 and len(set(lines)) == 48
    assert all(line[5] == "|" and _answer(line, 5)[1] == line[8:] for line in lines)  # correct answers
    assert {_answer(line, 5)[0] for line in lines} == {1, 2}  # the config's mix
    by_k = {k: (out / f"train_k{k}.txt").read_text().splitlines() for k in (1, 2)}  # split by difficulty
    assert by_k == {k: [x for x in lines if _answer(x, 5)[0] == k] for k in (1, 2)}
    held = [json.loads(x) for x in (out / "heldout.jsonl").read_text().splitlines()]
    assert sorted(r["k"] for r in held) == [1] * 6 + [2] * 6
    for r in held:
        assert r["text"] == r["prompt"] + r["answer"] and _answer(r["text"], 5) == (r["k"], r["answer"])
    assert not {r["text"] for r in held} & set(lines)  # never trained on


def test_text_run_scores_like_generate_score(corpus, tmp_path):
    out, _ = corpus
    run = tmp_path / "run"
    proc = run_cli(
        "train.py",
        "--config",
        "configs/unsupervised-text.yaml",
        *MICRO,
        "train.seq_len=11",
        f"data.files=[{out / 'train.txt'}]",
        f"run.out_dir={run}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from silentstar_jax.config import load_config as load
    from silentstar_jax.data import build_data
    from silentstar_jax.tokenizer import tokenizer_for

    cfg = load(str(run / "config.yaml"))
    tok = tokenizer_for(cfg)
    data, _ = build_data(cfg, tok)
    blocks = data.rows.tokens
    assert (blocks[:, -1] == tok.eos_id).all() and (blocks[:, 5] == ord("|")).all()  # one problem per block

    res_path = tmp_path / "score.json"
    sc = run_cli(
        "corpus.py", "score", "--checkpoint", str(run), "--heldout", str(out / "heldout.jsonl"), "--json", str(res_path)
    )
    assert sc.returncode == 0, sc.stderr[-2000:]
    res = json.loads(res_path.read_text())
    assert set(res) >= {"base", "thinking"} and set(res["thinking"]) == {"1", "2"}
    # the same numbers from generate.py --score --json, for the first k = 2 line
    line = next(json.loads(x) for x in (out / "heldout.jsonl").read_text().splitlines() if '"k": 2' in x)
    gen = run_cli("generate.py", "--checkpoint", str(run), "--score", line["text"], "--json")
    assert gen.returncode == 0, gen.stderr[-2000:]
    recs = [json.loads(x) for x in gen.stdout.splitlines() if x.startswith('{"pos"')]
    p = {
        path: np.exp([r[key] for r in recs if r["pos"] >= len(line["prompt"])])
        for path, key in (("thinking", "logprob"), ("base", "logprob_base"))
    }
    for path in ("thinking", "base"):
        one = summarize([{"k": 2, "p": p[path]}])["2"]
        assert one["lines"] == 1 and len(p[path]) == 3
        np.testing.assert_allclose(one["answer_accuracy"], np.mean(p[path] > 0.5))
    from silentstar_jax.corpus import answer_scores, read_heldout
    from silentstar_jax.loading import load_run

    model, tok, _, _ = load_run(str(run))
    mine = answer_scores(model, tok, [line], True)[0]["p"]
    np.testing.assert_allclose(mine, p["thinking"], rtol=1e-4)
    assert len(read_heldout(str(out / "heldout.jsonl"))) == 12


def test_corpus_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ab"}\n')
    cases = [
        ("write", "--config", "configs/text-files.yaml", "--out", str(tmp_path / "o")),
        ("score", "--checkpoint", str(tmp_path / "none"), "--heldout", str(bad)),
    ]
    for args in cases:
        proc = run_cli("corpus.py", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_disk_full_writing_the_corpus_keeps_what_was_there(tmp_path, capsys, monkeypatch):
    """Fault: the disk fills up while heldout.jsonl is written (ENOSPC). Promise: one line naming the
    disk and --out, exit 4; the files already in --out untouched and no partial file left."""
    import builtins
    import errno

    from silentstar_jax import corpus

    out = tmp_path / "o"
    out.mkdir()
    (out / "train.txt").write_text("mine\n")
    real_open = builtins.open

    def full_open(file, mode="r", *a, **k):
        if str(file).endswith("heldout.jsonl") and "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(SystemExit) as e:
        corpus.main(["write", "--config", os.path.join(ROOT, "configs", "unsupervised.yaml"), "--out", str(out), *TASK])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert e.value.code == 4 and err.count("\n") == 1 and "disk full on /" in err and str(out) in err, err
    assert sorted(os.listdir(tmp_path)) == ["o"] and os.listdir(out) == ["train.txt"]
    assert (out / "train.txt").read_text() == "mine\n"


def test_gather_holds_out_by_file(tmp_path):
    """Every file lands whole in exactly one split; the split of a file does not depend on the others;
    files.json names them; non-UTF-8 and other extensions are left out."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    texts = {f"pkg/m{i:02d}.py" if i % 2 else f"f{i:02d}.py": f"# file {i}\n" + "x = 1\n" * i for i in range(1, 41)}
    for rel, t in texts.items():
        (src / rel).write_text(t)
    (src / "notes.txt").write_text("not a .py file")
    (src / "bad.py").write_bytes(b"\xff\xfe\x00 not utf-8")

    def read(out):
        got = {}
        for which in ("train", "heldout"):
            with open(os.path.join(out, f"{which}.jsonl")) as f:
                got[which] = {d["path"]: d["text"] for d in map(json.loads, f)}
        return got

    res = gather_text(str(src), str(tmp_path / "a"), heldout_every=4, max_mb=1, heldout_mb=1)
    got = read(tmp_path / "a")
    assert set(got["train"]) | set(got["heldout"]) == set(texts) and not set(got["train"]) & set(got["heldout"])
    assert all(got[w][rel] == texts[rel] for w in got for rel in got[w])  # whole files, unchanged
    assert 2 <= len(got["heldout"]) <= 20 and res["heldout"]["files"] == len(got["heldout"])
    with open(tmp_path / "a" / "files.json") as f:
        manifest = json.load(f)
    assert sorted(manifest["heldout"]) == sorted(got["heldout"]) and manifest["source"] == str(src)
    # fewer files: the ones left keep their split
    for rel in list(texts)[::2]:
        os.remove(src / rel)
    gather_text(str(src), str(tmp_path / "b"), heldout_every=4, max_mb=1, heldout_mb=1)
    again = read(tmp_path / "b")
    assert set(again["heldout"]) == {r for r in got["heldout"] if (src / r).exists()}
    proc = run_cli("corpus.py", "gather", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "not a directory" in proc.stderr

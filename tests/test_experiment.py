"""experiment.py: arms derived from one config, grid x seeds as run directories, skip/resume, report."""

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, run_cli

from silentstar_jax import config as C
from silentstar_jax import run_dir
from silentstar_jax.errors import UserError
from silentstar_jax.experiment import plan as P
from silentstar_jax.experiment import records as R
from silentstar_jax.experiment import stats as S

MICRO = {
    "run": {"name": "micro", "out_dir": "runs/micro", "seed": 0},
    "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32, "vocab_size": 260},
    "thinking": {"enabled": True, "chain": "unrolled", "n_thoughts": 1, "n_ahead": 1, "mix_init_bias": 0.0},
    "loss": {"base": 1.0, "think": 1.0, "policy": 1.0, "value": 1.0, "thought": 1.0},
    "data": {
        "source": "task",
        "task": "multiply",
        "digits_a": 2,
        "digits_b": 1,
        "n_train": 64,
        "n_eval": 16,
        "tokenizer": "byte",
    },
    "optim": {"lr": 0.003, "warmup_steps": 2, "weight_decay": 0.01},
    "train": {"steps": 4, "batch_size": 8, "seq_len": 12, "log_every": 2, "save_every": 0, "eval_every": 2},
}


# ---------------------------------------------------------------- pure parts


def test_grid_points_tags_and_overrides():
    axes = P.parse_grid(["optim.lr=1e-3,3e-3", "thinking.n_thoughts=2,4"])
    assert axes == [P.GridAxis("optim.lr", ("1e-3", "3e-3")), P.GridAxis("thinking.n_thoughts", ("2", "4"))]
    latent = P.grid_points(axes, "latent")
    assert [p.tag for p in latent] == [
        "optim.lr=0.001,thinking.n_thoughts=2",
        "optim.lr=0.001,thinking.n_thoughts=4",
        "optim.lr=0.003,thinking.n_thoughts=2",
        "optim.lr=0.003,thinking.n_thoughts=4",
    ]
    assert latent[1].overrides == ["optim.lr=1e-3", "thinking.n_thoughts=4"]  # passed through as written
    nothink = P.grid_points(axes, "nothink")  # thinking.* ignored
    assert [p.tag for p in nothink] == ["optim.lr=0.001", "optim.lr=0.003"]
    assert [p.tag for p in P.grid_points([], "pause")] == ["default"]
    assert P.tag_value("3e-4") == "0.0003" and P.tag_value("2") == "2" and P.tag_value("pause") == "pause"


@pytest.mark.parametrize(
    "spec", ["nokey", "lr=1e-3", "optim.lr=", "optim.lr=1e-3,,2e-3", "optim.lr=1e-3,0.001", "data.files=a/b"]
)
def test_bad_grid(spec):
    with pytest.raises(UserError):
        P.parse_grid([spec])


def test_repeated_grid_key_and_lists():
    with pytest.raises(UserError, match="twice"):
        P.parse_grid(["optim.lr=1", "optim.lr=2"])
    with pytest.raises(UserError, match="unknown arm"):
        P.parse_arms("latent,foo")
    assert P.parse_arms("nothink,latent") == ["nothink", "latent"]
    assert P.int_list("0,1,2", "--seeds") == [0, 1, 2]
    with pytest.raises(UserError):
        P.int_list("0,x", "--seeds")


def test_arm_commands_and_configs(tmp_path):
    point = P.GridPoint((("optim.lr", "1e-3"),))
    cmd = P.train_command("c.yaml", ["train.steps=4"], P.RunSpec("pause", point, 3), "out")
    d = os.path.join("out", "runs", "pause", "optim.lr=0.001", "seed3")
    # the trainer as a module of the installed package, not a checkout's train.py
    assert cmd == [
        sys.executable,
        "-m",
        "silentstar_jax.train_cli",
        "--config",
        "c.yaml",
        "train.steps=4",
        "thinking.feedback=pause",
        "optim.lr=1e-3",
        "run.seed=3",
        "run.name=pause/optim.lr=0.001/seed3",
        f"run.out_dir={d}",
    ]
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(MICRO))
    got = {arm: C.load_config(str(cfg_path), list(ov)) for arm, ov in P.ARM_OVERRIDES.items()}
    assert got["latent"].thinking.enabled and got["latent"].thinking.feedback == "latent"
    assert got["pause"].thinking.enabled and got["pause"].thinking.feedback == "pause"
    assert not got["nothink"].thinking.enabled
    assert got["pause"].optim == got["nothink"].optim == got["latent"].optim  # nothing else drifts
    specs = P.plan_runs(str(cfg_path), [], ["latent", "nothink"], P.parse_grid(["thinking.n_thoughts=1,2"]), [0, 1])
    # seed-major: every arm's first seed first, so a partial experiment already compares the arms
    assert [s.label for s in specs] == [
        "latent/thinking.n_thoughts=1/seed0",
        "nothink/default/seed0",
        "latent/thinking.n_thoughts=2/seed0",
        "latent/thinking.n_thoughts=1/seed1",
        "nothink/default/seed1",
        "latent/thinking.n_thoughts=2/seed1",
    ]


def test_thought_counts_checked_before_training(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(MICRO))  # block of 13 tokens in 32 positions, chain of n + 2 steps
    with pytest.raises(UserError, match=r"--thoughts 18 \(latent, default\).*n_positions"):
        P.plan_runs(str(cfg_path), [], ["nothink", "latent"], [], [0], thoughts=[0, 17, 18])
    assert len(P.plan_runs(str(cfg_path), [], ["latent"], [], [0], thoughts=[0, 17])) == 1
    assert len(P.plan_runs(str(cfg_path), [], ["nothink"], [], [0], thoughts=[99])) == 1  # no chain to fit
    # the default counts 0 .. 2n keep those that fit: 13 + N + 2 <= 18 -> N <= 3
    small = C.load_config(str(cfg_path), ["model.n_positions=18", "thinking.n_thoughts=2"])
    assert P.default_thoughts(small) == ([0, 1, 2, 3], [4])
    ranged = C.load_config(str(cfg_path), ["thinking.n_thoughts_train=[1,3]"])
    assert P.default_thoughts(ranged) == (list(range(7)), [])


def _rec(arm, tag, seed, think_em, base_em, thinking=True, thoughts=None):
    ev = {"step": 4, "base": {"answer_accuracy": base_em + 0.5, "exact_match": base_em}}
    if thinking:
        ev["thinking"] = {"answer_accuracy": think_em + 0.5, "exact_match": think_em}
    cfg = C.Config(thinking=C.ThinkingConfig(enabled=thinking, n_thoughts=2))
    return R.RunRecord(arm, tag, seed, f"/x/{arm}/{tag}/{seed}", cfg, ev, 10.0 + seed, thoughts or {})


def test_aggregation_best_and_differences():
    th = lambda em: {"thinking": {"exact_match": em}}  # noqa: E731
    recs = [
        _rec("latent", "optim.lr=0.001", 0, 0.30, 0.10, thoughts={0: th(0.1), 2: th(0.3)}),
        _rec("latent", "optim.lr=0.001", 1, 0.50, 0.20, thoughts={0: th(0.2), 2: th(0.5)}),
        _rec("latent", "optim.lr=0.003", 0, 0.60, 0.30),  # higher max, lower mean
        _rec("latent", "optim.lr=0.003", 1, 0.10, 0.30),
        _rec("nothink", "optim.lr=0.001", 0, None, 0.20, thinking=False),
        _rec("nothink", "optim.lr=0.001", 1, None, 0.40, thinking=False),
        _rec("nothink", "optim.lr=0.003", 0, None, 0.10, thinking=False),
    ]
    recs.append(R.RunRecord("nothink", "optim.lr=0.003", 1, "/x", None, None, None))  # unfinished: left out
    groups = S.group_runs(recs)
    assert [(g.arm, g.tag, g.best) for g in groups] == [
        ("latent", "optim.lr=0.001", True),
        ("latent", "optim.lr=0.003", False),  # mean 0.40 > 0.35
        ("nothink", "optim.lr=0.001", True),
        ("nothink", "optim.lr=0.003", False),
    ]  # mean 0.30 > 0.10
    m = groups[0].metrics()
    assert m["exact_match"] == S.Stat(0.4, 0.3, 0.5, 2)
    assert m["answer_accuracy"] == S.Stat(pytest.approx(0.9), 0.8, 1.0, 2)
    assert m["base_exact_match"] == S.Stat(pytest.approx(0.15), 0.1, 0.2, 2)
    assert m["gap"] == S.Stat(pytest.approx(0.25), pytest.approx(0.2), pytest.approx(0.3), 2)
    assert groups[2].metrics()["exact_match"] == S.Stat(pytest.approx(0.3), 0.2, 0.4, 2)
    assert "gap" not in groups[2].metrics()
    bvb = S.best_vs_best(groups)
    d = bvb["differences"]["latent - nothink"]  # per seed: +0.1, +0.1
    assert (d.mean, d.min, d.max, d.n) == (pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1), 2)
    assert bvb["differences"]["latent - own base"].min == pytest.approx(0.2)
    assert "latent - pause" not in bvb["differences"]
    assert groups[0].thought_scaling() == {0: S.Stat(pytest.approx(0.15), 0.1, 0.2, 2), 2: S.Stat(0.4, 0.3, 0.5, 2)}
    assert S.paired({0: 1.0, 1: 0.0, 2: 5.0}, {0: 0.5, 1: 0.5}) == S.Stat(0.0, -0.5, 0.5, 2)


def test_thought_scaling_per_k(tmp_path):
    """Each hop count's own held-out set gets its own test-time curve (does a k-hop problem need N >= k?);
    the base path's per-k numbers (the same keys) are not mistaken for the thinking path's."""
    from silentstar_jax.experiment.plots import plot_thoughts

    th = lambda k1, k2: {
        "base": {"exact_match_k1": 0.9, "exact_match_k2": 0.9},  # noqa: E731
        "thinking": {"exact_match": k2, "exact_match_k1": k1, "exact_match_k2": k2},
    }
    recs = [
        _rec("latent", "default", 0, 0.5, 0.1, thoughts={1: th(1.0, 0.1), 2: th(1.0, 0.8), 4: th(0.9, 0.7)}),
        _rec("latent", "default", 1, 0.5, 0.1, thoughts={1: th(0.8, 0.0), 2: th(1.0, 0.6)}),
    ]
    (g,) = S.group_runs(recs)
    assert g.hop_counts() == [1, 2]
    per_k = g.thought_scaling_per_k()
    assert per_k[1][1] == S.Stat(pytest.approx(0.9), 0.8, 1.0, 2) and per_k[1][4] == S.Stat(0.9, 0.9, 0.9, 1)
    assert per_k[2][2] == S.Stat(pytest.approx(0.7), 0.6, 0.8, 2) and per_k[2][1].max == 0.1
    assert per_k[2] == g.thought_scaling()  # here the held-out set is the k = 2 set
    no_k = S.group_runs([_rec("latent", "default", 0, 0.5, 0.1, thoughts={2: {"thinking": {"exact_match": 0.5}}})])
    assert no_k[0].hop_counts() == [] and no_k[0].thought_scaling_per_k() == {}
    plot_thoughts([g], str(tmp_path / "t.png"))
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_flops_per_token():
    from silentstar_jax.benchmark import Shape, ideal_flops

    cfg = C.from_dict(MICRO)
    s = Shape(batch=1, seq=13, layers=1, d_model=16, heads=2, vocab=260)
    nothink = C.from_dict({**MICRO, "thinking": {"enabled": False}})
    assert S.flops_per_token(nothink) == pytest.approx(3 * ideal_flops(s, None) / 13)
    assert S.flops_per_token(cfg) == pytest.approx(3 * ideal_flops(s, 1) / 13)
    two = C.from_dict({**MICRO, "thinking": {**MICRO["thinking"], "n_samples": 2}})
    assert S.flops_per_token(two) == pytest.approx(3 * (2 * ideal_flops(s, 1) - ideal_flops(s, None)) / 13)


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--arms", "foo"], "unknown arm"),
        (["--grid", "nokey"], "--grid"),
        (["--grid", "optim.lrr=1,2"], "did you mean"),
        (["--seeds", "a"], "--seeds"),
        (["--jobs", "0"], "--jobs"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_cli_input(tmp_path, args, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(MICRO))
    base = {"--config": str(cfg), "--seeds": "0", "--out": str(tmp_path / "out")}
    for k in args[::2]:
        base.pop(k, None)
    proc = run_cli("experiment.py", *[x for kv in base.items() for x in kv], *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_code_line_names_each_commit_and_its_runs():
    from silentstar_jax.experiment.report import _code_line

    a, b = "a" * 40, "b" * 40
    rec = lambda arm, seed, *code: R.RunRecord(
        arm,
        "default",
        seed,
        "d",
        None,
        None,
        None,
        code=[{"step": s, "commit": c, "dirty": dirty} for s, c, dirty in code],
    )
    recs = [
        rec("nothink", 0, (0, b, True)),
        rec("latent", 1, (0, a, False)),
        rec("latent", 0, (0, a, False), (4, b, True)),
        rec("pause", 0),
    ]
    assert recs[2].commits == [a, b + "+dirty"]  # resumed at step 4 by other code: both named
    assert _code_line(recs) == (
        "Code: aaaaaaa (latent/default seeds 0,1); bbbbbbb+dirty (latent/default seeds 0, "
        "nothink/default seeds 0); not recorded (pause/default seeds 0)."
    )
    assert _code_line(recs[1:2]) == "Code: commit aaaaaaa (every run)."


def test_code_version_names_the_checkout_or_nothing(tmp_path):
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run_dir.code_version()["commit"] == head and len(head) == 40
    assert run_dir.code_version(str(tmp_path)) == {}  # not a git checkout: nothing claimed


def test_missing_config_and_empty_report(tmp_path):
    proc = run_cli("experiment.py", "--config", str(tmp_path / "nope.yaml"), "--seeds", "0", "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: config file not found: {tmp_path / 'nope.yaml'}"
    proc = run_cli("experiment.py", "--out", str(tmp_path / "none"), "--report-only")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no runs/" in proc.stderr


def test_damaged_run_config_is_one_line(tmp_path):
    d = tmp_path / "runs" / "latent" / "default" / "seed0"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("train: [unclosed\n")
    proc = run_cli("experiment.py", "--out", str(tmp_path), "--report-only")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(d / "config.yaml") in lines[0], proc.stderr
    (d / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": -1}}))  # valid YAML, invalid config
    proc = run_cli("experiment.py", "--out", str(tmp_path), "--report-only")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {d / 'config.yaml'}: "), (
        proc.stderr
    )


# ---------------------------------------------------------------- end to end


def test_end_to_end_then_skip(tmp_path):
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(yaml.safe_dump(MICRO))
    out = tmp_path / "exp"
    args = [
        "--config",
        str(cfg),
        "--seeds",
        "0,1",
        "--out",
        str(out),
        "--arms",
        "latent,nothink",
        "--grid",
        "optim.lr=3e-3",
        "--thoughts",
        "2",
        "--jobs",
        "2",
    ]  # grids' cross product, best: unit tests
    proc = run_cli("experiment.py", *args, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = ["optim.lr=0.003"]
    dirs = {(a, t, s): out / "runs" / a / t / f"seed{s}" for a in ("latent", "nothink") for t in tags for s in (0, 1)}
    evals = {}
    for (arm, tag, seed), d in dirs.items():
        rc = yaml.safe_load((d / "config.yaml").read_text())
        assert rc["run"]["seed"] == seed and rc["optim"]["lr"] == float(tag.split("=")[1])
        assert rc["thinking"]["enabled"] == (arm == "latent") and rc["train"]["steps"] == 4
        ev = json.loads((d / "eval.json").read_text())
        assert ev["step"] == 4
        assert json.loads((d / "runner.json").read_text())["wall_s"] > 0
        assert [json.loads(l)["step"] for l in (d / "evals.jsonl").read_text().splitlines()] == [2, 4]
        assert (d / "eval_thoughts_2.json").exists() == (arm == "latent")
        started = [l for l in (d / "train.log").read_text().splitlines() if l.startswith("$ ")]
        assert len(started) == 1 + (arm == "latent") and all(
            l.startswith(f"$ {shlex.join([sys.executable, '-m', 'silentstar_jax.train_cli', '--config'])} ")
            for l in started
        ), started
        assert not (d / "eval_thoughts_0.json").exists()
        evals[arm, tag, seed] = ev
    for name in ("results.md", "results.json", "exact_match_vs_step.png", "thoughts_scaling.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "exact_match_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert "python experiment.py " + " ".join(args) in md and "](thoughts_scaling.png)" in md

    # results.json against the runs' own eval.json, computed here independently
    res = json.loads((out / "results.json").read_text())
    groups = {(g["arm"], g["gridtag"]): g for g in res["groups"]}
    assert set(groups) == {(a, t) for a in ("latent", "nothink") for t in tags}
    em = {}
    for (arm, tag), g in groups.items():
        path = "thinking" if arm == "latent" else "base"
        for name in ("exact_match", "answer_accuracy"):
            xs = [evals[arm, tag, s][path][name] for s in (0, 1)]
            assert g["metrics"][name] == {
                "mean": pytest.approx(statistics.mean(xs)),
                "min": min(xs),
                "max": max(xs),
                "n": 2,
            }
        em[arm, tag] = {s: evals[arm, tag, s][path]["exact_match"] for s in (0, 1)}
        if arm == "latent":
            gap = [
                evals[arm, tag, s]["thinking"]["exact_match"] - evals[arm, tag, s]["base"]["exact_match"]
                for s in (0, 1)
            ]
            assert g["metrics"]["gap"]["mean"] == pytest.approx(statistics.mean(gap))
    best = {}
    for arm in ("latent", "nothink"):
        means = [sum(em[arm, t].values()) / 2 for t in tags]
        best[arm] = tags[means.index(max(means))]  # ties: the first
        assert [groups[arm, t]["best"] for t in tags] == [t == best[arm] for t in tags]
    diff = [em["latent", best["latent"]][s] - em["nothink", best["nothink"]][s] for s in (0, 1)]
    d = res["best_vs_best"]["differences"]["latent - nothink"]
    assert d["mean"] == pytest.approx(statistics.mean(diff)) and d["min"] == pytest.approx(min(diff))
    sc = res["thoughts_scaling"]["latent"]
    assert sc["gridtag"] == best["latent"] and sc["trained_n"] == 1 and set(sc["exact_match"]) == {"2"}
    for n in (2,):
        xs = [
            json.loads((dirs["latent", best["latent"], s] / f"eval_thoughts_{n}.json").read_text())["thinking"][
                "exact_match"
            ]
            for s in (0, 1)
        ]
        assert sc["exact_match"][str(n)]["mean"] == pytest.approx(statistics.mean(xs))
    assert len(res["runs"]) == 4 and all(r["finished"] for r in res["runs"])
    # the code that trained each run, from git here; the report names it
    git = lambda *a: subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    assert all(r["commits"] == [head] for r in res["runs"]), res["runs"]
    assert sorted(r["dir"] for r in res["runs"]) == sorted(os.path.relpath(d, out) for d in dirs.values())
    assert f"(`runs/` beside this file). Code: commit {head[:7]}{head[40:]} (every run)." in md

    # the same command again: every run skipped, nothing trained or evaluated
    logs = {k: (d / "train.log").read_text() for k, d in dirs.items()}
    again = run_cli("experiment.py", *args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stderr.splitlines()
    assert sum(" skip " in l for l in lines) == 4 and not any(" start " in l for l in lines), again.stderr
    assert all((d / "train.log").read_text() == logs[k] for k, d in dirs.items())

    # the report alone, from the directories
    (out / "results.json").unlink()
    rep = run_cli("experiment.py", "--out", str(out), "--report-only")
    assert rep.returncode == 0, rep.stderr
    rebuilt = json.loads((out / "results.json").read_text())
    assert rebuilt["groups"] == res["groups"]
    trained = shlex.join(["python", "experiment.py", *args])  # run twice, recorded once
    assert rebuilt["training_commands"] == res["training_commands"] == [trained]
    assert f"```bash\n{trained}\n```" in (out / "results.md").read_text()

    # a run directory copied into another experiment is evaluated where it is, though its config.yaml
    # still names the original directory
    src = dirs["latent", tags[0], 0]
    copy = tmp_path / "copy" / "runs" / "latent" / tags[0] / "seed0"
    shutil.copytree(src, copy)
    (copy / "eval_thoughts_2.json").unlink()
    stamp = (src / "eval_thoughts_2.json").stat().st_mtime_ns
    again = run_cli(
        "experiment.py",
        "--config",
        str(cfg),
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "copy"),
        "--arms",
        "latent",
        "--grid",
        "optim.lr=3e-3",
        "--thoughts",
        "2",
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (copy / "eval_thoughts_2.json").exists() and (src / "eval_thoughts_2.json").stat().st_mtime_ns == stamp


def test_failed_run_reported_others_continue(tmp_path):
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(yaml.safe_dump(MICRO))
    out = tmp_path / "exp"
    proc = run_cli(
        "experiment.py",
        "--config",
        str(cfg),
        "--seeds",
        "0",
        "--out",
        str(out),
        "--arms",
        "nothink",
        "--grid",
        "data.n_eval=16,100000",
        "train.steps=2",
        "train.eval_every=0",
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAILED nothink/data.n_eval=100000/seed0: train.py exited 2" in proc.stderr
    assert "distinct" in proc.stderr  # the tail of the failed run's log
    assert proc.stderr.strip().splitlines()[-1].startswith("1 run(s) failed")
    res = json.loads((out / "results.json").read_text())
    assert [(g["gridtag"], g["best"]) for g in res["groups"]] == [("data.n_eval=16", True)]
    assert [r["finished"] for r in res["runs"]] == [True, False]

"""Mistakes a user can make end in one clear line on stderr and exit code 2, never a traceback."""

import json
import os
import shutil

import pytest
from conftest import FIXTURE, run_cli


def _assert_clean_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    empty = root / "empty"
    empty.mkdir()
    wrong_type = root / "wrong_type"
    shutil.copytree(FIXTURE, wrong_type)
    cfg = json.load(open(wrong_type / "config.json"))
    cfg["model_type"] = "llama"
    json.dump(cfg, open(wrong_type / "config.json", "w"))
    mismatch = root / "mismatch"
    shutil.copytree(FIXTURE, mismatch)
    cfg["model_type"], cfg["n_embd"] = "gpt2", 64
    json.dump(cfg, open(mismatch / "config.json", "w"))
    pickled = root / "pickled"
    shutil.copytree(FIXTURE, pickled)
    os.remove(pickled / "model.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return {"empty": str(empty), "wrong_type": str(wrong_type), "mismatch": str(mismatch), "pickled": str(pickled)}


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "no such directory"),
        ("empty", "no config.json"),
        ("wrong_type", "only 'gpt2'"),
        ("mismatch", "does not match"),
        ("pickled", "--allow-pickle"),
    ],
)
def test_bad_checkpoints(bad_dirs, case, needle):
    path = bad_dirs.get(case, "./does/not/exist")
    _assert_clean_error(run_cli("generate.py", "--init-from", path, "--prompt", "hi"), needle)


def test_unknown_hub_name_offline():
    proc = run_cli("generate.py", "--init-from", "no-such-org-xyz/no-such-model", "--prompt", "hi")
    _assert_clean_error(proc, "hub")


def test_generate_json_schema():
    proc = run_cli(
        "generate.py",
        "--init-from",
        FIXTURE,
        "--prompt",
        "The quick",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
        "--no-think",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(l) for l in proc.stdout.strip().splitlines()]
    assert [l["step"] for l in lines[:-1]] == [0, 1, 2, 3]
    for l in lines[:-1]:
        assert set(l) == {"step", "token_id", "token", "logprob", "logprob_base"}
        assert l["logprob"] <= 0 and l["logprob"] == l["logprob_base"]
    assert set(lines[-1]) == {"text", "tokens_per_second"} and lines[-1]["tokens_per_second"] > 0

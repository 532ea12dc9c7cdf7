"""export.py: a trained run's base GPT-2 loads in `transformers` and gives our base path's logits."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli, train_micro_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_micro_run(tmp_path_factory, n_positions=160)


def test_export_loads_in_transformers_with_base_logits(run_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    from silentstar_jax.loading import load_run

    out = tmp_path / "hf"
    proc = run_cli("export.py", "--checkpoint", run_dir, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0], proc.stdout
    assert "thinking heads" in lines[0] and "not part of the exported model" in lines[0]
    model, tok, _, _ = load_run(run_dir)
    ids = tok.encode("47*6=282")
    ours = np.asarray(model(jnp.asarray([ids])).base_logits)
    hf = GPT2LMHeadModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_export_user_errors(run_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for args in (
        ["--checkpoint", run_dir, "--out", str(busy)],  # non-empty, no --force
        ["--checkpoint", str(tmp_path / "nope")],  # no such path
        ["--runs", str(tmp_path / "none")],
    ):  # no run to export
        proc = run_cli("export.py", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert os.listdir(busy) == ["keep.txt"]

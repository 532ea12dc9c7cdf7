"""The language-model report (experiment/lm_report.py) on hand-made run directories: CE per seed,
differences paired by seed and computed here independently, the gate's last value, the plot, errors."""

import json

import numpy as np
import pytest
import yaml

from silentstar_jax.errors import UserError
from silentstar_jax.experiment import lm_report

CE = {  # arm -> seed -> (thinking CE, base CE); nothink has its base only
    "latent": {0: (1.90, 2.00), 1: (1.80, 1.95), 2: (2.10, 2.05)},
    "nothink": {0: (None, 2.02), 1: (None, 1.97), 2: (None, 2.00)},
}


def fake_run(root, arm, seed, think, base, steps=4):
    d = root / "runs" / arm / "default" / f"seed{seed}"
    d.mkdir(parents=True)
    cfg = {"thinking": {"enabled": think is not None}, "train": {"steps": steps}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    ev = {"step": steps, "base": {"ce": base}}
    if think is not None:
        ev["thinking"] = {"ce": think}
    (d / "eval.json").write_text(json.dumps(ev))
    evals = [
        {"step": s, **{p: {"ce": v["ce"] + (steps - s) * 0.1} for p, v in ev.items() if p != "step"}} for s in (2, 4)
    ]
    (d / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    if think is not None:
        (d / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "mix_weight": 0.1 * s + seed}) + "\n" for s in (1, 3))
        )


@pytest.fixture
def exp(tmp_path):
    for arm, seeds in CE.items():
        for seed, (think, base) in seeds.items():
            fake_run(tmp_path / "exp", arm, seed, think, base)
    return tmp_path / "exp"


def test_rows_and_paired_differences(exp, tmp_path):
    rows = [("thinking", str(exp), "latent", None), ("no-think", str(exp), "nothink", None)]
    res = lm_report.build(rows, ["no-think"], str(tmp_path), "t")
    lat = res["rows"]["thinking"]
    assert lat["ce"] == {s: v[0] for s, v in CE["latent"].items()}
    assert res["rows"]["no-think"]["ce"] == {s: v[1] for s, v in CE["nothink"].items()}
    want = [CE["latent"][s][0] - CE["nothink"][s][1] for s in range(3)]
    d = res["differences"]["thinking - no-think"]
    np.testing.assert_allclose([d["ce"]["mean"], d["ce"]["min"], d["ce"]["max"]], [np.mean(want), min(want), max(want)])
    rel = [CE["latent"][s][0] / CE["nothink"][s][1] - 1 for s in range(3)]
    np.testing.assert_allclose(d["relative"]["mean"], np.mean(rel))
    own = [CE["latent"][s][0] - CE["latent"][s][1] for s in range(3)]
    np.testing.assert_allclose(res["differences"]["thinking - own base"]["ce"]["mean"], np.mean(own))
    # the gate's last logged value (step 3): 0.3 + seed
    np.testing.assert_allclose(lat["final_mix_weight"]["mean"], 0.3 + 1.0)
    assert res["rows"]["no-think"]["final_mix_weight"] is None
    assert (tmp_path / "ce_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = lm_report.markdown(res)
    assert "| thinking | 0,1,2 | 1.9000 / 1.8000 / 2.1000 |" in md
    assert lm_report.markdown(json.loads((tmp_path / "lm_results.json").read_text())) == md  # from the file too


def test_errors(exp, tmp_path, capsys):
    with pytest.raises(UserError, match="no finished run of arm pause"):
        lm_report.build([("x", str(exp), "pause", None)], [], str(tmp_path), "t")
    with pytest.raises(UserError, match="not a row"):
        lm_report.build([("x", str(exp), "latent", None)], ["y"], str(tmp_path), "t")
    with pytest.raises(SystemExit) as e:
        lm_report.main(["--out", str(tmp_path), "--row", "bad"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "NAME=DIR:ARM" in err and err.strip().count("\n") == 0

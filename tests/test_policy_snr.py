"""The policy gradient's signal-to-noise (silentstar_jax/policy_snr.py) against what must hold: REINFORCE
is an unbiased estimate of the gradient that the pathwise estimator computes through the same samples,
so with many samples per position and a group baseline the two agree; with one sample they do not."""

import itertools

import pytest
from conftest import ROOT, run_cli
from flax import nnx

from silentstar_jax import config as C
from silentstar_jax.data import build_data
from silentstar_jax.model import build_model
from silentstar_jax.policy_snr import gradient_agreement
from silentstar_jax.tokenizer import tokenizer_for


def _cfg(**think):
    return C.from_dict(
        {
            "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 24},
            "thinking": {"n_thoughts": 1, "sigma_init": 0.5, "mix_init_bias": 0.0, **think},
            "data": {"task": "hops", "n_symbols": 4, "hops": 1, "n_train": 64, "n_eval": 8},
            "train": {"batch_size": 4, "seq_len": 8},
        }
    )


def _agreement(cfg):
    tok = tokenizer_for(cfg)
    data, _ = build_data(cfg, tok)
    params = nnx.split(build_model(cfg, tok))[1].to_pure_dict()
    return gradient_agreement(cfg, tok, params, list(itertools.islice(data, 2)))


def test_reinforce_agrees_with_pathwise_given_many_samples():
    many = _agreement(_cfg(n_samples=64, baseline="group_mean"))
    one = _agreement(_cfg(n_samples=1, baseline="value"))
    assert many["cos_P"]["mean"] > 0.7 and many["cos_of_means_P"] > 0.8, many["cos_P"]
    assert many["self_P"]["mean"] > 0.6  # two estimates from independent noise agree
    assert many["cos_P"]["mean"] > one["cos_P"]["mean"] + 0.3
    assert len(many["cos_all"]["per_batch"]) == 2


def test_pause_has_no_policy_gradient_to_measure():
    with pytest.raises(ValueError, match="sampled thoughts"):
        _agreement(_cfg(feedback="pause"))


def test_bench_script_prints_the_table_and_json(tmp_path):
    proc = run_cli(
        "bench/policy_gradient_snr.py",
        "--config",
        f"{ROOT}/configs/tiny.yaml",
        "--batches",
        "1",
        "model.n_embd=32",
        "model.n_head=2",
        "train.batch_size=4",
        "data.n_train=64",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "cos(RF, PW)" in lines[1] and lines[2].startswith("projection")
    import json

    assert json.loads(lines[-1])["batches"] == 1
    bad = run_cli("bench/policy_gradient_snr.py", "--batches", "1")
    assert bad.returncode == 2 and "--checkpoint RUN or --config" in bad.stderr

"""The results index and the README's results table are generated from the records (results/*/results.json):
a number typed by hand, or a record changed without regenerating, fails here."""

from __future__ import annotations

import os

import pytest

from silentstar_jax.experiment import index

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_committed_index_is_what_the_records_generate(in_root):
    docs = index.load()
    with open(index.INDEX) as f:
        assert f.read() == index.render_index(docs), "stale: run python -m silentstar_jax.experiment.index"
    with open(index.README) as f:
        readme = f.read()
    assert readme == index.render_readme(readme, docs), (
        "stale README table: run python -m silentstar_jax.experiment.index"
    )


def test_every_results_folder_is_indexed_with_a_named_metric(in_root):
    docs = index.load()
    assert set(docs) == set(index.folders()) and len(docs) >= 20
    for name, doc in docs.items():
        idx = doc["index"]
        index.metric_name(idx["metric"])  # raises on a metric without a name
        assert idx["estimator"] in ("pathwise", "reinforce"), name
        assert set(idx.get("seeds_fresh", [])) <= set(idx["seeds_ever"]), name


def _experiment_doc(tmp_path, thinking, nothink):
    """A minimal experiment.py record: the latent arm at two seeds and a no-think control."""
    runs = [
        {
            "arm": "latent",
            "gridtag": "g",
            "seed": s,
            "eval": {"base": {"exact_match": 0.1}, "thinking": {"exact_match": v}},
        }
        for s, v in enumerate(thinking)
    ]
    runs += [
        {"arm": "nothink", "gridtag": "g", "seed": s, "eval": {"base": {"exact_match": v}}}
        for s, v in enumerate(nothink)
    ]
    return {
        "command": "python experiment.py --out x",
        "runs": runs,
        "best_vs_best": {"arms": {"latent": {"gridtag": "g"}, "nothink": {"gridtag": "g"}}},
        "index": {
            "title": "t",
            "finding": "f",
            "config": "",
            "supervised": "answer only",
            "estimator": "pathwise",
            "metric": "exact_match",
            "seeds_fresh": [1],
            "seeds_ever": [0, 1],
            "headline": "claim",
        },
    }


def test_numbers_come_from_the_runs_paired_by_seed(tmp_path):
    doc = _experiment_doc(tmp_path, thinking=[1.0, 0.5], nothink=[0.2, 0.4])
    arms = index.arm_values(doc, "exact_match")
    assert arms == {"thinking": {0: 1.0, 1: 0.5}, "base": {0: 0.1, 1: 0.1}, "nothink": {0: 0.2, 1: 0.4}}
    g = index.gaps(arms)
    assert g["thinking − no-think"].mean == pytest.approx(0.45) and g["thinking − no-think"].min == pytest.approx(0.1)
    text = "\n".join(index.entry("x", doc))
    assert "0.750 (0.500 to 1.000)" in text and "held-out exact match" in text
    row = index.headline_row("x", doc)
    assert "exact_match: thinking 0.750, no-think 0.300" in row and "| 1 / 2 |" in row
    assert "− no-think +0.450 (+0.100 to +0.800)" in row and "| not in the record |" in row
    doc["runs"][0]["commits"] = ["0123456789abcdef", "fedcba9876543210+dirty"]
    assert "| 0123456, fedcba9+dirty |" in index.headline_row("x", doc)


def test_index_paths_read_records_not_written_by_experiment_py():
    doc = {
        "r": {"a": {"em": 0.25}, "b": {"em": 0.75}},
        "index": {"metric": "exact_match", "arms": {"thinking": {"0": "r/a/em"}, "nothink": {"0": "r/b/em"}}},
    }
    assert index.arm_values(doc, "exact_match") == {"thinking": {0: 0.25}, "nothink": {0: 0.75}}
    doc["index"]["arms"]["pause"] = {"0": "r/c/em"}
    with pytest.raises(KeyError):
        index.arm_values(doc, "exact_match")


def test_a_metric_without_a_name_is_refused():
    assert "answer accuracy" in index.metric_name("answer_accuracy") and "not exact match" in index.metric_name(
        "answer_accuracy"
    )
    assert "3-hop" in index.metric_name("exact_match_k3")
    with pytest.raises(ValueError):
        index.metric_name("accuracy")

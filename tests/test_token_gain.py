"""Where thinking helps (token_gain.py): the bucket table against a hand count, windows of a long text
against direct scoring, the coloured-text picture."""

import json

import numpy as np
import pytest
from PIL import Image
from test_thinking import make_model

from silentstar_jax import token_gain as tg
from silentstar_jax.generation import score


def test_gain_table_by_hand():
    rng = np.random.default_rng(0)
    lp_base = -rng.uniform(0.1, 5.0, 200)
    delta = rng.normal(0, 0.1, 200)
    classes = [tg.CLASSES[i % 3] for i in range(200)]
    t = tg.gain_table(lp_base + delta, lp_base, classes, n_buckets=4)
    loss = -lp_base
    order = np.argsort(loss)
    for b, idx in zip(t["buckets"], np.split(order, 4)):  # 50 tokens each, easy to hard
        assert b["tokens"] == 50
        np.testing.assert_allclose([b["base_loss"], b["delta"]], [loss[idx].mean(), delta[idx].mean()])
    assert [b["base_loss"] for b in t["buckets"]] == sorted(b["base_loss"] for b in t["buckets"])
    hard = loss >= np.sort(loss)[180]
    np.testing.assert_allclose(t["hardest_10pct"]["delta"], delta[hard].mean())
    np.testing.assert_allclose(t["hardest_10pct_over_mean"], delta[hard].mean() / delta.mean())
    cls = np.asarray(classes)
    assert set(t["by_class"]) == set(tg.CLASSES[:3])
    np.testing.assert_allclose(t["by_class"]["digit"]["delta"], delta[cls == "digit"].mean())
    assert "hardest 10%" in tg.table_markdown(t)


@pytest.mark.parametrize(
    "ch,want",
    [
        ("a", "letter"),
        ("7", "digit"),
        (" ", "space"),
        ("\n", "newline"),
        (";", "punctuation"),
        ("\ufffd", "other"),
        ("\x00", "other"),
    ],
)
def test_char_class(ch, want):
    assert tg.char_class(ch) == want


@pytest.mark.parametrize("anchor", ["none", "sequence"])
def test_windows_are_scored_as_their_own_texts(anchor):
    """A text longer than the room: window w's tokens 1.. are scored as the text of window w alone."""
    model = make_model(anchor=anchor, n_thoughts=2)
    ids = list(np.random.default_rng(1).integers(0, 40, 23))
    s = tg.score_document(model, ids, True, None, room=10)
    assert s["index"].tolist() == [i for i in range(1, 23) if i % 10]  # each window's first token unscored
    direct = score(model, ids[10:20], True)
    at = {j: k for k, j in enumerate(s["index"].tolist())}
    for j in range(11, 20):
        np.testing.assert_allclose(s["logprob"][at[j]], direct["logprob"][j - 11], atol=1e-5)
        np.testing.assert_allclose(s["logprob_base"][at[j]], direct["logprob_base"][j - 11], atol=1e-5)


def test_coloured_text_picture(tmp_path):
    pieces = [("def f(x):\n", 0.5), ("    return x", -0.3), ("\x01", 0.0)]
    n = tg.plot_coloured_text(pieces, str(tmp_path / "t.png"), "t", width=8)
    assert n == len("def f(x):") + len("    return x") + 1  # newlines end rows, are not drawn
    img = Image.open(tmp_path / "t.png")
    assert img.size[0] > 100 and img.text["Description"] == f"{n} chars"
    px = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((px[:, 2] - px[:, 0]) > 60).any() and ((px[:, 0] - px[:, 2]) > 60).any()  # blue and red cells


def test_read_documents(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x"}) + "\n\n" + json.dumps({"text": "y"}) + "\n")
    (tmp_path / "c.jsonl").write_text('{"body": 1}\n')
    assert tg.read_documents(str(tmp_path / "a.txt")) == ["one\ntwo\n"]
    assert tg.read_documents(str(tmp_path / "b.jsonl")) == ["x", "y"]
    from silentstar_jax.errors import UserError

    with pytest.raises(UserError, match="c.jsonl:1"):
        tg.read_documents(str(tmp_path / "c.jsonl"))

"""Built-in task rows: thought targets aligned with the answers (checked against a solver that reads the
prompt text), per-k held-out sets, skewed mixes and easy-to-hard curricula that resume exactly."""

import numpy as np
import pytest
from test_data import _resume_matches, one_line_error

from silentstar_jax import config as C
from silentstar_jax.data import build_data, task_kwargs, task_rows
from silentstar_jax.errors import UserError
from silentstar_jax.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
EOS = TOK.eos_id
B = 4


SEQ_LEN_TASK = 39  # a binding example at defaults is 35 tokens + end-of-text


def task_cfg(**data):
    return C.from_dict(
        {
            "data": {"source": "task", "n_train": 64, "n_eval": 16, **data},
            "train": {"seq_len": SEQ_LEN_TASK, "batch_size": B},
        }
    )


def solve_from_text(task, prompt, hops):
    """The hop-by-hop results for the first answer token, recomputed from the prompt text alone."""
    if task == "hops":
        table, rest = prompt.split("|")
        k, x = (int(rest[0]) if len(rest) == 2 else hops), rest[-1]
        path = []
        for _ in range(k):
            x = table[ord(x) - ord("a")]
            path.append(x)
        return path
    statements, q = prompt.split("?")
    bound = dict(st.split("=") for st in statements.rstrip(";").split(";"))
    path = [bound[q]]
    while not path[-1].isdigit():
        path.append(bound[path[-1]])
    return path


@pytest.mark.parametrize(
    "task,kw",
    [
        ("hops", {}),
        ("hops", {"hops": 3, "hops_min": 1, "show_hops": True}),
        ("binding", {}),
        ("binding", {"hops": 3, "hops_min": 2}),
    ],
)
def test_thought_targets_align_with_the_first_answer_token(task, kw):
    hops = kw.get("hops", 2)
    train, evals = build_data(task_cfg(task=task, **kw), TOK)
    ks = set()
    for rows in (train.rows, evals):
        tt, tokens, lmask = rows.thought_targets, rows.tokens, rows.loss_mask
        assert tt.dtype == np.int32 and tt.shape == (len(tokens), SEQ_LEN_TASK + 1, hops)
        for i in range(len(tokens)):
            p = int(np.argmax(lmask[i]))  # the first answer token, as a target
            assert lmask[i, p] == 1 and lmask[i, :p].sum() == 0
            prompt = TOK.decode(tokens[i, :p])
            want = solve_from_text(task, prompt, hops)
            k = len(want)
            ks.add(k)
            assert [TOK.decode([t]) for t in tt[i, p, :k]] == want
            assert tt[i, p, k - 1] == tokens[i, p]  # the last hop is the answer token
            assert (tt[i, p, k:] == -1).all()  # fewer hops: padded with -1
            others = np.delete(tt[i], p, axis=0)
            assert (others == -1).all()  # every other position: -1
            assert (tt[i] >= 0).sum() == k
    assert ks == set(range(kw.get("hops_min", hops), hops + 1))


def test_thought_targets_width_is_hops_even_for_few_examples():
    """J comes from the config, not from the examples drawn: a tiny eval set of easy problems
    still gets the width of the training rows."""
    hardest = []
    for seed in range(4):
        train, evals = build_data(
            task_cfg(task="hops", hops=3, hops_min=1, show_hops=True, n_eval=2, shuffle_seed=seed), TOK
        )
        assert evals.thought_targets.shape[2] == train.rows.thought_targets.shape[2] == 3
        hardest.append(max(int((evals.thought_targets[i] >= 0).sum()) for i in range(2)))
    assert min(hardest) < 3  # some eval set has no 3-hop problem: the case this test is about


def test_thought_targets_only_for_tasks_with_thoughts():
    train, evals = build_data(task_cfg(task="multiply"), TOK)
    assert evals.thought_targets is None and train.rows.thought_targets is None
    assert next(train).thought_targets is None


def test_row_iterator_batches_thought_targets():
    train, _ = build_data(task_cfg(task="binding", hops=3, hops_min=1, n_vars=6), TOK)
    assert all(v is not None and len(v) == 64 for v in train.rows)
    seen = 0
    for _ in range(40):  # a few epochs of 64 rows
        batch = next(train)
        assert batch.thought_targets.shape == (B, SEQ_LEN_TASK + 1, 3)
        for b in range(B):  # the targets travel with their own row
            p = int(np.argmax(batch.loss_mask[b]))
            prompt = TOK.decode(batch.tokens[b, :p])
            want = solve_from_text("binding", prompt, 3)
            assert [TOK.decode([t]) for t in batch.thought_targets[b, p, : len(want)]] == want
            assert (batch.thought_targets[b] >= 0).sum() == len(want)
            seen += 1
    assert seen == 40 * B


def test_binding_queries_score_only_the_digits():
    """queries > 1: the later query letters are inputs, not targets (no loss, no thought targets, not in
    exact match); every digit answer is scored and carries its own hops as thought targets."""
    d = task_cfg(task="binding", n_vars=8, hops=2, queries=3).data
    rows = task_rows(d, TOK, 48, "train", 32, seed=0)
    for b in range(32):
        p = int(np.argmax(rows.loss_mask[b]))
        n = int(rows.attn_mask[b].sum())
        text = TOK.decode(rows.tokens[b, : n - 1])  # without end-of-text
        bound = dict(st.split("=") for st in text[: text.index("?")].rstrip(";").split(";"))
        scored = [i for i in range(p, n) if rows.loss_mask[b, i]]
        assert scored == [p, p + 3, p + 6, n - 1]  # three digits and end-of-text
        for i in scored[:-1]:
            q, path = TOK.decode(rows.tokens[b, i - 1 : i]), []
            while not q.isdigit():
                q = bound[q]
                path.append(q)
            assert TOK.decode(rows.tokens[b, i : i + 1]) == path[-1] and len(path) == 2
            assert [TOK.decode([t]) for t in rows.thought_targets[b, i]] == path
        assert (rows.thought_targets[b] >= 0).sum() == 3 * 2  # nowhere else


@pytest.mark.parametrize(
    "data,want",
    [
        ({"task": "multiply", "digits_a": 3}, {"digits_a": 3, "digits_b": 2}),
        ({"task": "prosqa", "n_nodes": 8}, {"n_nodes": 8}),
        (
            {"task": "hops", "n_symbols": 5, "hops": 3, "hops_min": 1, "show_hops": True},
            {
                "n_symbols": 5,
                "hops": 3,
                "hops_min": 1,
                "show_hops": True,
                "hops_weights": None,
                "single_cycle": False,
                "chain": 1,
            },
        ),
        (
            {
                "task": "hops",
                "hops": 2,
                "hops_min": 1,
                "show_hops": True,
                "hops_weights": [2, 1],
                "single_cycle": True,
                "chain": 3,
            },
            {
                "n_symbols": 16,
                "hops": 2,
                "hops_min": 1,
                "show_hops": True,
                "hops_weights": (2, 1),
                "single_cycle": True,
                "chain": 3,
            },
        ),
        (
            {"task": "binding", "n_vars": 10, "hops": 4},
            {"n_vars": 10, "hops": 4, "hops_min": None, "hops_weights": None, "queries": 1},
        ),
    ],
)
def test_task_kwargs(data, want):
    assert task_kwargs(task_cfg(**data).data) == want


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"task": "hops", "hops": 3, "hops_min": 1}, "show_hops"),
        ({"task": "binding", "hops": 5}, "n_vars"),
        ({"task": "hops", "n_symbols": 30}, "n_symbols"),
    ],
)
def test_bad_task_knobs_are_one_line(data, needle):
    with pytest.raises(UserError) as e:
        build_data(task_cfg(**data), TOK)
    msg = one_line_error(e)
    assert msg.startswith("data: ") and needle in msg


def _ks(rows, task, hops):
    """The hop count of every row, solved from its prompt text."""
    out = []
    for i in range(len(rows.tokens)):
        p = int(np.argmax(rows.loss_mask[i]))
        out.append(len(solve_from_text(task, TOK.decode(rows.tokens[i, :p]), hops)))
    return out


@pytest.mark.parametrize("task", ["hops", "binding"])
def test_eval_hops_min_and_per_k_held_out_sets(task):
    """data.eval_hops_min: the held-out set draws only k >= it; eval_rows_by_k: one held-out set per
    k of the mix, each of that k only and disjoint from training."""
    from silentstar_jax.data import eval_rows_by_k

    kw = {"hops": 3, "hops_min": 1, "n_eval": 60, **({"show_hops": True} if task == "hops" else {})}
    cfg = task_cfg(task=task, eval_hops_min=3, **kw)
    train, evals = build_data(cfg, TOK)
    assert set(_ks(evals, task, 3)) == {3}
    assert set(_ks(train.rows, task, 3)) == {1, 2, 3}
    by_k = eval_rows_by_k(cfg.data, TOK, SEQ_LEN_TASK + 1)
    assert sorted(by_k) == [1, 2, 3]
    train_rows = {bytes(r) for r in train.rows.tokens}
    for k, rows in by_k.items():
        assert len(rows.tokens) == 60 and set(_ks(rows, task, 3)) == {k}
        assert not train_rows & {bytes(r) for r in rows.tokens}
    assert eval_rows_by_k(task_cfg(task=task, hops=2).data, TOK, SEQ_LEN_TASK + 1) == {}  # one k: none


def test_hops_weights_skew_training_not_the_held_out_set():
    cfg = task_cfg(task="hops", hops=2, hops_min=1, show_hops=True, hops_weights=[3.0, 1.0], n_train=2000, n_eval=400)
    train, evals = build_data(cfg, TOK)
    k_train, k_eval = _ks(train.rows, "hops", 2), _ks(evals, "hops", 2)
    assert 0.70 < k_train.count(1) / len(k_train) < 0.80  # 3:1 toward one hop
    assert 0.40 < k_eval.count(1) / len(k_eval) < 0.60  # held out: uniform
    with pytest.raises(UserError, match="hops_weights"):
        C.validate(task_cfg(task="hops", hops=3, hops_min=1, show_hops=True, hops_weights=[1.0, 1.0]))
    with pytest.raises(UserError, match="eval_hops_min"):
        C.validate(task_cfg(task="hops", hops=2, eval_hops_min=3))


@pytest.mark.parametrize("task", ["hops", "binding"])
def test_hops_curriculum_adds_harder_k_at_its_step_and_resumes_exactly(task):
    """data.hops_curriculum [0, 0.25, 0.5] of 20 steps: k = 1 only before step 5, k <= 2 before 10, then
    every k (each row's k solved from its prompt text); iid draws of the pool, resumed bit for bit."""
    from silentstar_jax.data import CurriculumIterator, row_hops

    data = {
        "source": "task",
        "task": task,
        "hops": 3,
        "hops_min": 1,
        "n_train": 300,
        "n_eval": 16,
        "hops_curriculum": [0.0, 0.25, 0.5],
        **({"show_hops": True} if task == "hops" else {}),
    }
    cfg = C.from_dict({"data": data, "train": {"seq_len": SEQ_LEN_TASK, "batch_size": 8, "steps": 20}})
    make = lambda: build_data(cfg, TOK)[0]
    it = make()
    assert isinstance(it, CurriculumIterator)
    np.testing.assert_array_equal(row_hops(it.rows), _ks(it.rows, task, 3))
    seen = {}
    for step in range(20):
        seen.setdefault(1 if step < 5 else 2 if step < 10 else 3, set()).update(_ks(next(it), task, 3))
    assert seen == {1: {1}, 2: {1, 2}, 3: {1, 2, 3}}
    _resume_matches(make, 7, 6)
    with pytest.raises(UserError, match="hops_curriculum"):
        C.validate(C.from_dict({"data": {**data, "hops_curriculum": [0.0, 0.5, 0.25]}}))
    with pytest.raises(UserError, match="hops_curriculum"):
        C.validate(C.from_dict({"data": {**data, "hops_curriculum": [0.0, 0.5]}}))


def test_hops_chain_targets_at_every_answer_token():
    """data.chain = m: m answers, each f^k of the token before it; every answer token carries its own
    k intermediate targets (solved here from the text alone)."""
    cfg = task_cfg(task="hops", hops=2, n_symbols=8, chain=4, single_cycle=True)
    train, evals = build_data(cfg, TOK)
    for rows in (train.rows, evals):
        for i in range(len(rows.tokens)):
            p = int(np.argmax(rows.loss_mask[i]))
            text = TOK.decode(rows.tokens[i, : p + 4])
            table, prev = text[:8], text[p - 1]
            for a in range(4):
                want = solve_from_text("hops", f"{table}|{prev}", 2)
                assert [TOK.decode([t]) for t in rows.thought_targets[i, p + a]] == want
                assert text[p + a] == want[-1]
                prev = want[-1]
            assert (rows.thought_targets[i, p + 4 :] == -1).all() and (rows.thought_targets[i, :p] == -1).all()
            assert rows.loss_mask[i, p : p + 5].sum() == 5  # four letters and end-of-text

"""Text data through HF `datasets`: local formats, text_field, streaming (hold-out, packing, exact
resume), the hub path (load_dataset faked: no network) and deterministic shuffling. Byte tokenizer,
blocks of T = 16 tokens, a few dozen short documents."""
import json
import signal

import datasets
import numpy as np
import pytest

from silentstar_jax import config as C
from silentstar_jax.data import StreamIterator, build_data, task_kwargs, task_rows
from silentstar_jax.errors import UserError
from silentstar_jax.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
EOS = TOK.eos_id
SEQ_LEN, B = 15, 4
T = SEQ_LEN + 1


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path, monkeypatch):
    """Arrow caches of the local files go to tmp_path, not the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def make_docs(n, tag="doc"):
    """Unique one-line documents of 8..20 bytes."""
    return [f"{tag} {i:03d} " + "abc"[i % 3] * (i % 13) for i in range(n)]


def cfg(**data):
    return C.from_dict({"data": {"source": "files", **data}, "train": {"seq_len": SEQ_LEN, "batch_size": B}})


def write(tmp_path, fmt, columns: dict, name="corpus"):
    """columns {name: [str]} as a .txt (first column, a line each), .jsonl or .parquet file."""
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(next(iter(columns.values()))) + "\n")
    elif fmt == "jsonl":
        n = len(next(iter(columns.values())))
        path.write_text("".join(json.dumps({k: v[i] for k, v in columns.items()}) + "\n" for i in range(n)))
    else:
        datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return str(path)


def packed(docs):
    """The expected blocks [N, T]: documents joined by EOS, cut into whole blocks (written out
    independently of data.pack)."""
    flat = [t for d in docs for t in [*d.encode(), EOS]]
    n = len(flat) // T
    return np.asarray(flat[:n * T]).reshape(n, T)


def stream_pieces(batches):
    """Batches of a stream -> (its tokens flat, the complete documents in order). The stream starts
    at a document boundary; the text after the last EOS is a partial document."""
    flat = np.concatenate([b.tokens.reshape(-1) for b in batches]).tolist()
    pieces, cur = [], []
    for t in flat:
        if t == EOS:
            pieces.append(TOK.decode(cur))
            cur = []
        else:
            cur.append(t)
    return flat, pieces


def rejoined(pieces):
    return [t for p in pieces for t in [*p.encode(), EOS]]


def one_line_error(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- local files, not streaming

@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_local_formats_pack_the_same_blocks(tmp_path, fmt):
    docs = make_docs(60)
    train, evals = build_data(cfg(files=[write(tmp_path, fmt, {"text": docs})]), TOK)
    want = packed(docs)
    n_eval = max(1, len(want) // 20)
    np.testing.assert_array_equal(train.rows.tokens, want[:-n_eval])   # eval: the tail, held out
    np.testing.assert_array_equal(evals.tokens, want[-n_eval:])
    assert evals.loss_mask.all() and train.rows.attn_mask.all()


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_text_field_selects_a_column(tmp_path, fmt, streaming):
    docs = make_docs(60)
    path = write(tmp_path, fmt, {"text": ["decoy"] * 60, "body": docs})
    train, evals = build_data(cfg(files=[path], text_field="body", streaming=streaming, eval_docs=5), TOK)
    if streaming:
        np.testing.assert_array_equal(evals.tokens, packed(docs[:5]))
        _, pieces = stream_pieces([next(train) for _ in range(4)])
        assert pieces and set(pieces) <= set(docs[5:])
    else:
        np.testing.assert_array_equal(np.concatenate([train.rows.tokens, evals.tokens]), packed(docs))


@pytest.mark.parametrize("streaming", [False, True])
def test_missing_text_field_is_one_line(tmp_path, streaming):
    path = write(tmp_path, "jsonl", {"body": make_docs(30)})
    with pytest.raises(UserError) as e:
        train, _ = build_data(cfg(files=[path], text_field="content", streaming=streaming, eval_docs=5), TOK)
        next(train)
    msg = one_line_error(e)
    assert "data.text_field 'content'" in msg and "body" in msg


@pytest.mark.parametrize("streaming", [False, True])
def test_non_text_values_are_one_line_and_nulls_are_empty(tmp_path, streaming):
    numbers = write(tmp_path, "jsonl", {"text": list(range(30))}, name="numbers")
    with pytest.raises(UserError) as e:
        train, _ = build_data(cfg(files=[numbers], streaming=streaming, eval_docs=5), TOK)
        next(train)
    assert "holds int values" in one_line_error(e)
    docs = make_docs(60)
    holes = write(tmp_path, "jsonl", {"text": [None if i % 10 == 3 else d for i, d in enumerate(docs)]})
    train, evals = build_data(cfg(files=[holes], streaming=False), TOK)
    got = np.concatenate([train.rows.tokens, evals.tokens])
    np.testing.assert_array_equal(got, packed(["" if i % 10 == 3 else d for i, d in enumerate(docs)]))


def test_old_stream_state_is_one_line(tmp_path):
    train, _ = build_data(cfg(files=[write(tmp_path, "txt", {"text": make_docs(30)})], streaming=True,
                              eval_docs=5), TOK)
    with pytest.raises(UserError) as e:
        train.restore({"hf": {}, "leftover": []})
    assert "older streaming iterator" in one_line_error(e)


def test_negative_shuffle_seed_is_refused():
    with pytest.raises(UserError) as e:
        cfg(shuffle_seed=-1)
    assert "data.shuffle_seed" in one_line_error(e)


@pytest.mark.parametrize("files,needle", [
    (["a.txt", "b.jsonl"], "mixes formats"),
    (["a.csv"], "unsupported extension '.csv'"),
    (["a.txt", "gone.txt"], "not found: "),
])
def test_bad_files_are_one_line(tmp_path, files, needle):
    for f in ("a.txt", "b.jsonl", "a.csv"):
        (tmp_path / f).write_text('{"text": "x"}\n')
    with pytest.raises(UserError) as e:
        build_data(cfg(files=[str(tmp_path / f) for f in files]), TOK)
    assert needle in one_line_error(e)


@pytest.mark.parametrize("streaming", [False, True])
def test_eval_split_with_local_files_is_refused(tmp_path, streaming):
    """Local files have one split: an eval_split would silently evaluate on the training text."""
    path = write(tmp_path, "txt", {"text": make_docs(60)})
    with pytest.raises(UserError) as e:
        build_data(cfg(files=[path], eval_split="validation", streaming=streaming), TOK)
    assert "data.eval_split" in one_line_error(e)


# ---------------------------------------------------------------- streaming local files

@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_streaming_holds_out_the_head_and_packs_every_document(tmp_path, fmt):
    docs = make_docs(60)
    train, evals = build_data(cfg(files=[write(tmp_path, fmt, {"text": docs})], streaming=True, eval_docs=5), TOK)
    np.testing.assert_array_equal(evals.tokens, packed(docs[:5]))
    pass_tokens = sum(len(d) + 1 for d in docs[5:])
    batches = [next(train) for _ in range(2 * pass_tokens // (B * T) + 2)]   # a bit over two passes
    assert all(b.tokens.shape == (B, T) and b.loss_mask.all() for b in batches)
    flat, pieces = stream_pieces(batches)
    assert flat[:len(rejoined(pieces))] == rejoined(pieces)   # documents back to back, EOS between
    n = len(docs) - 5
    first, second = pieces[:n], pieces[n:2 * n]
    assert sorted(first) == sorted(second) == docs[5:]         # each pass: every training doc once
    assert first != second and first != docs[5:]                # shuffled, differently each pass
    assert not set(pieces) & set(docs[:5])                      # eval documents never trained on


def test_streaming_without_documents_after_hold_out_is_one_line(tmp_path):
    path = write(tmp_path, "jsonl", {"text": make_docs(20)})
    train, _ = build_data(cfg(files=[path], streaming=True, eval_docs=20), TOK)
    def hung(*_):
        raise TimeoutError("next() loops forever on an empty stream")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(UserError) as e:   # before the fix: an endless loop
            next(train)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert "data.eval_docs" in one_line_error(e)


def _resume_matches(make, k, n_after):
    """k batches, save the state as a checkpoint would (JSON), then a fresh iterator restored from it
    gives the same next n_after batches as the original."""
    it = make()
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(it.state))
    want = [next(it).tokens for _ in range(n_after)]
    again = make()
    again.restore(state)
    for i, w in enumerate(want):
        np.testing.assert_array_equal(next(again).tokens, w, err_msg=f"batch {k + i}")


def test_streaming_resume_is_exact(tmp_path):
    """Crosses the end of a pass after the restore (a restored HF stream used to restart there)."""
    path = write(tmp_path, "jsonl", {"text": make_docs(60)})
    _resume_matches(lambda: build_data(cfg(files=[path], streaming=True, eval_docs=5), TOK)[0], 3, 20)


@pytest.mark.parametrize("k", [0, 2, 9])
def test_streaming_resume_is_exact_across_blocks(tmp_path, k):
    """Shuffle blocks of 7 documents: states inside a block, at block starts and in a later pass."""
    d = cfg(files=[write(tmp_path, "parquet", {"text": make_docs(40)})], streaming=True).data
    _resume_matches(lambda: StreamIterator(d, TOK, T, B, seed=3, skip=5, block_docs=7), k, 14)


# ---------------------------------------------------------------- hub datasets (load_dataset faked)

@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset -> in-memory splits; returns the calls as (path, name, split, streaming)."""
    splits = {"train": make_docs(60, "train"), "validation": make_docs(10, "valid")}
    calls = []

    def load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        ds = datasets.Dataset.from_dict({"text": splits[split], "id": list(range(len(splits[split])))})
        return ds.to_iterable_dataset(num_shards=2) if streaming else ds

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return splits, calls


def hub_cfg(**data):
    return cfg(source="hf", dataset="user/tiny", dataset_config="small", **data)


def test_hub_eval_split(fake_hub):
    splits, calls = fake_hub
    train, evals = build_data(hub_cfg(eval_split="validation"), TOK)
    assert calls == [("user/tiny", "small", "train", False), ("user/tiny", "small", "validation", False)]
    np.testing.assert_array_equal(train.rows.tokens, packed(splits["train"]))   # all of train: none held out
    np.testing.assert_array_equal(evals.tokens, packed(splits["validation"]))


def test_hub_tail_held_out_of_split(fake_hub):
    splits, calls = fake_hub
    train, evals = build_data(hub_cfg(split="validation"), TOK)   # a non-default split, passed through
    assert calls == [("user/tiny", "small", "validation", False)]
    want = packed(splits["validation"])
    np.testing.assert_array_equal(np.concatenate([train.rows.tokens, evals.tokens]), want)
    assert len(evals.tokens) == max(1, len(want) // 20)


def test_hub_streaming(fake_hub):
    splits, calls = fake_hub
    train, evals = build_data(hub_cfg(streaming=True, eval_docs=4), TOK)
    assert calls == [("user/tiny", "small", "train", True)] * 2
    np.testing.assert_array_equal(evals.tokens, packed(splits["train"][:4]))
    _, pieces = stream_pieces([next(train) for _ in range(20)])
    assert sorted(pieces[:56]) == splits["train"][4:]


def test_hub_streaming_eval_split(fake_hub):
    splits, calls = fake_hub
    make = lambda: build_data(hub_cfg(streaming=True, eval_split="validation", eval_docs=6), TOK)
    train, evals = make()
    assert calls == [("user/tiny", "small", "validation", True), ("user/tiny", "small", "train", True)]
    np.testing.assert_array_equal(evals.tokens, packed(splits["validation"][:6]))
    _, pieces = stream_pieces([next(train) for _ in range(20)])
    assert sorted(pieces[:60]) == splits["train"]                # nothing of train held out
    _resume_matches(lambda: make()[0], 3, 16)


@pytest.mark.parametrize("error,needle", [
    (FileNotFoundError("Dataset 'user/nope' doesn't exist on the Hub\nsecond line"), "doesn't exist on the Hub"),
    (ConnectionError(), "ConnectionError"),
])
def test_hub_load_failure_is_one_line(monkeypatch, error, needle):
    def load_dataset(*args, **kwargs):
        raise error
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(UserError) as e:
        build_data(cfg(source="hf", dataset="user/nope"), TOK)
    msg = one_line_error(e)
    assert msg.startswith("data: could not load dataset") and needle in msg


def test_hub_needs_a_dataset_name():
    with pytest.raises(UserError) as e:
        build_data(cfg(source="hf"), TOK)
    assert "data.dataset" in one_line_error(e)


# ---------------------------------------------------------------- deterministic shuffling

@pytest.mark.parametrize("streaming", [False, True])
def test_shuffle_seed(tmp_path, streaming):
    path = write(tmp_path, "jsonl", {"text": make_docs(200)})

    def batches(seed):
        train, _ = build_data(cfg(files=[path], streaming=streaming, eval_docs=5, shuffle_seed=seed), TOK)
        return np.stack([next(train).tokens for _ in range(3)])

    a = batches(0)
    np.testing.assert_array_equal(batches(0), a)
    assert not np.array_equal(batches(1), a)


# ---------------------------------------------------------------- task rows: thought targets

SEQ_LEN_TASK = 39   # a binding example at defaults is 35 tokens + end-of-text


def task_cfg(**data):
    return C.from_dict({"data": {"source": "task", "n_train": 64, "n_eval": 16, **data},
                        "train": {"seq_len": SEQ_LEN_TASK, "batch_size": B}})


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


@pytest.mark.parametrize("task,kw", [("hops", {}), ("hops", {"hops": 3, "hops_min": 1, "show_hops": True}),
                                     ("binding", {}), ("binding", {"hops": 3, "hops_min": 2})])
def test_thought_targets_align_with_the_first_answer_token(task, kw):
    hops = kw.get("hops", 2)
    train, evals = build_data(task_cfg(task=task, **kw), TOK)
    ks = set()
    for rows in (train.rows, evals):
        tt, tokens, lmask = rows.thought_targets, rows.tokens, rows.loss_mask
        assert tt.dtype == np.int32 and tt.shape == (len(tokens), SEQ_LEN_TASK + 1, hops)
        for i in range(len(tokens)):
            p = int(np.argmax(lmask[i]))   # the first answer token, as a target
            assert lmask[i, p] == 1 and lmask[i, :p].sum() == 0
            prompt = TOK.decode(tokens[i, :p])
            want = solve_from_text(task, prompt, hops)
            k = len(want)
            ks.add(k)
            assert [TOK.decode([t]) for t in tt[i, p, :k]] == want
            assert tt[i, p, k - 1] == tokens[i, p]              # the last hop is the answer token
            assert (tt[i, p, k:] == -1).all()                    # fewer hops: padded with -1
            others = np.delete(tt[i], p, axis=0)
            assert (others == -1).all()                          # every other position: -1
            assert (tt[i] >= 0).sum() == k
    assert ks == set(range(kw.get("hops_min", hops), hops + 1))


def test_thought_targets_width_is_hops_even_for_few_examples():
    """J comes from the config, not from the examples drawn: a tiny eval set of easy problems
    still gets the width of the training rows."""
    hardest = []
    for seed in range(4):
        train, evals = build_data(task_cfg(task="hops", hops=3, hops_min=1, show_hops=True, n_eval=2,
                                           shuffle_seed=seed), TOK)
        assert evals.thought_targets.shape[2] == train.rows.thought_targets.shape[2] == 3
        hardest.append(max(int((evals.thought_targets[i] >= 0).sum()) for i in range(2)))
    assert min(hardest) < 3   # some eval set has no 3-hop problem: the case this test is about


def test_thought_targets_only_for_tasks_with_thoughts():
    train, evals = build_data(task_cfg(task="multiply"), TOK)
    assert evals.thought_targets is None and train.rows.thought_targets is None
    assert next(train).thought_targets is None


def test_row_iterator_batches_thought_targets():
    train, _ = build_data(task_cfg(task="binding", hops=3, hops_min=1, n_vars=6), TOK)
    assert all(v is not None and len(v) == 64 for v in train.rows)
    seen = 0
    for _ in range(40):   # a few epochs of 64 rows
        batch = next(train)
        assert batch.thought_targets.shape == (B, SEQ_LEN_TASK + 1, 3)
        for b in range(B):   # the targets travel with their own row
            p = int(np.argmax(batch.loss_mask[b]))
            prompt = TOK.decode(batch.tokens[b, :p])
            want = solve_from_text("binding", prompt, 3)
            assert [TOK.decode([t]) for t in batch.thought_targets[b, p, :len(want)]] == want
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
        text = TOK.decode(rows.tokens[b, :n - 1])     # without end-of-text
        bound = dict(st.split("=") for st in text[:text.index("?")].rstrip(";").split(";"))
        scored = [i for i in range(p, n) if rows.loss_mask[b, i]]
        assert scored == [p, p + 3, p + 6, n - 1]        # three digits and end-of-text
        for i in scored[:-1]:
            q, path = TOK.decode(rows.tokens[b, i - 1:i]), []
            while not q.isdigit():
                q = bound[q]
                path.append(q)
            assert TOK.decode(rows.tokens[b, i:i + 1]) == path[-1] and len(path) == 2
            assert [TOK.decode([t]) for t in rows.thought_targets[b, i]] == path
        assert (rows.thought_targets[b] >= 0).sum() == 3 * 2      # nowhere else


@pytest.mark.parametrize("data,want", [
    ({"task": "multiply", "digits_a": 3}, {"digits_a": 3, "digits_b": 2}),
    ({"task": "prosqa", "n_nodes": 8}, {"n_nodes": 8}),
    ({"task": "hops", "n_symbols": 5, "hops": 3, "hops_min": 1, "show_hops": True},
     {"n_symbols": 5, "hops": 3, "hops_min": 1, "show_hops": True, "hops_weights": None, "single_cycle": False,
      "chain": 1}),
    ({"task": "hops", "hops": 2, "hops_min": 1, "show_hops": True, "hops_weights": [2, 1], "single_cycle": True,
      "chain": 3},
     {"n_symbols": 16, "hops": 2, "hops_min": 1, "show_hops": True, "hops_weights": (2, 1), "single_cycle": True,
      "chain": 3}),
    ({"task": "binding", "n_vars": 10, "hops": 4}, {"n_vars": 10, "hops": 4, "hops_min": None, "hops_weights": None,
                                                    "queries": 1}),
])
def test_task_kwargs(data, want):
    assert task_kwargs(task_cfg(**data).data) == want


@pytest.mark.parametrize("data,needle", [
    ({"task": "hops", "hops": 3, "hops_min": 1}, "show_hops"),
    ({"task": "binding", "hops": 5}, "n_vars"),
    ({"task": "hops", "n_symbols": 30}, "n_symbols"),
])
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
    assert eval_rows_by_k(task_cfg(task=task, hops=2).data, TOK, SEQ_LEN_TASK + 1) == {}   # one k: none


def test_hops_weights_skew_training_not_the_held_out_set():
    cfg = task_cfg(task="hops", hops=2, hops_min=1, show_hops=True, hops_weights=[3.0, 1.0], n_train=2000,
                   n_eval=400)
    train, evals = build_data(cfg, TOK)
    k_train, k_eval = _ks(train.rows, "hops", 2), _ks(evals, "hops", 2)
    assert 0.70 < k_train.count(1) / len(k_train) < 0.80          # 3:1 toward one hop
    assert 0.40 < k_eval.count(1) / len(k_eval) < 0.60            # held out: uniform
    with pytest.raises(UserError, match="hops_weights"):
        C.validate(task_cfg(task="hops", hops=3, hops_min=1, show_hops=True, hops_weights=[1.0, 1.0]))
    with pytest.raises(UserError, match="eval_hops_min"):
        C.validate(task_cfg(task="hops", hops=2, eval_hops_min=3))


@pytest.mark.parametrize("task", ["hops", "binding"])
def test_hops_curriculum_adds_harder_k_at_its_step_and_resumes_exactly(task):
    """data.hops_curriculum [0, 0.25, 0.5] of 20 steps: k = 1 only before step 5, k <= 2 before 10, then
    every k (each row's k solved from its prompt text); iid draws of the pool, resumed bit for bit."""
    from silentstar_jax.data import CurriculumIterator, row_hops
    data = {"source": "task", "task": task, "hops": 3, "hops_min": 1, "n_train": 300, "n_eval": 16,
            "hops_curriculum": [0.0, 0.25, 0.5], **({"show_hops": True} if task == "hops" else {})}
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


def test_files_curriculum_adds_each_file_at_its_step_and_resumes_exactly(tmp_path):
    """data.files_curriculum [0, 0.5] of 10 steps: blocks of the first file only before step 5, of both
    after; each file packed and held out on its own (its tail); resumed bit for bit; bad lists refused."""
    from silentstar_jax.data import CurriculumIterator
    docs = {"easy": make_docs(80, "easy"), "hard": [x.upper() for x in make_docs(80, "hard")]}   # no block in both
    files = [write(tmp_path, "txt", {"text": v}, name=k) for k, v in docs.items()]
    c = C.from_dict({"data": {"source": "files", "files": files, "files_curriculum": [0.0, 0.5]},
                     "train": {"seq_len": SEQ_LEN, "batch_size": B, "steps": 10}})
    C.validate(c)
    make = lambda: build_data(c, TOK)[0]
    it, evals = build_data(c, TOK)
    assert isinstance(it, CurriculumIterator)
    want = {k: packed(v).astype(np.int32) for k, v in docs.items()}
    tail = {k: max(1, len(w) // 20) for k, w in want.items()}
    np.testing.assert_array_equal(evals.tokens, np.concatenate([w[-tail[k]:] for k, w in want.items()]))
    easy_blocks = {w.tobytes() for w in want["easy"][:-tail["easy"]]}
    hard_blocks = {w.tobytes() for w in want["hard"][:-tail["hard"]]}
    later = set()
    for step in range(10):
        rows = {r.tobytes() for r in next(it).tokens}
        assert rows <= easy_blocks | hard_blocks
        if step < 5:
            assert not rows & hard_blocks, step
        else:
            later |= rows
    assert later & hard_blocks and later & easy_blocks
    _resume_matches(make, 3, 5)
    for bad in ([0.5, 0.5], [0.0], [0.0, 1.0]):
        with pytest.raises(UserError, match="files_curriculum"):
            C.validate(C.from_dict({"data": {"source": "files", "files": files, "files_curriculum": bad}}))
    with pytest.raises(UserError, match="files_curriculum"):
        C.validate(C.from_dict({"data": {"source": "task", "files_curriculum": [0.0]}}))


def test_hops_chain_targets_at_every_answer_token():
    """data.chain = m: m answers, each f^k of the token before it; every answer token carries its own
    k intermediate targets (solved here from the text alone)."""
    cfg = task_cfg(task="hops", hops=2, n_symbols=8, chain=4, single_cycle=True)
    train, evals = build_data(cfg, TOK)
    for rows in (train.rows, evals):
        for i in range(len(rows.tokens)):
            p = int(np.argmax(rows.loss_mask[i]))
            text = TOK.decode(rows.tokens[i, :p + 4])
            table, prev = text[:8], text[p - 1]
            for a in range(4):
                want = solve_from_text("hops", f"{table}|{prev}", 2)
                assert [TOK.decode([t]) for t in rows.thought_targets[i, p + a]] == want
                assert text[p + a] == want[-1]
                prev = want[-1]
            assert (rows.thought_targets[i, p + 4:] == -1).all() and (rows.thought_targets[i, :p] == -1).all()
            assert rows.loss_mask[i, p:p + 5].sum() == 5            # four letters and end-of-text


@pytest.mark.parametrize("streaming", [False, True])
def test_bad_json_lines_are_named_or_skipped_and_counted(tmp_path, capsys, streaming):
    """Fault: a .jsonl line without data.text_field (it used to be dropped without a word) and a line
    that is not JSON (its error named no line). Promise: one line naming file:line; with
    data.skip_bad_lines both are left out, a warning counts them, and the other lines train as written."""
    docs = make_docs(60)
    lines = [json.dumps({"text": d}) for d in docs]
    lines[7], lines[20] = json.dumps({"title": "no text"}), "not json {"
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    make = lambda **kw: build_data(cfg(files=[str(path)], streaming=streaming, eval_docs=5, **kw), TOK)
    with pytest.raises(UserError) as e:
        make()
    assert f"{path}:8: data.text_field 'text' is not in this line (its fields: title)" in one_line_error(e)
    capsys.readouterr()
    train, evals = make(skip_bad_lines=True)
    err = capsys.readouterr().err
    assert "skipped 2 bad lines" in err and f"{path}:8:" in err and f"{path}:21: not JSON" in err, err
    good = [d for i, d in enumerate(docs) if i not in (7, 20)]
    if streaming:
        np.testing.assert_array_equal(evals.tokens, packed(good[:5]))
        _, pieces = stream_pieces([next(train) for _ in range(4)])
        assert pieces and set(pieces) <= set(good[5:])
    else:
        np.testing.assert_array_equal(np.concatenate([train.rows.tokens, evals.tokens]), packed(good))

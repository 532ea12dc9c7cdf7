"""Text data through HF `datasets`: local formats, text_field, streaming (hold-out, packing, exact
resume), the hub path (load_dataset faked: no network) and deterministic shuffling. Byte tokenizer,
blocks of T = 16 tokens, a few dozen short documents."""

import json
import signal

import datasets
import numpy as np
import pytest

from silentstar_jax import config as C
from silentstar_jax.data import StreamIterator, build_data
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
    return np.asarray(flat[: n * T]).reshape(n, T)


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
    np.testing.assert_array_equal(train.rows.tokens, want[:-n_eval])  # eval: the tail, held out
    np.testing.assert_array_equal(evals.tokens, want[-n_eval:])
    assert evals.loss_mask.all() and train.rows.attn_mask.all()


def test_eval_files_are_the_held_out_text(tmp_path):
    """data.eval_files: evaluation reads every block of those files and training every block of data.files."""
    docs, held = make_docs(60), make_docs(30, tag="held")
    c = cfg(
        files=[write(tmp_path, "jsonl", {"text": docs})], eval_files=[write(tmp_path, "jsonl", {"text": held}, "h")]
    )
    train, evals = build_data(c, TOK)
    np.testing.assert_array_equal(train.rows.tokens, packed(docs))
    np.testing.assert_array_equal(evals.tokens, packed(held))
    with pytest.raises(UserError, match="eval_files"):
        C.validate(C.from_dict({"data": {"source": "task", "eval_files": ["x.jsonl"]}}))
    with pytest.raises(UserError, match="data.eval_files: not found"):
        build_data(cfg(files=c.data.files, eval_files=[str(tmp_path / "gone.jsonl")]), TOK)


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
    train, _ = build_data(
        cfg(files=[write(tmp_path, "txt", {"text": make_docs(30)})], streaming=True, eval_docs=5), TOK
    )
    with pytest.raises(UserError) as e:
        train.restore({"hf": {}, "leftover": []})
    assert "older streaming iterator" in one_line_error(e)


def test_negative_shuffle_seed_is_refused():
    with pytest.raises(UserError) as e:
        cfg(shuffle_seed=-1)
    assert "data.shuffle_seed" in one_line_error(e)


@pytest.mark.parametrize(
    "files,needle",
    [
        (["a.txt", "b.jsonl"], "mixes formats"),
        (["a.csv"], "unsupported extension '.csv'"),
        (["a.txt", "gone.txt"], "not found: "),
    ],
)
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
    batches = [next(train) for _ in range(2 * pass_tokens // (B * T) + 2)]  # a bit over two passes
    assert all(b.tokens.shape == (B, T) and b.loss_mask.all() for b in batches)
    flat, pieces = stream_pieces(batches)
    assert flat[: len(rejoined(pieces))] == rejoined(pieces)  # documents back to back, EOS between
    n = len(docs) - 5
    first, second = pieces[:n], pieces[n : 2 * n]
    assert sorted(first) == sorted(second) == docs[5:]  # each pass: every training doc once
    assert first != second and first != docs[5:]  # shuffled, differently each pass
    assert not set(pieces) & set(docs[:5])  # eval documents never trained on


def test_streaming_without_documents_after_hold_out_is_one_line(tmp_path):
    path = write(tmp_path, "jsonl", {"text": make_docs(20)})
    train, _ = build_data(cfg(files=[path], streaming=True, eval_docs=20), TOK)

    def hung(*_):
        raise TimeoutError("next() loops forever on an empty stream")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(UserError) as e:  # before the fix: an endless loop
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
    np.testing.assert_array_equal(train.rows.tokens, packed(splits["train"]))  # all of train: none held out
    np.testing.assert_array_equal(evals.tokens, packed(splits["validation"]))


def test_hub_tail_held_out_of_split(fake_hub):
    splits, calls = fake_hub
    train, evals = build_data(hub_cfg(split="validation"), TOK)  # a non-default split, passed through
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
    assert sorted(pieces[:60]) == splits["train"]  # nothing of train held out
    _resume_matches(lambda: make()[0], 3, 16)


@pytest.mark.parametrize(
    "error,needle",
    [
        (FileNotFoundError("Dataset 'user/nope' doesn't exist on the Hub\nsecond line"), "doesn't exist on the Hub"),
        (ConnectionError(), "ConnectionError"),
    ],
)
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


def test_files_curriculum_adds_each_file_at_its_step_and_resumes_exactly(tmp_path):
    """data.files_curriculum [0, 0.5] of 10 steps: blocks of the first file only before step 5, of both
    after; each file packed and held out on its own (its tail); resumed bit for bit; bad lists refused."""
    from silentstar_jax.data import CurriculumIterator

    docs = {"easy": make_docs(80, "easy"), "hard": [x.upper() for x in make_docs(80, "hard")]}  # no block in both
    files = [write(tmp_path, "txt", {"text": v}, name=k) for k, v in docs.items()]
    c = C.from_dict(
        {
            "data": {"source": "files", "files": files, "files_curriculum": [0.0, 0.5]},
            "train": {"seq_len": SEQ_LEN, "batch_size": B, "steps": 10},
        }
    )
    C.validate(c)
    make = lambda: build_data(c, TOK)[0]
    it, evals = build_data(c, TOK)
    assert isinstance(it, CurriculumIterator)
    want = {k: packed(v).astype(np.int32) for k, v in docs.items()}
    tail = {k: max(1, len(w) // 20) for k, w in want.items()}
    np.testing.assert_array_equal(evals.tokens, np.concatenate([w[-tail[k] :] for k, w in want.items()]))
    easy_blocks = {w.tobytes() for w in want["easy"][: -tail["easy"]]}
    hard_blocks = {w.tobytes() for w in want["hard"][: -tail["hard"]]}
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

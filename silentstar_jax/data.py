"""Training data: built-in reasoning tasks or text through Hugging Face `datasets`, as fixed-shape
`Batch`es {tokens, attn_mask, loss_mask} of [B, seq_len + 1] (inputs and their next-token targets).

Task examples are one per row (prompt + answer + end-of-text, padded; loss on the answer only).
Tasks with intermediate targets (hops, binding) add `thought_targets` [B, seq_len + 1, J]: at the
first answer token's position (aligned like loss_mask, the token as a target; at every answer
token's with `data.chain` > 1), entry j is the token id of the result after hop j + 1; -1
everywhere else. J = tasks.n_thoughts (= data.hops).
Text is tokenised, joined with end-of-text separators and packed into full blocks. Iterators are
deterministic given the seed and expose a small JSON-able `state` saved in checkpoints.
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from silentstar_jax import tasks
from silentstar_jax.config import Config, DataConfig
from silentstar_jax.errors import UserError
from silentstar_jax.tokenizer import Tokenizer


class Batch(NamedTuple):
    """Rows of a batch or of a whole split (a pytree: jit shards it as one argument). A task row's
    prompt ends where its loss_mask starts."""

    tokens: np.ndarray  # [N, T] int32 (pad: the tokenizer's pad id)
    attn_mask: np.ndarray  # [N, T] 1 = a real token
    loss_mask: np.ndarray  # [N, T] 1 = the token is scored as a target
    thought_targets: np.ndarray | None = None  # [N, T, J] token id after hop j + 1 (-1: none)

    def take(self, idx) -> Batch:
        return Batch(*(None if v is None else v[idx] for v in self))


def task_kwargs(d: DataConfig, split: str = "train") -> dict:
    """The keyword arguments of `tasks.make_examples` for the configured task (and split: the held-out
    set's hop counts can be data.eval_hops_min..hops)."""
    if d.task in ("hops", "binding") and split == "eval":  # held out: uniform over its k
        d = dataclasses.replace(d, hops_min=d.hops_min if d.eval_hops_min is None else d.eval_hops_min, hops_weights=[])
    if d.task == "prosqa":
        return {"n_nodes": d.n_nodes}
    if d.task == "hops":
        return {
            "n_symbols": d.n_symbols,
            "hops": d.hops,
            "hops_min": d.hops_min,
            "show_hops": d.show_hops,
            "hops_weights": tuple(d.hops_weights) or None,
            "single_cycle": d.single_cycle,
            "chain": d.chain,
        }
    if d.task == "binding":
        return {
            "n_vars": d.n_vars,
            "hops": d.hops,
            "hops_min": d.hops_min,
            "hops_weights": tuple(d.hops_weights) or None,
            "queries": d.queries,
        }
    return {"digits_a": d.digits_a, "digits_b": d.digits_b}


def encode_example(tok: Tokenizer, ex: tasks.Example) -> tuple[list[int], int]:
    """Token ids of prompt + answer + eos, and the number of prompt tokens."""
    p = tok.encode(ex.prompt)
    return p + tok.encode(ex.answer) + [tok.eos_id], len(p)


def task_rows(d: DataConfig, tok: Tokenizer, T: int, split: str, n: int, seed: int) -> Batch:
    try:
        exs = tasks.make_examples(d.task, n, seed=seed, split=split, **task_kwargs(d, split))
        J = tasks.n_thoughts(d.task, **task_kwargs(d))  # from the kwargs: train and eval get the same J
    except ValueError as e:
        raise UserError(f"data: {e}") from None
    rows = Batch(
        np.full((n, T), tok.pad_id, np.int32),
        np.zeros((n, T), np.int32),
        np.zeros((n, T), np.int32),
        np.full((n, T, J), -1, np.int32) if J else None,
    )
    for i, ex in enumerate(exs):
        ids, n_prompt = encode_example(tok, ex)
        if len(ids) > T:
            raise UserError(
                f"data: a {d.task} example needs {len(ids)} tokens but train.seq_len + 1 = {T}; raise train.seq_len"
            )
        rows.tokens[i, : len(ids)] = ids
        rows.attn_mask[i, : len(ids)] = 1
        rows.loss_mask[i, n_prompt : len(ids)] = 1
        if ex.scored:  # the answer's unscored tokens (e.g. binding's later queries); end-of-text stays scored
            rows.loss_mask[i, n_prompt : n_prompt + len(ex.scored)] = ex.scored
        for a, thoughts in enumerate(ex.token_thoughts or (ex.thoughts,)):  # answer token a's hops
            if len(thoughts) > J:
                raise ValueError(f"{d.task} example has {len(thoughts)} thoughts, more than n_thoughts = {J}")
            for j, thought in enumerate(thoughts):
                tid = tok.encode(thought)
                if len(tid) != 1:
                    raise UserError(
                        f"data: the {d.task} thought {thought!r} is {len(tid)} tokens for this "
                        "tokenizer; thought targets need one token each"
                    )
                rows.thought_targets[i, n_prompt + a, j] = tid[0]
    return rows


def hop_counts(d: DataConfig) -> list[int]:
    """The hop counts k that training or the held-out set draw (hops, binding tasks; else [])."""
    if d.source != "task" or d.task not in ("hops", "binding"):
        return []
    lo = min(x for x in (d.hops_min, d.eval_hops_min, d.hops) if x is not None)
    return list(range(lo, d.hops + 1))


def eval_rows_by_k(d: DataConfig, tok: Tokenizer, T: int) -> dict[int, Batch]:
    """Held-out rows of each single hop count k (n_eval each) when the task mixes counts: per-k exact
    match beside the held-out set's own. Empty for one count or other tasks."""
    ks = hop_counts(d)
    if len(ks) < 2:
        return {}
    return {
        k: task_rows(single_k(d, k), tok, T, "eval", d.n_eval, d.shuffle_seed + 1)._replace(thought_targets=None)
        for k in ks
    }


def single_k(d: DataConfig, k: int) -> DataConfig:
    """The task config of k-hop problems only (a per-k held-out set)."""
    return dataclasses.replace(d, hops=k, hops_min=k, eval_hops_min=None, hops_weights=[])


def _load_hf(d: DataConfig, split: str, streaming: bool):
    import datasets

    datasets.disable_progress_bars()
    try:
        if d.source == "files":
            if not d.files:
                raise UserError("data.source=files needs data.files (a list of text/JSON lines/parquet files)")
            missing = [f for f in d.files if not os.path.exists(f)]
            if missing:
                hint = " (corpus.py gather or write makes a corpus)" if missing[0].startswith("corpus") else ""
                raise UserError(f"data.files: not found: {missing[0]}{hint}")
            if d.eval_split:  # the files have one split: eval_split would evaluate on the training text
                raise UserError(
                    "data.eval_split is for data.source=hf; with data.files the eval text is held out of the files"
                )
            kinds = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
            exts = sorted({os.path.splitext(f)[1].lower() for f in d.files})
            bad = [e for e in exts if e not in kinds]
            if bad:
                raise UserError(f"data.files: unsupported extension {bad[0]!r} (use .txt, .jsonl/.json or .parquet)")
            builders = {kinds[e] for e in exts}
            if len(builders) > 1:  # one builder reads all the files: JSON read as text would train on braces
                raise UserError(f"data.files: mixes formats ({', '.join(exts)}); use one format at a time")
            builder = builders.pop()
            for f in d.files:
                _check_readable(f, builder)
            if builder == "json":  # read here, line by line: every bad line is named (or counted)
                return _json_dataset(d, streaming)
            try:
                return datasets.load_dataset(builder, data_files=list(d.files), split="train", streaming=streaming)
            except Exception as e:  # noqa: BLE001 - a file the checks above let through: still named
                raise UserError(
                    f"data.files: could not read {', '.join(d.files)} as {builder} ({_first_line(e)[:200]})"
                ) from None
        if not d.dataset:
            raise UserError("data.source=hf needs data.dataset (a hub dataset name)")
        return datasets.load_dataset(d.dataset, d.dataset_config, split=split, streaming=streaming)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - offline / unknown dataset: one line for the user
        raise UserError(f"data: could not load dataset {d.dataset!r} ({_first_line(e)[:200]})") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_readable(path: str, builder: str) -> None:
    """A data file that cannot be what its extension says is named before `datasets` reads it (whose
    own error names no file): unreadable, empty, binary where text is expected, not parquet."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise UserError(f"data.files: cannot read {path} ({e.strerror})") from None
    if not head:
        raise UserError(f"data.files: {path} is empty")
    if builder == "parquet":
        if head[:4] != b"PAR1":
            raise UserError(f"data.files: {path} is not a parquet file")
        return
    try:  # incremental: a character cut at the end of what was read is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < 1 << 16)
        ok = b"\0" not in head
    except UnicodeDecodeError:
        ok = False
    if not ok:
        raise UserError(f"data.files: {path} is not UTF-8 text (a binary file?)")


def _json_dataset(d: DataConfig, streaming: bool):
    """data.files of JSON lines as a dataset of their text field alone. Every line is checked first
    (also for streaming): one that is not a JSON object holding text in `data.text_field` stops with
    `file:line`, or with `data.skip_bad_lines` is left out and the count said in one warning."""
    import datasets

    bad: list[str] = []
    texts = [doc[d.text_field] for doc in _json_docs(d.files, d.text_field, d.skip_bad_lines, bad)]
    if bad:
        print(
            f"warning: data.files: skipped {len(bad)} bad line{'s' if len(bad) > 1 else ''} "
            f"(data.skip_bad_lines): {'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}",
            file=sys.stderr,
        )
    if not streaming:
        return datasets.Dataset.from_dict({d.text_field: texts})
    del texts  # streamed: read again, lazily (the check above has counted the bad lines)
    return datasets.IterableDataset.from_generator(
        _json_docs, gen_kwargs={"files": list(d.files), "field": d.text_field, "skip_bad": True}
    )


def _json_docs(files: list[str], field: str, skip_bad: bool, bad: list | None = None) -> Iterator[dict]:
    """{field: text} of each line of JSON-lines files (a .json file may also be one JSON list). A bad
    line raises UserError naming `file:line`, or (skip_bad) is left out and its `file:line: why`
    appended to `bad`."""
    for path in files:
        for where, rec, why in _json_records(path):
            if why is None and not isinstance(rec, dict):
                why = "not a JSON object"
            if why is None and field not in rec:
                why = f"data.text_field {field!r} is not in this line (its fields: {', '.join(map(str, rec))})"
            elif why is None and rec[field] is not None and not isinstance(rec[field], str):
                why = f"data.text_field {field!r} holds {type(rec[field]).__name__} values, not text"
            if why is None:
                yield {field: rec[field]}
            elif not skip_bad:
                raise UserError(f"{where}: {why}; fix the line, or set data.skip_bad_lines: true to skip such lines")
            elif bad is not None:
                bad.append(f"{where}: {why}")


def _json_records(path: str) -> Iterator[tuple[str, object, str | None]]:
    """(where, parsed record, None) or (where, None, why it does not parse) per non-blank line; a .json
    file holding one JSON list: per item."""
    with open(path, encoding="utf-8") as f:
        if path.lower().endswith(".json") and f.read(1 << 12).lstrip().startswith("["):
            f.seek(0)
            try:
                items = json.load(f)
            except ValueError as e:
                yield f"{path}:{getattr(e, 'lineno', '?')}", None, f"not JSON ({getattr(e, 'msg', e)})"
                return
            yield from (
                ((f"{path}: item {i}", x, None) for i, x in enumerate(items))
                if isinstance(items, list)
                else [(f"{path}:1", None, "not a JSON list of objects")]
            )
            return
        f.seek(0)
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                yield f"{path}:{n}", None, f"not JSON ({getattr(e, 'msg', e)})"
                continue
            yield f"{path}:{n}", rec, None


def _text(ex: dict, field: str) -> str:
    """One streamed document's text (a streamed dataset may not know its columns before reading)."""
    if field not in ex:
        raise UserError(f"data.text_field {field!r} not in the dataset's columns {list(ex)}")
    return _as_text(ex[field], field)


def _as_text(value, field: str) -> str:
    """A document's text; an empty or missing value (None) is an empty document."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"data.text_field {field!r} holds {type(value).__name__} values, not text")
    return value


def pack(docs_ids: list[list[int]], eos: int, T: int, carry: list[int] | None = None):
    """Join documents with eos separators, cut into full blocks of T. Returns (blocks [N, T], leftover)."""
    buf = list(carry or [])
    for ids in docs_ids:
        buf.extend(ids)
        buf.append(eos)
    n = len(buf) // T
    blocks = np.asarray(buf[: n * T], np.int32).reshape(n, T)
    return blocks, buf[n * T :]


def _rows_from_blocks(blocks: np.ndarray) -> Batch:
    ones = np.ones_like(blocks)
    return Batch(blocks, ones, ones.copy())


def text_rows_by_file(d: DataConfig, tok: Tokenizer, T: int) -> tuple[Batch, np.ndarray, Batch]:
    """data.files_curriculum: each file packed and held out on its own (its last 5% of blocks), so
    that every training block comes from one file. Returns (train, [N] file index per row, eval)."""
    parts = [text_rows(dataclasses.replace(d, files=[f]), tok, T) for f in d.files]
    cat = lambda rows: Batch(*(None if x[0] is None else np.concatenate(x) for x in zip(*rows)))
    return (
        cat([p[0] for p in parts]),
        np.concatenate([np.full(len(p[0].tokens), i) for i, p in enumerate(parts)]),
        cat([p[1] for p in parts]),
    )


def text_rows(d: DataConfig, tok: Tokenizer, T: int) -> tuple[Batch, Batch]:
    """Whole (non-streaming) text dataset -> packed train and eval blocks. Eval: `eval_split`,
    data.eval_files, or the last 5% of the blocks of `split` (which training then never sees)."""

    def blocks_of(split, d=d):
        ds = _load_hf(d, split, streaming=False)
        if d.text_field not in ds.column_names:
            raise UserError(f"data.text_field {d.text_field!r} not in the dataset's columns {ds.column_names}")
        encode = lambda b: {"ids": [tok.encode(_as_text(t, d.text_field)) for t in b[d.text_field]]}
        ids = ds.map(encode, batched=True, remove_columns=ds.column_names)["ids"]
        return pack(ids, tok.eos_id, T)[0]

    missing = [f for f in d.eval_files if not os.path.exists(f)]
    if missing:
        raise UserError(f"data.eval_files: not found: {missing[0]}")
    train = blocks_of(d.split)
    if d.eval_split:
        evals = blocks_of(d.eval_split)
    elif d.source == "files" and d.eval_files:
        evals = blocks_of(d.split, dataclasses.replace(d, files=d.eval_files))
    else:
        n_eval = max(1, len(train) // 20)
        if len(train) < 2:
            raise UserError(f"data: only {len(train)} blocks of {T} tokens; need more text or a shorter seq_len")
        train, evals = train[:-n_eval], train[-n_eval:]
    if len(train) == 0:
        raise UserError(f"data: no full block of {T} tokens; need more text or a shorter train.seq_len")
    return _rows_from_blocks(train), _rows_from_blocks(evals)


class RowIterator:
    """Endless shuffled batches over in-memory rows; epoch e uses permutation(seed + e)."""

    def __init__(self, rows: Batch, batch_size: int, seed: int):
        self.rows = rows
        self.n = len(rows.tokens)
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.index = 0, 0

    @property
    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _perm(self):
        return np.random.default_rng(self.seed + self.epoch).permutation(self.n)

    def __next__(self) -> Batch:
        idx = []
        while len(idx) < self.batch_size:
            take = self._perm()[self.index : self.index + self.batch_size - len(idx)]
            idx.extend(take.tolist())
            self.index += len(take)
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
        return self.rows.take(idx)

    def __iter__(self) -> Iterator[Batch]:
        return self


def row_hops(rows: Batch) -> np.ndarray:
    """[N] each task row's hop count k: how many thought targets its first answer token has."""
    first = rows.loss_mask.argmax(axis=1)
    return (rows.thought_targets[np.arange(len(first)), first] >= 0).sum(axis=-1)


class CurriculumIterator:
    """Easy to hard (data.hops_curriculum, data.files_curriculum): at step t a batch is drawn from the rows
    whose group (hop count k, or data file) has joined, group k joining at step starts[k] * steps. Batch t
    is rows permutation([seed, t]) of that pool (no repeats inside a batch), so the state is just the step
    and a resumed run draws the same batches."""

    def __init__(self, rows: Batch, k_N: np.ndarray, starts: dict[int, float], steps: int, batch_size: int, seed: int):
        self.rows, self.k_N, self.batch_size, self.seed = rows, k_N, batch_size, seed
        self.join = {k: int(round(f * steps)) for k, f in starts.items()}
        self.step = 0

    @property
    def state(self) -> dict:
        return {"step": self.step}

    def restore(self, state: dict) -> None:
        self.step = int(state["step"])

    def pool(self, step: int) -> np.ndarray:
        return np.flatnonzero(np.isin(self.k_N, [k for k, t in self.join.items() if t <= step]))

    def __next__(self) -> Batch:
        pool = self.pool(self.step)
        rng = np.random.default_rng([self.seed, self.step])
        idx = pool[rng.permutation(len(pool))[: self.batch_size]]
        if len(idx) < self.batch_size:  # a pool smaller than a batch: rows repeat
            idx = pool[rng.integers(len(pool), size=self.batch_size)]
        self.step += 1
        return self.rows.take(idx)

    def __iter__(self) -> Iterator[Batch]:
        return self


SHUFFLE_BLOCK_DOCS = 1000  # documents per shuffled block of a text stream


class StreamIterator:
    """Streaming text (hub or local files), packed on the fly. Shuffled in blocks of `block_docs`
    documents, block b of pass p in permutation([seed, p, b]) order: unlike HF's shuffle buffer, whose
    contents a checkpoint loses, a block can be read again exactly. The state: where the current block
    starts (the HF stream's state_dict), how many of its documents were used, the packing leftover."""

    def __init__(
        self,
        d: DataConfig,
        tok: Tokenizer,
        T: int,
        batch_size: int,
        seed: int,
        skip: int = 0,
        block_docs: int = SHUFFLE_BLOCK_DOCS,
    ):
        self.src = _load_hf(d, d.split, streaming=True).skip(skip)
        self.start = self.src.state_dict()  # the stream's beginning, where each pass starts
        self.d, self.tok, self.T, self.batch_size = d, tok, T, batch_size
        self.seed, self.block_docs = seed, block_docs
        self.pass_, self.block, self.block_start, self.used = 0, 0, self.start, 0
        self.leftover: list[int] = []
        self._docs: list[list[int]] | None = None  # the current block, shuffled; None: read it again

    @property
    def state(self) -> dict:
        return {
            "pass": self.pass_,
            "block": self.block,
            "block_start": self.block_start,
            "used": self.used,
            "leftover": list(self.leftover),
        }

    def restore(self, state: dict) -> None:
        if "block_start" not in state:
            raise UserError(
                "the checkpoint's data position comes from an older streaming iterator; "
                "start a new run directory (run.out_dir) to train on streamed data"
            )
        self.pass_, self.block, self.used = int(state["pass"]), int(state["block"]), int(state["used"])
        self.block_start, self.leftover = state["block_start"], list(state["leftover"])
        self._docs = None

    def _read_block(self) -> None:
        exs = list(itertools.islice(self._it, self.block_docs))
        order = np.random.default_rng([self.seed, self.pass_, self.block]).permutation(len(exs))
        self._docs = [self.tok.encode(_text(exs[i], self.d.text_field)) for i in order]

    def _seek(self, state: dict) -> None:
        self.src.load_state_dict(state)  # HF reapplies a loaded state at every iter(): each pass seeks
        self._it = iter(self.src)

    def _next_doc(self) -> list[int]:
        if self._docs is None:
            self._seek(self.block_start)
            self._read_block()
        while self.used == len(self._docs):
            if len(self._docs) == self.block_docs:  # the pass goes on
                self.block, self.block_start = self.block + 1, self.src.state_dict()
            elif self.block == 0 and not self._docs:
                raise UserError(
                    "data: the stream has no documents to train on"
                    + (f" after the {self.d.eval_docs} held out (data.eval_docs)" if not self.d.eval_split else "")
                )
            else:  # end of the stream: another pass
                self.pass_, self.block, self.block_start = self.pass_ + 1, 0, self.start
                self._seek(self.start)
            self._read_block()
            self.used = 0
        self.used += 1
        return self._docs[self.used - 1]

    def __next__(self) -> Batch:
        out = np.zeros((0, self.T), np.int32)
        while len(out) < self.batch_size:
            blocks, self.leftover = pack([self._next_doc()], self.tok.eos_id, self.T, self.leftover)
            out = np.concatenate([out, blocks])
        if len(out) > self.batch_size:  # keep surplus blocks as leftover tokens
            self.leftover = out[self.batch_size :].reshape(-1).tolist() + self.leftover
            out = out[: self.batch_size]
        return _rows_from_blocks(out)

    def __iter__(self):
        return self


def build_data(cfg: Config, tok: Tokenizer):
    """(train iterator, eval rows) for the config."""
    d, T = cfg.data, cfg.train.seq_len + 1
    B = cfg.train.batch_size * cfg.train.grad_accum
    if d.source == "task":
        train = task_rows(d, tok, T, "train", d.n_train, d.shuffle_seed)
        evals = task_rows(d, tok, T, "eval", d.n_eval, d.shuffle_seed + 1)
        if d.hops_curriculum:
            starts = dict(zip(d.train_hops, d.hops_curriculum))
            return CurriculumIterator(train, row_hops(train), starts, cfg.train.steps, B, d.shuffle_seed), evals
        return RowIterator(train, B, d.shuffle_seed), evals
    if d.streaming:
        # held out: the first eval_docs documents of the stream (eval_split if given); training skips them
        src = _load_hf(d, d.eval_split or d.split, streaming=True)
        docs = [tok.encode(_text(ex, d.text_field)) for ex in src.take(d.eval_docs)]
        evals = _rows_from_blocks(pack(docs, tok.eos_id, T)[0])
        if len(evals.tokens) == 0:
            raise UserError(f"data: the first {d.eval_docs} documents hold no full block of {T} tokens")
        return StreamIterator(d, tok, T, B, d.shuffle_seed, skip=0 if d.eval_split else d.eval_docs), evals
    if d.files_curriculum:
        train, file_N, evals = text_rows_by_file(d, tok, T)
        starts = dict(enumerate(d.files_curriculum))
        return CurriculumIterator(train, file_N, starts, cfg.train.steps, B, d.shuffle_seed), evals
    train, evals = text_rows(d, tok, T)
    return RowIterator(train, B, d.shuffle_seed), evals

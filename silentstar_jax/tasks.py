"""Built-in synthetic reasoning tasks, generated offline and deterministically from a seed.

Every example is printable ASCII meant for a byte-level tokenizer (1 char = 1 token):
``prompt`` ends with the separator ``=``, ``answer`` follows it with nothing after
(the caller appends the end-of-text token).

Formats (``prompt`` -> ``answer``):

* ``multiply`` (kwargs ``digits_a=2, digits_b=2``): ``"<a>*<b>="`` -> ``"<a*b>"``.
  Operands have exactly that many digits (no leading zero; 1-digit means 1..9). As in
  implicit-CoT work every number is written least significant digit first, so
  12*34=408 is ``"21*43="`` -> ``"804"``; the answer has its natural length, no padding.
* ``add`` (kwargs ``digits_a=3, digits_b=3``): the same with ``+``:
  123+456=579 is ``"321+654="`` -> ``"975"``.
* ``prosqa`` (kwarg ``n_nodes=12``, 4..26): ProsQA-style reachability in a random DAG
  (Coconut, Algorithm 1). ``"<edges>|<r>?<x>/<y>="`` -> ``"<x or y>"``: ``<edges>`` is the
  shuffled, space-separated edge list ``p>c`` (parent p -> child c) over single-letter
  nodes a..z; the question asks which of the options x, y (random order) is reachable
  from r, and exactly one is. E.g. ``"a>c c>e b>d d>f|a?f/e="`` -> ``"e"``.

Splits: a problem belongs to "eval" iff a hash of its canonical form (operands; or sorted
edges + root + sorted options) is 0 mod 10, else to "train". The split is thus a fixed
property of the problem, independent of the seed, so train and eval never share a prompt.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import operator
import string
from typing import Callable

import numpy as np

SPLITS = ("train", "eval")
EVAL_MODULUS = 10    # 1 problem in EVAL_MODULUS goes to "eval"
MAX_STALL = 20_000   # consecutive draws without a new example before the space counts as exhausted


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str   # everything before the answer, ends with "="
    answer: str   # the answer text alone


# A sampler draws one random problem: (canonical key that identifies the problem, its Example).
Sampler = Callable[..., tuple[str, Example]]


def _operand(rng: np.random.Generator, digits: int) -> int:
    """A uniform integer with exactly `digits` digits (1 <= digits <= 18, int64 range)."""
    if not 1 <= digits <= 18:
        raise ValueError(f"digits must be in 1..18, got {digits}")
    return int(rng.integers(10 ** (digits - 1), 10 ** digits))


def _reversed(x: int) -> str:
    """Decimal digits of `x`, least significant first: 408 -> "804"."""
    return str(x)[::-1]


def _arithmetic(rng: np.random.Generator, op: str, fn: Callable[[int, int], int],
                digits_a: int, digits_b: int) -> tuple[str, Example]:
    """"<a>op<b>=" -> "<fn(a, b)>", every number reversed (least significant digit first)."""
    a, b = _operand(rng, digits_a), _operand(rng, digits_b)
    return f"{a}{op}{b}", Example(f"{_reversed(a)}{op}{_reversed(b)}=", _reversed(fn(a, b)))


def _multiply(rng: np.random.Generator, *, digits_a: int = 2, digits_b: int = 2) -> tuple[str, Example]:
    """Reversed-digit multiplication: carries make it a multi-step problem (implicit-CoT's benchmark)."""
    return _arithmetic(rng, "*", lambda a, b: a * b, digits_a, digits_b)


def _add(rng: np.random.Generator, *, digits_a: int = 3, digits_b: int = 3) -> tuple[str, Example]:
    """Reversed-digit addition: an easier sanity task, one carry chain."""
    return _arithmetic(rng, "+", lambda a, b: a + b, digits_a, digits_b)


def _dag(rng: np.random.Generator, n_nodes: int) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Coconut's Algorithm 1 with a fixed node count: -> (edges parent->child, labels, depths).

    Nodes 0 and 1 are the roots with labels 1 and 2; node k >= 2 gets max(1, Poisson(1.5))
    distinct parents drawn with weight depth*1.5+1 from: with p=.35 nodes not below node 1,
    with p=.35 nodes not below node 0, else any node. label = OR of parents' labels, so
    bit 1 (2) of a label says node 0 (1) reaches it; depth = longest path from a root.
    Randomness is drawn in bulk up front; the loop itself is plain Python (fast for small graphs).
    """
    coins = rng.random(n_nodes).tolist()
    n_parents = rng.poisson(1.5, n_nodes).tolist()
    noise = rng.exponential(size=(n_nodes, n_nodes)).tolist()
    edges: list[tuple[int, int]] = []
    labels, depths = [1, 2], [0, 0]
    for node in range(2, n_nodes):
        excluded = 2 if coins[node] < 0.35 else 1 if coins[node] < 0.7 else 0  # label bit parents must lack
        candidates = [v for v in range(node) if not labels[v] & excluded]
        k = min(max(1, n_parents[node]), len(candidates))
        # Weighted sampling without replacement: the k smallest Exp(1)/weight keys (Efraimidis-Spirakis).
        parents = sorted(candidates, key=lambda v: noise[node][v] / (depths[v] * 1.5 + 1))[:k]
        edges += [(p, node) for p in parents]
        labels.append(functools.reduce(operator.or_, (labels[p] for p in parents)))
        depths.append(1 + max(depths[p] for p in parents))
    return edges, labels, depths


def _prosqa(rng: np.random.Generator, *, n_nodes: int = 12) -> tuple[str, Example]:
    """Graph reachability (ProsQA-style): needs a multi-hop search over the listed edges.

    Root r is node 0 or 1; the answer is a deepest node only r reaches, the distractor a
    deepest node only the other root reaches. Graphs lacking either are redrawn.
    """
    if not 4 <= n_nodes <= 26:
        raise ValueError(f"n_nodes must be in 4..26 (one letter per node), got {n_nodes}")
    while True:
        edges, labels, depths = _dag(rng, n_nodes)
        root = int(rng.integers(2))
        bits = (1, 2) if root == 0 else (2, 1)  # (reached from r only, from the other root only)
        pools = [[v for v in range(2, n_nodes) if labels[v] == bit] for bit in bits]
        if all(pools):
            break
    target, negative = (int(rng.choice([v for v in pool if depths[v] == max(depths[u] for u in pool)]))
                        for pool in pools)  # a deepest node of each pool
    name = [string.ascii_lowercase[i] for i in rng.permutation(26)[:n_nodes]]
    shown = [f"{name[p]}>{name[c]}" for p, c in edges]
    options = [name[target], name[negative]]
    key = " ".join(sorted(shown)) + f"|{name[root]}?" + "/".join(sorted(options))
    shown = [shown[i] for i in rng.permutation(len(shown))]
    first, second = options if rng.random() < 0.5 else options[::-1]
    return key, Example(" ".join(shown) + f"|{name[root]}?{first}/{second}=", name[target])


TASKS: dict[str, Sampler] = {"multiply": _multiply, "add": _add, "prosqa": _prosqa}


def split_of(task: str, key: str) -> str:
    """"train" or "eval" for a canonical problem key: a stable hash, so splits never overlap."""
    digest = hashlib.blake2b(f"{task}:{key}".encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % EVAL_MODULUS == 0 else "train"


def make_examples(task: str, n: int, *, seed: int, split: str, **task_kwargs) -> list[Example]:
    """`n` distinct examples of `task` from `split`, deterministic in (`seed`, kwargs).

    Rejection-samples problems from `seed`'s stream, keeping those whose hash puts them in
    `split` and that are new. Raises ValueError for an unknown task/split/kwarg, or when
    MAX_STALL draws in a row bring nothing new: the split holds fewer than `n` problems
    (or, rarely, `n` is within a few of a tiny split's whole size).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    sample = TASKS[task]
    try:
        inspect.signature(sample).bind(None, **task_kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for task {task!r}: {e}") from None
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    examples: list[Example] = []
    stall = 0
    while len(examples) < n:
        key, ex = sample(rng, **task_kwargs)
        if key in seen or split_of(task, key) != split:
            stall += 1
            if stall >= MAX_STALL:
                raise ValueError(f"task {task!r} {task_kwargs} has fewer than {n} distinct {split!r} problems "
                                 f"(found {len(examples)}); ask for fewer or make the problems larger")
            continue
        seen.add(key)
        examples.append(ex)
        stall = 0
    return examples


def exact_match(pred: str, ex: Example) -> bool:
    """Whether `pred` (decoded text up to end-of-text) is the answer, ignoring surrounding whitespace.

    Answers are short and canonical (one number or one letter), so exact match is the metric,
    as in implicit-CoT and Coconut; no answer contains whitespace, so stripping is safe.
    """
    return pred.strip() == ex.answer

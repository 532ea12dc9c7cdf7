"""Synthetic tasks: determinism, disjoint splits, correct answers (recomputed here), errors."""
from __future__ import annotations

import collections
import functools
import re

import pytest

from silentstar_jax.tasks import TASKS, Example, exact_match, make_examples

ARITH = re.compile(r"^(\d+)([*+])(\d+)=$")
PROSQA = re.compile(r"^((?:[a-z]>[a-z] )*[a-z]>[a-z])\|([a-z])\?([a-z])/([a-z])=$")


@functools.lru_cache(maxsize=None)
def gen(task: str, n: int, seed: int, split: str, **kw) -> tuple[Example, ...]:
    return tuple(make_examples(task, n, seed=seed, split=split, **kw))


def reachable(edges: str, start: str) -> set[str]:
    """BFS over "p>c p>c ..." from `start` (start itself included)."""
    children = collections.defaultdict(list)
    for edge in edges.split(" "):
        parent, child = edge.split(">")
        children[parent].append(child)
    seen, frontier = {start}, [start]
    while frontier:
        frontier = [c for node in frontier for c in children[node] if c not in seen]
        seen.update(frontier)
    return seen


def is_acyclic(edges: str) -> bool:
    """Kahn's algorithm: every node can be removed in topological order."""
    pairs = [tuple(e.split(">")) for e in edges.split(" ")]
    indegree = collections.Counter(c for _, c in pairs)
    nodes = {n for pair in pairs for n in pair}
    ready = [n for n in nodes if indegree[n] == 0]
    removed = 0
    while ready:
        node = ready.pop()
        removed += 1
        for p, c in pairs:
            if p == node:
                indegree[c] -= 1
                if indegree[c] == 0:
                    ready.append(c)
    return removed == len(nodes)


def test_task_names():
    assert set(TASKS) == {"multiply", "add", "prosqa"}


@pytest.mark.parametrize("task", ["multiply", "add", "prosqa"])
def test_same_seed_same_examples(task):
    a = make_examples(task, 200, seed=7, split="train")
    b = make_examples(task, 200, seed=7, split="train")
    assert a == b
    assert all(isinstance(e, Example) for e in a)


@pytest.mark.parametrize("task", ["multiply", "add", "prosqa"])
def test_different_seeds_differ(task):
    a = [e.prompt for e in make_examples(task, 200, seed=0, split="train")]
    b = [e.prompt for e in make_examples(task, 200, seed=1, split="train")]
    assert a != b
    assert len(set(a) & set(b)) < 100  # mostly different problems, not just reordered


@pytest.mark.parametrize("task", ["multiply", "add", "prosqa"])
def test_train_eval_disjoint_and_unique(task):
    train = {e.prompt for e in gen(task, 2000, 0, "train")}
    assert len(train) == 2000  # no duplicates within a split
    for seed in (0, 1):  # the split is a property of the problem, not of the seed
        evals = {e.prompt for e in gen(task, 200, seed, "eval")}
        assert len(evals) == 200
        assert not train & evals


@pytest.mark.parametrize("task,op,default_digits", [("multiply", "*", (2, 2)), ("add", "+", (3, 3))])
@pytest.mark.parametrize("kw", [{}, {"digits_a": 3, "digits_b": 1}])
def test_arithmetic_answers(task, op, default_digits, kw):
    digits = (kw.get("digits_a", default_digits[0]), kw.get("digits_b", default_digits[1]))
    for ex in gen(task, 500, 3, "train", **kw):
        m = ARITH.match(ex.prompt)
        assert m, ex.prompt
        assert m.group(2) == op
        ra, rb = m.group(1), m.group(3)
        assert (len(ra), len(rb)) == digits
        assert ra[-1] != "0" and rb[-1] != "0"  # reversed: the most significant digit is last
        a, b = int(ra[::-1]), int(rb[::-1])
        result = a * b if op == "*" else a + b
        assert ex.answer == str(result)[::-1]
        assert int(ex.answer[::-1]) == result and ex.answer[-1] != "0"  # natural length, no padding


@pytest.mark.parametrize("n_nodes", [12, 6])
def test_prosqa_answer_is_the_reachable_option(n_nodes):
    examples = gen("prosqa", 500, 5, "train", n_nodes=n_nodes)
    first = 0
    for ex in examples:
        m = PROSQA.match(ex.prompt)
        assert m, ex.prompt
        edges, root, x, y = m.groups()
        assert len({root, x, y}) == 3
        assert ex.answer in (x, y)
        other = y if ex.answer == x else x
        reach = reachable(edges, root)
        assert ex.answer in reach and other not in reach
        assert is_acyclic(edges)
        nodes = set(re.findall(r"[a-z]", edges))
        assert len(nodes) == n_nodes  # every non-root node has a parent, so all appear
        first += ex.answer == x
    assert 0.4 < first / len(examples) < 0.6  # option order carries no signal


def test_prosqa_prompt_is_compact():
    lengths = [len(e.prompt) + len(e.answer) for e in gen("prosqa", 2000, 0, "train")]
    assert max(lengths) <= 130
    assert sum(lengths) / len(lengths) < 80


def test_all_text_is_printable_ascii():
    for task in TASKS:
        for ex in gen(task, 2000, 0, "train") + gen(task, 200, 0, "eval"):
            text = ex.prompt + ex.answer
            assert all(32 <= ord(c) < 127 for c in text), text
            assert ex.prompt.endswith("=") and ex.answer and "=" not in ex.answer


def test_too_many_examples_raises():
    # 1-digit operands: 81 problems in all, about 8 of them in "eval".
    with pytest.raises(ValueError, match="fewer than 100"):
        make_examples("multiply", 100, seed=0, split="eval", digits_a=1, digits_b=1)
    with pytest.raises(ValueError, match="fewer than 82"):
        make_examples("add", 82, seed=0, split="train", digits_a=1, digits_b=1)
    assert len(make_examples("multiply", 5, seed=0, split="eval", digits_a=1, digits_b=1)) == 5


@pytest.mark.parametrize("args,kw", [
    (("divide", 10), {"split": "train"}),
    (("add", 10), {"split": "test"}),
    (("multiply", 10), {"split": "train", "n_nodes": 5}),
    (("prosqa", 10), {"split": "train", "n_nodes": 30}),
    (("add", 10), {"split": "train", "digits_a": 0}),
])
def test_bad_arguments_raise(args, kw):
    with pytest.raises(ValueError):
        make_examples(*args, seed=0, **kw)


def test_exact_match():
    ex = Example("21*43=", "804")
    assert exact_match("804", ex)
    assert exact_match(" 804\n", ex)
    assert not exact_match("80", ex)
    assert not exact_match("8040", ex)
    assert not exact_match("408", ex)

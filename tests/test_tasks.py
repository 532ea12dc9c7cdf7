"""Synthetic tasks: determinism, disjoint splits, correct answers (recomputed here), errors."""

from __future__ import annotations

import collections
import functools
import re

import pytest

from silentstar_jax.tasks import TASKS, Example, exact_match, make_examples, n_thoughts

ARITH = re.compile(r"^(\d+)([*+])(\d+)=$")
PROSQA = re.compile(r"^((?:[a-z]>[a-z] )*[a-z]>[a-z])\|([a-z])\?([a-z])/([a-z])=$")
HOPS = re.compile(r"^([a-z]+)\|([1-9]?)([a-z])$")
BINDING = re.compile(r"^((?:[a-z]=[a-z0-9];)+)\?([a-z])$")
ALL_TASKS = ["multiply", "add", "prosqa", "hops", "binding"]


@functools.cache
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


def solve_hops(prompt: str, hops: int) -> tuple[str, tuple[str, ...], int]:
    """Independent solver: (answer, thoughts, k) from the prompt text; `hops` is k when it is hidden."""
    m = HOPS.match(prompt)
    assert m, prompt
    table, shown_k, q = m.groups()
    letters = [chr(ord("a") + i) for i in range(len(table))]
    assert sorted(table) == letters, table  # a permutation of the first n letters
    assert q in letters
    k = int(shown_k) if shown_k else hops
    path, x = [], q
    for _ in range(k):
        x = table[ord(x) - ord("a")]
        path.append(x)
    return path[-1], tuple(path), k


def parse_binding(prompt: str) -> tuple[dict[str, str], str]:
    """{variable: what it is bound to} and the query variable; every variable bound exactly once."""
    m = BINDING.match(prompt)
    assert m, prompt
    statements = m.group(1)[:-1].split(";")
    bound = dict(st.split("=") for st in statements)
    assert len(bound) == len(statements), prompt  # no variable bound twice
    return bound, m.group(2)


def follow(bound: dict[str, str], var: str) -> tuple[str, ...]:
    """The referents from `var` to its digit (the chain must end in a digit, without a cycle)."""
    path = []
    while not var.isdigit():
        assert var in bound and len(path) <= len(bound), (var, bound)
        var = bound[var]
        path.append(var)
    return tuple(path)


def test_task_names():
    assert set(TASKS) == set(ALL_TASKS)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_same_seed_same_examples(task):
    a = make_examples(task, 200, seed=7, split="train")
    b = make_examples(task, 200, seed=7, split="train")
    assert a == b
    assert all(isinstance(e, Example) for e in a)


@pytest.mark.parametrize("task", ALL_TASKS)
def test_different_seeds_differ(task):
    a = [e.prompt for e in make_examples(task, 200, seed=0, split="train")]
    b = [e.prompt for e in make_examples(task, 200, seed=1, split="train")]
    assert a != b
    assert len(set(a) & set(b)) < 100  # mostly different problems, not just reordered


@pytest.mark.parametrize("task", ALL_TASKS)
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
            text = ex.prompt + ex.answer + "".join(ex.thoughts)
            assert all(32 <= ord(c) < 127 for c in text), text
            assert ex.answer and "=" not in ex.answer
            if task in ("hops", "binding"):  # no separator: the prompt ends with the query letter
                assert ex.prompt[-1].islower() and ex.prompt[-2] in "|?" and "=" not in ex.prompt[-2:]
                assert len(ex.answer) == 1 and ex.thoughts[-1] == ex.answer
            else:
                assert ex.prompt.endswith("=") and ex.thoughts == ()


def test_existing_tasks_unchanged():
    """Pinned outputs from before hops/binding were added (the generators must stay byte-identical)."""
    got = {
        t: [e.prompt + e.answer for e in make_examples(t, 3, seed=0, split="train")]
        for t in ("multiply", "add", "prosqa")
    }
    assert got["multiply"] == ["68*76=2675", "52*38=5702", "86*29=6526"]
    assert got["add"] == ["568+376=8351", "065+243=209", "773+631=315"]
    assert got["prosqa"][0] == "w>g u>y l>w y>o z>x g>i z>u f>l o>q x>y z>y u>r o>g f>w x>g|z?q/w=q"
    assert got["prosqa"][2] == "n>u g>k i>k h>d v>d g>c h>v h>j g>m g>n m>i r>h m>u j>d g>u j>v|g?d/k=k"


# ---------------------------------------------------------------- hops


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"n_symbols": 5, "hops": 3},
        {"n_symbols": 26, "hops": 9},
        {"n_symbols": 3, "hops": 1},
        {"hops": 4, "show_hops": True},
    ],
)
def test_hops_answers_and_thoughts(kw):
    n_symbols, hops = kw.get("n_symbols", 16), kw.get("hops", 2)
    n = 12 if n_symbols == 3 else 500  # 3 symbols, 1 hop: 6 tables x 3 queries = 18 problems in all
    fixed_points = 0
    for ex in gen("hops", n, 3, "train", **kw):
        answer, thoughts, k = solve_hops(ex.prompt, hops)
        assert len(ex.prompt) == n_symbols + 2 + bool(kw.get("show_hops"))
        assert k == hops
        assert ex.answer == answer and ex.thoughts == thoughts and len(ex.thoughts) == hops
        fixed_points += ex.answer == ex.prompt[-1]
    assert fixed_points < 0.5 * n  # the answer is not just the query letter


def test_hops_show_hops_format():
    hidden = gen("hops", 300, 4, "train", hops=3)
    shown = gen("hops", 300, 4, "train", hops=3, show_hops=True)
    assert all(re.fullmatch(r"[a-p]{16}\|[a-p]", e.prompt) for e in hidden)
    assert all(re.fullmatch(r"[a-p]{16}\|3[a-p]", e.prompt) for e in shown)
    # the same problems, only the digit added (show_hops does not change the draws or the split)
    assert [e.prompt.replace("|3", "|") for e in shown] == [e.prompt for e in hidden]
    assert [(e.answer, e.thoughts) for e in shown] == [(e.answer, e.thoughts) for e in hidden]


def test_hops_mixed_difficulty():
    examples = gen("hops", 2000, 5, "train", hops=4, hops_min=2, show_hops=True)
    counts = collections.Counter()
    for ex in examples:
        answer, thoughts, k = solve_hops(ex.prompt, hops=-1)  # k must come from the prompt
        assert ex.answer == answer and ex.thoughts == thoughts and len(thoughts) == k
        counts[k] += 1
    assert set(counts) == {2, 3, 4}
    assert all(500 < c < 830 for c in counts.values()), counts  # uniform, 2000/3 each
    # hops_min == hops is the same as no mixing
    assert gen("hops", 200, 5, "train", hops=3, hops_min=3) == gen("hops", 200, 5, "train", hops=3)


def test_hops_small_space_is_exhausted():
    # 2 symbols, 1 hop: 2 tables x 2 queries = 4 problems over both splits
    with pytest.raises(ValueError, match="fewer than 5"):
        make_examples("hops", 5, seed=0, split="train", n_symbols=2, hops=1)


# ---------------------------------------------------------------- binding


@pytest.mark.parametrize(
    "kw",
    [{}, {"hops": 1}, {"hops": 3, "n_vars": 6}, {"hops": 4, "n_vars": 12}, {"hops": 9, "n_vars": 18}, {"n_vars": 26}],
)
def test_binding_answers_and_thoughts(kw):
    n_vars, hops = kw.get("n_vars", 8), kw.get("hops", 2)
    first_is_answer = query_is_head = 0
    examples = gen("binding", 400, 3, "train", **kw)
    for ex in examples:
        bound, q = parse_binding(ex.prompt)
        assert len(bound) == n_vars
        path = follow(bound, q)
        assert ex.answer == path[-1] and ex.thoughts == path and len(path) == hops
        depth = {v: len(follow(bound, v)) for v in bound}
        digits = [b for b in bound.values() if b.isdigit()]
        assert len(digits) >= 2 and len(set(digits)) == len(digits)  # several distinct values
        # another variable is k hops from a different digit: the chain length gives nothing away
        assert sum(d == hops for d in depth.values()) >= 2
        # every variable's chain ends in a digit; chains do not branch
        referenced = [b for b in bound.values() if not b.isdigit()]
        assert len(set(referenced)) == len(referenced)
        first_is_answer += ex.prompt.startswith(f"{path[-2] if len(path) > 1 else q}=")
        query_is_head += q not in referenced
    assert first_is_answer < 0.5 * len(examples)  # the order of the statements says nothing
    if hops < n_vars // 2:
        assert 0 < query_is_head < len(examples)  # the query is sometimes inside a longer chain


def test_binding_is_short():
    lengths = [len(e.prompt) + len(e.answer) for e in gen("binding", 2000, 0, "train")]
    assert max(lengths) <= 40
    assert set(lengths) == {35}  # 8 statements "x=y;" + "?q" + the answer


def test_binding_example_format():
    ex = gen("binding", 2000, 0, "train")[0]
    assert re.fullmatch(r"(?:[a-z]=[a-z0-9];){8}\?[a-z]", ex.prompt), ex.prompt
    assert ex.answer.isdigit() and ex.thoughts[0].islower()


def test_binding_mixed_difficulty():
    examples = gen("binding", 2000, 5, "train", n_vars=8, hops=3, hops_min=1)
    counts = collections.Counter()
    for ex in examples:
        bound, q = parse_binding(ex.prompt)
        path = follow(bound, q)
        assert ex.thoughts == path and ex.answer == path[-1]
        counts[len(path)] += 1
    assert set(counts) == {1, 2, 3}
    assert all(500 < c < 830 for c in counts.values()), counts


@pytest.mark.parametrize(
    "kw",
    [
        {"hops": 1, "n_vars": 12, "queries": 4},
        {"hops": 2, "n_vars": 8, "queries": 3},
        {"hops": 3, "n_vars": 12, "hops_min": 1, "queries": 2},
    ],
)
def test_binding_queries(kw):
    """queries = m: m distinct variables, each exactly k hops from its digit, each followed by its answer;
    only the digits are scored, and each digit carries its own hops."""
    m = kw["queries"]
    for ex in gen("binding", 300, 4, "train", **kw):
        bound, q = parse_binding(ex.prompt)
        asked = [q] + list(ex.answer[2::3])
        assert ex.answer[0::3] == "".join(follow(bound, v)[-1] for v in asked) and ex.answer[1::3] == "?" * (m - 1)
        paths = [follow(bound, v) for v in asked]
        assert len(set(asked)) == m and len({len(p) for p in paths}) == 1  # distinct queries, one k
        assert ex.scored == tuple(i % 3 == 0 for i in range(len(ex.answer)))
        assert [t for t, s in zip(ex.token_thoughts, ex.scored) if s] == paths and ex.thoughts == paths[0]
        assert not any(t for t, s in zip(ex.token_thoughts, ex.scored) if not s)


def test_binding_one_query_is_the_original_task():
    """queries = 1 draws exactly the problems it drew before the option existed (seeded runs stay comparable)."""
    pinned = [
        ("b=r;v=9;r=g;u=0;l=h;s=8;h=7;g=3;?r", "3"),
        ("u=x;n=2;z=q;b=8;h=b;q=9;o=6;x=5;?z", "9"),
        ("e=8;w=3;p=0;o=7;r=2;k=o;j=h;h=5;?k", "7"),
    ]  # drawn by the generator before `queries`
    assert [(e.prompt, e.answer) for e in gen("binding", 3, 2, "train", queries=1)] == pinned
    mixed = [(e.prompt, e.answer) for e in gen("binding", 2, 2, "eval", hops=3, n_vars=9, hops_min=1)]
    assert mixed == [("w=m;n=a;a=t;m=9;t=1;b=g;u=z;g=u;z=n;?t", "1"), ("h=x;p=i;i=r;r=9;z=4;y=7;d=3;l=p;x=0;?i", "9")]
    ex = gen("binding", 1, 0, "train")[0]
    assert ex.scored == () and ex.token_thoughts == ()
    with pytest.raises(ValueError, match="n_vars"):
        make_examples("binding", 1, seed=0, split="train", n_vars=8, hops=3, queries=3)


def test_binding_split_by_problem_not_order():
    """Canonical form = the set of statements + query: a reordered problem stays in its split."""

    def canon(ex):
        bound, q = parse_binding(ex.prompt)
        return tuple(sorted(bound.items())), q

    # 2 variables, 2 orders each: a key that depended on the order would put ~7 of these in both
    train = {canon(e) for e in gen("binding", 2000, 0, "train", hops=1, n_vars=2)}
    evals = {canon(e) for e in gen("binding", 200, 1, "eval", hops=1, n_vars=2)}
    assert len(train) == 2000 and len(evals) == 200 and not train & evals


def test_n_thoughts():
    assert n_thoughts("hops") == 2 and n_thoughts("binding") == 2
    assert n_thoughts("hops", hops=5, hops_min=1, show_hops=True) == 5
    assert n_thoughts("binding", hops=3, n_vars=6) == 3
    assert n_thoughts("multiply", digits_a=3) == n_thoughts("prosqa") == 0
    for task in ("hops", "binding"):
        kw = {"hops": 4, "hops_min": 2, **({"show_hops": True} if task == "hops" else {})}
        assert max(len(e.thoughts) for e in gen(task, 300, 0, "train", **kw)) == n_thoughts(task, **kw)
    with pytest.raises(ValueError):
        n_thoughts("divide")


def test_too_many_examples_raises():
    # 1-digit operands: 81 problems in all, about 8 of them in "eval".
    with pytest.raises(ValueError, match="fewer than 100"):
        make_examples("multiply", 100, seed=0, split="eval", digits_a=1, digits_b=1)
    with pytest.raises(ValueError, match="fewer than 82"):
        make_examples("add", 82, seed=0, split="train", digits_a=1, digits_b=1)
    assert len(make_examples("multiply", 5, seed=0, split="eval", digits_a=1, digits_b=1)) == 5


@pytest.mark.parametrize(
    "args,kw",
    [
        (("divide", 10), {"split": "train"}),
        (("add", 10), {"split": "test"}),
        (("multiply", 10), {"split": "train", "n_nodes": 5}),
        (("prosqa", 10), {"split": "train", "n_nodes": 30}),
        (("add", 10), {"split": "train", "digits_a": 0}),
        (("hops", 10), {"split": "train", "n_symbols": 1}),
        (("hops", 10), {"split": "train", "n_symbols": 27}),
        (("hops", 10), {"split": "train", "hops": 0}),
        (("hops", 10), {"split": "train", "hops": 10, "show_hops": True}),
        (("hops", 10), {"split": "train", "hops_min": 0, "show_hops": True}),
        (("hops", 10), {"split": "train", "hops": 3, "hops_min": 4, "show_hops": True}),
        (("hops", 10), {"split": "train", "hops": 3, "hops_min": 1}),  # mixed k, but k hidden: ambiguous
        (("hops", 10), {"split": "train", "n_vars": 8}),
        (("binding", 10), {"split": "train", "hops": 0}),
        (("binding", 10), {"split": "train", "hops": 10, "n_vars": 26}),
        (("binding", 10), {"split": "train", "hops": 5}),  # n_vars 8 < 2 * hops
        (("binding", 10), {"split": "train", "n_vars": 27}),
        (("binding", 10), {"split": "train", "hops": 2, "hops_min": 3}),
        (("binding", 10), {"split": "train", "hops_min": 0}),
        (("binding", 10), {"split": "train", "show_hops": True}),
    ],
)
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


def test_hops_single_cycle_tables():
    examples = gen("hops", 500, 3, "train", n_symbols=8, hops=3, hops_min=1, show_hops=True, single_cycle=True)
    for ex in examples:
        table, rest = ex.prompt.split("|")
        f = {chr(ord("a") + i): c for i, c in enumerate(table)}
        x, seen = "a", set()
        for _ in range(8):  # one cycle through all 8 letters
            seen.add(x)
            x = f[x]
        assert x == "a" and len(seen) == 8
        assert ex.answer == solve_hops(ex.prompt, hops=-1)[0] and ex.answer != rest[-1]
    plain = gen("hops", 500, 3, "train", n_symbols=8, hops=2)
    assert sum(ex.answer == ex.prompt[-1] for ex in plain) > 60  # a random f: f^2(q) = q a quarter of the time

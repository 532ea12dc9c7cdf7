"""Built-in synthetic reasoning tasks, generated offline and deterministically from a seed.

Every example is printable ASCII meant for a byte-level tokenizer (1 char = 1 token):
``answer`` follows ``prompt`` with nothing after (the caller appends the end-of-text token).
The ``multiply``, ``add`` and ``prosqa`` prompts end with the separator ``=``; the
``hops`` and ``binding`` prompts end with their query letter and have no separator on
purpose (for a 1-layer model a separator would add one more serial step).

``Example.thoughts`` holds intermediate targets for the FIRST answer token, used to
supervise latent thoughts: ``thoughts[j-1]`` is the result after hop j, the last one is
the answer. Tasks without such a chain (multiply, add, prosqa) leave it empty.

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
* ``hops`` (kwargs ``n_symbols=16`` (2..26), ``hops=2`` (1..9), ``hops_min=None``,
  ``show_hops=False``): look-up composition in a table given in context. A random
  permutation f of the first n_symbols letters is written as the string T with
  T[i] = f(letter i); then ``|``, the hop count k as one digit if ``show_hops``, and the
  query letter q. ``"<T>|[k]<q>"`` -> ``"<f^k(q)>"``; thoughts (f(q), f^2(q), ..., f^k(q)).
  E.g. ``"dcab|a"`` (k=2 hidden) -> ``"b"``, thoughts ("d", "b"); ``"dcab|2a"`` shows k.
  ``single_cycle=True`` draws f among the permutations with one cycle through every letter, so
  f^k(q) != q for k < n_symbols: a model cannot score by answering the query itself (for a random
  permutation of 8 letters, f^2(q) = q a quarter of the time). ``chain=m`` asks for m answers,
  each f^k of the one before (``"dcab|a"`` -> ``"bc"`` for m = 2): thinking before every answer
  token, k look-ups each; ``token_thoughts`` holds every answer token's hops.
* ``binding`` (kwargs ``n_vars=8`` (2*hops..26), ``hops=2`` (1..9), ``hops_min=None``):
  variable binding. n_vars distinct single-letter variables form 2..10 chains; a chain's
  first variable is bound to a digit (distinct digits per chain), each other variable to
  the previous one. The statements ``x=3`` / ``y=x`` are shuffled, each followed by ``;``,
  then come ``?`` and a query variable exactly k hops from its digit (drawn uniformly among all
  such variables; at least two chains are long enough, so no chain stands out).
  E.g. ``"c=a;a=7;d=c;b=2;?d"`` -> ``"7"``, thoughts ("c", "a", "7"). ``queries=m`` asks m distinct
  variables k hops from their digits, each followed by its answer (``"...;?d"`` -> ``"7?b2"`` at k = 1 with
  ``"d=7"``, ``"b=2"``): a denser signal, as in multi-query associative recall; only the digits are scored
  (``Example.scored``), and at least max(2, m) chains are long enough.

``hops_min`` (1..hops; None means hops) draws k uniformly from hops_min..hops for each
example (mixed difficulty), or with ``hops_weights`` (one weight per k, e.g. skewed toward
easy); with hidden k (``hops`` task, ``show_hops=False``) the answer would be ambiguous, so
mixing there needs ``show_hops=True``.

Splits: a problem belongs to "eval" iff a hash of its canonical form (operands; or sorted
edges + root + sorted options; table + k + query; sorted statements + query) is 0 mod 10,
else to "train". The split is thus a fixed
property of the problem, independent of the seed, so train and eval never share a prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import operator
import string
from collections.abc import Callable, Sequence

import numpy as np

SPLITS = ("train", "eval")
EVAL_MODULUS = 10  # 1 problem in EVAL_MODULUS goes to "eval"
MAX_STALL = 20_000  # consecutive draws without a new example before the space counts as exhausted


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str  # everything before the answer ("=" ends the multiply/add/prosqa prompts)
    answer: str  # the answer text alone
    thoughts: tuple[str, ...] = ()  # one character per hop for the first answer token; last = answer
    # the same for every answer token, where an answer has several that each need thinking (hops chain)
    token_thoughts: tuple[tuple[str, ...], ...] = ()
    # which answer tokens are scored (empty: all); binding's later query letters are not predictable
    scored: tuple[bool, ...] = ()


# A sampler draws one random problem: (canonical key that identifies the problem, its Example).
Sampler = Callable[..., tuple[str, Example]]


def _operand(rng: np.random.Generator, digits: int) -> int:
    """A uniform integer with exactly `digits` digits (1 <= digits <= 18, int64 range)."""
    if not 1 <= digits <= 18:
        raise ValueError(f"digits must be in 1..18, got {digits}")
    return int(rng.integers(10 ** (digits - 1), 10**digits))


def _reversed(x: int) -> str:
    """Decimal digits of `x`, least significant first: 408 -> "804"."""
    return str(x)[::-1]


def _arithmetic(
    rng: np.random.Generator, op: str, fn: Callable[[int, int], int], digits_a: int, digits_b: int
) -> tuple[str, Example]:
    """ "<a>op<b>=" -> "<fn(a, b)>", every number reversed (least significant digit first)."""
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
    target, negative = (
        int(rng.choice([v for v in pool if depths[v] == max(depths[u] for u in pool)])) for pool in pools
    )  # a deepest node of each pool
    name = [string.ascii_lowercase[i] for i in rng.permutation(26)[:n_nodes]]
    shown = [f"{name[p]}>{name[c]}" for p, c in edges]
    options = [name[target], name[negative]]
    key = " ".join(sorted(shown)) + f"|{name[root]}?" + "/".join(sorted(options))
    shown = [shown[i] for i in rng.permutation(len(shown))]
    first, second = options if rng.random() < 0.5 else options[::-1]
    return key, Example(" ".join(shown) + f"|{name[root]}?{first}/{second}=", name[target])


def _hop_count(
    rng: np.random.Generator, hops: int, hops_min: int | None, weights: Sequence[float] | None = None
) -> int:
    """k for one example: uniform in hops_min..hops (just hops when hops_min is None), or drawn with
    `weights` (one per k in hops_min..hops, e.g. skewed toward easy problems)."""
    if not 1 <= hops <= 9:
        raise ValueError(f"hops must be in 1..9 (one digit), got {hops}")
    lo = hops if hops_min is None else hops_min
    if not 1 <= lo <= hops:
        raise ValueError(f"hops_min must be in 1..hops={hops}, got {hops_min}")
    if weights is None:
        return int(rng.integers(lo, hops + 1))
    w = np.asarray(weights, float)
    if len(w) != hops - lo + 1 or (w < 0).any() or not w.sum() > 0:
        raise ValueError(
            f"hops_weights must be {hops - lo + 1} non-negative weights (k = {lo}..{hops}) "
            f"with a positive sum, got {list(weights)}"
        )
    return int(lo + rng.choice(len(w), p=w / w.sum()))


def _hops(
    rng: np.random.Generator,
    *,
    n_symbols: int = 16,
    hops: int = 2,
    hops_min: int | None = None,
    show_hops: bool = False,
    hops_weights: Sequence[float] | None = None,
    single_cycle: bool = False,
    chain: int = 1,
) -> tuple[str, Example]:
    """f^k(q) for a permutation f given as a table in context: k serial look-ups (chain > 1: then
    f^k of that, `chain` answers in all, each needing its own k look-ups)."""
    if not 1 <= chain <= 64:
        raise ValueError(f"chain must be in 1..64, got {chain}")
    if not 2 <= n_symbols <= 26:
        raise ValueError(f"n_symbols must be in 2..26 (one letter per symbol), got {n_symbols}")
    if hops_min is not None and hops_min != hops and not show_hops:
        raise ValueError(
            f"hops_min={hops_min} with hops={hops} mixes hop counts, which a prompt that hides "
            "k (show_hops=False) makes ambiguous; set show_hops=True"
        )
    if single_cycle:  # f is one n-cycle: f^k(q) != q for k < n (no guessing the query back)
        order = rng.permutation(n_symbols).tolist()
        perm = [0] * n_symbols
        for i, x in enumerate(order):
            perm[x] = order[(i + 1) % n_symbols]
    else:
        perm = rng.permutation(n_symbols).tolist()
    k = _hop_count(rng, hops, hops_min, hops_weights)
    q = int(rng.integers(n_symbols))
    letters = string.ascii_lowercase
    table = "".join(letters[v] for v in perm)
    steps, x = [], q
    for _ in range(chain):  # answer token a: its k hops from the token before it
        path = []
        for _ in range(k):
            x = perm[x]
            path.append(letters[x])
        steps.append(tuple(path))
    prompt = f"{table}|{k if show_hops else ''}{letters[q]}"
    answer = "".join(path[-1] for path in steps)
    return (f"{table}{k}{letters[q]}", Example(prompt, answer, steps[0], tuple(steps) if chain > 1 else ()))


def _binding(
    rng: np.random.Generator,
    *,
    n_vars: int = 8,
    hops: int = 2,
    hops_min: int | None = None,
    hops_weights: Sequence[float] | None = None,
    queries: int = 1,
) -> tuple[str, Example]:
    """The digit a query variable is bound to through a chain of k variable-to-variable bindings
    (queries > 1: that many distinct query variables, each answered in turn, "?d7?b2")."""
    k = _hop_count(rng, hops, hops_min, hops_weights)
    need = max(2, queries)  # chains of >= k variables: one per query, and at least two (none stands out)
    if not 1 <= queries <= 10:
        raise ValueError(f"queries must be in 1..10 (one digit per chain), got {queries}")
    if not need * hops <= n_vars <= 26:
        raise ValueError(
            f"n_vars must be in {need}*hops..26 = {need * hops}..26 ({need} chains of hops "
            f"variables, one letter per variable), got {n_vars}"
        )
    while True:  # chain lengths: a random composition of n_vars, at least `need` chains of >= k variables
        n_chains = int(rng.integers(2, min(10, n_vars) + 1))  # one distinct digit per chain
        cuts = sorted((rng.choice(n_vars - 1, n_chains - 1, replace=False) + 1).tolist())
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, n_vars])]
        if sum(length >= k for length in lengths) >= need:
            break
    names = [string.ascii_lowercase[i] for i in rng.permutation(26)[:n_vars]]
    digits = [str(d) for d in rng.permutation(10)[:n_chains]]
    chains, statements, start = [], [], 0
    for length, digit in zip(lengths, digits):
        chain = names[start : start + length]
        start += length
        chains.append((chain, digit))
        statements += [f"{chain[0]}={digit}"] + [f"{chain[i]}={chain[i - 1]}" for i in range(1, length)]
    long_enough = [c for c in chains if len(c[0]) >= k]
    picks = (
        [int(rng.integers(len(long_enough)))] if queries == 1 else rng.permutation(len(long_enough))[:queries].tolist()
    )
    asked = [
        (chain[k - 1], digit, tuple(reversed(chain[: k - 1])) + (digit,))  # chain[i]: i + 1 hops
        for chain, digit in (long_enough[i] for i in picks)
    ]  # from the digit
    key = ";".join(sorted(statements)) + "".join(f"?{query}" for query, _, _ in asked)
    shown = "".join(f"{statements[i]};" for i in rng.permutation(len(statements)))
    (query, digit, thoughts), rest = asked[0], asked[1:]
    if not rest:
        return key, Example(f"{shown}?{query}", digit, thoughts)
    answer = digit + "".join(f"?{q}{d}" for q, d, _ in rest)  # scored: the digits (a query is not
    scored = (True,) + (False, False, True) * len(rest)  # predictable, its answer is)
    per_token = (thoughts,) + tuple(x for _, _, t in rest for x in ((), (), t))  # "?", the query, its digit
    return key, Example(f"{shown}?{query}", answer, thoughts, per_token, scored)


TASKS: dict[str, Sampler] = {"multiply": _multiply, "add": _add, "prosqa": _prosqa, "hops": _hops, "binding": _binding}


def n_thoughts(task: str, **task_kwargs) -> int:
    """How many thoughts each example of `task` has at most (0: none): `hops` for hops/binding.

    Train and eval rows size their thought targets by this, so both have the same width.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    if task in ("hops", "binding"):
        return int(task_kwargs.get("hops", inspect.signature(TASKS[task]).parameters["hops"].default))
    return 0


def split_of(task: str, key: str) -> str:
    """ "train" or "eval" for a canonical problem key: a stable hash, so splits never overlap."""
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
                raise ValueError(
                    f"task {task!r} {task_kwargs} has fewer than {n} distinct {split!r} "
                    f"problems (found {len(examples)}); ask for fewer or make the problems "
                    "larger"
                )
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

"""The config surface earns its place: every field is documented where it is declared, and every field
is set by a shipped config or named by a test (a knob nothing exercises is a knob nobody knows works)."""

from __future__ import annotations

import ast
import dataclasses
import glob
import os
import re

import yaml

from silentstar_jax import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PY = os.path.join(ROOT, "silentstar_jax", "config.py")


def _sections() -> dict[str, type]:
    return {f.name: getattr(C, f.type) if isinstance(f.type, str) else f.type for f in dataclasses.fields(C.Config)}


def _field_lines() -> dict[str, dict[str, tuple[int, int]]]:
    """class name -> field name -> (first, last) line (1-based) of its declaration in config.py."""
    tree = ast.parse(open(CONFIG_PY).read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                s.target.id: (s.lineno, s.end_lineno)
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    return out


def documented(lines: list[str], span: tuple[int, int]) -> bool:
    """A comment within the field's declaration (lines span[0]..span[1]), or a comment line directly above it."""
    first, last = span
    return any("#" in line for line in lines[first - 1 : last]) or lines[first - 2].strip().startswith("#")


def test_documented_rule_can_fail():
    assert documented(["# why", "x: int = 1"], (2, 2))
    assert documented(["", "x: int = 1   # why"], (2, 2))
    assert documented(["", "x: int = (", "    1  # why", ")"], (2, 4))
    assert not documented(["y: int = 2", "x: int = 1"], (2, 2))


def test_every_config_field_has_a_comment():
    lines = open(CONFIG_PY).read().split("\n")
    where = _field_lines()
    missing = [
        f"{sec}.{name} (config.py:{where[cls.__name__][name][0]})"
        for sec, cls in _sections().items()
        for name in where[cls.__name__]
        if not documented(lines, where[cls.__name__][name])
    ]
    assert not missing, "config fields without a comment: " + ", ".join(missing)


def _set_by_configs() -> set[str]:
    keys = set()
    for path in glob.glob(os.path.join(ROOT, "configs", "*.yaml")):
        raw = yaml.safe_load(open(path)) or {}
        keys |= {f"{sec}.{k}" for sec, body in raw.items() if isinstance(body, dict) for k in body}
    return keys


def _named_by_tests() -> str:
    here = os.path.abspath(__file__)
    return "\n".join(open(p).read() for p in glob.glob(os.path.join(ROOT, "tests", "*.py")) if p != here)


def used(key: str, configs: set[str], tests: str) -> bool:
    """Set in a shipped config, or named by a test: `section.name`, a keyword `name=` or a dict key `"name":`."""
    sec, name = key.split(".")
    return (
        key in configs
        or key in tests
        or re.search(rf"\b{name}\s*=[^=]", tests) is not None
        or re.search(rf"[\"']{name}[\"']\s*:", tests) is not None
    )


def test_used_rule_can_fail():
    assert used("loss.base", {"loss.base"}, "")
    assert used("loss.base", set(), 'cfg = micro("loss.base=0")')
    assert used("loss.base", set(), "dataclasses.replace(cfg.loss, base=0.0)")
    assert used("loss.base", set(), '{"base": 0.0}')
    assert not used("loss.base", set(), "dataclasses.replace(cfg.optim, lr=1.0); base == 0")


def test_every_config_field_is_used_by_a_config_or_a_test():
    configs, tests = _set_by_configs(), _named_by_tests()
    unused = [
        f"{sec}.{f.name}"
        for sec, cls in _sections().items()
        for f in dataclasses.fields(cls)
        if not used(f"{sec}.{f.name}", configs, tests)
    ]
    assert not unused, "config fields no shipped config sets and no test names: " + ", ".join(unused)


def test_a_removed_knob_is_refused_unless_at_its_built_in_value():
    """Older runs' config.yaml hold removed fields at their old defaults (accepted); a user's other value is
    refused in one line rather than dropped unseen."""
    import pytest

    from silentstar_jax.errors import UserError

    assert C.from_dict({"thinking": {"normalize_advantages": False, "reward": "logprob_gain"}}) == C.from_dict({})
    with pytest.raises(UserError, match="thinking.normalize_advantages' was removed"):
        C.from_dict({"thinking": {"normalize_advantages": True}})
    with pytest.raises(UserError, match="thinking.reward' was removed"):
        C.from_dict({"thinking": {"reward": "accuracy"}})

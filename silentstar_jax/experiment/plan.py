"""The runs of an experiment: arms x grid points x seeds, each an ordinary `train_cli` command.

The arms are overrides of the one config, so the controls cannot drift from the thinking run; every
arm x grid point config is loaded up front, so a typo fails before the first training starts.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from dataclasses import dataclass

import yaml

from silentstar_jax import config as C
from silentstar_jax.errors import UserError

# the trainer as a module of the installed package (what train.py runs), not a checkout's train.py
TRAIN_CMD = (sys.executable, "-m", "silentstar_jax.train_cli")

ARM_OVERRIDES: dict[str, tuple[str, ...]] = {
    "latent": (),
    "pause": ("thinking.feedback=pause",),
    "nothink": ("thinking.enabled=false",),
}


@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[str, ...]  # as the user wrote them (passed through to train.py)


@dataclass(frozen=True)
class GridPoint:
    items: tuple[tuple[str, str], ...] = ()

    @property
    def tag(self) -> str:
        return ",".join(f"{k}={tag_value(v)}" for k, v in self.items) or "default"

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.items]


@dataclass(frozen=True)
class RunSpec:
    arm: str
    point: GridPoint
    seed: int

    @property
    def label(self) -> str:
        return f"{self.arm}/{self.point.tag}/seed{self.seed}"

    def dir(self, out: str) -> str:
        return os.path.join(out, "runs", self.arm, self.point.tag, f"seed{self.seed}")


def tag_value(v: str) -> str:
    """A grid value as it appears in a directory name: numbers normalised (1e-3 -> 0.001)."""
    for conv in (int, float):
        try:
            return repr(conv(v))
        except ValueError:
            pass
    return v


def split_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise UserError(f"{what}: expected a comma-separated list, got {text!r}")
    if len(set(items)) != len(items):
        raise UserError(f"{what}: repeated value in {text!r}")
    return items


def int_list(text: str, what: str, minimum: int = 0) -> list[int]:
    try:
        vals = [int(s) for s in split_list(text, what)]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if any(v < minimum for v in vals):
        raise UserError(f"{what}: values must be >= {minimum}, got {text!r}")
    return vals


def parse_arms(text: str) -> list[str]:
    arms = split_list(text, "--arms")
    bad = [a for a in arms if a not in ARM_OVERRIDES]
    if bad:
        raise UserError(f"--arms: unknown arm {bad[0]!r} (choose from {', '.join(ARM_OVERRIDES)})")
    return arms


def parse_grid(specs: list[str]) -> list[GridAxis]:
    """`--grid optim.lr=1e-3,3e-3` (repeatable) -> axes; keys must be dotted config keys."""
    axes: list[GridAxis] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", key):
            raise UserError(f"--grid {spec!r}: expected section.key=v1,v2,... (e.g. optim.lr=1e-3,3e-3)")
        vals = split_list(values, f"--grid {key}")
        if any("/" in v for v in vals):
            raise UserError(f"--grid {key}: values become directory names and may not contain '/'")
        if len({tag_value(v) for v in vals}) != len(vals):
            raise UserError(f"--grid {key}: two values are the same number ({values})")
        if key in (a.key for a in axes):
            raise UserError(f"--grid {key} given twice")
        axes.append(GridAxis(key, tuple(vals)))
    return axes


def arm_config(config: str, overrides: list[str], arm: str) -> C.Config:
    """`train.py --arm ARM`: the config's control exactly as experiment.py derives it (ARM_OVERRIDES),
    trained in run.out_dir-ARM so it never resumes the thinking run's directory."""
    if arm not in ARM_OVERRIDES:
        raise UserError(f"--arm: unknown arm {arm!r} (choose from {', '.join(ARM_OVERRIDES)})")
    base = C.load_config(config, overrides)
    out_dir = base.run.out_dir.rstrip("/") + ("" if arm == "latent" else f"-{arm}")
    return C.load_config(config, [*overrides, *ARM_OVERRIDES[arm], f"run.out_dir={_yaml_str(out_dir)}"])


def grid_points(axes: list[GridAxis], arm: str) -> list[GridPoint]:
    """Cross product of the axes; `nothink` ignores thinking.* axes (they would change nothing)."""
    axes = [a for a in axes if not (arm == "nothink" and a.key.startswith("thinking."))]
    return [
        GridPoint(tuple(zip((a.key for a in axes), combo))) for combo in itertools.product(*(a.values for a in axes))
    ]


def _yaml_str(s: str) -> str:
    """A string override value that YAML reads back as exactly this string."""
    try:
        same = yaml.safe_load(s) == s
    except yaml.YAMLError:
        same = False
    return s if same else json.dumps(s)


def train_command(config: str, overrides: list[str], spec: RunSpec, out: str) -> list[str]:
    d = spec.dir(out)
    return [
        *TRAIN_CMD,
        "--config",
        config,
        *overrides,
        *ARM_OVERRIDES[spec.arm],
        *spec.point.overrides,
        f"run.seed={spec.seed}",
        f"run.name={_yaml_str(spec.label)}",
        f"run.out_dir={_yaml_str(d)}",
    ]


def plan_runs(
    config: str,
    overrides: list[str],
    arms: list[str],
    axes: list[GridAxis],
    seeds: list[int],
    thoughts: list[int] | None = None,
) -> list[RunSpec]:
    """Every run, after checking that each arm x grid point config loads and that each --thoughts count
    fits its context (one-line errors up front, not after the trainings)."""
    specs = []
    for a, arm in enumerate(arms):
        for g, point in enumerate(grid_points(axes, arm)):
            cfg = C.load_config(config, [*overrides, *ARM_OVERRIDES[arm], *point.overrides])
            for n in (thoughts or []) if cfg.thinking.enabled else []:
                try:
                    C.check_eval_thoughts(cfg, n)
                except UserError as e:
                    raise UserError(f"--thoughts {n} ({arm}, {point.tag}): {e}") from None
            specs += [((si, g, a), RunSpec(arm, point, s)) for si, s in enumerate(seeds)]
    # seed-major: every arm's first seed lands first, so a partial experiment already compares arms
    return [spec for _, spec in sorted(specs, key=lambda x: x[0])]


def default_thoughts(cfg: C.Config) -> tuple[list[int], list[int]]:
    """Test-time counts when --thoughts is not given: 0 .. 2x the largest trained count, split into
    (those that fit the context, those that do not)."""
    t = cfg.thinking
    top = 2 * max(t.n_thoughts_train or [t.n_thoughts])
    fits, left = [], []
    for n in range(top + 1):
        try:
            C.check_eval_thoughts(cfg, n)
            fits.append(n)
        except UserError:
            left.append(n)
    return fits, left

"""A trained model from a run directory: what a `--checkpoint` path names (`resolve_checkpoint`, the one
reading of such paths), the latest run, and `load_run` (model, tokenizer, config, step) for generate, score,
export and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import sys

from silentstar_jax.errors import UserError
from silentstar_jax.run_dir import mismatch_check, read_saved_config


def latest_run(root: str = "runs") -> str | None:
    """The most recently modified run directory under `root` that holds checkpoints."""
    from silentstar_jax.checkpoint import Checkpointer

    if not os.path.isdir(root):
        return None
    runs = []
    for d in os.listdir(root):
        ckpt_dir = os.path.join(root, d, "checkpoints")
        if os.path.isdir(ckpt_dir):
            with contextlib.closing(Checkpointer(ckpt_dir, 1)) as ckpt:
                if ckpt.latest_step() is not None:
                    runs.append(os.path.join(root, d))
    return max(runs, key=lambda r: os.path.getmtime(os.path.join(r, "checkpoints")), default=None)


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
    """What a `--checkpoint` path names, as (run directory, step or None for its newest valid step):
    a run directory (config.yaml or checkpoints/ in it, whatever its name: `runs/42` too), or
    `RUN/checkpoints/<step>`. The one reading of such paths (generate, corpus score, export); anything
    else, a checkpoint set aside as damaged or a half-written one included, is refused in one line."""
    norm = os.path.normpath(path)
    parent, name = os.path.split(norm)
    is_run = os.path.isfile(os.path.join(norm, "config.yaml")) or os.path.isdir(os.path.join(norm, "checkpoints"))
    if (
        os.path.basename(parent) == "checkpoints"
        and name.isdigit()
        and os.path.isdir(parent)
        and not os.path.isfile(norm)
        and not is_run
    ):  # a step; one that is gone: load_run lists those there are
        return os.path.dirname(parent), int(name)
    if not os.path.exists(norm):
        raise UserError(f"{path}: no such run directory or checkpoint")
    if not os.path.isdir(norm):
        raise UserError(f"{path}: is a file; --checkpoint takes a run directory or RUN/checkpoints/<step>")
    if os.path.basename(parent) == "damaged-checkpoints":
        raise UserError(
            f"{path}: a checkpoint set aside as damaged (a restore found it unreadable or not "
            "matching its checksums); it is never loaded: use its run directory or another "
            "RUN/checkpoints/<step>"
        )
    if ".orbax-checkpoint-tmp" in name:
        raise UserError(
            f"{path}: a half-written checkpoint (its save never finished); it is never loaded: "
            "use its run directory or a finished RUN/checkpoints/<step>"
        )
    if is_run:
        return norm, None
    raise UserError(
        f"{path}: not a training run (no config.yaml, no checkpoints/); --checkpoint takes a "
        "run directory or RUN/checkpoints/<step>"
    )


def load_run(path: str):
    """(SilentStar with the latest checkpoint's parameters, tokenizer, config, step) of a run dir, or
    of one step (`RUN/checkpoints/<step>`). The model is built from config.yaml (or, where it is gone,
    from the checkpoints' own record of the config) and must be what the checkpoints hold."""
    import dataclasses

    from flax import nnx

    from silentstar_jax import config as C
    from silentstar_jax.checkpoint import Checkpointer, abstract_like, damage_reason, shapes
    from silentstar_jax.model import build_model
    from silentstar_jax.sharding import make_mesh, param_specs, shardings
    from silentstar_jax.tokenizer import tokenizer_for

    run_dir, wanted = resolve_checkpoint(path)
    raw = read_saved_config(run_dir)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise UserError(f"{run_dir}: no checkpoint yet")
    with contextlib.closing(Checkpointer(ckpt_dir, 1)) as ckpt:
        steps = ckpt.all_steps()
        if not steps:
            raise UserError(f"{run_dir}: no checkpoint yet")
        if wanted is not None and wanted not in steps:
            raise UserError(f"{path}: no checkpoint at step {wanted} (this run has steps {sorted(steps)})")
        if raw is None:
            raw = _config_from_checkpoints(ckpt, [wanted] if wanted is not None else steps, run_dir)
        cfg = C.from_dict(raw)
        tok = tokenizer_for(cfg)
        cfg_nohub = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=None))
        graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg_nohub)))
        mesh = make_mesh(C.MeshConfig(data=1, fsdp=1))
        pure = state.to_pure_dict()
        target = abstract_like(pure, shardings(param_specs(state, dict(mesh.shape)), mesh))
        check = mismatch_check(
            cfg,
            shapes(pure),
            lambda why: (
                f"{run_dir}: config.yaml does not describe its checkpoints: {why}; nothing was changed: restore "
                "config.yaml (or delete it: the checkpoints' own record is then used)"
            ),
        )
        if wanted is not None:
            try:
                meta = ckpt.read_meta(wanted)
            except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged data
                raise UserError(f"{path}: checkpoint is damaged ({damage_reason(e)})") from None
            check(wanted, meta)
            try:
                params, _ = ckpt.restore_params(wanted, target)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"{path}: checkpoint is damaged ({damage_reason(e)})") from None
            step = wanted
        else:
            warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)
            step, (params, _) = ckpt.restore_newest_valid(lambda s: ckpt.restore_params(s, target), warn, check=check)
    return nnx.merge(graphdef, params), tok, cfg, step


def _config_from_checkpoints(ckpt, steps: list[int], run_dir: str) -> dict:
    """config.yaml is gone: the config recorded in the newest checkpoint whose metadata reads."""
    for step in steps:
        try:
            cfg = ckpt.read_meta(step).get("config")
        except Exception:  # noqa: BLE001 - a damaged step: the next older one
            continue
        if isinstance(cfg, dict):
            print(
                f"warning: {run_dir}/config.yaml is missing; using the config recorded in checkpoint step {step}",
                file=sys.stderr,
            )
            return cfg
    raise UserError(f"{run_dir}: no config.yaml, and no checkpoint records a readable config")

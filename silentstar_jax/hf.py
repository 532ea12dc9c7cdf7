"""Hugging Face GPT-2 checkpoints in and out, without torch or transformers' (removed) Flax classes.

Reads `config.json` + `model.safetensors` (keys with or without the `transformer.` prefix) from a
local directory or a hub snapshot; writes a directory that `GPT2LMHeadModel.from_pretrained` loads.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from silentstar_jax.config import ModelConfig
from silentstar_jax.errors import UserError
from silentstar_jax.gpt2 import GPT2, INIT_STD

HUB_PATTERNS = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "generation_config.json",
]
_GLOBAL = {"wte": "wte.weight", "wpe": "wpe.weight", "ln_f_scale": "ln_f.weight", "ln_f_bias": "ln_f.bias"}
_LAYER = {
    "ln_1_scale": "ln_1.weight",
    "ln_1_bias": "ln_1.bias",
    "c_attn_kernel": "attn.c_attn.weight",
    "c_attn_bias": "attn.c_attn.bias",
    "attn_proj_kernel": "attn.c_proj.weight",
    "attn_proj_bias": "attn.c_proj.bias",
    "ln_2_scale": "ln_2.weight",
    "ln_2_bias": "ln_2.bias",
    "c_fc_kernel": "mlp.c_fc.weight",
    "c_fc_bias": "mlp.c_fc.bias",
    "mlp_proj_kernel": "mlp.c_proj.weight",
    "mlp_proj_bias": "mlp.c_proj.bias",
}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "lm_head.weight")
_MAX_CONFIG_BYTES = 1 << 20  # a GPT-2 config.json is ~1 KB; a bigger one is not a config


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep == "\\" and "\\" in spec


def resolve(spec: str) -> str:
    """A local directory as is; a hub name -> the local snapshot directory (cache first, then network)."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"{spec}: directory has no config.json (expected a Hugging Face GPT-2 checkpoint)")
        return path
    if os.path.exists(path):
        raise UserError(f"{spec}: not a directory (expected a Hugging Face GPT-2 checkpoint directory)")
    if _looks_like_path(spec):
        raise UserError(f"{spec}: no such directory")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, allow_patterns=HUB_PATTERNS, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    try:
        return snapshot_download(spec, allow_patterns=HUB_PATTERNS)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not get {spec!r} from the Hugging Face hub and it is not cached locally "
            f"(offline or unknown name?): {reason[:200]}"
        ) from None


_SIZES = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


def config_from_hf(path: str) -> ModelConfig:
    """The model's shape from config.json, checked before anything is built from it: a hostile or
    broken file ends in one line naming the field, not in a crash deep inside JAX."""
    where = os.path.join(path, "config.json")
    try:
        with open(where, "rb") as f:
            data = f.read(_MAX_CONFIG_BYTES + 1)
        if len(data) > _MAX_CONFIG_BYTES:
            raise UserError(f"{where}: larger than {_MAX_CONFIG_BYTES >> 20} MiB, not a model config")
        hf = json.loads(data.decode("utf-8"))
    except OSError as e:
        raise UserError(f"{where}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # bad JSON and bad UTF-8 alike
        raise UserError(
            f"{where}: not valid JSON ({_first_line(e)}); re-download or re-export the checkpoint"
        ) from None
    if not isinstance(hf, dict):
        raise UserError(f"{where}: expected a JSON object, got a {type(hf).__name__}")
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{path}: model_type is {hf.get('model_type')!r}, only 'gpt2' is supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"{path}: activation_function {act!r} is not supported (GPT-2 uses gelu_new)")
    for name in _SIZES:
        if name not in hf:
            raise UserError(f"{where}: missing field '{name}'")
        v = hf[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{where}: {name} must be a positive integer, got {json.dumps(v)[:40]}")
    if hf["n_embd"] % hf["n_head"]:
        raise UserError(f"{where}: n_embd ({hf['n_embd']}) must be divisible by n_head ({hf['n_head']})")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise UserError(f"{where}: layer_norm_epsilon must be a number in (0, 1), got {json.dumps(eps)[:40]}")
    return ModelConfig(**{name: hf[name] for name in _SIZES}, layer_norm_epsilon=float(eps))


def read_tensors(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """HF tensor names (prefix `transformer.` stripped, buffers dropped) -> float32 numpy arrays."""
    st = os.path.join(path, "model.safetensors")
    binf = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        from safetensors.numpy import load_file

        try:
            raw = load_file(st)
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"{st}: cannot read safetensors file ({_first_line(e)}); re-download or re-export the checkpoint"
            ) from None
    elif os.path.isfile(binf):
        if not allow_pickle:
            raise UserError(
                f"{path} has only pytorch_model.bin, a pickle that can run code when loaded; "
                "pass --allow-pickle (model.allow_pickle=true) if you trust it"
            )
        try:
            import torch
        except ImportError:
            raise UserError("reading pytorch_model.bin needs torch installed (pip install torch)") from None
        try:
            state = torch.load(binf, map_location="cpu", weights_only=False)
            raw = {k: v.float().numpy() for k, v in state.items()}
        except Exception as e:  # noqa: BLE001 - a broken pickle raises anything
            raise UserError(f"{binf}: cannot read ({_first_line(e)})") from None
    else:
        raise UserError(f"{path}: no model.safetensors (or pytorch_model.bin) found")
    out = {}
    for k, v in raw.items():
        k = k.removeprefix("transformer.")
        if not k.endswith(_IGNORED_SUFFIXES):
            out[k] = np.asarray(v, np.float32)
    return out


def params_from_tensors(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF names -> this project's stacked parameter names, with shape checks against cfg."""
    abstract = nnx.eval_shape(lambda: GPT2(cfg, rngs=nnx.Rngs(0)))
    out = {}

    def take(key):
        if key not in tensors:
            raise UserError(f"checkpoint is missing tensor '{key}': config.json does not match the weights")
        return tensors[key]

    layers = {int(k.split(".")[1]) for k in tensors if k.startswith("h.") and k.split(".")[1].isdigit()}
    if layers and max(layers) >= cfg.n_layer:  # extra layers would be dropped silently
        raise UserError(
            f"checkpoint has {max(layers) + 1} layers, config.json says n_layer={cfg.n_layer}: "
            "config.json does not match the weights"
        )
    for ours, theirs in _GLOBAL.items():
        out[ours] = take(theirs)
    for ours, theirs in _LAYER.items():
        out[ours] = np.stack([take(f"h.{i}.{theirs}") for i in range(cfg.n_layer)])
    for name, arr in out.items():
        want = getattr(abstract, name).get_value().shape
        if arr.shape != tuple(want):
            raise UserError(
                f"checkpoint tensor for '{name}' has shape {arr.shape}, the config expects "
                f"{tuple(want)}: config.json does not match the weights"
            )
    return out


def load_gpt2(spec: str, allow_pickle: bool = False, **overrides) -> tuple[GPT2, str]:
    """GPT-2 from a local HF directory or hub name. `overrides` set numerics (dtype, remat, ...)."""
    path = resolve(spec)
    cfg = config_from_hf(path)
    if overrides:
        import dataclasses

        cfg = dataclasses.replace(cfg, **overrides)
    params = params_from_tensors(read_tensors(path, allow_pickle), cfg)
    model = nnx.eval_shape(lambda: GPT2(cfg, rngs=nnx.Rngs(0)))
    for name, arr in params.items():
        getattr(model, name).set_value(jnp.asarray(arr))
    return model, path


def to_hf_tensors(model: GPT2) -> dict[str, np.ndarray]:
    out = {
        f"transformer.{theirs}": np.asarray(getattr(model, ours)[...], np.float32) for ours, theirs in _GLOBAL.items()
    }
    for ours, theirs in _LAYER.items():
        stacked = np.asarray(getattr(model, ours)[...], np.float32)
        for i in range(model.cfg.n_layer):
            out[f"transformer.h.{i}.{theirs}"] = np.ascontiguousarray(stacked[i])
    return out


def export_gpt2(model: GPT2, out_dir: str, tokenizer=None) -> None:
    """Write config.json + model.safetensors (+ tokenizer files for HF tokenizers)."""
    from safetensors.numpy import save_file

    cfg = model.cfg
    os.makedirs(out_dir, exist_ok=True)
    hf_cfg = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": INIT_STD,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }
    if tokenizer is not None:
        hf_cfg["bos_token_id"] = hf_cfg["eos_token_id"] = int(tokenizer.eos_id)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    save_file(to_hf_tensors(model), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None and hasattr(tokenizer, "_tok"):
        tokenizer._tok.save_pretrained(out_dir)

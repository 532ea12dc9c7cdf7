"""GPT-2 in Flax NNX, numerically the model of Hugging Face's GPT2LMHeadModel.

Learned positions, pre-LN blocks (eps 1e-5), tanh GELU, fused q|k|v, LM head tied to `wte`.
Layer parameters are stacked on a leading [n_layer] axis and run under `jax.lax.scan`, so compile
time does not grow with depth. Attention is a callback: the layer stack does not know whether its
keys come from the sequence itself, a KV cache or a thought chain (see attention.py).
Parameter layout follows HF's Conv1D (x @ W + b), so checkpoints load without transposes.
Which matmul and attention kernels run on which backend is decided in kernels.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from silentstar_jax.attention import cached_attention, causal_attention
from silentstar_jax.config import ModelConfig
from silentstar_jax.kernels import attention_impl, matmul
from silentstar_jax.sharding import param

INIT_STD = 0.02  # HF's initializer_range: weights ~ N(0, 0.02^2)

# An attention callback:
#   (q, k, v [B, L, H, Dh], per-layer extra input) -> (out [B, L, H, Dh], per-layer output)
AttendFn = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def layer_norm(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return (x32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def compute_dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class GPT2(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, NL, F = cfg.n_embd, cfg.n_layer, 4 * cfg.n_embd
        std = INIT_STD
        proj_std = INIT_STD / (2 * NL) ** 0.5  # HF init: residual projections scaled by depth
        normal = lambda s, axes, *shape: param(s * jax.random.normal(rngs.params(), shape, jnp.float32), axes)
        const = lambda c, axes, *shape: param(jnp.full(shape, c, jnp.float32), axes)
        # logical axes (sharding.py): parameters on a leading "layers" axis are the scanned block stack
        self.wte = normal(std, ("vocab", "embed"), cfg.vocab_size, D)
        self.wpe = normal(std, ("positions", "embed"), cfg.n_positions, D)
        self.ln_1_scale, self.ln_1_bias = (const(c, ("layers", "embed"), NL, D) for c in (1.0, 0.0))
        self.c_attn_kernel = normal(std, ("layers", "embed", "qkv"), NL, D, 3 * D)
        self.c_attn_bias = const(0.0, ("layers", "qkv"), NL, 3 * D)
        self.attn_proj_kernel = normal(proj_std, ("layers", "attn", "embed"), NL, D, D)
        self.attn_proj_bias = const(0.0, ("layers", "embed"), NL, D)
        self.ln_2_scale, self.ln_2_bias = (const(c, ("layers", "embed"), NL, D) for c in (1.0, 0.0))
        self.c_fc_kernel = normal(std, ("layers", "embed", "mlp"), NL, D, F)
        self.c_fc_bias = const(0.0, ("layers", "mlp"), NL, F)
        self.mlp_proj_kernel = normal(proj_std, ("layers", "mlp", "embed"), NL, F, D)
        self.mlp_proj_bias = const(0.0, ("layers", "embed"), NL, D)
        self.ln_f_scale, self.ln_f_bias = (const(c, ("embed",), D) for c in (1.0, 0.0))

    # ------------------------------------------------------------------ pieces
    def embed(self, tokens_BL, pos_BL):
        return self.wte[...][tokens_BL] + self.wpe[...][pos_BL]

    def embed_tokens(self, tokens):
        return self.wte[...][tokens]

    def layer_params(self) -> dict:
        """The block stack: every parameter whose first logical axis is "layers"."""
        return {
            name: v[...]
            for name, v in vars(self).items()
            if isinstance(v, nnx.Param) and v.get_metadata("out_sharding")[0] == "layers"
        }

    def final_norm(self, x_BLD):
        return layer_norm(x_BLD, self.ln_f_scale[...], self.ln_f_bias[...], self.cfg.layer_norm_epsilon)

    def logits(self, h_BLD):
        """Tied LM head: h @ wte^T, float32 logits."""
        dt = compute_dtype(self.cfg)
        return jnp.einsum(
            "...d,vd->...v", h_BLD.astype(dt), self.wte[...].astype(dt), preferred_element_type=jnp.float32
        )

    def run_layers(self, x_BLD, attend: AttendFn, layer_xs=None):
        """Scan the stacked blocks over x. `layer_xs` (leading [n_layer] axis) is handed to `attend`
        layer by layer; what `attend` returns per layer comes back stacked on [n_layer]."""
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        H, Dh = cfg.n_head, cfg.head_dim
        eps = cfg.layer_norm_epsilon

        def mm(a, w, b):
            return checkpoint_name(matmul(a.astype(dt), w.astype(dt)) + b.astype(dt), "dense_out")

        def block(x, inputs):
            p, xs = inputs
            B, L, D = x.shape
            h = layer_norm(x, p["ln_1_scale"], p["ln_1_bias"], eps)
            q, k, v = jnp.split(mm(h, p["c_attn_kernel"], p["c_attn_bias"]), 3, axis=-1)
            heads = lambda t: t.reshape(B, L, H, Dh)
            a, out = attend(heads(q), heads(k), heads(v), xs)
            x = x + mm(a.reshape(B, L, D), p["attn_proj_kernel"], p["attn_proj_bias"]).astype(x.dtype)
            h = layer_norm(x, p["ln_2_scale"], p["ln_2_bias"], eps)
            h = jax.nn.gelu(mm(h, p["c_fc_kernel"], p["c_fc_bias"]), approximate=True)
            x = x + mm(h, p["mlp_proj_kernel"], p["mlp_proj_bias"]).astype(x.dtype)
            return x, out

        if cfg.remat:
            block = jax.checkpoint(block)
        else:
            # keep the matmul outputs, recompute the cheap rest (layer norms, GELU, softmax) backward
            block = jax.checkpoint(block, policy=jax.checkpoint_policies.save_only_these_names("dense_out"))
        return jax.lax.scan(block, x_BLD, (self.layer_params(), layer_xs))

    # ------------------------------------------------------------------ whole passes
    def base_impl(self) -> str:
        """The base pass's attention kernel (kernels.attention_impl)."""
        return attention_impl(self.cfg.attention, self.cfg.dtype)

    def forward_hidden(self, tokens_BL, attn_mask_BL=None):
        """Causal pass. Returns h [B, L, D] after ln_f and each layer's (k, v) [NL, B, L, H, Dh]."""
        return self.forward_embedded(self.embed(tokens_BL, jnp.arange(tokens_BL.shape[1])[None]), attn_mask_BL)

    def forward_embedded(self, x_BLD, attn_mask_BL=None):
        """The causal pass from input embeddings (positions added): h after ln_f, (k, v)."""
        impl = self.base_impl() if attn_mask_BL is None else "xla"

        def attend(q, k, v, _):
            return causal_attention(q, k, v, attn_mask_BL, impl), (k, v)

        x, kv = self.run_layers(x_BLD, attend)
        return self.final_norm(x), kv

    def __call__(self, tokens_BL, attn_mask_BL=None):
        """Logits [B, L, V], as GPT2LMHeadModel(input_ids).logits."""
        return self.logits(self.forward_hidden(tokens_BL, attn_mask_BL)[0])

    def init_cache(self, batch: int, length: int):
        """Preallocated KV cache [NL, B, T, H, Dh] for k and v."""
        cfg = self.cfg
        shape = (cfg.n_layer, batch, length, cfg.n_head, cfg.head_dim)
        dt = compute_dtype(cfg)
        return jnp.zeros(shape, dt), jnp.zeros(shape, dt)

    def forward_cached(self, tokens_BQ, cache, start, extra_BQD=None):
        """Run Q new tokens at positions [start, start+Q) against and into the cache; extra_BQD is
        added to their input embeddings (thinking.anchor: sequence). Returns h [B, Q, D] after ln_f
        and the updated cache."""
        Q = tokens_BQ.shape[1]

        def attend(q, k, v, layer_cache):
            return cached_attention(q, k, v, *layer_cache, start)

        x = self.embed(tokens_BQ, (start + jnp.arange(Q))[None])
        x = x if extra_BQD is None else x + extra_BQD
        x, cache = self.run_layers(x, attend, cache)
        return self.final_norm(x), cache

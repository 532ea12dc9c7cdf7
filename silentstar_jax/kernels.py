"""Matmul and attention-kernel policy, kept out of the model files (as MaxText keeps its matmul
policy in `linears.py`): which kernel runs on which backend, and how products accumulate.

Most of it exists for XLA:CPU: `einsum_acc32` makes XLA:CPU use its bf16 dot instructions, and
`dense` has its own VJP because autodiff's weight gradient is slow there. On GPU `matmul` is a
plain einsum and the base pass may use cuDNN attention. gpt2.py and attention.py import from here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def einsum_acc32(eq, a, b):
    """einsum accumulating in float32, returned in a's dtype. For bf16 inputs XLA:CPU then uses the
    CPU's bf16 dot instructions (measured 2x its fp32 matmul); a dot with bf16 output does not."""
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


@jax.custom_vjp
def dense(a, w):
    """a [..., K] @ w [K, N]. Own VJP for XLA:CPU: autodiff's weight gradient a^T g contracts over the
    token axis of both operands, which XLA:CPU runs as a slow non-YNNPACK dot behind a slow fused
    transpose; here the narrower operand is transposed on its own and the product is a plain matmul."""
    return einsum_acc32("...k,kn->...n", a, w)


def _dense_fwd(a, w):
    return dense(a, w), (a, w)


def _dense_bwd(res, g):
    a, w = res
    da = einsum_acc32("...n,kn->...k", g, w)
    a2 = a.reshape(-1, a.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    bar = jax.lax.optimization_barrier  # keeps XLA from folding the transposes back into the dot
    if g2.shape[1] < a2.shape[1]:
        # [N, T] @ [T, K], then a small [N, K] transpose
        dw = bar(einsum_acc32("nt,tk->nk", bar(g2.T), a2)).T
    else:
        dw = einsum_acc32("kt,tn->kn", bar(a2.T), g2)  # [K, T] @ [T, N]
    return da, dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def matmul(a, w):
    """a [..., K] @ w [K, N] for the layer stack: `dense` on XLA:CPU, a plain einsum elsewhere."""
    if jax.default_backend() == "cpu":
        return dense(a, w)
    return jnp.einsum("...k,kn->...n", a, w)


def attention_impl(requested: str, dtype: str) -> str:
    """The base pass's attention kernel: `requested` ("auto", "xla" or "cudnn"); auto is cuDNN on a
    GPU in bfloat16, XLA otherwise."""
    if requested == "auto":
        return "cudnn" if (jax.default_backend() == "gpu" and dtype == "bfloat16") else "xla"
    return requested

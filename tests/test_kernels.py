"""The CPU matmul with a hand-written VJP (kernels.dense) against autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np

from silentstar_jax.kernels import dense


def _close(a, b, tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=tol, rtol=tol), a, b)


def test_dense_value_and_grads_equal_plain_matmul():
    k = jax.random.split(jax.random.key(0), 3)
    for shape_a, shape_w in (((2, 5, 8), (8, 3)), ((2, 5, 3), (3, 8))):  # both transposition branches
        a, w = jax.random.normal(k[0], shape_a), jax.random.normal(k[1], shape_w)
        g = jax.random.normal(k[2], shape_a[:-1] + shape_w[-1:])
        np.testing.assert_allclose(dense(a, w), a @ w, atol=1e-5)
        loss = lambda f: lambda a, w: jnp.sum(f(a, w) * g)
        _close(jax.grad(loss(dense), (0, 1))(a, w), jax.grad(loss(lambda a, w: a @ w), (0, 1))(a, w), 1e-5)

"""``jax.grad`` through the functional call of the bi-Laplacian (issue 23, item 4).

``functional_call(net, p, x, biharmonic=True)`` is a pure function of the parameter
pytree ``p``: JAX differentiates the route's sweep (the analytic torch function of
``pinn/_streams_bh_train`` is torch-only and steps aside). Reference: the same
network written out in ``jax.numpy`` and its bi-Laplacian by nested ``jax.hessian``.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import functional_call, jax_parameters  # noqa: E402


@pytest.fixture(autouse=True)
def _analytic_higher_order_on():
    """This module tests the AD-free order-3/4 weight gradient, an opt-in (slower than taping)."""
    from hessquik_core.training import analytic_higher_order_gradient

    before = analytic_higher_order_gradient(True)
    yield
    analytic_higher_order_gradient(before)


@pytest.fixture(autouse=True)
def _x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def test_jax_grad_of_a_biharmonic_loss_matches_nested_ad():
    net = hq.NN(
        hq.SingleLayer(2, 5, act="tanh", seed=0),
        hq.ResnetNN(5, depth=1, h=0.5, act="sin", seed=1),
        hq.SingleLayer(5, 1, seed=2),
    )
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)))
    p = jax_parameters(net, dtype=jnp.float64)
    assert sorted(p) == ["0.K", "0.b", "1.0.layer.K", "1.0.layer.b", "2.K", "2.b"]

    def loss(p):
        r = functional_call(net, p, x, biharmonic=True, laplacian=True)
        return jnp.mean(r.biharmonic**2) + jnp.mean(r.laplacian * r.value)

    def u(p, xi):
        h = jnp.tanh(xi @ p["0.K"] + p["0.b"])
        h = h + 0.5 * jnp.sin(h @ p["1.0.layer.K"] + p["1.0.layer.b"])
        return (h @ p["2.K"] + p["2.b"])[0]

    def lap(f):
        return lambda p, xi: jnp.trace(jax.hessian(f, argnums=1)(p, xi))

    def ref_loss(p):
        B = jax.vmap(lap(lap(u)), in_axes=(None, 0))(p, x)
        L = jax.vmap(lap(u), in_axes=(None, 0))(p, x)
        U = jax.vmap(u, in_axes=(None, 0))(p, x)
        return jnp.mean(B**2) + jnp.mean(L * U)

    ref = jax.grad(ref_loss)(p)
    for got in (jax.grad(loss)(p), jax.jit(jax.grad(loss))(p)):
        assert sorted(got) == sorted(p)
        for k in p:
            assert got[k].shape == p[k].shape and got[k].dtype == jnp.float64
            scale = float(jnp.max(jnp.abs(ref[k])))
            assert float(jnp.max(jnp.abs(got[k] - ref[k]))) <= 1e-12 * scale, k


def test_jax_grad_of_a_fourth_derivative_loss_matches_nested_ad():
    net = hq.FullyConnectedNN([2, 5, 1], act="tanh", output_act=None, seed=0)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2)))
    V = jnp.asarray([[1.0, 0.5], [0.0, -1.0]])
    p = jax_parameters(net, dtype=jnp.float64)

    def loss(p):
        r = functional_call(net, p, x, fourth_derivative=True, directions=V)
        return jnp.mean(r.fourth_derivative**2)

    def u(p, xi):
        return (jnp.tanh(xi @ p["0.K"] + p["0.b"]) @ p["1.K"] + p["1.b"])[0]

    def d4(p, xi, v):
        g = lambda t: u(p, xi + t * v)  # noqa: E731
        for _ in range(4):
            g = jax.grad(g)
        return g(0.0)

    def ref_loss(p):
        D = jax.vmap(lambda xi: jax.vmap(lambda v: d4(p, xi, v))(V.T))(x)
        return jnp.mean(D**2)

    ref, got = jax.grad(ref_loss)(p), jax.jit(jax.grad(loss))(p)
    for k in ("0.K", "0.b", "1.K"):
        scale = float(jnp.max(jnp.abs(ref[k])))
        assert float(jnp.max(jnp.abs(got[k] - ref[k]))) <= 1e-12 * scale, k

"""The layer contract: a layer that states only its per-example local derivatives
(``evaluate`` returning :class:`~hessquik_core.rules.jacobian.LocalDerivatives`)
gets both modes, every request and directions from the generic rule.

The test layer :math:`f(u) = u \\cdot \\tfrac12 |u|^2` has a Jacobian that is not
diagonal-times-matrix (:math:`J = s I + u u^\\top`), as LayerNorm's is not; the
reference is torch.func on the same formula.
"""

from __future__ import annotations

import numpy as np
import pytest
from _reference import torch_jit_script_quiet

import hessquik_core as hq
from hessquik_core.layers import Layer
from hessquik_core.rules.jacobian import LocalDerivatives

torch = pytest.importorskip("torch")


class CubicScale(Layer):
    r""":math:`f(u) = u\,s(u)`, :math:`s = \tfrac12 |u|^2`: :math:`J_{aj} = \delta_{aj} s + u_a u_j`,
    :math:`T_{abj} = \delta_{ab} u_j + \delta_{aj} u_b + \delta_{bj} u_a`."""

    def __init__(self, width):
        super().__init__()
        self.in_features = self.out_features = width

    def evaluate(self, u, params, order, ops):
        xp = ops.xp
        s = 0.5 * xp.sum(u * u, axis=-1)
        f = u * s[:, None]
        if order == 0:
            return f, None
        p = u.shape[1]
        eye = xp.eye(p, dtype=u.dtype)
        J = s[:, None, None] * eye + u[:, :, None] * u[:, None, :]
        T = None
        if order == 2:
            T = (
                eye[None, :, :, None] * u[:, None, None, :]
                + eye[None, :, None, :] * u[:, None, :, None]
                + eye[None, None, :, :] * u[:, :, None, None]
            )
        return f, LocalDerivatives(J, T)


def _net():
    rng = np.random.default_rng(3)
    return hq.NN(
        hq.SingleLayer(3, 4, act="tanh", seed=rng),
        CubicScale(4),
        hq.SingleLayer(4, 2, act="sigmoid", seed=rng),
    )


def _truth(net, x):
    from torch.func import hessian, jacrev, vmap

    l0, l2 = net[0], net[2]
    K0, b0 = (torch.tensor(np.asarray(a)) for a in (l0.K, l0.b))
    K2, b2 = (torch.tensor(np.asarray(a)) for a in (l2.K, l2.b))

    def f(xi):
        u = torch.tanh(xi @ K0 + b0)
        u = u * (0.5 * (u * u).sum())
        return torch.sigmoid(u @ K2 + b2)

    xt = torch.from_numpy(x)
    with torch_jit_script_quiet():
        g = vmap(jacrev(f))(xt).permute(0, 2, 1)  # (n, d, m)
        H = vmap(hessian(f))(xt).permute(0, 2, 3, 1)  # (n, d, d, m)
    return vmap(f)(xt).numpy(), g.numpy(), H.numpy()


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("backend", [None, "generic", "torch"])
def test_generic_rule_agrees_with_torch_func(mode, backend):
    net = _net()
    x = np.random.default_rng(0).standard_normal((5, 3))
    v, g, H = _truth(net, x)
    r = net(x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode, backend=backend)
    for got, want in (
        (r.value, v),
        (r.gradient, g),
        (r.hessian, H),
        (r.laplacian, np.trace(H, axis1=1, axis2=2)),
        (r.hessian_diagonal, np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1)),
    ):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11, atol=1e-12)
    # the trace / diagonal-only routes (backward: the first layer's shortcut)
    r2 = net(x, laplacian=True, hessian_diagonal=True, mode=mode, backend=backend)
    np.testing.assert_allclose(
        np.asarray(r2.laplacian), np.trace(H, axis1=1, axis2=2), rtol=1e-11, atol=1e-12
    )


def test_generic_rule_at_the_first_layer_and_with_directions():
    """First layer (seed shared by the batch, zero input Hessian), packed forward
    Hessian (k >= 4) and directions in both modes."""
    net = hq.NN(CubicScale(5), hq.SingleLayer(5, 2, act="tanh", seed=1))
    x = np.random.default_rng(1).standard_normal((4, 5))
    full = net(x, gradient=True, hessian=True, mode="backward")
    fwd = net(x, gradient=True, hessian=True, hessian_diagonal=True, laplacian=True, mode="forward")
    np.testing.assert_allclose(fwd.hessian, full.hessian, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(
        fwd.laplacian, np.trace(full.hessian, axis1=1, axis2=2), rtol=1e-12, atol=1e-13
    )
    V = np.random.default_rng(2).standard_normal((5, 2))
    rv = net(x, gradient=True, hessian=True, directions=V)
    want = np.einsum("ndem,da,eb->nabm", full.hessian, V, V)
    np.testing.assert_allclose(rv.hessian, want, rtol=1e-12, atol=1e-12)
    W = np.random.default_rng(3).standard_normal((2, 3))
    rb = net(x, hessian=True, laplacian=True, directions=W)
    np.testing.assert_allclose(
        rb.hessian, np.einsum("ndem,mk->ndek", full.hessian, W), rtol=1e-12, atol=1e-12
    )

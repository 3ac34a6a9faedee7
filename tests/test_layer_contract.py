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
from layer_checks import check_input_derivatives, check_save_load, check_to_torch

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


def _torch_f(net):
    """The network of :func:`_net` written in plain torch, from its parameters."""
    l0, l2 = net[0], net[2]
    K0, b0 = (torch.tensor(np.asarray(a)) for a in (l0.K, l0.b))
    K2, b2 = (torch.tensor(np.asarray(a)) for a in (l2.K, l2.b))

    def f(xi):
        u = torch.tanh(xi @ K0 + b0)
        u = u * (0.5 * (u * u).sum())
        return torch.sigmoid(u @ K2 + b2)

    return f


def test_generic_rule_agrees_with_torch_func():
    net = _net()
    x = np.random.default_rng(0).standard_normal((5, 3))
    check_input_derivatives(net, _torch_f(net), x)


def test_generic_rule_at_the_first_layer():
    """First layer (seed shared by the batch, zero input Hessian) and the packed
    forward Hessian (d >= 4 directions)."""
    net = hq.NN(CubicScale(5), hq.SingleLayer(5, 2, act="tanh", seed=1))
    K, b = (torch.tensor(np.asarray(a)) for a in (net[1].K, net[1].b))

    def f(xi):
        return torch.tanh((xi * (0.5 * (xi * xi).sum())) @ K + b)

    check_input_derivatives(net, f, np.random.default_rng(1).standard_normal((4, 5)), backends=(None,))


def test_layer_checks_cover_a_registered_layer():
    """The same checks on a built-in layer, with persistence and the torch twin."""
    rng = np.random.default_rng(2)
    net = hq.NN(
        hq.SingleLayer(3, 4, act="softplus", seed=rng), hq.ResnetLayer(4, h=0.5, act="tanh", seed=rng)
    )
    l0, l1 = net[0], net[1].layer
    K0, b0, K1, b1 = (torch.tensor(np.asarray(a)) for a in (l0.K, l0.b, l1.K, l1.b))

    def f(xi):
        u = torch.nn.functional.softplus(xi @ K0 + b0)
        return u + 0.5 * torch.tanh(u @ K1 + b1)

    x = rng.standard_normal((4, 3))
    check_input_derivatives(net, f, x, backends=(None,))
    check_save_load(net, x)
    check_to_torch(net, x)

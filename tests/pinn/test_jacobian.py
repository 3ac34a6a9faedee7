"""Per-point parameter Jacobians of derivative quantities (hessquik_core.pinn.jacobian).

Reference: a functional torch model of the same network on the flat parameter
vector (ParameterLayout order), its quantities by nested autograd
(torch.func.jacrev / jacfwd / hessian) and their Jacobians by
``vmap(jacrev(·, argnums=θ))`` — independent of the stream recurrences.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq

torch = pytest.importorskip("torch")
import array_api_compat.torch as ctorch  # noqa: E402
from torch.func import jacrev, vmap  # noqa: E402

QUANTS = ("value", "gradient", "laplacian", "hessian_diagonal", "weighted_laplacian")
RTOL = 1e-12


# --------------------------------------------------------------------------
# the reference
# --------------------------------------------------------------------------


def _act(act, z):
    return act.derivatives(z, 0, xp=ctorch)[0]


def _layer(leaf, P, u, x0):
    """One leaf of the network on torch tensors; ``P``: local name -> tensor."""
    name = type(leaf).__name__
    if name == "SingleLayer":
        z = u @ P["K"] + (P["b"] if "b" in P else 0.0)
        return _act(leaf.act, z)
    if name == "ResnetLayer":
        z = u @ P["K"] + (P["b"] if "b" in P else 0.0)
        return u + leaf.h * _act(leaf.act, z)
    raise NotImplementedError(name)  # pragma: no cover


def torch_model(net):
    """``f(theta, x) -> (m,)`` for one point, with ``theta`` in ParameterLayout order."""
    layout = hq.curvature.parameter_layout(net)
    leaves = list(net._leaves())
    # per leaf: (local name, layout index)
    slots, j = [], 0
    for leaf in leaves:
        s = []
        for k, _ in leaf.named_parameters():
            s.append((leaf.local_param_name(k), j))
            j += 1
        slots.append(s)

    def f(theta, x):
        u = x
        for leaf, s in zip(leaves, slots):
            P = {
                name: theta[layout.offsets[i] : layout.offsets[i] + layout.sizes[i]].reshape(layout.shapes[i])
                for name, i in s
            }
            u = _layer(leaf, P, u, x)
        return u

    return f, layout


def reference(net, x, quantity, S=None):
    """``(q, J)`` by nested torch autograd, float64, as NumPy."""
    f, layout = torch_model(net)
    theta = hq.curvature.flatten_parameters(net)
    th = torch.tensor(np.asarray(theta, dtype=np.float64))
    X = torch.tensor(np.asarray(x, dtype=np.float64))
    St = None if S is None else torch.tensor(S)

    def q(theta, xi):
        if quantity == "value":
            return f(theta, xi)
        if quantity == "gradient":
            return jacrev(f, argnums=1)(theta, xi).T  # (d, m)
        # reverse over reverse: torch's forward AD would load its jit-scripted decompositions
        H = jacrev(jacrev(f, argnums=1), argnums=1)(theta, xi)  # (m, d, d)
        if quantity == "laplacian":
            return torch.diagonal(H, dim1=1, dim2=2).sum(-1)
        if quantity == "hessian_diagonal":
            return torch.diagonal(H, dim1=1, dim2=2).T  # (d, m)
        return torch.einsum("mij,ir,jr->m", H, St, St)

    Q = vmap(q, in_dims=(None, 0))(th, X)
    J = vmap(jacrev(q, argnums=0), in_dims=(None, 0))(th, X)
    return Q.numpy(), J.numpy()


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _weights(net, quantity, seed=3):
    if quantity != "weighted_laplacian":
        return None
    return np.random.default_rng(seed).standard_normal((net.in_features, 3))


def _shape(net, n, quantity):
    d, m, P = net.in_features, net.out_features, hq.curvature.parameter_layout(net).size
    return (n, d, m, P) if quantity in ("gradient", "hessian_diagonal") else (n, m, P)


# --------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------


def dense_net(d=3, m=1, act="tanh", seed=0):
    return hq.NN(
        hq.SingleLayer(d, 5, act=act, seed=seed),
        hq.SingleLayer(5, 4, act=act, seed=seed + 1),
        hq.SingleLayer(4, m, seed=seed + 2),
    )


def resnet_net(d=2, m=2, seed=0):
    return hq.NN(
        hq.SingleLayer(d, 4, act="sin", seed=seed),
        hq.ResnetLayer(4, h=0.7, act="tanh", seed=seed + 1),
        hq.ResnetLayer(4, h=0.3, act="sigmoid", bias=False, seed=seed + 2),
        hq.SingleLayer(4, m, act="tanh", bias=False, seed=seed + 3),
    )


NETS = {
    "dense": dense_net,
    "dense-m2": lambda: dense_net(d=2, m=2, act="sin"),
    "resnet": resnet_net,
    "fully-connected": lambda: hq.FullyConnectedNN([2, 6, 6, 1], act="tanh", seed=1),
    "resnet-nn": lambda: hq.NN(
        hq.SingleLayer(3, 4, act="tanh", seed=2), hq.ResnetNN(4, depth=2, h=0.5, act="tanh")
    ),
}


def _x(net, n=5, seed=1):
    return np.random.default_rng(seed).standard_normal((n, net.in_features))


@pytest.mark.parametrize("netname", sorted(NETS))
@pytest.mark.parametrize("quantity", QUANTS)
def test_against_torch_func(netname, quantity):
    net = NETS[netname]()
    x = _x(net)
    S = _weights(net, quantity)
    J = hq.pinn.jacobian(net, x, quantity, weights=S)
    assert isinstance(J, np.ndarray) and J.dtype == np.float64
    assert J.shape == _shape(net, x.shape[0], quantity)
    _, Jr = reference(net, x, quantity, S)
    assert rel(J, Jr) <= RTOL

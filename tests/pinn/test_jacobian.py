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


# --------------------------------------------------------------------------
# quantities_and_jacobians, jvp, vjp
# --------------------------------------------------------------------------

NEEDS = [
    ("value",),
    ("laplacian",),
    ("value", "laplacian"),
    ("gradient",),
    ("value", "gradient", "laplacian"),
    ("hessian_diagonal", "laplacian"),
    ("value", "gradient", "hessian_diagonal", "weighted_laplacian"),
]


@pytest.mark.parametrize("needs", NEEDS, ids=["+".join(n) for n in NEEDS])
def test_quantities_and_jacobians(needs):
    net = resnet_net()
    x = _x(net, n=4)
    S = _weights(net, "weighted_laplacian")
    Q, J = hq.pinn.quantities_and_jacobians(
        net, x, needs, weights=S if "weighted_laplacian" in needs else None
    )
    assert set(J) == set(needs)
    res = net(x, gradient=True, laplacian=True, hessian_diagonal=True)
    expect = {"value": res.value, "laplacian": res.laplacian, "hessian_diagonal": res.hessian_diagonal}
    expect["gradient"] = res.gradient
    assert Q.value.shape == (4, net.out_features)
    np.testing.assert_allclose(Q.value, res.value, rtol=1e-13, atol=1e-13)
    for q in ("gradient", "laplacian", "hessian_diagonal", "weighted_laplacian"):
        if q not in needs:
            assert Q[q] is None
            continue
        if q == "weighted_laplacian":
            ref, _ = reference(net, x, q, S)
            np.testing.assert_allclose(Q[q], ref, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_allclose(Q[q], expect[q], rtol=1e-12, atol=1e-12)
    for q in needs:
        Jq = hq.pinn.jacobian(net, x, q, weights=S if q == "weighted_laplacian" else None)
        assert J[q].shape == Jq.shape
        assert rel(J[q], Jq) <= 1e-13


@pytest.mark.parametrize("quantity", QUANTS)
def test_jvp_vjp_against_dense(quantity):
    net = resnet_net(seed=4)
    x = _x(net, n=3, seed=5)
    S = _weights(net, quantity)
    J = hq.pinn.jacobian(net, x, quantity, weights=S)
    P = J.shape[-1]
    rng = np.random.default_rng(7)
    v = rng.standard_normal(P)
    w = rng.standard_normal(J.shape[:-1])
    Jv = hq.pinn.jvp(net, x, quantity, v, weights=S)
    assert Jv.shape == J.shape[:-1]
    assert rel(Jv, J @ v) <= 1e-12
    JTw = hq.pinn.vjp(net, x, quantity, w, weights=S)
    assert JTw.shape == (P,)
    assert rel(JTw, np.tensordot(w, J, axes=w.ndim)) <= 1e-12


# --------------------------------------------------------------------------
# libraries, dtypes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", QUANTS)
def test_libraries(lib, quantity):
    net = resnet_net(seed=2)
    xn = _x(net, n=3, seed=2)
    S = _weights(net, quantity)
    x = lib.asarray(xn)
    Sx = None if S is None else lib.asarray(S)
    kw = {} if lib.backend is None else {"backend": lib.backend}
    J = hq.pinn.jacobian(net, x, quantity, weights=Sx, **kw)
    lib.check(J, _shape(net, 3, quantity), x)
    Jn = hq.pinn.jacobian(net, xn, quantity, weights=S)
    assert rel(lib.to_numpy(J), Jn) <= 1e-13
    P = Jn.shape[-1]
    v = np.random.default_rng(1).standard_normal(P)
    w = np.random.default_rng(2).standard_normal(Jn.shape[:-1])
    Jv = hq.pinn.jvp(net, x, quantity, lib.asarray(v), weights=Sx, **kw)
    lib.check(Jv, Jn.shape[:-1], x)
    assert rel(lib.to_numpy(Jv), Jn @ v) <= 1e-12
    JTw = hq.pinn.vjp(net, x, quantity, lib.asarray(w), weights=Sx, **kw)
    lib.check(JTw, (P,), x)
    assert rel(lib.to_numpy(JTw), np.tensordot(w, Jn, axes=w.ndim)) <= 1e-12


def test_torch_input_with_numpy_backend_converts_back():
    net = dense_net()
    x = torch.tensor(_x(net, n=2))
    J = hq.pinn.jacobian(net, x, "laplacian", backend="numpy")
    assert isinstance(J, torch.Tensor) and J.dtype == torch.float64
    assert rel(J.numpy(), hq.pinn.jacobian(net, x.numpy(), "laplacian")) <= 1e-14


@pytest.mark.parametrize("quantity", QUANTS)
def test_float32_against_float64(quantity):
    net = dense_net(d=2, m=2)
    x = _x(net, n=4)
    S = _weights(net, quantity)
    J64 = hq.pinn.jacobian(net, x, quantity, weights=S)
    J32 = hq.pinn.jacobian(
        net, x.astype(np.float32), quantity, weights=None if S is None else S.astype(np.float32)
    )
    assert J32.dtype == np.float32 and J32.shape == J64.shape
    assert rel(J32, J64) <= 1e-5


def test_torch_parameters_and_requires_grad_input():
    net = dense_net()
    x = torch.tensor(_x(net, n=2), requires_grad=True)
    J = hq.pinn.jacobian(net, x, "laplacian")
    assert not J.requires_grad
    assert rel(J.numpy(), hq.pinn.jacobian(net, x.detach().numpy(), "laplacian")) <= 1e-14

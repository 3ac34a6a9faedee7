"""Per-point parameter Jacobians of derivative quantities (hessquik_core.pinn.jacobian).

Reference: a functional torch model of the same network on the flat parameter
vector (ParameterLayout order), its quantities by nested autograd
(torch.func.jacrev / jacfwd / hessian) and their Jacobians by
``vmap(jacrev(·, argnums=θ))`` — independent of the stream recurrences.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.engine.plan import MemoryBudgetError
from hessquik_core.layers.base import NONNEG

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
    if name == "ICNNLayer":
        K = P["K"] if "L" not in P else torch.cat([_act(NONNEG, P["L"]), P["K"]])
        z = u @ K + (P["b"] if "b" in P else 0.0)
        return torch.cat([_act(leaf.act, z), u[leaf.n_in :]])
    if name in ("QuadraticLayer", "QuadraticICNNLayer"):
        s = getattr(leaf, "n_in", 0)
        c = P["v"] if "w" not in P else torch.cat([_act(NONNEG, P["w"]), P["v"]])
        a = u[s:] @ P["A"].T
        return (u @ c + 0.5 * (a * a).sum() + P["mu"][0])[None]
    if name == "FourierFeatures":
        B = P["B"] if "B" in P else torch.tensor(np.asarray(leaf.B))
        z = 2 * np.pi * (u @ B)
        return torch.cat([torch.sin(z), torch.cos(z)])
    if name == "PeriodicEmbedding":
        s = len(leaf.periods)
        if "omega" in P:
            Sel = torch.tensor(leaf._S)
            K = torch.cat([Sel * P["omega"], Sel * P["omega"], torch.tensor(leaf._K[:, 2 * s :])], dim=1)
        else:
            K = torch.tensor(leaf._K)
        z = u @ K
        return torch.cat([torch.cos(z[:s]), torch.sin(z[s : 2 * s]), z[2 * s :]])
    if name == "LayerNorm":
        c = u - u.mean()
        xh = c / torch.sqrt((c * c).mean() + leaf.eps)
        return xh * P["gamma"] + P["beta"] if "gamma" in P else xh
    if name == "_GatedStep":
        w = leaf.width
        U, V, H = u[:w], u[w : 2 * w], u[2 * w :]
        Z = _act(leaf.act, H @ P["W"] + (P["b"] if "b" in P else 0.0))
        return torch.cat([U, V, U + Z * (V - U)])
    if name == "_Readout":
        return u[2 * leaf.width :] @ P["K"] + (P["b"] if "b" in P else 0.0)
    if name == "GatedResidual":
        y = u
        for i, inner in enumerate(leaf.block._leaves()):
            Pi = {k.partition("/")[2]: v for k, v in P.items() if k.startswith(f"{i}/")}
            y = _layer(inner, Pi, y, x0)
        return P["alpha"] * y + (1.0 - P["alpha"]) * u
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
    "icnn": lambda: hq.NN(
        hq.ICNNLayer(2, None, 3, act="tanh", seed=1),
        hq.ICNNLayer(2, 3, 4, act="sigmoid", seed=2),
        hq.ICNNLayer(2, 4, 2, act="tanh", bias=False, seed=3),
        hq.QuadraticICNNLayer(2, 2, 2, seed=4),
    ),
    "quadratic": lambda: hq.NN(hq.SingleLayer(3, 4, act="sin", seed=5), hq.QuadraticLayer(4, 2, seed=6)),
    "icnn-first-quadratic": lambda: hq.NN(hq.QuadraticICNNLayer(2, None, 3, seed=7)),
    "fourier": lambda: hq.NN(
        hq.FourierFeatures(2, 3, scale=0.5, trainable=True, seed=1), hq.SingleLayer(6, 2, act="tanh", seed=2)
    ),
    "fourier-frozen": lambda: hq.NN(
        hq.FourierFeatures(2, 2, seed=3), hq.SingleLayer(4, 1, act="sin", seed=4)
    ),
    "periodic": lambda: hq.NN(
        hq.PeriodicEmbedding(3, [1.5, 2.0], axes=[2, 0], trainable=True),
        hq.SingleLayer(5, 3, act="tanh", seed=5),
        hq.ResnetLayer(3, h=0.5, act="sin", seed=6),
        hq.SingleLayer(3, 1, seed=7),
    ),
    "periodic-frozen": lambda: hq.NN(
        hq.PeriodicEmbedding(2, 1.0, axes=[1]), hq.SingleLayer(3, 2, act="tanh", seed=8)
    ),
    "layernorm": lambda: _with_random_affine(
        hq.NN(
            hq.SingleLayer(2, 4, act="tanh", seed=9),
            hq.LayerNorm(4, eps=0.1),
            hq.SingleLayer(4, 3, act="sin", seed=10),
            hq.LayerNorm(3, elementwise_affine=False),
            hq.SingleLayer(3, 2, act="tanh", seed=11),
        )
    ),
    "gated": lambda: _with_random_affine(
        hq.NN(hq.GatedMLP(2, 3, depth=2, out_features=2, act="tanh", seed=13)), keys=(".b",)
    ),
    "gated-sin-nobias": lambda: hq.NN(
        hq.SingleLayer(2, 3, act="sin", seed=14),
        hq.GatedMLP(3, 2, depth=1, out_features=1, act="sin", bias=False, seed=15),
    ),
    "gated-residual": lambda: hq.NN(
        hq.SingleLayer(2, 3, act="tanh", seed=16),
        hq.GatedResidual(
            hq.NN(
                hq.SingleLayer(3, 4, act="sin", seed=17),
                hq.LayerNorm(4),
                hq.SingleLayer(4, 3, act="tanh", seed=18),
            ),
            alpha=0.4,
        ),
        hq.SingleLayer(3, 2, seed=19),
    ),
    "resnet-nn": lambda: hq.NN(
        hq.SingleLayer(3, 4, act="tanh", seed=2), hq.ResnetNN(4, depth=2, h=0.5, act="tanh")
    ),
}


def _with_random_affine(net, seed=12, keys=("gamma", "beta")):
    """Parameters ending in ``keys`` (LayerNorm's γ, β; the gated MLP's zero biases)
    away from their initialisation, so that a wrong path through them cannot hide."""
    rng = np.random.default_rng(seed)
    state = {
        k: (v + 0.3 * rng.standard_normal(v.shape) if k.endswith(keys) else v)
        for k, v in net.state_dict().items()
    }
    net.load_state_dict(state)
    return net


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
    ("hessian_diagonal",),
    ("gradient", "weighted_laplacian"),
    ("laplacian", "weighted_laplacian"),
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


@pytest.mark.parametrize(
    "netname", ["resnet", "icnn", "quadratic", "periodic", "fourier-frozen", "layernorm"]
)
@pytest.mark.parametrize("quantity", QUANTS)
def test_jvp_vjp_against_dense(quantity, netname):
    net = NETS[netname]()
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


@pytest.mark.parametrize("netname", ["dense-m2", "icnn", "layernorm", "gated", "periodic"])
@pytest.mark.parametrize("quantity", QUANTS)
def test_float32_against_float64(quantity, netname):
    net = NETS[netname]()
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


# --------------------------------------------------------------------------
# Kronecker factors against their definition
# --------------------------------------------------------------------------


def _streams_reference(net, x, quantity, w, S=None):
    """The stream stacks by a taped torch forward of the recurrences (written out
    here) and their adjoints by autograd: per affine block ``(Ỹ, Z̄)``, rows of all
    points and streams, and the row count ``R`` per point."""
    xt = torch.tensor(x)
    n, d = xt.shape
    # a mapping {"gradient": wg, "hessian_diagonal": wd}: the per-coordinate streams, r = Σ_q <w_q, q>
    ws = quantity if isinstance(quantity, dict) else None
    g = d if (ws is not None or quantity in ("gradient", "hessian_diagonal")) else 1
    N = n * g
    if ws is not None:
        k, second = 1, True
    elif quantity == "value":
        k, second = 0, False
    elif quantity == "gradient":
        k, second = 1, False
    elif quantity == "hessian_diagonal":
        k, second = 1, True
    elif quantity == "laplacian":
        k, second = d, True
    else:
        k, second = S.shape[1], True
    rows = [xt.repeat_interleave(g, dim=0)[None]]
    if k:
        if g > 1:
            rows.append(torch.eye(d, dtype=xt.dtype).repeat(n, 1)[None])
        else:
            seed = torch.eye(d, dtype=xt.dtype) if S is None else torch.tensor(S).T
            rows.append(seed[:, None, :].expand(k, N, d))
    if second:
        rows.append(torch.zeros(1, N, d, dtype=xt.dtype))
    Y = torch.cat(rows)
    blocks = []
    for leaf in net._leaves():
        inner = leaf if type(leaf).__name__ == "SingleLayer" else leaf.layer
        K = torch.tensor(inner.K, requires_grad=True)  # so that Z is recorded
        b = None if inner.b is None else torch.tensor(inner.b)
        Z = Y @ K
        if b is not None:
            Z = torch.cat([(Z[0] + b)[None], Z[1:]])
        Z.retain_grad()
        s0, s1, s2 = leaf.act.derivatives(Z[0], 2, xp=ctorch)
        out = [s0[None]]
        if k:
            out.append(s1 * Z[1 : 1 + k])
        if second:
            A = Z[1 : 1 + k]
            out.append((s2 * (A * A).sum(0) + s1 * Z[1 + k])[None])
        Yn = torch.cat(out)
        Yn = Yn if type(leaf).__name__ == "SingleLayer" else Y + leaf.h * Yn
        blocks.append((Y, Z, b is not None))
        Y = Yn
    if ws is None:
        r = (torch.tensor(w).reshape(N, -1) * Y[Y.shape[0] - 1]).sum()
    else:
        rows_of = {"gradient": 1, "hessian_diagonal": 2}
        r = sum((torch.tensor(wq).reshape(N, -1) * Y[rows_of[q]]).sum() for q, wq in ws.items())
    r.backward()
    out = []
    for Yin, Z, bias in blocks:
        Sr, _, p = Yin.shape
        a = Yin.detach().reshape(Sr * N, p)
        if bias:
            col = torch.zeros(Sr, N, 1, dtype=a.dtype)
            col[0] = 1.0
            a = torch.cat([a, col.reshape(Sr * N, 1)], dim=1)
        gz = Z.grad.reshape(Sr * N, -1)
        out.append((a.numpy(), gz.numpy(), Sr * g))
    return out


@pytest.mark.parametrize("quantity", QUANTS)
def test_kfac_factors_definition(quantity):
    net = resnet_net(seed=6)
    x = _x(net, n=4, seed=6)
    S = _weights(net, quantity)
    Jshape = _shape(net, 4, quantity)[:-1]
    w = np.random.default_rng(8).standard_normal(Jshape)
    F = hq.pinn.kfac_factors(net, x, quantity, w, weights=S)
    ref = _streams_reference(net, x, quantity, w, S)
    assert len(F) == len(ref) == 4
    n = x.shape[0]
    for (A, B), (a, gz, R) in zip(F, ref):
        assert A.shape == (a.shape[1], a.shape[1]) and B.shape == (gz.shape[1], gz.shape[1])
        assert rel(A, a.T @ a / (n * R)) <= 1e-12
        assert rel(B, gz.T @ gz / n) <= 1e-12
    # default w: ones
    F1 = hq.pinn.kfac_factors(net, x, quantity, weights=S)
    F2 = hq.pinn.kfac_factors(net, x, quantity, np.ones(Jshape), weights=S)
    for (A1, B1), (A2, B2) in zip(F1, F2):
        assert rel(A1, A2) == 0.0 and rel(B1, B2) == 0.0


@pytest.mark.parametrize("netname", ["dense", "gated", "resnet"])
def test_kfac_exact_for_one_point_one_stream(netname):
    """One point and the value of one output (one stream): a block's Gramian
    J Jᵀ is exactly A ⊗ B (row-major vec of [weight; bias])."""
    net = NETS[netname]()
    x = _x(net, n=1)
    w = np.zeros((1, net.out_features))
    w[0, 0] = 1.0
    J = np.tensordot(w, hq.pinn.jacobian(net, x, "value"), axes=2)  # (P,)
    lay = hq.curvature.parameter_layout(net)
    F = hq.pinn.kfac_factors(net, x, "value", w)
    assert len(F) == len(list(net._leaves()))
    j = 0
    for (A, B), leaf in zip(F, net._leaves()):
        keys = lay.keys[j : j + len(list(leaf.named_parameters()))]
        j += len(keys)
        blocks = [J[lay.slice(k)].reshape(lay.shapes[lay.keys.index(k)]) for k in keys]
        Wb = np.concatenate([blocks[0]] + [b[None, :] for b in blocks[1:]], axis=0)
        v = Wb.reshape(-1)
        assert rel(np.kron(A, B), np.outer(v, v)) <= 1e-12


# --------------------------------------------------------------------------
# random architectures
# --------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def architectures(draw):
    d = draw(st.integers(1, 3))
    m = draw(st.integers(1, 2))
    acts = st.sampled_from(["tanh", "sin", "sigmoid", "identity", "quadratic"])
    width = draw(st.integers(1, 4))
    first = draw(st.sampled_from(["dense", "fourier", "periodic"]))
    layers = []
    if first == "fourier":
        layers.append(hq.FourierFeatures(d, 2, scale=0.3, trainable=True, seed=draw(st.integers(0, 99))))
    elif first == "periodic":
        layers.append(hq.PeriodicEmbedding(d, 2.0, axes=[d - 1], trainable=draw(st.booleans())))
    p = layers[0].out_features if layers else d
    layers.append(
        hq.SingleLayer(p, width, act=draw(acts), bias=draw(st.booleans()), seed=draw(st.integers(0, 99)))
    )
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["resnet", "dense", "layernorm"]))
        if kind == "layernorm":
            layers.append(hq.LayerNorm(width, eps=0.5, elementwise_affine=draw(st.booleans())))
        elif kind == "resnet":
            h = draw(st.floats(0.1, 1.0))
            layers.append(
                hq.ResnetLayer(
                    width, h=h, act=draw(acts), bias=draw(st.booleans()), seed=draw(st.integers(0, 99))
                )
            )
        else:
            w2 = draw(st.integers(1, 4))
            layers.append(
                hq.SingleLayer(
                    width, w2, act=draw(acts), bias=draw(st.booleans()), seed=draw(st.integers(0, 99))
                )
            )
            width = w2
    layers.append(
        hq.SingleLayer(width, m, act=draw(acts), bias=draw(st.booleans()), seed=draw(st.integers(0, 99)))
    )
    return hq.NN(*layers), draw(st.sampled_from(QUANTS)), draw(st.integers(1, 3))


@settings(max_examples=10, deadline=None)
@given(architectures())
def test_random_architectures(arch):
    net, quantity, n = arch
    x = _x(net, n=n, seed=n)
    S = _weights(net, quantity)
    J = hq.pinn.jacobian(net, x, quantity, weights=S)
    assert J.shape == _shape(net, n, quantity)
    _, Jr = reference(net, x, quantity, S)
    # entries that vanish identically (a linear network's Laplacian) compare absolutely
    assert np.max(np.abs(J - Jr)) <= RTOL * max(np.max(np.abs(Jr)), 1.0)


# --------------------------------------------------------------------------
# bad input, memory, the caller's arrays
# --------------------------------------------------------------------------


def test_bad_x():
    net = dense_net(d=3)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        hq.pinn.jacobian(net, np.ones(3), "laplacian")
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        hq.pinn.jacobian(net, np.ones((2, 4)), "laplacian")
    with pytest.raises(TypeError, match="real floating"):
        hq.pinn.jacobian(net, np.ones((2, 3), dtype=np.int64), "laplacian")
    with pytest.raises(ValueError, match="at least one point"):
        hq.pinn.jacobian(net, np.ones((0, 3)), "laplacian")


def test_bad_quantity():
    net = dense_net()
    x = _x(net, n=2)
    with pytest.raises(ValueError, match="quantity must be one of .*'hessian'"):
        hq.pinn.jacobian(net, x, "hessian")
    with pytest.raises(ValueError, match="quantity must be one of"):
        hq.pinn.quantities_and_jacobians(net, x, ("value", "divergence"))
    with pytest.raises(ValueError, match="at least one"):
        hq.pinn.quantities_and_jacobians(net, x, ())


def test_bad_weights():
    net = dense_net(d=3)
    x = _x(net, n=2)
    with pytest.raises(ValueError, match=r"needs weights = S of shape \(3, r\)"):
        hq.pinn.jacobian(net, x, "weighted_laplacian")
    with pytest.raises(ValueError, match=r"must have shape \(3, r\).*got \(2, 2\)"):
        hq.pinn.jacobian(net, x, "weighted_laplacian", weights=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"must have shape \(3, r\).*got \(3,\)"):
        hq.pinn.jacobian(net, x, "weighted_laplacian", weights=np.ones(3))
    with pytest.raises(ValueError, match="only used by 'weighted_laplacian'"):
        hq.pinn.jacobian(net, x, "laplacian", weights=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"only used by 'weighted_laplacian', not \['value', 'laplacian'\]"):
        hq.pinn.quantities_and_jacobians(net, x, ("value", "laplacian"), weights=np.ones((3, 2)))
    with pytest.raises(TypeError, match="weights must be an array of x's library"):
        hq.pinn.jacobian(net, x, "weighted_laplacian", weights=torch.ones(3, 2, dtype=torch.float64))


def test_bad_directions():
    net = dense_net(d=2, m=2)
    x = _x(net, n=3)
    P = hq.curvature.parameter_layout(net).size
    with pytest.raises(ValueError, match=rf"v must have shape \({P},\)"):
        hq.pinn.jvp(net, x, "laplacian", np.ones((P, 2)))
    with pytest.raises(ValueError, match=r"w must have the shape of the quantity 'gradient', \(3, 2, 2\)"):
        hq.pinn.vjp(net, x, "gradient", np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"w must have the shape of the quantity 'laplacian', \(3, 2\)"):
        hq.pinn.kfac_factors(net, x, "laplacian", np.ones((3,)))


class _Tanh2(hq.Tanh):
    """tanh that claims only σ, σ', σ'' (an activation without σ''')."""

    max_order = 2


def test_activation_without_third_derivative():
    net = hq.NN(hq.SingleLayer(2, 3, act=_Tanh2()), hq.SingleLayer(3, 1))
    x = _x(net, n=2)
    for q in ("laplacian", "hessian_diagonal", "weighted_laplacian"):
        with pytest.raises(ValueError, match=r"layer 0 \(SingleLayer\) uses .*max_order.*3 needed"):
            hq.pinn.jacobian(net, x, q, weights=_weights(net, q))
    with pytest.raises(ValueError, match="3 needed"):
        hq.pinn.quantities_and_jacobians(net, x, ("value", "laplacian"))
    # first-order quantities need σ'' only
    for q in ("value", "gradient"):
        _, Jr = reference(net, x, q)
        assert rel(hq.pinn.jacobian(net, x, q), Jr) <= RTOL


class _NoStreams(hq.SingleLayer):
    stream_forward = hq.layers.Layer.stream_forward


def test_unsupported_layer():
    net = hq.NN(_NoStreams(2, 3, act="tanh"), hq.SingleLayer(3, 1))
    x = _x(net, n=2)
    with pytest.raises(ValueError, match="_NoStreams is not supported for per-point Jacobians yet"):
        hq.pinn.jacobian(net, x, "value")


def test_memory_budget_refused_up_front():
    net = dense_net(d=3)
    x = _x(net, n=4)
    with pytest.raises(MemoryBudgetError, match=r"jvp / vjp"):
        hq.pinn.jacobian(net, x, "hessian_diagonal", max_memory=1000)
    with pytest.raises(MemoryBudgetError):
        hq.pinn.quantities_and_jacobians(net, x, ("value", "laplacian"), max_memory=1000)
    assert issubclass(MemoryBudgetError, ValueError)
    with pytest.raises(ValueError, match="max_memory"):
        hq.pinn.jacobian(net, x, "value", max_memory=-1)
    with pytest.raises(TypeError, match="max_memory"):
        hq.pinn.jacobian(net, x, "value", max_memory="1GB")
    assert hq.pinn.jacobian(net, x, "value", max_memory=2**30).shape[0] == 4


def test_caller_arrays_untouched():
    net = resnet_net()
    x = _x(net, n=3)
    S = _weights(net, "weighted_laplacian")
    x0, S0, theta0 = x.copy(), S.copy(), np.array(hq.curvature.flatten_parameters(net))
    for q in QUANTS:
        w = np.ones(_shape(net, 3, q)[:-1])
        w0 = w.copy()
        hq.pinn.jacobian(net, x, q, weights=S if q == "weighted_laplacian" else None)
        hq.pinn.vjp(net, x, q, w, weights=S if q == "weighted_laplacian" else None)
        np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(S, S0)
    np.testing.assert_array_equal(np.array(hq.curvature.flatten_parameters(net)), theta0)


def test_pinn_module_exports():
    # the function hq.pinn.jacobian shadows its module's attribute; the module is importable by name
    pj = importlib.import_module("hessquik_core.pinn.jacobian")
    assert hq.pinn.jacobian is pj.jacobian
    assert set(pj.QUANTITIES) == set(QUANTS)


def test_kfac_non_affine_layers():
    full = NETS["icnn"]()
    net = hq.NN(*list(full._leaves())[:3])
    x = _x(net, n=3)
    F = hq.pinn.kfac_factors(net, x, "laplacian")
    # the ICNN blocks' factors are those of M = [softplus(L); K] on the input [u, x]
    assert [A.shape for A, _ in F] == [(3, 3), (6, 6), (6, 6)]
    assert [B.shape for _, B in F] == [(3, 3), (4, 4), (2, 2)]
    for A, B in F:
        for M in (A, B):
            np.testing.assert_allclose(M, M.T, rtol=0, atol=1e-15)
            assert np.min(np.linalg.eigvalsh(M)) >= -1e-12 * np.max(np.abs(M))
    with pytest.raises(ValueError, match=r"layer 3 \(QuadraticICNNLayer\) has no Kronecker-factored"):
        hq.pinn.kfac_factors(full, x, "laplacian")


@pytest.mark.parametrize(
    "netname", ["icnn", "quadratic", "fourier", "periodic", "layernorm", "gated", "gated-residual"]
)
def test_libraries_other_layers(lib, netname):
    net = NETS[netname]()
    xn = _x(net, n=2, seed=4)
    x = lib.asarray(xn)
    kw = {} if lib.backend is None else {"backend": lib.backend}
    for q in ("laplacian", "hessian_diagonal"):
        J = hq.pinn.jacobian(net, x, q, **kw)
        lib.check(J, _shape(net, 2, q), x)
        assert rel(lib.to_numpy(J), hq.pinn.jacobian(net, xn, q)) <= 1e-13
    v = np.random.default_rng(1).standard_normal(J.shape[-1])
    Jv = hq.pinn.jvp(net, x, "laplacian", lib.asarray(v), **kw)
    lib.check(Jv, (2, net.out_features), x)


# --------------------------------------------------------------------------
# several quantities in one sweep (residuals combining them)
# --------------------------------------------------------------------------

COMBOS = [
    ("gradient", "hessian_diagonal"),  # heat: u_t - ¼ u_xx
    ("value", "laplacian"),  # Allen–Cahn, linearised
    ("value", "gradient", "hessian_diagonal"),  # Burgers, linearised
    ("gradient", "laplacian"),
    ("value", "gradient"),
    ("value", "weighted_laplacian"),
]


@pytest.mark.parametrize("names", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_combined_vjp_jvp(names):
    net = resnet_net(seed=9)
    x = _x(net, n=3, seed=9)
    S = _weights(net, "weighted_laplacian") if "weighted_laplacian" in names else None
    rng = np.random.default_rng(10)
    Js = {q: hq.pinn.jacobian(net, x, q, weights=S if q == "weighted_laplacian" else None) for q in names}
    ws = {q: rng.standard_normal(J.shape[:-1]) for q, J in Js.items()}
    expect = sum(np.tensordot(ws[q], Js[q], axes=ws[q].ndim) for q in names)
    got = hq.pinn.vjp(net, x, ws, weights=S)
    assert got.shape == expect.shape and rel(got, expect) <= 1e-12
    v = rng.standard_normal(expect.shape[0])
    Jv = hq.pinn.jvp(net, x, names, v, weights=S)
    assert set(Jv) == set(names)
    for q in names:
        assert Jv[q].shape == Js[q].shape[:-1]
        assert rel(Jv[q], Js[q] @ v) <= 1e-12
    F = hq.pinn.kfac_factors(net, x, ws, weights=S)
    assert len(F) == 4


def test_combined_kfac_definition():
    net = resnet_net(seed=11)
    x = _x(net, n=3, seed=11)
    rng = np.random.default_rng(12)
    ws = {q: rng.standard_normal((3, 2, 2)) for q in ("gradient", "hessian_diagonal")}
    F = hq.pinn.kfac_factors(net, x, ws)
    ref = _streams_reference(net, x, ws, None)
    for (A, B), (a, gz, R) in zip(F, ref):
        assert rel(A, a.T @ a / (3 * R)) <= 1e-12
        assert rel(B, gz.T @ gz / 3) <= 1e-12
    # a single quantity as a mapping is the same as by name
    for (A1, B1), (A2, B2) in zip(
        hq.pinn.kfac_factors(net, x, {"laplacian": None}), hq.pinn.kfac_factors(net, x, "laplacian")
    ):
        assert rel(A1, A2) == 0.0 and rel(B1, B2) == 0.0


def test_combined_bad_input():
    net = resnet_net()
    x = _x(net, n=2)
    S = _weights(net, "weighted_laplacian")
    with pytest.raises(ValueError, match="'weighted_laplacian' combines only with 'value'"):
        hq.pinn.vjp(net, x, {"weighted_laplacian": np.ones((2, 2)), "laplacian": np.ones((2, 2))}, weights=S)
    with pytest.raises(ValueError, match=r"w\['gradient'\] must have the shape of the quantity 'gradient'"):
        hq.pinn.vjp(net, x, {"gradient": np.ones((2, 2)), "laplacian": np.ones((2, 2))})
    with pytest.raises(ValueError, match="w must be None"):
        hq.pinn.vjp(net, x, {"laplacian": np.ones((2, 2))}, np.ones((2, 2)))
    with pytest.raises(ValueError, match="vjp needs w"):
        hq.pinn.vjp(net, x, "laplacian")
    with pytest.raises(ValueError, match="quantity must be one of"):
        hq.pinn.jvp(net, x, ("value", "hessian"), np.ones(hq.curvature.parameter_layout(net).size))
    with pytest.raises(ValueError, match="quantity must be one of"):
        hq.pinn.kfac_factors(net, x, 3)


def test_a_single_layer_and_a_torch_sequential():
    x = _x(hq.SingleLayer(2, 1), n=3)
    for layer in (hq.SingleLayer(2, 2, act="tanh", seed=0), hq.ResnetLayer(2, h=0.5, act="sin", seed=1)):
        for q in ("laplacian", "hessian_diagonal"):
            _, Jr = reference(hq.NN(layer), x, q)
            assert rel(hq.pinn.jacobian(layer, x, q), Jr) <= RTOL
    seq = torch.nn.Sequential(
        torch.nn.Linear(2, 4, dtype=torch.float64),
        torch.nn.Tanh(),
        torch.nn.Linear(4, 1, dtype=torch.float64),
    )
    J = hq.pinn.jacobian(seq, torch.tensor(x), "laplacian")  # converted by from_torch (weights copied)
    assert isinstance(J, torch.Tensor) and J.shape == (3, 1, 17)
    _, Jr = reference(hq.from_torch(seq), x, "laplacian")
    assert rel(J.numpy(), Jr) <= RTOL


def test_quantities_and_jacobians_libraries(lib):
    net = resnet_net(seed=3)
    xn = _x(net, n=3, seed=3)
    x = lib.asarray(xn)
    kw = {} if lib.backend is None else {"backend": lib.backend}
    for needs in (("gradient", "hessian_diagonal"), ("value", "laplacian")):
        Q, J = hq.pinn.quantities_and_jacobians(net, x, needs, **kw)
        Qn, Jn = hq.pinn.quantities_and_jacobians(net, xn, needs)
        lib.check(Q.value, (3, net.out_features), x)
        assert rel(lib.to_numpy(Q.value), Qn.value) <= 1e-14
        for q in needs:
            lib.check(Q[q], Qn[q].shape, x)
            lib.check(J[q], Jn[q].shape, x)
            assert rel(lib.to_numpy(J[q]), Jn[q]) <= 1e-13

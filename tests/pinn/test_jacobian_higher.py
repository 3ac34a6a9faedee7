"""Per-point parameter Jacobians of the bi-Laplacian (hessquik_core.pinn, quantity="biharmonic").

Reference: a functional torch model of the same network on the flat parameter vector
(ParameterLayout order), Δ²u by nested reverse-mode autograd (``hessian`` of the trace
of ``hessian``) and its Jacobian by ``vmap(jacrev(·, argnums=θ))`` — independent of
the stream recurrences and of their hand-written adjoint and R-pass.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.engine.plan import MemoryBudgetError

torch = pytest.importorskip("torch")
from test_jacobian import torch_model  # noqa: E402  (one functional reference for every layer type)
from torch.func import jacrev, vmap  # noqa: E402

RTOL = 1e-11


def reference(net, x):
    """``(Δ²u (n, m), J (n, m, P))`` by nested torch autograd, float64, as NumPy."""
    f, _ = torch_model(net)
    th = torch.tensor(np.asarray(hq.curvature.flatten_parameters(net), dtype=np.float64))

    # reverse over reverse: torch's forward AD would load its jit-scripted decompositions
    def lap(t, xi):
        return torch.diagonal(jacrev(jacrev(f, argnums=1), argnums=1)(t, xi), dim1=-2, dim2=-1).sum(-1)

    def bih(t, xi):
        return torch.diagonal(jacrev(jacrev(lap, argnums=1), argnums=1)(t, xi), dim1=-2, dim2=-1).sum(-1)

    X = torch.tensor(np.asarray(x, dtype=np.float64))
    Q = vmap(bih, in_dims=(None, 0))(th, X)
    J = vmap(jacrev(bih, argnums=0), in_dims=(None, 0))(th, X)
    return Q.numpy(), J.numpy()


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


NETS = {
    "dense-tanh": lambda: hq.NN(
        hq.SingleLayer(2, 5, act="tanh", seed=1),
        hq.SingleLayer(5, 4, act="tanh", seed=2),
        hq.SingleLayer(4, 1, seed=3),
    ),
    "dense-sin-m2": lambda: hq.NN(
        hq.SingleLayer(3, 4, act="sin", seed=4), hq.SingleLayer(4, 2, act="sin", seed=5)
    ),
    "resnet-mixed": lambda: hq.NN(
        hq.SingleLayer(2, 4, act="sin", seed=6),
        hq.ResnetLayer(4, h=0.7, act="tanh", seed=7),
        hq.ResnetLayer(4, h=0.3, act="sigmoid", bias=False, seed=8),
        hq.SingleLayer(4, 2, act="tanh", bias=False, seed=9),
    ),
    "d1-antitanh": lambda: hq.NN(
        hq.SingleLayer(1, 4, act="antitanh", seed=10),
        hq.ResnetLayer(4, h=0.5, act="quadratic", seed=11),
        hq.SingleLayer(4, 1, act="identity", seed=12),
    ),
    "fully-connected": lambda: hq.FullyConnectedNN([2, 6, 6, 1], act="tanh", seed=13),
}


def _x(net, n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, net.in_features))


# --------------------------------------------------------------------------
# against nested autograd
# --------------------------------------------------------------------------


@pytest.mark.parametrize("netname", list(NETS))
def test_jacobian_against_torch_func(netname):
    net = NETS[netname]()
    x = _x(net)
    Q, Jref = reference(net, x)
    J = hq.pinn.jacobian(net, x, "biharmonic")
    n, m, P = x.shape[0], net.out_features, hq.curvature.parameter_layout(net).size
    assert isinstance(J, np.ndarray) and J.dtype == np.float64 and J.shape == (n, m, P)
    assert rel(J, Jref) <= RTOL
    quants, Js = hq.pinn.quantities_and_jacobians(net, x, ("biharmonic",))
    assert set(Js) == {"biharmonic"}
    assert rel(quants.biharmonic, Q) <= RTOL and rel(quants["biharmonic"], Q) <= RTOL
    full = hq.biharmonic(net, x, full=True)
    assert rel(quants.value, full.value) <= 1e-14 and rel(quants.biharmonic, full.biharmonic) <= 1e-13
    assert rel(Js["biharmonic"], J) <= 1e-14
    v = np.random.default_rng(1).standard_normal(P)
    w = np.random.default_rng(2).standard_normal((n, m))
    Jv = hq.pinn.jvp(net, x, "biharmonic", v)
    assert Jv.shape == (n, m) and rel(Jv, Jref @ v) <= RTOL
    JTw = hq.pinn.vjp(net, x, "biharmonic", w)
    assert JTw.shape == (P,) and rel(JTw, np.einsum("nm,nmp->p", w, Jref)) <= RTOL


def test_jacobian_of_the_residual_scales_with_the_weights():
    """Δ²u is 4-homogeneous in a pure scaling of the input layer's weights when biases are
    absent: a check of the Jacobian's contraction with θ independent of torch."""
    net = hq.NN(
        hq.SingleLayer(2, 4, act="quadratic", bias=False, seed=1), hq.SingleLayer(4, 1, bias=False, seed=2)
    )
    x = _x(net)
    J = hq.pinn.jacobian(net, x, "biharmonic")
    theta = np.asarray(hq.curvature.flatten_parameters(net))
    q = np.asarray(hq.biharmonic(net, x))
    # u = Σ_k c_k (x·K_k)²/2: Δ²u = 0, and every parameter derivative of it vanishes too
    assert np.max(np.abs(q)) <= 1e-12 and np.max(np.abs(J)) <= 1e-12
    net2 = hq.NN(
        hq.SingleLayer(2, 4, act="tanh", bias=False, seed=1), hq.SingleLayer(4, 1, bias=False, seed=2)
    )
    J2 = hq.pinn.jacobian(net2, x, "biharmonic")
    # Euler: u(x; K1, c) is linear in c, so Σ_c c ∂_c Δ²u = Δ²u
    lay = hq.curvature.parameter_layout(net2)
    o, s = lay.offsets[-1], lay.sizes[-1]
    th = np.asarray(hq.curvature.flatten_parameters(net2))
    assert rel(J2[..., o : o + s] @ th[o : o + s], np.asarray(hq.biharmonic(net2, x))) <= 1e-13
    assert theta.shape[0] == J.shape[-1]


# --------------------------------------------------------------------------
# several quantities, one sweep
# --------------------------------------------------------------------------


def test_quantities_and_jacobians_mixed():
    net = NETS["resnet-mixed"]()
    x = _x(net, n=4, seed=3)
    needs = ("value", "laplacian", "biharmonic", "gradient")
    Q, J = hq.pinn.quantities_and_jacobians(net, x, needs)
    assert list(J) == list(needs)
    for q in needs:
        assert rel(J[q], hq.pinn.jacobian(net, x, q)) <= 1e-14
    full = hq.biharmonic(net, x, full=True)
    assert rel(Q.biharmonic, full.biharmonic) <= 1e-13 and rel(Q.laplacian, full.laplacian) <= 1e-13
    assert Q.hessian_diagonal is None and Q.weighted_laplacian is None


def test_combined_jvp_and_vjp():
    """Residuals such as Δ²u + u − u³ or Δ²u − Δu: one sweep of the bi-Laplacian's streams."""
    net = NETS["dense-sin-m2"]()
    x = _x(net, n=3, seed=4)
    n, d, m = x.shape[0], net.in_features, net.out_features
    names = ("biharmonic", "value", "gradient", "laplacian", "hessian_diagonal")
    Js = {q: hq.pinn.jacobian(net, x, q) for q in names}
    rng = np.random.default_rng(5)
    v = rng.standard_normal(Js["value"].shape[-1])
    out = hq.pinn.jvp(net, x, names, v)
    assert set(out) == set(names)
    for q in names:
        assert out[q].shape == Js[q].shape[:-1]
        assert rel(out[q], Js[q] @ v) <= 1e-12
    ws = {q: rng.standard_normal(Js[q].shape[:-1]) for q in names}
    got = hq.pinn.vjp(net, x, ws)
    want = sum(np.tensordot(ws[q], Js[q], axes=ws[q].ndim) for q in names)
    assert rel(got, want) <= 1e-12
    assert (n, d, m) == Js["gradient"].shape[:-1]


# --------------------------------------------------------------------------
# libraries, dtypes
# --------------------------------------------------------------------------


def test_libraries(lib):
    net = NETS["resnet-mixed"]()
    xn = _x(net, n=3, seed=2)
    x = lib.asarray(xn)
    kw = {} if lib.backend is None else {"backend": lib.backend}
    J = hq.pinn.jacobian(net, x, "biharmonic", **kw)
    Jn = hq.pinn.jacobian(net, xn, "biharmonic")
    lib.check(J, Jn.shape, x)
    assert rel(lib.to_numpy(J), Jn) <= 1e-13
    P = Jn.shape[-1]
    v = np.random.default_rng(1).standard_normal(P)
    w = np.random.default_rng(2).standard_normal(Jn.shape[:-1])
    Jv = hq.pinn.jvp(net, x, "biharmonic", lib.asarray(v), **kw)
    lib.check(Jv, Jn.shape[:-1], x)
    assert rel(lib.to_numpy(Jv), Jn @ v) <= 1e-12
    JTw = hq.pinn.vjp(net, x, "biharmonic", lib.asarray(w), **kw)
    lib.check(JTw, (P,), x)
    assert rel(lib.to_numpy(JTw), np.tensordot(w, Jn, axes=2)) <= 1e-12
    Q, Js = hq.pinn.quantities_and_jacobians(net, x, ("biharmonic",), **kw)
    lib.check(Q.biharmonic, Jn.shape[:-1], x)
    lib.check(Js["biharmonic"], Jn.shape, x)


def test_torch_input_and_requires_grad():
    net = NETS["dense-tanh"]()
    xn = _x(net, n=2)
    x = torch.tensor(xn, requires_grad=True)
    J = hq.pinn.jacobian(net, x, "biharmonic")
    assert isinstance(J, torch.Tensor) and J.dtype == torch.float64 and not J.requires_grad
    assert rel(J.numpy(), hq.pinn.jacobian(net, xn, "biharmonic")) <= 1e-13
    Jc = hq.pinn.jacobian(net, x.detach(), "biharmonic", backend="numpy")
    assert isinstance(Jc, torch.Tensor) and rel(Jc.numpy(), J.numpy()) <= 1e-14


@pytest.mark.parametrize("netname", ["dense-tanh", "resnet-mixed", "d1-antitanh"])
def test_float32_against_float64(netname):
    net = NETS[netname]()
    x = _x(net, n=4)
    J64 = hq.pinn.jacobian(net, x, "biharmonic")
    J32 = hq.pinn.jacobian(net, x.astype(np.float32), "biharmonic")
    assert J32.dtype == np.float32 and J32.shape == J64.shape
    assert rel(J32, J64) <= 1e-5


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_refuses_unsupported_layers_and_activations():
    x = np.zeros((2, 2))
    icnn = hq.NN(hq.ICNNLayer(2, None, 3, act="tanh", seed=1), hq.SingleLayer(5, 1, seed=2))
    with pytest.raises(ValueError, match=r"layer 0 \(ICNNLayer\) is not supported"):
        hq.pinn.jacobian(icnn, x, "biharmonic")
    soft = hq.NN(hq.SingleLayer(2, 3, act="tanh", seed=1), hq.SingleLayer(3, 1, act="softplus", seed=2))
    for call in (
        lambda: hq.pinn.jacobian(soft, x, "biharmonic"),
        lambda: hq.pinn.jvp(soft, x, "biharmonic", np.zeros(13)),
        lambda: hq.pinn.vjp(soft, x, "biharmonic", np.zeros((2, 1))),
        lambda: hq.pinn.quantities_and_jacobians(soft, x, ("value", "biharmonic")),
    ):
        with pytest.raises(ValueError, match=r"layer 1 \(SingleLayer\).*fifth derivative"):
            call()


def test_bad_input():
    net = NETS["dense-tanh"]()
    x = _x(net, n=2)
    P = hq.curvature.parameter_layout(net).size
    with pytest.raises(ValueError, match="not used by 'biharmonic'"):
        hq.pinn.jacobian(net, x, "biharmonic", weights=np.eye(2))
    with pytest.raises(ValueError, match="combines in one sweep only with"):
        hq.pinn.jvp(net, x, ("biharmonic", "weighted_laplacian"), np.zeros(P), weights=np.eye(2))
    with pytest.raises(ValueError, match=rf"v must have shape \({P},\)"):
        hq.pinn.jvp(net, x, "biharmonic", np.zeros(P + 1))
    with pytest.raises(ValueError, match=r"must have the shape of the quantity 'biharmonic', \(2, 1\)"):
        hq.pinn.vjp(net, x, "biharmonic", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no Kronecker factors"):
        hq.pinn.kfac_factors(net, x, "biharmonic")
    with pytest.raises(ValueError, match="must be one of .*biharmonic.*bilaplacian"):
        hq.pinn.jacobian(net, x, "bilaplacian")
    with pytest.raises(MemoryBudgetError):
        hq.pinn.jacobian(net, x, "biharmonic", max_memory=1000)
    with pytest.raises(TypeError, match="x's library"):
        hq.pinn.vjp(net, x, "biharmonic", torch.zeros(2, 1))


def test_caller_arrays_untouched():
    net = NETS["resnet-mixed"]()
    x = _x(net, n=3)
    P = hq.curvature.parameter_layout(net).size
    v = np.random.default_rng(1).standard_normal(P)
    w = np.random.default_rng(2).standard_normal((3, 2))
    copies = (x.copy(), v.copy(), w.copy(), np.asarray(hq.curvature.flatten_parameters(net)).copy())
    hq.pinn.jacobian(net, x, "biharmonic")
    hq.pinn.jvp(net, x, "biharmonic", v)
    hq.pinn.vjp(net, x, "biharmonic", w)
    for a, b in zip((x, v, w, np.asarray(hq.curvature.flatten_parameters(net))), copies):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------
# directional derivatives and pure partials of order 1-4
# --------------------------------------------------------------------------


def reference_directional(net, x, V, k):
    """``(∂ᵏu[v,…,v] (n, K, m), J (n, K, m, P))``: k nested jacrev of ``s -> u(x + s v)``."""
    f, _ = torch_model(net)
    th = torch.tensor(np.asarray(hq.curvature.flatten_parameters(net), dtype=np.float64))
    Vt = torch.tensor(np.asarray(V, dtype=np.float64))

    def dk(t, xi):
        outs = []
        for c in range(Vt.shape[1]):
            v = Vt[:, c]

            def g(s, v=v):
                return f(t, xi + s * v)

            for _ in range(k):
                g = jacrev(g)
            outs.append(g(torch.tensor(0.0, dtype=torch.float64)))
        return torch.stack(outs)

    X = torch.tensor(np.asarray(x, dtype=np.float64))
    Q = vmap(dk, in_dims=(None, 0))(th, X)
    J = vmap(jacrev(dk, argnums=0), in_dims=(None, 0))(th, X)
    return Q.numpy(), J.numpy()


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("netname", ["dense-sin-m2", "resnet-mixed", "d1-antitanh"])
def test_directional_against_torch_func(netname, order):
    net = NETS[netname]()
    x = _x(net, seed=order)
    V = np.random.default_rng(order + 10).standard_normal((net.in_features, 2))
    Q, Jref = reference_directional(net, x, V, order)
    J = hq.pinn.jacobian(net, x, "directional", directions=V, order=order)
    n, m, P = x.shape[0], net.out_features, Jref.shape[-1]
    assert isinstance(J, np.ndarray) and J.dtype == np.float64 and J.shape == (n, 2, m, P)
    assert rel(J, Jref) <= RTOL
    assert rel(hq.taylor_derivatives(net, x, V, order)[order - 1], Q) <= 1e-12
    v = np.random.default_rng(1).standard_normal(P)
    w = np.random.default_rng(2).standard_normal((n, 2, m))
    Jv = hq.pinn.jvp(net, x, "directional", v, directions=V, order=order)
    assert Jv.shape == (n, 2, m) and rel(Jv, Jref @ v) <= RTOL
    JTw = hq.pinn.vjp(net, x, "directional", w, directions=V, order=order)
    assert JTw.shape == (P,) and rel(JTw, np.tensordot(w, Jref, axes=3)) <= RTOL


@pytest.mark.parametrize("order", [3, 4])
def test_pure_partial_kdv_and_ks(order):
    """u_xxx (KdV) and u_xxxx (Kuramoto–Sivashinsky) in the x of (t, x)."""
    net = hq.NN(
        hq.SingleLayer(2, 5, act="tanh", seed=1),
        hq.ResnetLayer(5, h=0.5, act="sin", seed=2),
        hq.SingleLayer(5, 1, seed=3),
    )
    x = _x(net, n=4, seed=5)
    _, Jref = reference_directional(net, x, np.array([[0.0], [1.0]]), order)
    J = hq.pinn.jacobian(net, x, "pure_partial", coords=[1], order=order)
    assert J.shape == (4, 1, 1, Jref.shape[-1]) and rel(J, Jref) <= RTOL
    both = hq.pinn.jacobian(net, x, "pure_partial", coords=(1, 0), order=order)
    assert rel(both[:, 0], J[:, 0]) <= 1e-14
    assert (
        rel(
            both[:, 1],
            hq.pinn.jacobian(net, x, "directional", directions=np.eye(2)[:, :1], order=order)[:, 0],
        )
        <= 1e-14
    )
    assert rel(hq.pinn.jacobian(net, x, "pure_partial", coords=1, order=order), J) <= 1e-14


def test_directional_libraries(lib):
    net = NETS["resnet-mixed"]()
    xn = _x(net, n=3, seed=2)
    Vn = np.random.default_rng(3).standard_normal((2, 2))
    x = lib.asarray(xn)
    kw = {} if lib.backend is None else {"backend": lib.backend}
    Jn = hq.pinn.jacobian(net, xn, "directional", directions=Vn, order=4)
    J = hq.pinn.jacobian(net, x, "directional", directions=lib.asarray(Vn), order=4, **kw)
    lib.check(J, Jn.shape, x)
    assert rel(lib.to_numpy(J), Jn) <= 1e-13
    Jp = hq.pinn.jacobian(net, x, "pure_partial", coords=[0], order=3, **kw)
    lib.check(Jp, (3, 1, 2, Jn.shape[-1]), x)
    P = Jn.shape[-1]
    v = np.random.default_rng(1).standard_normal(P)
    w = np.random.default_rng(2).standard_normal(Jn.shape[:-1])
    Jv = hq.pinn.jvp(net, x, "directional", lib.asarray(v), directions=lib.asarray(Vn), order=4, **kw)
    lib.check(Jv, Jn.shape[:-1], x)
    assert rel(lib.to_numpy(Jv), Jn @ v) <= 1e-12
    JTw = hq.pinn.vjp(net, x, "directional", lib.asarray(w), directions=lib.asarray(Vn), order=4, **kw)
    lib.check(JTw, (P,), x)
    assert rel(lib.to_numpy(JTw), np.tensordot(w, Jn, axes=3)) <= 1e-12


def test_directional_float32():
    net = NETS["resnet-mixed"]()
    x = _x(net, n=4)
    J64 = hq.pinn.jacobian(net, x, "pure_partial", coords=[0, 1], order=4)
    J32 = hq.pinn.jacobian(net, x.astype(np.float32), "pure_partial", coords=[0, 1], order=4)
    assert J32.dtype == np.float32 and rel(J32, J64) <= 1e-5


def test_directional_orders_and_activations():
    """Order k needs σ^(k+1): an activation with σ, σ′, σ″ only (max_order 2) serves order 1
    and is refused from order 2 on; softplus (max_order 4, no σ⁽⁵⁾ here) is refused at order 4."""
    two = hq.activations.custom(
        np.tanh, lambda z: 1 - np.tanh(z) ** 2, lambda z: -2 * np.tanh(z) * (1 - np.tanh(z) ** 2)
    )
    assert two.max_order == 2
    low = hq.NN(hq.SingleLayer(2, 3, act=two, seed=1), hq.SingleLayer(3, 1, seed=2))
    x = _x(low, n=2)
    assert hq.pinn.jacobian(low, x, "pure_partial", coords=[0], order=1).shape[:3] == (2, 1, 1)
    with pytest.raises(ValueError, match=r"order 2: layer 0 \(SingleLayer\) uses .*order 3"):
        hq.pinn.jacobian(low, x, "pure_partial", coords=[0], order=2)
    net = hq.NN(hq.SingleLayer(2, 3, act="softplus", seed=1), hq.SingleLayer(3, 1, seed=2))
    with pytest.raises(ValueError, match="fifth derivative"):
        hq.pinn.jacobian(net, x, "directional", directions=np.ones((2, 1)), order=4)
    icnn = hq.NN(hq.ICNNLayer(2, None, 3, act="tanh", seed=1), hq.SingleLayer(5, 1, seed=2))
    with pytest.raises(ValueError, match=r"ICNNLayer\) is not supported"):
        hq.pinn.jvp(icnn, x, "pure_partial", np.zeros(30), coords=[0], order=3)


def test_directional_bad_input():
    net = NETS["dense-tanh"]()
    x = _x(net, n=2)
    P = hq.curvature.parameter_layout(net).size
    V = np.ones((2, 1))
    cases = [
        (dict(quantity="directional", directions=V, order=5), "order = 1, 2, 3 or 4, got 5"),
        (dict(quantity="directional", directions=V), "order = 1, 2, 3 or 4, got None"),
        (dict(quantity="directional", order=3), r"needs directions = V of shape \(2, K\)"),
        (dict(quantity="directional", directions=np.ones((3, 1)), order=3), r"shape \(2, K\).*got \(3, 1\)"),
        (dict(quantity="directional", directions=V, coords=[0], order=3), "not coords="),
        (dict(quantity="pure_partial", order=3), "needs coords"),
        (dict(quantity="pure_partial", coords=[2], order=3), r"integers in 0\.\.1, got \[2\]"),
        (dict(quantity="pure_partial", coords=[], order=3), "non-empty"),
        (dict(quantity="pure_partial", directions=V, coords=[0], order=3), "not directions="),
        (dict(quantity="pure_partial", coords=[0], order=3, weights=np.eye(2)), "not used by 'pure_partial'"),
        (dict(quantity="laplacian", order=3), "only used by"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            hq.pinn.jacobian(net, x, **kw)
    with pytest.raises(TypeError, match="x's library"):
        hq.pinn.jacobian(net, x, "directional", directions=torch.ones(2, 1), order=3)
    with pytest.raises(
        ValueError, match=r"w must have the shape of the quantity 'pure_partial', \(2, 1, 1\)"
    ):
        hq.pinn.vjp(net, x, "pure_partial", np.zeros((2, 1)), coords=[0], order=3)
    with pytest.raises(ValueError, match="vjp needs w"):
        hq.pinn.vjp(net, x, "pure_partial", coords=[0], order=3)
    with pytest.raises(ValueError, match=r"v must have shape"):
        hq.pinn.jvp(net, x, "pure_partial", np.zeros(P - 1), coords=[0], order=3)
    with pytest.raises(MemoryBudgetError):
        hq.pinn.jacobian(net, x, "pure_partial", coords=[0], order=3, max_memory=1000)
    with pytest.raises(ValueError, match="only used by"):
        hq.pinn.vjp(net, x, "biharmonic", np.zeros((2, 1)), order=3)


# --------------------------------------------------------------------------
# random dense / residual architectures (hypothesis)
# --------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402


@hst.composite
def architectures(draw):
    d = draw(hst.integers(1, 3))
    m = draw(hst.integers(1, 2))
    acts = hst.sampled_from(["tanh", "sin", "sigmoid", "antitanh", "identity", "quadratic"])
    width = draw(hst.integers(1, 4))
    seeds = hst.integers(0, 99)
    layers = [hq.SingleLayer(d, width, act=draw(acts), bias=draw(hst.booleans()), seed=draw(seeds))]
    for _ in range(draw(hst.integers(0, 2))):
        if draw(hst.booleans()):
            h = draw(hst.floats(0.1, 1.0))
            layers.append(
                hq.ResnetLayer(width, h=h, act=draw(acts), bias=draw(hst.booleans()), seed=draw(seeds))
            )
        else:
            w2 = draw(hst.integers(1, 4))
            layers.append(
                hq.SingleLayer(width, w2, act=draw(acts), bias=draw(hst.booleans()), seed=draw(seeds))
            )
            width = w2
    layers.append(hq.SingleLayer(width, m, act=draw(acts), bias=draw(hst.booleans()), seed=draw(seeds)))
    quantity = draw(hst.sampled_from(["biharmonic", "directional"]))
    return hq.NN(*layers), quantity, draw(hst.integers(1, 4)), draw(hst.integers(1, 3))


@settings(max_examples=8, deadline=None)
@given(architectures())
def test_random_architectures(arch):
    net, quantity, order, n = arch
    x = _x(net, n=n, seed=n)
    if quantity == "biharmonic":
        J = hq.pinn.jacobian(net, x, "biharmonic")
        _, Jr = reference(net, x)
    else:
        V = np.random.default_rng(order).standard_normal((net.in_features, 2))
        J = hq.pinn.jacobian(net, x, "directional", directions=V, order=order)
        _, Jr = reference_directional(net, x, V, order)
    assert J.shape == Jr.shape
    # entries that vanish identically (a network of identity/quadratic layers) compare absolutely
    assert np.max(np.abs(J - Jr)) <= RTOL * max(np.max(np.abs(Jr)), 1.0)


# --------------------------------------------------------------------------
# end to end: Gauss–Newton on a fourth-order problem
# --------------------------------------------------------------------------


def test_gauss_newton_reduces_a_biharmonic_loss():
    """Levenberg–Marquardt steps (JᵀJ + λI)δ = −Jᵀr on Δ²u = 4 sin x cos y in the unit square
    with u = sin x cos y on the boundary, J from the per-point bi-Laplacian and value Jacobians
    (hq.pinn.Problem does not take "biharmonic" yet; this is the solver it would run).
    Measured: 1.53 -> 0.036 in 8 steps."""
    net = hq.FullyConnectedNN([2, 8, 8, 1], act="tanh", seed=0)
    rng = np.random.default_rng(0)
    xi = rng.uniform(0, 1, (40, 2))
    t = rng.uniform(0, 1, 20)
    z, o = np.zeros(5), np.ones(5)
    xb = np.concatenate(
        [
            np.stack([t[:5], z], 1),
            np.stack([t[5:10], o], 1),
            np.stack([z, t[10:15]], 1),
            np.stack([o, t[15:]], 1),
        ]
    )

    def ustar(x):
        return np.sin(x[:, 0]) * np.cos(x[:, 1])

    f = 4.0 * ustar(xi)
    lay = hq.curvature.parameter_layout(net)

    def linearise():
        Q, J = hq.pinn.quantities_and_jacobians(net, xi, ("biharmonic",))
        Qb, Jb = hq.pinn.quantities_and_jacobians(net, xb, ("value",))
        r = np.concatenate(
            [(Q.biharmonic[:, 0] - f) / np.sqrt(40), (Qb.value[:, 0] - ustar(xb)) / np.sqrt(20)]
        )
        return r, np.concatenate([J["biharmonic"][:, 0] / np.sqrt(40), Jb["value"][:, 0] / np.sqrt(20)])

    losses, lam = [], 1e-3
    for _ in range(8):
        r, J = linearise()
        losses.append(0.5 * r @ r)
        theta = np.asarray(hq.curvature.flatten_parameters(net))
        while lam < 1e8:
            step = np.linalg.solve(J.T @ J + lam * np.eye(J.shape[1]), -J.T @ r)
            net.load_state_dict(lay.unflatten(theta + step))
            r2 = linearise()[0]
            if 0.5 * r2 @ r2 < losses[-1]:
                lam = max(lam / 3, 1e-9)
                break
            lam *= 4
    r, _ = linearise()
    losses.append(0.5 * r @ r)
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < losses[0] / 20


def test_quantities_and_jacobians_directional():
    net = NETS["resnet-mixed"]()
    x = _x(net, n=3, seed=6)
    V = np.random.default_rng(7).standard_normal((2, 3))
    Q, J = hq.pinn.quantities_and_jacobians(net, x, ("directional",), directions=V, order=3)
    assert list(J) == ["directional"] and Q.directional.shape == (3, 3, 2)
    assert rel(J["directional"], hq.pinn.jacobian(net, x, "directional", directions=V, order=3)) <= 1e-14
    assert rel(Q.directional, hq.taylor_derivatives(net, x, V, 3)[2]) <= 1e-12
    assert rel(Q.value, hq.biharmonic(net, x, full=True).value) <= 1e-14
    needs = ("value", "pure_partial", "biharmonic", "laplacian")
    Q, J = hq.pinn.quantities_and_jacobians(net, x, needs, coords=[1], order=4)
    assert list(J) == list(needs) and Q["pure_partial"].shape == (3, 1, 2)
    assert rel(J["pure_partial"], hq.pinn.jacobian(net, x, "pure_partial", coords=[1], order=4)) <= 1e-14
    assert rel(J["biharmonic"], hq.pinn.jacobian(net, x, "biharmonic")) <= 1e-14
    assert rel(Q.pure_partial, hq.pure_partials(net, x, [1], 4)) <= 1e-12
    with pytest.raises(ValueError, match="one of .* per call"):
        hq.pinn.quantities_and_jacobians(net, x, ("directional", "pure_partial"), coords=[0], order=3)
    with pytest.raises(ValueError, match="only used by"):
        hq.pinn.quantities_and_jacobians(net, x, ("value",), order=3)

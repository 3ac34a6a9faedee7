"""Bi-Laplacian, third/fourth directional derivatives and pure partials
(:mod:`hessquik_core.higher`) against torch.func nested AD, Taylor rates,
every array library, autograd, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from _higher_reference import f1_of, nested_biharmonic, nested_directional
from _reference import ACTIVATIONS, make_network, rel_err, torch_jit_script_quiet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hessquik_core as hq
from hessquik_core.activations import Activation, get_activation

torch = pytest.importorskip("torch")

RTOL = 1e-11
#: built-in activations that supply σ⁗ today (grows as activations gain orders)
ACTS4 = tuple(a for a in (*ACTIVATIONS, "gelu", "mish", "gaussian") if get_activation(a).max_order >= 4)
SETTINGS = settings(
    max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------
# random networks of every supported layer type
# --------------------------------------------------------------------------

acts = st.sampled_from(ACTS4)


@st.composite
def networks(draw):
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.sampled_from(["dense", "icnn"])) == "dense":
        blocks, width = [], d
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["single", "resnet", "nested"]))
            if kind == "single":
                w = draw(st.integers(1, 4))
                blocks.append(hq.SingleLayer(width, w, act=draw(acts), bias=draw(st.booleans()), seed=rng))
                width = w
            elif kind == "resnet":
                h = draw(st.floats(0.05, 1.0))
                blocks.append(hq.ResnetLayer(width, h=h, act=draw(acts), bias=draw(st.booleans()), seed=rng))
            else:
                w = draw(st.integers(1, 4))
                blocks.append(
                    hq.NN(
                        hq.SingleLayer(width, w, act=draw(acts), seed=rng),
                        hq.ResnetLayer(w, h=0.5, act=draw(acts), seed=rng),
                    )
                )
                width = w
        if draw(st.booleans()):
            blocks.append(hq.QuadraticLayer(width, draw(st.integers(1, 3)), seed=rng))
    else:
        blocks, prev = [], None
        for _ in range(draw(st.integers(1, 3))):
            w = draw(st.integers(1, 4))
            blocks.append(hq.ICNNLayer(d, prev, w, act=draw(acts), bias=draw(st.booleans()), seed=rng))
            prev = w
        if draw(st.booleans()):
            blocks.append(hq.QuadraticICNNLayer(d, prev, draw(st.integers(1, 3)), seed=rng))
    net = hq.NN(*blocks)
    x = rng.normal(size=(draw(st.integers(1, 3)), d))
    return net, x


@SETTINGS
@given(networks())
def test_biharmonic_matches_nested_ad(case):
    net, x = case
    B = hq.biharmonic(net, x)
    assert isinstance(B, np.ndarray) and B.shape == (x.shape[0], net.out_features) and B.dtype == np.float64
    ref = nested_biharmonic(f1_of(net), x).numpy()
    assert rel_err(B, ref) <= RTOL


@SETTINGS
@given(networks(), st.integers(1, 3))
def test_directional_derivatives_match_nested_ad(case, k):
    net, x = case
    V = np.random.default_rng(k).standard_normal((net.in_features, k))
    D = hq.taylor_derivatives(net, x, V, 4)
    assert len(D) == 4
    for j, Dj in enumerate(D, start=1):
        assert Dj.shape == (x.shape[0], k, net.out_features)
        assert rel_err(Dj, nested_directional(f1_of(net), x, V, j).numpy()) <= RTOL, j


def test_full_result_agrees_with_the_network_call():
    net = make_network("resnet", 3, "tanh", 4)
    x = np.random.default_rng(0).standard_normal((6, 3))
    r = hq.biharmonic(net, x, full=True)
    ref = net(x, gradient=True, laplacian=True)
    assert rel_err(r.value, ref.value) <= 1e-14
    assert rel_err(r.gradient, ref.gradient) <= 1e-14
    assert rel_err(r.laplacian, ref.laplacian) <= 1e-13
    assert rel_err(r.biharmonic, hq.biharmonic(net, x)) == 0.0
    # ∇Δu by nested AD: the gradient of the Laplacian
    from torch.func import hessian, jacrev, vmap

    f1 = f1_of(net)
    lap = lambda xi: torch.diagonal(hessian(f1)(xi), dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    with torch_jit_script_quiet():
        gL = vmap(jacrev(lap))(torch.as_tensor(x)).permute(0, 2, 1).numpy()
    assert rel_err(r.laplacian_gradient, gL) <= RTOL


def test_kdv_and_ks_pure_partials():
    """u_xxx (KdV) and u_xxxx (Kuramoto–Sivashinsky) in the x of inputs (t, x)."""
    net = hq.NN(
        hq.SingleLayer(2, 8, act="tanh", seed=0),
        hq.ResnetLayer(8, h=0.5, act="sin", seed=1),
        hq.SingleLayer(8, 1, seed=2),
    )
    x = np.random.default_rng(3).standard_normal((7, 2))
    e_x = np.array([[0.0], [1.0]])
    for order in (3, 4):
        P = hq.pure_partials(net, x, [1], order)
        assert P.shape == (7, 1, 1)
        ref = nested_directional(f1_of(net), x, e_x, order).numpy()
        assert rel_err(P, ref) <= RTOL
    both = hq.pure_partials(net, x, [1, 0, 1], 3)
    assert rel_err(both[:, 0], both[:, 2]) <= 1e-15
    assert (
        rel_err(both[:, 1:2], nested_directional(f1_of(net), x, np.array([[1.0], [0.0]]), 3).numpy()) <= RTOL
    )


# --------------------------------------------------------------------------
# Taylor rates: finite differences of lower orders converge at order 2
# --------------------------------------------------------------------------


def _rates(errors):
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


def test_biharmonic_taylor_rate():
    """Σ_j central second differences of Δu along e_j → Δ²u with error O(h²)."""
    net = make_network("resnet", 2, "tanh", 5)
    x = np.random.default_rng(1).standard_normal((1, 2))
    exact = hq.biharmonic(net, x)[0, 0]

    def lap(y):
        return net(y, laplacian=True).laplacian[0, 0]

    errs = []
    for h in 2.0 ** -np.arange(2, 7):
        fd = sum((lap(x + h * e) - 2.0 * lap(x) + lap(x - h * e)) / h**2 for e in np.eye(2)[:, None, :])
        errs.append(abs(fd - exact))
    rates = _rates(errs)
    assert np.all(np.abs(rates[-3:] - 2.0) < 0.3), (errs, rates)


def test_directional_taylor_rate():
    """Central differences of the order-(j-1) derivative along v → order j, O(h²), j = 3, 4."""
    net = make_network("single", 3, "sin", 2)
    x = np.random.default_rng(1).standard_normal((1, 3))
    v = np.random.default_rng(2).standard_normal((3, 1))
    D = hq.taylor_derivatives(net, x, v, 4)
    for j in (3, 4):
        errs = []
        for h in 2.0 ** -np.arange(2, 7):
            up = hq.taylor_derivatives(net, x + h * v.T, v, j - 1)[-1]
            dn = hq.taylor_derivatives(net, x - h * v.T, v, j - 1)[-1]
            errs.append(np.max(np.abs((up - dn) / (2 * h) - D[j - 1])))
        rates = _rates(errs)
        assert np.all(np.abs(rates[-3:] - 2.0) < 0.3), (j, errs, rates)


# --------------------------------------------------------------------------
# libraries, dtypes, shapes
# --------------------------------------------------------------------------


def test_every_library(lib):
    net = make_network("nested", 2, "tanh", 1)
    x64 = np.random.default_rng(0).standard_normal((4, 2))
    xs = lib.asarray(x64)
    B = hq.biharmonic(net, xs, backend=lib.backend)
    lib.check(B, (4, 3), xs)
    assert rel_err(lib.to_numpy(B), hq.biharmonic(net, x64)) <= 1e-13
    V = np.random.default_rng(1).standard_normal((2, 3))
    D = hq.taylor_derivatives(net, xs, lib.asarray(V), 3, backend=lib.backend)
    ref = hq.taylor_derivatives(net, x64, V, 3)
    for a, b in zip(D, ref):
        lib.check(a, (4, 3, 3), xs)
        assert rel_err(lib.to_numpy(a), b) <= 1e-13
    P = hq.pure_partials(net, xs, [0], 4, backend=lib.backend)
    lib.check(P, (4, 1, 3), xs)
    full = hq.biharmonic(net, xs, full=True, backend=lib.backend)
    lib.check(full.gradient, (4, 2, 3), xs)
    lib.check(full.laplacian_gradient, (4, 2, 3), xs)


def test_numpy_directions_with_torch_input_and_backend_conversion():
    net = make_network("single", 3, "tanh", 1)
    x = np.random.default_rng(0).standard_normal((5, 3))
    V = np.eye(3)[:, :2]
    D = hq.taylor_derivatives(net, torch.as_tensor(x), V, 2)[1]
    assert isinstance(D, torch.Tensor) and D.dtype == torch.float64
    # numpy input run by the torch backend: the result comes back as NumPy
    B = hq.biharmonic(net, x, backend="torch")
    assert isinstance(B, np.ndarray) and rel_err(B, hq.biharmonic(net, x)) <= 1e-13


@pytest.mark.parametrize("kind", ["single", "resnet", "quadratic_icnn"])
def test_float32_against_float64(kind):
    net = make_network(kind, 3, "tanh", 0)
    x = np.random.default_rng(1).standard_normal((6, 3))
    B64 = hq.biharmonic(net, x)
    B32 = hq.biharmonic(net, x.astype(np.float32))
    assert B32.dtype == np.float32
    assert rel_err(B32, B64) <= 1e-4
    V = np.ones((3, 1))
    D32 = hq.taylor_derivatives(net, x.astype(np.float32), V.astype(np.float32), 4)[-1]
    assert D32.dtype == np.float32
    assert rel_err(D32, hq.taylor_derivatives(net, x, V, 4)[-1]) <= 1e-4


def test_linear_network_and_single_example():
    net = hq.NN(hq.SingleLayer(2, 3, seed=0), hq.SingleLayer(3, 1, seed=1))  # identity activations
    x = np.ones((1, 2))
    assert np.all(hq.biharmonic(net, x) == 0.0)
    r = hq.biharmonic(net, x, full=True)
    assert r.gradient.shape == (1, 2, 1) and np.all(r.laplacian == 0.0)
    D = hq.taylor_derivatives(net, x, np.ones((2, 1)), 3)
    assert np.all(D[1] == 0.0) and np.all(D[2] == 0.0) and D[0].shape == (1, 1, 1)


def test_inputs_are_not_modified():
    net = make_network("resnet", 2, "tanh", 0)
    x = np.random.default_rng(0).standard_normal((3, 2))
    V = np.ones((2, 2))
    x0, V0 = x.copy(), V.copy()
    hq.biharmonic(net, x)
    hq.taylor_derivatives(net, x, V, 4)
    assert np.array_equal(x, x0) and np.array_equal(V, V0)


# --------------------------------------------------------------------------
# training: autograd through the bi-Laplacian
# --------------------------------------------------------------------------


def test_autograd_weight_gradient_matches_nested_ad():
    from hessquik_core.training import torch_parameters

    net = hq.NN(
        hq.SingleLayer(2, 5, act="tanh", seed=0),
        hq.ResnetLayer(5, h=0.5, act="sin", seed=1),
        hq.SingleLayer(5, 1, seed=2),
    )
    params = torch_parameters(net, dtype=torch.float64)
    x = torch.as_tensor(np.random.default_rng(3).standard_normal((4, 2)))

    r = hq.biharmonic(net, x, full=True)
    loss = (r.biharmonic**2).mean() + (hq.pure_partials(net, x, [0], 3) ** 2).mean() + (r.value**2).mean()
    grads = torch.autograd.grad(loss, params)

    leaves = list(net._leaves())

    def f1(xi):  # the same weights, written directly in torch
        u = xi[None, :]
        for leaf in leaves:
            inner = leaf.layer if isinstance(leaf, hq.ResnetLayer) else leaf
            z = u @ inner.K + inner.b
            s = {"tanh": torch.tanh, "sin": torch.sin, "identity": lambda t: t}[inner.act.name](z)
            u = u + leaf.h * s if isinstance(leaf, hq.ResnetLayer) else s
        return u[0]

    ref_loss = (
        (nested_biharmonic(f1, x) ** 2).mean()
        + (nested_directional(f1, x, np.array([[1.0], [0.0]]), 3) ** 2).mean()
        + (torch.func.vmap(f1)(x) ** 2).mean()
    )
    ref = torch.autograd.grad(ref_loss, params)
    assert abs(float(loss.detach()) - float(ref_loss.detach())) <= RTOL * abs(float(ref_loss.detach()))
    for g, r in zip(grads, ref):
        assert rel_err(g.numpy(), r.numpy()) <= RTOL


# --------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------


class _Order2(Activation):
    """An activation supplying σ, σ′, σ″ only."""

    name = "order2"

    def _eval(self, z, order, xp):
        t = xp.tanh(z)
        return t, 1.0 - t * t if order >= 1 else None, -2.0 * t * (1.0 - t * t) if order == 2 else None


def test_refuses_activation_without_the_order():
    net = hq.NN(hq.SingleLayer(2, 3, act=_Order2(), seed=0), hq.SingleLayer(3, 1, seed=1))
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"order 4.*order2.*SingleLayer.*up to order 2"):
        hq.biharmonic(net, x)
    with pytest.raises(ValueError, match=r"order 3.*order2"):
        hq.pure_partials(net, x, [0], 3)
    # order 2 is within reach
    D2 = hq.taylor_derivatives(net, x, np.eye(2), 2)[1]
    assert rel_err(np.einsum("nkkm->nkm", net(x, hessian=True).hessian), D2) <= 1e-14


class _Opaque(hq.layers.Layer):
    """A layer known only through the generic (second-order) rule."""

    in_features = out_features = 2


def test_refuses_unsupported_layer_by_name():
    net = hq.NN(hq.SingleLayer(2, 2, act="tanh", seed=0), _Opaque())
    with pytest.raises(
        TypeError, match=r"order 4 for layer type _Opaque \(supported: FourierFeatures, GatedMLP"
    ):
        hq.biharmonic(net, np.ones((2, 2)))
    with pytest.raises(TypeError, match=r"taylor_derivatives: no rule of order 3 for layer type _Opaque"):
        hq.pure_partials(net, np.ones((2, 2)), [0], 3)
    # a subclass of a layer with a rule for its exact class may change the maths:
    # refused until registered (one that declares affine_structure, or inherits
    # the declaration, is handled by that declaration)
    sub = type("MyQuadratic", (hq.QuadraticLayer,), {})(2, 2, seed=0)
    with pytest.raises(TypeError, match="layer type MyQuadratic"):
        hq.biharmonic(hq.NN(hq.SingleLayer(2, 2, act="tanh", seed=0), sub), np.ones((2, 2)))


def test_bad_input():
    net = make_network("single", 3, "tanh", 0)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"directions must have shape \(3, k\).*\(2, 2\)"):
        hq.taylor_derivatives(net, x, np.ones((2, 2)), 3)
    with pytest.raises(ValueError, match=r"directions must have shape \(3, k\)"):
        hq.taylor_derivatives(net, x, np.ones(3), 3)
    with pytest.raises(ValueError, match="order must be an integer from 1 to 4, got 5"):
        hq.taylor_derivatives(net, x, np.ones((3, 1)), 5)
    with pytest.raises(ValueError, match="order must be"):
        hq.pure_partials(net, x, [0], True)
    with pytest.raises(ValueError, match=r"coords must hold integers in 0..2"):
        hq.pure_partials(net, x, [3], 3)
    with pytest.raises(ValueError, match=r"coords must be a non-empty sequence"):
        hq.pure_partials(net, x, 1, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        hq.biharmonic(net, np.ones((2, 2)))
    with pytest.raises(TypeError, match="directions must be"):
        hq.taylor_derivatives(net, x, [[1.0], [0.0], [0.0]], 3)


def test_single_point_drops_the_batch_axis(lib):
    net = make_network("resnet", 2, "tanh", 0)
    x = np.random.default_rng(0).standard_normal(2)
    xs = lib.asarray(x)
    B = hq.biharmonic(net, xs, backend=lib.backend)
    lib.check(B, (4,), xs)
    assert rel_err(lib.to_numpy(B), hq.biharmonic(net, x[None])[0]) <= 1e-14
    r = hq.biharmonic(net, xs, full=True, backend=lib.backend)
    lib.check(r.gradient, (2, 4), xs)
    D = hq.taylor_derivatives(net, xs, np.eye(2), 3, backend=lib.backend)
    lib.check(D[2], (2, 4), xs)
    lib.check(hq.pure_partials(net, xs, [1], 4, backend=lib.backend), (1, 4), xs)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\).*a single point has shape \(2,\)"):
        hq.biharmonic(net, np.ones(3))


def test_second_backward_pass_matches_nested_ad():
    """Exact second backward pass: a Hessian-vector product in the weights of a
    loss of Δ²u, against the same product through torch.func nested AD."""
    from hessquik_core.training import torch_parameters

    net = hq.NN(hq.SingleLayer(2, 3, act="tanh", seed=0), hq.SingleLayer(3, 1, seed=1))
    params = torch_parameters(net, dtype=torch.float64)
    x = torch.as_tensor(np.random.default_rng(3).standard_normal((2, 2)))
    rng = np.random.default_rng(4)
    vs = [torch.as_tensor(rng.standard_normal(tuple(p.shape))) for p in params]

    def f1(xi):
        h = torch.tanh(xi[None] @ params[0] + params[1])
        return (h @ params[2] + params[3])[0]

    def hvp(loss):
        g = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        dot = sum((gi * v).sum() for gi, v in zip(g, vs) if gi is not None)
        return torch.autograd.grad(dot, params, allow_unused=True)

    ours = hvp((hq.biharmonic(net, x) ** 2).mean())
    ref = hvp((nested_biharmonic(f1, x) ** 2).mean())
    for a, b in zip(ours, ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert rel_err(a.numpy(), b.numpy()) <= RTOL


def test_row_blocks_give_the_same_results(monkeypatch):
    """A batch larger than the working-set target runs in row blocks."""
    import hessquik_core.higher as H

    net = make_network("icnn", 2, "tanh", 0)
    x = np.random.default_rng(0).standard_normal((7, 2))
    V = np.ones((2, 1))
    whole = hq.biharmonic(net, x, full=True)
    D = hq.taylor_derivatives(net, x, V, 3)
    monkeypatch.setattr(H, "CHUNK_BYTES", 1)  # one row per block
    blocks = hq.biharmonic(net, x, full=True)
    for name in ("value", "gradient", "laplacian", "laplacian_gradient", "biharmonic"):
        assert rel_err(getattr(blocks, name), getattr(whole, name)) <= 1e-15, name
    for a, b in zip(hq.taylor_derivatives(net, x, V, 3), D):
        assert rel_err(a, b) <= 1e-15
    lin = hq.NN(hq.SingleLayer(2, 3, seed=0))  # shared (1, d, m) gradient, zero higher fields
    assert hq.biharmonic(lin, x, full=True).gradient.shape == (7, 2, 3)

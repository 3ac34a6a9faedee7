"""``net(x, biharmonic=True)``: the bi-Laplacian as a call flag (the route
:mod:`hessquik_core.engine.routes.higher`) against :func:`hessquik_core.biharmonic`
(itself checked against torch.func nested AD in test_higher*.py), on every library,
chunked, priced by ``net.cost``, through torch autograd, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from _reference import make_network, rel_err

import hessquik_core as hq
from hessquik_core.activations import Activation
from hessquik_core.engine.result import FIELDS

torch = pytest.importorskip("torch")


def _net():
    return hq.NN(
        hq.SingleLayer(3, 6, act="tanh", seed=0),
        hq.ResnetLayer(6, h=0.5, act="sin", seed=1),
        hq.SingleLayer(6, 2, seed=2),
    )


X = np.random.default_rng(0).standard_normal((7, 3))


def _same(a, b, tol=1e-14):
    assert a.shape == b.shape
    assert rel_err(np.asarray(a), np.asarray(b)) <= tol


def test_flag_equals_function_with_fields_of_the_same_sweep():
    net = _net()
    ref = hq.biharmonic(net, X, full=True)
    res = net(X, biharmonic=True)
    assert res.mode == "forward"
    assert res.gradient is None and res.laplacian is None and res.hessian is None
    assert isinstance(res.biharmonic, np.ndarray) and res.biharmonic.dtype == np.float64
    _same(res.biharmonic, ref.biharmonic)
    _same(res.value, ref.value)
    both = net(X, biharmonic=True, gradient=True, laplacian=True)
    _same(both.biharmonic, ref.biharmonic)
    _same(both.gradient, ref.gradient)
    _same(both.laplacian, ref.laplacian)
    # the same Laplacian and gradient as the classic sweep's (another recurrence)
    classic = net(X, gradient=True, laplacian=True)
    _same(both.laplacian, classic.laplacian, 1e-12)
    _same(both.gradient, classic.gradient, 1e-12)


def test_unpacking_order_and_result_protocol():
    net = _net()
    # new fields come after the existing ones: old unpacking unchanged
    assert FIELDS[:6] == ("value", "gradient", "hessian", "laplacian", "hessian_diagonal", "divergence")
    assert FIELDS[6:] == ("biharmonic", "third_derivative", "fourth_derivative")
    f, g, L, B = net(X, gradient=True, laplacian=True, biharmonic=True)
    assert g.shape == (7, 3, 2) and L.shape == (7, 2) and B.shape == (7, 2)
    f, B2 = net(X, biharmonic=True)
    _same(B2, B)
    res = net(X, biharmonic=True)
    assert "biharmonic: (7, 2) float64" in repr(res)
    _same(res[2:4].biharmonic, B[2:4])
    _same(res[1].biharmonic, B[1])
    # a call without the flag has no biharmonic field
    assert net(X, laplacian=True).biharmonic is None


def test_single_point():
    net = _net()
    res = net(X[3], biharmonic=True, laplacian=True)
    assert res.value.shape == (2,) and res.biharmonic.shape == (2,) and res.laplacian.shape == (2,)
    _same(res.biharmonic, hq.biharmonic(net, X[3], full=True).biharmonic)
    _same(hq.biharmonic(net, X[3]), res.biharmonic)


def test_every_library(lib):
    net = make_network("nested", 2, "tanh", 1)
    x64 = np.random.default_rng(0).standard_normal((4, 2))
    xs = lib.asarray(x64)
    res = net(xs, biharmonic=True, laplacian=True, backend=lib.backend)
    lib.check(res.biharmonic, (4, 3), xs)
    lib.check(res.laplacian, (4, 3), xs)
    # hq.biharmonic(full=True) runs the functions' own sweep (row blocks, its own
    # input handling); full=False is the flag
    ref = hq.biharmonic(net, xs, full=True, backend=lib.backend)
    assert rel_err(lib.to_numpy(res.biharmonic), lib.to_numpy(ref.biharmonic)) <= 1e-14
    assert rel_err(lib.to_numpy(res.laplacian), lib.to_numpy(ref.laplacian)) <= 1e-14
    assert rel_err(lib.to_numpy(res.biharmonic), hq.biharmonic(net, x64, full=True).biharmonic) <= 1e-13


def test_numpy_input_run_by_torch_comes_back_as_numpy():
    net = _net()
    res = net(X, biharmonic=True, backend="torch")
    assert isinstance(res.biharmonic, np.ndarray)
    _same(res.biharmonic, hq.biharmonic(net, X, full=True).biharmonic, 1e-13)


def test_chunked_equals_unchunked():
    net = _net()
    x = np.random.default_rng(1).standard_normal((40, 3))
    whole = net(x, biharmonic=True, gradient=True, laplacian=True)
    per_example = net.cost(40, biharmonic=True, gradient=True, laplacian=True).planned.per_example_bytes
    budget = 5 * per_example
    c = net.cost(40, biharmonic=True, gradient=True, laplacian=True, max_memory=budget)
    assert c.route == "forward/biharmonic" and c.chunks > 1, c
    parts = net(x, biharmonic=True, gradient=True, laplacian=True, max_memory=budget)
    for name in ("value", "gradient", "laplacian", "biharmonic"):
        assert np.array_equal(getattr(parts, name), getattr(whole, name)), name


def test_cost_names_the_route():
    net = _net()
    c = net.cost(100, biharmonic=True, gradient=False)
    assert c.route == "forward/biharmonic"
    assert "biharmonic" in c.request
    assert any("d(d+1)/2 + 2d + 3 = 15 streams" in note for note in c.notes)
    assert "biharmonic (100, 2)" in c.result_fields
    # flops of the stated model: 2 n p q S per weight matrix, S = d(d+1)/2 + 2d + 3
    S = 3 * 4 // 2 + 2 * 3 + 3
    shapes = [s for leaf in net._leaves() for s in leaf.cost_shapes]
    assert c.planned.flops == sum(2.0 * 100 * p * q * S for p, q in shapes)
    # the request without the flag takes another route
    assert net.cost(100, laplacian=True, gradient=False).route != "forward/biharmonic"


def test_torch_autograd_through_flag_equals_through_function():
    from hessquik_core.training import torch_parameters

    net = _net()
    params = torch_parameters(net, dtype=torch.float64)
    x = torch.as_tensor(X).requires_grad_(True)

    def loss(r):
        return (r.biharmonic**2).mean() + (r.laplacian**2).mean() + (r.value**2).mean()

    res = net(x, biharmonic=True, laplacian=True)
    assert isinstance(res.biharmonic, torch.Tensor) and res.biharmonic.requires_grad
    g_flag = torch.autograd.grad(loss(res), [*params, x])
    ref = hq.biharmonic(net, x, full=True)
    g_fun = torch.autograd.grad(loss(ref), [*params, x])
    for a, b in zip(g_flag, g_fun):
        assert rel_err(a.detach().numpy(), b.detach().numpy()) <= 1e-13


class _Order2(Activation):
    """An activation supplying σ, σ′, σ″ only."""

    name = "order2"

    def _eval(self, z, order, xp):
        t = xp.tanh(z)
        return t, 1.0 - t * t if order >= 1 else None, -2.0 * t * (1.0 - t * t) if order == 2 else None


class _Opaque(hq.layers.Layer):
    """A layer known only through the generic (second-order) rule."""

    in_features = out_features = 2


def _message(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def test_refusals_name_what_is_wrong_with_the_functions_messages():
    x = np.ones((2, 2))
    net = hq.NN(hq.SingleLayer(2, 3, act=_Order2(), seed=0), hq.SingleLayer(3, 1, seed=1))
    assert _message(lambda: net(x, biharmonic=True)) == _message(lambda: hq.biharmonic(net, x))
    with pytest.raises(ValueError, match=r"order 4.*order2.*SingleLayer.*up to order 2"):
        net(x, biharmonic=True)
    opaque = hq.NN(hq.SingleLayer(2, 2, act="tanh", seed=0), _Opaque())
    assert _message(lambda: opaque(x, biharmonic=True)) == _message(lambda: hq.biharmonic(opaque, x))
    with pytest.raises(TypeError, match=r"biharmonic: no rule of order 4 for layer type _Opaque"):
        opaque(x, biharmonic=True)


def test_refuses_bad_combinations():
    net = _net()
    with pytest.raises(ValueError, match=r"mode must be 'auto' or 'forward', got 'backward'"):
        net(X, biharmonic=True, mode="backward")
    with pytest.raises(ValueError, match=r"cannot be combined with directions"):
        net(X, biharmonic=True, directions=np.eye(3))
    with pytest.raises(ValueError, match=r"not with hessian, hessian_diagonal: make a separate call"):
        net(X, biharmonic=True, hessian=True, hessian_diagonal=True)
    with pytest.raises(ValueError, match=r"not with divergence"):
        hq.FullyConnectedNN([2, 4, 2], act="tanh", seed=0)(np.ones((2, 2)), biharmonic=True, divergence=True)
    with pytest.raises(ValueError, match=r"does not take out= buffers"):
        net(X, biharmonic=True, out=net.empty_result(X, laplacian=True))
    with pytest.raises(TypeError, match=r"biharmonic must be"):
        net(X, biharmonic="yes")
    with pytest.raises(ValueError, match=r"mode must be 'auto' or 'forward'"):
        net.cost(10, biharmonic=True, mode="backward")
    with pytest.raises(ValueError, match=r"not with hessian"):
        net.cost(10, biharmonic=True, hessian=True)


def test_forward_mode_explicit_and_inputs_untouched():
    net = _net()
    x = X.copy()
    res = net(x, biharmonic=True, mode="forward")
    assert np.array_equal(x, X)
    _same(res.biharmonic, hq.biharmonic(net, X, full=True).biharmonic)

"""The call flags ``third_derivative`` / ``fourth_derivative`` with ``directions=V``:
the route ``"forward/taylor"`` (``engine/routes/higher.py``), against ``torch.func``
nested AD, against ``hq.taylor_derivatives`` (the same sweep), the Result protocol
and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from _higher_reference import f1_of, nested_directional
from _reference import make_network, rel_err
from layer_checks import on_graph

import hessquik_core as hq
from hessquik_core.activations import Activation

RTOL = 1e-11
V = np.array([[1.0, -0.5], [0.3, 0.8], [-0.2, 0.4]])


@pytest.fixture(autouse=True)
def _analytic_higher_order_on():
    """This module tests the AD-free order-3/4 weight gradient, an opt-in (slower than taping)."""
    from hessquik_core.training import analytic_higher_order_gradient

    before = analytic_higher_order_gradient(True)
    yield
    analytic_higher_order_gradient(before)


@pytest.mark.parametrize("kind", ["single", "resnet", "icnn", "quadratic", "quadratic_icnn", "nested"])
def test_against_nested_ad_and_the_function(kind):
    torch = pytest.importorskip("torch")  # noqa: F841 - the reference
    net = make_network(kind, 3, "tanh", 0)
    x = np.random.default_rng(1).standard_normal((5, 3))
    r = net(x, third_derivative=True, fourth_derivative=True, directions=V)
    m = net.out_features
    assert r.mode == "forward" and r.gradient is None and r.laplacian is None and r.biharmonic is None
    D = hq.taylor_derivatives(net, x, V, 4)
    for j, got in ((3, r.third_derivative), (4, r.fourth_derivative)):
        assert isinstance(got, np.ndarray) and got.shape == (5, 2, m) and got.dtype == np.float64
        assert rel_err(got, nested_directional(f1_of(net), x, V, j).numpy()) <= RTOL, j
        assert rel_err(got, D[j - 1]) <= 1e-14
    # the directional gradient (classic route) is the first Taylor derivative: other flags unchanged
    assert rel_err(net(x, gradient=True, directions=V).gradient, D[0]) <= 1e-14


def test_result_protocol_single_point_float32_and_pure_partials():
    net = make_network("resnet", 3, "tanh", 2)
    x = np.random.default_rng(2).standard_normal((4, 3))
    m = net.out_features
    f, t3 = net(x, third_derivative=True, directions=V)
    assert f.shape == (4, m) and t3.shape == (4, 2, m)
    f, t3, t4 = net(x, third_derivative=True, fourth_derivative=True, directions=V)
    assert t4.shape == (4, 2, m)
    f, t4b = net(x, fourth_derivative=True, directions=V)
    assert rel_err(t4b, t4) == 0.0
    one = net(x[1], third_derivative=True, directions=V)
    assert one.third_derivative.shape == (2, m) and rel_err(one.third_derivative, t3[1]) <= 1e-15
    assert f"third_derivative: (4, 2, {m})" in repr(net(x, third_derivative=True, directions=V))
    # the pure partial u_xxx in coordinate 1 is the direction e_1
    e1 = np.eye(3)[:, [1]]
    assert (
        rel_err(
            net(x, third_derivative=True, directions=e1).third_derivative, hq.pure_partials(net, x, [1], 3)
        )
        <= 1e-15
    )
    r32 = net(x.astype(np.float32), fourth_derivative=True, directions=V.astype(np.float32))
    assert r32.fourth_derivative.dtype == np.float32
    assert rel_err(r32.fourth_derivative, t4) <= 1e-4


def test_torch_autograd_through_the_flag():
    torch = pytest.importorskip("torch")
    from hessquik_core.training import torch_parameters

    net = make_network("single", 3, "tanh", 3)
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(3).standard_normal((5, 3)))
    Vt = torch.tensor(V)
    r = net(x, third_derivative=True, fourth_derivative=True, directions=Vt)
    g = torch.autograd.grad((r.fourth_derivative**2).mean() + r.third_derivative.sum(), params)
    D = hq.taylor_derivatives(net, x, V, 4)
    ref = torch.autograd.grad((D[3] ** 2).mean() + D[2].sum(), params)
    for a, b in zip(g, ref):
        assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())


class _Order3(Activation):
    """σ up to σ‴ only."""

    name = "order3"

    def _eval(self, z, order, xp):
        t = xp.tanh(z)
        s = 1.0 - t * t
        return t, s if order >= 1 else None, -2.0 * t * s if order >= 2 else None


def test_refusals():
    net = make_network("single", 3, "tanh", 0)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"third_derivative=True needs directions=V of shape \(d, k\)"):
        net(x, third_derivative=True)
    with pytest.raises(ValueError, match=r"take directions of shape \(3, k\).*got shape \(2, 2\)"):
        net(x, fourth_derivative=True, directions=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"mode must be 'auto' or 'forward', got 'backward'"):
        net(x, third_derivative=True, directions=V, mode="backward")
    with pytest.raises(ValueError, match=r"not with gradient, laplacian: make a separate call"):
        net(x, third_derivative=True, directions=V, gradient=True, laplacian=True)
    with pytest.raises(ValueError, match=r"biharmonic=True .* cannot be combined with directions"):
        net(x, fourth_derivative=True, directions=V, biharmonic=True)
    with pytest.raises(ValueError, match=r"do not take out= buffers"):
        net(x, third_derivative=True, directions=V, out=net.empty_result(x))
    with pytest.raises(TypeError, match=r"third_derivative must be"):
        net(x, third_derivative="yes", directions=V)
    low = hq.NN(hq.SingleLayer(3, 4, act=_Order3(), seed=0), hq.SingleLayer(4, 1, seed=1))
    with pytest.raises(ValueError, match=r"order 4.*order3"):
        low(x, fourth_derivative=True, directions=V)
    with pytest.raises(ValueError, match=r"order 4.*order3"):
        hq.taylor_derivatives(low, x, V, 4)


@pytest.mark.parametrize("wrt_x", [False, True])
def test_analytic_weight_gradient_of_the_flags(wrt_x):
    """Dense/residual layers: the route runs as one function with the streams' adjoint as its
    backward (pinn/_streams_taylor_train); x recording gradients takes the taped path."""
    torch = pytest.importorskip("torch")
    from hessquik_core.training import analytic_weight_gradient, torch_parameters

    net = make_network("resnet", 3, "tanh", 5)
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(5).standard_normal((4, 3)), requires_grad=wrt_x)
    Vt = torch.tensor(V)
    out = {}
    for analytic in (True, False):
        before = analytic_weight_gradient(analytic)
        try:
            r = net(x, third_derivative=True, fourth_derivative=True, directions=Vt)
            loss = (r.fourth_derivative**2).mean() + (r.third_derivative * r.value[:, None, :]).sum()
            used = on_graph(r.fourth_derivative, "_TaylorRouteBackward")
            inputs = [*params, x] if wrt_x else params
            g = torch.autograd.grad(loss, inputs, create_graph=True, materialize_grads=True)
            h = torch.autograd.grad(sum((gi**2).sum() for gi in g), params, materialize_grads=True)
        finally:
            analytic_weight_gradient(before)
        assert used is (analytic and not wrt_x)
        out[analytic] = (g, h)
    for a, b in zip(out[True][0] + out[True][1], out[False][0] + out[False][1]):
        a, b = a.detach(), b.detach()
        assert float((a - b).abs().max()) <= 1e-12 * max(float(b.abs().max()), 1e-300)

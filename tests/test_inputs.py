"""Inputs of a network call (issue 24 items 10 and 13): extra leading batch axes
``(..., d)``, nested lists for ``x`` and ``directions``, and refusals made on
shapes before ``x`` is converted to another library."""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch, torch

import hessquik_core as hq
import hessquik_core._array as arr
import hessquik_core._inputs as inputs
from hessquik_core import MemoryBudgetError

ALL = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)


def _net(d=3, m=2, width=6):
    return hq.FullyConnectedNN([d, width, m], act="tanh", seed=0)


# -- 1. extra leading batch axes ------------------------------------------------


@pytest.mark.parametrize("lead", [(4, 5), (2, 3, 2), (1, 7), (6, 1)])
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_leading_axes_shapes_and_values(lead, mode):
    d, m = 3, 2
    net = _net(d, m)
    x = np.random.default_rng(1).standard_normal((*lead, d))
    before = x.copy()
    res = net(x, mode=mode, **ALL)
    flat = net(x.reshape(-1, d), mode=mode, **ALL)
    expect = {
        "value": (*lead, m),
        "gradient": (*lead, d, m),
        "hessian": (*lead, d, d, m),
        "laplacian": (*lead, m),
        "hessian_diagonal": (*lead, d, m),
    }
    for name, shape in expect.items():
        a = getattr(res, name)
        assert isinstance(a, np.ndarray) and a.dtype == np.float64
        assert a.shape == shape, name
        np.testing.assert_array_equal(a.reshape(-1, *a.shape[len(lead) :]), getattr(flat, name))
    assert res.divergence is None
    np.testing.assert_array_equal(x, before)  # the caller's array is never modified


def test_leading_axes_divergence_and_point_entries():
    d = 3
    net = _net(d, d)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in (4, 3, 2)), indexing="ij"), axis=-1)
    assert grid.shape == (4, 3, 2, d)
    res = net(grid, gradient=True, divergence=True)
    assert res.divergence.shape == (4, 3, 2)
    assert res.gradient.shape == (4, 3, 2, d, d)
    i, j, k = 2, 1, 0
    one = net(grid[i, j, k], gradient=True, divergence=True)  # a single point: today's behaviour
    assert one.value.shape == (d,) and one.gradient.shape == (d, d) and one.divergence.shape == ()
    # batch vs one-point: another BLAS summation order
    np.testing.assert_allclose(res.value[i, j, k], one.value, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(res.divergence[i, j, k], one.divergence, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(np.trace(res.gradient, axis1=-2, axis2=-1), res.divergence, rtol=1e-13)


@needs_torch
def test_leading_axes_directions_and_torch():
    d, m, k = 3, 2, 4
    net = _net(d, m)
    xt = torch.randn(2, 5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    V = torch.randn(d, k, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = net(xt, gradient=True, hessian=True, directions=V)
    assert isinstance(res.hessian, torch.Tensor)
    assert res.gradient.shape == (2, 5, k, m) and res.hessian.shape == (2, 5, k, k, m)
    flat = net(xt.reshape(-1, d), gradient=True, hessian=True, directions=V)
    assert torch.equal(res.hessian.reshape(10, k, k, m), flat.hessian)


@needs_torch
def test_leading_axes_autograd_flows_through_the_reshape():
    net = _net(2, 1)
    x0 = torch.randn(3, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xt = x0.clone().requires_grad_(True)
    lap = net(xt, laplacian=True).laplacian
    assert lap.shape == (3, 4, 1)
    (g,) = torch.autograd.grad((lap**2).sum(), xt)
    xf = x0.reshape(-1, 2).clone().requires_grad_(True)
    (gf,) = torch.autograd.grad((net(xf, laplacian=True).laplacian ** 2).sum(), xf)
    assert g.shape == xt.shape
    torch.testing.assert_close(g.reshape(-1, 2), gf, rtol=1e-14, atol=1e-15)


def test_flatten_batch_is_a_view_when_possible():
    x = np.random.default_rng(2).standard_normal((4, 5, 3))
    flat, lead = inputs.flatten_batch(x, 3)
    assert lead == (4, 5) and flat.shape == (20, 3) and np.shares_memory(flat, x)
    view = np.broadcast_to(np.arange(3.0), (1000, 1000, 3))
    flat, lead = inputs.flatten_batch(view, 3)  # merged zero strides: still a view, never materialised
    assert flat.shape == (10**6, 3) and np.shares_memory(flat, view) and flat.strides == (0, 8)
    t = x.transpose(1, 0, 2)  # not mergeable: a copy, the caller's array untouched
    flat, lead = inputs.flatten_batch(t, 3)
    assert lead == (5, 4)
    np.testing.assert_array_equal(flat, t.reshape(-1, 3))
    assert inputs.flatten_batch(x[0, 0], 3)[1] == () and inputs.flatten_batch(x[0], 3)[1] is None


def test_leading_axes_wrong_last_axis():
    net = _net(3, 1)
    with pytest.raises(
        ValueError, match=r"x must have shape \(n, 3\) \(or \(\.\.\., 3\).*got shape \(4, 5, 2\)"
    ):
        net(np.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match=r"got shape \(\) \(ndim 0\)"):
        net(np.zeros(()))


def test_leading_axes_out_refused_consistently():
    net = _net(3, 1)
    x = np.zeros((4, 5, 3))
    msg = r"does not take x with extra leading batch axes.*x.reshape\(-1, 3\)"
    with pytest.raises(ValueError, match="empty_result " + msg):
        net.empty_result(x, gradient=True)
    out = net.empty_result(x.reshape(-1, 3), gradient=True)
    with pytest.raises(ValueError, match="out= " + msg):
        net(x, gradient=True, out=out)
    # a single point and a plain batch keep out= (today's behaviour)
    assert net(x[0, 0], gradient=True, out=net.empty_result(x[0, 0], gradient=True)).gradient.shape == (3, 1)
    assert net(x.reshape(-1, 3), gradient=True, out=out) is out


# -- 2. lists, for x as for directions --------------------------------------------


def test_lists_accepted_for_x_and_directions():
    net = _net(3, 2)
    xl = [[0.1, -0.2, 0.3], [1.0, 2, 3]]
    V = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    res = net(xl, gradient=True, hessian=True, directions=V)
    ref = net(np.array(xl), gradient=True, hessian=True, directions=np.array(V))
    for name in ("value", "gradient", "hessian"):
        a = getattr(res, name)
        assert type(a) is np.ndarray and a.dtype == np.float64
        np.testing.assert_array_equal(a, getattr(ref, name))
    # a single point and a grid, as lists or tuples
    assert net([0.1, 0.2, 0.3]).value.shape == (2,)
    assert net(((0.1, 0.2, 0.3),)).value.shape == (1, 2)
    grid = [[[0.0, 0.0, 0.0]] * 2] * 3
    assert net(grid, laplacian=True).laplacian.shape == (3, 2, 2)
    # integers in a list become float64 too (an int array is refused)
    np.testing.assert_array_equal(net([[1, 2, 3]]).value, net(np.array([[1.0, 2.0, 3.0]])).value)
    assert net.empty_result(xl, gradient=True).gradient.dtype == np.float64


def test_lists_refused_clearly():
    net = _net(3, 1)
    with pytest.raises(
        ValueError, match="x given as a list must be a rectangular nested list of real numbers"
    ):
        net([[0.0, 1.0, 2.0], [1.0]])
    with pytest.raises(
        TypeError, match="x given as a list must be a rectangular nested list of real numbers"
    ):
        net([["a", "b", "c"]])
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        net([[0.0, 1.0]])


# -- 3. refusals before any conversion of x (item 13) -------------------------------


def _no_conversion(monkeypatch):
    calls = []

    def spy(*a, **k):
        calls.append(a)
        raise AssertionError("x was converted before the planner refused the call")

    monkeypatch.setattr(arr, "_move_to", spy)
    return calls


@needs_torch
def test_refused_before_conversion_of_a_broadcast_view(monkeypatch):
    d = 4096
    net = hq.FullyConnectedNN([d, 2, 1], act="tanh", seed=0)
    x = np.broadcast_to(np.zeros(d), (10**6, d))  # 32 GB if materialised
    calls = _no_conversion(monkeypatch)
    with pytest.raises(MemoryBudgetError, match=r"hessian \(1000000, 4096, 4096, 1\)"):
        net(x, hessian=True, backend="torch")
    # the per-example budget refuses before conversion too
    with pytest.raises(MemoryBudgetError, match="one example needs"):
        net(x[:10], hessian=True, backend="torch", max_memory=1e3)
    # and with extra leading axes (a merged zero-stride view: still no copy)
    with pytest.raises(MemoryBudgetError):
        net(np.broadcast_to(np.zeros(d), (1000, 1000, d)), hessian=True, backend="torch")
    assert calls == []


@needs_torch
def test_accepted_broadcast_view_is_converted_once_and_equals_the_materialised_call(monkeypatch):
    d = 3
    net = _net(d, 2)
    x = np.broadcast_to(np.array([0.3, -0.1, 0.7]), (50, d))
    dense = np.ascontiguousarray(x)
    ref = net(dense, backend="torch", **ALL)
    real = arr._move_to
    calls = []

    def spy(be, a, *rest):
        calls.append((type(a).__module__, tuple(a.shape)))
        return real(be, a, *rest)

    monkeypatch.setattr(arr, "_move_to", spy)
    res = net(x, backend="torch", **ALL)
    # x converted once, after the plan accepted the call (then the results back to NumPy)
    assert [c for c in calls if c[0] == "numpy"] == [("numpy", (50, d))]
    assert calls[0] == ("numpy", (50, d)) and len(calls) == 6
    for name in ("value", "gradient", "hessian", "laplacian", "hessian_diagonal"):
        a = getattr(res, name)
        assert type(a) is np.ndarray
        np.testing.assert_array_equal(a, getattr(ref, name))
    np.testing.assert_allclose(res.hessian, net(dense, **ALL).hessian, rtol=1e-13, atol=1e-15)

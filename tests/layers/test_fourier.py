"""FourierFeatures and PeriodicEmbedding as layers: every input derivative in
both modes against torch.func, float32 against float64 truth, Taylor rates,
save/load, the torch twins, curvature products against torch.func on the
flattened parameters, and the array libraries of the ``lib`` fixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _checks import twin_curvature_truth  # noqa: E402
from _optional import needs_torch, torch
from layer_checks import check_input_derivatives, check_save_load, check_to_torch

import hessquik_core as hq
from hessquik_core import curvature as cv


def _fourier_net(trainable=False):
    rng = np.random.default_rng(5)
    return hq.NN(
        hq.FourierFeatures(3, 4, scale=0.7, trainable=trainable, seed=rng),
        hq.SingleLayer(8, 5, act="tanh", seed=rng),
        hq.LayerNorm(5),
        hq.SingleLayer(5, 2, seed=rng),
    )


def _periodic_net():
    rng = np.random.default_rng(6)
    return hq.NN(
        hq.PeriodicEmbedding(3, periods=[1.0, 2.5], axes=[2, 0]),
        hq.SingleLayer(5, 4, act="tanh", seed=rng),
        hq.SingleLayer(4, 2, act="sigmoid", seed=rng),
    )


def _periodic_trainable_net():
    rng = np.random.default_rng(8)
    pe = hq.PeriodicEmbedding(3, periods=[1.0, 2.5], axes=[2, 0], trainable=True)
    pe.omega = pe.omega * (1.0 + 0.2 * rng.standard_normal(2))  # away from the initial 2π/P
    return hq.NN(
        pe,
        hq.SingleLayer(5, 4, act="tanh", seed=rng),
        hq.SingleLayer(4, 2, act="sigmoid", seed=rng),
    )


def _fourier_trainable_net():
    return _fourier_net(trainable=True)


MAKES = [_fourier_net, _fourier_trainable_net, _periodic_net, _periodic_trainable_net]
MAKE_IDS = ["fourier", "fourier-trainable", "periodic", "periodic-trainable"]


def _f(net):
    """The network's torch twin (``hq.to_torch``) as a function of one point, ``(d,) -> (m,)``."""
    tm = hq.to_torch(net).double().requires_grad_(False)
    return lambda xi: tm(xi[None])[0]


def _x(n=5, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


@needs_torch
@pytest.mark.parametrize("make", MAKES, ids=MAKE_IDS)
def test_input_derivatives_vs_torch_func(make):
    net = make()
    check_input_derivatives(net, _f(net), _x(), rtol=1e-12)


@needs_torch
def test_fourier_first_layer_packed_and_auto():
    """Many directions (packed forward Hessian) and mode='auto'."""
    net = hq.NN(hq.FourierFeatures(5, 3, seed=1), hq.SingleLayer(6, 2, act="tanh", seed=2))
    x = _x(4, 5, 1)
    check_input_derivatives(net, _f(net), x, backends=(None,))
    r = net(x, gradient=True, hessian=True, laplacian=True, mode="auto")
    f = net(x, gradient=True, hessian=True, laplacian=True, mode="forward")
    np.testing.assert_allclose(r.hessian, f.hessian, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(r.laplacian, f.laplacian, rtol=1e-12, atol=1e-13)


@needs_torch
def test_divergence_vs_torch_func():
    net = hq.NN(hq.FourierFeatures(3, 2, seed=0), hq.SingleLayer(4, 3, act="tanh", seed=1))
    x = _x(4, 3)
    from torch.func import jacrev, vmap

    J = vmap(jacrev(_f(net)))(torch.tensor(x)).numpy()  # (n, m, d)
    div = np.trace(J, axis1=1, axis2=2)
    for mode in ("forward", "backward"):
        r = net(x, divergence=True, mode=mode)
        np.testing.assert_allclose(r.divergence, div, rtol=1e-12, atol=1e-13)


def test_periodic_outputs_are_periodic():
    net = _periodic_net()
    x = _x(4, 3)
    shifted = x.copy()
    shifted[:, 2] += 1.0  # period 1 on axis 2
    shifted[:, 0] -= 2.5  # period 2.5 on axis 0
    np.testing.assert_allclose(net(shifted).value, net(x).value, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("make", MAKES, ids=MAKE_IDS)
def test_float32_against_float64_truth(make):
    net = make()
    x = _x()
    r64 = net(x, gradient=True, hessian=True, laplacian=True)
    for mode in ("forward", "backward"):
        r32 = net(x.astype(np.float32), gradient=True, hessian=True, laplacian=True, mode=mode)
        assert r32.hessian.dtype == np.float32
        for name in ("value", "gradient", "hessian", "laplacian"):
            want = getattr(r64, name)
            got = getattr(r32, name)
            assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, np.max(np.abs(want))), name


@pytest.mark.parametrize("make", MAKES, ids=MAKE_IDS)
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_taylor_rates(make, mode):
    rep = hq.checks.taylor_check(make(), _x(3), mode=mode, seed=0)
    assert rep.passed, rep


@needs_torch
@pytest.mark.parametrize("make", MAKES, ids=MAKE_IDS)
def test_save_load_and_torch_round_trip(make):
    net = make()
    x = _x()
    check_save_load(net, x)
    check_to_torch(net, x)


@needs_torch
def test_torch_twin_trainable_flag():
    tm = hq.to_torch(_fourier_net(trainable=True))
    assert tm[0].B.requires_grad
    tm = hq.to_torch(_fourier_net(trainable=False))
    assert not tm[0].B.requires_grad
    back = hq.from_torch(tm)
    assert isinstance(back[0], hq.FourierFeatures) and back[0].trainable is False
    tm = hq.to_torch(_periodic_trainable_net())
    assert tm[0].omega.requires_grad
    back = hq.from_torch(tm)
    assert back[0].trainable is True
    np.testing.assert_array_equal(back[0].omega, _periodic_trainable_net()[0].omega)


def test_cost_model_and_config():
    ff = hq.FourierFeatures(3, 4, seed=0)
    assert ff.cost_shapes == ((3, 8),) and ff.out_features == 8
    pe = hq.PeriodicEmbedding(4, periods=[2.0], axes=[1])
    assert pe.out_features == 5 and pe.cost_shapes == ((4, 5),)
    assert hq.FourierFeatures.parameter_shapes(ff.config()) == {"B": (3, 4)}
    assert hq.PeriodicEmbedding.parameter_shapes(pe.config()) == {}


def test_fourier_matrix_distribution():
    ff = hq.FourierFeatures(50, 400, scale=3.0, seed=0)
    assert abs(np.std(ff.B) - 3.0) < 0.05


def test_bad_input():
    with pytest.raises(ValueError):
        hq.FourierFeatures(0, 3)
    with pytest.raises(ValueError):
        hq.FourierFeatures(2, 3, scale=-1.0)
    with pytest.raises(TypeError):
        hq.FourierFeatures(2, 3, trainable="yes")
    with pytest.raises(ValueError):
        hq.PeriodicEmbedding(2, periods=[1.0, -2.0])
    with pytest.raises(ValueError):
        hq.PeriodicEmbedding(2, periods=[1.0], axes=[5])
    with pytest.raises(TypeError, match="trainable"):
        hq.PeriodicEmbedding(2, periods=[1.0], trainable="yes")


@needs_torch
def test_frozen_and_trainable_parameters():
    """A frozen ``B`` is saved and used but not trained: in state_dict, not in
    parameters() nor in the curvature layout; the torch twin holds a buffer."""
    frozen, trained = _fourier_net(False), _fourier_net(True)
    assert "0.B" in frozen.state_dict() and "0.B" not in dict(frozen.named_parameters())
    assert [k for k, _ in frozen.named_buffers()] == ["0.B"]
    assert list(trained.state_dict()) == [k for k, _ in trained.named_parameters()]
    assert cv.parameter_layout(frozen).keys == tuple(k for k in trained.state_dict() if k != "0.B")
    tm = hq.to_torch(frozen)
    assert "B" in dict(tm[0].named_buffers()) and "B" not in dict(tm[0].named_parameters())
    tm = hq.to_torch(trained)
    assert "B" in dict(tm[0].named_parameters())
    # moving to torch with requires_grad keeps the frozen B out of the optimizer's reach
    t = _fourier_net(False).to("torch", requires_grad=True)
    assert not t[0].B.requires_grad and all(p.requires_grad for p in t.parameters())
    pe = hq.PeriodicEmbedding(3, periods=[1.0, 2.0], axes=[1, 2], trainable=True)
    assert [k for k, _ in pe.named_parameters()] == ["omega"]
    np.testing.assert_allclose(pe.omega, [2 * math.pi, math.pi])
    assert hq.PeriodicEmbedding.parameter_shapes(pe.config()) == {"omega": (2,)}


@needs_torch
@pytest.mark.parametrize("make", MAKES, ids=MAKE_IDS)
def test_curvature_vs_torch_func(make):
    net = make()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3))
    y = rng.standard_normal((4, 2))
    v = rng.standard_normal(cv.parameter_layout(net).size)
    want = twin_curvature_truth(net, x, y, v)
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cv.gradient(net, x, y, "mse"), want["gradient"], **tol)
    np.testing.assert_allclose(cv.per_example_gradients(net, x, y, "mse"), want["per_example"], **tol)
    np.testing.assert_allclose(cv.hvp(net, x, y, "mse", v), want["hvp"], **tol)
    np.testing.assert_allclose(cv.ggn_vp(net, x, y, "mse", v), want["ggn_vp"], **tol)
    A = want["per_example"]  # (N, P): the empirical Fisher is AᵀA / N
    np.testing.assert_allclose(cv.empirical_fisher_vp(net, x, y, "mse", v), A.T @ (A @ v) / len(x), **tol)


def test_all_libraries(lib):
    net = _fourier_net()
    pe = _periodic_net()
    pt = _periodic_trainable_net()
    x = _x(4, 3)
    for n in (net, pe, pt):
        want = n(x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)
        for mode in ("forward", "backward"):
            xl = lib.asarray(x)
            r = n(
                xl,
                gradient=True,
                hessian=True,
                laplacian=True,
                hessian_diagonal=True,
                mode=mode,
                backend=lib.backend,
            )
            lib.check(r.hessian, want.hessian.shape, xl)
            for name in ("value", "gradient", "hessian", "laplacian", "hessian_diagonal"):
                np.testing.assert_allclose(
                    lib.to_numpy(getattr(r, name)), getattr(want, name), rtol=1e-12, atol=1e-13
                )
    # the trainable frequencies' parameter passes in this library
    y = np.random.default_rng(1).standard_normal((4, 2))
    v = np.random.default_rng(2).standard_normal(cv.parameter_layout(pt).size)
    xl, yl, vl = lib.asarray(x), lib.asarray(y), lib.asarray(v)
    g = cv.gradient(pt, xl, yl, "mse", backend=lib.backend)
    hv = cv.hvp(pt, xl, yl, "mse", vl, backend=lib.backend)
    np.testing.assert_allclose(lib.to_numpy(g), cv.gradient(pt, x, y, "mse"), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lib.to_numpy(hv), cv.hvp(pt, x, y, "mse", v), rtol=1e-12, atol=1e-13)


def test_two_pi_convention():
    ff = hq.FourierFeatures(2, 1, seed=0)
    x = np.array([[0.3, -0.2]])
    z = 2 * math.pi * (x @ ff.B)
    np.testing.assert_allclose(ff(x).value, np.concatenate([np.sin(z), np.cos(z)], axis=1), rtol=1e-14)

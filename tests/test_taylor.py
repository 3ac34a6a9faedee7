"""Taylor convergence: every layer type x every activation x both modes,
judged by measured rates with :func:`hessquik_core.checks.taylor_check`;
and the check itself must catch wrong derivatives."""

from __future__ import annotations

import numpy as np
import pytest
from _reference import ACTIVATIONS, KINDS, build, representative_only_on_jax

import hessquik_core as hq
from hessquik_core.checks import TaylorReport, taylor_check

MODES = ("forward", "backward")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_taylor_every_layer_activation_mode(kind, act, mode, rng):
    net, d = build(kind, act)
    x = rng.normal(size=(4, d))
    rep = taylor_check(net, x, mode=mode, seed=1)
    assert rep.mode == mode
    assert rep.passed, str(rep)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["nested-NN", "QuadraticICNNLayer", "ICNNLayer-later"])
def test_taylor_with_directions(kind, mode, rng):
    net, d = build(kind, "tanh", seed=3)
    x = rng.normal(size=(3, d))
    rows = d if mode == "forward" else net.out_features
    V = rng.normal(size=(rows, 2))
    rep = taylor_check(net, x, mode=mode, directions=V, seed=2)
    assert rep.mode == mode
    assert rep.E1.shape[1] == (net.out_features if mode == "forward" else 2)
    assert rep.passed, str(rep)


@pytest.mark.parametrize("kind", ["nested-NN", "QuadraticICNNLayer", "ResnetLayer"])
def test_taylor_every_backend(kind, lib, rng):
    representative_only_on_jax(lib, kind)
    net, d = build(kind, "softplus", seed=5)
    x = lib.asarray(rng.normal(size=(3, d)))
    for mode in MODES:
        rep = taylor_check(net, x, mode=mode, seed=0, backend=lib.backend)
        assert rep.passed, str(rep)


def test_taylor_float32(rng):
    net, d = build("nested-NN", "sigmoid")
    rep = taylor_check(net, rng.normal(size=(5, d)).astype(np.float32), seed=0)
    assert rep.dtype == "float32"
    assert rep.passed, str(rep)


def test_report_table_and_fields(rng):
    net, d = build("ICNN-chain", "softplus")
    rep = taylor_check(net, rng.normal(size=(3, d)), seed=0, hs=[0.5, 0.25, 0.125, 0.0625])
    assert isinstance(rep, TaylorReport) and bool(rep) is rep.passed
    H, m = 4, net.out_features
    for a in (rep.E0, rep.E1, rep.E2, rep.floor):
        assert a.shape == (H, m)
    for a in (rep.orders0, rep.orders1, rep.orders2):
        assert a.shape == (H - 1, m)
    text = str(rep)
    assert "E1" in text and "order2" in text and "Laplacian" in text and "passed: True" in text
    assert len(text.splitlines()) == 2 + H + 4
    # E0 is first order, E1 second, E2 third: on the first pair the gaps show
    assert np.all(rep.E2 <= rep.E1 + 1e-15)


def test_same_seed_same_report(rng):
    net, d = build("SingleLayer", "tanh")
    x = rng.normal(size=(3, d))
    a, b = taylor_check(net, x, seed=7), taylor_check(net, x, seed=7)
    np.testing.assert_array_equal(a.E2, b.E2)


def test_exact_models_pass_as_exact(rng):
    """Linear network: E1 and E2 at round-off for every h; quadratic: E2 at round-off."""
    lin = hq.FullyConnectedNN([3, 4, 2], act="identity", seed=0)
    rep = taylor_check(lin, rng.normal(size=(4, 3)), seed=0)
    assert rep.passed, str(rep)
    assert set(rep.status1) == set(rep.status2) == {"exact"}
    assert np.all(np.isnan(rep.order1)) and np.all(np.isnan(rep.order2))
    assert "exact" in str(rep)
    quad = hq.NN(hq.SingleLayer(3, 4, seed=0), hq.QuadraticLayer(4, 2, seed=1))
    rep = taylor_check(quad, rng.normal(size=(4, 3)), seed=0)
    assert rep.passed and set(rep.status2) == {"exact"}, str(rep)
    assert set(rep.status1) == {"measured"} and np.all(rep.order1 > 1.9)


def test_float32_noise_is_measured(rng):
    """Below float64 the floor is the measured evaluation error, not eps |f|."""
    net, d = build("ICNN-chain", "tanh")
    x = rng.normal(size=(3, d))
    r64 = taylor_check(net, x, seed=0)
    r32 = taylor_check(net, x.astype(np.float32), seed=0)
    assert r32.passed and r64.passed
    eps32 = float(np.finfo(np.float32).eps)
    assert np.all(r32.floor > 0.1 * eps32 * np.abs(r64.E0).max())
    assert set(r32.status1) <= {"measured", "exact", "inconclusive"}


class _Corrupt:
    """Wrap a network and add ``delta`` to one derivative output."""

    def __init__(self, net, what: str, delta: float):
        self.net, self.what, self.delta = net, what, delta

    def __call__(self, x, **kw):
        res = self.net(x, **kw)
        a = getattr(res, self.what)
        if a is not None:
            setattr(res, self.what, a + self.delta)
        return res


@pytest.mark.parametrize("delta", [1e-1, 1e-4])
@pytest.mark.parametrize("mode", MODES)
def test_check_catches_wrong_gradient(delta, mode, rng):
    net, d = build("nested-NN", "tanh")
    rep = taylor_check(_Corrupt(net, "gradient", delta), rng.normal(size=(4, d)), mode=mode, seed=0)
    assert not rep.passed
    assert not np.all(rep.second_order_ok)  # E2 carries h * (gradient error)
    if delta > 1e-2:
        assert not np.any(rep.first_order_ok), str(rep)
        assert np.all(np.abs(rep.order1 - 1.0) < 0.2)


@pytest.mark.parametrize("delta", [1e-1, 1e-5])
@pytest.mark.parametrize("mode", MODES)
def test_check_catches_wrong_hessian(delta, mode, rng):
    net, d = build("QuadraticICNNLayer", "softplus")
    rep = taylor_check(_Corrupt(net, "hessian", delta), rng.normal(size=(4, d)), mode=mode, seed=0)
    assert not rep.passed
    assert np.all(rep.first_order_ok)
    assert not np.any(rep.second_order_ok), str(rep)
    if delta > 1e-2:
        assert np.all(np.abs(rep.order2 - 2.0) < 0.2)


@pytest.mark.parametrize("mode", MODES)
def test_check_catches_wrong_laplacian(mode, rng):
    net, d = build("ICNN-chain", "sigmoid")
    rep = taylor_check(_Corrupt(net, "laplacian", 1e-4), rng.normal(size=(4, d)), mode=mode, seed=0)
    assert np.all(rep.first_order_ok) and np.all(rep.second_order_ok)
    assert not rep.laplacian.passed and not rep.passed, str(rep)
    assert not rep.laplacian.trace_ok


@pytest.mark.parametrize("what", ["gradient", "hessian", "laplacian"])
def test_check_catches_wrong_derivatives_in_float32(what, rng):
    net, d = build("nested-NN", "tanh")
    rep = taylor_check(_Corrupt(net, what, 1e-2), rng.normal(size=(4, d)).astype(np.float32), seed=0)
    assert not rep.passed, str(rep)


def test_nan_fails(rng):
    net, d = build("SingleLayer", "tanh")
    x = rng.normal(size=(3, d))
    x[1, 0] = np.nan
    rep = taylor_check(net, x, seed=0, laplacian=False)
    assert not rep.passed
    assert "non-finite" in set(rep.status1) and "non-finite" in str(rep)


def test_laplacian_optional(rng):
    net, d = build("ResnetLayer", "sin")
    rep = taylor_check(net, rng.normal(size=(2, d)), seed=0, laplacian=False)
    assert rep.laplacian is None and rep.passed
    assert "Laplacian" not in str(rep)


def test_bad_arguments(rng):
    net, d = build("SingleLayer", "tanh")
    x = rng.normal(size=(2, d))
    for hs in ([0.5], [0.5, 0.5], [0.1, 0.2], [0.5, -0.1], [[0.5, 0.25]], [0.5, np.nan]):
        with pytest.raises(ValueError, match="hs must"):
            taylor_check(net, x, hs=hs)
    with pytest.raises(ValueError, match="at least one example"):
        taylor_check(net, np.zeros((0, d)))
    with pytest.raises(ValueError, match="mode must be one of"):
        taylor_check(net, x, mode="sideways")
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        taylor_check(net, np.zeros((2, 4)))


def test_input_not_modified(rng):
    net, d = build("nested-NN", "tanh")
    x = rng.normal(size=(3, d))
    V = rng.normal(size=(d, 2))
    x0, V0 = x.copy(), V.copy()
    taylor_check(net, x, directions=V, seed=0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(V, V0)

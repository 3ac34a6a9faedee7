"""Activations: values and first two derivatives against torch autograd,
overflow-free tails, order handling, the name registry and every backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _reference import ACTIVATIONS, torch_act

import hessquik_core as hq
from hessquik_core.activations import get_activation

torch = pytest.importorskip("torch")

ALL = [get_activation(name) for name in ACTIVATIONS] + [
    hq.Softplus(beta=2.5),
    hq.Softplus(beta=0.5, threshold=5.0),
]
IDS = [a.name + "".join(f"-{k}{v:g}" for k, v in a.config().items()) for a in ALL]


def _grid(lo=-8.0, hi=8.0, n=161):
    # avoid the softplus switch points beta*z == threshold exactly
    return np.linspace(lo, hi, n) + 1e-3


def _autograd(act, z: np.ndarray):
    """(σ, σ', σ'') at z by torch autograd on the reference formula."""
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    s = torch_act(act, zt)
    (d1,) = torch.autograd.grad(s.sum(), zt, create_graph=True)
    if d1.requires_grad:
        (d2,) = torch.autograd.grad(d1.sum(), zt)
    else:  # σ' constant: autograd keeps no graph
        d2 = torch.zeros_like(zt)
    return s.detach().numpy(), d1.detach().numpy(), d2.detach().numpy()


@pytest.mark.parametrize("act", ALL, ids=IDS)
def test_matches_autograd_float64(act):
    z = _grid()
    s, s1, s2 = act(z, 2)
    t, t1, t2 = _autograd(act, z)
    np.testing.assert_allclose(s, t, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(s1, t1, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(s2, t2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", ALL, ids=IDS)
def test_taylor_rates_scalar(act):
    """σ(z+h) - σ - hσ' = O(h²) and - ½h²σ'' = O(h³), pointwise on a grid."""
    z = _grid(-4.0, 4.0, 33)
    s, s1, s2 = act(z, 2)
    hs = 2.0 ** -np.arange(2, 9)
    e1 = np.array([np.max(np.abs(act(z + h, 0)[0] - s - h * s1)) for h in hs])
    e2 = np.array([np.max(np.abs(act(z + h, 0)[0] - s - h * s1 - 0.5 * h * h * s2)) for h in hs])
    floor = 1e3 * np.finfo(np.float64).eps * max(1.0, np.max(np.abs(s)))
    for e, expected in ((e1, 2.0), (e2, 3.0)):
        ok = e > floor
        if ok.sum() < 2:
            continue  # exact (identity, quadratic)
        rates = np.log2(e[ok][:-1] / e[ok][1:])
        assert np.median(rates) > expected - 0.3, (e, rates)


@pytest.mark.parametrize("act", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_overflow_in_tails(act, dtype):
    """|z| up to 1e4: finite, no floating-point warnings, correct limits."""
    z = np.array([-1e4, -1e3, -100.0, -50.0, 50.0, 100.0, 1e3, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        s, s1, s2 = act(z, 2)
    for a in (s, s1, s2):
        assert a.dtype == dtype
        assert np.all(np.isfinite(a))
    if act.name in ("sigmoid", "tanh"):
        assert np.all(np.abs(s1) <= 1.0) and np.all(s1 >= 0)
    if act.name in ("softplus", "silu", "antitanh"):
        np.testing.assert_allclose(
            s[z > 0], np.abs(z[z > 0]) if act.name != "antitanh" else z[z > 0], rtol=1e-6
        )


def test_sigmoid_derivative_keeps_relative_precision_in_tail():
    # σ'(-30) = e^-30/(1+e^-30)^2 ≈ 9.36e-14: no cancellation to zero
    s, s1, s2 = hq.Sigmoid()(np.array([-30.0, 30.0]), 2)
    expected = np.exp(-30.0) / (1.0 + np.exp(-30.0)) ** 2
    np.testing.assert_allclose(s1, expected, rtol=1e-14)
    np.testing.assert_allclose(np.abs(s2), expected * np.tanh(15.0), rtol=1e-13)


@pytest.mark.parametrize("act", ALL, ids=IDS)
def test_orders(act):
    z = _grid(n=11)
    full = act(z, 2)
    s0 = act(z, 0)
    s1 = act(z, 1)
    assert s0[1] is None and s0[2] is None
    assert s1[2] is None and s1[1] is not None
    np.testing.assert_array_equal(s0[0], full[0])
    np.testing.assert_array_equal(s1[1], full[1])
    for bad in (3, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="order must be 0, 1 or 2"):
            act(z, bad)


@pytest.mark.parametrize("act", ALL, ids=IDS)
def test_every_backend(act, lib, rng):
    z_np = rng.normal(size=(5, 4)) * 3
    z = lib.asarray(z_np)
    out = act(z, 2)
    ref = act(z_np, 2)
    for a, r in zip(out, ref):
        lib.check(a, z_np.shape, like=z)
        np.testing.assert_allclose(lib.to_numpy(a), r, rtol=1e-13, atol=1e-15)
    z32 = lib.asarray(z_np.astype(np.float32))
    for a in act(z32, 2):
        lib.check(a, z_np.shape, like=z32)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_registry(name):
    a = get_activation(name)
    assert a.name == name
    assert get_activation(name.upper()) == a
    assert get_activation(type(a)) == a
    assert get_activation(a) is a
    assert type(a)(**a.config()) == a


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        get_activation("relu")
    with pytest.raises(TypeError, match="got int"):
        get_activation(3)
    with pytest.raises(TypeError):
        get_activation(int)


def test_softplus_parameters():
    a = hq.Softplus(beta=3.0, threshold=7.0)
    assert a.config() == {"beta": 3.0, "threshold": 7.0}
    assert hq.Softplus(**a.config()) == a
    assert a != hq.Softplus()
    for beta in (0.0, -1.0):
        with pytest.raises(ValueError, match="beta must be positive"):
            hq.Softplus(beta=beta)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.beta = 2.0  # type: ignore[misc]
    # linear above the threshold exactly as torch's softplus
    z = np.array([2.0, 2.4, 2.5, 3.0])
    s, s1, s2 = a(z, 2)
    np.testing.assert_allclose(s, torch.nn.functional.softplus(torch.tensor(z), 3.0, 7.0).numpy(), rtol=1e-15)
    np.testing.assert_array_equal(s1[z * 3 > 7], 1.0)
    np.testing.assert_array_equal(s2[z * 3 > 7], 0.0)

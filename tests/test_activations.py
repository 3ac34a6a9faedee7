"""Activations: values and first two derivatives against torch autograd,
overflow-free tails, order handling, the name registry and every backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _optional import needs_torch, torch
from _reference import ACTIVATIONS, torch_act

import hessquik_core as hq
from hessquik_core.activations import get_activation

ALL = [get_activation(name) for name in ACTIVATIONS] + [
    hq.Softplus(beta=2.5),
    hq.Softplus(beta=0.5, threshold=5.0),
    hq.GELU(),
    hq.GELU(approximate="tanh"),
    hq.Mish(),
    hq.Gaussian(),
    hq.LogSigmoid(),
    # smooth but for a kink at 0, which the grids here never hit (tests/test_activation_kinks.py)
    hq.ELU(),
    hq.ELU(alpha=0.5),
    hq.CELU(alpha=2.0),
    hq.SELU(),
    hq.Softsign(),
]
IDS = [
    a.name + "".join(f"-{k}{v:g}" if isinstance(v, float) else f"-{v}" for k, v in a.config().items())
    for a in ALL
]


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


@needs_torch
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


@needs_torch
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


# --------------------------------------------------------------------------
# GELU (exact and tanh), Mish, Gaussian; user-defined activations
# --------------------------------------------------------------------------

NEW = [hq.GELU(), hq.GELU(approximate="tanh"), hq.Mish(), hq.Gaussian()]
NEW_IDS = ["gelu", "gelu-tanh", "mish", "gaussian"]


def _torch_module(act):
    if act.name == "gelu":
        return torch.nn.GELU(approximate=act.approximate)
    if act.name == "mish":
        return torch.nn.Mish()
    return lambda z: torch.exp(-(z * z))


@needs_torch
@pytest.mark.parametrize("act", NEW, ids=NEW_IDS)
def test_new_match_torch_modules_float64(act):
    """σ against torch.nn.GELU / nn.Mish themselves; σ', σ'' by autograd on them."""
    z = _grid(-12.0, 12.0, 481)
    zt = torch.tensor(z, requires_grad=True)
    t = _torch_module(act)(zt)
    (t1,) = torch.autograd.grad(t.sum(), zt, create_graph=True)
    (t2,) = torch.autograd.grad(t1.sum(), zt)
    s, s1, s2 = act(z, 2)
    np.testing.assert_allclose(s, t.detach().numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(s1, t1.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(s2, t2.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", NEW, ids=NEW_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_overflow_safe_and_limits(act, dtype):
    """|z| >= 1e3 (up to 1e4): finite, no warnings, and the right limits."""
    z = np.array([-1e4, -3e3, -1e3, 1e3, 3e3, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        s, s1, s2 = act(z, 2)
    for a in (s, s1, s2):
        assert a.dtype == dtype and np.all(np.isfinite(a))
    np.testing.assert_array_equal(s2, 0.0)
    if act.name == "gaussian":
        np.testing.assert_array_equal(s, 0.0)
        np.testing.assert_array_equal(s1, 0.0)
    else:  # GELU, Mish -> relu in the tails: σ = max(z, 0), σ' = 1[z > 0]
        np.testing.assert_array_equal(s, np.maximum(z, 0))
        np.testing.assert_array_equal(s1, (z > 0).astype(dtype))


@pytest.mark.parametrize("act", NEW, ids=NEW_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_finite_up_to_the_largest_float(act, dtype):
    big = float(np.finfo(dtype).max)
    z = np.array([-big, -1e30, -1e9, 1e9, 1e30, big], dtype=dtype)
    # beyond the 1e4 of the contract z² may overflow to inf (harmlessly: it only
    # enters exp(-z²)), but no inf * 0 = nan and no wrong limit may follow
    with np.errstate(over="ignore", invalid="raise", divide="raise", under="ignore"):
        out = act(z, 2)
    for a in out:
        assert np.all(np.isfinite(a))
    if act.name != "gaussian":
        np.testing.assert_array_equal(out[0], np.maximum(z, 0))


@pytest.mark.parametrize("act", NEW, ids=NEW_IDS)
def test_new_float32_against_float64(act):
    z = _grid(-10.0, 10.0, 401)
    ref = act(z, 2)
    out = act(z.astype(np.float32), 2)
    for a, r in zip(out, ref):
        assert a.dtype == np.float32
        np.testing.assert_allclose(
            a, r, rtol=0, atol=8 * np.finfo(np.float32).eps * max(1.0, np.abs(r).max())
        )


def test_new_tails_keep_relative_precision():
    # GELU(-10) = -10 Φ(-10) = -10 erfc(10/√2)/2 ≈ -7.62e-23: no 1 + erf cancellation
    import math

    s, s1, _ = hq.GELU()(np.array([-10.0]), 1)
    # (erfc's relative condition number at 10/√2 is 2x² = 100: the rounding of
    # 10/√2 alone is worth 1e-14; 1 + erf would give 0 or garbage here)
    np.testing.assert_allclose(s, -10.0 * 0.5 * math.erfc(10.0 / math.sqrt(2.0)), rtol=1e-13)
    # Mish(-40) = -40 tanh(log1p(e^-40)) ≈ -40 e^-40
    s, _, _ = hq.Mish()(np.array([-40.0]), 0)
    np.testing.assert_allclose(s, -40.0 * math.tanh(math.log1p(math.exp(-40.0))), rtol=1e-14)


@pytest.mark.parametrize("act", NEW, ids=NEW_IDS)
def test_new_every_backend(act, lib, rng):
    z_np = rng.normal(size=(5, 4)) * 3
    z = lib.asarray(z_np)
    ref = act(z_np, 2)
    for a, r in zip(act(z, 2), ref):
        lib.check(a, z_np.shape, like=z)
        np.testing.assert_allclose(lib.to_numpy(a), r, rtol=1e-13, atol=1e-15)
    z32 = lib.asarray(z_np.astype(np.float32))
    for a, r in zip(act(z32, 2), ref):
        lib.check(a, z_np.shape, like=z32)
        np.testing.assert_allclose(lib.to_numpy(a), r, rtol=0, atol=1e-5 * max(1.0, np.abs(r).max()))


@pytest.mark.parametrize("act", NEW, ids=NEW_IDS)
def test_new_taylor_rates_via_checks(act):
    report = hq.checks.check_activation(act)
    report.assert_passed()
    assert np.nanmin(report.order1) > 1.9 and np.nanmin(report.order2) > 2.8
    assert report.fd_error1 < 1e-8 and report.fd_error2 < 1e-8


@pytest.mark.parametrize("name, cls", [("gelu", hq.GELU), ("mish", hq.Mish), ("gaussian", hq.Gaussian)])
def test_new_registry(name, cls):
    assert get_activation(name) == cls()
    assert get_activation(name.upper()) == cls()
    assert type(get_activation(name))(**get_activation(name).config()) == cls()
    assert hq.activations.GELU is hq.GELU


def test_gelu_options():
    assert hq.GELU().config() == {"approximate": "none"}
    assert hq.GELU(approximate="tanh") != hq.GELU()
    for bad in ("exact", "Tanh", None, 1):
        with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
            hq.GELU(approximate=bad)


def _softsin():
    """A user activation z + sin(z)/2 (monotone), in both call styles."""
    return hq.activations.custom(
        lambda z, xp: z + 0.5 * xp.sin(z),
        lambda z, xp: 1.0 + 0.5 * xp.cos(z),
        lambda z, xp: -0.5 * xp.sin(z),
        name="softsin",
    )


def test_custom_activation(rng):
    act = _softsin()
    z = rng.normal(size=(4, 3))
    s, s1, s2 = act(z, 2)
    np.testing.assert_allclose(s, z + 0.5 * np.sin(z), rtol=1e-15)
    np.testing.assert_allclose(s2, -0.5 * np.sin(z), rtol=1e-15)
    assert act(z, 0)[1] is None and act(z, 1)[2] is None
    assert repr(act) == "custom(name='softsin')" and act.name == "softsin"
    # plain one-argument functions (NumPy only) and constants
    quad = hq.activations.custom(lambda z: 0.5 * z * z, lambda z: z, lambda z: 1.0, name="q")
    np.testing.assert_array_equal(quad(z, 2)[2], np.ones_like(z))
    assert bool(hq.checks.check_activation(quad))
    assert bool(hq.checks.check_activation(act))
    with pytest.raises(TypeError, match="df must be callable"):
        hq.activations.custom(np.sin, 3.0, np.sin)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        hq.activations.custom(np.sin, np.cos, np.sin, name="")
    wrong = hq.activations.custom(np.sin, lambda z: np.cos(z)[:1], np.sin, name="w")
    with pytest.raises(ValueError, match=r"df returned shape \(1, 3\), expected the input's shape \(4, 3\)"):
        wrong(z, 1)


def test_custom_activation_every_backend(lib, rng):
    act = _softsin()
    z_np = rng.normal(size=(3, 2))
    z = lib.asarray(z_np)
    for a, r in zip(act(z, 2), act(z_np, 2)):
        lib.check(a, z_np.shape, like=z)
        np.testing.assert_allclose(lib.to_numpy(a), r, rtol=1e-14)


class _Cubic(hq.activations.Activation):
    """The subclass route: σ = z³/3 + z."""

    name = "cubic"

    def _eval(self, z, order, xp):
        s = z * z * z / 3.0 + z
        if order == 0:
            return s, None, None
        return s, z * z + 1.0, (2.0 * z) if order == 2 else None


def test_check_activation_detects_wrong_derivatives():
    good = _Cubic()
    assert hq.checks.check_activation(good).passed

    class WrongSecond(_Cubic):
        def _eval(self, z, order, xp):
            s, s1, s2 = super()._eval(z, order, xp)
            return s, s1, None if s2 is None else z  # should be 2z

    class WrongFirst(_Cubic):
        def _eval(self, z, order, xp):
            s, s1, s2 = super()._eval(z, order, xp)
            return s, None if s1 is None else s1 * 1.001, s2

    r2 = hq.checks.check_activation(WrongSecond())
    assert r2.first_order_ok and not r2.second_order_ok and not r2
    r1 = hq.checks.check_activation(WrongFirst())
    assert not r1.first_order_ok and not r1
    with pytest.raises(AssertionError, match="FAILED"):
        r1.assert_passed()
    assert "passed: False" in str(r1)


def test_check_activation_tails_and_consistency():
    blowup = hq.activations.custom(np.exp, np.exp, np.exp, name="exp")
    with np.errstate(over="ignore"):
        r = hq.checks.check_activation(blowup)
    assert r.first_order_ok and r.second_order_ok
    assert r.tails_ok is False and not r.passed
    assert hq.checks.check_activation(blowup, tails=False).tails_ok is None
    # float64 result for float32 input: not consistent with the contract
    up = hq.activations.custom(
        lambda z: np.asarray(np.sin(z), dtype=np.float64), np.cos, lambda z: -np.sin(z), name="up"
    )
    r = hq.checks.check_activation(up)
    assert not r.consistent and not r.passed
    with pytest.raises(ValueError, match="z must be a non-empty 1-D array"):
        hq.checks.check_activation("tanh", z=np.ones((2, 2)))
    with pytest.raises(ValueError, match="hs must be"):
        hq.checks.check_activation("tanh", hs=[1e-3, 1e-2])
    with pytest.raises(TypeError):
        hq.checks.check_activation(3)


def test_new_under_jax_jit():
    """GELU's erf comes from JAX itself (never through NumPy), so jit traces it."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import array_api_compat as aac
    import jax.numpy as jnp

    from hessquik_core.activations import _backend_of

    assert _backend_of(aac.array_namespace(jnp.ones(1))).name == "generic"
    assert _backend_of(aac.array_namespace(np.ones(1))).name == "numpy"
    assert _backend_of(aac.array_namespace(torch.ones(1))).name == "torch"
    z = np.linspace(-4.0, 4.0, 9)
    for act in NEW:
        f = jax.jit(lambda a, act=act: act(a, 2))
        for got, ref in zip(f(jnp.asarray(z)), act(z, 2)):
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-13, atol=1e-15)
    net = hq.FullyConnectedNN([2, 5, 1], act=hq.GELU(), seed=0)
    x = np.random.default_rng(0).normal(size=(3, 2))
    lap = jax.jit(lambda a: net(a, laplacian=True).laplacian)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(lap), net(x, laplacian=True).laplacian, rtol=1e-13, atol=1e-14)


def _torch_reference(act, z):
    """σ(z) in torch for autograd at orders 3 and 4.

    ``torch_act`` everywhere but for the tanh-approximated GELU: torch's own
    ``gelu`` backward forms :math:`1 - \\tanh^2 u`, which cancels in the upper
    tail, and differentiating it twice more leaves errors of 2e-12 relative at
    z ≈ 7 (against 50-digit mpmath, where the closed forms here are within
    3e-15). The same function written as :math:`z - z\\,s(-2u)` for z ≥ 0 and
    :math:`z\\,s(2u)` below (``s`` the sigmoid, whose autograd is exact on the
    side where it is small) has well-conditioned derivatives of every order.
    """
    if act.name == "gelu" and act.approximate == "tanh":
        u = 0.7978845608028654 * (z + 0.044715 * z**3)
        return torch.where(z >= 0, z - z * torch.sigmoid(-2.0 * u), z * torch.sigmoid(2.0 * u))
    return torch_act(act, z)


def _autograd_orders(act, z: np.ndarray, order: int):
    """``(σ, σ', …, σ⁽ᵒʳᵈᵉʳ⁾)`` at z by repeated torch autograd on the reference formula."""
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    out = [_torch_reference(act, zt)]
    for _ in range(order):
        last = out[-1]
        if not last.requires_grad:  # constant derivative: autograd keeps no graph
            out.append(torch.zeros_like(zt))
            continue
        (g,) = torch.autograd.grad(last.sum(), zt, create_graph=True)
        out.append(g)
    return [o.detach().numpy() for o in out]


HIGH = [a for a in ALL if a.max_order >= 4]


def test_every_builtin_supplies_order_four():
    """Issue 23: σ‴ and σ⁗ for every built-in activation (so the test below covers all)."""
    lacking = [name for name, cls in hq.activations.ACTIVATIONS.items() if cls.max_order < 4]
    assert lacking == []
    assert len(HIGH) == len(ALL)
    assert {a.name for a in ALL} >= {n for n, c in hq.activations.ACTIVATIONS.items() if c.by_name}


@needs_torch
@pytest.mark.parametrize("act", HIGH, ids=[i for a, i in zip(ALL, IDS) if a.max_order >= 4])
def test_derivatives_up_to_order_four_match_autograd(act):
    z = _grid(-8.0, 8.0, 161)
    got = act.derivatives(z, 4)
    want = _autograd_orders(act, z, 4)
    assert len(got) == 5
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == np.float64 and g.shape == z.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13, err_msg=f"order {k}")
    # orders 0-2 are those of the order-2 call, bit for bit
    for g, w in zip(got, act(z, 2)):
        np.testing.assert_array_equal(g, w)
    # the caller's σ(z) is reused and returned as is; the derivatives do not change
    value = act(z, 0)[0]
    again = act.derivatives(z, 3, value=value)
    assert again[0] is value and len(again) == 4
    for g, w in zip(again[1:], want[1:4]):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("act", HIGH, ids=[i for a, i in zip(ALL, IDS) if a.max_order >= 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_derivatives_up_to_order_four_in_the_tails(act, dtype):
    """|z| up to 1e4: σ‴, σ⁗ finite, without floating-point warnings, of the input's dtype;
    negligible in the tails of every activation whose σ″ tends to 0."""
    z = np.array([-1e4, -3e3, -1e3, -100.0, -50.0, 50.0, 100.0, 1e3, 3e3, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        out = act.derivatives(z, 4)
    for a in out:
        assert a.dtype == dtype and a.shape == z.shape
        assert np.all(np.isfinite(a))
    if act.name == "softsign":  # algebraic decay: 6 / (1 + |z|)^4, -24 sign(z) / (1 + |z|)^5
        r = 1.0 / (1.0 + np.abs(z.astype(np.float64)))
        np.testing.assert_allclose(out[3], 6.0 * r**4, rtol=1e-5)
        np.testing.assert_allclose(out[4], -24.0 * np.sign(z) * r**5, rtol=1e-5)
    elif act.name not in ("sin", "quadratic"):  # (softplus with beta = 1/2 decays as e^{-|z|/2})
        assert np.all(np.abs(out[3][np.abs(z) >= 1e3].astype(np.float64)) < 1e-100)
        assert np.all(np.abs(out[4][np.abs(z) >= 1e3].astype(np.float64)) < 1e-100)


@pytest.mark.parametrize("act", HIGH, ids=[i for a, i in zip(ALL, IDS) if a.max_order >= 4])
def test_derivatives_float32_against_float64(act):
    z = _grid(-10.0, 10.0, 401)
    ref = act.derivatives(z, 4)
    out = act.derivatives(z.astype(np.float32), 4)
    for k, (a, r) in enumerate(zip(out, ref)):
        assert a.dtype == np.float32
        # the float32 rounding of z alone moves σ⁽ᵏ⁾ by eps |z| |σ⁽ᵏ⁺¹⁾|: measured against
        # the largest |σ⁽ᵏ⁾| on the grid, 32 eps covers it for every activation
        np.testing.assert_allclose(
            a, r, rtol=0, atol=32 * np.finfo(np.float32).eps * max(1.0, np.abs(r).max()), err_msg=f"order {k}"
        )


@pytest.mark.parametrize("act", HIGH, ids=[i for a, i in zip(ALL, IDS) if a.max_order >= 4])
def test_derivatives_every_backend(act, lib, rng):
    z_np = rng.normal(size=(5, 4)) * 3
    ref = act.derivatives(z_np, 4)
    for dtype in (np.float64, np.float32):
        z = lib.asarray(z_np.astype(dtype))
        out = act.derivatives(z, 4)
        assert len(out) == 5
        for k, (a, r) in enumerate(zip(out, ref)):
            lib.check(a, z_np.shape, like=z)
            tol = 1e-13 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(
                lib.to_numpy(a), r, rtol=0, atol=tol * max(1.0, np.abs(r).max()), err_msg=f"order {k}"
            )


def test_derivatives_low_orders_are_the_call():
    act = hq.Tanh()
    z = _grid()
    for order in (0, 1, 2):
        got = act.derivatives(z, order)
        assert len(got) == order + 1
        for g, w in zip(got, act(z, order)):
            np.testing.assert_array_equal(g, w)


def test_derivatives_refuse_orders_the_activation_lacks():
    act = _Cubic()
    assert act.max_order == 2
    with pytest.raises(ValueError, match=r"_Cubic.*up to order 2, order 3 was requested"):
        act.derivatives(np.zeros(3), 3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            hq.Tanh().derivatives(np.zeros(3), bad)

"""hq.activations.custom (issues 23 and 24): optional σ‴ and σ⁗, backend-agnostic
functions (xp handed in), a clear error for NumPy-only functions on other arrays,
saving as a registered class (never code), and to_torch / from_torch."""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch, torch

import hessquik_core as hq
from hessquik_core.activations import ACTIVATIONS


def _fns():
    """σ = z + sin(z)/2 and its derivatives, in the three call styles."""
    kw = (
        lambda z, xp: z + 0.5 * xp.sin(z),
        lambda z, xp: 1.0 + 0.5 * xp.cos(z),
        lambda z, xp: -0.5 * xp.sin(z),
        lambda z, xp: -0.5 * xp.cos(z),
        lambda z, xp: 0.5 * xp.sin(z),
    )

    def f(z, ns):  # the namespace as a second positional parameter, any name
        return z + 0.5 * ns.sin(z)

    def df(z, ns):
        return 1.0 + 0.5 * ns.cos(z)

    pos = (
        f,
        df,
        lambda z, ns: -0.5 * ns.sin(z),
        lambda z, ns: -0.5 * ns.cos(z),
        lambda z, ns: 0.5 * ns.sin(z),
    )
    return kw, pos


def _reference(z):
    return [z + 0.5 * np.sin(z), 1.0 + 0.5 * np.cos(z), -0.5 * np.sin(z), -0.5 * np.cos(z), 0.5 * np.sin(z)]


@pytest.mark.parametrize("style", ["kw", "pos"])
@pytest.mark.parametrize("given", [2, 3, 4])
def test_optional_third_and_fourth_derivatives(style, given, rng):
    fns = _fns()[0 if style == "kw" else 1]
    act = hq.activations.custom(*fns[: given + 1], name="softsin")
    assert act.max_order == given
    z = rng.normal(size=(4, 3))
    got = act.derivatives(z, given)
    assert len(got) == given + 1
    for g, w in zip(got, _reference(z)):
        np.testing.assert_allclose(g, w, rtol=1e-15, atol=1e-16)
    if given < 4:
        with pytest.raises(ValueError, match=f"up to order {given}, order {given + 1} was requested"):
            act.derivatives(z, given + 1)
    report = hq.checks.check_activation(act)
    report.assert_passed()
    assert report.max_order == given


def test_wrong_third_derivative_is_caught_by_the_check():
    kw, _ = _fns()
    bad = hq.activations.custom(*kw[:3], lambda z, xp: -0.5 * xp.cos(z) + 1e-3 * z, name="bad")
    r = hq.checks.check_activation(bad)
    assert r.order_ok[1] and r.order_ok[2] and not r.order_ok[3] and not r


def test_d4f_needs_d3f_and_functions_must_be_callable():
    kw, _ = _fns()
    with pytest.raises(ValueError, match="d4f .* needs d3f"):
        hq.activations.custom(*kw[:3], None, kw[4])
    with pytest.raises(TypeError, match="d3f must be callable, got float"):
        hq.activations.custom(*kw[:3], 1.0)


@pytest.mark.parametrize("style", ["kw", "pos"])
def test_backend_agnostic_on_every_backend(style, lib, rng):
    act = hq.activations.custom(*_fns()[0 if style == "kw" else 1], name="softsin")
    z_np = rng.normal(size=(3, 2))
    for dtype in (np.float64, np.float32):
        z = lib.asarray(z_np.astype(dtype))
        for a, r in zip(act.derivatives(z, 4), _reference(z_np)):
            lib.check(a, z_np.shape, like=z)
            np.testing.assert_allclose(
                lib.to_numpy(a), r, rtol=1e-6 if dtype == np.float32 else 1e-15, atol=1e-7
            )


@needs_torch
def test_numpy_only_function_on_torch_says_to_accept_xp():
    """Issue 24: no bare 'unsupported operand type(s) for *: numpy.ndarray and Tensor'."""
    c = np.float64(0.5)

    def f(z):  # NumPy only: an ndarray constant times the input
        return np.asarray([c]) * z + np.asarray(np.sin(np.asarray(z)))

    act = hq.activations.custom(f, lambda z: 0.5 + np.cos(z), lambda z: -np.sin(z), name="np_only")
    np.testing.assert_allclose(act(np.ones(3), 0)[0], 0.5 + np.sin(1.0))  # fine on NumPy
    zt = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(
        TypeError,
        match=r"custom activation 'np_only': f\(z\) is called without the array namespace"
        r".*def f\(z, xp\): return xp\.sin\(z\)",
    ):
        act(zt, 0)
    # a NumPy-only function that returns a NumPy array for a torch input: refused the same way
    leaky = hq.activations.custom(lambda z: np.zeros(tuple(z.shape)), np.cos, np.sin, name="leaky")
    with pytest.raises(TypeError, match=r"given a Tensor, it returned a ndarray"):
        leaky(torch.ones(3, dtype=torch.float64), 0)
    # plain arithmetic needs no namespace: it runs on torch as written
    quad = hq.activations.custom(lambda z: 0.5 * z * z, lambda z: z, lambda z: 1.0, name="q")
    out = quad(torch.ones(2, dtype=torch.float64), 2)
    assert all(isinstance(a, torch.Tensor) for a in out)


# --------------------------------------------------------------------------
# saving: a registered class, never code
# --------------------------------------------------------------------------


@pytest.fixture
def registered():
    kw, _ = _fns()
    act = hq.activations.custom(*kw, name="softsin", register=True)
    try:
        yield act
    finally:
        del ACTIVATIONS["softsin"]


def test_registered_custom_saves_and_loads_by_name(registered, tmp_path):
    act = registered
    assert type(act).__name__ == "Custom_softsin" and ACTIVATIONS["softsin"] is type(act)
    assert hq.activations.get_activation("softsin") == act and act.max_order == 4
    net = hq.FullyConnectedNN([3, 5, 2], act="softsin", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3))
    ref = net(x, gradient=True, laplacian=True)
    hq.save(net, tmp_path / "n.hq")
    # the file holds the name and no code
    raw = (tmp_path / "n.hq").read_bytes()
    assert b"softsin" in raw and b"lambda" not in raw and b"sin(z)" not in raw
    back = hq.load(tmp_path / "n.hq")
    assert back.blocks[0].act == act
    np.testing.assert_array_equal(back(x, laplacian=True).laplacian, ref.laplacian)


def test_loading_where_it_is_not_registered_is_refused(registered, tmp_path):
    net = hq.NN(hq.SingleLayer(2, 2, act=registered))
    hq.save(net, tmp_path / "n.hq")
    del ACTIVATIONS["softsin"]  # a fresh process that did not register it
    try:
        with pytest.raises(hq.io.FileFormatError, match="unknown activation 'softsin'"):
            hq.load(tmp_path / "n.hq")
    finally:
        ACTIVATIONS["softsin"] = type(registered)


def test_registering_again_replaces_a_custom_but_never_a_builtin(registered):
    kw, _ = _fns()
    again = hq.activations.custom(*kw[:3], name="softsin", register=True)  # a notebook cell run twice
    assert ACTIVATIONS["softsin"] is type(again) and again.max_order == 2
    for name in ("tanh", "gelu", "relu"):
        with pytest.raises(ValueError, match=f"the name {name!r} is taken"):
            hq.activations.custom(*kw[:3], name=name, register=True)
    for bad in ("Soft_sin", "soft-sin", "2x", "myactivation"):
        with pytest.raises(ValueError, match="lower-case letters and digits"):
            hq.activations.custom(*kw[:3], name=bad, register=True)


# --------------------------------------------------------------------------
# to_torch / from_torch
# --------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("register", [False, True])
def test_to_torch_evaluates_the_activation_through_torch(register, rng):
    from hessquik_core.activations.torch_modules import ActivationModule

    kw, _ = _fns()
    act = hq.activations.custom(*kw, name="softsin2", register=register)
    try:
        net = hq.FullyConnectedNN([3, 6, 1], act=act, seed=1)
        tm = hq.to_torch(net)
        assert type(tm[1]) is ActivationModule and "softsin2" in repr(tm)
        x = rng.standard_normal((5, 3))
        xt = torch.tensor(x, requires_grad=True)
        y = tm(xt)
        np.testing.assert_allclose(y.detach().numpy(), net(x).value, rtol=1e-14, atol=1e-15)
        # differentiable by torch: autograd's input gradient equals ours
        (g,) = torch.autograd.grad(y.sum(), xt)
        np.testing.assert_allclose(g.numpy(), net(x, gradient=True).gradient[..., 0], rtol=1e-13, atol=1e-14)
        back = hq.from_torch(tm)
        assert back.blocks[0].act == act
        np.testing.assert_allclose(
            back(x, laplacian=True).laplacian, net(x, laplacian=True).laplacian, rtol=1e-14, atol=1e-15
        )
    finally:
        ACTIVATIONS.pop("softsin2", None)


@needs_torch
def test_every_registered_activation_has_a_torch_twin():
    """One mechanism: the twin is found through the activation class, for every one."""
    for name, cls in ACTIVATIONS.items():
        mod = cls().to_torch()
        if name == "identity":
            assert mod is None
            continue
        z = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
        np.testing.assert_allclose(
            mod(z).numpy(), cls()(z.numpy(), 0)[0], rtol=1e-14, atol=1e-15, err_msg=name
        )
    from hessquik_core import interop
    from hessquik_core.activations import torch_modules

    for name in ("AntiTanh", "Quadratic", "Sin"):  # the former home keeps working
        assert getattr(interop, name) is getattr(torch_modules, name)
    assert hq.Gaussian.torch_twin_class() is torch_modules.Gaussian

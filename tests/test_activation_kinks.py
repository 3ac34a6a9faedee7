"""ELU, CELU, SELU, Softsign (issue 24): derivatives to order 4 against torch autograd of
the torch.nn twins away from the kink, the documented left-sided values at it, by name
and in constructors (a Flux user's Dense(5, 3, elu)), from_torch's opt-in, to_torch,
save/load; refusal messages that point to hq.activations.custom."""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch, torch
from _reference import rel_err, torch_jit_script_quiet, truth

import hessquik_core as hq

LA = 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717

CASES = [
    (hq.ELU(), lambda: torch.nn.ELU(), [1.0, 1.0, 1.0, 1.0]),
    (hq.ELU(alpha=0.5), lambda: torch.nn.ELU(alpha=0.5), [0.5, 0.5, 0.5, 0.5]),
    (hq.CELU(alpha=2.0), lambda: torch.nn.CELU(alpha=2.0), [1.0, 0.5, 0.25, 0.125]),
    (hq.SELU(), lambda: torch.nn.SELU(), [LA, LA, LA, LA]),
    (hq.Softsign(), lambda: torch.nn.Softsign(), [1.0, 2.0, 6.0, 24.0]),
]
IDS = ["elu", "elu-0.5", "celu-2", "selu", "softsign"]


def _autograd(module, z, order=4):
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    out = [module(zt)]
    for _ in range(order):
        if not out[-1].requires_grad:
            out.append(torch.zeros_like(zt))
            continue
        (g,) = torch.autograd.grad(out[-1].sum(), zt, create_graph=True)
        out.append(g)
    return [o.detach().numpy() for o in out]


@needs_torch
@pytest.mark.parametrize("act, twin, at_zero", CASES, ids=IDS)
def test_away_from_the_kink_against_the_torch_twin(act, twin, at_zero):
    z = np.concatenate([-np.logspace(-6, 1.2, 60), np.logspace(-6, 1.2, 60)])
    got = act.derivatives(z, 4)
    want = _autograd(twin(), z)
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13, err_msg=f"order {k}")
    hq.checks.check_activation(act).assert_passed()  # its grid misses 0


@needs_torch
@pytest.mark.parametrize("act, twin, at_zero", CASES, ids=IDS)
def test_at_the_kink_the_left_sided_values(act, twin, at_zero):
    zero = np.zeros(1)
    got = act.derivatives(zero, 4)
    assert got[0][0] == 0.0
    np.testing.assert_allclose([g[0] for g in got[1:]], at_zero, rtol=1e-15)
    # the limits from the left, and (documented) not those from the right where a derivative jumps
    left = act.derivatives(np.array([-1e-9]), 4)
    right = act.derivatives(np.array([1e-9]), 4)
    for k in range(1, 5):
        np.testing.assert_allclose(got[k], left[k], rtol=1e-8, atol=1e-8, err_msg=f"order {k}")
    assert any(abs(got[k][0] - right[k][0]) > 0.1 for k in (1, 2))  # a genuine jump
    # torch's autograd takes the same (left) branch for σ′
    np.testing.assert_allclose(_autograd(twin(), zero, 1)[1], got[1], rtol=1e-15)


def test_continuity_classes_in_kink_notes():
    assert "C¹" in hq.ELU().kink_note() and "not C¹" not in hq.ELU().kink_note()
    assert "not C¹" in hq.ELU(alpha=0.5).kink_note() and "not C¹" in hq.SELU().kink_note()
    assert "C¹" in hq.CELU(alpha=3.0).kink_note() and "σ″(0) = 0.333333" in hq.CELU(alpha=3.0).kink_note()
    assert "σ″(0) = 2, σ⁗(0) = 24" in hq.Softsign().kink_note()
    assert hq.Tanh().kink_note() == "" and not hq.Tanh().kinks and hq.ELU.kinks


@pytest.mark.parametrize("act, twin, at_zero", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tails_and_every_backend(act, twin, at_zero, dtype, lib, rng):
    z = np.array([-1e4, -1e3, -50.0, 0.0, 50.0, 1e3, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        out = act.derivatives(z, 4)
    assert all(a.dtype == dtype and np.all(np.isfinite(a)) for a in out)
    z_np = (rng.normal(size=(4, 3)) * 3).astype(dtype)
    zl = lib.asarray(z_np)
    for a, r in zip(act.derivatives(zl, 4), act.derivatives(z_np, 4)):
        lib.check(a, z_np.shape, like=zl)
        np.testing.assert_allclose(lib.to_numpy(a), r, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)


def test_by_name_and_in_constructors():
    """A Flux user's Dense(5, 3, elu): no opt-in where the network is built directly."""
    for name, cls in (("elu", hq.ELU), ("celu", hq.CELU), ("selu", hq.SELU), ("softsign", hq.Softsign)):
        assert hq.activations.get_activation(name) == cls()
        assert hq.activations.get_activation(name.upper()) == cls()
        assert type(hq.SingleLayer(5, 3, act=name).act) is cls
    for cls in (hq.ELU, hq.CELU):
        for bad in (0.0, -1.0):
            with pytest.raises(ValueError, match="alpha must be positive"):
                cls(alpha=bad)


@needs_torch
@pytest.mark.parametrize(
    "act", [hq.ELU(alpha=0.7), hq.CELU(alpha=1.5), hq.SELU(), hq.Softsign()], ids=IDS[1:]
)
def test_network_quantities_against_torch_func(act):
    """Random inputs never hit the kink exactly: exact Hessians of the pieces."""
    rng = np.random.default_rng(3)
    net = hq.FullyConnectedNN([3, 6, 5, 2], act=act, seed=rng)
    x = rng.standard_normal((6, 3))
    with torch_jit_script_quiet():
        val, grad, hess = truth(net, x)
    res = net(x, gradient=True, hessian=True, laplacian=True)
    assert rel_err(np.asarray(res.value), val) <= 1e-14
    assert rel_err(np.asarray(res.gradient), grad) <= 1e-13
    assert rel_err(np.asarray(res.hessian), hess) <= 1e-12
    lap = np.trace(hess, axis1=1, axis2=2)
    assert rel_err(np.asarray(res.laplacian), lap) <= 1e-12


@needs_torch
def test_from_torch_refuses_kinks_by_default_and_converts_on_request(tmp_path):
    for module, word in (
        (torch.nn.ELU(), "σ″"),
        (torch.nn.ELU(alpha=0.5), "not C¹"),
        (torch.nn.CELU(alpha=2.0), "σ″(0) = 0.5"),
        (torch.nn.SELU(), "not C¹"),
        (torch.nn.Softsign(), "σ⁗"),
    ):
        tm = torch.nn.Sequential(torch.nn.Linear(3, 4), module, torch.nn.Linear(4, 1)).double()
        with pytest.raises(ValueError, match=r"allow_kinks=True.*hq\.activations\.custom") as err:
            hq.from_torch(tm)
        assert word in str(err.value) and "left-sided" in str(err.value)
        net = hq.from_torch(tm, allow_kinks=True)
        x = np.random.default_rng(0).standard_normal((5, 3))
        np.testing.assert_allclose(
            net(x).value, tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-14, atol=1e-15
        )
        # to_torch gives the torch.nn twin back, parameters included
        back = hq.to_torch(net)
        assert type(back[1]) is type(module) and getattr(back[1], "alpha", None) == getattr(
            module, "alpha", None
        )
        # and save / load keep the class and its alpha
        hq.save(net, tmp_path / "k.hq")
        again = hq.load(tmp_path / "k.hq")
        assert again.blocks[0].act == net.blocks[0].act
        # allow_relu alone does not cover kinks
        with pytest.raises(ValueError, match="allow_kinks"):
            hq.from_torch(tm, allow_relu=True)


# --------------------------------------------------------------------------
# refusal messages point to hq.activations.custom (issue 24)
# --------------------------------------------------------------------------


def test_unknown_name_points_to_custom():
    with pytest.raises(
        ValueError, match=r"unknown activation 'swish'.*hq\.activations\.custom\(f, df, d2f, name=\.\.\.\)"
    ):
        hq.activations.get_activation("swish")
    with pytest.raises(ValueError, match=r"unknown activation 'relu'.*hq\.activations\.custom"):
        hq.SingleLayer(5, 3, act="relu")


@needs_torch
@pytest.mark.parametrize("module", ["LeakyReLU", "Hardtanh", "ReLU"])
def test_from_torch_refusals_point_to_custom(module):
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), getattr(torch.nn, module)())
    with pytest.raises(ValueError, match=r"hq\.activations\.custom\(f, df, d2f.*ActivationModule"):
        hq.from_torch(tm)


@needs_torch
def test_the_custom_route_through_from_torch():
    """What the message says: a custom activation in an ActivationModule converts."""
    from hessquik_core.activations.torch_modules import ActivationModule

    leaky_smooth = hq.activations.custom(
        lambda z, xp: 0.1 * z + 0.9 * xp.log1p(xp.exp(z)),  # fine for the small z here
        lambda z, xp: 0.1 + 0.9 / (1.0 + xp.exp(-z)),
        lambda z, xp: 0.9 * xp.exp(-z) / (1.0 + xp.exp(-z)) ** 2,
        name="leakysoft",
    )
    tm = torch.nn.Sequential(
        torch.nn.Linear(3, 4), ActivationModule(leaky_smooth), torch.nn.Linear(4, 1)
    ).double()
    net = hq.from_torch(tm)
    assert net.blocks[0].act is leaky_smooth
    x = np.random.default_rng(1).standard_normal((5, 3))
    np.testing.assert_allclose(net(x).value, tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-14, atol=1e-15)

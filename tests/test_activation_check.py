"""hq.checks.check_activation up to order 4 (Taylor rates of σ‴ and σ⁗), and
hq.checks.require_order, the up-front refusal other requests call (issue 23)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.activations import ACTIVATIONS, Activation


@dataclass(frozen=True)
class _Quartic(Activation):
    r""":math:`\sigma = z^5/20 + \sin z`: every derivative up to the fourth non-trivial."""

    name = "quartic_test"
    max_order = 4
    wrong: int = 0  # the order made wrong (0: none)

    def _eval(self, z, order, xp):
        return (*self._eval_high(z, order, xp, None), None, None)[:3]

    def _eval_high(self, z, order, xp, value):
        s, c = xp.sin(z), xp.cos(z)
        z2 = z * z
        out = [z2 * z2 * z / 20.0 + s, z2 * z2 / 4.0 + c, z2 * z - s, 3.0 * z2 - c, 6.0 * z + s]
        if self.wrong:
            out[self.wrong] = out[self.wrong] * 1.001 + 1e-4
        return tuple(out[: order + 1])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_builtin_passes_up_to_order_four(name):
    act = ACTIVATIONS[name]()
    report = hq.checks.check_activation(act)
    report.assert_passed()
    assert report.max_order == 4 and sorted(report.order_ok) == [1, 2, 3, 4]
    for k in (3, 4):
        assert report.orders[k].shape == (1,)
        measured = report.orders[k][np.isfinite(report.orders[k])]
        assert np.all(measured > k + 0.5), (k, measured)  # expected k + 1
        assert report.remainders[k].shape == (report.hs.size, report.z.size)
    assert "sigma''''" in str(report) and "orders 0..4 consistent: ok" in str(report)


def test_tanh_gelu_and_softplus_variants_pass():
    for act in (hq.GELU(approximate="tanh"), hq.Softplus(beta=2.5), hq.Softplus(beta=0.5, threshold=5.0)):
        hq.checks.check_activation(act).assert_passed()


@pytest.mark.parametrize("wrong", [1, 2, 3, 4])
def test_a_wrong_derivative_of_any_order_is_caught(wrong):
    good = hq.checks.check_activation(_Quartic())
    assert good.passed
    bad = hq.checks.check_activation(_Quartic(wrong=wrong))
    assert not bad and not bad.passed
    # the wrong order fails; every order below it passes
    assert not bad.order_ok[wrong]
    assert all(bad.order_ok[k] for k in range(1, wrong))
    with pytest.raises(AssertionError, match="FAILED"):
        bad.assert_passed()


def test_first_and_second_order_names_are_kept():
    r = hq.checks.check_activation("tanh")
    assert r.E1 is r.remainders[1] and r.E2 is r.remainders[2] and r.Ed is r.against_lower[2]
    assert r.first_order_ok is r.order_ok[1] and r.second_order_ok is r.order_ok[2]
    assert r.order1.shape == r.order2.shape == r.order_d.shape == r.z.shape


def test_high_orders_inconsistent_with_the_call_are_reported():
    @dataclass(frozen=True)
    class Off(_Quartic):
        def _eval_high(self, z, order, xp, value):
            out = list(super()._eval_high(z, order, xp, value))
            if order > 2:
                out[0] = out[0] + 1.0  # σ from derivatives() differs from the call's
            return tuple(out)

    assert not hq.checks.check_activation(Off()).consistent


def test_tails_of_high_orders_are_checked():
    @dataclass(frozen=True)
    class Blowup(_Quartic):
        def _eval_high(self, z, order, xp, value):
            out = list(super()._eval_high(z, order, xp, value))
            if order > 2:
                out[3] = xp.exp(z)  # overflows at z = 1e3
            return tuple(out)

    with np.errstate(over="ignore"):
        r = hq.checks.check_activation(Blowup(), z=np.linspace(-1.0, 1.0, 5))
    assert r.tails_ok is False and not r.passed


# --------------------------------------------------------------------------
# require_order
# --------------------------------------------------------------------------


def _two_only():
    return hq.activations.custom(np.sin, np.cos, lambda z: -np.sin(z), name="sin2")


def test_require_order_passes_when_supplied():
    net = hq.NN(hq.SingleLayer(2, 3, act="gelu"), hq.ResnetNN(3, 2, act="mish"))
    for order in range(5):
        hq.checks.require_order(net, order, what="the biharmonic")
    hq.checks.require_order([hq.Tanh(), hq.Sin()], 4)
    hq.checks.require_order(_two_only(), 2)
    assert hq.checks.require_order is hq.activations.require_order


def test_require_order_names_the_activation_where_and_the_order():
    net = hq.NN(hq.SingleLayer(2, 3, act="tanh"), hq.ResnetNN(3, 2, act=_two_only()))
    with pytest.raises(
        ValueError,
        match=r"the biharmonic needs derivatives up to order 4 of every activation, but "
        r"custom\(name='sin2'\) \(at '1\.0\.layer\.act'\) supplies them up to order 2 only.*d3f=/d4f=",
    ):
        hq.checks.require_order(net, 4, what="the biharmonic")
    with pytest.raises(ValueError, match=r"this request needs derivatives up to order 3.*at '\[1\]'"):
        hq.checks.require_order([hq.Tanh(), _two_only()], 3)
    with pytest.raises(ValueError, match="non-negative integer"):
        hq.checks.require_order(net, -1)

"""A new activation is one class: registered, it is found by name, saved and loaded,
and converted to and from torch without any edit elsewhere (issue 11)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import activations as A


@dataclass(frozen=True)
class _Tanhshrink(A.Activation):
    r""":math:`\sigma = z - \tanh z`, :math:`\sigma' = \tanh^2 z`, :math:`\sigma'' = 2\tanh z\,(1 - \tanh^2 z)`."""

    name = "tanhshrink"
    torch_twin = "Tanhshrink"  # torch.nn.Tanhshrink

    def _eval(self, z, order, xp):
        t = xp.tanh(z)
        if order == 0:
            return z - t, None, None
        return z - t, t * t, (2.0 * t * (1.0 - t * t)) if order == 2 else None


@pytest.fixture
def registered():
    A.register_activation(_Tanhshrink)
    try:
        yield _Tanhshrink
    finally:
        del A.ACTIVATIONS[_Tanhshrink.name]


def test_registered_activation_is_everywhere(registered, tmp_path):
    assert hq.checks.check_activation(registered())
    assert type(A.get_activation("tanhshrink")) is registered
    net = hq.FullyConnectedNN([3, 5, 2], act="tanhshrink", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3))
    ref = net(x, gradient=True, laplacian=True)
    # save / load: the file names the activation, load finds it in the registry
    hq.save(net, tmp_path / "n.hq")
    back = hq.load(tmp_path / "n.hq")
    assert type(back.blocks[0].act) is registered
    np.testing.assert_array_equal(back(x, laplacian=True).laplacian, ref.laplacian)
    # torch twin both ways
    torch = pytest.importorskip("torch")
    tm = hq.to_torch(net)
    assert isinstance(tm[1], torch.nn.Tanhshrink)
    np.testing.assert_allclose(tm(torch.from_numpy(x)).detach().numpy(), ref.value, rtol=1e-13, atol=1e-14)
    again = hq.from_torch(tm)
    assert type(again.blocks[0].act) is registered
    np.testing.assert_allclose(again(x, laplacian=True).laplacian, ref.laplacian, rtol=1e-13, atol=1e-14)


def test_unregistered_activation_is_refused_by_files_and_exported_as_itself(tmp_path):
    assert "tanhshrink" not in A.ACTIVATIONS
    with pytest.raises(ValueError, match="unknown activation"):
        A.get_activation("tanhshrink")
    net = hq.NN(hq.SingleLayer(2, 2, act=_Tanhshrink()))
    with pytest.raises(TypeError, match="cannot save activation"):
        hq.save(net, tmp_path / "x")
    # no registered twin: to_torch wraps the activation itself (its own σ through torch)
    torch = pytest.importorskip("torch")
    from hessquik_core.activations.torch_modules import ActivationModule

    tm = hq.to_torch(net)
    assert type(tm[1]) is ActivationModule and tm[1].hessquik_activation == _Tanhshrink()
    x = np.random.default_rng(1).standard_normal((4, 2))
    ref = net(x, laplacian=True)
    np.testing.assert_allclose(tm(torch.from_numpy(x)).detach().numpy(), ref.value, rtol=1e-14, atol=1e-15)
    back = hq.from_torch(tm)
    assert back.blocks[0].act == _Tanhshrink()
    np.testing.assert_allclose(back(x, laplacian=True).laplacian, ref.laplacian, rtol=1e-14, atol=1e-15)


def test_register_activation_checks_its_argument(registered):
    class Nameless(A.Tanh):
        pass

    with pytest.raises(TypeError, match="sets its own name"):
        A.register_activation(Nameless)
    with pytest.raises(TypeError, match="Activation subclass"):
        A.register_activation(int)

    @dataclass(frozen=True)
    class Clash(A.Activation):
        name = "tanhshrink"

    with pytest.raises(ValueError, match="already registered"):
        A.register_activation(Clash)


def test_relu_is_registered_for_files_but_not_by_name(tmp_path):
    from hessquik_core.interop import ReLU

    assert ReLU is A.ReLU and A.ACTIVATIONS["relu"] is ReLU
    with pytest.raises(ValueError, match="unknown activation"):
        A.get_activation("relu")
    net = hq.NN(hq.SingleLayer(2, 3, act=ReLU()), hq.SingleLayer(3, 1))
    hq.save(net, tmp_path / "r.hq")
    assert type(hq.load(tmp_path / "r.hq").blocks[0].act) is ReLU


def test_registered_class_of_variants():
    from hessquik_core.compat import activations as cact

    assert A.registered_class(A.Tanh()) is A.Tanh
    assert A.registered_class(cact.softplusActivation(2.0)) is A.Softplus  # call convention only

    class Sub(cact.tanhActivation):  # may change the math: not a variant
        pass

    assert A.registered_class(Sub()) is None
    assert A.registered_class(A.custom(np.sin, np.cos, np.sin)) is None

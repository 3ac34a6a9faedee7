"""SingleLayer, f(u) = σ(uK + b): input derivatives, parameter passes, save/load and the
torch twin (nn.Linear + activation), each against torch.func on the twin in float64."""

from __future__ import annotations

import numpy as np
import pytest
from _checks import check_parameter_passes
from layer_checks import check_input_derivatives, check_save_load, check_to_torch

import hessquik_core as hq

torch = pytest.importorskip("torch")


def twin_f(net):
    """The network's torch twin as a function of one point, ``(d,) -> (m,)``."""
    tm = hq.to_torch(net).double().requires_grad_(False)
    return lambda xi: tm(xi[None])[0]


def _x(n=5, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


NETS = {
    "tanh-sigmoid": lambda rng: hq.NN(
        hq.SingleLayer(3, 5, act="tanh", seed=rng), hq.SingleLayer(5, 2, act="sigmoid", seed=rng)
    ),
    "softplus-nobias": lambda rng: hq.NN(
        hq.SingleLayer(3, 4, act="softplus", bias=False, seed=rng), hq.SingleLayer(4, 2, seed=rng)
    ),
    "silu-antitanh": lambda rng: hq.FullyConnectedNN(
        [3, 4, 4, 1], act="silu", output_act="antiTanh", seed=rng
    ),
}


@pytest.mark.parametrize("name", NETS)
def test_input_derivatives_vs_torch_func_on_the_twin(name):
    net = NETS[name](np.random.default_rng(1))
    check_input_derivatives(net, twin_f(net), _x())


@pytest.mark.parametrize("name", NETS)
def test_parameter_passes_vs_torch_func_on_the_twin(name):
    net = NETS[name](np.random.default_rng(2))
    x = _x(4)
    y = np.random.default_rng(3).standard_normal((4, net.out_features))
    check_parameter_passes(net, x, y)


@pytest.mark.parametrize("name", NETS)
def test_save_load_and_torch_round_trip(name):
    net = NETS[name](np.random.default_rng(4))
    check_save_load(net, _x())
    check_to_torch(net, _x())


def test_twin_is_linear_then_activation():
    net = hq.NN(hq.SingleLayer(3, 4, act="tanh", seed=0), hq.SingleLayer(4, 2, seed=1))
    tm = hq.to_torch(net)
    assert [type(m).__name__ for m in tm] == ["Linear", "Tanh", "Linear"]  # no module for the identity
    np.testing.assert_array_equal(tm[0].weight.detach().numpy(), net[0].K.T)
    back = hq.from_torch(tm)
    assert [type(b).__name__ for b in back] == ["SingleLayer", "SingleLayer"]
    assert back[0].act.name == "tanh" and back[1].act.name == "identity"


def test_config_and_initialisation():
    layer = hq.SingleLayer(3, 16, act="tanh", bias=False, seed=0)
    assert layer.config() == {"in_features": 3, "out_features": 16, "bias": False}
    assert hq.SingleLayer.parameter_shapes(layer.config()) == {"K": (3, 16)}
    assert np.abs(layer.K).max() <= 1 / 4  # hessQuik's U(±1/√q)
    with pytest.raises(ValueError, match="out_features"):
        hq.SingleLayer(3, 0)

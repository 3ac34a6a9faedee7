"""ResnetLayer, f(u) = u + h σ(uK + b): input derivatives, parameter passes, save/load and
the torch twin (ResidualBlock), each against torch.func on the twin in float64."""

from __future__ import annotations

import numpy as np
import pytest
from _checks import check_parameter_passes
from layer_checks import check_input_derivatives, check_save_load, check_to_torch

import hessquik_core as hq

torch = pytest.importorskip("torch")


def twin_f(net):
    tm = hq.to_torch(net).double().requires_grad_(False)
    return lambda xi: tm(xi[None])[0]


def _x(n=5, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


NETS = {
    "resnet-first": lambda rng: hq.NN(
        hq.ResnetLayer(4, h=0.4, act="tanh", seed=rng), hq.SingleLayer(4, 2, act="sigmoid", seed=rng)
    ),
    "resnet-middle-nobias": lambda rng: hq.NN(
        hq.SingleLayer(4, 5, act="softplus", seed=rng),
        hq.ResnetLayer(5, h=1.3, act="sigmoid", bias=False, seed=rng),
        hq.SingleLayer(5, 1, seed=rng),
    ),
    "ResnetNN": lambda rng: hq.NN(
        hq.ResnetNN(4, 3, h=0.5, act="tanh", seed=rng), hq.SingleLayer(4, 2, seed=rng)
    ),
}


@pytest.mark.parametrize("name", NETS)
def test_input_derivatives_vs_torch_func_on_the_twin(name):
    net = NETS[name](np.random.default_rng(1))
    check_input_derivatives(net, twin_f(net), _x())


@pytest.mark.parametrize("name", NETS)
def test_parameter_passes_vs_torch_func_on_the_twin(name):
    net = NETS[name](np.random.default_rng(2))
    y = np.random.default_rng(3).standard_normal((4, net.out_features))
    check_parameter_passes(net, _x(4), y)


@pytest.mark.parametrize("name", NETS)
def test_save_load_and_torch_round_trip(name):
    net = NETS[name](np.random.default_rng(4))
    check_save_load(net, _x())
    check_to_torch(net, _x())


def test_twin_and_keys():
    layer = hq.ResnetLayer(3, h=0.25, act="tanh", seed=0)
    assert list(layer.state_dict()) == ["layer.K", "layer.b"]  # hessQuik's keys
    (blk,) = hq.to_torch(layer)
    assert type(blk).__name__ == "ResidualBlock" and blk.h == 0.25
    np.testing.assert_array_equal(blk.linear.weight.detach().numpy(), layer.layer.K.T)
    with pytest.raises(ValueError, match="h must be a finite real number"):
        hq.ResnetLayer(3, h=float("nan"))

"""ICNNLayer, [u, x] -> [σ(u softplus(L) + xK + b), x]: input derivatives, parameter passes,
save/load and the torch twin (ICNNBlock), each against torch.func on the twin in float64."""

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


def _x(n=5, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


NETS = {
    "ICNN": lambda rng: hq.ICNN(3, [None, 5, 2], act="softplus", seed=rng),
    "ICNN-sigmoid-nobias": lambda rng: hq.NN(
        hq.ICNNLayer(3, None, 4, act="sigmoid", bias=False, seed=rng),
        hq.ICNNLayer(3, 4, 2, act="tanh", seed=rng),
    ),
    "ICNN-then-dense": lambda rng: hq.NN(
        hq.ICNN(3, [None, 4], seed=rng), hq.SingleLayer(7, 2, act="tanh", seed=rng)
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


def test_shapes_and_config():
    first = hq.ICNNLayer(3, None, 4, seed=0)
    assert (first.in_features, first.out_features) == (3, 7)
    assert first.config() == {"input_dim": 3, "in_features": None, "out_features": 4, "bias": True}
    assert hq.ICNNLayer.parameter_shapes(first.config()) == {"K": (3, 4), "b": (4,)}
    later = hq.ICNNLayer(3, 4, 2, seed=1)
    assert hq.ICNNLayer.parameter_shapes(later.config()) == {"K": (3, 2), "L": (4, 2), "b": (2,)}
    (blk,) = hq.to_torch(later)
    assert type(blk).__name__ == "ICNNBlock" and blk.L.shape == (4, 2)

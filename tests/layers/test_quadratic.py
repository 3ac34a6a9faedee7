"""QuadraticLayer (u v + ½|uAᵀ|² + μ) and QuadraticICNNLayer: input derivatives, parameter
passes, save/load and the torch twins, each against torch.func on the twin in float64."""

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
    "quadratic-alone": lambda rng: hq.NN(hq.QuadraticLayer(3, 2, seed=rng)),
    "dense-quadratic": lambda rng: hq.NN(
        hq.SingleLayer(3, 5, act="tanh", seed=rng), hq.QuadraticLayer(5, 3, seed=rng)
    ),
    "quadratic-icnn-alone": lambda rng: hq.NN(hq.QuadraticICNNLayer(3, None, 2, seed=rng)),
    "ICNN-quadratic": lambda rng: hq.NN(
        hq.ICNN(3, [None, 4, 2], seed=rng), hq.QuadraticICNNLayer(3, 2, 2, seed=rng)
    ),
}


@pytest.mark.parametrize("name", NETS)
def test_input_derivatives_vs_torch_func_on_the_twin(name):
    net = NETS[name](np.random.default_rng(1))
    check_input_derivatives(net, twin_f(net), _x())


@pytest.mark.parametrize("name", NETS)
def test_parameter_passes_vs_torch_func_on_the_twin(name):
    net = NETS[name](np.random.default_rng(2))
    y = np.random.default_rng(3).standard_normal((4, 1))
    check_parameter_passes(net, _x(4), y)


@pytest.mark.parametrize("name", NETS)
def test_save_load_and_torch_round_trip(name):
    net = NETS[name](np.random.default_rng(4))
    check_save_load(net, _x())
    check_to_torch(net, _x())


def test_configs_and_twins():
    q = hq.QuadraticLayer(4, 2, seed=0)
    assert q.config() == {"in_features": 4, "rank": 2} and q.out_features == 1
    assert hq.QuadraticLayer.parameter_shapes(q.config()) == {"v": (4,), "mu": (1,), "A": (2, 4)}
    qi = hq.QuadraticICNNLayer(3, 2, 2, seed=0)
    assert hq.QuadraticICNNLayer.parameter_shapes(qi.config()) == {
        "w": (2,),
        "v": (3,),
        "mu": (1,),
        "A": (2, 3),
    }
    assert [type(m).__name__ for m in hq.to_torch(hq.NN(q))] == ["QuadraticBlock"]
    assert [type(m).__name__ for m in hq.to_torch(hq.NN(qi))] == ["QuadraticICNNBlock"]

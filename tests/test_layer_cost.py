"""``Layer.cost(n, k, request)``: the cost model asks each layer (issue 21, item 3). The
default is the GEMM model the engine always used, so the estimates of the built-in
layers are unchanged; a layer that overrides it is priced by its own numbers."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.engine import cost
from hessquik_core.rules.cost import CostRequest, LayerCost, gemm_cost


def _nets():
    return [
        hq.FullyConnectedNN([5, 8, 8, 2], act="tanh", seed=0),
        hq.NN(hq.SingleLayer(3, 6, act="tanh", seed=0), hq.ResnetNN(6, 2, act="sin", seed=1)),
        hq.NN(hq.FourierFeatures(2, 4, seed=0), hq.LayerNorm(8), hq.SingleLayer(8, 1, seed=1)),
        hq.NN(hq.GatedMLP(3, 5, 2, 4, seed=0), hq.SingleLayer(4, 1, seed=1)),
    ]


REQUESTS = [
    dict(hessian=False, laplacian=False, hessian_diagonal=False),
    dict(hessian=False, laplacian=True, hessian_diagonal=False),
    dict(hessian=True, laplacian=True, hessian_diagonal=False),
    dict(hessian=False, laplacian=False, hessian_diagonal=True),
]


@pytest.mark.parametrize("net", _nets(), ids=lambda n: type(list(n._leaves())[0]).__name__)
@pytest.mark.parametrize("req", REQUESTS, ids=str)
@pytest.mark.parametrize("derivatives", [True, False])
def test_default_hook_is_the_gemm_model(net, req, derivatives):
    """Pricing through every layer's default ``cost`` gives the memoised GEMM model's
    numbers exactly (the route the engine takes for built-in layers)."""
    leaves = list(net._leaves())
    kw = dict(d=net.in_features, m=net.out_features, itemsize=8, derivatives=derivatives, **req)
    kw["k_fwd"] = kw["d"]
    memo = cost.estimate(leaves, 37, **kw)
    hooked = cost._estimate.__wrapped__(cost._Layers(tuple(leaves)), 37, **kw)
    assert memo.routes.keys() == hooked.routes.keys()
    for mode in memo.routes:
        assert memo.routes[mode] == hooked.routes[mode], mode


def test_gemm_cost_by_hand():
    # value: 2npq flops; forward first layer: the seed is shared (no n on its tangent GEMM)
    assert gemm_cost(3, 4, 10, 0, CostRequest("value")) == LayerCost(240, 2, 120, 70)
    fwd = gemm_cost(3, 4, 10, 2, CostRequest("forward", first=True))
    assert fwd.flops == 2 * 10 * 3 * 4 + 2 * 1 * 2 * 3 * 4 + 10 * 2 * 4
    assert gemm_cost(3, 4, 10, 2, CostRequest("backward")).stored == 3 * 10 * 4


class Costly(hq.SingleLayer):
    """A layer whose work is not its GEMM: it states its own cost."""

    def cost(self, n, k, request):
        return LayerCost(flops=1e6 * n * max(k, 1), ops=1, live=n)


def test_a_layer_states_its_own_cost():
    plain = hq.NN(hq.SingleLayer(4, 6, act="tanh", seed=0), hq.SingleLayer(6, 1, seed=1))
    costly = hq.NN(Costly(4, 6, act="tanh", seed=0), hq.SingleLayer(6, 1, seed=1))
    a = plain.cost(10, gradient=True)
    b = costly.cost(10, gradient=True)
    # forward carries k = d = 4 tangents through the layer, backward k = m = 1 adjoint
    assert b.routes["forward"].flops > 4e7 > a.routes["forward"].flops
    assert b.routes["backward"].flops > 1e7 > a.routes["backward"].flops
    assert b.chosen == "backward"
    x = np.random.default_rng(0).standard_normal((10, 4))
    assert costly(x, gradient=True).mode == "backward"
    np.testing.assert_allclose(costly(x, gradient=True).gradient, plain(x, gradient=True).gradient)


@pytest.mark.parametrize("bad", [np.zeros((3, 2)), 2.5, True, 0, "10"])
def test_cost_refuses_what_is_not_a_count_of_examples(bad):
    """``net.cost(x)`` (an array where the number of examples goes) says what to pass."""
    net = hq.FullyConnectedNN([2, 4, 1], seed=0)
    err = ValueError if type(bad) is int else TypeError  # a count, but not positive
    with pytest.raises(err, match=r"n must be the number of examples.*x\.shape\[0\]"):
        net.cost(bad)

"""``torch.compile`` of a training loss through the engine gives the eager numbers.

A physics-informed step, loss = mean((Δu + f)²) and its gradient with respect
to every weight, compiled with ``torch.compile`` must equal the eager step
(same loss, same weight gradients, float64). With ``fullgraph=True`` the whole
network call must trace into one graph: no graph breaks inside the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import torch_parameters  # noqa: E402

pytestmark = [
    # dynamo's own notices while tracing array_api_compat's lru_cache-wrapped helpers
    # (torch 2.13) are not results of this library
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`:UserWarning"),
    # ... and dynamo's probe of every tensor attribute, .grad of non-leaf tensors included
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    # one compile of the forward and backward graphs takes 15-40 s on 2 cores
    pytest.mark.slow,
]


def _problem(mode: str = "auto"):
    net = hq.FullyConnectedNN([2, 16, 16, 1], act="tanh", seed=0)
    params = torch_parameters(net)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((64, 2)))
    f = torch.tensor(rng.standard_normal((64, 1)))

    def loss_fn(x, f):
        r = net(x, laplacian=True, mode=mode)
        return ((r.laplacian + f) ** 2).mean()

    return params, x, f, loss_fn


def _step(fn, params, x, f):
    loss = fn(x, f)
    grads = torch.autograd.grad(loss, params, materialize_grads=True)
    return loss.detach(), [g.detach() for g in grads]


def _assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14)
    assert len(got[1]) == len(want[1])
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # the comparison can fail: the weight gradient is not trivially zero
    assert max(float(w.abs().max()) for w in want[1]) > 1e-3


def test_compiled_laplacian_loss_matches_eager():
    params, x, f, loss_fn = _problem()
    want = _step(loss_fn, params, x, f)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn)
    got = _step(compiled, params, x, f)
    _assert_same(got, want)
    # a second call reuses the compiled graphs and still agrees (new inputs, same shapes)
    x2 = x.flip(0)
    _assert_same(_step(compiled, params, x2, f), _step(loss_fn, params, x2, f))


def test_compiled_fullgraph_laplacian_loss_matches_eager():
    # no graph break inside the engine: backend lookup by import statements
    # (not importlib), the mode choice by a plain loop (not min with a key),
    # the parameter-cache key a plain property (not cached_property's RLock)
    params, x, f, loss_fn = _problem()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(loss_fn)(x, f)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    want = _step(loss_fn, params, x, f)
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)
    got = _step(compiled, params, x, f)
    _assert_same(got, want)

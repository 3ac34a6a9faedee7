"""The fused gradient pass (issue 24 item 12): the same numbers as the layer-by-layer pass and
as torch autograd, for every backend, dtype, loss and a mix of fused and unfused leaves; and the
targets kept between calls follow their labels (in-place change, another loss, garbage collection)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv
from hessquik_core.curvature import sources
from hessquik_core.curvature.sources import curvature_problem

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


def _net(acts=("tanh", "tanh"), resnet=False, bias=True):
    layers = [hq.SingleLayer(5, 6, act=acts[0], bias=bias, seed=1)]
    if resnet:
        layers.append(hq.ResnetLayer(6, act="softplus", seed=2))
    layers += [hq.SingleLayer(6, 6, act=acts[1], seed=3), hq.SingleLayer(6, 3, seed=4)]
    return hq.NN(*layers)


def _data(lib, dtype, loss):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 5)).astype(dtype)
    y = rng.integers(0, 3, 11) if loss == "cross_entropy" else rng.standard_normal((11, 3)).astype(dtype)
    if lib == "torch":
        return torch.from_numpy(x), torch.from_numpy(y)
    return x, y


def _unfused(net, x, y, loss):
    """The layer-by-layer pass (``evaluate`` / ``param_vjp``), the reference of the fused one."""
    pr = curvature_problem(net, x, y, loss)
    (xb, Tb), B = pr.chunks[0], pr.B
    v, g = B.grad_pass(xb, Tb, pr.loss, pr.w, False)
    return pr.w * B.xp.sum(v), g


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("kind", ["tanh", "sigmoid-softplus", "with-resnet", "no-bias"], ids=lambda k: k)
def test_fused_equals_layer_by_layer(lib, dtype, loss, kind):
    net = {
        "tanh": lambda: _net(),
        "sigmoid-softplus": lambda: _net(("sigmoid", "softplus")),
        "with-resnet": lambda: _net(resnet=True),
        "no-bias": lambda: _net(bias=False),
    }[kind]()
    x, y = _data(lib, dtype, loss)
    v, g = cv.value_and_gradient(net, x, y, loss)
    v0, g0 = _unfused(net, x, y, loss)
    assert type(g) is type(x) and g.dtype == x.dtype and tuple(g.shape) == (cv.parameter_layout(net).size,)
    tol = 1e-15 if dtype == np.float64 else 1e-6
    g, g0 = np.asarray(g, dtype=np.float64), np.asarray(g0, dtype=np.float64)
    assert np.abs(g - g0).max() <= tol * np.abs(g0).max()
    assert abs(float(v) - float(v0)) <= tol * abs(float(v0))


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lossf", [nn.CrossEntropyLoss(), nn.MSELoss(), nn.CrossEntropyLoss(reduction="sum")])
def test_torch_model_matches_autograd(dtype, lossf):
    m = _model(dtype)
    x = torch.randn(64, 5, dtype=dtype)
    y = (
        torch.randint(0, 3, (64,))
        if isinstance(lossf, nn.CrossEntropyLoss)
        else torch.randn(64, 3, dtype=dtype)
    )
    v, g = cv.value_and_gradient(m, x, y, lossf)
    m.zero_grad()
    ref_v = lossf(m(x), y)
    ref_v.backward()
    ref = torch.cat([p.grad.T.reshape(-1) if p.ndim == 2 else p.grad for p in m.parameters()])
    assert g.dtype == dtype and g.shape == ref.shape
    tol = 1e-15 if dtype == torch.float64 else 1e-6
    assert float((g - ref).abs().max()) <= tol * float(ref.abs().max())
    assert abs(float(v) - float(ref_v.detach())) <= tol * abs(float(v))


def test_targets_follow_their_labels():
    # params="all" (every parameter of this model): the general route, which keeps targets (the
    # lean route, tests/curvature/test_gradient_lean.py, prepares none)
    m = _model(torch.float64)
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    lossf = nn.CrossEntropyLoss()

    def ref(loss, y):
        m.zero_grad()
        loss(m(x), y).backward()
        return torch.cat([p.grad.T.reshape(-1) if p.ndim == 2 else p.grad for p in m.parameters()])

    for _ in range(2):  # the second call is served from the kept targets
        assert float((cv.gradient(m, x, y, lossf, params="all") - ref(lossf, y)).abs().max()) <= 1e-15
    y[0] = (y[0] + 1) % 3  # in place: a new version
    assert float((cv.gradient(m, x, y, lossf, params="all") - ref(lossf, y)).abs().max()) <= 1e-15
    y[1] = -100  # ignored by torch's default ignore_index
    ign = nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1)
    assert float((cv.gradient(m, x, y, ign) - ref(ign, y)).abs().max()) <= 1e-15
    y[1] = 2
    assert float((cv.gradient(m, x, y, lossf, params="all") - ref(lossf, y)).abs().max()) <= 1e-15
    n = len(sources._TARGETS)
    assert n >= 1
    del y
    gc.collect()
    assert len(sources._TARGETS) < n  # dropped with its labels

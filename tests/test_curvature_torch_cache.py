"""A torch model is converted once while it is unchanged (issue 24, item 12: value_and_gradient
re-converted the model on every call), and again after anything that changes what it computes:
an optimiser step, a copy_ under no_grad, eval()/train(), a replaced submodule, a new hook."""

from __future__ import annotations

import numpy as np
import pytest

from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


@pytest.fixture
def conversions(monkeypatch):
    import hessquik_core.interop as interop

    calls = []
    orig = interop.from_torch

    def counted(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(interop, "from_torch", counted)
    return calls


def _setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double().eval()
    rng = np.random.default_rng(0)
    return m, torch.tensor(rng.standard_normal((6, 3))), torch.tensor(rng.integers(0, 2, 6))


def _torch_grad(m, x, y, loss):
    m.zero_grad()
    loss(m(x), y).backward()
    return torch.cat([g for p in m.parameters() for g in (p.grad.T.reshape(-1) if p.ndim == 2 else p.grad,)])


def test_conversion_is_cached_until_the_model_changes(conversions):
    m, x, y = _setup()
    loss = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for step in range(3):
        _, g = cv.value_and_gradient(m, x, y, loss)
        cv.value_and_gradient(m, x, y, loss)
        cv.hvp(m, x, y, loss, torch.ones_like(g))
        assert len(conversions) == step + 1  # once per parameter state
        assert float((g - _torch_grad(m, x, y, loss)).abs().max()) <= 1e-15
        opt.step()  # in-place update: the next call sees the new weights
    with torch.no_grad():
        m[0].weight.copy_(torch.zeros(4, 3))
    _, g = cv.value_and_gradient(m, x, y, loss)
    assert len(conversions) == 4 and float((g - _torch_grad(m, x, y, loss)).abs().max()) <= 1e-15


def test_structure_and_mode_changes_reconvert(conversions):
    m, x, y = _setup()
    loss = nn.CrossEntropyLoss()
    cv.gradient(m, x, y, loss)
    m[1] = nn.Sigmoid()  # a replaced submodule
    g = cv.gradient(m, x, y, loss)
    assert len(conversions) == 2 and float((g - _torch_grad(m, x, y, loss)).abs().max()) <= 1e-15
    m.train()  # Dropout in training mode is random: refused, not served from the cache
    with pytest.raises(ValueError, match="training mode"):
        cv.gradient(m, x, y, loss)
    m.eval()
    h = m[0].register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="forward hook"):
        cv.gradient(m, x, y, loss)
    h.remove()
    cv.gradient(m, x, y, loss)  # converted again: m.eval() switched the new Sigmoid's training flag
    n = len(conversions)
    cv.gradient(m, x, y, loss)
    assert len(conversions) == n  # unchanged: served from the cache
    m.float()  # new dtype: new tensors
    cv.gradient(m, x.float(), y, loss)
    assert len(conversions) == 6

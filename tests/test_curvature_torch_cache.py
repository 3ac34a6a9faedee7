"""A torch model is converted once while its structure is unchanged, and its weights are read
through views of its own tensors (issue 24, item 12: value_and_gradient re-converted the model
on every call). Every change must be seen: an optimiser step, a copy_ under no_grad,
load_state_dict, a write through ``p.data``, ``.double()``, ``requires_grad_(False)``,
eval()/train(), a replaced submodule, a new hook; a model without views (a residual block)
is converted again after each in-place update. Each gradient is compared with torch autograd."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from hessquik_core.curvature import _torch_cache  # noqa: E402
from hessquik_core.interop import ResidualBlock  # noqa: E402


@pytest.fixture
def conversions(monkeypatch):
    """The modules converted by the curvature cache (the labelled probe that finds the
    views is another module and is not counted)."""
    calls = []
    orig = _torch_cache._convert

    def counted(module):
        calls.append(module)
        return orig(module)

    monkeypatch.setattr(_torch_cache, "_convert", counted)
    return calls


def _setup(dtype=torch.float64):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).to(dtype).eval()
    rng = np.random.default_rng(0)
    return m, torch.tensor(rng.standard_normal((6, 3)), dtype=dtype), torch.tensor(rng.integers(0, 2, 6))


def _torch_grad(m, x, y, loss):
    """torch autograd's gradient of the trainable parameters, in this package's order (K = Wᵀ)."""
    m.zero_grad()
    loss(m(x), y).backward()
    return torch.cat(
        [
            g
            for p in m.parameters()
            if p.requires_grad
            for g in (p.grad.T.reshape(-1) if p.ndim == 2 else p.grad,)
        ]
    )


def _check(m, x, y, loss, tol=1e-15):
    v, g = cv.value_and_gradient(m, x, y, loss)
    ref = _torch_grad(m, x, y, loss)
    assert isinstance(g, torch.Tensor) and g.dtype == x.dtype and g.shape == ref.shape
    assert float((g - ref).abs().max()) <= tol * float(ref.abs().max())
    with torch.no_grad():
        assert abs(float(v) - float(loss(m(x), y))) <= tol * abs(float(v))
    return g


def test_views_follow_in_place_updates_without_reconverting(conversions):
    m, x, y = _setup()
    loss = nn.CrossEntropyLoss()
    assert _torch_cache.converted(m, cv.ParameterLayout).views is not None
    n0 = len(conversions)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(3):
        g = _check(m, x, y, loss)
        cv.hvp(m, x, y, loss, torch.ones_like(g))
        opt.step()  # in place: the next call reads the new weights through the views
    with torch.no_grad():
        m[0].weight.copy_(torch.zeros(4, 3, dtype=torch.float64))
    _check(m, x, y, loss)
    m[3].bias.data.add_(1.0)  # a write through .data (no version bump) is seen too
    _check(m, x, y, loss)
    other = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    m.load_state_dict(other.state_dict())  # copy_ into the same tensors
    _check(m, x, y, loss)
    assert len(conversions) == n0  # none of these converted the model again


def test_fresh_network_after_updates(conversions):
    """Uses that read the converted network's values (flatten_parameters, another backend)
    convert again after an update."""
    m, x, y = _setup()
    loss = nn.CrossEntropyLoss()
    cv.gradient(m, x, y, loss)
    with torch.no_grad():
        m[0].bias.add_(1.0)
    g_np = cv.gradient(m, x.numpy(), y.numpy(), loss)  # NumPy data: computed on the converted copy
    assert isinstance(g_np, np.ndarray)
    assert np.abs(g_np - _torch_grad(m, x, y, loss).numpy()).max() <= 1e-15
    cv.gradient(m, x, y, loss)
    with torch.no_grad():
        m[0].bias.add_(1.0)
    theta = cv.flatten_parameters(m)
    assert np.array_equal(np.asarray(theta)[12:16], m[0].bias.detach().numpy())


def test_dtype_change_and_frozen_parameter(conversions):
    m, x, y = _setup(torch.float32)
    loss = nn.CrossEntropyLoss()
    _check(m, x, y, loss, tol=1e-6)
    n = len(conversions)
    m.double()  # new tensors: a new entry
    _check(m, x.double(), y, loss)
    assert len(conversions) == n + 1
    m[0].weight.requires_grad_(False)  # params=None: the frozen weight is left out
    g = _check(m, x.double(), y, loss)
    assert g.shape == (4 + 4 * 2 + 2,)
    assert len(conversions) == n + 2
    m[0].weight.requires_grad_(True)
    assert _check(m, x.double(), y, loss).shape == (26,)


def test_structure_and_mode_changes_reconvert(conversions):
    m, x, y = _setup()
    loss = nn.CrossEntropyLoss()
    cv.gradient(m, x, y, loss)
    m[1] = nn.Sigmoid()  # a replaced submodule
    _check(m, x, y, loss)
    assert len(conversions) == 2
    m.train()  # Dropout in training mode is random: refused, not served from the cache
    with pytest.raises(ValueError, match="training mode"):
        cv.gradient(m, x, y, loss)
    m.eval()
    h = m[0].register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="forward hook"):
        cv.gradient(m, x, y, loss)
    h.remove()
    cv.gradient(m, x, y, loss)
    n = len(conversions)
    cv.gradient(m, x, y, loss)
    assert len(conversions) == n  # unchanged: served from the cache


def test_model_without_views_reconverts_after_an_update(conversions):
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), ResidualBlock(4, act=nn.Tanh()), nn.Linear(4, 2)).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    y = torch.randn(7, 2, dtype=torch.float64)
    loss = nn.MSELoss()
    assert _torch_cache.converted(m, cv.ParameterLayout).views is None
    n = len(conversions)
    g1 = cv.gradient(m, x, y, loss)
    assert len(conversions) == n  # unchanged: cached
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)
    g2 = cv.gradient(m, x, y, loss)
    assert len(conversions) == n + 1
    m.zero_grad()
    loss(m(x), y).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    got = torch.as_tensor(cv.parameter_layout(m).to_torch_order(g2, m))
    assert float((got - ref).abs().max()) <= 1e-14 * float(ref.abs().max())
    assert not torch.equal(g1, g2)


def test_operator_is_a_snapshot_of_the_weights():
    """An operator keeps the weights it was built with (and its kept forward pass): a later
    in-place update of the model is not mixed into its products."""
    m, x, y = _setup()
    loss = nn.CrossEntropyLoss()
    for kind in (cv.hessian_operator, cv.ggn_operator):
        op = kind(m, x, y, loss)
        v = torch.linspace(-1.0, 1.0, op.shape[0], dtype=torch.float64)
        before = op @ v
        ref = kind(copy.deepcopy(m), x, y, loss) @ v
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(2.0)
        assert torch.equal(op @ v, before) and torch.equal(before, ref)
        after = kind(m, x, y, loss) @ v  # a new operator sees the update
        assert float((after - before).abs().max()) > 1e-3

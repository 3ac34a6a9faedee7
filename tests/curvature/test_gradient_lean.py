"""The lean route of value_and_gradient (issue 24 item 12, ``hessquik_core/curvature/_lean.py``):
a torch model's common call skips the per-call set-up of the general route. It must give torch
autograd's value and gradient for every loss it serves (including a new mini-batch every call,
in-place changes of x, y and the weights, frozen parameters), keep nothing of x or y, and hand
every other call to the general route, which raises the errors with their messages."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from hessquik_core import curvature as cv
from hessquik_core.curvature import _lean, sources

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


@pytest.fixture
def general(monkeypatch):
    """The calls that took the general route (each builds a ``_Problem``)."""
    calls = []
    orig = sources._Problem.__init__

    def counted(self, *args, **kwargs):
        calls.append(args)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(sources._Problem, "__init__", counted)
    return calls


def _model(dtype=torch.float64, m=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, m)).to(dtype)


def _ref(model, x, y, lossf):
    """torch autograd's value and gradient of the trainable parameters, in layout order (K = Wᵀ)."""
    model.zero_grad()
    v = lossf(model(x), y)
    v.backward()
    g = torch.cat(
        [p.grad.T.reshape(-1) if p.ndim == 2 else p.grad for p in model.parameters() if p.requires_grad]
    )
    return v.detach(), g


def _agree(model, x, y, lossf, ref_loss=None):
    v, g = cv.value_and_gradient(model, x, y, lossf)
    rv, rg = _ref(model, x, y, lossf if ref_loss is None else ref_loss)
    assert isinstance(g, torch.Tensor) and g.dtype == x.dtype and g.shape == rg.shape
    assert isinstance(v, torch.Tensor) and v.shape == () and v.dtype == x.dtype
    tol = 1e-15 if x.dtype == torch.float64 else 1e-6
    assert float((g - rg).abs().max()) <= tol * float(rg.abs().max())
    assert abs(float(v) - float(rv)) <= tol * abs(float(rv))
    return g


def _labels(n, m=3, dtype=torch.int64):
    return torch.randint(0, m, (n,)).to(dtype)


LOSSES = {
    "ce-mean": (nn.CrossEntropyLoss(), "labels"),
    "ce-sum": (nn.CrossEntropyLoss(reduction="sum"), "labels"),
    "ce-weights": (nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0])), "labels"),
    "ce-ignore-hit": (nn.CrossEntropyLoss(ignore_index=1), "labels"),
    "mse-mean": (nn.MSELoss(), "values"),
    "mse-sum": (nn.MSELoss(reduction="sum"), "values"),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(LOSSES))
def test_lean_route_matches_autograd(general, dtype, name):
    lossf, kind = LOSSES[name]
    if "weights" in name:
        lossf = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=dtype))
    model = _model(dtype)
    torch.manual_seed(1)
    x = torch.randn(40, 5, dtype=dtype)
    y = _labels(40) if kind == "labels" else torch.randn(40, 3, dtype=dtype)
    _agree(model, x, y, lossf)
    assert general == []  # served by the lean route


def test_lean_route_our_losses_and_int32_labels(general):
    model = _model()
    x = torch.randn(30, 5, dtype=torch.float64)
    y32 = _labels(30, dtype=torch.int32)
    # (torch's own cross-entropy refuses int32 labels: the reference gets them as int64)
    _agree(model, x, y32, "cross_entropy", lambda F, Y: nn.CrossEntropyLoss()(F, Y.long()))
    yv = torch.randn(30, 3, dtype=torch.float64)
    # cv.MSELoss is half the squared error summed over the outputs: torch's sum-MSE / 2
    half = lambda F, Y: nn.MSELoss(reduction="sum")(F, Y) / 2  # noqa: E731
    _agree(model, x, yv, cv.MSELoss(reduction="sum"), half)
    assert general == []


def test_training_loop_new_minibatch_every_call(general):
    """A new x and y every call, an optimiser step after each: every gradient is autograd's."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    lossf = nn.CrossEntropyLoss()
    for step in range(4):
        x = torch.randn(16 + step, 5, dtype=torch.float64)
        y = _labels(16 + step)
        before = [p.detach().clone() for p in model.parameters()]
        _agree(model, x, y, lossf)
        opt.step()  # with autograd's gradients, left in p.grad by the reference: the weights move
        assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert general == []


def test_in_place_changes_of_x_y_and_weights_are_seen(general):
    model = _model()
    lossf = nn.CrossEntropyLoss()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = _labels(20)
    g0 = _agree(model, x, y, lossf)
    y[0] = (y[0] + 1) % 3
    g1 = _agree(model, x, y, lossf)
    x.mul_(2.0)
    g2 = _agree(model, x, y, lossf)
    with torch.no_grad():
        model[0].weight.add_(0.3)
    g3 = _agree(model, x, y, lossf)
    assert not torch.equal(g0, g1) and not torch.equal(g1, g2) and not torch.equal(g2, g3)
    assert general == []


def test_nothing_of_x_or_y_is_kept():
    model = _model()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = _labels(12)
    cv.value_and_gradient(model, x, y, nn.CrossEntropyLoss())
    yv = torch.randn(12, 3, dtype=torch.float64)
    cv.value_and_gradient(model, x, yv, nn.MSELoss())
    refs = [weakref.ref(a) for a in (x, y, yv)]
    del x, y, yv
    gc.collect()
    assert all(r() is None for r in refs)


def test_structure_changes_between_calls(general):
    """Freezing a parameter, then converting the model to float32, between lean calls: the
    plan kept for the old structure is not used."""
    model = _model()
    x = torch.randn(25, 5, dtype=torch.float64)
    y = _labels(25)
    P = _agree(model, x, y, nn.CrossEntropyLoss()).shape[0]
    model[2].weight.requires_grad_(False)
    g = _agree(model, x, y, nn.CrossEntropyLoss())
    assert g.shape == (cv.parameter_layout(model).size,) == (P - 64,)
    model.float()
    g = _agree(model, x.float(), y, nn.CrossEntropyLoss())
    assert g.dtype == torch.float32 and g.shape == (P - 64,)
    assert general == []


@pytest.mark.parametrize(
    "case",
    ["label-smoothing", "soft-labels", "mini-batches", "params", "backend", "numpy-y", "float32-y"],
)
def test_other_calls_take_the_general_route(general, case):
    model = _model()
    x = torch.randn(18, 5, dtype=torch.float64)
    y = _labels(18)
    lossf = nn.CrossEntropyLoss()
    kw: dict = {}
    ref_y = y
    if case == "label-smoothing":
        lossf = nn.CrossEntropyLoss(label_smoothing=0.2)
    elif case == "soft-labels":
        y = ref_y = torch.softmax(torch.randn(18, 3, dtype=torch.float64), dim=1)
    elif case == "mini-batches":
        kw = {"batch_size": 5}
    elif case == "params":
        kw = {"params": "all"}
    elif case == "backend":
        kw = {"backend": "numpy"}
    elif case == "numpy-y":
        y = y.numpy()
    elif case == "float32-y":
        lossf, y = nn.MSELoss(), torch.randn(18, 3, dtype=torch.float32)
        ref_y = y.double()
    v, g = cv.value_and_gradient(model, x, y, lossf, **kw)
    rv, rg = _ref(model, x, ref_y, lossf)
    assert len(general) == 1
    g = torch.as_tensor(np.asarray(g)) if not isinstance(g, torch.Tensor) else g
    assert float((g - rg).abs().max()) <= 1e-14 * float(rg.abs().max())
    assert abs(float(v) - float(rv)) <= 1e-14 * abs(float(rv))


def test_errors_are_the_general_routes():
    model = _model()
    x = torch.randn(10, 5, dtype=torch.float64)
    lossf = nn.CrossEntropyLoss()
    bad = _labels(10)
    bad[3] = 7
    with pytest.raises(ValueError, match=r"integer labels must lie in \[0, 3\).*got 7"):
        cv.value_and_gradient(model, x, bad, lossf)
    bad[3] = -1
    with pytest.raises(ValueError, match=r"got -1"):
        cv.value_and_gradient(model, x, bad, lossf)
    with pytest.raises(ValueError, match="every target is ignored"):
        cv.value_and_gradient(model, x, torch.full((10,), -100), lossf)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 5\)"):
        cv.value_and_gradient(model, x[:, :4], _labels(10), lossf)
    with pytest.raises(ValueError, match="10 rows"):
        cv.value_and_gradient(model, x, _labels(9), lossf)
    with pytest.raises(TypeError, match="float64"):
        cv.value_and_gradient(model, x.float(), _labels(10), lossf)
    with pytest.raises(ValueError, match="batch_size"):
        cv.value_and_gradient(model, x, _labels(10), lossf, batch_size=0)


def test_lean_route_declines_without_views_or_torch():
    """The gate itself: None (the general route) for what it does not serve."""
    model = _model()
    x = torch.randn(6, 5, dtype=torch.float64)
    y = _labels(6)
    lossf = nn.CrossEntropyLoss()
    assert _lean.lean_value_and_gradient(model, x, y, lossf, None, None, None) is not None
    assert _lean.lean_value_and_gradient(model, x.numpy(), y, lossf, None, None, None) is None
    assert _lean.lean_value_and_gradient(model, x, y.numpy(), lossf, None, None, None) is None
    assert _lean.lean_value_and_gradient(model, x, y, lossf, 3, None, None) is None
    assert _lean.lean_value_and_gradient(model, x, y, lossf, 6, None, None) is not None
    assert _lean.lean_value_and_gradient(model, x, y, lossf, None, "torch", None) is None
    assert _lean.lean_value_and_gradient(model, x, y, lossf, None, None, "all") is None


@pytest.mark.parametrize("shape", [(64, 3), (16, 3), (8, 3), (64, 64), (10, 64), (64, 1)])
def test_mm_into_either_layout(shape):
    """torch's ``mm_into`` computes a few-column ``uᵀδ`` as the transposed product (faster on
    BLAS) and copies it into place: the same numbers, written only into its slot."""
    from hessquik_core.backends import get_backend

    p, q = shape
    u, d = torch.randn(50, p, dtype=torch.float64), torch.randn(50, q, dtype=torch.float64)
    flat = torch.full((p * q + 2,), 7.0, dtype=torch.float64)
    out = flat[1 : 1 + p * q].view(p, q)
    get_backend("torch").mm_into(u.mT, d, out)
    ref = u.T @ d
    assert float((out - ref).abs().max()) <= 1e-14 * float(ref.abs().max())
    assert float(flat[0]) == 7.0 and float(flat[-1]) == 7.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_classifier_with_a_narrow_last_layer(general, dtype):
    """A last layer of 32 -> 3 (its weight gradient takes the transposed-product layout)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3)).to(
        dtype
    )
    x = torch.randn(64, 5, dtype=dtype)
    _agree(model, x, _labels(64), nn.CrossEntropyLoss())
    assert general == []

"""torch loss options honoured (issue 24, item 12): CrossEntropyLoss(ignore_index=,
weight=, label_smoothing=, reduction=) give torch's loss value, gradient and Hessian
(torch.autograd / torch.func on the torch model itself); reduction='none' and an
all-ignored mean are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
from _reference import torch_jit_script_quiet  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, hessian  # noqa: E402

with torch_jit_script_quiet():
    import torch._decomp.decompositions_for_jvp  # noqa: E402, F401

W = [1.0, 2.5, 0.5]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _x():
    return torch.tensor(np.random.default_rng(0).standard_normal((10, 4)))


LABELS = torch.tensor([0, 1, 2, -100, 1, 2, 0, -100, 1, 2])

CASES = {
    "default_ignores_-100": (dict(), LABELS),
    "ignore_index_1": (dict(ignore_index=1), torch.tensor([0, 1, 2, 1, 1, 2, 0, 0, 1, 2])),
    "weight": (dict(weight=W), torch.tensor([0, 1, 2, 0, 1, 2, 0, 2, 1, 2])),
    "weight_ignore": (dict(weight=W), LABELS),
    "smoothing": (dict(label_smoothing=0.1), torch.tensor([0, 1, 2, 0, 1, 2, 0, 2, 1, 2])),
    "all_three": (
        dict(weight=W, ignore_index=2, label_smoothing=0.3),
        torch.tensor([0, 1, 2, 0, 2, 2, 0, 1, 1, 2]),
    ),
    "probabilities_weight_smoothing": (
        dict(weight=W, label_smoothing=0.2),
        torch.softmax(torch.tensor(np.random.default_rng(3).standard_normal((10, 3))), -1),
    ),
}


def _torch_loss(opts, reduction):
    o = dict(opts)
    if "weight" in o:
        o["weight"] = torch.tensor(o["weight"], dtype=torch.float64)
    return nn.CrossEntropyLoss(reduction=reduction, **o)


def _flat_loss(model, x, y, loss):
    names = [(n, p.shape, p.numel()) for n, p in model.named_parameters()]

    def f(theta):
        params, off = {}, 0
        for n, shape, k in names:
            params[n] = theta[off : off + k].reshape(shape)
            off += k
        return loss(functional_call(model, params, (x,)), y)

    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", list(CASES))
def test_cross_entropy_options_match_torch(case, reduction):
    opts, y = CASES[case]
    model, x = _model(), _x()
    loss = _torch_loss(opts, reduction)
    layout = cv.parameter_layout(model)
    f, theta = _flat_loss(model, x, y, loss)
    with torch.no_grad():
        ref_val = loss(model(x), y)
    ref_grad = torch.func.grad(f)(theta)
    ref_H = hessian(f)(theta)
    for bs in (None, 3):  # mini-batches keep the global normaliser
        val, g = cv.value_and_gradient(model, x, y, loss, batch_size=bs)
        assert isinstance(val, torch.Tensor) and val.dtype == torch.float64 and val.shape == ()
        assert abs(float(val) - float(ref_val)) <= 1e-14 * abs(float(ref_val))
        gt = layout.to_torch_order(g, model)
        assert float((gt - ref_grad).abs().max()) <= 1e-14 * float(ref_grad.abs().max())
    H = layout.to_torch_order(cv.hessian(model, x, y, loss, batch_size=4), model, matrix=True)
    assert float((H - ref_H).abs().max()) <= 1e-13 * float(ref_H.abs().max())
    # the per-example gradients are those of torch's reduction='none' losses (unweighted by D)
    A = cv.per_example_gradients(model, x, y, loss)
    none = _torch_loss(opts, "none")
    for n in (0, 3, 7):
        fn, _ = _flat_loss(model, x[n : n + 1], y[n : n + 1], lambda F, t: none(F, t).sum())
        gn = torch.func.grad(fn)(theta)
        assert float((layout.to_torch_order(A[n], model) - gn).abs().max()) <= 1e-14 * max(
            1.0, float(gn.abs().max())
        )


def test_default_torch_cross_entropy_with_ignored_labels_was_refused_or_wrong():
    """The issue's numbers: -100 labels are ignored like torch (was: 'labels must lie in [0, 3)')."""
    model, x = _model(), _x()
    loss = nn.CrossEntropyLoss()
    val, _ = cv.value_and_gradient(model, x, LABELS, loss)
    with torch.no_grad():
        assert float(val) == pytest.approx(float(loss(model(x), LABELS)), rel=1e-14)
    # an ignore_index hit among valid labels changes the mean's denominator too
    y = torch.tensor([0, 1, 2, 1, 1, 2, 0, 0, 1, 2])
    loss = nn.CrossEntropyLoss(ignore_index=1)
    val, _ = cv.value_and_gradient(model, x, y, loss)
    with torch.no_grad():
        assert float(val) == pytest.approx(float(loss(model(x), y)), rel=1e-14)


def test_own_cross_entropy_takes_the_same_options():
    model, x = _model(), _x()
    y = CASES["all_three"][1]
    ours = cv.CrossEntropyLoss(weight=np.array(W), ignore_index=2, label_smoothing=0.3)
    theirs = _torch_loss(CASES["all_three"][0], "mean")
    a = cv.value_and_gradient(model, x, y, ours)
    b = cv.value_and_gradient(model, x, y, theirs)
    assert float(a[0]) == float(b[0]) and torch.equal(a[1], b[1])
    assert "ignore_index=2" in repr(ours) and "label_smoothing=0.3" in repr(ours)
    # Loss's own methods use the same normaliser
    with torch.no_grad():
        F = model(x)
        assert float(ours.value(F, y)) == pytest.approx(float(theirs(F, y)), rel=1e-14)


def test_refusals():
    model, x = _model(), _x()
    with pytest.raises(ValueError, match=r"reduction='none'.*scalar"):
        cv.value_and_gradient(model, x, LABELS, nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="every target is ignored"):
        cv.value_and_gradient(model, x, torch.full((10,), -100), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match=r"lie in \[0, 3\) or equal ignore_index=1, got -100"):
        cv.value_and_gradient(model, x, LABELS, nn.CrossEntropyLoss(ignore_index=1))
    with pytest.raises(ValueError, match=r"class weights must have shape \(3,\)"):
        cv.value_and_gradient(model, x, LABELS, cv.CrossEntropyLoss(weight=[1.0, 2.0]))
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\]"):
        cv.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        cv.CrossEntropyLoss(ignore_index=1.0)
    with pytest.raises(ValueError, match="weight must be a finite vector"):
        cv.CrossEntropyLoss(weight=[1.0, float("nan")])


def test_float32_model_with_float64_data_is_refused_like_torch():
    """Was silently computed in float64; torch refuses the mix, and so does curvature."""
    m32 = nn.Sequential(nn.Linear(4, 3))
    x64 = _x()
    with pytest.raises(RuntimeError):
        m32(x64)  # torch's own refusal
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    for fn in (cv.gradient, cv.hessian, cv.per_example_gradients, cv.hessian_operator):
        with pytest.raises(TypeError, match=r"parameters are float32 \('0.weight'\) and x is float64"):
            fn(m32, x64, y, nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="model.to"):
        cv.gradient(m32, x64.numpy(), y.numpy(), "cross_entropy")  # NumPy data too
    g = cv.gradient(m32, x64.float(), y, nn.CrossEntropyLoss())  # matching dtypes: float32
    assert g.dtype == torch.float32
    m32.zero_grad()
    nn.CrossEntropyLoss()(m32(x64.float()), y).backward()
    ref = torch.cat([m32[0].weight.grad.T.reshape(-1), m32[0].bias.grad])
    assert float((g - ref).abs().max()) <= 1e-6 * float(ref.abs().max())

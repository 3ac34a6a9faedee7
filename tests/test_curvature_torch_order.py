"""ParameterLayout <-> a torch module's named_parameters() order (issue 24, item 2):
flat vectors, (P, P) matrices and operators mapped both ways, checked against
torch.func.hessian / torch.autograd on the torch model itself."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
from _reference import torch_jit_script_quiet  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, hessian  # noqa: E402

from hessquik_core.interop import ResidualBlock  # noqa: E402

with torch_jit_script_quiet():
    import torch._decomp.decompositions_for_jvp  # noqa: E402, F401


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 5),
        nn.Tanh(),
        nn.Sequential(nn.Linear(5, 4), nn.Softplus()),
        ResidualBlock(4, h=0.5, act=nn.Tanh()),
        nn.Linear(4, 3, bias=False),
    ).double()


def _data(n=9):
    rng = np.random.default_rng(1)
    return torch.tensor(rng.standard_normal((n, 3))), torch.tensor(rng.integers(0, 3, n))


def _torch_flat_loss(model, x, y):
    """The loss as a function of torch's flat parameter vector (named_parameters order)."""
    names = [(n, p.shape, p.numel()) for n, p in model.named_parameters()]

    def f(theta):
        params, off = {}, 0
        for n, shape, k in names:
            params[n] = theta[off : off + k].reshape(shape)
            off += k
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, theta


def test_hessian_gradient_and_operator_in_torch_order_match_torch_func():
    model = _model()
    x, y = _data()
    loss = nn.CrossEntropyLoss()
    layout = cv.parameter_layout(model)
    f, theta = _torch_flat_loss(model, x, y)
    H_ref = hessian(f)(theta)
    g_ref = torch.func.grad(f)(theta)

    H = cv.hessian(model, x, y, loss)
    Ht = layout.to_torch_order(H, model, matrix=True)
    assert isinstance(Ht, torch.Tensor) and Ht.shape == H.shape and Ht.dtype == torch.float64
    assert float((Ht - H_ref).abs().max()) <= 1e-13 * float(H_ref.abs().max())
    # without the permutation the two differ: the test can fail
    assert float((H - H_ref).abs().max()) > 1e-3 * float(H_ref.abs().max())
    np.testing.assert_array_equal(layout.from_torch_order(Ht, model, matrix=True).numpy(), H.numpy())

    _, g = cv.value_and_gradient(model, x, y, loss)
    gt = layout.to_torch_order(g, model)
    assert float((gt - g_ref).abs().max()) <= 1e-14 * float(g_ref.abs().max())
    np.testing.assert_array_equal(layout.from_torch_order(gt, model).numpy(), g.numpy())
    back = layout.from_torch_order(g_ref, model)
    assert float((back - g).abs().max()) <= 1e-14 * float(g_ref.abs().max())

    # torch's names and shapes: the autograd gradients of the module itself
    model.zero_grad()
    loss(model(x), y).backward()
    parts = layout.to_torch_parameters(g, model)
    assert list(parts) == [n for n, _ in model.named_parameters()]
    for n, p in model.named_parameters():
        assert parts[n].shape == p.shape
        assert float((parts[n] - p.grad).abs().max()) <= 1e-14 * float(g_ref.abs().max())

    # an operator, both ways, and leading axes of flat arrays
    op = cv.hessian_operator(model, x, y, loss)
    opt = layout.to_torch_order(op, model)
    V = torch.tensor(np.random.default_rng(2).standard_normal((layout.size, 4)))
    assert float((opt @ V - H_ref @ V).abs().max()) <= 1e-13 * float(H_ref.abs().max())
    back = layout.from_torch_order(opt, model)
    assert float((back @ V - H @ V).abs().max()) <= 1e-13 * float(H_ref.abs().max())
    A = cv.per_example_gradients(model, x, y, loss)  # (N, P)
    At = layout.to_torch_order(A, model)
    assert At.shape == A.shape
    np.testing.assert_allclose(At.sum(0).numpy() / x.shape[0], g_ref.numpy(), rtol=0, atol=1e-14)


def test_permutation_is_transposition_of_linear_weights():
    model = nn.Sequential(nn.Linear(2, 3)).double()
    pi = cv.parameter_layout(model).permutation_to(model)
    # ours: K (2, 3) row-major then b; torch: weight (3, 2) row-major then bias
    K_index = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(pi, np.concatenate([K_index.T.ravel(), [6, 7, 8]]))
    assert pi.dtype == np.int64


def test_numpy_arrays_and_the_module_untouched():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layout = cv.parameter_layout(model)
    v = np.arange(layout.size, dtype=np.float64)
    vt = layout.to_torch_order(v, model)
    assert isinstance(vt, np.ndarray) and vt.dtype == np.float64
    np.testing.assert_array_equal(layout.from_torch_order(vt, model), v)
    np.testing.assert_array_equal(v, np.arange(layout.size))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_float32_model_and_hq_network_converted_by_to_torch():
    net = hq.FullyConnectedNN([3, 4, 2], act="tanh", seed=0)
    tm = hq.to_torch(net)
    layout = cv.parameter_layout(net)
    theta = cv.flatten_parameters(net)
    theta_t = torch.cat([p.detach().reshape(-1) for p in tm.parameters()]).numpy()
    np.testing.assert_array_equal(layout.to_torch_order(theta, tm), theta_t)
    tm32 = hq.to_torch(net, dtype=torch.float32)
    assert np.array_equal(layout.permutation_to(tm32), layout.permutation_to(tm))


def test_bad_input():
    model = _model()
    layout = cv.parameter_layout(model)
    P = layout.size
    with pytest.raises(TypeError, match="torch.nn.Module"):
        layout.permutation_to(object())
    with pytest.raises(ValueError, match=r"does not describe from_torch\(module\)"):
        cv.parameter_layout(nn.Linear(1, 2)).permutation_to(model)
    # same P, other structure: the layout is not that of from_torch(other)
    other = nn.Sequential(nn.Linear(P - 1, 1)).double()
    with pytest.raises(ValueError, match="does not describe from_torch"):
        layout.permutation_to(other)
    with pytest.raises(ValueError, match=rf"shape \(\.\.\., {P}\)"):
        layout.to_torch_order(np.ones(P + 1), model)
    with pytest.raises(ValueError, match=rf"shape \({P}, {P}\)"):
        layout.to_torch_order(np.ones((P, 2)), model, matrix=True)
    # tied weights: torch lists a shared Parameter once, the conversion copies it twice
    tied = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    tied[2].weight = tied[0].weight
    lay = cv.parameter_layout(tied)
    with pytest.raises(ValueError, match="P = 12 parameters, the torch module 8"):
        lay.permutation_to(tied)

"""params= chooses the differentiated parameters (issue 24, item 12): a torch model's frozen
parameters (requires_grad=False) are left out by default, as torch autograd leaves them;
names (ours or torch's) select sub-vectors; every function and operator gives the
sub-vector / sub-matrix of the full result (checked against torch.func on the trainable
parameters)."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
from _reference import torch_jit_script_quiet  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, hessian  # noqa: E402

with torch_jit_script_quiet():
    import torch._decomp.decompositions_for_jvp  # noqa: E402, F401


def _model(freeze=("0.weight", "0.bias")):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    for n, p in m.named_parameters():
        p.requires_grad_(n not in freeze)
    return m


def _data(n=8):
    rng = np.random.default_rng(0)
    return torch.tensor(rng.standard_normal((n, 3))), torch.tensor(rng.integers(0, 3, n))


def _trainable_loss(model, x, y, loss):
    """The loss over the trainable parameters only (named_parameters order), for torch.func."""
    train = [(n, p.shape, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def f(theta):
        params, off = dict(fixed), 0
        for n, shape, k in train:
            params[n] = theta[off : off + k].reshape(shape)
            off += k
        return loss(functional_call(model, params, (x,)), y)

    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def test_frozen_parameters_excluded_by_default_like_torch():
    model, (x, y) = _model(), _data()
    loss = nn.CrossEntropyLoss()
    layout = cv.parameter_layout(model)
    assert layout.keys == ("1.K", "1.b", "2.K", "2.b") and layout.size == 20 + 15
    f, theta = _trainable_loss(model, x, y, loss)
    g_ref, H_ref = torch.func.grad(f)(theta), hessian(f)(theta)

    _, g = cv.value_and_gradient(model, x, y, loss)
    assert g.shape == (35,)  # was 51: the frozen first layer included
    assert float((layout.to_torch_order(g, model) - g_ref).abs().max()) <= 1e-14 * float(g_ref.abs().max())
    # autograd on the module itself: the same trainable gradients, by name
    model.zero_grad()
    loss(model(x), y).backward()
    parts = layout.to_torch_parameters(g, model)
    assert list(parts) == ["2.weight", "2.bias", "4.weight", "4.bias"]
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert float((parts[n] - p.grad).abs().max()) <= 1e-15

    H = cv.hessian(model, x, y, loss)
    Ht = layout.to_torch_order(H, model, matrix=True)
    assert float((Ht - H_ref).abs().max()) <= 1e-13 * float(H_ref.abs().max())
    op = cv.hessian_operator(model, x, y, loss)
    assert op.shape == (35, 35)
    V = torch.tensor(np.random.default_rng(1).standard_normal((35, 3)))
    assert float((op @ V - H @ V).abs().max()) <= 1e-13 * float(H.abs().max())
    assert cv.flatten_parameters(model).shape == (35,)


def test_every_function_is_the_restriction_of_the_full_one():
    model, (x, y) = _model(), _data()
    loss = nn.CrossEntropyLoss()
    full = cv.parameter_layout(model, "all")
    sel = cv.parameter_layout(model)
    idx = np.concatenate([np.arange(full.slice(k).start, full.slice(k).stop) for k in sel.keys])
    ix = torch.tensor(idx)

    def sub(a, mat=False):
        return a[ix][:, ix] if mat else a[..., ix]

    def check(a, b, what):
        assert tuple(a.shape) == tuple(b.shape), what
        assert float((a - b).abs().max()) <= 1e-13 * max(1.0, float(b.abs().max())), what

    check(cv.gradient(model, x, y, loss), sub(cv.gradient(model, x, y, loss, params="all")), "gradient")
    check(
        cv.per_example_gradients(model, x, y, loss),
        sub(cv.per_example_gradients(model, x, y, loss, params="all")),
        "per-example",
    )
    for dense, name in ((cv.hessian, "hessian"), (cv.ggn, "ggn"), (cv.empirical_fisher, "fisher")):
        check(dense(model, x, y, loss), sub(dense(model, x, y, loss, params="all"), True), name)
    V = torch.tensor(np.random.default_rng(2).standard_normal((35, 2)))
    Vfull = torch.zeros(51, 2, dtype=torch.float64)
    Vfull[ix] = V
    for vp, name in ((cv.hvp, "hvp"), (cv.ggn_vp, "ggn_vp"), (cv.empirical_fisher_vp, "fisher_vp")):
        check(
            vp(model, x, y, loss, V, batch_size=3), sub(vp(model, x, y, loss, Vfull, params="all").T).T, name
        )
    G = cv.empirical_fisher(model, x, y, loss)
    ev = torch.linalg.eigvalsh(G).flip(0)
    vals, _, info = cv.empirical_fisher_eigenpairs(model, x, y, loss, 4)
    assert info["method"] == "gram"
    check(vals, ev[:4], "fisher eigenvalues")
    vals, _, _ = cv.empirical_fisher_eigenpairs(model, x, y, loss, 4, method="lanczos")
    check(vals, ev[:4], "fisher eigenvalues, lanczos")
    check(cv.empirical_fisher_trace(model, x, y, loss), torch.trace(G), "trace")
    H = cv.hessian(model, x, y, loss)
    hv = cv.hessian_eigenpairs(model, x, y, loss, 3)[0]
    check(hv, torch.linalg.eigvalsh(H).flip(0)[:3], "hessian eigenvalues")


def test_names_ours_or_torchs_and_hq_networks():
    model, (x, y) = _model(freeze=()), _data()
    loss = nn.CrossEntropyLoss()
    assert cv.parameter_layout(model).size == 51  # nothing frozen: everything
    a = cv.gradient(model, x, y, loss, params=["4.bias", "2.weight"])  # torch's names, any order
    b = cv.gradient(model, x, y, loss, params=["1.K", "2.b"])  # ours
    assert torch.equal(a, b) and a.shape == (16 + 3,)
    assert cv.parameter_layout(model, ["4.bias", "2.weight"]).keys == ("1.K", "2.b")
    net = hq.from_torch(model)
    g = cv.gradient(net, x.numpy(), y.numpy(), "cross_entropy", params=["2.b"])
    np.testing.assert_allclose(g, b[16:].numpy(), rtol=0, atol=1e-15)
    H = cv.hessian(net, x.numpy(), y.numpy(), "cross_entropy", params=["0.b", "2.K"])
    Hf = cv.hessian(net, x.numpy(), y.numpy(), "cross_entropy")
    lay = cv.parameter_layout(net)
    idx = np.r_[lay.slice("0.b"), lay.slice("2.K")]
    np.testing.assert_allclose(H, Hf[np.ix_(idx, idx)], rtol=0, atol=1e-15)


def test_params_bad_input():
    model, (x, y) = _model(), _data()
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"unknown parameter '9.weight'; known: \['0.K'"):
        cv.gradient(model, x, y, loss, params=["9.weight"])
    with pytest.raises(TypeError, match="params must be None, 'all' or an iterable"):
        cv.gradient(model, x, y, loss, params=3)
    with pytest.raises(TypeError, match="parameter names"):
        cv.gradient(model, x, y, loss, params=[0])
    with pytest.raises(ValueError, match="selects no parameter"):
        cv.gradient(model, x, y, loss, params=[])
    frozen = _model(freeze=[n for n, _ in _model().named_parameters()])
    with pytest.raises(ValueError, match="every parameter of the torch model is frozen.*params='all'"):
        cv.gradient(frozen, x, y, loss)
    assert cv.gradient(frozen, x, y, loss, params="all").shape == (51,)


def test_a_frozen_torch_parameter_packed_with_trainable_ones_is_refused():
    """GatedMLP packs the U, V and first Linear weights into one key S.K: one of them cannot
    be frozen alone, and the message says how to select instead."""
    from hessquik_core.layers import GatedMLP

    tm = hq.to_torch(hq.NN(GatedMLP(3, 4, 1, 2, act="tanh", seed=0)))
    name = next(n for n, _ in tm.named_parameters() if n.endswith("U.weight"))
    tm.get_parameter(name).requires_grad_(False)
    x, y = np.ones((2, 3)), np.zeros((2, 2))
    with pytest.raises(ValueError, match=rf"torch's '{name}' shares the converted parameter '0.S.K'"):
        cv.gradient(tm, torch.tensor(x), torch.tensor(y), nn.MSELoss())
    assert cv.gradient(tm, torch.tensor(x), torch.tensor(y), nn.MSELoss(), params="all").ndim == 1


def test_selection_in_every_array_library(lib):
    """params= on a hessquik network, in each library: the restriction of the full results."""
    if lib.name == "jax":
        pytest.skip("JAX: the selection is the same Array-API code (take/concat); eager JAX is slow here")
    net = hq.FullyConnectedNN([3, 5, 4, 2], act="tanh", seed=1)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    xl, yl = lib.asarray(x), lib.asarray(y)
    lay = cv.parameter_layout(net)
    sel = ["2.K", "0.b"]
    idx = np.r_[lay.slice("0.b"), lay.slice("2.K")]
    assert cv.parameter_layout(net, sel).keys == ("0.b", "2.K")
    g = cv.gradient(net, xl, yl, "mse", params=sel, backend=lib.backend)
    lib.check(g, (idx.size,), like=xl)
    np.testing.assert_allclose(lib.to_numpy(g), cv.gradient(net, x, y, "mse")[idx], rtol=0, atol=1e-15)
    H = cv.hessian(net, xl, yl, "mse", params=sel, backend=lib.backend, block_size=3)
    lib.check(H, (idx.size, idx.size), like=xl)
    Hf = cv.hessian(net, x, y, "mse")
    np.testing.assert_allclose(lib.to_numpy(H), Hf[np.ix_(idx, idx)], rtol=0, atol=1e-14)
    A = cv.per_example_gradients(net, xl, yl, "mse", params=sel, backend=lib.backend)
    np.testing.assert_allclose(
        lib.to_numpy(A), cv.per_example_gradients(net, x, y, "mse")[:, idx], rtol=0, atol=1e-15
    )

"""Curvature with torch objects and SciPy, progress bars, convergence information.

* torch ``nn.Sequential`` models and torch loss objects are accepted; the
  truth is torch autograd / ``torch.func`` on the torch model itself, with
  the parameter vector mapped to ours (``K`` is torch's ``weight``
  transposed), so the test also pins the documented mapping.
* SciPy's ``eigsh`` and ``LinearOperator`` on operators of every backend;
  ``op @ numpy_array`` on a torch operator.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
from _reference import torch_jit_script_quiet  # noqa: E402

with torch_jit_script_quiet():
    import torch._decomp.decompositions_for_jvp  # noqa: E402, F401


def _torch_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 5),
        torch.nn.Tanh(),
        torch.nn.Linear(5, 4),
        torch.nn.Softplus(),
        torch.nn.Linear(4, 2),
    ).double()


def _perm(model):
    """Indices ``p`` with ``ours = torch_flat[p]``: torch's named_parameters order, weights transposed."""
    out, off = [], 0
    for _, p in model.named_parameters():
        idx = np.arange(off, off + p.numel()).reshape(tuple(p.shape))
        out.append((idx.T if p.ndim == 2 else idx).ravel())
        off += p.numel()
    return np.concatenate(out)


def _torch_truth(model, x, y, loss_fn):
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def C(t):
        parts, off = {}, 0
        for k, s in zip(names, shapes):
            n = int(np.prod(s))
            parts[k] = t[off : off + n].reshape(s)
            off += n
        return loss_fn(torch.func.functional_call(model, parts, (x,)), y)

    with torch_jit_script_quiet():
        H = torch.func.hessian(C)(theta)
    return C(theta).item(), torch.func.grad(C)(theta).numpy(), H.numpy()


@pytest.mark.parametrize(
    "loss_fn, target",
    [
        (torch.nn.MSELoss(), "float"),
        (torch.nn.MSELoss(reduction="sum"), "float"),
        (torch.nn.CrossEntropyLoss(), "labels"),
        (torch.nn.CrossEntropyLoss(reduction="sum"), "labels"),
    ],
    ids=["mse-mean", "mse-sum", "ce-mean", "ce-sum"],
)
def test_torch_model_and_loss_match_torch_autograd(loss_fn, target):
    model = _torch_model()
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((7, 3)))
    y = (
        torch.tensor(rng.standard_normal((7, 2)))
        if target == "float"
        else torch.tensor(rng.integers(0, 2, 7))
    )
    val_t, g_t, H_t = _torch_truth(model, x, y, loss_fn)
    p = _perm(model)

    val, g = cv.value_and_gradient(model, x, y, loss_fn)
    assert isinstance(g, torch.Tensor)
    np.testing.assert_allclose(float(val), val_t, rtol=1e-13)
    np.testing.assert_allclose(g.numpy(), g_t[p], rtol=1e-11, atol=1e-14)
    H = cv.hessian(model, x, y, loss_fn).numpy()
    np.testing.assert_allclose(H, H_t[np.ix_(p, p)], rtol=1e-10, atol=1e-13)
    # the documented reading of a flat vector in torch's order
    layout = cv.parameter_layout(model)
    parts = layout.unflatten(torch.as_tensor(g.numpy()))
    np.testing.assert_allclose(
        parts["0.K"].T.numpy(),
        torch.func.grad(lambda w: _loss_w(model, w, x, y, loss_fn))(model[0].weight.detach()),
    )


def _loss_w(model, w, x, y, loss_fn):
    params = {k: v.detach() for k, v in model.named_parameters()}
    params["0.weight"] = w
    return loss_fn(torch.func.functional_call(model, params, (x,)), y)


def test_torch_model_operator_and_eigenpairs():
    model = _torch_model(2)
    x = torch.tensor(np.random.default_rng(3).standard_normal((6, 3)))
    y = torch.tensor(np.random.default_rng(4).standard_normal((6, 2)))
    net = hq.from_torch(model)
    H_ref = cv.hessian(net, x, y, cv.get_loss(torch.nn.MSELoss()))
    op = cv.hessian_operator(model, x, y, torch.nn.MSELoss())
    np.testing.assert_allclose(op.to_dense().numpy(), H_ref.numpy(), rtol=1e-13, atol=1e-15)
    vals, _ = cv.hessian_eigenpairs(model, x, y, torch.nn.MSELoss(), 3)
    ref = np.sort(np.linalg.eigvalsh(H_ref.numpy()))[::-1][:3]
    np.testing.assert_allclose(vals.numpy(), ref, rtol=1e-8, atol=1e-10)


def test_torch_objects_refused_with_what_to_do():
    model = _torch_model()
    x, y = np.ones((4, 3)), np.ones((4, 2))
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        cv.gradient(hq.from_torch(model), x, y, torch.nn.MSELoss(reduction="none"))
    with pytest.raises(ValueError, match="L1Loss is not supported"):
        cv.gradient(hq.from_torch(model), x, y, torch.nn.L1Loss())
    # label smoothing and class weights are honoured now (tests/test_curvature_torch_losses.py);
    # class weights of the wrong length are refused
    with pytest.raises(ValueError, match=r"class weights must have shape \(2,\)"):
        cv.gradient(
            hq.from_torch(model), x, np.zeros(4, dtype=np.int64), torch.nn.CrossEntropyLoss(torch.ones(3))
        )
    relu = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()).double()
    with pytest.raises(ValueError, match="from_torch"):
        cv.gradient(relu, x, y, "mse")
    with pytest.raises(TypeError, match="torch nn.Sequential"):
        cv.hessian_operator(object(), x, y, "mse")


def test_torch_mse_per_example_is_torch_loss_of_one_example():
    model = _torch_model()
    rng = np.random.default_rng(5)
    x, y = torch.tensor(rng.standard_normal((5, 3))), torch.tensor(rng.standard_normal((5, 2)))
    A = cv.per_example_gradients(model, x, y, torch.nn.MSELoss()).numpy()
    p = _perm(model)
    for n in range(5):
        _, g_n, _ = _torch_truth(model, x[n : n + 1], y[n : n + 1], torch.nn.MSELoss())
        np.testing.assert_allclose(A[n], g_n[p], rtol=1e-11, atol=1e-14)


# --------------------------------------------------------------------------
# SciPy interop and mixed libraries
# --------------------------------------------------------------------------


def _problem(lib):
    net = hq.FullyConnectedNN([3, 6, 3], act="tanh", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)), np.arange(20) % 3
    if lib == "torch":
        x, y = torch.tensor(x), torch.tensor(y)
    elif lib == "array_api_strict":
        xs = pytest.importorskip("array_api_strict")
        x, y = xs.asarray(x), xs.asarray(y)
    return net, x, y


@pytest.mark.parametrize("lib", ["numpy", "torch", "array_api_strict"])
def test_scipy_eigsh_and_linear_operator_on_every_backend(lib):
    from scipy.sparse.linalg import LinearOperator, eigsh

    net, x, y = _problem(lib)
    op = cv.hessian_operator(net, x, y, "cross_entropy")
    H = np.asarray(op.to_dense())
    ref = np.sort(np.linalg.eigvalsh(H))[::-1][:3]
    assert op.dtype == np.float64
    vals = np.sort(eigsh(op, k=3, which="LA", return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(vals, ref, rtol=1e-9, atol=1e-12)
    L = LinearOperator(op.shape, matvec=op.matvec, dtype=op.dtype)
    vals2 = np.sort(eigsh(L, k=3, which="LA", return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(vals2, ref, rtol=1e-9, atol=1e-12)
    vals3 = np.sort(eigsh(op.to_scipy(), k=3, which="LA", return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(vals3, ref, rtol=1e-9, atol=1e-12)


def test_torch_operator_times_numpy_array_gives_numpy():
    net, x, y = _problem("torch")
    op = cv.hessian_operator(net, x, y, "cross_entropy")
    V = np.random.default_rng(1).standard_normal((op.size, 2))
    Vc = V.copy()
    out = op @ V
    assert isinstance(out, np.ndarray) and out.shape == (op.size, 2)
    np.testing.assert_allclose(out, (op @ torch.tensor(V)).numpy(), rtol=1e-14)
    np.testing.assert_allclose(op @ V[:, 0], out[:, 0], rtol=1e-14)
    np.testing.assert_array_equal(V, Vc)
    assert str(op.array_dtype) == "torch.float64"


def test_operator_refuses_other_libraries_clearly():
    net, x, y = _problem("numpy")
    op = cv.hessian_operator(net, x, y, "cross_entropy")
    with pytest.raises(TypeError, match=r"v must be an array of the operator's library \(numpy\), got torch"):
        op @ torch.ones(op.size, dtype=torch.float64)
    with pytest.raises(TypeError, match="must be an array of the operator's library"):
        op @ [1.0] * op.size


# --------------------------------------------------------------------------
# convergence information and progress
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["scipy", "lanczos"])
def test_top_eigenpairs_convergence_info(method):
    net, x, y = _problem("numpy")
    op = cv.hessian_operator(net, x, y, "cross_entropy")
    vals, vecs = cv.top_eigenpairs(op, 3, method=method)  # unchanged two-value return
    v2, w2, info = cv.top_eigenpairs(op, 3, method=method, return_info=True)
    np.testing.assert_array_equal(vals, v2)
    assert info["method"] == method and info["n_products"] >= 3
    assert info["residuals"].shape == (3,)
    assert np.all(info["residuals"] <= 1e-8 * np.max(np.abs(vals)))
    np.testing.assert_allclose(
        info["residuals"], np.linalg.norm(op @ w2 - w2 * v2[None, :], axis=0), rtol=1e-6, atol=1e-13
    )
    assert (info["restarts"] is None) == (method == "scipy")
    with pytest.raises(TypeError, match="return_info"):
        cv.top_eigenpairs(op, 3, return_info=1)


def test_progress_bars_forced_on_and_off(capsys):
    pytest.importorskip("tqdm")
    net, x, y = _problem("numpy")
    op = cv.hessian_operator(net, x, y, "cross_entropy")
    runs = {}
    for flag in (False, True):
        capsys.readouterr()
        runs[flag] = (
            cv.top_eigenpairs(op, 2, method="lanczos", progress=flag)[0],
            cv.hessian(net, x, y, "cross_entropy", block_size=8, progress=flag),
            cv.spectral_density(op, n_vectors=2, n_steps=5, seed=0, progress=flag).nodes,
            cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 2, progress=flag)[0],
            cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 2, method="randomized", progress=flag)[
                0
            ],
        )
        err = capsys.readouterr().err
        if flag:
            for label in ("top 2 eigenpairs", "dense matrix", "Lanczos steps", "empirical Fisher"):
                assert label in err
        else:
            assert err == ""
    for a, b in zip(runs[False], runs[True]):
        np.testing.assert_array_equal(a, b)  # a bar never changes a result


def test_progress_default_is_quiet_when_not_interactive(capsys):
    net, x, y = _problem("numpy")
    cv.hessian(net, x, y, "cross_entropy", block_size=8)  # stderr is captured: not a terminal
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        cv.hessian(net, x, y, "cross_entropy", progress="yes")


def test_progress_true_without_tqdm_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ImportError("no tqdm here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    from hessquik_core._progress import progress_bar

    with pytest.raises(ImportError, match="pip install tqdm"):
        progress_bar(True, desc="x")
    assert not progress_bar(None, desc="x").enabled


# --------------------------------------------------------------------------
# Estimate and SpectralDensity presentation
# --------------------------------------------------------------------------


def test_estimate_str_reads_value_plus_minus_stderr():
    from hessquik_core.estimators import Estimate

    assert str(Estimate(12.34567, 0.0123, 32)) == "12.346 ± 0.012 (32 samples)"
    net, x, y = _problem("numpy")
    est = cv.hutchinson_trace(cv.hessian_operator(net, x, y, "cross_entropy"), 8, seed=0)
    assert " ± " in str(est) and str(est).endswith("(8 samples)")
    s = str(Estimate(torch.tensor([1.0, 2.0]), torch.tensor([0.1, 0.2]), 4))
    assert s == "[1.00 ± 0.10, 2.00 ± 0.20] (4 samples)"


def test_spectral_density_plot():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    net, x, y = _problem("numpy")
    dens = cv.spectral_density(
        cv.hessian_operator(net, x, y, "cross_entropy"), n_vectors=4, n_steps=10, seed=0
    )
    ax = Figure().add_subplot()
    assert dens.plot(ax, color="C1") is ax
    (line,) = ax.get_lines()
    t, phi = line.get_data()
    assert np.trapezoid(phi, t) == pytest.approx(1.0, rel=1e-3)  # the density integrates to 1
    assert len(ax.collections) == 1  # the ± stderr band
    assert ax.get_xlabel() == "eigenvalue"

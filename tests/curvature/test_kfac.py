"""KFAC / EKFAC of output losses (issue 22 item 4): ``hq.curvature.kfac_operator`` / ``ekfac_operator``.

References, float64: the factors against their definition computed with torch.func
(layer inputs from forward hooks, :math:`\\partial f_n/\\partial z_n` as the per-example
Jacobian with respect to the bias, the loss Hessian and gradient by torch.func);
KFAC type-2 equal to the exact Gauss–Newton matrix for one linear layer with MSE;
EKFAC's eigenvalues equal to the Gauss–Newton diagonal in the Kronecker eigenbasis;
inverses against dense algebra; curvlinops' KFAC/EKFAC where it is importable.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv

RTOL = 1e-12


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _net(dtype=np.float64):
    return hq.NN(
        hq.SingleLayer(3, 5, act="tanh", seed=4, dtype=dtype),
        hq.ResnetNN(5, depth=1, h=0.5, act="softplus", seed=6, dtype=dtype),
        hq.SingleLayer(5, 4, act="identity", seed=5, dtype=dtype),
    )


def _data(kind, n=11, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    y = rng.integers(0, 4, n) if kind == "cross_entropy" else rng.standard_normal((n, 4))
    return x, y


def _blocks_of(D, op):
    return [D[b.offset : b.offset + b.size, b.offset : b.offset + b.size] for b in op.blocks]


# --------------------------------------------------------------------------
# the factors against their definition (torch.func)
# --------------------------------------------------------------------------


def _reference_factors(net, x, y, kind, fisher_type):
    """Per layer ``(A, B)`` from the definition: hooks for the inputs, torch.func for the rest."""
    torch = pytest.importorskip("torch")
    from torch.func import functional_call, grad, jacrev, vmap

    model = hq.to_torch(net, dtype=torch.float64)
    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    X = torch.from_numpy(x)
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: inputs.append(inp[0].detach())) for m in lins]
    model(X)
    for h in hooks:
        h.remove()
    names = {id(p): n for n, p in model.named_parameters()}
    params = {n: p.detach() for n, p in model.named_parameters()}
    biases = [names[id(m.bias)] for m in lins]
    Y = torch.from_numpy(y)
    N = x.shape[0]

    def per_loss(f, t):
        if kind == "cross_entropy":
            return torch.nn.functional.cross_entropy(f[None], t[None])
        return 0.5 * ((f - t) ** 2).sum()

    def out(p, xi):
        return functional_call(model, p, (xi[None],))[0]

    F = model(X).detach()
    Jb = vmap(jacrev(out), in_dims=(None, 0))(params, X)  # name -> (N, m, q)
    H = vmap(jacrev(grad(per_loss)))(F, Y)  # (N, m, m), reverse over reverse
    g = vmap(grad(per_loss))(F, Y)  # (N, m)
    res = []
    for a, b in zip(inputs, biases):
        at = torch.cat([a, torch.ones(N, 1, dtype=a.dtype)], dim=1)
        A = at.T @ at / N
        J = Jb[b]
        if fisher_type == "type-2":
            B = torch.einsum("nmq,nmk,nkr->qr", J, H, J) / N
        else:
            gz = torch.einsum("nmq,nm->nq", J, g)
            B = gz.T @ gz / N
        res.append((A.numpy(), B.numpy()))
    return res


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
def test_factors_match_their_definition(kind, fisher_type):
    net = _net()
    x, y = _data(kind)
    op = cv.kfac_operator(net, x, y, kind, fisher_type=fisher_type)
    ref = _reference_factors(net, x, y, kind, fisher_type)
    assert len(op.factors) == len(ref) == 3
    for (A, B), (Ar, Br), blk in zip(op.factors, ref, op.blocks):
        assert type(A) is np.ndarray and A.dtype == np.float64 and A.shape == Ar.shape == (blk.rows,) * 2
        assert B.shape == Br.shape == (blk.cols,) * 2
        assert rel(A, Ar) <= RTOL and rel(B, Br) <= RTOL
    assert [b.keys for b in op.blocks] == [("0.K", "0.b"), ("1.0.layer.K", "1.0.layer.b"), ("2.K", "2.b")]


def test_one_linear_layer_with_mse_kfac_is_the_exact_gauss_newton():
    """:math:`G = w\\sum_n \\tilde a_n\\tilde a_n^\\top\\otimes I = A\\otimes B` when the Jacobian of the
    output is the identity and the loss Hessian constant; one hidden layer breaks it."""
    x, y = _data("mse", n=13)
    for loss in ("mse", cv.MSELoss(reduction="sum")):
        net = hq.SingleLayer(3, 4, act="identity", seed=1)
        G = cv.ggn(net, x, y, loss)
        op = cv.kfac_operator(net, x, y, loss)
        assert op.shape == G.shape == (16, 16)
        assert rel(op.to_dense(), G) <= RTOL
        assert rel(op @ np.eye(16), G) <= RTOL
    deep = hq.FullyConnectedNN([3, 5, 4], act="tanh", seed=0)
    assert rel(cv.kfac_operator(deep, x, y, "mse").to_dense(), cv.ggn(deep, x, y, "mse")) > 1e-3


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_ekfac_eigenvalues_are_the_gauss_newton_diagonal_in_the_kronecker_eigenbasis(kind):
    net = _net()
    x, y = _data(kind)
    G = cv.ggn(net, x, y, kind)
    ek = cv.ekfac_operator(net, x, y, kind)
    kf = cv.kfac_operator(net, x, y, kind)
    for e, Gb, (A, B) in zip(ek.eigendecomposition(), _blocks_of(G, ek), kf.factors):
        Q = np.kron(e.a_vectors, e.b_vectors)
        assert rel(e.values.ravel(), np.diag(Q.T @ Gb @ Q)) <= RTOL
        # the basis is KFAC's: it diagonalises A ⊗ B
        off = Q.T @ np.kron(A, B) @ Q
        assert np.abs(off - np.diag(np.diag(off))).max() <= 1e-12 * np.abs(off).max()
    assert rel(ek.to_dense(), ek @ np.eye(ek.size)) <= RTOL
    assert abs(float(ek.trace()) - np.trace(ek.to_dense())) <= 1e-12 * abs(np.trace(ek.to_dense()))


def test_products_trace_and_eigendecomposition_agree_with_the_dense_matrix():
    net = _net()
    x, y = _data("cross_entropy")
    op = cv.kfac_operator(net, x, y, "cross_entropy")
    D = op.to_dense()
    P = op.size
    assert P == cv.parameter_layout(net).size and D.shape == (P, P)
    V = np.random.default_rng(1).standard_normal((P, 3))
    assert rel(op @ V, D @ V) <= RTOL and rel(op @ V[:, 0], D @ V[:, 0]) <= RTOL
    assert rel(op.matmat(V), D @ V) <= RTOL and rel(op.to_scipy().matmat(V), D @ V) <= RTOL
    assert abs(float(op.trace()) - np.trace(D)) <= 1e-12 * np.trace(D)
    vals, vecs = op.eigendecomposition(dense=True)
    assert rel(vecs.T @ vecs, np.eye(P)) <= 1e-12
    assert rel((vecs * vals) @ vecs.T, D) <= 1e-12
    assert rel(np.sort(vals), np.linalg.eigvalsh(D)) <= 1e-12
    for e, (A, B) in zip(op.eigendecomposition(), op.factors):
        assert rel(e.values, np.outer(e.a_values, e.b_values)) == 0.0
        assert rel((e.a_vectors * e.a_values) @ e.a_vectors.T, A) <= 1e-12
        assert rel((e.b_vectors * e.b_values) @ e.b_vectors.T, B) <= 1e-12


# --------------------------------------------------------------------------
# inverses
# --------------------------------------------------------------------------


def test_inverses_undo_the_damped_operator():
    net = _net()
    x, y = _data("cross_entropy")
    op = cv.kfac_operator(net, x, y, "cross_entropy")
    D = op.to_dense()
    P, delta = op.size, 1e-3
    v = np.random.default_rng(2).standard_normal(P)
    exact = op.inverse(delta)
    assert rel(exact @ (op @ v + delta * v), v) <= 1e-10  # cond(D + δI) ≈ 4e3
    assert rel(exact.to_dense(), np.linalg.inv(D + delta * np.eye(P))) <= 1e-10
    for heuristic, damping in (("pi", delta), (None, delta), (None, (2e-3, 5e-4))):
        inv = op.inverse(damping, heuristic=heuristic)
        mats = []
        for A, B in op.factors:
            if heuristic == "pi":
                pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(B) / len(B)))
                da, db = max(pi * np.sqrt(delta), 1e-8), max(np.sqrt(delta) / pi, 1e-8)
            else:
                da, db = damping if isinstance(damping, tuple) else (damping, damping)
            mats.append(np.kron(A + da * np.eye(len(A)), B + db * np.eye(len(B))))
        from scipy.linalg import block_diag

        K = block_diag(*mats)
        assert rel(inv @ (K @ v), v) <= 1e-10
        assert rel(inv.to_dense(), np.linalg.inv(K)) <= 1e-10
        assert abs(float(inv.trace()) - np.trace(np.linalg.inv(K))) <= 1e-10 * np.trace(np.linalg.inv(K))
    ek = cv.ekfac_operator(net, x, y, "cross_entropy")
    E = ek.to_dense()
    assert rel(ek.inverse(delta) @ (E @ v + delta * v), v) <= 1e-10


def test_singular_or_bad_damping_is_refused():
    net = _net()
    x, y = _data("cross_entropy")
    op = cv.kfac_operator(net, x, y, "cross_entropy")  # B of the last layer is singular (softmax)
    with pytest.raises(ValueError, match="singular.*damping > 0"):
        op.inverse(0.0)
    with pytest.raises(ValueError, match="heuristic must be"):
        op.inverse(1e-3, heuristic="tikhonov")
    with pytest.raises(ValueError, match="pair"):
        op.inverse((1e-3, 1e-3))
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match="damping must be"):
            op.inverse(bad)
    ek = cv.ekfac_operator(net, x, y, "cross_entropy")
    with pytest.raises(ValueError, match="EKFAC damps its eigenvalues"):
        ek.inverse(1e-3, heuristic="pi")
    with pytest.raises(ValueError, match="singular"):
        ek.inverse(0.0)


# --------------------------------------------------------------------------
# Monte-Carlo Fisher, parameter selection, libraries and dtypes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_mc_is_seeded_and_tends_to_type_2(kind):
    net = _net()
    x, y = _data(kind, n=5)
    a = cv.kfac_operator(net, x, y, kind, fisher_type="mc", seed=3).to_dense()
    assert rel(cv.kfac_operator(net, x, y, kind, fisher_type="mc", seed=3).to_dense(), a) == 0.0
    assert rel(cv.kfac_operator(net, x, y, kind, fisher_type="mc", seed=4).to_dense(), a) > 1e-6
    # the expectation of the sampled B is type-2's: the standard error of 20000 draws is ~1 %
    many = cv.kfac_operator(net, x, y, kind, fisher_type="mc", mc_samples=20000, seed=0)
    exact = cv.kfac_operator(net, x, y, kind)
    for (A, B), (Ae, Be) in zip(many.factors, exact.factors):
        assert rel(A, Ae) <= RTOL
        assert 1e-5 < rel(B, Be) < 0.05


def test_directions_swept_in_groups_give_the_same_numbers(monkeypatch):
    """Many classes or MC samples: the backward directions go in groups under a memory budget."""
    from hessquik_core.curvature import _kfac_sweep

    net = _net()
    x, y = _data("cross_entropy")
    cases = [("type-2", 1), ("mc", 7)]
    want = {
        (ft, f.__name__): f(net, x, y, "cross_entropy", fisher_type=ft, mc_samples=M, seed=2).to_dense()
        for ft, M in cases
        for f in (cv.kfac_operator, cv.ekfac_operator)
    }
    # one direction per group: N·(m + 2·width)·8 bytes = 11·(4 + 10)·8
    monkeypatch.setattr(_kfac_sweep, "GROUP_BUDGET", 11 * 14 * 8)
    for ft, M in cases:
        for f in (cv.kfac_operator, cv.ekfac_operator):
            got = f(net, x, y, "cross_entropy", fisher_type=ft, mc_samples=M, seed=2).to_dense()
            assert rel(got, want[(ft, f.__name__)]) <= 1e-13


def test_params_keeps_the_selected_rows_of_each_block():
    net = _net()
    x, y = _data("cross_entropy")
    full = cv.kfac_operator(net, x, y, "cross_entropy")
    sub = cv.kfac_operator(net, x, y, "cross_entropy", params=("0.K", "2.b"))
    assert [b.keys for b in sub.blocks] == [("0.K",), ("2.b",)]
    assert sub.size == 3 * 5 + 4
    (A0, B0), (A2, B2) = sub.factors
    assert rel(A0, full.factors[0][0][:3, :3]) <= RTOL and rel(B0, full.factors[0][1]) <= RTOL
    assert rel(A2, np.ones((1, 1))) <= RTOL and rel(B2, full.factors[2][1]) <= RTOL


def test_torch_equals_numpy_and_float32_follows_float64():
    torch = pytest.importorskip("torch")
    net = _net()
    x, y = _data("cross_entropy")
    ref = cv.ekfac_operator(net, x, y, "cross_entropy")
    model = hq.to_torch(net, dtype=torch.float64)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    for f in (cv.kfac_operator, cv.ekfac_operator):
        op = f(model, X, Y, torch.nn.CrossEntropyLoss())
        assert op.xp.__name__.endswith("torch") and op.array_dtype == torch.float64
        lay = cv.parameter_layout(model)
        D = op.to_dense()
        assert isinstance(D, torch.Tensor) and D.dtype == torch.float64
        want = f(net, x, y, "cross_entropy").to_dense()
        assert (
            rel(
                lay.to_torch_order(D, model, matrix=True).numpy(),
                lay.to_torch_order(want, model, matrix=True),
            )
            <= 1e-11
        )
        v = torch.randn(op.size, dtype=torch.float64)
        assert isinstance(op @ v, torch.Tensor) and isinstance(op @ v.numpy(), np.ndarray)
        assert isinstance(op.inverse(1e-3) @ v, torch.Tensor)
    x32 = x.astype(np.float32)
    op32 = cv.ekfac_operator(_net(np.float32), x32, y, "cross_entropy")
    D32 = op32.to_dense()
    assert D32.dtype == np.float32 and op32.dtype == np.float32
    assert rel(D32, ref.to_dense()) <= 1e-4
    with pytest.raises(TypeError, match="dtype"):
        op32 @ np.ones(op32.size)  # float64 given to a float32 operator


def test_generic_backend_and_numpy_through_torch():
    pytest.importorskip("torch")
    net = _net()
    x, y = _data("mse")
    ref = cv.kfac_operator(net, x, y, "mse").to_dense()
    for backend in ("generic", "torch"):
        op = cv.kfac_operator(net, x, y, "mse", backend=backend)
        D = op.to_dense()
        assert isinstance(D, np.ndarray) and rel(D, ref) <= 1e-12


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_array_api_strict_arrays(kind):
    xps = pytest.importorskip("array_api_strict")
    net = _net()
    x, y = _data(kind)
    for ft in ("type-2", "mc", "empirical"):
        for f in (cv.kfac_operator, cv.ekfac_operator):
            ref = f(net, x, y, kind, fisher_type=ft, seed=1)
            op = f(net, xps.asarray(x), xps.asarray(y), kind, fisher_type=ft, seed=1)
            D = op.to_dense()
            assert type(D).__module__.startswith("array_api_strict") and D.dtype == xps.float64
            assert rel(np.asarray(D), ref.to_dense()) <= RTOL
            v = xps.ones(op.size, dtype=xps.float64)
            got = np.asarray(op.inverse(1e-2) @ v)
            assert rel(got, ref.inverse(1e-2) @ np.ones(op.size)) <= 1e-10


def test_dask_data_give_the_in_memory_numbers():
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    net = _net()
    x, y = _data("cross_entropy", n=40)
    xd, yd = da.from_array(x, chunks=(13, 3)), da.from_array(y, chunks=(13,))
    with dask.config.set(scheduler="threads"):
        for ft in ("type-2", "empirical", "mc"):
            for f in (cv.kfac_operator, cv.ekfac_operator):
                a = f(net, x, y, "cross_entropy", fisher_type=ft, seed=3).to_dense()
                b = f(net, xd, yd, "cross_entropy", fisher_type=ft, seed=3).to_dense()
                assert rel(b, a) <= 1e-12


def test_bad_input_is_refused_before_any_work():
    net = _net()
    x, y = _data("cross_entropy")
    x0, y0 = x.copy(), y.copy()
    with pytest.raises(ValueError, match="fisher_type must be one of"):
        cv.kfac_operator(net, x, y, "cross_entropy", fisher_type="type2")
    with pytest.raises(ValueError, match="only for fisher_type='mc'"):
        cv.kfac_operator(net, x, y, "cross_entropy", mc_samples=3)
    with pytest.raises(ValueError, match="mc_samples must be a positive integer"):
        cv.kfac_operator(net, x, y, "cross_entropy", fisher_type="mc", mc_samples=0)
    with pytest.raises(TypeError, match="seed must be an integer"):
        cv.kfac_operator(net, x, y, "cross_entropy", fisher_type="mc", seed=1.5)
    with pytest.raises(ValueError, match="y must have 11 rows"):
        cv.kfac_operator(net, x, y[:5], "cross_entropy")
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        cv.ekfac_operator(net, x[:, :2], y, "cross_entropy")
    with pytest.raises(ValueError, match="unknown parameter"):
        cv.kfac_operator(net, x, y, "cross_entropy", params=("nope",))
    icnn = hq.ICNN(3, [None, 4, 2], seed=0)
    with pytest.raises(ValueError, match=r"layer 0 is ICNNLayer: use hq.curvature.ggn_operator"):
        cv.kfac_operator(icnn, x, y, "cross_entropy")
    with pytest.raises(TypeError, match="y must hold integer class labels or floating targets"):
        cv.kfac_operator(net, x, y.astype(bool), "cross_entropy")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        with pytest.raises(TypeError, match=r"y must be an array of the same library as x \(numpy\)"):
            cv.kfac_operator(net, x, torch.from_numpy(y), "cross_entropy")
    op = cv.kfac_operator(net, x, y, "cross_entropy")
    with pytest.raises(ValueError, match=r"shape \(74,\), got \(5,\)"):
        op @ np.ones(5)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)  # the caller's arrays untouched


# --------------------------------------------------------------------------
# curvlinops, where both define it (PYTHONPATH with curvlinops 3.0.1)
# --------------------------------------------------------------------------


def _curvlinops_dense(lin, P, torch):
    M = lin @ torch.eye(P, dtype=torch.float64)
    return np.asarray(M.detach() if hasattr(M, "detach") else M)


@pytest.mark.parametrize("loss_name", ["ce_mean", "ce_sum", "mse_mean", "mse_sum"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
def test_equals_curvlinops_kfac_and_ekfac(loss_name, fisher_type):
    torch = pytest.importorskip("torch")
    cl = pytest.importorskip("curvlinops")
    import warnings

    net = _net()
    kind = "cross_entropy" if loss_name.startswith("ce") else "mse"
    x, y = _data(kind)
    model = hq.to_torch(net, dtype=torch.float64)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    red = loss_name.split("_")[1]
    lossf = (
        torch.nn.CrossEntropyLoss(reduction=red)
        if kind == "cross_entropy"
        else torch.nn.MSELoss(reduction=red)
    )
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    lay = cv.parameter_layout(model)
    kw = dict(fisher_type=fisher_type, separate_weight_and_bias=False, check_deterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # curvlinops' own deprecation notices
        K = cl.KFACLinearOperator(model, lossf, params, [(X, Y)], **kw)
        E = cl.EKFACLinearOperator(model, lossf, params, [(X, Y)], **kw)
        refs = {
            "kfac": _curvlinops_dense(K, P, torch),
            "ekfac": _curvlinops_dense(E, P, torch),
            "inv exact": _curvlinops_dense(
                cl.KFACInverseLinearOperator(K, damping=1e-2, use_exact_damping=True), P, torch
            ),
            "inv pi": _curvlinops_dense(
                cl.KFACInverseLinearOperator(K, damping=1e-2, use_heuristic_damping=True), P, torch
            ),
            "inv factors": _curvlinops_dense(cl.KFACInverseLinearOperator(K, damping=(1e-2, 2e-2)), P, torch),
            "ekfac inv": _curvlinops_dense(
                cl.KFACInverseLinearOperator(E, damping=1e-2, use_exact_damping=True), P, torch
            ),
        }
    op = cv.kfac_operator(model, X, Y, lossf, fisher_type=fisher_type)
    ek = cv.ekfac_operator(model, X, Y, lossf, fisher_type=fisher_type)
    ours = {
        "kfac": op.to_dense(),
        "ekfac": ek.to_dense(),
        "inv exact": op.inverse(1e-2).to_dense(),
        "inv pi": op.inverse(1e-2, heuristic="pi").to_dense(),
        "inv factors": op.inverse((1e-2, 2e-2), heuristic=None).to_dense(),
        "ekfac inv": ek.inverse(1e-2).to_dense(),
    }
    for name, ref in refs.items():
        got = lay.to_torch_order(ours[name], model, matrix=True).numpy()
        assert rel(got, ref) <= RTOL, (name, rel(got, ref))

"""Spectra and approximations of curvature operators (hessquik_core.curvature):
Lanczos eigenpairs against dense eigh, top-K of the empirical Fisher, Hutchinson
/ Hutch++ / diagonal estimators, stochastic Lanczos quadrature, and the
low-rank / full-rank approximation operators."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv

pytest.importorskip("scipy")


@functools.cache
def _problem():
    net = hq.FullyConnectedNN([4, 7, 6, 3], act="tanh", seed=3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 4))
    y = rng.integers(0, 3, 30)
    H = cv.hessian(net, x, y, "cross_entropy")
    G = cv.empirical_fisher(net, x, y, "cross_entropy")
    return net, x, y, H, G


def _spd_with_spectrum(rng, lam):
    Q = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))[0]
    return (Q * lam) @ Q.T


def _key(ev, which):
    return {"LA": -ev, "SA": ev, "LM": -np.abs(ev)}[which]


# --------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["scipy", "lanczos"])
@pytest.mark.parametrize("which", ["LA", "LM", "SA"])
def test_hessian_eigenpairs_vs_dense_eigh(which, method):
    net, x, y, H, _ = _problem()
    ev = np.linalg.eigvalsh(H)
    k = 6
    vals, vecs = cv.hessian_eigenpairs(net, x, y, "cross_entropy", k, which=which, method=method, seed=1)
    ref = ev[np.argsort(_key(ev, which), kind="stable")[:k]]
    np.testing.assert_allclose(vals, ref, rtol=1e-9, atol=1e-12)
    # sorted: descending for LA, descending |λ| for LM, ascending for SA
    key = _key(vals, which)
    assert np.all(np.diff(key) >= -1e-12)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-10)
    assert np.linalg.norm(H @ vecs - vecs * vals, axis=0).max() <= 1e-8 * np.abs(ev).max()


def test_native_lanczos_restarts_on_clustered_spectrum(rng):
    """Small basis (many thick restarts), a cluster and a degenerate top eigenvalue."""
    lam = np.concatenate([[5.0, 5.0, 4.9], np.linspace(-1.0, 1.0, 77)])
    A = _spd_with_spectrum(rng, lam)
    for which in ("LA", "LM"):
        vals, vecs = cv.top_eigenpairs(A, 3, which=which, method="lanczos", ncv=8, seed=2)
        np.testing.assert_allclose(vals, [5.0, 5.0, 4.9], rtol=1e-10)
        assert np.linalg.norm(A @ vecs - vecs * vals) <= 1e-8
    # k close to P and an exhausted Krylov space (rank-2 matrix)
    vals, _ = cv.top_eigenpairs(A[:10, :10], 9, method="lanczos")
    np.testing.assert_allclose(
        vals, np.sort(np.linalg.eigvalsh(A[:10, :10]))[::-1][:9], rtol=1e-10, atol=1e-12
    )
    u = rng.standard_normal((30, 2))
    vals, _ = cv.top_eigenpairs(u @ u.T, 2, method="lanczos")
    np.testing.assert_allclose(vals, np.sort(np.linalg.eigvalsh(u @ u.T))[::-1][:2], rtol=1e-10)


def test_lanczos_no_convergence_is_reported(rng):
    A = _spd_with_spectrum(rng, np.linspace(0.0, 1.0, 60))
    with pytest.raises(cv.LanczosNoConvergence, match="did not converge") as err:
        cv.top_eigenpairs(A, 4, method="lanczos", ncv=6, maxiter=2)
    assert err.value.eigenvalues.shape == (4,) and err.value.eigenvectors.shape == (60, 4)


def test_lanczos_all_libraries(lib):
    if lib.name == "jax":
        pytest.skip("eager JAX: covered by the numpy-generic / array_api_strict runs")
    _, _, _, H, _ = _problem()
    A = lib.asarray(H)
    ev = np.sort(np.linalg.eigvalsh(H))[::-1]
    methods = ["lanczos", "scipy", "auto"]
    for method in methods:
        vals, vecs = cv.top_eigenpairs(A, 4, method=method, seed=0)
        lib.check(vecs, (H.shape[0], 4), like=A)
        lib.check(vals, (4,), like=A)
        np.testing.assert_allclose(lib.to_numpy(vals), ev[:4], rtol=1e-9)


def test_lanczos_seed_reproducible_and_bad_input():
    _, _, _, H, _ = _problem()
    a = cv.top_eigenpairs(H, 3, method="lanczos", seed=7)[1]
    b = cv.top_eigenpairs(H, 3, method="lanczos", seed=7)[1]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="which"):
        cv.top_eigenpairs(H, 3, which="BE")
    with pytest.raises(ValueError, match="k must be"):
        cv.top_eigenpairs(H, H.shape[0])
    with pytest.raises(ValueError, match="method"):
        cv.top_eigenpairs(H, 2, method="arnoldi")


def test_float32_operator():
    _, _, _, H, _ = _problem()
    A32 = H.astype(np.float32)
    ev = np.sort(np.linalg.eigvalsh(H))[::-1][:3]
    for method in ("scipy", "lanczos"):
        vals, vecs = cv.top_eigenpairs(A32, 3, method=method)
        assert vals.dtype == np.float32 and vecs.dtype == np.float32
        np.testing.assert_allclose(vals, ev, rtol=1e-4)


# --------------------------------------------------------------------------
# top-K of G from per-example gradients
# --------------------------------------------------------------------------


def _approx_call(*args, **kwargs):
    """An approximate route: its ApproximationWarning (if any) is part of its contract."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cv.ApproximationWarning)
        return cv.empirical_fisher_eigenpairs(*args, **kwargs)


@pytest.mark.parametrize("method", ["approx_incremental", "approx_randomized", "incremental", "randomized"])
def test_empirical_fisher_eigenpairs_vs_dense(method):
    net, x, y, _, G = _problem()
    ev, evec = np.linalg.eigh(G)
    ev, evec = ev[::-1], evec[:, ::-1]
    k = 4
    vals, vecs, info = _approx_call(
        net, x, y, "cross_entropy", k, method=method, batch_size=7, oversample=10, n_iter=3, seed=0
    )
    np.testing.assert_allclose(vals, ev[:k], rtol=1e-6)
    # eigenvectors up to sign, well-separated top of the spectrum
    np.testing.assert_allclose(np.abs(np.sum(vecs * evec[:, :k], axis=0)), 1.0, atol=1e-5)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-10)
    assert info["method"] == ("approx_" + method if not method.startswith("approx_") else method)
    assert all(np.all(np.asarray(v) >= 0) for k_, v in info.items() if k_ != "method")


def test_incremental_svd_exact_when_rank_fits():
    """N ≤ k + oversample: the streamed factor is exact, nothing discarded, no warning."""
    net, x, y, _, _ = _problem()
    xs, ys = x[:12], y[:12]
    G = cv.empirical_fisher(net, xs, ys, "cross_entropy")
    ev = np.sort(np.linalg.eigvalsh(G))[::-1]
    vals, _, info = cv.empirical_fisher_eigenpairs(
        net, xs, ys, "cross_entropy", 5, method="approx_incremental", batch_size=5, oversample=7
    )
    np.testing.assert_allclose(vals, ev[:5], rtol=1e-10, atol=1e-14)
    assert info["discarded"] == pytest.approx(0.0, abs=1e-12 * ev[0])


def test_empirical_fisher_eigenpairs_torch():
    torch = pytest.importorskip("torch")
    net, x, y, _, G = _problem()
    ev = np.sort(np.linalg.eigvalsh(G))[::-1]
    for method in ("exact", "dense", "gram", "lanczos", "approx_incremental", "approx_randomized"):
        vals, vecs, _ = _approx_call(
            net, torch.tensor(x), torch.tensor(y), "cross_entropy", 3, method=method, batch_size=10, n_iter=3
        )
        assert isinstance(vals, torch.Tensor) and isinstance(vecs, torch.Tensor)
        assert vals.dtype == vecs.dtype == torch.float64 and tuple(vecs.shape) == (G.shape[0], 3)
        np.testing.assert_allclose(vals.numpy(), ev[:3], rtol=1e-6 if "approx" in method else 1e-12)


# --------------------------------------------------------------------------
# G exact by default (issue 24, item 1)
# --------------------------------------------------------------------------


def _opg_problem(n=100, widths=(4, 16, 3)):
    """The docs' example: N = 100 examples, P = 131 parameters, 10 requested pairs."""
    net = hq.FullyConnectedNN(list(widths), act="tanh", seed=0)
    x = np.random.default_rng(0).standard_normal((n, widths[0]))
    y = np.arange(n) % widths[-1]
    return net, x, y


def _check_pairs(vals, vecs, G, k, rtol):
    ev, V = np.linalg.eigh(G)
    ev, V = ev[::-1], V[:, ::-1]
    assert vals.shape == (k,) and vecs.shape == (G.shape[0], k)
    np.testing.assert_allclose(vals, ev[:k], rtol=0, atol=rtol * ev[0])
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=rtol)
    # eigenvectors: the residual G q - λ q, and the projector onto the top-k space
    assert np.linalg.norm(G @ vecs - vecs * vals, axis=0).max() <= rtol * ev[0]
    np.testing.assert_allclose(vecs @ vecs.T, V[:, :k] @ V[:, :k].T, atol=rtol)


def test_empirical_fisher_eigenpairs_exact_by_default():
    """The default is exact to rounding, with no warning (was: incremental, 1e-5..5 % off)."""
    net, x, y = _opg_problem()
    G = cv.empirical_fisher(net, x, y, "cross_entropy")
    vals, vecs, info = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 10)
    _check_pairs(vals, vecs, G, 10, 1e-12)
    assert info["method"] == "gram"  # N = 100 <= P = 131


@pytest.mark.parametrize("method", ["gram", "dense", "lanczos"])
@pytest.mark.parametrize("n", [12, 100, 400])  # N < P, N ≈ P, N > P
def test_empirical_fisher_exact_routes(method, n):
    net, x, y = _opg_problem(n)
    G = cv.empirical_fisher(net, x, y, "cross_entropy")
    vals, vecs, info = cv.empirical_fisher_eigenpairs(
        net, x, y, "cross_entropy", 8, method=method, batch_size=37
    )
    assert info["method"] == method
    _check_pairs(vals, vecs, G, 8, 1e-10 if method == "lanczos" else 1e-12)


def test_exact_picks_dense_or_lanczos_by_size_and_budget():
    net, x, y = _opg_problem(400)  # P = 131 < N
    assert cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 3)[2]["method"] == "dense"
    _, _, info = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 3, memory_budget=1000)
    assert info["method"] == "lanczos" and info["residuals"].shape == (3,)
    net, x, y = _opg_problem(50)
    _, _, info = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 3, memory_budget=1000)
    assert info["method"] == "lanczos"


def test_gram_route_beyond_the_rank_completes_with_null_vectors():
    """k > N: eigenvalues past rank A are exact zeros, the vectors orthonormal and in the null space."""
    net, x, y = _opg_problem(5)
    G = cv.empirical_fisher(net, x, y, "cross_entropy")
    vals, vecs, info = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 9)
    assert info["method"] == "gram"
    _check_pairs(vals[:5], vecs[:, :5], G, 5, 1e-12)
    assert np.all(vals[5:] == 0)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(9), atol=1e-12)
    assert np.abs(G @ vecs[:, 5:]).max() <= 1e-12 * np.abs(G).max()


def test_approximate_routes_warn_when_their_bound_is_large():
    net, x, y = _opg_problem()
    with pytest.warns(cv.ApproximationWarning, match=r"approx_incremental.*discarded.*method='exact'"):
        vals, _, info = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 10, method="incremental")
    assert info["discarded"] > 1e-3 * float(vals[-1])
    with pytest.warns(cv.ApproximationWarning, match="Ritz residual"):
        cv.empirical_fisher_eigenpairs(
            net, x, y, "cross_entropy", 10, method="approx_randomized", n_iter=0, oversample=0
        )
    # a generous tolerance silences it
    cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 10, method="incremental", warn_rtol=1e9)


def test_empirical_fisher_eigenpairs_bad_arguments():
    net, x, y = _opg_problem(20)
    with pytest.raises(ValueError, match="method must be one of.*approx_incremental"):
        cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 2, method="svd")
    with pytest.raises(ValueError, match="warn_rtol"):
        cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 2, warn_rtol=-1.0)
    with pytest.raises(ValueError, match="k must be at most P = 131"):
        cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 132)
    with pytest.raises(ValueError, match="k must be below P = 131"):
        cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 131, method="lanczos")


def test_empirical_fisher_trace_is_exact():
    net, x, y = _opg_problem()
    A = cv.per_example_gradients(net, x, y, "cross_entropy")
    for bs in (None, 7):
        t = cv.empirical_fisher_trace(net, x, y, "cross_entropy", batch_size=bs)
        assert isinstance(t, (np.ndarray, np.generic)) and t.shape == () and t.dtype == np.float64
        assert float(t) == pytest.approx(np.sum(A * A) / x.shape[0], rel=1e-14)
    torch = pytest.importorskip("torch")
    t = cv.empirical_fisher_trace(net, torch.tensor(x), torch.tensor(y), torch.nn.CrossEntropyLoss())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    assert float(t) == pytest.approx(np.sum(A * A) / x.shape[0], rel=1e-13)


# --------------------------------------------------------------------------
# Hutchinson, Hutch++, diagonal
# --------------------------------------------------------------------------


def test_hutchinson_trace_statistics():
    net, x, y, H, _ = _problem()
    op = cv.hessian_operator(net, x, y, "cross_entropy")
    est = cv.hutchinson_trace(op, 200, seed=11)
    assert est.num_samples == 200 and est.stderr > 0
    assert abs(est.value - np.trace(H)) <= 4 * est.stderr
    # reproducible from the seed, and identical probes across backends
    again = cv.hutchinson_trace(H, 200, seed=11)
    assert again.value == pytest.approx(est.value, rel=1e-12)
    # the standard error is the sample one: recompute it from the probes
    Z = np.random.default_rng(11).choice(np.array([-1.0, 1.0]), size=(H.shape[0], 200))
    s = np.sum(Z * (H @ Z), axis=0)
    assert est.stderr == pytest.approx(s.std(ddof=1) / np.sqrt(200), rel=1e-10)
    # Rademacher probes are exact on a diagonal matrix
    D = np.diag(np.arange(1.0, 11.0))
    exact = cv.hutchinson_trace(D, 3, seed=0)
    assert exact.value == pytest.approx(55.0) and exact.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchpp_low_rank_exact_and_unbiased(rng):
    u = rng.standard_normal((50, 4))
    A = u @ u.T
    est = cv.hutchpp_trace(A, 30, seed=1)  # sketch of 10 columns captures rank 4
    assert est.value == pytest.approx(np.trace(A), rel=1e-10)
    assert est.stderr == pytest.approx(0.0, abs=1e-8 * np.trace(A))
    B = _spd_with_spectrum(rng, 1.0 / np.arange(1, 61) ** 1.5)
    vals = [cv.hutchpp_trace(B, 24, seed=s) for s in range(5)]
    for e in vals:
        assert abs(e.value - np.trace(B)) <= 5 * e.stderr + 1e-12
    h = [cv.hutchinson_trace(B, 24, seed=s) for s in range(5)]
    # Hutch++ has far smaller spread than Hutchinson on a decaying spectrum
    assert np.mean([e.stderr for e in vals]) < 0.5 * np.mean([e.stderr for e in h])


def test_hutchinson_diagonal(lib, rng):
    if lib.name == "jax":
        pytest.skip("eager JAX: covered by the other libraries")
    A = _spd_with_spectrum(rng, np.linspace(0.1, 2.0, 20))
    est = cv.hutchinson_diagonal(lib.asarray(A), 400, seed=3)
    lib.check(est.value, (20,), like=lib.asarray(A))
    v, se = lib.to_numpy(est.value), lib.to_numpy(est.stderr)
    assert np.all(np.abs(v - np.diag(A)) <= 5 * se)
    D = np.diag(np.arange(1.0, 6.0))
    exact = cv.hutchinson_diagonal(lib.asarray(D), 2, seed=0)
    np.testing.assert_allclose(lib.to_numpy(exact.value), np.arange(1.0, 6.0))


# --------------------------------------------------------------------------
# stochastic Lanczos quadrature
# --------------------------------------------------------------------------


def test_slq_gauss_quadrature_is_exact_for_low_degree(rng):
    """Σ_j τ_j θ_j^p = vᵀ A^p v for p < 2m: the weights are (e₁ᵀy_j)²."""
    A = _spd_with_spectrum(rng, rng.uniform(-1, 2, 40))
    m = 6
    sd = cv.spectral_density(A, n_vectors=3, n_steps=m, seed=4)
    Z = np.random.default_rng(4).choice(np.array([-1.0, 1.0]), size=(40, 3))
    V = Z / np.linalg.norm(Z, axis=0)
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, rtol=1e-12)
    for p in range(2 * m):
        Ap = np.linalg.matrix_power(A, p)
        np.testing.assert_allclose(
            np.sum(sd.weights * sd.nodes**p, axis=1), np.sum(V * (Ap @ V), axis=0), rtol=1e-8, atol=1e-10
        )
    # the trace estimate equals Hutchinson's with the same probes
    tr = sd.trace()
    assert tr.value == pytest.approx(np.mean(np.sum(Z * (A @ Z), axis=0)), rel=1e-10)


def test_slq_full_steps_recovers_spectrum(rng):
    lam = np.array([-1.0, 0.5, 2.0, 3.0, 3.0, 7.0])
    A = _spd_with_spectrum(rng, lam)
    sd = cv.spectral_density(A, n_vectors=2, n_steps=10, seed=0)  # more steps than P: stops at the exact T
    for row_nodes, row_w in zip(sd.nodes, sd.weights):
        heavy = row_nodes[row_w > 1e-10]
        assert all(np.min(np.abs(lam - t)) < 1e-8 for t in heavy)
    grid = np.linspace(-3, 9, 4001)
    dens, se = sd.density(grid, sigma=0.05)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, rel=1e-6)
    assert dens.shape == se.shape == grid.shape
    # log-determinant-style functional: tr f(A) within its stated spread for many probes
    sd2 = cv.spectral_density(_spd_with_spectrum(rng, np.linspace(1, 2, 30)), n_vectors=40, n_steps=8, seed=1)
    est = sd2.trace(np.log)
    assert abs(est.value - np.sum(np.log(np.linspace(1, 2, 30)))) <= 5 * est.stderr + 1e-10


def test_slq_on_hessian_operator_torch():
    torch = pytest.importorskip("torch")
    net, x, y, H, _ = _problem()
    op = cv.hessian_operator(net, torch.tensor(x), torch.tensor(y), "cross_entropy")
    sd = cv.spectral_density(op, n_vectors=4, n_steps=12, seed=2)
    ref = cv.spectral_density(H, n_vectors=4, n_steps=12, seed=2)
    np.testing.assert_allclose(sd.nodes, ref.nodes, atol=1e-8)
    np.testing.assert_allclose(sd.weights, ref.weights, atol=1e-8)
    assert np.all(sd.nodes.max(axis=1) <= np.linalg.eigvalsh(H).max() + 1e-10)


# --------------------------------------------------------------------------
# approximations
# --------------------------------------------------------------------------


def test_low_and_full_rank_approximations(lib, rng):
    if lib.name == "jax":
        pytest.skip("eager JAX: covered by the other libraries")
    _, _, _, H, _ = _problem()
    P, K = H.shape[0], 8
    ev, Qall = np.linalg.eigh(H)
    idx = np.argsort(-np.abs(ev))[:K]
    lam, Q = ev[idx], Qall[:, idx]
    lt = 0.37
    dense_low = (Q * lam) @ Q.T
    dense_full = dense_low + lt * (np.eye(P) - Q @ Q.T)
    low = cv.LowRankApproximation(lib.asarray(lam), lib.asarray(Q))
    full = cv.FullRankApproximation(lib.asarray(lam), lib.asarray(Q), lt)
    b = rng.standard_normal((P, 3))
    bl = lib.asarray(b)
    for op, D in ((low, dense_low), (full, dense_full)):
        out = op @ bl
        lib.check(out, (P, 3), like=bl)
        np.testing.assert_allclose(lib.to_numpy(out), D @ b, atol=1e-12)
        np.testing.assert_allclose(lib.to_numpy(op.to_dense()), D, atol=1e-12)
        np.testing.assert_allclose(
            lib.to_numpy(op.quadratic_form(bl)), np.sum(b * (D @ b), axis=0), rtol=1e-10
        )
        np.testing.assert_allclose(lib.to_numpy(op.diagonal()), np.diag(D), atol=1e-12)
        assert op.trace() == pytest.approx(np.trace(D), rel=1e-10)
    # full rank: closed-form inverse and damped solve against dense solves
    np.testing.assert_allclose(
        lib.to_numpy(full.solve(bl)), np.linalg.solve(dense_full, b), rtol=1e-9, atol=1e-10
    )
    np.testing.assert_allclose(
        lib.to_numpy(full.solve(bl[:, 0], damping=0.5)),
        np.linalg.solve(dense_full + 0.5 * np.eye(P), b[:, 0]),
        rtol=1e-9,
        atol=1e-10,
    )
    np.testing.assert_allclose(
        lib.to_numpy(full.inverse().to_dense()), np.linalg.inv(dense_full), rtol=1e-8, atol=1e-9
    )
    sign, logdet = full.slogdet()
    ref_sign, ref_logdet = np.linalg.slogdet(dense_full)
    assert sign == ref_sign and logdet == pytest.approx(ref_logdet, rel=1e-10)
    # low rank: pseudo-inverse, and damped inverse
    np.testing.assert_allclose(
        lib.to_numpy(low.solve(bl)), np.linalg.pinv(dense_low, rcond=1e-10) @ b, rtol=1e-8, atol=1e-9
    )
    np.testing.assert_allclose(
        lib.to_numpy(low.solve(bl, damping=0.2)),
        np.linalg.solve(dense_low + 0.2 * np.eye(P), b),
        rtol=1e-8,
        atol=1e-9,
    )


def test_full_rank_from_trace_and_pipeline():
    net, x, y, _, G = _problem()
    vals, vecs, _ = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 5)
    approx = cv.FullRankApproximation.from_trace(vals, vecs, np.trace(G))
    assert approx.trace() == pytest.approx(np.trace(G), rel=1e-10)
    # the top-K part agrees with G on the span of the eigenvectors
    np.testing.assert_allclose(vecs.T @ (approx @ vecs), vecs.T @ G @ vecs, atol=1e-7)
    with pytest.raises(ZeroDivisionError):
        cv.FullRankApproximation(vals, vecs, 0.0).solve(np.ones(vecs.shape[0]))
    with pytest.raises(ValueError, match="eigenvalues must have shape"):
        cv.LowRankApproximation(vals[:2], vecs)


@pytest.mark.parametrize("n", [5, 60])  # k > N (null-space completion), N ≈ P
def test_empirical_fisher_exact_routes_every_library(lib, n):
    if lib.name == "jax":
        pytest.skip("JAX: same Array-API code; eager JAX is slow here")
    net, x, y = _opg_problem(n, widths=(3, 6, 2))  # P = 38
    G = cv.empirical_fisher(net, x, y, "cross_entropy")
    for method in ("gram", "dense"):
        vals, vecs, _ = cv.empirical_fisher_eigenpairs(
            net, lib.asarray(x), lib.asarray(y), "cross_entropy", 7, method=method, backend=lib.backend
        )
        lib.check(vecs, (38, 7), like=lib.asarray(x))
        vals, vecs = lib.to_numpy(vals), lib.to_numpy(vecs)
        r = min(n, 7)  # past rank A = N the pairs are (0, a null vector)
        _check_pairs(vals[:r], vecs[:, :r], G, r, 1e-12)
        np.testing.assert_allclose(vecs.T @ vecs, np.eye(7), atol=1e-12)
        assert np.abs(G @ vecs[:, r:]).max(initial=0.0) <= 1e-12 * np.abs(G).max()


def test_dask_route_is_named_approximate_and_warns():
    """Dask data has the randomized route only: it says so (info, name) and warns like in memory."""
    da = pytest.importorskip("dask.array")
    net, x, y = _opg_problem(60)
    xd, yd = da.from_array(x, chunks=(20, 4)), da.from_array(y, chunks=(20,))
    vals, _, info = cv.empirical_fisher_eigenpairs(net, xd, yd, "cross_entropy", 3, n_iter=4)
    assert info["method"] == "approx_randomized"
    exact = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 3)[0]
    np.testing.assert_allclose(np.asarray(vals), exact, rtol=1e-6)
    with pytest.warns(cv.ApproximationWarning, match="Ritz residual"):
        cv.empirical_fisher_eigenpairs(net, xd, yd, "cross_entropy", 10, n_iter=0, oversample=0)
    with pytest.raises(ValueError, match="approx_randomized"):
        cv.empirical_fisher_eigenpairs(net, xd, yd, "cross_entropy", 3, method="exact")

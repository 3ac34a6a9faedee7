r"""Spectra of curvature operators: eigenpairs, traces, diagonals and densities.

Everything here acts on a symmetric operator (:class:`~.params.LinearOperatorBase`:
a :class:`~.params.CurvatureOperator`, an approximation, or a dense matrix via
:func:`~.params.aslinearoperator`) through products with blocks of vectors
only, in the operator's own array library. Random probes are drawn on the
host with ``numpy.random.default_rng(seed)``, so one seed gives the same
probes on every backend; every stochastic estimate reports its spread.

* :func:`top_eigenpairs`: ``K`` extreme eigenpairs by Lanczos — SciPy's
  ARPACK (``eigsh``) on host copies, or a thick-restart Lanczos with full
  reorthogonalisation kept in the operator's library (``O(ncv·P)``
  memory, ``ncv ≈ 2K``).
* :func:`empirical_fisher_eigenpairs`: top ``K`` of :math:`G = \frac1N\sum_n g_n g_n^\top`
  by incremental SVD of per-example gradient mini-batches or by
  randomised subspace iteration on :math:`G`-products, ``O(KP)`` memory.
* :func:`hutchinson_trace`, :func:`hutchpp_trace`, :func:`hutchinson_diagonal`.
* :func:`spectral_density`: stochastic Lanczos quadrature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._dask_hook import dask_dispatch
from ..estimators import Estimate
from .params import (
    _Problem,
    aslinearoperator,
    empirical_fisher_operator,
    hessian_operator,
)

__all__ = [
    "LanczosNoConvergence",
    "SpectralDensity",
    "empirical_fisher_eigenpairs",
    "hessian_eigenpairs",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_tridiagonal",
    "spectral_density",
    "top_eigenpairs",
]

_WHICH = ("LA", "LM", "SA")
_METHODS = ("auto", "scipy", "lanczos")


class LanczosNoConvergence(RuntimeError):
    """Raised when the wanted Ritz pairs have not converged within ``maxiter`` restarts.

    ``eigenvalues``, ``eigenvectors`` and ``residuals`` hold the last Ritz
    approximations (host NumPy arrays for the residuals).
    """

    def __init__(self, msg, eigenvalues, eigenvectors, residuals):
        super().__init__(msg)
        self.eigenvalues, self.eigenvectors, self.residuals = eigenvalues, eigenvectors, residuals


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_int(name, v, lo=1, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}, got {v!r}")
    return int(v)


def _order(theta, which):
    """Indices of ``theta`` from most to least wanted."""
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def _host_dtype(op):
    return np.dtype(str(op.dtype).split(".")[-1])


# --------------------------------------------------------------------------
# top-K eigenpairs
# --------------------------------------------------------------------------


def _auto_method(op) -> str:
    """SciPy's ARPACK for host arrays; the native Lanczos for device arrays.

    Chosen from ``benchmarks/results/curvature.md`` (top 10 at P = 85 002 on
    CPU): both routes need about the same number of products; ARPACK was
    10 % faster with NumPy, equal within noise with torch on CPU (whose
    tensors reach the host as copy-free views), and held half the memory.
    On a GPU every ARPACK step would move two ``P``-vectors across the bus
    and synchronise; the native Lanczos keeps the basis on the device
    (reasoned, not measured: no GPU was available).
    """
    dev = str(op.device).lower()
    if "cuda" in dev or "gpu" in dev or type(op.device).__module__.split(".")[0] == "cupy":
        return "lanczos"
    return "scipy"


def top_eigenpairs(
    op,
    k: int,
    *,
    which: str = "LA",
    method: str = "auto",
    tol: float = 0.0,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed=0,
):
    r"""``k`` extreme eigenpairs of a symmetric operator by Lanczos iteration.

    Parameters
    ----------
    op : LinearOperatorBase or array (P, P)
    k : int, ``1 <= k < P``
    which : {"LA", "LM", "SA"}
        Algebraically largest (sorted descending), largest magnitude (sorted
        by descending :math:`|\lambda|`), smallest algebraic (ascending).
    method : {"auto", "scipy", "lanczos"}
        ``"scipy"``: ``scipy.sparse.linalg.eigsh`` (ARPACK) on host copies
        of the Lanczos vectors; ``"lanczos"``: thick-restart Lanczos with
        full reorthogonalisation in the operator's library. ``"auto"``: see
        :func:`_auto_method`.
    tol : float
        Relative accuracy: stop when every wanted Ritz residual is below
        ``max(tol, eps)·max|θ|``. 0 means machine precision (ARPACK's meaning).
    maxiter : int, optional
        Restarts (native) or ARPACK iterations.
    ncv : int, optional
        Lanczos basis size, default ``min(P, max(2k + 1, k + 20))``.
    seed : int or Generator
        Start vector ``N(0, I)`` from this seed.

    Returns
    -------
    eigenvalues : (k,) array, eigenvectors : (P, k) array
        In the operator's library; eigenvectors orthonormal.
    """
    op = aslinearoperator(op)
    P = op.size
    k = _check_int("k", k, 1, P - 1 if P > 1 else 1)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not isinstance(tol, (int, float)) or tol < 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    if method == "auto":
        method = _auto_method(op)
    rng = _rng(seed)
    v0 = rng.standard_normal(P)
    if method == "scipy" and P > 1:
        from scipy.sparse.linalg import eigsh

        A = op.to_scipy()
        vals, vecs = eigsh(A, k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0.astype(A.dtype))
        idx = _order(vals, which)
        return op.asarray(vals[idx]), op.asarray(vecs[:, idx])
    return _thick_restart_lanczos(op, k, which, tol, maxiter, ncv, v0, rng)


def _thick_restart_lanczos(op, k, which, tol, maxiter, ncv, v0, rng):
    r"""Thick-restart Lanczos (Wu & Simon 2000) with full reorthogonalisation.

    The basis ``W : (j, P)`` and every product stay in the operator's
    library; only the ``m × m`` projected matrix :math:`T = W A W^\top` and
    coefficient vectors travel to the host. After a restart ``T`` is an
    arrowhead: the kept Ritz values on the diagonal and the couplings
    :math:`\beta_m z_{m,i}` of the kept Ritz vectors to the next Lanczos
    vector in row and column ``l``.
    """
    xp, P = op.xp, op.size
    hdt = _host_dtype(op)
    eps = float(np.finfo(hdt).eps)
    m = min(P, ncv if ncv is not None else max(2 * k + 1, k + 20))
    m = _check_int("ncv", m, k + 1 if P > k else k, P) if P > 1 else 1
    maxiter = 100 * max(1, P // max(m, 1)) + 200 if maxiter is None else _check_int("maxiter", maxiter)
    W = op.asarray((v0 / np.linalg.norm(v0))[None, :])
    T = np.zeros((m, m))
    lock = 0
    anorm = 0.0
    for _ in range(maxiter):
        beta = 0.0
        vnext = None
        for j in range(lock, m):
            w = op.matvec(W[j, :])
            # two passes of classical Gram-Schmidt against the whole basis
            h = W @ w
            w = w - h @ W
            h2 = W @ w
            w = w - h2 @ W
            alpha = float(op.to_numpy(h + h2)[j])
            T[j, j] = alpha
            beta = float(xp.linalg.vector_norm(w))
            anorm = max(anorm, abs(alpha) + beta)
            if beta <= 10 * eps * max(anorm, 1e-300):
                # invariant subspace: continue from a random vector orthogonal to the basis
                beta = 0.0
                r = op.asarray(rng.standard_normal(P))
                for _pass in range(2):
                    r = r - (W @ r) @ W
                vnew = r / xp.linalg.vector_norm(r)
            else:
                vnew = w / beta
            if j + 1 < m:
                T[j, j + 1] = T[j + 1, j] = beta
                W = xp.concat([W, vnew[None, :]], axis=0)
            else:
                vnext = vnew
        theta, Z = np.linalg.eigh(T)
        W_last = W
        res = np.abs(beta * Z[m - 1, :])
        order = _order(theta, which)
        want = order[:k]
        scale = max(float(np.max(np.abs(theta))), 1e-300)
        if m == P or np.all(res[want] <= max(tol, eps) * scale):
            Y = op.asarray(Z[:, want].astype(hdt))
            return op.asarray(theta[want]), xp.matrix_transpose(W) @ Y
        # restart with the Ritz vectors nearest the wanted end (more than k)
        lock = min(k + (m - k) // 2, m - 1)
        keep = order[:lock]
        Y = op.asarray(Z[:, keep].astype(hdt))  # (m, lock)
        W = xp.concat([xp.matrix_transpose(Y) @ W, vnext[None, :]], axis=0)
        T = np.zeros((m, m))
        T[np.arange(lock), np.arange(lock)] = theta[keep]
        T[:lock, lock] = T[lock, :lock] = beta * Z[m - 1, keep]
    raise LanczosNoConvergence(
        f"Lanczos did not converge in {maxiter} restarts: "
        f"residuals {res[want]} for Ritz values {theta[want]}",
        op.asarray(theta[want]),
        xp.matrix_transpose(W_last) @ op.asarray(Z[:, want].astype(hdt)),
        res[want],
    )


def hessian_eigenpairs(
    net,
    x,
    y,
    loss,
    k: int,
    *,
    which: str = "LA",
    method: str = "auto",
    tol: float = 0.0,
    maxiter=None,
    ncv=None,
    seed=0,
    batch_size=None,
    block_size=None,
    backend=None,
):
    """Top-``k`` eigenpairs of the exact Hessian of the training loss (Lanczos on Hessian-vector products)."""
    op = hessian_operator(net, x, y, loss, batch_size=batch_size, block_size=block_size, backend=backend)
    return top_eigenpairs(op, k, which=which, method=method, tol=tol, maxiter=maxiter, ncv=ncv, seed=seed)


# --------------------------------------------------------------------------
# top-K of the empirical Fisher / outer-product matrix G
# --------------------------------------------------------------------------


@dask_dispatch
def empirical_fisher_eigenpairs(
    net,
    x,
    y,
    loss,
    k: int,
    *,
    method: str = "incremental",
    batch_size: int | None = None,
    oversample: int = 10,
    n_iter: int = 2,
    seed=0,
    backend=None,
):
    r"""Top-``k`` eigenpairs of :math:`G = \frac1N\sum_n g_n g_n^\top = \frac1N A^\top A`.

    ``A : (N, P)`` holds the per-example gradients; it is never formed whole.

    ``method="incremental"`` streams mini-batches ``A_b`` of ``batch_size``
    rows (default ``k + oversample``) and keeps a rank-``r = k + oversample``
    factor :math:`B = U\Sigma` with :math:`BB^\top \approx \sum_{b' \le b} A_{b'}^\top A_{b'}`:
    :math:`[B,\ A_b^\top] = QR`, :math:`R = \tilde U \tilde\Sigma \tilde V^\top`,
    :math:`B \leftarrow Q \tilde U_{:, :r} \tilde\Sigma_{:r}`. Exact when
    :math:`\mathrm{rank}\,A \le r`; otherwise each step drops the smallest
    directions (their energy is reported). Memory ``O((r + b)P)``, one pass.

    ``method="randomized"``: subspace iteration on :math:`G`-products
    (:func:`~.params.empirical_fisher_operator`, which never forms ``A``)
    with ``k + oversample`` Gaussian probes and ``n_iter`` power steps,
    then Rayleigh–Ritz. Memory ``O((k + oversample)P)``, ``n_iter + 2``
    passes over the data.

    Returns
    -------
    eigenvalues : (k,) descending, eigenvectors : (P, k), info : dict
        ``info["discarded"]``: for ``"incremental"``, the sum of the dropped
        :math:`\sigma^2/N` (an upper bound on the eigenvalue mass lost);
        for ``"randomized"``, the Rayleigh–Ritz residual norms of the pairs.
    """
    if method not in ("incremental", "randomized"):
        raise ValueError(f"method must be 'incremental' or 'randomized', got {method!r}")
    oversample = _check_int("oversample", oversample, 0)
    r = _check_int("k", k, 1) + oversample
    if method == "incremental":
        bs = r if batch_size is None else batch_size
        pb = _Problem(net, x, y, loss, bs, backend)
        if k > pb.size:
            raise ValueError(f"k must be at most P = {pb.size}, got {k}")
        return _incremental(pb, k, r)
    n_iter = _check_int("n_iter", n_iter, 0)
    op = empirical_fisher_operator(net, x, y, loss, batch_size=batch_size, backend=backend)
    if k >= op.size:
        raise ValueError(f"k must be below P = {op.size}, got {k}")
    return _randomized(op, k, min(r, op.size), n_iter, seed)


def _incremental(pb, k, r):
    B, xp, be = pb.B, pb.B.xp, pb.B.be
    F = None  # (P, rank): columns U_i sigma_i
    discarded = 0.0
    for c in range(len(pb.chunks)):
        At = xp.matrix_transpose(pb.per_example(c))  # (P, b)
        M = At if F is None else xp.concat([F, At], axis=1)
        Q, R = xp.linalg.qr(M)
        U, s, _ = np.linalg.svd(np.asarray(be.to_numpy(R), dtype=np.float64), full_matrices=False)
        keep = min(r, s.shape[0])
        discarded += float(np.sum(s[keep:] ** 2))
        Uk = be.convert(U[:, :keep], xp=xp, dtype=B.dtype, device=B.device)
        Qk = Q @ Uk
        S = s[:keep]
        F = Qk * be.convert(S[None, :], xp=xp, dtype=B.dtype, device=B.device)
    kk = min(k, S.shape[0])
    vals = be.convert(S[:kk] ** 2 / pb.N, xp=xp, dtype=B.dtype, device=B.device)
    return B.to_user(vals), B.to_user(Qk[:, :kk]), {"discarded": discarded / pb.N}


def _randomized(op, k, r, n_iter, seed):
    xp = op.xp
    Y = op.matmat(op.asarray(_rng(seed).standard_normal((op.size, r))))
    for _ in range(n_iter):
        Q, _ = xp.linalg.qr(Y)
        Y = op.matmat(Q)
    Q, _ = xp.linalg.qr(Y)
    AQ = op.matmat(Q)
    Bm = op.to_numpy(xp.matrix_transpose(Q) @ AQ).astype(np.float64)
    theta, Z = np.linalg.eigh(0.5 * (Bm + Bm.T))
    idx = np.argsort(-theta)[:k]
    Zk = op.asarray(Z[:, idx])
    vecs = Q @ Zk
    R = AQ @ Zk - vecs * op.asarray(theta[idx][None, :])
    res = op.to_numpy(xp.linalg.vector_norm(R, axis=0))
    return op.asarray(theta[idx]), vecs, {"residuals": res}


# --------------------------------------------------------------------------
# stochastic trace, diagonal, density
# --------------------------------------------------------------------------


def _probes(rng, P, n, distribution):
    if distribution == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(P, n))
    if distribution == "gaussian":
        return rng.standard_normal((P, n))
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


def _apply_blocks(op, Z, block_size):
    xp = op.xp
    bs = Z.shape[1] if block_size is None else _check_int("block_size", block_size)
    outs = [op.matmat(Z[:, j : min(j + bs, Z.shape[1])]) for j in range(0, Z.shape[1], bs)]
    return outs[0] if len(outs) == 1 else xp.concat(outs, axis=1)


def _mean_se(s):
    s = np.asarray(s, dtype=np.float64)
    n = s.shape[0]
    return float(np.mean(s)), float(np.std(s, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def hutchinson_trace(
    op, n_samples: int = 32, *, seed=None, distribution: str = "rademacher", block_size: int | None = None
) -> Estimate:
    r"""Hutchinson's estimate :math:`\mathrm{tr} A \approx \frac1s\sum_i z_i^\top A z_i`.

    Returns an :class:`~hessquik_core.estimators.Estimate` with Python
    floats: ``value`` (sample mean), ``stderr`` (sample standard deviation
    ``ddof=1`` over :math:`\sqrt s`), ``num_samples``.
    """
    op = aslinearoperator(op)
    s = _check_int("n_samples", n_samples, 2)
    Z = op.asarray(_probes(_rng(seed), op.size, s, distribution))
    AZ = _apply_blocks(op, Z, block_size)
    samples = op.to_numpy(op.xp.sum(Z * AZ, axis=0))
    mean, se = _mean_se(samples)
    return Estimate(value=mean, stderr=se, num_samples=s)


def hutchpp_trace(op, n_matvecs: int = 48, *, seed=None, distribution: str = "rademacher") -> Estimate:
    r"""Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with ``n_matvecs`` products.

    A third of the products sketch the range, :math:`Q = \mathrm{orth}(AS)`;
    :math:`\mathrm{tr}(Q^\top A Q)` is exact, and Hutchinson estimates the
    rest, :math:`\mathrm{tr}((I-QQ^\top)A(I-QQ^\top))`, from the last third.
    ``stderr`` is the standard error of that residual part (the sketch part
    has none given ``Q``); ``num_samples`` counts the residual probes.
    """
    op = aslinearoperator(op)
    total = _check_int("n_matvecs", n_matvecs, 6)
    xp = op.xp
    s = total // 3
    rng = _rng(seed)
    S = op.asarray(_probes(rng, op.size, s, distribution))
    G = op.asarray(_probes(rng, op.size, total - 2 * s, distribution))
    Q, _ = xp.linalg.qr(op.matmat(S))
    t1 = float(op.to_numpy(xp.sum(Q * op.matmat(Q))))
    Gp = G - Q @ (xp.matrix_transpose(Q) @ G)
    samples = op.to_numpy(xp.sum(Gp * op.matmat(Gp), axis=0))
    mean, se = _mean_se(samples)
    return Estimate(value=t1 + mean, stderr=se, num_samples=int(samples.shape[0]))


def hutchinson_diagonal(
    op, n_samples: int = 32, *, seed=None, distribution: str = "rademacher", block_size: int | None = None
) -> Estimate:
    r"""Estimate of :math:`\mathrm{diag}(A) \approx \frac1s \sum_i z_i \odot A z_i` (Bekas et al. 2007).

    Unbiased for Rademacher probes (exact for diagonal ``A``). ``value`` and
    ``stderr`` are ``(P,)`` arrays in the operator's library.
    """
    op = aslinearoperator(op)
    s = _check_int("n_samples", n_samples, 2)
    xp = op.xp
    Z = op.asarray(_probes(_rng(seed), op.size, s, distribution))
    D = Z * _apply_blocks(op, Z, block_size)  # (P, s)
    mean = xp.mean(D, axis=1)
    var = xp.sum((D - mean[:, None]) ** 2, axis=1) / (s - 1)
    return Estimate(value=mean, stderr=xp.sqrt(var / s), num_samples=s)


@dataclass
class SpectralDensity:
    r"""Stochastic Lanczos quadrature of the density :math:`\phi(t) = \frac1P\sum_i \delta(t-\lambda_i)`.

    For a probe :math:`v` with :math:`\lVert v \rVert = 1`, ``m`` Lanczos steps
    give :math:`T = Y\,\mathrm{diag}(\theta)\,Y^\top`; Gauss quadrature gives
    :math:`v^\top f(A) v \approx \sum_j \tau_j f(\theta_j)` with
    :math:`\tau_j = (e_1^\top y_j)^2` (so :math:`\sum_j \tau_j = 1`, exact for
    polynomials of degree :math:`< 2m`). For Rademacher :math:`v = z/\sqrt P`,
    :math:`\mathbb{E}[v^\top f(A) v] = \frac1P \mathrm{tr} f(A)`.

    Attributes
    ----------
    nodes, weights : numpy arrays (n_vectors, m)
        Ritz values :math:`\theta_{lj}` and weights :math:`\tau_{lj}` per probe.
    size : int
        ``P``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    size: int

    @property
    def n_vectors(self) -> int:
        return int(self.nodes.shape[0])

    def trace(self, f=None) -> Estimate:
        r"""Estimate of :math:`\mathrm{tr} f(A)` (default :math:`f(t)=t`): ``P·Σ_j τ_j f(θ_j)`` per probe."""
        vals = self.nodes if f is None else f(self.nodes)
        mean, se = _mean_se(self.size * np.sum(self.weights * vals, axis=1))
        return Estimate(value=mean, stderr=se, num_samples=self.n_vectors)

    def density(self, grid, sigma: float | None = None):
        r"""Gaussian-smoothed density on ``grid``: ``(mean, stderr)`` over the probes.

        :math:`\hat\phi(t) = \frac{1}{L}\sum_l \sum_j \tau_{lj}\, \mathcal N(t;\theta_{lj},\sigma^2)`;
        integrates to 1. ``sigma`` defaults to 1 % of the node range.
        """
        grid = np.asarray(grid, dtype=np.float64)
        if sigma is None:
            span = float(np.ptp(self.nodes)) or 1.0
            sigma = 0.01 * span
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        d = (grid[None, None, :] - self.nodes[:, :, None]) / sigma
        per = np.sum(self.weights[:, :, None] * np.exp(-0.5 * d * d), axis=1) / (
            sigma * math.sqrt(2 * math.pi)
        )
        se = (
            per.std(axis=0, ddof=1) / math.sqrt(self.n_vectors)
            if self.n_vectors > 1
            else np.full(grid.shape, np.nan)
        )
        return per.mean(axis=0), se


def lanczos_tridiagonal(op, V, n_steps: int):
    r"""``n_steps`` Lanczos steps from every column of ``V : (P, L)`` (unit norm), all at once.

    Each step is one product with an ``(P, L)`` block; every probe is fully
    reorthogonalised against its own basis (memory ``n_steps·P·L``). A probe
    whose Krylov space is exhausted continues with zero vectors, which
    leaves decoupled zero blocks of zero quadrature weight.
    Returns host arrays ``alpha (L, m)``, ``beta (L, m-1)``.
    """
    xp = op.xp
    L = V.shape[1]
    m = min(_check_int("n_steps", n_steps, 1), op.size)
    eps = float(np.finfo(_host_dtype(op)).eps)
    basis = [V]
    alpha = np.zeros((L, m))
    beta = np.zeros((L, max(m - 1, 0)))
    anorm = np.zeros(L)
    for j in range(m):
        w = op.matmat(basis[j])
        Wst = xp.stack(basis, axis=0)  # (j+1, P, L)
        for _pass in range(2):
            h = xp.sum(Wst * w[None, :, :], axis=1)  # (j+1, L)
            w = w - xp.sum(Wst * h[:, None, :], axis=0)
            if _pass == 0:
                alpha[:, j] = op.to_numpy(h[j, :])
            else:
                alpha[:, j] += op.to_numpy(h[j, :])
        if j + 1 == m:
            break
        b = op.to_numpy(xp.linalg.vector_norm(w, axis=0)).astype(np.float64)
        anorm = np.maximum(anorm, np.abs(alpha[:, j]) + b)
        dead = b <= 100 * eps * np.maximum(anorm, 1e-300)
        b = np.where(dead, 0.0, b)
        beta[:, j] = b
        inv = op.asarray(np.where(dead, 0.0, 1.0 / np.where(dead, 1.0, b))[None, :])
        basis.append(w * inv)
    return alpha, beta


def spectral_density(
    op, *, n_vectors: int = 8, n_steps: int = 30, seed=None, distribution: str = "rademacher"
) -> SpectralDensity:
    r"""Stochastic Lanczos quadrature nodes and weights (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

    ``n_vectors`` probes (Rademacher, normalised) each run ``n_steps``
    Lanczos steps; see :class:`SpectralDensity` for the quadrature.
    """
    op = aslinearoperator(op)
    nv = _check_int("n_vectors", n_vectors, 1)
    Z = _probes(_rng(seed), op.size, nv, distribution)
    Z = Z / np.linalg.norm(Z, axis=0, keepdims=True)
    alpha, beta = lanczos_tridiagonal(op, op.asarray(Z), n_steps)
    m = alpha.shape[1]
    nodes = np.zeros((nv, m))
    weights = np.zeros((nv, m))
    for l in range(nv):
        T = np.diag(alpha[l]) + np.diag(beta[l], 1) + np.diag(beta[l], -1)
        theta, Y = np.linalg.eigh(T)
        nodes[l], weights[l] = theta, Y[0, :] ** 2
    return SpectralDensity(nodes=nodes, weights=weights, size=op.size)

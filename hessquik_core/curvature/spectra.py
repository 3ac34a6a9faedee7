r"""Spectra of curvature operators: eigenpairs, traces, diagonals and densities.

Everything here acts on a symmetric operator (:class:`~hessquik_core.curvature.LinearOperatorBase`:
a :class:`~hessquik_core.curvature.CurvatureOperator`, an approximation, or a dense matrix via
:func:`~hessquik_core.curvature.aslinearoperator`) through products with blocks of vectors
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

Eigenvectors are in :class:`~hessquik_core.curvature.ParameterLayout`
order (``state_dict`` order, each parameter row-major); a ``Linear``
layer's ``K`` is torch's ``weight`` transposed, so
``layout.unflatten(v)["0.K"].T`` is the direction of torch's ``0.weight``.

The long computations (:func:`top_eigenpairs`, :func:`spectral_density`,
:func:`empirical_fisher_eigenpairs`) take ``progress=``: ``None`` shows a
tqdm bar only in an interactive session with tqdm installed, ``True``
always, ``False`` never.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._dask_hook import dask_dispatch
from .._progress import Progress, progress_bar
from ..estimators import Estimate
from .operators import LinearOperatorBase, aslinearoperator
from .problem import _Problem
from .products import empirical_fisher_operator, hessian_operator

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

    Attributes
    ----------
    eigenvalues : array of shape (k,)
        The last Ritz values (operator's library).
    eigenvectors : array of shape (P, k)
        The last Ritz vectors (operator's library).
    residuals : numpy.ndarray of shape (k,)
        Their residual estimates :math:`|\\beta_m z_{m,i}|`.
    """

    def __init__(self, msg: str, eigenvalues: Any, eigenvectors: Any, residuals: np.ndarray) -> None:
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


class _Tracked(LinearOperatorBase):
    """``op`` counting the vectors it is applied to, and ticking a progress bar by them."""

    def __init__(self, op: LinearOperatorBase, bar: Progress) -> None:
        super().__init__(op.size, op.xp, op.array_dtype, op.device)
        self.op, self.bar, self.n_products = op, bar, 0

    def _matmat(self, V):
        self.n_products += int(V.shape[1])
        self.bar.update(int(V.shape[1]))
        return self.op._matmat(V)


def _residuals(op, vals, vecs) -> np.ndarray:
    """:math:`\\lVert A y_i - \\lambda_i y_i\\rVert` per pair (one block product), host array."""
    R = op.matmat(vecs) - vecs * vals[None, :]
    return op.to_numpy(op.xp.linalg.vector_norm(R, axis=0)).astype(np.float64)


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
    op: Any,
    k: int,
    *,
    which: str = "LA",
    method: str = "auto",
    tol: float = 0.0,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: int | np.random.Generator | None = 0,
    progress: bool | None = None,
    return_info: bool = False,
) -> tuple[Any, Any] | tuple[Any, Any, dict[str, Any]]:
    r"""``k`` extreme eigenpairs of a symmetric operator by Lanczos iteration.

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        E.g. a :func:`~hessquik_core.curvature.hessian_operator`.
    k : int
        Number of pairs, ``1 <= k < P``.
    which : {"LA", "LM", "SA"}
        Algebraically largest (sorted descending), largest magnitude (sorted
        by descending :math:`|\lambda|`), smallest algebraic (ascending).
    method : {"auto", "scipy", "lanczos"}
        ``"scipy"``: ``scipy.sparse.linalg.eigsh`` (ARPACK) on host copies
        of the Lanczos vectors; ``"lanczos"``: thick-restart Lanczos with
        full reorthogonalisation in the operator's library. ``"auto"``:
        ``"scipy"`` for host arrays (NumPy, torch on CPU), ``"lanczos"`` for
        device arrays (CUDA, CuPy), where every ARPACK step would copy two
        ``P``-vectors across the bus.
    tol : float
        Relative accuracy: stop when every wanted Ritz residual is below
        ``max(tol, eps)·max|θ|``. 0 means machine precision (ARPACK's meaning).
    maxiter : int, optional
        Restarts (native) or ARPACK iterations.
    ncv : int, optional
        Lanczos basis size, default ``min(P, max(2k + 1, k + 20))``.
    seed : int or numpy.random.Generator
        Start vector ``N(0, I)`` from this seed.
    progress : bool, optional
        Progress bar counting the operator products (tqdm): ``None``
        (default) only in an interactive session with tqdm installed,
        ``True`` always, ``False`` never.
    return_info : bool
        Also return convergence information (costs ``k`` more products,
        for the true residuals).

    Returns
    -------
    eigenvalues : array of shape (k,)
        In the operator's library, ordered as ``which`` says.
    eigenvectors : array of shape (P, k)
        Orthonormal columns, in :class:`~hessquik_core.curvature.ParameterLayout`
        order.
    info : dict
        Only with ``return_info=True``: ``"residuals"`` (host array
        ``(k,)`` of :math:`\\lVert A y_i - \\lambda_i y_i\\rVert`),
        ``"n_products"`` (operator-vector products the iteration used),
        ``"method"`` (``"scipy"`` or ``"lanczos"``) and ``"restarts"``
        (native Lanczos; ``None`` for ARPACK).

    Raises
    ------
    LanczosNoConvergence
        Native Lanczos without convergence in ``maxiter`` restarts
        (ARPACK raises ``scipy.sparse.linalg.ArpackNoConvergence``).
    """
    op = aslinearoperator(op)
    P = op.size
    k = _check_int("k", k, 1, P - 1 if P > 1 else 1)
    if which not in _WHICH:
        raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0 <= float(tol) < math.inf):
        raise ValueError(f"tol must be a finite non-negative number (0: machine precision), got {tol!r}")
    tol = float(tol)
    if not isinstance(return_info, bool):
        raise TypeError(f"return_info must be True or False, got {return_info!r}")
    if method == "auto":
        method = _auto_method(op)
    rng = _rng(seed)
    v0 = rng.standard_normal(P)
    with progress_bar(progress, desc=f"top {k} eigenpairs", unit="product") as bar:
        tracked = _Tracked(op, bar)
        restarts = None
        if method == "scipy" and P > 1:
            from scipy.sparse.linalg import ArpackError, eigsh

            A = tracked.to_scipy()
            try:
                vals, vecs = eigsh(
                    A, k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0.astype(A.dtype)
                )
            except ArpackError as err:
                # -9 "Starting vector is zero": ARPACK cannot restart after an invariant subspace of
                # a zero (or nearly so) operator, e.g. the empirical Fisher of a network whose last
                # layer is zero. The native Lanczos below restarts from random vectors orthogonal
                # to its basis and returns the exact zero eigenpairs.
                if "Starting vector is zero" not in str(err):
                    raise
                method = "lanczos"
            else:
                idx = _order(vals, which)
                vals, vecs = op.asarray(vals[idx]), op.asarray(vecs[:, idx])
        else:
            method = "lanczos"
        if method == "lanczos":
            vals, vecs, restarts = _thick_restart_lanczos(tracked, k, which, tol, maxiter, ncv, v0, rng, bar)
    if not return_info:
        return vals, vecs
    info = {
        "residuals": _residuals(op, vals, vecs),
        "n_products": tracked.n_products,
        "method": method,
        "restarts": restarts,
    }
    return vals, vecs, info


def _thick_restart_lanczos(op, k, which, tol, maxiter, ncv, v0, rng, bar=None):
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
    for restart in range(maxiter):
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
        if bar is not None:
            bar.set_postfix_str(f"residual {float(np.max(res[want])) / scale:.1e} (relative)")
        if m == P or np.all(res[want] <= max(tol, eps) * scale):
            Y = op.asarray(Z[:, want].astype(hdt))
            return op.asarray(theta[want]), xp.matrix_transpose(W) @ Y, restart
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
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    k: int,
    *,
    which: str = "LA",
    method: str = "auto",
    tol: float = 0.0,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: int | np.random.Generator | None = 0,
    batch_size: int | None = None,
    block_size: int | None = None,
    backend: str | None = None,
    progress: bool | None = None,
    return_info: bool = False,
) -> tuple[Any, Any] | tuple[Any, Any, dict[str, Any]]:
    """Extreme eigenpairs of the exact Hessian of the training loss.

    :func:`top_eigenpairs` (Lanczos) on
    :func:`~hessquik_core.curvature.hessian_operator`: every
    iteration costs one Hessian-vector product, the ``(P, P)`` matrix is
    never formed.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        A torch model is converted with :func:`hessquik_core.from_torch`.
    x : array of shape (N, d)
    y : array
        Targets, ``(N, m)`` or labels ``(N,)``.
    loss : Loss or str or torch loss
        As in :func:`~hessquik_core.curvature.hessian_operator`.
    k : int
        Number of pairs, ``1 <= k < P``.
    which, method, tol, maxiter, ncv, seed, progress, return_info
        As in :func:`top_eigenpairs`.
    batch_size : int, optional
        Examples per pass (bounds memory, exact result).
    block_size : int, optional
        Directions per pass.
    backend : str, optional
        Force a backend; results return in ``x``'s library.

    Returns
    -------
    eigenvalues : array of shape (k,)
    eigenvectors : array of shape (P, k)
        :class:`~hessquik_core.curvature.ParameterLayout` order.
    info : dict
        Only with ``return_info=True``, see :func:`top_eigenpairs`.
    """
    op = hessian_operator(net, x, y, loss, batch_size=batch_size, block_size=block_size, backend=backend)
    return top_eigenpairs(
        op,
        k,
        which=which,
        method=method,
        tol=tol,
        maxiter=maxiter,
        ncv=ncv,
        seed=seed,
        progress=progress,
        return_info=return_info,
    )


# --------------------------------------------------------------------------
# top-K of the empirical Fisher / outer-product matrix G
# --------------------------------------------------------------------------


@dask_dispatch
def empirical_fisher_eigenpairs(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    k: int,
    *,
    method: str = "incremental",
    batch_size: int | None = None,
    oversample: int = 10,
    n_iter: int = 2,
    seed: int | np.random.Generator | None = 0,
    backend: str | None = None,
    progress: bool | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
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
    (:func:`~hessquik_core.curvature.empirical_fisher_operator`, which never forms ``A``)
    with ``k + oversample`` Gaussian probes and ``n_iter`` power steps,
    then Rayleigh–Ritz. Memory ``O((k + oversample)P)``, ``n_iter + 2``
    passes over the data.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        A torch model is converted with :func:`hessquik_core.from_torch`.
    x : array of shape (N, d)
    y : array
        Targets, ``(N, m)`` or labels ``(N,)``.
    loss : Loss or str or torch loss
        As in :func:`~hessquik_core.curvature.hessian_operator`.
    k : int
        Number of pairs (``k <= P``; ``k < P`` for ``"randomized"``).
    method : {"incremental", "randomized"}
    batch_size : int, optional
        Rows of ``A`` per step (``"incremental"``, default ``k + oversample``)
        or examples per pass (``"randomized"``, default all).
    oversample : int
        Extra rank kept beyond ``k``.
    n_iter : int
        Power steps (``"randomized"``).
    seed : int or numpy.random.Generator
        Gaussian probes (``"randomized"``).
    backend : str, optional
        Force a backend; results return in ``x``'s library.
    progress : bool, optional
        Progress bar over the mini-batches (``"incremental"``) or the
        passes (``"randomized"``); ``None`` (default) only in an interactive
        session with tqdm installed, ``True`` always, ``False`` never.

    Returns
    -------
    eigenvalues : array of shape (k,)
        Descending.
    eigenvectors : array of shape (P, k)
        Orthonormal, :class:`~hessquik_core.curvature.ParameterLayout` order.
    info : dict
        ``"discarded"`` (``"incremental"``): the sum of the dropped
        :math:`\sigma^2/N` (an upper bound on the eigenvalue mass lost);
        ``"residuals"`` (``"randomized"``): host array ``(k,)`` of the
        Rayleigh–Ritz residual norms :math:`\lVert G y_i - \lambda_i y_i\rVert`.
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
        with progress_bar(progress, total=len(pb.chunks), desc="empirical Fisher", unit="batch") as bar:
            return _incremental(pb, k, r, bar)
    n_iter = _check_int("n_iter", n_iter, 0)
    op = empirical_fisher_operator(net, x, y, loss, batch_size=batch_size, backend=backend)
    if k >= op.size:
        raise ValueError(f"k must be below P = {op.size}, got {k}")
    with progress_bar(progress, total=n_iter + 2, desc="empirical Fisher", unit="pass") as bar:
        return _randomized(op, k, min(r, op.size), n_iter, seed, bar)


def _incremental(pb, k, r, bar):
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
        bar.update()
    kk = min(k, S.shape[0])
    vals = be.convert(S[:kk] ** 2 / pb.N, xp=xp, dtype=B.dtype, device=B.device)
    return B.to_user(vals), B.to_user(Qk[:, :kk]), {"discarded": discarded / pb.N}


def _randomized(op, k, r, n_iter, seed, bar):
    xp = op.xp
    Y = op.matmat(op.asarray(_rng(seed).standard_normal((op.size, r))))
    bar.update()
    for _ in range(n_iter):
        Q, _ = xp.linalg.qr(Y)
        Y = op.matmat(Q)
        bar.update()
    Q, _ = xp.linalg.qr(Y)
    AQ = op.matmat(Q)
    bar.update()
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
    op: Any,
    n_samples: int = 32,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    block_size: int | None = None,
) -> Estimate:
    r"""Hutchinson's estimate :math:`\mathrm{tr} A \approx \frac1s\sum_i z_i^\top A z_i`.

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_samples : int
        Probes ``s >= 2``.
    seed : int or numpy.random.Generator, optional
        Probes are drawn on the host, so a seed gives the same estimate on every backend.
    distribution : {"rademacher", "gaussian"}
    block_size : int, optional
        Probes per product (default: all at once).

    Returns
    -------
    Estimate
        Python floats: ``value`` (sample mean), ``stderr`` (sample
        standard deviation, ``ddof=1``, over :math:`\sqrt s`), ``num_samples``.
    """
    op = aslinearoperator(op)
    s = _check_int("n_samples", n_samples, 2)
    Z = op.asarray(_probes(_rng(seed), op.size, s, distribution))
    AZ = _apply_blocks(op, Z, block_size)
    samples = op.to_numpy(op.xp.sum(Z * AZ, axis=0))
    mean, se = _mean_se(samples)
    return Estimate(value=mean, stderr=se, num_samples=s)


def hutchpp_trace(
    op: Any,
    n_matvecs: int = 48,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
) -> Estimate:
    r"""Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with ``n_matvecs`` products.

    A third of the products sketch the range, :math:`Q = \mathrm{orth}(AS)`;
    :math:`\mathrm{tr}(Q^\top A Q)` is exact, and Hutchinson estimates the
    rest, :math:`\mathrm{tr}((I-QQ^\top)A(I-QQ^\top))`, from the last third.
    ``stderr`` is the standard error of that residual part (the sketch part
    has none given ``Q``); ``num_samples`` counts the residual probes.

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_matvecs : int
        Total operator-vector products, ``>= 6``.
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}

    Returns
    -------
    Estimate
        Python floats ``value``, ``stderr`` and ``num_samples``.
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
    op: Any,
    n_samples: int = 32,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    block_size: int | None = None,
) -> Estimate:
    r"""Estimate of :math:`\mathrm{diag}(A) \approx \frac1s \sum_i z_i \odot A z_i` (Bekas et al. 2007).

    Unbiased for Rademacher probes (exact for diagonal ``A``).

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_samples : int
        Probes ``s >= 2``.
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}
    block_size : int, optional
        Probes per product (default: all at once).

    Returns
    -------
    Estimate
        ``value`` and ``stderr``: arrays of shape (P,) in the operator's
        library; ``num_samples``.
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
    nodes : numpy.ndarray of shape (n_vectors, m)
        Ritz values :math:`\theta_{lj}` per probe.
    weights : numpy.ndarray of shape (n_vectors, m)
        Quadrature weights :math:`\tau_{lj}` per probe (each row sums to 1).
    size : int
        ``P``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    size: int

    @property
    def n_vectors(self) -> int:
        """Number of probes ``L``."""
        return int(self.nodes.shape[0])

    def trace(self, f: Any = None) -> Estimate:
        r"""Estimate of :math:`\mathrm{tr} f(A)`: ``P·Σ_j τ_j f(θ_j)`` per probe, mean and spread.

        Parameters
        ----------
        f : callable, optional
            Elementwise function of a NumPy array (default :math:`f(t) = t`,
            the trace); e.g. ``np.log`` for the log-determinant of a
            positive definite ``A``.

        Returns
        -------
        Estimate
            Python floats ``value``, ``stderr``; ``num_samples = n_vectors``.
        """
        vals = self.nodes if f is None else f(self.nodes)
        mean, se = _mean_se(self.size * np.sum(self.weights * vals, axis=1))
        return Estimate(value=mean, stderr=se, num_samples=self.n_vectors)

    def density(self, grid: Any, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Gaussian-smoothed density on ``grid``, mean and standard error over the probes.

        :math:`\hat\phi(t) = \frac{1}{L}\sum_l \sum_j \tau_{lj}\, \mathcal N(t;\theta_{lj},\sigma^2)`;
        integrates to 1.

        Parameters
        ----------
        grid : array_like of shape (G,)
            Points :math:`t`.
        sigma : float, optional
            Width of the Gaussians; default 1 % of the node range.

        Returns
        -------
        mean : numpy.ndarray of shape (G,)
        stderr : numpy.ndarray of shape (G,)
            Over the probes (NaN for a single probe).
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

    def plot(
        self,
        ax: Any = None,
        *,
        grid: Any = None,
        sigma: float | None = None,
        n_points: int = 400,
        stderr: bool = True,
        log: bool = False,
        **kwargs: Any,
    ) -> Any:
        r"""Plot the smoothed density :meth:`density` (matplotlib, imported here).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw; default a new figure's axes.
        grid : array_like of shape (G,), optional
            Default ``n_points`` points spanning the nodes, with a margin of
            five ``sigma``.
        sigma : float, optional
            As in :meth:`density`.
        n_points : int
            Grid size when ``grid`` is not given.
        stderr : bool
            Shade ``mean ± stderr`` over the probes (needs ``n_vectors > 1``).
        log : bool
            Logarithmic density axis (spectra of trained networks span decades).
        **kwargs
            Passed to ``ax.plot`` for the mean curve.

        Returns
        -------
        matplotlib.axes.Axes
        """
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots()
        if sigma is None:
            sigma = 0.01 * (float(np.ptp(self.nodes)) or 1.0)
        if grid is None:
            n = _check_int("n_points", n_points, 2)
            lo, hi = float(np.min(self.nodes)) - 5 * sigma, float(np.max(self.nodes)) + 5 * sigma
            grid = np.linspace(lo, hi, n)
        grid = np.asarray(grid, dtype=np.float64)
        mean, se = self.density(grid, sigma)
        kwargs.setdefault("label", f"SLQ density ({self.n_vectors} probes)")
        (line,) = ax.plot(grid, mean, **kwargs)
        if stderr and self.n_vectors > 1:
            ax.fill_between(grid, np.maximum(mean - se, 0.0), mean + se, color=line.get_color(), alpha=0.25)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        return ax


def lanczos_tridiagonal(
    op: Any, V: Any, n_steps: int, *, progress: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""``n_steps`` Lanczos steps from every column of ``V : (P, L)`` (unit norm), all at once.

    Each step is one product with an ``(P, L)`` block; every probe is fully
    reorthogonalised against its own basis (memory ``n_steps·P·L``). A probe
    whose Krylov space is exhausted continues with zero vectors, which
    leaves decoupled zero blocks of zero quadrature weight.

    Parameters
    ----------
    op : LinearOperatorBase
    V : array of shape (P, L)
        Start vectors with unit norm, in the operator's library.
    n_steps : int
        Lanczos steps ``m`` (at most ``P``).
    progress : bool, optional
        Progress bar over the steps; ``None`` (default) only when
        interactive with tqdm installed.

    Returns
    -------
    alpha : numpy.ndarray of shape (L, m)
        Diagonals of the tridiagonal matrices.
    beta : numpy.ndarray of shape (L, m - 1)
        Off-diagonals.
    """
    xp = op.xp
    L = V.shape[1]
    m = min(_check_int("n_steps", n_steps, 1), op.size)
    eps = float(np.finfo(_host_dtype(op)).eps)
    basis = [V]
    alpha = np.zeros((L, m))
    beta = np.zeros((L, max(m - 1, 0)))
    anorm = np.zeros(L)
    bar = progress_bar(progress, total=m, desc="Lanczos steps", unit="step")
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
        bar.update()
        if j + 1 == m:
            break
        b = op.to_numpy(xp.linalg.vector_norm(w, axis=0)).astype(np.float64)
        anorm = np.maximum(anorm, np.abs(alpha[:, j]) + b)
        dead = b <= 100 * eps * np.maximum(anorm, 1e-300)
        b = np.where(dead, 0.0, b)
        beta[:, j] = b
        inv = op.asarray(np.where(dead, 0.0, 1.0 / np.where(dead, 1.0, b))[None, :])
        basis.append(w * inv)
    bar.close()
    return alpha, beta


def spectral_density(
    op: Any,
    *,
    n_vectors: int = 8,
    n_steps: int = 30,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    progress: bool | None = None,
) -> SpectralDensity:
    r"""Stochastic Lanczos quadrature nodes and weights (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

    ``n_vectors`` probes (Rademacher, normalised) each run ``n_steps``
    Lanczos steps, all probes in one block product per step; see
    :class:`SpectralDensity` for the quadrature.

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_vectors : int
        Probes ``L``.
    n_steps : int
        Lanczos steps ``m`` per probe (quadrature exact for polynomials of
        degree below ``2m``).
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}
    progress : bool, optional
        Progress bar over the Lanczos steps (tqdm); ``None`` (default) only
        in an interactive session with tqdm installed, ``True`` always,
        ``False`` never.

    Returns
    -------
    SpectralDensity
        ``nodes`` and ``weights`` of shape (n_vectors, n_steps); ``.density(grid)``,
        ``.trace(f)``, ``.plot()``.
    """
    op = aslinearoperator(op)
    nv = _check_int("n_vectors", n_vectors, 1)
    Z = _probes(_rng(seed), op.size, nv, distribution)
    Z = Z / np.linalg.norm(Z, axis=0, keepdims=True)
    alpha, beta = lanczos_tridiagonal(op, op.asarray(Z), n_steps, progress=progress)
    m = alpha.shape[1]
    nodes = np.zeros((nv, m))
    weights = np.zeros((nv, m))
    for l in range(nv):
        T = np.diag(alpha[l]) + np.diag(beta[l], 1) + np.diag(beta[l], -1)
        theta, Y = np.linalg.eigh(T)
        nodes[l], weights[l] = theta, Y[0, :] ** 2
    return SpectralDensity(nodes=nodes, weights=weights, size=op.size)

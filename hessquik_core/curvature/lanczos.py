r"""``K`` extreme eigenpairs of a symmetric operator by Lanczos iteration.

:func:`top_eigenpairs` (SciPy's ARPACK on host copies, or a thick-restart
Lanczos with full reorthogonalisation kept in the operator's library) and
:func:`hessian_eigenpairs` (the same on :func:`~hessquik_core.curvature.hessian_operator`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .._progress import Progress, progress_bar
from ._spectral import (
    _check_int,
    _host_dtype,
    _rng,
)
from .operators import LinearOperatorBase, aslinearoperator
from .products import hessian_operator

__all__ = ["LanczosNoConvergence", "hessian_eigenpairs", "top_eigenpairs"]

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


def _order(theta, which):
    """Indices of ``theta`` from most to least wanted."""
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


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
    return "scipy" if op._be.host_resident(op.device) else "lanczos"


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
    params: Any = None,
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
    params : None, "all" or iterable of str, optional
        The parameters differentiated, as in :func:`~hessquik_core.curvature.hessian_operator`.

    Returns
    -------
    eigenvalues : array of shape (k,)
    eigenvectors : array of shape (P, k)
        :class:`~hessquik_core.curvature.ParameterLayout` order.
    info : dict
        Only with ``return_info=True``, see :func:`top_eigenpairs`.
    """
    op = hessian_operator(
        net, x, y, loss, batch_size=batch_size, block_size=block_size, backend=backend, params=params
    )
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

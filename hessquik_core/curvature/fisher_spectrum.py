r"""Top ``K`` eigenpairs and the trace of the empirical Fisher :math:`G = \frac1N\sum_n g_n g_n^\top`.

Exact by default: from the ``N × N`` Gram matrix of the per-example
gradients when ``N ≤ P``, from the dense ``P × P`` matrix when ``P < N``
(both within a memory budget), by Lanczos on :math:`G`-products otherwise.
The one-pass incremental SVD and randomised subspace iteration approximate;
they are opt-in (``method="approx_incremental"`` / ``"approx_randomized"``)
and warn (:class:`ApproximationWarning`) when their error bound is large.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import numpy as np

from .._array import check_max_memory
from .._dask_hook import dask_dispatch, is_dask
from .._progress import progress_bar
from ._spectral import (
    _check_int,
    _rng,
)
from .lanczos import top_eigenpairs
from .problem import DEFAULT_MEMORY_BUDGET, _Problem
from .products import empirical_fisher_operator

__all__ = ["ApproximationWarning", "empirical_fisher_eigenpairs", "empirical_fisher_trace"]

_EXACT = ("exact", "gram", "dense", "lanczos")
_APPROX = {"approx_incremental": "incremental", "approx_randomized": "randomized"}
# the names before the approximate routes were renamed; kept so old code runs (same behaviour, same warning)
_OLD = {"incremental": "approx_incremental", "randomized": "approx_randomized"}


class ApproximationWarning(UserWarning):
    """An approximate eigen-solver's error bound is large relative to the eigenvalues it returns.

    Raised by :func:`empirical_fisher_eigenpairs` with ``method="approx_incremental"``
    (the mass :math:`\\sigma^2/N` dropped while streaming) or ``"approx_randomized"``
    (the largest Rayleigh–Ritz residual). Filter it by class
    (``warnings.simplefilter("ignore", ApproximationWarning)``) once the
    approximation is known to be good enough.
    """


@dask_dispatch
def empirical_fisher_eigenpairs(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    k: int,
    *,
    method: str = "exact",
    batch_size: int | None = None,
    memory_budget: float | None = None,
    oversample: int = 10,
    n_iter: int = 2,
    seed: int | np.random.Generator | None = 0,
    warn_rtol: float = 1e-3,
    backend: str | None = None,
    params: Any = None,
    progress: bool | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    r"""Top-``k`` eigenpairs of :math:`G = \frac1N\sum_n g_n g_n^\top = \frac1N A^\top A`.

    ``A : (N, P)`` holds the per-example gradients :math:`g_n`.

    **Exact routes** (default ``method="exact"`` picks one, reported in ``info["method"]``):

    * ``"gram"`` (``N ≤ P``): the Gram matrix :math:`M = \frac1N AA^\top` ``(N, N)``
      has the non-zero eigenvalues of :math:`G`; with :math:`M u_i = \lambda_i u_i`,
      :math:`q_i = A^\top u_i / \lVert A^\top u_i\rVert` (``A`` formed once,
      ``N·P`` numbers). Eigenvalues beyond ``rank A`` are exact zeros with
      orthonormal vectors spanning part of the null space.
    * ``"dense"`` (``P < N``): :math:`G = \frac1N\sum_b A_b^\top A_b` summed over
      mini-batches, then a symmetric eigen-decomposition (``P²`` numbers).
    * ``"lanczos"``: :func:`~hessquik_core.curvature.top_eigenpairs` of
      :func:`~hessquik_core.curvature.empirical_fisher_operator` (``O(kP)``
      memory, converged to rounding; ``k < P``).

    ``"exact"`` takes ``"gram"`` when ``N ≤ P`` and ``A`` fits
    ``memory_budget``, ``"dense"`` when ``P < N`` and ``G`` fits, else
    ``"lanczos"``. The eigen-decompositions of ``M`` and ``G`` run on the
    host in float64.

    **Approximate routes** (opt-in; they warn with :class:`ApproximationWarning`
    when their error bound exceeds ``warn_rtol·λ_k``, ``λ_k`` the smallest
    eigenvalue returned; by Weyl's inequality the bound bounds each
    eigenvalue's error):

    * ``"approx_incremental"`` streams mini-batches ``A_b`` of ``batch_size``
      rows (default ``k + oversample``) and keeps a rank-``r = k + oversample``
      factor :math:`B = U\Sigma`: :math:`[B,\ A_b^\top] = QR`,
      :math:`R = \tilde U \tilde\Sigma \tilde V^\top`,
      :math:`B \leftarrow Q \tilde U_{:, :r} \tilde\Sigma_{:r}`. Exact when
      :math:`\mathrm{rank}\,A \le r`; otherwise each step drops the smallest
      directions and ``info["discarded"]`` is their total :math:`\sigma^2/N`.
      One pass, ``O((r + b)P)`` memory.
    * ``"approx_randomized"``: subspace iteration on :math:`G`-products with
      ``k + oversample`` Gaussian probes and ``n_iter`` power steps, then
      Rayleigh–Ritz; ``info["residuals"]`` are the residual norms.

    ``"incremental"`` and ``"randomized"`` are the old names of the two
    approximate routes (same behaviour and warning).

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
        Number of pairs (``k <= P``; ``k < P`` for ``"lanczos"`` and ``"approx_randomized"``).
    method : {"exact", "gram", "dense", "lanczos", "approx_incremental", "approx_randomized"}
    batch_size : int, optional
        Examples per pass (default all; ``"approx_incremental"``: rows per
        step, default ``k + oversample``).
    memory_budget : float, optional
        Bytes that ``A`` (``"gram"``) or ``G`` (``"dense"``) may take for
        ``method="exact"`` to choose them (256 MiB by default).
    oversample : int
        Extra rank kept beyond ``k`` (approximate routes).
    n_iter : int
        Power steps (``"approx_randomized"``).
    seed : int or numpy.random.Generator
        Gaussian probes (``"approx_randomized"``, ``"lanczos"``) and the
        null-space completion of ``"gram"``.
    warn_rtol : float
        An approximate route warns when ``info["discarded"]`` or the largest
        ``info["residuals"]`` exceeds ``warn_rtol`` times the smallest
        eigenvalue returned (default ``1e-3``: 0.1 %).
    backend : str, optional
        Force a backend; results return in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, as in :func:`~hessquik_core.curvature.hessian_operator`.
    progress : bool, optional
        Progress bar (mini-batches or passes); ``None`` (default) only in
        an interactive session with tqdm installed, ``True`` always, ``False`` never.

    Returns
    -------
    eigenvalues : array of shape (k,)
        Descending.
    eigenvectors : array of shape (P, k)
        Orthonormal, :class:`~hessquik_core.curvature.ParameterLayout` order.
    info : dict
        ``"method"``: the route taken; ``"discarded"`` (``"approx_incremental"``):
        the sum of the dropped :math:`\sigma^2/N` (an upper bound on the
        eigenvalue mass lost); ``"residuals"`` (``"approx_randomized"``,
        ``"lanczos"``): host array ``(k,)`` of :math:`\lVert G q_i - \lambda_i q_i\rVert`.
    """
    method = _OLD.get(method, method) if isinstance(method, str) else method
    if method not in _EXACT and method not in _APPROX:
        raise ValueError(
            f"method must be one of {list(_EXACT) + list(_APPROX)} (approximate routes say so), got {method!r}"
        )
    warn_rtol = float(warn_rtol)
    if not math.isfinite(warn_rtol) or warn_rtol < 0:
        raise ValueError(f"warn_rtol must be a finite non-negative number, got {warn_rtol!r}")
    k = _check_int("k", k, 1)
    if method in _APPROX:
        vals, vecs, info = _approximate(
            net,
            x,
            y,
            loss,
            k,
            _APPROX[method],
            batch_size,
            oversample,
            n_iter,
            seed,
            backend,
            progress,
            params,
        )
        _warn_if_inexact(vals, info, warn_rtol, method)
        info["method"] = method
        return vals, vecs, info
    if method == "lanczos":
        op = empirical_fisher_operator(net, x, y, loss, batch_size=batch_size, backend=backend, params=params)
        if k >= op.size:
            raise ValueError(f"k must be below P = {op.size} for method='lanczos', got {k}")
        res = top_eigenpairs(op, k, which="LA", seed=seed, progress=progress, return_info=True)
        vals, vecs, linfo = cast("tuple[Any, Any, dict[str, Any]]", res)
        return vals, vecs, {"method": "lanczos", "residuals": linfo["residuals"]}
    pb = _Problem(net, x, y, loss, batch_size, backend, params=params)
    P, N = pb.size, pb.N
    if k > P:
        raise ValueError(f"k must be at most P = {P}, got {k}")
    if method == "exact":
        budget = check_max_memory(
            DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget, "memory_budget"
        )
        assert budget is not None  # a number was given
        itemsize = max(np.dtype(str(pb.B.dtype).split(".")[-1]).itemsize, 8)
        if N <= P and N * P * itemsize <= budget:
            method = "gram"
        elif P < N and P * P * itemsize <= budget:
            method = "dense"
        else:
            return empirical_fisher_eigenpairs(
                net, x, y, loss, k, method="lanczos", batch_size=batch_size, seed=seed,
                backend=backend, params=params, progress=progress,
            )  # fmt: skip
    with progress_bar(progress, total=len(pb.chunks), desc="empirical Fisher", unit="batch") as bar:
        if method == "gram":
            return _gram(pb, k, seed, bar)
        return _dense(pb, k, bar)


def _approximate(net, x, y, loss, k, method, batch_size, oversample, n_iter, seed, backend, progress, params):
    """The two approximate routes (unchanged algorithms, see :func:`empirical_fisher_eigenpairs`)."""
    oversample = _check_int("oversample", oversample, 0)
    r = k + oversample
    if method == "incremental":
        bs = r if batch_size is None else batch_size
        pb = _Problem(net, x, y, loss, bs, backend, params=params)
        if k > pb.size:
            raise ValueError(f"k must be at most P = {pb.size}, got {k}")
        with progress_bar(progress, total=len(pb.chunks), desc="empirical Fisher", unit="batch") as bar:
            return _incremental(pb, k, r, bar)
    n_iter = _check_int("n_iter", n_iter, 0)
    op = empirical_fisher_operator(net, x, y, loss, batch_size=batch_size, backend=backend, params=params)
    if k >= op.size:
        raise ValueError(f"k must be below P = {op.size}, got {k}")
    with progress_bar(progress, total=n_iter + 2, desc="empirical Fisher", unit="pass") as bar:
        return _randomized(op, k, min(r, op.size), n_iter, seed, bar)


def _warn_if_inexact(vals, info, rtol, method):
    """Warn when the approximate route's error bound exceeds ``rtol`` times the smallest eigenvalue returned."""
    low = abs(float(vals[-1]))  # descending: the smallest one returned
    if "discarded" in info:
        bound, what = float(info["discarded"]), "discarded eigenvalue mass"
    else:
        bound, what = float(np.max(info["residuals"], initial=0.0)), "largest Ritz residual"
    if bound > rtol * low:
        warnings.warn(
            f"empirical_fisher_eigenpairs(method={method!r}) is approximate: its {what} is "
            f"{bound:.3g}, {bound / low if low else math.inf:.2g} of the smallest eigenvalue returned, {low:.6g} "
            f"(warn_rtol={rtol:g}); method='exact' (the default) gives the eigenpairs to rounding",
            ApproximationWarning,
            stacklevel=4,  # the caller of empirical_fisher_eigenpairs (through the dask hook)
        )


def _rows(pb, bar):
    """The per-example gradients ``A : (N, P)`` (call namespace), mini-batch by mini-batch."""
    parts = []
    for c in range(len(pb.chunks)):
        parts.append(pb.per_example(c))
        bar.update()
    return parts[0] if len(parts) == 1 else pb.B.xp.concat(parts, axis=0)


def _top(theta, k):
    """Indices of the ``k`` largest of ``theta`` (host), descending."""
    return np.argsort(-theta, kind="stable")[:k]


def _gram(pb, k, seed, bar):
    B, xp, be = pb.B, pb.B.xp, pb.B.be
    A = _rows(pb, bar)  # (N, P)
    N, P = pb.N, pb.size
    M = be.to_numpy(A @ xp.matrix_transpose(A)).astype(np.float64) / N  # (N, N)
    theta, U = np.linalg.eigh(0.5 * (M + M.T))
    idx = _top(theta, min(k, N))
    theta, U = np.maximum(theta[idx], 0.0), U[:, idx]
    # a direction is defined by A only where λ is above rounding of the largest one
    tiny = max(N, P) * np.finfo(np.dtype(str(B.dtype).split(".")[-1])).eps * max(float(theta[0]), 0.0)
    r = int(np.sum(theta > tiny)) if theta.size else 0
    Q = xp.matrix_transpose(A) @ be.convert(U[:, :r], xp=xp, dtype=B.dtype, device=B.device)  # (P, r)
    # q_i = Aᵀu_i/‖Aᵀu_i‖ loses orthogonality in proportion to λ₁/λ_i: re-orthonormalise
    # (QR keeps the span of the leading columns, so each q_i stays the eigenvector up to rounding)
    Q, R = xp.linalg.qr(Q)
    Q = Q * xp.sign(xp.linalg.diagonal(R))[None, :]
    vals = np.concatenate([theta[:r], np.zeros(k - r)])
    if r < k:
        Q = xp.concat([Q, _complement(Q, P, k - r, seed, B)], axis=1)
    return (
        B.to_user(be.convert(vals, xp=xp, dtype=B.dtype, device=B.device)),
        B.to_user(Q),
        {"method": "gram"},
    )


def _complement(Q, P, n, seed, B):
    """``n`` orthonormal columns orthogonal to ``Q : (P, r)`` (null-space eigenvectors of G)."""
    xp, be = B.xp, B.be
    Z = be.convert(_rng(seed).standard_normal((P, n)), xp=xp, dtype=B.dtype, device=B.device)
    for _ in range(2):  # twice is enough (Kahan–Parlett)
        Z = Z - Q @ (xp.matrix_transpose(Q) @ Z)
    Z, _ = xp.linalg.qr(Z)
    for _ in range(2):
        Z = Z - Q @ (xp.matrix_transpose(Q) @ Z)
    return xp.linalg.qr(Z)[0]


def _dense(pb, k, bar):
    B, xp, be = pb.B, pb.B.xp, pb.B.be
    G = None
    for c in range(len(pb.chunks)):
        Ab = pb.per_example(c)
        Gb = xp.matrix_transpose(Ab) @ Ab
        G = Gb if G is None else G + Gb
        bar.update()
    Gh = be.to_numpy(G).astype(np.float64) / pb.N
    theta, V = np.linalg.eigh(0.5 * (Gh + Gh.T))
    idx = _top(theta, k)
    vals = be.convert(theta[idx], xp=xp, dtype=B.dtype, device=B.device)
    vecs = be.convert(np.ascontiguousarray(V[:, idx]), xp=xp, dtype=B.dtype, device=B.device)
    return B.to_user(vals), B.to_user(vecs), {"method": "dense"}


def empirical_fisher_trace(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    backend: str | None = None,
    params: Any = None,
) -> Any:
    r"""The exact trace :math:`\mathrm{tr}\,G = \frac1N\sum_n \lVert g_n\rVert^2` of the empirical Fisher.

    One pass of per-example gradients (mini-batches of ``batch_size``
    examples bound the memory to ``batch_size·P`` numbers); no probes, no
    estimate. With :func:`empirical_fisher_eigenpairs` it gives the
    full-rank approximation's :math:`\tilde\lambda`
    (:meth:`~hessquik_core.curvature.FullRankApproximation.from_trace`).

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        A torch model is converted with :func:`hessquik_core.from_torch`.
    x : array of shape (N, d)
    y : array
        Targets, ``(N, m)`` or labels ``(N,)``.
    loss : Loss or str or torch loss
        As in :func:`~hessquik_core.curvature.hessian_operator`.
    batch_size : int, optional
        Examples per pass (default all).
    backend : str, optional
        Force a backend; the result returns in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, as in :func:`~hessquik_core.curvature.hessian_operator`.

    Returns
    -------
    0-d array
        :math:`\mathrm{tr}\,G`, in ``x``'s library and dtype.
    """
    if is_dask(x) or is_dask(y):
        raise TypeError(
            "empirical_fisher_trace takes in-memory arrays, got a dask array; for dask data use "
            "hessquik_core.curvature.hutchinson_trace(empirical_fisher_operator(...)) or compute() a sample"
        )
    pb = _Problem(net, x, y, loss, batch_size, backend, params=params)
    xp = pb.B.xp
    total = None
    for c in range(len(pb.chunks)):
        Ab = pb.per_example(c)
        s = xp.sum(Ab * Ab)
        total = s if total is None else total + s
    return pb.B.to_user(total / pb.N)


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

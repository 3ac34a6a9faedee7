r"""Top ``K`` eigenpairs of the empirical Fisher :math:`G = \frac1N\sum_n g_n g_n^\top`.

By incremental SVD of per-example gradient mini-batches or by randomised
subspace iteration on :math:`G`-products, ``O(KP)`` memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dask_hook import dask_dispatch
from .._progress import progress_bar
from ._spectral import (
    _check_int,
    _rng,
)
from .problem import _Problem
from .products import empirical_fisher_operator

__all__ = ["empirical_fisher_eigenpairs"]


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

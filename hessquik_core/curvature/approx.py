r"""Low-rank and full-rank approximations of a curvature matrix, as operators.

From ``K`` eigenpairs :math:`(\lambda_i, q_i)` (orthonormal :math:`Q : (P, K)`):

* low rank: :math:`A_K = Q\Lambda Q^\top`;
* full rank: :math:`\tilde A = Q\Lambda Q^\top + \tilde\lambda\,(I - QQ^\top)`, every
  direction outside the span of :math:`Q` given the single eigenvalue
  :math:`\tilde\lambda`. Its inverse is of the same form,
  :math:`\tilde A^{-1} = Q\Lambda^{-1}Q^\top + \tilde\lambda^{-1}(I - QQ^\top)`.

Both are applied in ``O(KP)`` work and memory per vector; the ``(P, P)``
matrix is formed only by :meth:`~hessquik_core.curvature.LinearOperatorBase.to_dense`.
Orthonormality of ``Q`` is assumed, not checked (Lanczos and the SVD
routines return orthonormal vectors).
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat as aac

from .._array import namespace_of
from .operators import LinearOperatorBase

__all__ = ["FullRankApproximation", "LowRankApproximation"]


def _as_scalar(v, name):
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return out


class LowRankApproximation(LinearOperatorBase):
    r""":math:`A_K = Q\Lambda Q^\top` from eigenvalues ``(K,)`` and eigenvectors ``(P, K)``.

    Parameters
    ----------
    eigenvalues : array of shape (K,)
    eigenvectors : array of shape (P, K)
        Orthonormal columns (assumed), e.g. from
        :func:`~hessquik_core.curvature.top_eigenpairs`; same library.

    Attributes
    ----------
    Q : array of shape (P, K)
        The eigenvectors.
    lam : array of shape (K,)
        The eigenvalues, in the eigenvectors' dtype.
    rank : int
        ``K``.

    Examples
    --------
    >>> import numpy as np
    >>> from hessquik_core.curvature import LowRankApproximation
    >>> Q = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 2)))[0]
    >>> A = LowRankApproximation(np.array([3.0, 1.0]), Q)
    >>> bool(np.allclose(A.to_dense(), Q @ np.diag([3.0, 1.0]) @ Q.T))
    True
    """

    def __init__(self, eigenvalues: Any, eigenvectors: Any) -> None:
        xp = namespace_of(eigenvectors, "eigenvectors")
        namespace_of(eigenvalues, "eigenvalues")
        if eigenvectors.ndim != 2:
            raise ValueError(f"eigenvectors must have shape (P, K), got {tuple(eigenvectors.shape)}")
        P, K = eigenvectors.shape
        if tuple(eigenvalues.shape) != (K,):
            raise ValueError(f"eigenvalues must have shape ({K},), got {tuple(eigenvalues.shape)}")
        if K > P:
            raise ValueError(f"at most P = {P} eigenpairs, got {K}")
        super().__init__(P, xp, eigenvectors.dtype, aac.device(eigenvectors))
        self.Q = eigenvectors
        self.lam = xp.astype(eigenvalues, eigenvectors.dtype)
        self.rank = K

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.size}, K={self.rank})"

    def _coef(self, V):
        return self.xp.matrix_transpose(self.Q) @ V  # (K, k)

    def _rhs(self, b, damping):
        """``solve``'s arguments checked: the damping, whether ``b`` is one vector, ``b`` as ``(P, k)``."""
        delta = _as_scalar(damping, "damping")
        one = b.ndim == 1
        B = b[:, None] if one else b
        if B.ndim != 2 or B.shape[0] != self.size:
            raise ValueError(f"b must have shape ({self.size},) or ({self.size}, k), got {tuple(b.shape)}")
        return delta, one, B

    def _matmat(self, V):
        return self.Q @ (self.lam[:, None] * self._coef(V))

    def solve(self, b: Any, damping: float = 0.0) -> Any:
        r""":math:`(A + \delta I)^{-1} b` for ``b : (P,)`` or ``(P, k)``.

        With :math:`\delta = 0` the low-rank form is singular and this is the
        pseudo-inverse :math:`Q\Lambda^{-1}Q^\top b` (needs every :math:`\lambda_i \ne 0`);
        with :math:`\delta \ne 0`, :math:`Q(\Lambda+\delta)^{-1}Q^\top b + \delta^{-1}(b - QQ^\top b)`.

        Parameters
        ----------
        b : array of shape (P,) or (P, k)
        damping : float
            :math:`\\delta`.

        Returns
        -------
        array of shape (P,) or (P, k)
            Like ``b``.

        Raises
        ------
        ZeroDivisionError
            When an eigenvalue plus the damping is zero.
        """
        delta, one, B = self._rhs(b, damping)
        c = self._coef(B)
        denom = self.lam + delta
        if bool(self.xp.any(denom == 0)):
            raise ZeroDivisionError("an eigenvalue plus damping is zero: the approximation is singular")
        out = self.Q @ (c / denom[:, None])
        if delta != 0.0:
            out = out + (B - self.Q @ c) / delta
        return out[:, 0] if one else out

    def diagonal(self) -> Any:
        r""":math:`\mathrm{diag}(A_K)_i = \sum_k \lambda_k Q_{ik}^2`.

        Returns
        -------
        array of shape (P,)
        """
        return self.xp.sum(self.Q * self.Q * self.lam[None, :], axis=1)

    def trace(self) -> float:
        """:math:`\\sum_k \\lambda_k`.

        Returns
        -------
        float
        """
        return float(self.xp.sum(self.lam))


class FullRankApproximation(LowRankApproximation):
    r""":math:`\tilde A = Q\Lambda Q^\top + \tilde\lambda(I - QQ^\top)`, invertible when every
    :math:`\lambda_i` and :math:`\tilde\lambda` are non-zero.

    ``lam_tilde`` is the value given to the ``P - K`` directions outside the
    span of ``Q``; :meth:`from_trace` sets it to the mean of the remaining
    eigenvalues, :math:`(\mathrm{tr}A - \sum_i\lambda_i)/(P-K)`, which makes
    :math:`\mathrm{tr}\tilde A = \mathrm{tr} A`.

    Parameters
    ----------
    eigenvalues : array of shape (K,)
    eigenvectors : array of shape (P, K)
        Orthonormal columns (assumed).
    lam_tilde : float
        :math:`\\tilde\\lambda`.
    """

    def __init__(self, eigenvalues: Any, eigenvectors: Any, lam_tilde: float) -> None:
        super().__init__(eigenvalues, eigenvectors)
        self.lam_tilde = _as_scalar(lam_tilde, "lam_tilde")

    @classmethod
    def from_trace(cls, eigenvalues: Any, eigenvectors: Any, trace: float) -> FullRankApproximation:
        """The approximation with ``lam_tilde = (trace - Σλ) / (P - K)``, keeping the trace.

        Parameters
        ----------
        eigenvalues : array of shape (K,)
        eigenvectors : array of shape (P, K)
            ``K < P``.
        trace : float
            :math:`\\mathrm{tr} A`, e.g. ``hutchinson_trace(op).value``.

        Returns
        -------
        FullRankApproximation
        """
        P, K = eigenvectors.shape
        if K >= P:
            raise ValueError("from_trace needs K < P")
        xp = namespace_of(eigenvalues, "eigenvalues")
        rest = _as_scalar(trace, "trace") - float(xp.sum(eigenvalues))
        return cls(eigenvalues, eigenvectors, rest / (P - K))

    def __repr__(self) -> str:
        return f"FullRankApproximation(P={self.size}, K={self.rank}, lam_tilde={self.lam_tilde:g})"

    def _matmat(self, V):
        # λ̃ V + Q (Λ - λ̃) Qᵀ V
        return self.lam_tilde * V + self.Q @ ((self.lam - self.lam_tilde)[:, None] * self._coef(V))

    def solve(self, b: Any, damping: float = 0.0) -> Any:
        r"""Closed form :math:`(\tilde A + \delta I)^{-1} b
        = Q\big((\Lambda+\delta)^{-1} - (\tilde\lambda+\delta)^{-1}\big)Q^\top b
        + (\tilde\lambda+\delta)^{-1} b`.

        Parameters
        ----------
        b : array of shape (P,) or (P, k)
        damping : float
            :math:`\\delta`.

        Returns
        -------
        array of shape (P,) or (P, k)
            Like ``b``.

        Raises
        ------
        ZeroDivisionError
            When an eigenvalue plus the damping is zero.
        """
        delta, one, B = self._rhs(b, damping)
        lt = self.lam_tilde + delta
        denom = self.lam + delta
        if lt == 0.0 or bool(self.xp.any(denom == 0)):
            raise ZeroDivisionError("an eigenvalue plus damping is zero: the approximation is singular")
        out = B / lt + self.Q @ ((1.0 / denom - 1.0 / lt)[:, None] * self._coef(B))
        return out[:, 0] if one else out

    def inverse(self) -> FullRankApproximation:
        r""":math:`\tilde A^{-1}` as a :class:`FullRankApproximation` (same ``Q``, reciprocal eigenvalues).

        Returns
        -------
        FullRankApproximation
        """
        if self.lam_tilde == 0.0 or bool(self.xp.any(self.lam == 0)):
            raise ZeroDivisionError("singular approximation: a zero eigenvalue")
        return FullRankApproximation(1.0 / self.lam, self.Q, 1.0 / self.lam_tilde)

    def slogdet(self) -> tuple[float, float]:
        r"""``(sign, log|det|)`` of :math:`\tilde A`:
        :math:`\sum_i \log|\lambda_i| + (P-K)\log|\tilde\lambda|`.

        Returns
        -------
        sign : float
            ``1.0``, ``-1.0`` (or ``0.0`` when singular).
        logabsdet : float
            ``-inf`` when singular.
        """
        xp = self.xp
        neg = int(xp.sum(xp.astype(self.lam < 0, xp.int64))) + (self.size - self.rank) * (self.lam_tilde < 0)
        if self.lam_tilde == 0.0 or bool(xp.any(self.lam == 0)):
            return 0.0, -math.inf
        logabs = float(xp.sum(xp.log(xp.abs(self.lam)))) + (self.size - self.rank) * math.log(
            abs(self.lam_tilde)
        )
        return (-1.0 if neg % 2 else 1.0), logabs

    def diagonal(self) -> Any:
        r""":math:`\tilde\lambda + \sum_k (\lambda_k - \tilde\lambda) Q_{ik}^2`.

        Returns
        -------
        array of shape (P,)
        """
        return self.lam_tilde + self.xp.sum(self.Q * self.Q * (self.lam - self.lam_tilde)[None, :], axis=1)

    def trace(self) -> float:
        r""":math:`\sum_k \lambda_k + (P - K)\tilde\lambda`.

        Returns
        -------
        float
        """
        return super().trace() + (self.size - self.rank) * self.lam_tilde

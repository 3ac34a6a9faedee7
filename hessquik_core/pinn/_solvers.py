r"""Damped Gauss–Newton steps: :math:`d = \arg\min_d \|Jd - \rho\|^2 + \lambda\|d\|^2`.

Equivalently :math:`d = (J^\top J + \lambda I)^{+} J^\top\rho = J^\top(JJ^\top + \lambda I)^{+}\rho`.
All three solvers work on :math:`J` itself, never on the normal equations
:math:`J^\top J d = J^\top\rho`: forming :math:`J^\top J` squares the condition
number, and the step of a well-trained PINN stalls near :math:`10^{-7}`
relative error that way (issue 22), while the least-squares step from
:math:`J` keeps going to :math:`10^{-12}`.

* ``"dense"``: the thin SVD :math:`J = U\Sigma V^\top`,
  :math:`d = V\,\mathrm{diag}\big(\sigma_i/(\sigma_i^2 + \lambda)\big)U^\top\rho`
  (the exact solution of the augmented least-squares problem
  :math:`[J; \sqrt\lambda I]\,d \approx [\rho; 0]`); with :math:`\lambda = 0`, the
  pseudo-inverse, singular values below ``rcond``·σ₁ dropped. Cost
  :math:`O(NP\min(N,P))` time, :math:`O(NP + \min(N,P)(N+P))` memory.
* ``"kernel"``: :math:`d = J^\top(JJ^\top + \lambda I)^{-1}\rho` through the thin
  QR :math:`J^\top = QR` and the SVD of the small :math:`R = \tilde U\Sigma\tilde V^\top`:
  :math:`JJ^\top = R^\top R`, so
  :math:`d = Q\tilde U\,\mathrm{diag}(\sigma_i/(\sigma_i^2+\lambda))\tilde V^\top\rho`
  — the kernel form without forming :math:`JJ^\top` either. Cost
  :math:`O(PN^2 + N^3)` time, :math:`O(NP + N^2)` memory for :math:`N \le P`
  (never a :math:`P\times P` array there).
* ``"cg"``: CGLS (conjugate gradients on the damped least-squares problem,
  stable where CG on the normal equations is not: it updates the residual
  :math:`\rho - Jd` rather than :math:`J^\top J d`), matrix-free through
  :math:`Jv` and :math:`J^\top w` (one forward and one backward sweep per
  quantity per iteration); memory :math:`O(N + P)`, never :math:`J`.

Each returns ``d`` and :math:`g^\top d` and :math:`\|Jd\|^2` (with
:math:`g = J^\top\rho`), which give the Gauss–Newton model's predicted
decrease :math:`\alpha g^\top d - \tfrac12\alpha^2\|Jd\|^2` for a step
:math:`\theta - \alpha d`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Direction", "cgls", "svd_step"]


@dataclass
class Direction:
    """A damped Gauss–Newton direction and what the model predicts for it."""

    d: Any  # (P,)
    gd: float  # g^T d, g = J^T rho
    jd2: float  # ||J d||^2
    iterations: int | None = None  # CGLS iterations


def _filter(xp: Any, s: Any, damping: float, rcond: float) -> Any:
    """:math:`\\sigma/(\\sigma^2 + \\lambda)`; for :math:`\\lambda = 0`, :math:`1/\\sigma` above the cut, else 0."""
    if damping > 0:
        return s / (s * s + damping)
    cut = rcond * s[0] if s.shape[0] else 0.0
    keep = s > cut
    return xp.where(keep, 1.0 / xp.where(keep, s, 1.0), 0.0)


def svd_step(factors: tuple, rho: Any, damping: float, rcond: float, xp: Any, J: Any) -> Direction:
    r"""The step from an SVD-like factorisation ``(left, s, right)``, :math:`J = \text{left}\,\Sigma\,\text{right}^\top`.

    ``left`` is ``(N, k)`` and ``right`` is ``(P, k)``;
    :math:`d = \text{right}\,\mathrm{diag}(f(\sigma))\,\text{left}^\top\rho`.
    """
    left, s, right = factors
    coef = _filter(xp, s, damping, rcond) * (left.T @ rho)
    d = right @ coef
    Jd = J @ d
    return Direction(d, float(xp.sum(rho * Jd)), float(xp.sum(Jd * Jd)))


def dense_factors(J: Any, xp: Any) -> tuple:
    """``(U, s, V)`` of the thin SVD :math:`J = U\\Sigma V^\\top`."""
    U, s, Vh = xp.linalg.svd(J, full_matrices=False)
    return U, s, Vh.T


def kernel_factors(J: Any, xp: Any) -> tuple:
    r"""``(Ṽ, s, QŨ)`` from :math:`J^\top = QR`, :math:`R = \tilde U\Sigma\tilde V^\top`.

    Then :math:`J = \tilde V\Sigma(Q\tilde U)^\top`.
    """
    Q, R = xp.linalg.qr(J.T)  # Q (P, k), R (k, N), k = min(N, P)
    Ut, s, Vth = xp.linalg.svd(R, full_matrices=False)
    return Vth.T, s, Q @ Ut


def cgls(problem: Any, rho: Any, damping: float, maxiter: int, tol: float) -> Direction:
    r"""CGLS for :math:`\min_d \|Jd - \rho\|^2 + \lambda\|d\|^2`, matrix-free.

    .. math::
        r_0 = \rho,\ s_0 = p_0 = J^\top\rho;\quad
        q_k = Jp_k,\ \alpha_k = \frac{\|s_k\|^2}{\|q_k\|^2 + \lambda\|p_k\|^2},\
        d_{k+1} = d_k + \alpha_k p_k,\ r_{k+1} = r_k - \alpha_k q_k,

    .. math::
        s_{k+1} = J^\top r_{k+1} - \lambda d_{k+1},\quad
        p_{k+1} = s_{k+1} + \frac{\|s_{k+1}\|^2}{\|s_k\|^2}p_k,

    stopped when :math:`\|s_k\| \le \text{tol}\,\|s_0\|` or after ``maxiter``
    iterations. :math:`Jd = \rho - r` gives :math:`g^\top d` and :math:`\|Jd\|^2` for free.
    """
    xp = problem.xp
    d = xp.zeros((problem.P,), dtype=problem.dtype, device=problem.device)
    r = rho
    s = problem.vjp(rho)
    p = s
    gamma = float(xp.sum(s * s))
    stop = tol * gamma**0.5
    it = 0
    while it < maxiter and gamma**0.5 > stop and gamma > 0:
        q = problem.jvp(p)
        delta = float(xp.sum(q * q)) + damping * float(xp.sum(p * p))
        if not delta > 0:
            break
        alpha = gamma / delta
        d = d + alpha * p
        r = r - alpha * q
        s = problem.vjp(r) - damping * d
        gamma_new = float(xp.sum(s * s))
        it += 1
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    Jd = rho - r
    return Direction(d, float(xp.sum(rho * Jd)), float(xp.sum(Jd * Jd)), it)

r"""Second-order optimizers for :class:`~hessquik_core.pinn.Problem`: Gauss–Newton / ENGD.

For the loss :math:`L = \frac12\|\rho(\theta)\|^2` with Jacobian :math:`J` (``(N, P)``),
a damped Gauss–Newton (Levenberg–Marquardt) step is

.. math::
    d = \arg\min_d \|Jd - \rho\|^2 + \lambda\|d\|^2 = (J^\top J + \lambda I)^{-1}J^\top\rho,
    \qquad \theta \leftarrow \theta - \alpha d,

with :math:`\alpha` from a line search. The energy natural gradient (ENGD,
Müller & Zeinhofer 2023) of a PINN loss is exactly this step with the
Gramian :math:`G = J^\top J` of the residual loss (its "energy" inner product),
:math:`\lambda = 0` (pseudo-inverse) and the grid line search
:math:`\alpha \in \{2^{-k}\}`: :class:`ENGD` is :class:`GaussNewton` with those defaults.
How :math:`d` is solved (``solver=``) is in :mod:`~hessquik_core.pinn._solvers`:
from :math:`J` itself (SVD, QR + SVD, CGLS), never from the normal equations.

**Levenberg–Marquardt damping** (``adaptive=True``): a step that does not
lower the loss is rejected and :math:`\lambda \leftarrow \max(\lambda\cdot\text{up}, \lambda_{\min})`;
an accepted one whose gain ratio at the chosen :math:`\alpha`,
:math:`\varrho = (L - L_\text{new})/m(\alpha) > 0.75`
(:math:`m(\alpha) = \alpha g^\top d - \frac12\alpha^2\|Jd\|^2`, the decrease the
Gauss–Newton model predicts) lowers it,
:math:`\lambda \leftarrow \max(\lambda\cdot\text{down}, \lambda_{\min})`; otherwise a step the
line search shortened to :math:`\alpha \le 1/8` raises it by ``up`` and :math:`\varrho < 0.25` doubles it.
(Measured on Poisson 2-D: lowering :math:`\lambda` also when the line search shortens
the step reaches a lower loss than keeping :math:`\lambda` until full steps succeed.)
"""

from __future__ import annotations

import math
from typing import Any

from ..backends import backend_for
from ..engine.plan import MemoryBudgetError
from ._base import Optimizer, StepRecord, armijo, grid_search
from ._solvers import Direction, cgls, dense_factors, kernel_factors, svd_step
from .problem import Problem

__all__ = ["ENGD", "GaussNewton"]

_SOLVERS = ("dense", "kernel", "cg")
_SEARCHES = ("grid", "armijo", None)


def _components(problem: Problem) -> int:
    """:math:`\\sum_t n_t K_t`: rows of the per-quantity Jacobians :math:`\\partial q/\\partial\\theta`."""
    d, m = int(problem.net.in_features), problem.m
    per = {"value": m, "laplacian": m, "weighted_laplacian": m, "gradient": d * m, "hessian_diagonal": d * m}
    per["biharmonic"] = m
    # "directional" / "pure_partial": K directions of the term, (n, K, m)
    return sum(
        t.n * sum(per[q] if q in per else problem._shape(t, q)[1] * m for q in t.needs) for t in problem.terms
    )


#: the first cut of rcond="adaptive": about where a pseudo-inverse of JᵀJ cuts J's spectrum
RCOND_START = 1e-7


def solver_bytes(problem: Problem, solver: str) -> float:
    r"""Estimated peak bytes of one step of ``solver`` (before any work).

    ``"dense"``: the quantities' Jacobians of one term, :math:`J` and the thin SVD
    (:math:`2NP + kP + kN`, :math:`k = \min(N, P)`, up to :math:`P^2`);
    ``"kernel"``: the same with :math:`Q` ``(P, k)`` and the small SVD (:math:`\le N^2`);
    ``"cg"``: a few vectors of :math:`N` and :math:`P` entries.
    """
    N, P = problem.N, problem.P
    k = min(N, P)
    item = 4 if "32" in str(problem.dtype) else 8
    if solver == "cg":
        return float(item * 8 * (N + P))
    big = _components(problem) * P + 2 * N * P
    extra = k * (N + P) + (P * P if solver == "dense" else 0) + (k * k if solver == "kernel" else 0)
    return float(item * (big + extra))


class GaussNewton(Optimizer):
    r"""Damped Gauss–Newton (Levenberg–Marquardt) with a line search.

    Parameters
    ----------
    problem : Problem
    solver : {"dense", "kernel", "cg"}
        How :math:`d = (J^\top J + \lambda I)^{-1}J^\top\rho` is solved
        (:mod:`~hessquik_core.pinn._solvers`): ``"dense"`` thin SVD of
        :math:`J` (for :math:`P` up to a few thousand), ``"kernel"`` QR of
        :math:`J^\top` and the SVD of its :math:`R` (the form
        :math:`J^\top(JJ^\top + \lambda I)^{-1}\rho`, for :math:`N < P`), ``"cg"``
        matrix-free CGLS (Hessian-free Gauss–Newton).
    damping : float
        Initial :math:`\lambda \ge 0` (0: the pseudo-inverse step; not with ``"cg"`` unless
        ``cg_maxiter`` bounds the work).
    adaptive : bool
        Levenberg–Marquardt updates of :math:`\lambda` (module docstring).
    damping_min, up, down : float
        Floor of :math:`\lambda` when adapted, and its factors on failure / success.
    line_search : {"grid", "armijo", None}
        ``"grid"``: best of :math:`\alpha = 2^{-k}`, :math:`k = 0..\text{grid\_size}-1`;
        ``"armijo"``: backtracking from :math:`\alpha = 1`; ``None``: :math:`\alpha = 1`.
    grid_size : int
        Points of the grid (default 31: :math:`\alpha` down to :math:`2^{-30}`).
    grid_full : bool
        Evaluate every grid point (the papers' search); default: stop at the first
        local minimum below the current loss (:func:`~hessquik_core.pinn._base.grid_search`).
    rcond : float or "adaptive", optional
        With :math:`\lambda = 0`, singular values below ``rcond``·σ₁ are dropped
        (default :math:`\max(N, P)\,\epsilon`, NumPy's ``lstsq``). ``"adaptive"``
        (ENGD's default): start at :math:`10^{-7}` (about where the papers' pseudo-inverse
        of the Gramian :math:`J^\top J` cuts, :math:`\sqrt{\epsilon}`), divide by 100
        after a step that lowers the loss by less than 10 % (down to the default floor),
        multiply by 100 (up to :math:`10^{-7}`) after a step shorter than
        :math:`\alpha = 2^{-8}`: the cut keeps out the directions rounding fills with
        noise while far from a solution, and lets in the small singular directions the
        last digits need near one.
    cg_maxiter, cg_tol : int, float
        CGLS iterations and relative tolerance on :math:`\|J^\top(\rho - Jd) - \lambda d\|`.
    retry_damping : bool
        With a fixed :math:`\lambda` (``adaptive=False``): when no step along
        :math:`d` lowers the loss, retry this step with
        :math:`\lambda_j = 10^{2j-12}\sigma_1^2`, :math:`j = 0..5` (:math:`\sigma_1` the
        largest singular value of :math:`J`; 1 for ``"cg"`` and Dask points), on the same
        :math:`J` and factorisation, and keep the first that is accepted for this step
        only; the next step starts from ``damping`` again. Default off (ENGD: on).
    max_memory : float, optional
        Byte budget of a step (default: half the memory available on the
        points' device). ``"dense"`` and ``"kernel"`` are refused up front with
        :class:`~hessquik_core.MemoryBudgetError` when :func:`~hessquik_core.pinn.optim.solver_bytes` exceeds it.

    Notes
    -----
    Cost per step: building :math:`J` (one sweep per term with the parameter
    Jacobians of its quantities) plus :math:`O(NP\min(N,P))` for ``"dense"`` /
    ``"kernel"``, or :math:`2\,\text{iterations}` matrix-free products for ``"cg"``;
    the line search adds value-only network passes. A rejected step keeps
    :math:`J` and its factorisation for the retry with a larger :math:`\lambda`.
    """

    def __init__(
        self,
        problem: Problem,
        *,
        solver: str = "dense",
        damping: float = 1e-6,
        adaptive: bool = True,
        damping_min: float = 1e-12,
        up: float = 10.0,
        down: float = 1 / 3,
        line_search: str | None = "grid",
        grid_size: int = 31,
        grid_full: bool = False,
        rcond: float | str | None = None,
        cg_maxiter: int = 100,
        cg_tol: float = 1e-10,
        max_memory: float | None = None,
        retry_damping: bool = False,
    ) -> None:
        super().__init__(problem)
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
        if line_search not in _SEARCHES:
            raise ValueError(f"line_search must be one of {_SEARCHES}, got {line_search!r}")
        for name, val in (("damping", damping), ("damping_min", damping_min)):
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
        if not (up > 1 and 0 < down < 1):
            raise ValueError(f"need up > 1 and 0 < down < 1, got up={up}, down={down}")
        if not (isinstance(grid_size, int) and grid_size >= 1):
            raise ValueError(f"grid_size must be a positive integer, got {grid_size!r}")
        if not (isinstance(cg_maxiter, int) and cg_maxiter >= 1):
            raise ValueError(f"cg_maxiter must be a positive integer, got {cg_maxiter!r}")
        self.solver, self.damping, self.adaptive = solver, float(damping), bool(adaptive)
        self.damping_min, self.up, self.down = float(damping_min), float(up), float(down)
        self.line_search, self.grid_size, self.grid_full = line_search, grid_size, bool(grid_full)
        eps = float(problem.xp.finfo(problem.dtype).eps)
        if isinstance(rcond, str) and rcond != "adaptive":
            raise ValueError(f"rcond must be a float, None or 'adaptive', got {rcond!r}")
        self.rcond_floor = max(problem.N, problem.P) * eps
        self.rcond_adaptive = rcond == "adaptive"
        if self.rcond_adaptive:
            self.rcond = max(self.rcond_floor, RCOND_START)
        else:
            self.rcond = self.rcond_floor if rcond is None else float(rcond)
        self.cg_maxiter, self.cg_tol = cg_maxiter, float(cg_tol)
        self.retry_damping = bool(retry_damping)
        self._factors: tuple[Any, tuple] | None = None  # (theta, factors) of the last step
        # distributed points serve only some solvers, with their own memory check (hessquik_core.dask.DaskProblem)
        check = getattr(problem, "check_optimizer", None)
        if check is not None:
            check(self, max_memory)
        elif solver != "cg":
            self._check_memory(max_memory)

    def _check_memory(self, max_memory: float | None) -> None:
        p = self.problem
        need = solver_bytes(p, self.solver)
        if max_memory is None:
            budget = 0.5 * float(backend_for(p.xp).available_memory(p.device))
        else:
            budget = float(max_memory)
        if need > budget:
            others = "'kernel' or 'cg'" if self.solver == "dense" else "'cg'"
            raise MemoryBudgetError(
                f"solver={self.solver!r} needs about {need / 2**20:.1f} MiB for N = {p.N} residuals and "
                f"P = {p.P} parameters (J is N x P{', the SVD up to P x P' if self.solver == 'dense' else ''}), "
                f"over the budget of {budget / 2**20:.1f} MiB; use solver={others} "
                f"({'kernel: O(N P + N^2) memory, for N < P; ' if self.solver == 'dense' else ''}"
                f"cg: matrix-free, O(N + P) memory)"
            )

    def _direction(self, theta: Any, rho: Any) -> Direction:
        p = self.problem
        if self.solver == "cg":
            return cgls(p, rho, self.damping, self.cg_maxiter, self.cg_tol)
        if hasattr(p, "tsqr_direction"):  # distributed points: "dense" from the tree-reduced R of [J ρ]
            return p.tsqr_direction(self.damping, self.rcond)
        J = p.jacobian()
        if self._factors is None or not bool(p.xp.all(self._factors[0] == theta)):
            make = dense_factors if self.solver == "dense" else kernel_factors
            self._factors = (theta, make(J, p.xp))
        return svd_step(self._factors[1], rho, self.damping, self.rcond, p.xp, J)

    def _search(self, theta: Any, rho: Any, loss0: float) -> tuple[Any, float, float]:
        """The direction at the current damping and its line search: ``(direction, α, loss)``."""
        p = self.problem
        direc = self._direction(theta, rho)
        if self.line_search == "grid":
            alpha, loss1 = grid_search(p, theta, direc.d, loss0, self.grid_size - 1, self.grid_full)
        elif self.line_search == "armijo":
            alpha, loss1 = armijo(p, theta, direc.d, loss0, direc.gd)
        else:
            alpha, loss1 = 1.0, p.loss_at(theta - direc.d)
            if not loss1 < loss0:
                alpha, loss1 = 0.0, loss0
        return direc, alpha, loss1

    def _largest_singular_value(self) -> float:
        """:math:`\\sigma_1(J)` from the cached factorisation (1 where there is none: CG, Dask)."""
        if self._factors is None:
            return 1.0
        s = self._factors[1][1]
        return float(s[0]) if s.shape[0] else 1.0

    def _step(self) -> StepRecord:
        p = self.problem
        theta = p.parameters()
        rho = p.residual_vector()
        loss0 = 0.5 * float(p.xp.sum(rho * rho))
        lam = self.damping
        direc, alpha, loss1 = self._search(theta, rho, loss0)
        if alpha == 0 and self.retry_damping and not self.adaptive:
            # the pseudo-inverse (or fixed-λ) direction can be dominated by J's smallest singular
            # directions, which rounding fills with noise of huge norm: no α = 2^-k helps. Damping
            # them by λ_j = 10^{2j-12}σ₁² recovers a descent step on the same J and factors.
            fixed, s1 = self.damping, self._largest_singular_value()
            try:
                for j in range(6):
                    self.damping = 10.0 ** (2 * j - 12) * s1 * s1
                    direc, alpha, loss1 = self._search(theta, rho, loss0)
                    if alpha > 0:
                        lam = self.damping
                        break
            finally:
                self.damping = fixed
        d = direc.d
        accepted = alpha > 0
        rcond = self.rcond  # this step's cut, before the adaptive update
        if self.rcond_adaptive and accepted:
            if alpha < 2.0**-8:  # short steps: noise directions in d, cut more
                self.rcond = min(max(self.rcond_floor, RCOND_START), self.rcond * 100.0)
            elif loss1 > 0.9 * loss0:  # slow progress: let in smaller singular directions
                self.rcond = max(self.rcond_floor, self.rcond / 100.0)
        p.set_parameters(theta - alpha * d if accepted else theta)
        pred = alpha * direc.gd - 0.5 * alpha * alpha * direc.jd2
        ratio = (loss0 - loss1) / pred if pred > 0 else 0.0
        if self.adaptive:
            if not accepted:
                self.damping = max(self.damping * self.up, self.damping_min)
            elif ratio > 0.75:  # the model predicted the decrease at the chosen α
                self.damping = max(self.damping * self.down, self.damping_min)
            elif alpha <= 0.125:  # a much shortened step that the model did not predict well either
                self.damping = max(self.damping * self.up, self.damping_min)
            elif ratio < 0.25:
                self.damping = max(self.damping * 2.0, self.damping_min)
            if self.damping > 1e30:
                self.converged = "damping above 1e30: no Gauss-Newton step lowers the loss"
        elif not accepted:
            self.converged = "no step along the Gauss-Newton direction lowers the loss (fixed damping)"
        return StepRecord(
            step=0,
            loss=loss1,
            loss_before=loss0,
            step_size=alpha,
            damping=lam,
            cg_iterations=direc.iterations,
            accepted=accepted,
            extra={"gain_ratio": ratio, "rcond": rcond},
        )


class ENGD(GaussNewton):
    r"""Energy natural gradient descent (Müller & Zeinhofer, ICML 2023): Gauss–Newton on the residual loss.

    The natural gradient in the energy inner product of a least-squares PINN
    loss is :math:`G^{+}\nabla L` with the Gramian :math:`G = J^\top J`, i.e. the
    Gauss–Newton step, taken with the grid line search over :math:`2^{-k}`,
    :math:`k = 0..30`, as published, taking the best :math:`\alpha` of the whole
    grid. Defaults: ``solver="dense"``, ``line_search="grid"`` with
    ``grid_full=True``, the papers' pseudo-inverse (``damping=0``) with
    ``rcond="adaptive"`` (singular values below ``rcond``·σ₁ cut, the cut moved
    between :math:`10^{-7}` and :math:`\max(N,P)\epsilon` by the progress of the
    steps; :class:`GaussNewton`), ``adaptive=False`` and ``retry_damping=True`` (a
    step whose direction no grid point accepts is retried with
    :math:`\lambda = 10^{-12}\sigma_1^2, 10^{-10}\sigma_1^2, \dots`); every
    :class:`GaussNewton` option can be passed to change them. Unlike the papers'
    code, the step is solved from :math:`J` (SVD) rather than from :math:`G`, which
    keeps its accuracy below :math:`10^{-7}`.

    Measured (W7's problems, seed 0, float64, NumPy, one thread, 30 s budgets on a
    loaded 2-core machine, so times are upper bounds): Poisson 2-D (2-64-1) reaches
    relative L2 error :math:`10^{-12}` after 243 steps (14 s) and heat 1-D
    :math:`7 \cdot 10^{-8}` after 248 steps (16 s) with the adaptive cut, against
    :math:`1.6 \cdot 10^{-5}` and 0.31 after 30 s with the fixed
    :math:`\max(N,P)\epsilon` cut (whose first steps are short: :math:`J` has
    singular values down to :math:`10^{-21}\sigma_1`, which rounding fills with
    noise) and :math:`2 \cdot 10^{-6}` (heat) with a fixed :math:`10^{-7}` cut (the
    Gramian's floor). Poisson 5-D (5-64-1, 3000 + 500 points) stays near 1 after
    40 s either way, where Levenberg–Marquardt :class:`GaussNewton` reaches
    :math:`2 \cdot 10^{-5}`.

    Cost per step as :class:`GaussNewton` (``"dense"``) plus 31 loss evaluations.
    """

    def __init__(self, problem: Problem, **options: Any) -> None:
        options.setdefault("damping", 0.0)
        options.setdefault("adaptive", False)
        options.setdefault("line_search", "grid")
        options.setdefault("grid_full", True)
        options.setdefault("solver", "dense")
        options.setdefault("retry_damping", True)
        options.setdefault("rcond", "adaptive")
        super().__init__(problem, **options)

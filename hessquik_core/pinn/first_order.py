r"""First-order baselines on a :class:`~hessquik_core.pinn.Problem`: Adam and L-BFGS.

Both use the exact gradient :math:`\nabla L = J^\top\rho`, matrix-free (one
backward sweep per quantity and term, no :math:`J`), in the points' library;
no torch needed.
"""

from __future__ import annotations

import math
from typing import Any

from ._base import Optimizer, StepRecord, armijo
from .problem import Problem

__all__ = ["LBFGS", "Adam"]


def _positive(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value > 0 and math.isfinite(value))
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015) on the flat parameter vector.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1)g,\quad v \leftarrow \beta_2 v + (1-\beta_2)g^2,\quad
        \theta \leftarrow \theta - \eta\,\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)} + \epsilon}.

    Cost per step: the residuals, one gradient :math:`J^\top\rho` and one
    loss evaluation for the record; memory :math:`O(P)`.

    Parameters
    ----------
    problem : Problem
    lr : float
        :math:`\eta` (default 1e-3).
    betas : (float, float)
    eps : float
    """

    def __init__(
        self,
        problem: Problem,
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(problem)
        self.lr, self.eps = _positive("lr", lr), _positive("eps", eps)
        if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self._m: Any = None
        self._v: Any = None
        self._t = 0

    def _step(self) -> StepRecord:
        p, xp = self.problem, self.problem.xp
        theta = p.parameters()
        loss0 = p.loss()
        g = p.gradient()
        if self._m is None:
            self._m, self._v = xp.zeros_like(g), xp.zeros_like(g)
        b1, b2 = self.betas
        self._t += 1
        self._m = b1 * self._m + (1 - b1) * g
        self._v = b2 * self._v + (1 - b2) * g * g
        mhat = self._m / (1 - b1**self._t)
        vhat = self._v / (1 - b2**self._t)
        p.set_parameters(theta - self.lr * mhat / (xp.sqrt(vhat) + self.eps))
        return StepRecord(step=0, loss=p.loss(), loss_before=loss0, step_size=self.lr)


class LBFGS(Optimizer):
    r"""Limited-memory BFGS with a backtracking Armijo line search and stopping tolerances.

    The direction :math:`d = H_k g` comes from the two-loop recursion over the
    last ``memory`` pairs :math:`s = \theta_{k+1} - \theta_k`,
    :math:`y = g_{k+1} - g_k` (pairs with :math:`s^\top y \le 10^{-12}\|s\|\|y\|` are
    skipped, keeping :math:`H_k` positive definite), scaled by
    :math:`\gamma = s^\top y / y^\top y` (first step: :math:`\gamma = 1/\|g\|`); the step
    :math:`\theta - \alpha d` takes the first :math:`\alpha = 2^{-k}` satisfying
    Armijo's condition. Stops (``converged``) when
    :math:`\|g\|_\infty \le` ``gtol`` or the loss changes by less than
    ``ftol``·max(1, L), or the line search fails.

    Cost per step: one gradient plus the line search's loss evaluations,
    :math:`O(\text{memory}\cdot P)` for the recursion.

    Parameters
    ----------
    problem : Problem
    memory : int
        Stored pairs (default 10).
    gtol, ftol : float
        Stopping tolerances (defaults 1e-12 and 1e-15·, i.e. machine precision in float64).
    """

    def __init__(
        self, problem: Problem, *, memory: int = 10, gtol: float = 1e-12, ftol: float = 1e-15
    ) -> None:
        super().__init__(problem)
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory must be a positive integer, got {memory!r}")
        self.memory, self.gtol, self.ftol = memory, _positive("gtol", gtol), _positive("ftol", ftol)
        self._pairs: list[tuple[Any, Any, float]] = []
        self._prev: tuple[Any, Any] | None = None

    def _two_loop(self, g: Any) -> Any:
        xp = self.problem.xp
        q, alphas = g, []
        for s, y, rho in reversed(self._pairs):
            a = rho * float(xp.sum(s * q))
            alphas.append(a)
            q = q - a * y
        if self._pairs:
            s, y, _ = self._pairs[-1]
            q = (float(xp.sum(s * y)) / float(xp.sum(y * y))) * q
        else:
            q = q / max(float(xp.linalg.vector_norm(g)), 1e-300)
        for (s, y, rho), a in zip(self._pairs, reversed(alphas)):
            b = rho * float(xp.sum(y * q))
            q = q + (a - b) * s
        return q

    def _step(self) -> StepRecord:
        p, xp = self.problem, self.problem.xp
        theta = p.parameters()
        loss0 = p.loss()
        g = p.gradient()
        gnorm = float(xp.max(xp.abs(g)))
        if self._prev is not None:
            s, y = theta - self._prev[0], g - self._prev[1]
            sy = float(xp.sum(s * y))
            if sy > 1e-12 * float(xp.linalg.vector_norm(s)) * float(xp.linalg.vector_norm(y)):
                self._pairs.append((s, y, 1.0 / sy))
                self._pairs = self._pairs[-self.memory :]
        if gnorm <= self.gtol:
            self.converged = f"gradient norm {gnorm:.2e} <= gtol"
            return StepRecord(0, loss0, loss0, 0.0, accepted=False, extra={"grad_norm": gnorm})
        d = self._two_loop(g)
        alpha, loss1 = armijo(p, theta, d, loss0, float(xp.sum(g * d)))
        if alpha == 0.0 and self._pairs:  # a stale memory: restart from the gradient
            self._pairs = []
            d = self._two_loop(g)
            alpha, loss1 = armijo(p, theta, d, loss0, float(xp.sum(g * d)))
        if alpha == 0.0:
            self.converged = "line search found no decrease"
            p.set_parameters(theta)
        else:
            p.set_parameters(theta - alpha * d)
            self._prev = (theta, g)
            if abs(loss0 - loss1) <= self.ftol * max(1.0, abs(loss0)):
                self.converged = f"loss change {abs(loss0 - loss1):.2e} below ftol"
        return StepRecord(
            0, loss1, loss0, alpha, accepted=alpha > 0, extra={"grad_norm": gnorm, "pairs": len(self._pairs)}
        )

"""What every PINN optimizer shares: the step record, the run loop, the line searches."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._progress import progress_bar
from .problem import Problem

__all__ = ["Optimizer", "StepRecord", "armijo", "grid_search"]


@dataclass
class StepRecord:
    """What one ``step()`` did.

    Attributes
    ----------
    step : int
        Its index (0-based) in the optimizer's history.
    loss : float
        :math:`L` after the step (equal to ``loss_before`` for a rejected step).
    loss_before : float
        :math:`L` before it.
    step_size : float
        The accepted :math:`\\alpha` (0.0 for a rejected step; the learning rate for Adam).
    damping : float or None
        The damping :math:`\\lambda` the step used (``None`` where there is none).
    cg_iterations : int or None
        CG iterations (``solver="cg"``), else ``None``.
    seconds : float
        Wall time of the step.
    accepted : bool
        Whether the parameters changed.
    extra : dict
        Optimizer-specific numbers (e.g. KFAC's momentum, L-BFGS's gradient norm).
    """

    step: int
    loss: float
    loss_before: float
    step_size: float
    damping: float | None = None
    cg_iterations: int | None = None
    seconds: float = 0.0
    accepted: bool = True
    extra: dict = field(default_factory=dict)


class Optimizer:
    """Base class: ``step()`` returns a :class:`StepRecord`, ``run()`` loops with a budget.

    The problem's network holds the parameters: every step reads
    :math:`\\theta` with ``problem.parameters()`` and writes the new one with
    ``problem.set_parameters``.

    Parameters
    ----------
    problem : Problem
    """

    def __init__(self, problem: Problem) -> None:
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be a hessquik_core.pinn.Problem, got {type(problem).__name__}")
        # a problem that serves only some optimizers (collocation points on a Dask cluster) refuses the others
        check = getattr(problem, "check_optimizer", None)
        if check is not None:
            check(self, None)
        self.problem = problem
        self.history: list[StepRecord] = []
        #: set when the optimizer cannot make progress any more (tolerance met or stalled), with the reason
        self.converged: str | None = None

    def _step(self) -> StepRecord:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> StepRecord:
        """One optimization step; returns its :class:`StepRecord` (also appended to ``history``)."""
        t0 = time.perf_counter()
        rec = self._step()
        rec.step = len(self.history)
        rec.seconds = time.perf_counter() - t0
        self.history.append(rec)
        return rec

    def run(
        self,
        steps: int | None = None,
        *,
        time_budget: float | None = None,
        callback: Callable[[StepRecord, Optimizer], Any] | None = None,
        progress: bool | None = None,
    ) -> list[StepRecord]:
        """Step until ``steps`` steps, ``time_budget`` seconds, convergence, or ``callback`` returns True.

        Parameters
        ----------
        steps : int, optional
            At most this many steps.
        time_budget : float, optional
            Stop once this many seconds of wall time have passed (checked after each step).
        callback : callable, optional
            ``callback(record, optimizer)`` after each step; a true return value stops.
        progress : bool, optional
            tqdm bar with the loss (``None``: only in an interactive terminal).

        Returns
        -------
        list of StepRecord
            The records of this run (``history`` holds all).
        """
        if steps is None and time_budget is None:
            raise ValueError("run needs steps= or time_budget= (or both)")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        if time_budget is not None and not (isinstance(time_budget, (int, float)) and time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
        out: list[StepRecord] = []
        t0 = time.perf_counter()
        with progress_bar(progress, total=steps, desc=type(self).__name__, unit="step") as bar:
            while (steps is None or len(out) < steps) and self.converged is None:
                rec = self.step()
                out.append(rec)
                bar.update()
                bar.set_postfix_str(f"loss={rec.loss:.3e}")
                if callback is not None and callback(rec, self):
                    break
                if time_budget is not None and time.perf_counter() - t0 >= time_budget:
                    break
        return out


def grid_search(
    problem: Problem, theta: Any, d: Any, loss0: float, k_max: int, full: bool = False
) -> tuple[float, float]:
    r"""The energy-natural-gradient papers' line search: the best of :math:`\alpha \in \{2^{-k}\}_{k=0}^{k_\max}`.

    Evaluates :math:`L(\theta - \alpha d)` from :math:`\alpha = 1` down (value-only
    network passes; the network is left at the last trial, the caller sets the
    parameters it chooses) and returns ``(alpha, loss)`` of the smallest loss, or
    ``(0.0, loss0)`` if none is below ``loss0``. ``full=True`` evaluates the whole
    grid (:math:`k_\max + 1` losses, as the papers do); the default stops at the
    first local minimum below ``loss0`` (the first :math:`k` whose successor is
    not lower), which is the papers' choice whenever the loss along the ray is
    unimodal and costs two or three evaluations once full steps succeed.
    """
    best_a, best = 0.0, loss0
    for k in range(k_max + 1):
        a = 2.0**-k
        trial = problem.loss_at(theta - a * d, restore=False)
        if trial < best:
            best_a, best = a, trial
        elif best_a > 0 and not full:
            break
    return best_a, best


def armijo(
    problem: Problem, theta: Any, d: Any, loss0: float, slope: float, c: float = 1e-4, k_max: int = 30
) -> tuple[float, float]:
    r"""Backtracking Armijo search along :math:`-d`: the first :math:`\alpha = 2^{-k}` with
    :math:`L(\theta - \alpha d) \le L(\theta) - c\,\alpha\,g^\top d` (``slope`` :math:`= g^\top d > 0`).

    Returns ``(alpha, loss)``, or ``(0.0, loss0)`` after ``k_max`` halvings or for
    a direction that is not a descent direction. The network is left at the last
    trial; the caller sets the parameters it chooses.
    """
    if not (slope > 0 and math.isfinite(slope)):
        return 0.0, loss0
    for k in range(k_max + 1):
        a = 2.0**-k
        trial = problem.loss_at(theta - a * d, restore=False)
        if trial <= loss0 - c * a * slope:
            return a, trial
    return 0.0, loss0

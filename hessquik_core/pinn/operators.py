r"""Curvature of a PINN loss as :class:`~hessquik_core.curvature.LinearOperatorBase` operators.

For :math:`L(\theta) = \frac12\|\rho(\theta)\|^2` (:class:`~hessquik_core.pinn.Problem`)

.. math::
    \nabla^2 L = \underbrace{J^\top J}_{G\ \text{(Gauss–Newton)}}
    + \sum_{i=1}^N \rho_i\,\nabla^2_\theta \rho_i .

:class:`GaussNewtonOperator` applies :math:`G` exactly, matrix-free
(:math:`Gv = J^\top(Jv)` through the problem's ``jvp`` / ``vjp``, never an
:math:`N\times P` or :math:`P\times P` array) or from the cached dense
:math:`J`. :class:`LossHessianOperator` applies the full Hessian by central
differences of the exact gradient :math:`J^\top\rho` (the second term needs
second parameter derivatives of the input derivatives, which the library does
not compute): :math:`\nabla^2L\,v \approx (\nabla L(\theta + hv) - \nabla L(\theta - hv))/(2h)`,
error :math:`O(h^2)`, with :math:`h = \varepsilon^{1/3}\max(1,\|\theta\|)/\|v\|`
by default (:math:`\approx 10^{-9}` relative in float64; use float64).

Both are operators at the parameters they were built at (the problem's
network is moved there for each product and restored after), so
:func:`~hessquik_core.curvature.top_eigenpairs`,
:func:`~hessquik_core.curvature.hutchinson_trace`,
:func:`~hessquik_core.curvature.spectral_density` and SciPy's ``eigsh`` take them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..curvature.operators import LinearOperatorBase

__all__ = ["GaussNewtonOperator", "LossHessianOperator"]


@contextmanager
def _at(problem: Any, theta: Any) -> Iterator[None]:
    """The problem's network at ``theta`` for the block, then back to where it was."""
    old = problem.parameters()
    if bool(problem.xp.all(old == theta)):
        yield
        return
    problem.set_parameters(theta)
    try:
        yield
    finally:
        problem.set_parameters(old)


class GaussNewtonOperator(LinearOperatorBase):
    r"""The Gauss–Newton matrix :math:`G = J^\top J` (``(P, P)``) of a :class:`~hessquik_core.pinn.Problem`.

    Parameters
    ----------
    problem : Problem
    matrix_free : bool
        ``True`` (default): :math:`Gv = J^\top(Jv)` per column through the
        problem's Jacobian-vector products (memory :math:`O(N + P)` per column,
        a forward and a backward sweep per quantity and term). ``False``:
        :math:`G V = J^\top(JV)` from the dense :math:`J` (built once, ``(N, P)``).
    """

    def __init__(self, problem: Any, *, matrix_free: bool = True) -> None:
        super().__init__(problem.P, problem.xp, problem.dtype, problem.device)
        self.problem, self.matrix_free = problem, bool(matrix_free)
        self.theta = problem.parameters()
        self._J = None if self.matrix_free else problem.jacobian()

    def _matmat(self, V: Any) -> Any:
        if self._J is not None:
            return self._J.T @ (self._J @ V)
        p, xp = self.problem, self.xp
        with _at(p, self.theta):
            cols = [p.vjp(p.jvp(V[:, j])) for j in range(V.shape[1])]
        return xp.stack(cols, axis=1)


class LossHessianOperator(LinearOperatorBase):
    r"""The loss Hessian :math:`\nabla^2 L` by central differences of the exact gradient.

    .. math::
        \nabla^2 L\,v \approx \frac{\nabla L(\theta + hv) - \nabla L(\theta - hv)}{2h},
        \qquad h = \frac{\varepsilon_\text{fd}\max(1, \|\theta\|)}{\|v\|},

    :math:`\nabla L = J^\top\rho` matrix-free. Error :math:`O(h^2\|v\|^3)` from
    the third derivative plus :math:`O(\epsilon_\text{mach}/h)` rounding: about
    :math:`10^{-9}` relative in float64 with the default
    :math:`\varepsilon_\text{fd} = \epsilon_\text{mach}^{1/3}`; float32 gives
    only about :math:`10^{-4}`. The Gauss–Newton part alone is exact
    (:class:`GaussNewtonOperator`).

    Parameters
    ----------
    problem : Problem
    eps : float, optional
        :math:`\varepsilon_\text{fd}` (default :math:`\epsilon_\text{mach}^{1/3}` of the dtype).
    """

    def __init__(self, problem: Any, *, eps: float | None = None) -> None:
        super().__init__(problem.P, problem.xp, problem.dtype, problem.device)
        self.problem = problem
        self.theta = problem.parameters()
        xp = problem.xp
        self.eps = float(xp.finfo(problem.dtype).eps) ** (1 / 3) if eps is None else float(eps)
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self._scale = max(1.0, float(xp.linalg.vector_norm(self.theta)))

    def _grad(self, theta: Any) -> Any:
        with _at(self.problem, theta):
            return self.problem.gradient()

    def _matmat(self, V: Any) -> Any:
        xp, cols = self.xp, []
        for j in range(V.shape[1]):
            v = V[:, j]
            nv = float(xp.linalg.vector_norm(v))
            if nv == 0.0:
                cols.append(xp.zeros_like(v))
                continue
            h = self.eps * self._scale / nv
            cols.append((self._grad(self.theta + h * v) - self._grad(self.theta - h * v)) / (2 * h))
        return xp.stack(cols, axis=1)

r"""Curvature of a PINN loss as :class:`~hessquik_core.curvature.LinearOperatorBase` operators.

For :math:`L(\theta) = \frac12\|\rho(\theta)\|^2` (:class:`~hessquik_core.pinn.Problem`)

.. math::
    \nabla^2 L = \underbrace{J^\top J}_{G\ \text{(Gauss–Newton)}}
    + \sum_{i=1}^N \rho_i\,\nabla^2_\theta \rho_i .

:class:`GaussNewtonOperator` applies :math:`G` exactly, matrix-free
(:math:`Gv = J^\top(Jv)` through the problem's ``jvp`` / ``vjp``, never an
:math:`N\times P` or :math:`P\times P` array) or from the cached dense
:math:`J`. :class:`LossHessianOperator` applies the full Hessian exactly and
without automatic differentiation on the network: the second term is the
derivative of the vector–Jacobian product :math:`J^\top w` along :math:`v`
(Pearlmutter's R-operator of the stream sweep,
:mod:`~hessquik_core.pinn._second_order`) plus the residual's own curvature in
the quantities (:mod:`~hessquik_core.pinn._second_order_fn`), for dense and
residual layers. Elsewhere it refuses unless asked for central differences of
the exact gradient (``exact=False``,
:math:`\nabla^2L\,v \approx (\nabla L(\theta + hv) - \nabla L(\theta - hv))/(2h)`,
about :math:`10^{-9}` relative in float64); its ``method`` says which.

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
from ._second_order import TermSweep, unsupported
from ._second_order_fn import apply as fn_apply
from ._second_order_fn import fn_hessian

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


def exact_unavailable(problem: Any) -> str | None:
    """Why :class:`LossHessianOperator` cannot be exact for ``problem``, or ``None``."""
    for t in problem.terms:
        why = unsupported(problem.net, t.needs, t.weights)
        if why is not None:
            return why
    return None


class LossHessianOperator(LinearOperatorBase):
    r"""The loss Hessian :math:`\nabla^2 L` (``(P, P)``) of a :class:`~hessquik_core.pinn.Problem`.

    .. math::
        \nabla^2 L\,v = \sum_t \frac{w_t}{N_t}\Big[J_t^\top\big(c\,(c^\top\delta)
        + r\,H_f\,\delta\big) + R_v\{J_t^\top\}\,(r\,c)\Big],\qquad \delta = J_t v,

    per point :math:`i` of term :math:`t`: :math:`c_i = \partial f_t/\partial q_i`,
    :math:`H_{f,i} = \partial^2 f_t/\partial q_i^2` (the residual's curvature in the
    quantities, :mod:`~hessquik_core.pinn._second_order_fn`) and :math:`R_v\{J^\top\}`
    the derivative of the vector–Jacobian product along :math:`v` with its seed held
    fixed — :math:`\sum_i (rc)_i^\top \nabla^2_\theta q_i\, v`, the network's own
    curvature, from the forward-over-adjoint of the stream sweep
    (:mod:`~hessquik_core.pinn._second_order`, recurrences there and in ``docs/pinn.md``).
    The first part is the Gauss–Newton product :math:`J^\top J v`.

    Parameters
    ----------
    problem : Problem
    exact : bool or None
        ``None`` (default): the exact product when every layer and quantity has its
        second-order rule (dense and residual layers; value, gradient, Laplacian,
        Hessian diagonal, weighted Laplacian), else :class:`ValueError` saying why
        and naming ``exact=False``. ``True``: the same, explicitly. ``False``:
        central differences of the exact gradient,
        :math:`\nabla^2 L\,v \approx (\nabla L(\theta + hv) - \nabla L(\theta - hv))/(2h)`,
        :math:`h = \varepsilon_\text{fd}\max(1, \|\theta\|)/\|v\|`, error
        :math:`O(h^2) + O(\epsilon_\text{mach}/h)` (about :math:`10^{-9}` relative in float64,
        :math:`10^{-4}` in float32), for any layer with stream passes.
    eps : float, optional
        :math:`\varepsilon_\text{fd}` of ``exact=False`` (default :math:`\epsilon_\text{mach}^{1/3}`);
        refused with the exact product.
    part : {"full", "residual"}
        ``"residual"``: only :math:`\nabla^2 L - J^\top J = \sum_i \rho_i \nabla^2_\theta\rho_i`
        (the curvature the Gauss–Newton matrix drops; exact products only).

    Attributes
    ----------
    method : str
        ``"exact"`` or ``"central_differences"``: what the products use.

    Notes
    -----
    Built at the first product and kept: per term the forward streams (memory as
    for :func:`~hessquik_core.pinn.vjp`) and the per-point Hessians of ``fn``,
    ``(N_t, K, K)`` with :math:`K` the scalar quantities it reads (torch: :math:`K`
    reverse-over-reverse passes through ``fn``; NumPy: :math:`K^2 M` complex
    evaluations of ``fn``, :math:`M = 32`). Each product then costs per term the
    tangent pass, the backward pass and its R-image (about one
    :meth:`~hessquik_core.pinn.Problem.jvp` plus two :meth:`~hessquik_core.pinn.Problem.vjp`).
    """

    def __init__(
        self, problem: Any, *, exact: bool | None = None, eps: float | None = None, part: str = "full"
    ) -> None:
        super().__init__(problem.P, problem.xp, problem.dtype, problem.device)
        if exact not in (None, True, False):
            raise TypeError(f"exact must be None, True or False, got {exact!r}")
        if part not in ("full", "residual"):
            raise ValueError(f"part must be 'full' or 'residual', got {part!r}")
        self.problem, self.part = problem, part
        self._cache: list | None = None  # exact: per term its sweep and fn's Hessians (at the first product)
        self.theta = problem.parameters()
        xp = problem.xp
        if exact is False:
            if part != "full":
                raise ValueError("part='residual' needs the exact product (exact=None or True)")
            self.method = "central_differences"
            self.eps = float(xp.finfo(problem.dtype).eps) ** (1 / 3) if eps is None else float(eps)
            if not self.eps > 0:
                raise ValueError(f"eps must be positive, got {eps}")
            self._scale = max(1.0, float(xp.linalg.vector_norm(self.theta)))
            return
        if eps is not None:
            raise ValueError(
                f"eps is the step of exact=False (central differences); got eps={eps} with exact={exact}"
            )
        why = exact_unavailable(problem)
        if why is not None:
            raise ValueError(
                f"no exact loss-Hessian product for this problem: {why}. Pass exact=False for central "
                "differences of the exact gradient (about 1e-9 relative in float64)"
            )
        self.method, self.eps = "exact", None

    def __repr__(self) -> str:
        return f"LossHessianOperator(P={self.problem.P}, method={self.method!r}, part={self.part!r})"

    # -- central differences ------------------------------------------------------
    def _grad(self, theta: Any) -> Any:
        with _at(self.problem, theta):
            return self.problem.gradient()

    def _fd(self, v: Any) -> Any:
        nv = float(self.xp.linalg.vector_norm(v))
        if nv == 0.0:
            return self.xp.zeros_like(v)
        h = self.eps * self._scale / nv
        return (self._grad(self.theta + h * v) - self._grad(self.theta - h * v)) / (2 * h)

    # -- exact --------------------------------------------------------------------
    def _terms(self) -> list:
        """Per term: its sweep (forward streams kept) and the per-point Hessians of ``fn``, built once."""
        if self._cache is None:
            p, cache = self.problem, []
            for t, li, name in zip(p.terms, p._linearization(), p.names):
                sweep = TermSweep(p.net, t.points, t.needs, weights=t.weights)
                Hf = fn_hessian(t.fn, li.data, t.points, p.xp, name, t.needs, li.coef)
                cache.append((t, li, sweep, Hf))
            self._cache = cache
        return self._cache

    def _exact(self, v: Any) -> Any:
        p, xp = self.problem, self.xp
        full = self.part == "full"
        out: Any = None
        for t, li, sweep, Hf in self._terms():
            s2 = li.scale * li.scale

            def seeds(jv: dict, t: Any = t, li: Any = li, Hf: Any = Hf, s2: float = s2) -> tuple:
                delta = {q: xp.reshape(jv[q], (t.n, li.coef[q].shape[1])) for q in t.needs}
                Hd = fn_apply(Hf, delta, tuple(li.data), xp)
                w = {q: xp.reshape(li.coef[q] * (s2 * li.r)[:, None], p._shape(t, q)) for q in t.needs}
                # the Gauss–Newton part c (cᵀδ) (full Hessian only) and the residual's curvature r H_f δ
                cd: Any = sum(xp.sum(li.coef[q] * delta[q], axis=1) for q in t.needs)
                Rw = {}
                for q in t.needs:
                    a = (s2 * li.r)[:, None] * Hd[q]
                    if full:
                        a = a + s2 * li.coef[q] * cd[:, None]
                    Rw[q] = xp.reshape(a, p._shape(t, q))
                return w, Rw

            _, Hv = sweep.product(v, seeds)
            out = Hv if out is None else out + Hv
        return out

    def _matmat(self, V: Any) -> Any:
        if self.method == "central_differences":
            return self.xp.stack([self._fd(V[:, j]) for j in range(V.shape[1])], axis=1)
        with _at(self.problem, self.theta):
            return self.xp.stack([self._exact(V[:, j]) for j in range(V.shape[1])], axis=1)

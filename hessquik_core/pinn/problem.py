r"""A physics-informed least-squares problem: residual terms, their loss, Jacobian and curvature.

A :class:`Problem` holds a network :math:`u_\theta` and residual terms
:math:`t = 1, \dots, T` (:class:`Residual`), each with collocation points
:math:`x^{(t)}_1, \dots, x^{(t)}_{N_t}`, a point-wise residual function
:math:`r^{(t)}_i = f_t(q(x^{(t)}_i;\theta), x^{(t)}_i)` of the network's
quantities :math:`q` (value, gradient, Laplacian, Hessian diagonal) and a
weight :math:`w_t`. The loss is

.. math::
    L(\theta) = \sum_t \frac{w_t}{2N_t}\,\|r^{(t)}(\theta)\|^2 = \tfrac12\|\rho(\theta)\|^2,
    \qquad \rho = \big(\sqrt{w_t/N_t}\; r^{(t)}\big)_{t},

so every term is a weighted *mean* of squared residuals (times ½) and
:math:`\rho \in \mathbb{R}^N`, :math:`N = \sum_t N_t`, is the scaled residual
vector. Its Jacobian :math:`J = \partial\rho/\partial\theta \in \mathbb{R}^{N\times P}`
is built row by row from the per-point parameter Jacobians of the quantities
(:func:`hessquik_core.pinn.quantities_and_jacobians`, AD-free) and the
derivatives of :math:`f_t` with respect to the quantities
(:mod:`~hessquik_core.pinn._linearize`):
:math:`J^{(t)}_{i} = \sqrt{w_t/N_t}\sum_{q,k} (\partial f_t/\partial q_k)_i\,\partial q_{i,k}/\partial\theta`.
The gradient is :math:`J^\top\rho`, the Gauss–Newton matrix :math:`G = J^\top J`
(:meth:`Problem.gramian`), the kernel :math:`JJ^\top` (:meth:`Problem.kernel`).
Curvature operators: :mod:`hessquik_core.pinn.operators`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

from .._array import as_plain_array, namespace_of
from .._dask_hook import chunked_plugin
from ..backends import owner_of
from ..curvature.layout import flatten_parameters, parameter_layout
from . import _problem_higher as hi
from ._linearize import QUANTITIES, evaluate_residual, residual_derivatives
from .jacobian import jvp, quantities_and_jacobians, vjp
from .residual import Residual

__all__ = ["Problem", "Residual"]


@dataclass
class _Linearization:
    """One term at the current parameters: quantities, residual, its coefficients."""

    data: dict[str, Any]  # q -> (n, *s_q), m == 1 squeezed
    r: Any  # (n,)
    coef: dict[str, Any]  # q -> (n, K_q)
    scale: float  # sqrt(w / n)


def _squeeze(a: Any, m: int, xp: Any) -> Any:
    return a[..., 0] if m == 1 else a


class Problem:
    r"""A network and its residual terms: loss, residuals, Jacobian, Gramian, kernel.

    Parameters
    ----------
    net : NN or Layer
        A hessquik-core network with parameters (:func:`~hessquik_core.curvature.parameter_layout`).
    residuals : sequence of Residual
        At least one; all points of one array library, dtype and device, with
        ``d == net.in_features``. Names must be unique.

    Attributes
    ----------
    net, terms : the network and the residual terms
    layout : ParameterLayout
        The order of :math:`\theta \in \mathbb{R}^P` (``state_dict`` order, row-major).
    P, N : int
        Parameters and residuals (``N = Σ_t n_t``).
    xp, dtype, device
        The points' array namespace, dtype and device; every array of the
        problem (``θ``, ``ρ``, ``J``) lives there.

    Notes
    -----
    Results at the current parameters are cached until the parameters
    change (any new parameter array, e.g. :meth:`set_parameters`, invalidates them).
    """

    def __new__(cls, net: Any, residuals: Sequence[Residual], *args: Any, **kwargs: Any) -> Problem:
        # collocation points held in chunks (Dask): the plugin's subclass sums over them in trees
        terms = [residuals] if isinstance(residuals, Residual) else residuals
        seq = isinstance(terms, (list, tuple))
        plugin = chunked_plugin(*(getattr(t, "points", None) for t in terms)) if seq else None
        return super().__new__(cls if plugin is None or cls is not Problem else plugin.PinnProblem)

    def __init__(self, net: Any, residuals: Sequence[Residual]) -> None:
        if not (hasattr(net, "named_parameters") and hasattr(net, "in_features")):
            raise TypeError(f"net must be a hessquik_core network or layer, got {type(net).__name__}")
        if isinstance(residuals, Residual):
            residuals = [residuals]
        residuals = list(residuals)
        if not residuals or not all(isinstance(t, Residual) for t in residuals):
            raise TypeError("residuals must be a non-empty sequence of hessquik_core.pinn.Residual")
        first = residuals[0].points
        self.xp = namespace_of(first, "points")
        self.dtype, self.device = first.dtype, aac.device(first)
        d = int(net.in_features)
        names: list[str] = []
        for i, t in enumerate(residuals):
            p = t.points
            if namespace_of(p).__name__ != self.xp.__name__ or p.dtype != self.dtype:
                raise TypeError(
                    f"residual {i} has points of {type(p).__module__} dtype {p.dtype}; every term's points "
                    f"must share the first's library and dtype ({type(first).__module__}, {self.dtype})"
                )
            if str(aac.device(p)) != str(self.device):
                raise ValueError(f"residual {i} has points on {aac.device(p)}, the first on {self.device}")
            if p.shape[1] != d:
                raise ValueError(
                    f"residual {t.name or i!r} has points of shape {tuple(p.shape)}, expected (n, {d}) "
                    f"(the network's input dimension)"
                )
            names.append(t.name if t.name is not None else f"term{i}")
        if len(set(names)) != len(names):
            raise ValueError(f"residual names must be unique, got {names}")
        for t in residuals:  # a higher-order quantity's Jacobian rule, refused here by layer name
            hi.check_supported(net, t.needs, t.taylor)
        self.net, self.terms, self.names = net, residuals, tuple(names)
        self.layout = parameter_layout(net)
        self.P, self.N = self.layout.size, sum(t.n for t in residuals)
        self.m = int(net.out_features)
        self._theta: Any = None
        self._lin: list[_Linearization] | None = None
        self._jac: Any = None

    def __repr__(self) -> str:
        return f"Problem(P={self.P}, N={self.N}, terms={list(self.names)}, dtype={self.dtype})"

    # -- parameters ----------------------------------------------------------
    def parameters(self) -> Any:
        """:math:`\\theta`, a new ``(P,)`` array in the points' library, dtype and device."""
        return flatten_parameters(self.net, like=self.terms[0].points)

    def set_parameters(self, theta: Any) -> None:
        """Write :math:`\\theta` (``(P,)``, the points' library and dtype) into the network (copied)."""
        theta = as_plain_array(theta, "theta")
        xp = namespace_of(theta, "theta")
        if xp.__name__ != self.xp.__name__ or theta.dtype != self.dtype:
            raise TypeError(
                f"theta must be an array of the points' library and dtype ({self.xp.__name__}, "
                f"{self.dtype}), got {type(theta).__module__} {theta.dtype}"
            )
        if tuple(theta.shape) != (self.P,):
            raise ValueError(f"theta must have shape ({self.P},), got {tuple(theta.shape)}")
        theta = self.xp.asarray(theta, copy=True)
        self.net.load_state_dict(self.layout.unflatten(theta), strict=False)

    def _fresh(self) -> None:
        # the cache follows the parameter *values* (O(P) to compare): line searches write trial
        # parameters and restore the old ones, which leaves the cached results valid
        theta = self.parameters()
        same = self._theta is not None and bool(self.xp.all(theta == self._theta))
        if not same:
            self._theta, self._lin, self._jac = theta, None, None

    # -- evaluation ----------------------------------------------------------
    def _quantities(self, t: Residual) -> dict[str, Any]:
        res = self.net(
            t.points,
            gradient="gradient" in t.needs,
            laplacian="laplacian" in t.needs,
            hessian_diagonal="hessian_diagonal" in t.needs,
        )
        out = {q: _detach(_squeeze(getattr(res, q), self.m, self.xp)) for q in t.needs if q in QUANTITIES[:4]}
        higher = hi.quantities(self.net, t.points, t.needs, t.taylor)  # Δ²u, ∂ᵏu[v,…,v], ∂ᵏu/∂x_iᵏ
        out.update({q: _detach(_squeeze(a, self.m, self.xp)) for q, a in higher.items()})
        if t.weights is not None:  # tr(SSᵀ∇²u) = tr(Sᵀ∇²u S): the forward Laplacian along the columns of S
            lap = self.net(t.points, laplacian=True, directions=t.weights, mode="forward").laplacian
            out["weighted_laplacian"] = _detach(_squeeze(lap, self.m, self.xp))
        return out

    def _residual(self, i: int, data: dict[str, Any], check: bool) -> Any:
        t = self.terms[i]
        r = evaluate_residual(t.fn, data, t.points, self.xp, self.names[i], t.needs)
        if check:
            bad = int(self.xp.sum(self.xp.astype(~self.xp.isfinite(r), self.xp.int64)))
            if bad:
                raise ValueError(
                    f"residual {self.names[i]!r} has {bad} non-finite entries (NaN or inf) of {t.n} at "
                    f"the current parameters"
                )
        return r

    def _linearization(self) -> list[_Linearization]:
        self._fresh()
        if self._lin is None:
            lin = []
            for i, t in enumerate(self.terms):
                data = self._quantities(t)
                r = self._residual(i, data, check=True)
                coef = residual_derivatives(t.fn, data, t.points, self.xp, self.names[i], t.needs, r)
                lin.append(_Linearization(data, r, coef, math.sqrt(t.weight / t.n)))
            self._lin = lin
        return self._lin

    def loss_at(self, theta: Any, *, restore: bool = True) -> float:
        """:math:`L(\\theta)` at other parameters; ``inf`` if not finite. Value-only network passes, no Jacobian.

        ``restore=False`` leaves the network at ``theta`` (what line searches use: they
        set the parameters they choose afterwards).
        """
        old = self.parameters() if restore else None
        self.set_parameters(theta)
        try:
            total = 0.0
            for i, t in enumerate(self.terms):
                r = self._residual(i, self._quantities(t), check=False)
                total += 0.5 * t.weight / t.n * float(self.xp.sum(r * r))
        finally:
            if old is not None:
                self.set_parameters(old)
        return total if math.isfinite(total) else math.inf

    def residuals(self) -> dict[str, Any]:
        """The raw residuals :math:`r^{(t)}` ``(n_t,)`` by term name (unscaled)."""
        return {name: lin.r for name, lin in zip(self.names, self._linearization())}

    def residual_vector(self) -> Any:
        """:math:`\\rho = (\\sqrt{w_t/n_t}\\,r^{(t)})_t`, shape ``(N,)``: :math:`L = \\frac12\\|\\rho\\|^2`."""
        return self.xp.concat([lin.scale * lin.r for lin in self._linearization()])

    def loss(self) -> float:
        r""":math:`L = \sum_t \frac{w_t}{2n_t}\|r^{(t)}\|^2` (a Python float)."""
        rho = self.residual_vector()
        return 0.5 * float(self.xp.sum(rho * rho))

    def jacobian(self) -> Any:
        r""":math:`J = \partial\rho/\partial\theta`, shape ``(N, P)`` (rows in term order).

        Memory :math:`N P` plus the per-quantity Jacobians of one term
        (:math:`n_t K P`, :math:`K` the quantities' components).
        """
        lin = self._linearization()
        if self._jac is None:
            xp, rows = self.xp, []
            for t, li in zip(self.terms, lin):
                _, jacs = quantities_and_jacobians(self.net, t.points, t.needs, weights=t.weights, **t.taylor)
                Jt = 0.0
                for q in t.needs:
                    c = li.coef[q]  # (n, K)
                    Jq = xp.reshape(jacs[q], (t.n, c.shape[1], self.P))
                    Jt = Jt + xp.matmul(c[:, None, :], Jq)[:, 0, :]
                rows.append(li.scale * Jt)
            self._jac = xp.concat(rows, axis=0)
        return self._jac

    def _shape(self, t: Residual, q: str) -> tuple[int, ...]:
        """The unsqueezed shape of quantity ``q`` of term ``t`` (contract 2: ``(n, m)`` or ``(n, d, m)``)."""
        per_coordinate = q in ("gradient", "hessian_diagonal")
        if q in ("directional", "pure_partial"):  # (n, K, m), one row per direction
            return (t.n, hi.directions_count(t.taylor), self.m)
        return (t.n, *((int(self.net.in_features),) if per_coordinate else ()), self.m)

    def _coefficients(self, t: Residual, lin: _Linearization, w: Any) -> dict[str, Any]:
        """``{q: c_q ⊙ w}`` in the quantities' shapes: the seed of one combined sweep of term ``t``."""
        return {q: self.xp.reshape(lin.coef[q] * w[:, None], self._shape(t, q)) for q in t.needs}

    def jvp(self, v: Any) -> Any:
        """:math:`Jv`, ``(N,)``, matrix-free (``v : (P,)``; no ``N × P`` array).

        One forward and one forward R-sweep per term, all its quantities together.
        """
        v = self._vector(v, self.P, "v")
        xp, out = self.xp, []
        for t, li in zip(self.terms, self._linearization()):
            swept, taylor = hi.split(t.needs)  # a directional quantity takes a sweep of its own
            jq = jvp(self.net, t.points, swept, v, weights=t.weights) if swept else {}
            if taylor is not None:
                jq[taylor] = jvp(self.net, t.points, taylor, v, **t.taylor)
            acc = 0.0
            for q in t.needs:
                c = li.coef[q]
                acc = acc + xp.sum(c * xp.reshape(jq[q], (t.n, c.shape[1])), axis=1)
            out.append(li.scale * acc)
        return xp.concat(out)

    def vjp(self, w: Any) -> Any:
        """:math:`J^\\top w`, ``(P,)``, matrix-free (``w : (N,)``).

        One forward and one backward sweep per term, seeded with ``c_q ⊙ w`` for all its quantities.
        """
        w = self._vector(w, self.N, "w")
        out, start = None, 0
        for t, li in zip(self.terms, self._linearization()):
            wt = li.scale * w[start : start + t.n]
            start += t.n
            seeds = self._coefficients(t, li, wt)
            swept, taylor = hi.split(t.needs)  # a directional quantity takes a sweep of its own
            g = vjp(self.net, t.points, {q: seeds[q] for q in swept}, weights=t.weights) if swept else None
            if taylor is not None:
                gt = vjp(self.net, t.points, taylor, seeds[taylor], **t.taylor)
                g = gt if g is None else g + gt
            out = g if out is None else out + g
        return out

    def gradient(self) -> Any:
        """:math:`\\nabla L = J^\\top\\rho`, ``(P,)``, matrix-free."""
        return self.vjp(self.residual_vector())

    def gramian(self) -> Any:
        r""":math:`G = J^\top J = \sum_t \frac{w_t}{n_t} J_t^\top J_t` ``(P, P)``: the Gauss–Newton matrix of :math:`L`.

        For one term of unit weight this is :math:`J_t^\top J_t / n_t`.
        """
        J = self.jacobian()
        return J.T @ J

    def kernel(self) -> Any:
        """:math:`K = J J^\\top`, ``(N, N)`` (the neural tangent kernel of the scaled residuals)."""
        J = self.jacobian()
        return J @ J.T

    def _vector(self, v: Any, size: int, what: str) -> Any:
        v = as_plain_array(v, what)
        if namespace_of(v, what).__name__ != self.xp.__name__ or v.dtype != self.dtype:
            raise TypeError(f"{what} must be an array of the points' library and dtype {self.dtype}")
        if tuple(v.shape) != (size,):
            raise ValueError(f"{what} must have shape ({size},), got {tuple(v.shape)}")
        return v

    # -- curvature operators (hessquik_core.curvature tools accept them) ------------------
    def ggn_operator(self, *, matrix_free: bool = True) -> Any:
        """The Gauss–Newton matrix :math:`J^\\top J` as a :class:`~hessquik_core.curvature.LinearOperatorBase`.

        See :class:`~hessquik_core.pinn.operators.GaussNewtonOperator`.
        """
        from .operators import GaussNewtonOperator

        return GaussNewtonOperator(self, matrix_free=matrix_free)

    def hessian_operator(self, *, exact: bool | None = None, eps: float | None = None) -> Any:
        """The loss Hessian as an operator: exact (default, where every layer and quantity has its
        second-order rule, else refused) or, with ``exact=False``, central differences of the
        exact gradient; see :class:`~hessquik_core.pinn.operators.LossHessianOperator`."""
        from .operators import LossHessianOperator

        return LossHessianOperator(self, exact=exact, eps=eps)


def _detach(a: Any) -> Any:
    # quantities feed fn only: no autograd graph through the network (torch parameters with
    # requires_grad would otherwise record one)
    return owner_of(a).detached(a)

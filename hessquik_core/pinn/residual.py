r"""One residual term of a :class:`~hessquik_core.pinn.Problem`: its points, function and needs.

Split from :mod:`~hessquik_core.pinn.problem` (which re-exports it): the checks of
one term's arguments, independent of the network and of the other terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from .._array import as_plain_array, namespace_of
from .._dask_hook import chunked_plugin
from . import _problem_higher as hi
from ._linearize import QUANTITIES
from ._point_data import bind_data

__all__ = ["Residual"]


class Residual:
    r"""One residual term :math:`r_i = f(q(x_i), x_i)` of a :class:`Problem`.

    Parameters
    ----------
    points : array of shape (n, d)
        Collocation points (interior, boundary or initial), floating.
    fn : callable
        ``fn(q, x) -> r (n,)``: ``q`` is a :class:`~hessquik_core.pinn.PointQuantities`
        (``q.value (n,)``, ``q.gradient (n, d)``, ``q.laplacian (n,)``,
        ``q.hessian_diagonal (n, d)`` for one output; the output axis kept
        last for ``m > 1``), ``x`` the points. Linear (``-q.laplacian - f``) or
        nonlinear (``q.laplacian + q.value - q.value**3``) in the quantities, but
        **point-wise**: ``r_i`` depends on row ``i`` only. With NumPy (and
        other non-torch libraries) ``fn`` must be real-analytic code that
        accepts complex arrays (its derivative is a complex step; see
        :mod:`~hessquik_core.pinn._linearize`).
    needs : sequence of str
        The quantities ``fn`` reads, from ``"value"``, ``"gradient"``,
        ``"laplacian"``, ``"hessian_diagonal"``, ``"weighted_laplacian"``
        (the last combines with ``"value"`` only: it takes a sweep of its own), and of
        order 3–4 ``"biharmonic"`` (:math:`\Delta^2 u`), ``"directional"`` or
        ``"pure_partial"`` (one of the two; ``docs/higher_order.md``).
    weight : float
        :math:`w_t \ge 0`; the term adds :math:`\frac{w_t}{2n}\|r\|^2` to the loss.
    name : str, optional
        For messages and :meth:`Problem.residuals` (default ``"term<i>"``).
    weights : array of shape (d, r), optional
        :math:`S` of the weighted Laplacian :math:`\mathrm{tr}(SS^\top\nabla^2 u)`
        (e.g. :math:`\sigma` of a diffusion :math:`\frac12\mathrm{tr}(\sigma\sigma^\top\nabla^2u)`);
        required for, and only for, ``"weighted_laplacian"``; the points' library and dtype.
    data : array of shape (n, ...), optional
        Per-point data (e.g. :math:`f(x_i)`), row :math:`i` for point :math:`i`: ``fn`` is
        then called ``fn(q, x, data)`` with the rows of the points it is given.
        ``points`` and ``data`` may be Dask arrays chunked along the points: see
        :class:`hessquik_core.dask.DaskProblem`.
    directions, coords, order : optional
        ``V (d, K)`` of ``"directional"`` (:math:`\partial^k u[v_c, \dots, v_c]`, ``q.directional (n, K)``),
        coordinates of ``"pure_partial"`` (:math:`\partial^k u/\partial x_i^k`), ``k`` in 1–4.
    """

    def __init__(
        self,
        points: Any,
        fn: Callable[..., Any],
        needs: Sequence[str] = ("value",),
        *,
        weight: float = 1.0,
        name: str | None = None,
        weights: Any = None,
        data: Any = None,
        directions: Any = None,
        coords: Any = None,
        order: int | None = None,
    ) -> None:
        plugin = chunked_plugin(points, data)
        if plugin is not None:  # points held in chunks (Dask): the plugin checks them and their data
            points, data, xp = plugin.residual_points(points, data)
        else:
            points = as_plain_array(points, "points")
            xp = namespace_of(points, "points")
        if points.ndim != 2 or points.shape[0] < 1:
            raise ValueError(f"points must have shape (n, d) with n >= 1, got {tuple(points.shape)}")
        if not xp.isdtype(points.dtype, "real floating"):
            raise TypeError(f"points must be floating (float32 or float64), got dtype {points.dtype}")
        if not callable(fn):
            raise TypeError(f"fn must be callable fn(q, x) -> (n,), got {type(fn).__name__}")
        if isinstance(needs, str):
            needs = (needs,)
        needs = tuple(needs)
        bad = [q for q in needs if q not in QUANTITIES]
        if bad or not needs:
            raise ValueError(f"needs must be a non-empty subset of {QUANTITIES}, got {needs}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise TypeError(f"weight must be a finite number, got {weight!r}")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        if ("weighted_laplacian" in needs) != (weights is not None):
            raise ValueError(
                "weights (S, shape (d, r)) are required for, and only for, needs containing "
                f"'weighted_laplacian'; got needs={needs} and weights={'given' if weights is not None else None}"
            )
        if "weighted_laplacian" in needs and not set(needs) <= {"value", "weighted_laplacian"}:
            raise ValueError(
                f"'weighted_laplacian' combines with 'value' only (it takes a sweep of its own), got needs={needs}; "
                f"use two Residual terms"
            )
        if weights is not None:
            weights = as_plain_array(weights, "weights")
            if namespace_of(weights, "weights").__name__ != xp.__name__ or weights.dtype != points.dtype:
                raise TypeError(f"weights must be an array of the points' library and dtype {points.dtype}")
            if weights.ndim != 2 or weights.shape[0] != points.shape[1]:
                raise ValueError(
                    f"weights must have shape ({points.shape[1]}, r), got {tuple(weights.shape)}"
                )
        self.weights = weights
        # fn of (q, x) for the problem; point_fn and data for the chunks of distributed points
        self.point_fn, (fn, self.data) = fn, bind_data(fn, data, points, xp, plugin is not None)
        self.points, self.fn, self.weight, self.name = points, fn, float(weight), name
        # computed in QUANTITIES order
        self.needs = tuple(q for q in QUANTITIES if q in needs)
        # directions / coords / order of a third- or fourth-order directional quantity
        self.taylor = hi.taylor_options(self.needs, points, directions, coords, order)

    @property
    def n(self) -> int:
        """The number of points."""
        return int(self.points.shape[0])

    def __repr__(self) -> str:
        return f"Residual(name={self.name!r}, n={self.n}, needs={self.needs}, weight={self.weight})"

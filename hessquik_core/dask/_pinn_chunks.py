r"""The chunk side of :class:`~hessquik_core.dask.DaskProblem`: what one task computes, and the checks.

Each task runs the in-memory :class:`~hessquik_core.pinn.Problem` of one chunk
of one term (:func:`chunk_problem`; its weight :math:`w_t n_c/N_t` gives the
chunk's rows the term's scale :math:`\sqrt{w_t/N_t}`) and returns a row block or a
partial sum (:func:`chunk`); TSQR nodes combine R-factors (:func:`stack_r`),
and the client turns the root's R into the Gauss–Newton step (:func:`tsqr_step`).
"""

from __future__ import annotations

import copy
from typing import Any

import array_api_compat as aac
import numpy as np

from .._dask_hook import is_dask
from ..backends import owner_of
from ..pinn._linearize import residual_derivatives
from ..pinn._solvers import Direction, _filter
from ..pinn.problem import Problem, Residual
from ._graph import Shared, check_chunk, check_chunked, da

__all__ = [
    "Term",
    "chunk",
    "chunk_bytes",
    "chunk_problem",
    "probe",
    "residual_points",
    "stack_r",
    "tsqr_step",
]

_XP = aac.array_namespace(np.empty(0))


def residual_points(points: Any, data: Any) -> tuple[Any, Any, Any]:
    """Check Dask ``points`` ``(n, d)`` and their ``data``; return ``(points, data, xp)``.

    ``points`` must be chunked along axis 0 only, with NumPy chunks;
    ``data`` (optional) a Dask array chunked like them along axis 0, or an
    in-memory NumPy array (chunked like them here).
    """
    if not is_dask(points):
        raise TypeError(
            "data is a dask array but points are not: give the points as a dask array chunked "
            "like the data, dask.array.from_array(points, chunks=(data.chunks[0], -1))"
        )
    if points.ndim != 2 or points.shape[0] < 1:
        raise ValueError(f"points must have shape (n, d) with n >= 1, got {tuple(points.shape)}")
    lib = check_chunked(points, "points")
    if not owner_of(points._meta).interchange:  # host chunks: θ and the P-sized results are NumPy
        raise TypeError(f"points must have NumPy chunks for a pinn.Problem, got {lib} chunks")
    if not np.issubdtype(points.dtype, np.floating):
        raise TypeError(f"points must be floating (float32 or float64), got dtype {points.dtype}")
    if data is not None:
        if not is_dask(data):
            data = np.asarray(data)
            if data.ndim < 1 or data.shape[0] != points.shape[0]:
                raise ValueError(
                    f"data must have one row per point, shape ({points.shape[0]}, ...), got {tuple(data.shape)}"
                )
            data = da.from_array(data, chunks=(points.chunks[0], *data.shape[1:]))
        if data.ndim < 1 or data.shape[0] != points.shape[0]:
            raise ValueError(
                f"data must have one row per point, shape ({points.shape[0]}, ...), got {tuple(data.shape)}"
            )
        check_chunked(data, "data", batch_chunks=points.chunks[0])
    return points, data, _XP


class Term:
    """What a chunk task needs of a residual term (the dask arrays stay on the client)."""

    def __init__(self, t: Residual, name: str) -> None:
        self.fn, self.needs, self.weights = t.point_fn, t.needs, t.weights
        self.weight, self.name, self.n = t.weight, name, t.n
        self.has_data = t.data is not None
        # directions / coords / order of a third- or fourth-order quantity, passed on as given
        self.taylor = dict(t.taylor)


def chunk_problem(net: Any, spec: Term, xb: Any, db: Any) -> Problem:
    """The in-memory problem of one chunk: weight :math:`w_t n_c/N_t`, so its scale is the term's."""
    n = int(xb.shape[0])
    res = Residual(
        xb,
        spec.fn,
        spec.needs,
        weight=spec.weight * n / spec.n,
        name=spec.name,
        weights=spec.weights,
        data=db,
        **spec.taylor,
    )
    return Problem(net, [res])


def chunk(xb: Any, db: Any, shared: Shared, ti: int, c: int, method: str, *args: Any) -> Any:
    """One chunk's contribution: a row block or a partial sum (NumPy)."""
    check_chunk(xb, shared.lib, shared.dtype, "points", c)
    spec = shared.extra["terms"][ti]
    if db is not None and spec.has_data and db.shape[0] != xb.shape[0]:  # pragma: no cover - chunked alike
        raise ValueError(f"chunk {c} of data has {db.shape[0]} rows, the points {xb.shape[0]}")
    pb = chunk_problem(shared.net, spec, xb, db)
    if method == "rho":
        return pb.residual_vector()
    if method == "r":
        return pb.residuals()[spec.name]
    if method == "loss":
        return np.asarray(pb.loss(), dtype=shared.dtype)
    if method == "loss_unchecked":  # the line searches' trial losses: non-finite is inf, not an error
        t = pb.terms[0]
        r = pb._residual(0, pb._quantities(t), check=False)
        return np.asarray(0.5 * t.weight / t.n * np.sum(r * r), dtype=shared.dtype)
    if method == "gradient":
        return pb.gradient()
    if method == "jacobian":
        return pb.jacobian()
    if method == "jvp":
        return pb.jvp(args[0])
    if method == "vjp":
        return pb.vjp(args[0])
    if method == "gramian":
        return pb.gramian()
    if method == "tsqr":
        Jc, rho = pb.jacobian(), pb.residual_vector()
        return np.linalg.qr(np.concatenate([Jc, rho[:, None]], axis=1), mode="r")
    if method == "ggn":
        V, matrix_free = args
        if not matrix_free:
            J = pb.jacobian()
            return J.T @ (J @ V)
        return np.stack([pb.vjp(pb.jvp(V[:, j])) for j in range(V.shape[1])], axis=1)
    if method == "hessian":
        V, exact, eps = args
        if not exact:  # central differences move the weights: not those the scheduler's threads share
            pb = chunk_problem(copy.deepcopy(shared.net), spec, xb, db)
        return pb.hessian_operator(exact=exact, eps=eps) @ V
    raise ValueError(f"unknown chunk method {method!r}")  # pragma: no cover - internal


def stack_r(parts: list) -> Any:
    """The R-factor of the stacked R-factors (a TSQR tree node): the R of all their rows."""
    return np.linalg.qr(np.concatenate(parts, axis=0), mode="r")


def tsqr_step(Raug: Any, P: int, damping: float, rcond: float) -> Direction:
    r"""The step of ``solver="dense"`` from the R of :math:`[J\ \rho] = Q[R\ c]` ``(k, P + 1)``.

    With the SVD :math:`R = \tilde U\Sigma V^\top`, :math:`J = (Q\tilde U)\Sigma V^\top` is the
    thin SVD of :math:`J`, so the in-memory step is
    :math:`d = V\,\mathrm{diag}(f(\sigma))\,\tilde U^\top c` (:math:`f` of
    :mod:`~hessquik_core.pinn._solvers`), and :math:`\rho^\top Jd = c^\top Rd`,
    :math:`\|Jd\|^2 = \|Rd\|^2` (:math:`Q` has orthonormal columns).
    """
    R, c = Raug[:, :P], Raug[:, P]
    U, s, Vh = np.linalg.svd(R, full_matrices=False)
    d = Vh.T @ (_filter(_XP, s, damping, rcond) * (U.T @ c))
    Rd = R @ d
    return Direction(d, float(c @ Rd), float(Rd @ Rd))


def chunk_bytes(needs: tuple, n: int, d: int, m: int, P: int) -> int:
    """Numbers one TSQR chunk task holds: its quantities' Jacobians, :math:`[J_c\\ \rho_c]`, its R."""
    per = {"value": m, "laplacian": m, "weighted_laplacian": m, "gradient": d * m, "hessian_diagonal": d * m}
    return n * (sum(per[q] for q in needs) + 2) * (P + 1) + (P + 1) ** 2


def probe(net: Any, spec: Term, points: Any, data: Any) -> None:
    """Run the term's ``fn`` and its derivative on its first point, on the client.

    A residual function that fails (a quantity not declared, a non-analytic
    ``fn``) fails here, before the cluster works; non-finite values are the
    data's and are found when computed, as in memory.
    """
    x0 = np.asarray(points[:1].compute(scheduler="sync"))
    d0 = None if data is None else np.asarray(data[:1].compute(scheduler="sync"))
    pb = chunk_problem(net, spec, x0, d0)
    t = pb.terms[0]
    q = pb._quantities(t)
    r = pb._residual(0, q, check=False)
    residual_derivatives(t.fn, q, t.points, pb.xp, spec.name, t.needs, r)

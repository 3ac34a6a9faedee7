r"""Residual terms of order 3 and 4 for :class:`~hessquik_core.pinn.Problem`.

A :class:`~hessquik_core.pinn.Residual` may read, besides the second-order
quantities,

* ``q.biharmonic``: :math:`\Delta^2 u` ``(n,)`` (``(n, m)`` for ``m > 1``);
* ``q.directional``: :math:`\partial^k u[v_c, \dots, v_c]` for every column
  :math:`v_c` of ``directions = V : (d, K)``, ``(n, K)`` (``(n, K, m)``);
* ``q.pure_partial``: :math:`\partial^k u/\partial x_i^k` for ``i`` in ``coords``,
  ``(n, K)``, ``K = len(coords)`` (``(n, K, m)``),

with ``order = k`` in 1–4 given to the residual (one of ``"directional"`` and
``"pure_partial"`` per term: one set of directions). Their values come from
:func:`hessquik_core.biharmonic`, :func:`~hessquik_core.taylor_derivatives` and
:func:`~hessquik_core.pure_partials`; their per-point parameter Jacobians and the
matrix-free products from :mod:`hessquik_core.pinn.jacobian` (layers declaring
affine structure — dense, residual, SIREN, Fourier features — with
:math:`\sigma^{(k+1)}`, :math:`\sigma^{(5)}` for :math:`\Delta^2 u`), which
refuses any other layer or activation by name. The directional quantities take a
sweep of their own, so :math:`Jv` and :math:`J^\top w` of a term combining them with
other quantities are the sum of two sweeps' results (this module splits them).
"""

from __future__ import annotations

from typing import Any

from ..curvature.layout import _network
from . import _streams_bh as bh
from . import _streams_taylor as tay

__all__ = [
    "HIGHER",
    "TaylorOptions",
    "check_supported",
    "directions_count",
    "quantities",
    "split",
    "taylor_options",
]

#: the quantities of order > 2 a residual may declare
HIGHER = ("biharmonic", "directional", "pure_partial")


class TaylorOptions(dict):
    """``directions`` / ``coords`` / ``order`` of a residual's directional quantity (keyword
    arguments of :func:`hessquik_core.pinn.jacobian`); empty when it has none."""


def taylor_options(
    needs: tuple[str, ...], points: Any, directions: Any, coords: Any, order: Any
) -> TaylorOptions:
    """Check the keywords of :class:`~hessquik_core.pinn.Residual` that go with ``"directional"``
    or ``"pure_partial"`` and return them (``directions`` as an array of the points' library)."""
    from .._array import as_plain_array, namespace_of

    taylor = [q for q in needs if q in tay.TAYLOR]
    given = {
        k: v for k, v in (("directions", directions), ("coords", coords), ("order", order)) if v is not None
    }
    if not taylor:
        if given:
            raise ValueError(
                f"{', '.join(given)} go with needs 'directional' or 'pure_partial' only, got needs={needs}"
            )
        return TaylorOptions()
    if len(taylor) > 1:
        raise ValueError(
            f"needs may hold one of {tay.TAYLOR} per residual (one set of directions), got {needs}"
        )
    q = taylor[0]
    d = int(points.shape[1])
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"needs {q!r} requires order = 1, 2, 3 or 4, got order={order!r}")
    if q == "pure_partial":
        if directions is not None:
            raise ValueError("'pure_partial' takes coords=, not directions= (use needs 'directional')")
        cs = [coords] if isinstance(coords, int) and not isinstance(coords, bool) else coords
        if (
            cs is None
            or isinstance(cs, str)
            or not hasattr(cs, "__len__")
            or len(cs) == 0
            or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < d for c in cs)
        ):
            raise ValueError(
                f"needs 'pure_partial' requires coords, a non-empty sequence of integers in 0..{d - 1}, "
                f"got coords={coords!r}"
            )
        return TaylorOptions(coords=tuple(int(c) for c in cs), order=order)
    if coords is not None:
        raise ValueError("'directional' takes directions=, not coords= (use needs 'pure_partial')")
    if directions is None:
        raise ValueError(f"needs 'directional' requires directions = V of shape ({d}, K)")
    V = as_plain_array(directions, "directions")
    xp = namespace_of(points, "points")
    if namespace_of(V, "directions").__name__ != xp.__name__ or V.dtype != points.dtype:
        raise TypeError(
            f"directions must be an array of the points' library and dtype {points.dtype}, "
            f"got {type(V).__module__} {V.dtype}"
        )
    if V.ndim != 2 or V.shape[0] != d or V.shape[1] < 1:
        raise ValueError(f"directions must have shape ({d}, K) with K >= 1, got {tuple(V.shape)}")
    return TaylorOptions(directions=xp.asarray(V, copy=True), order=order)


def directions_count(opts: TaylorOptions) -> int:
    """``K``: the directions (or coordinates) of a residual's directional quantity."""
    return int(opts["directions"].shape[1]) if "directions" in opts else len(opts["coords"])


def check_supported(net: Any, needs: tuple[str, ...], opts: TaylorOptions) -> None:
    """Refuse, before any work, a layer or activation without the per-point Jacobian rule a
    higher-order quantity of ``needs`` takes (the message names the layer)."""
    leaves = list(_network(net)._leaves())
    if "biharmonic" in needs:
        bh.check_supported(leaves)
    for q in needs:
        if q in tay.TAYLOR:
            tay.check_supported(leaves, opts["order"], q)


def quantities(net: Any, points: Any, needs: tuple[str, ...], opts: TaylorOptions) -> dict[str, Any]:
    """The higher-order quantities of ``needs`` at ``points``, unsqueezed: ``biharmonic (n, m)``,
    ``directional`` / ``pure_partial`` ``(n, K, m)``."""
    from ..higher import pure_partials, taylor_derivatives

    out: dict[str, Any] = {}
    if "biharmonic" in needs:
        out["biharmonic"] = net(points, biharmonic=True).biharmonic
    if "pure_partial" in needs:
        out["pure_partial"] = pure_partials(net, points, list(opts["coords"]), opts["order"])
    if "directional" in needs:
        out["directional"] = taylor_derivatives(net, points, opts["directions"], opts["order"])[-1]
    return out


def split(needs: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """``(the quantities swept together, the directional quantity or None)``."""
    taylor = next((q for q in needs if q in tay.TAYLOR), None)
    return tuple(q for q in needs if q != taylor), taylor

"""The classic routes: the forward sweep (tangents from the input) and the backward
sweep (adjoints from the output), each for any chain of layers."""

from __future__ import annotations

from collections.abc import Callable

from ...rules.contractions import diagonal
from ..result import Result


class ClassicRoute:
    """The sweep of one ``mode`` (``"forward"`` or ``"backward"``): applies to every
    request with derivatives when ``mode`` is asked or ``"auto"``; priced by the cost
    model's estimate of that mode. ``sweep(leaves, params, ctx, u, order)`` is the
    sweep function (:func:`~hessquik_core.engine.forward.run_forward`,
    :func:`~hessquik_core.engine.backward.run_backward`), handed in by the planner.
    In forward mode a recorded training step that the planner settled as
    ``"analytic"`` runs as :mod:`~hessquik_core.engine.routes.analytic_step`
    (inside the forward sweep: the same route, another kernel)."""

    sweep = ""
    preferred = False

    def __init__(self, mode: str, sweep: Callable) -> None:
        self.name = self._mode = mode
        self._sweep = sweep

    def applies(self, ctx, leaves) -> bool:
        # Δ²u and ∂³u, ∂⁴u along directions have routes of their own (routes/higher.py)
        return (
            ctx.derivatives and not (ctx.biharmonic or ctx.taylor_order) and ctx.mode in ("auto", self._mode)
        )

    def cost(self, ctx, leaves, n, report, training):
        return report.routes[self._mode]

    def mode(self, ctx) -> str:
        return self._mode

    def run(self, leaves, params, ctx) -> Result:
        order = 2 if ctx.second_order else 1
        res = self._sweep(leaves, params, ctx, ctx.x, order)
        if ctx.divergence:
            res.divergence = ctx.xp.sum(diagonal(res.gradient, ctx.xp), axis=-1)
        if not ctx.gradient:
            res.gradient = None
        return res


__all__ = ["ClassicRoute"]

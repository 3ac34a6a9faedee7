"""What a route is: the :class:`Route` protocol the planner asks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..cost import CostReport, RouteCost
    from ..result import Result


class Route(Protocol):
    """One way of computing a call. The planner (:mod:`hessquik_core.engine.plan`) asks
    every route whether it :meth:`applies`, prices those that do with :meth:`cost`,
    picks one (a :attr:`preferred` route that applies wins; otherwise the lowest
    score, the first listed on ties), and settles the call for it (:meth:`mode`,
    :attr:`sweep`); :meth:`run` then computes one chunk of the settled call."""

    #: how ``net.cost()`` names it (``"forward"``, ``"forward/gram-laplacian"``, ...)
    name: str
    #: the ``CallContext.route`` of a call settled for it (``""``: a classic sweep)
    sweep: str
    #: wins whenever it applies (it computes the request without the quantity the
    #: others need: the divergence without the Jacobian)
    preferred: bool

    def applies(self, ctx: Any, leaves: list) -> bool:
        """Can this route compute the request ``ctx`` (resolved, not yet settled)
        through ``leaves`` with the backend ``ctx.be``? From declared capabilities only."""
        ...

    def cost(
        self, ctx: Any, leaves: list, n: int, report: CostReport, training: str | None
    ) -> RouteCost | None:
        """Its estimate for ``n`` examples (``report``: the classic routes' estimate of
        the same request; ``training``: the training-step answer), ``None`` where it
        does not pay (the planner then does not consider it)."""
        ...

    def mode(self, ctx: Any) -> str:
        """The ``mode`` of a call settled for this route (what ``Result.mode`` says)."""
        ...

    def run(self, leaves: list, params: list, ctx: Any) -> Result:
        """Compute the settled call ``ctx`` (one chunk) with ``params`` converted."""
        ...


__all__ = ["Route"]

"""The value-only route: one plain forward pass, nothing carried."""

from __future__ import annotations

from ..result import Result


class ValueRoute:
    """``net(x)`` without derivatives: each layer's ``evaluate``; priced as the plain
    pass (the same in every mode), never cache-blocked."""

    name = "value"
    sweep = ""
    preferred = False

    def applies(self, ctx, leaves) -> bool:
        return not ctx.derivatives

    def cost(self, ctx, leaves, n, report, training):
        return report.routes[self.mode(ctx)]

    def mode(self, ctx) -> str:
        return "forward" if ctx.mode == "auto" else ctx.mode

    def run(self, leaves, params, ctx) -> Result:
        u = ctx.x
        for leaf, P in zip(leaves, params):
            u, _ = leaf.evaluate(u, P, 0, ctx.be)
        return Result(value=u)


#: the one instance
VALUE = ValueRoute()

__all__ = ["VALUE", "ValueRoute"]

"""The chain-rule engine: the forward and backward sweeps, the planner and the cost model.

It sees layers only through their contract (:class:`~hessquik_core.layers.base.Layer`)
and arrays only through one namespace and one bound backend.
"""

from .cost import CostReport, RouteCost, estimate
from .plan import MemoryBudgetError, call, empty_result, estimate_call, estimate_routes
from .result import FIELDS, MODES, Result

__all__ = [
    "FIELDS",
    "MODES",
    "CostReport",
    "MemoryBudgetError",
    "Result",
    "RouteCost",
    "call",
    "empty_result",
    "estimate",
    "estimate_call",
    "estimate_routes",
]

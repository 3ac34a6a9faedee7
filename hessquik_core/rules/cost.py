r"""The cost model of one layer: the work of a GEMM-shaped step :math:`p \to q`.

A layer is priced by :meth:`~hessquik_core.layers.Layer.cost` ``(n, k, request)``;
its default sums :func:`gemm_cost` over the layer's ``cost_shapes`` (the GEMMs
it runs). The engine's cost model (``hessquik_core.engine.cost``) sums the layers'
:class:`LayerCost` along the chain and adds what belongs to the chain (the gather
of a packed forward Hessian into the result, the evaluation kept for the backward
sweep). A layer whose work is not a GEMM (a normalisation, a spline) overrides
``cost`` and states its own counts. Per example, counting a multiply-add as two flops:

==========  ==========================================  =========================================
mode        flops                                       also
==========  ==========================================  =========================================
value       :math:`2npq`                                one activation pass
forward     :math:`2npq + 2(1|n)kpq + nkq` (+ Hessian,  the first layer's tangents are the seed,
            diagonal, Laplacian terms)                  shared by the batch: no ``n`` factor
backward    :math:`2npq + 2nkpq` (+ second order:       the first layer's trace/diagonal use
            :math:`2nk(q^2 + pq(p+q))`)                 the ``(q, q)`` sandwich
==========  ==========================================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CostRequest", "LayerCost", "gemm_cost"]


@dataclass(frozen=True)
class CostRequest:
    """What a layer is priced for."""

    #: ``"value"`` (the plain pass), ``"forward"`` or ``"backward"``
    mode: str
    #: the forward Hessian is carried (forward), or the full input Hessian requested (backward)
    hessian: bool = False
    #: the Hessian diagonal is carried
    diagonal: bool = False
    #: the Laplacian is carried (forward: without the Hessian, which holds it)
    laplacian: bool = False
    #: forward: the Hessian is carried as its packed upper triangle
    packed: bool = True
    #: the layer is the chain's first (forward: seed shared by the batch; backward: the
    #: input Hessian's trace or diagonal only)
    first: bool = False


@dataclass(frozen=True)
class LayerCost:
    """The work of one layer for ``n`` examples, in entries (the caller multiplies
    by the item size)."""

    #: GEMM and element-wise flops
    flops: float = 0.0
    #: array operations (each costs a fixed overhead)
    ops: int = 0
    #: entries passed through element-wise operations
    moved: float = 0.0
    #: entries live at once while the layer runs (its peak)
    live: float = 0.0
    #: entries kept from the evaluation for a backward sweep
    stored: float = 0.0

    def __add__(self, other: LayerCost) -> LayerCost:
        """Two steps one after the other: work adds up, the peak is the larger."""
        return LayerCost(
            self.flops + other.flops,
            self.ops + other.ops,
            self.moved + other.moved,
            max(self.live, other.live),
            self.stored + other.stored,
        )


def gemm_cost(p: int, q: int, n: int, k: int, request: CostRequest) -> LayerCost:
    r"""The cost of one affine step :math:`\sigma(uM + b)`, ``M : (p, q)``, for ``n``
    examples and ``k`` tangents (forward) or output directions (backward)."""
    if request.mode == "value":
        return LayerCost(2 * n * p * q, 2, 3 * n * q, n * (p + q))
    first = request.first
    if request.mode == "forward":
        T = k * (k + 1) // 2 if request.packed else k * k
        flops = 2 * n * p * q + 2 * (1 if first else n) * k * p * q + n * k * q
        ops = 6
        moved = 3 * n * k * q
        live = n * k * (p + 2 * q)
        if request.hessian:
            flops += 3 * n * T * q + (0 if first else 2 * n * T * p * q)
            ops += 5
            # two gathers (an indexed copy costs ~3 streaming passes) and the
            # outer product, the GEMM output H K and the fused sigma' (H K) sum
            moved += 12 * n * T * q
            live += n * T * (p + 3 * q)
        if request.diagonal:
            flops += 3 * n * k * q + (0 if first else 2 * n * k * p * q)
            ops += 4
            moved += 4 * n * k * q
            live += n * k * (p + 2 * q)
        if request.laplacian:
            flops += 3 * n * k * q + (0 if first else 2 * n * p * q)
            ops += 4
            moved += 3 * n * k * q
        return LayerCost(flops, ops, moved, live)
    # backward: the evaluation (kept for the sweep), then the adjoint step
    second = request.hessian or request.diagonal or request.laplacian
    flops = 2 * n * p * q + 2 * n * k * p * q
    ops = 4 + 3
    moved = 3 * n * q + 3 * n * k * q
    live = n * k * (p + q)
    if second:
        if first and not request.hessian:
            lap, diag = request.laplacian, request.diagonal
            flops += (2 * n * k * q * q if lap else 0) + (2 * n * k * q * q * p if diag else 0)
            moved += 4 * n * k * q * q + (2 * n * k * q * p if diag else 0)
            # K (q, q) per example and output, the (p,) diagonal; the blocked
            # diagonal GEMM's temporaries are a few MiB whatever n and p
            live += n * k * (q * q + (p if diag else 0))
        else:
            # W (q, q), two (p, q) intermediates, the (p, p) result; about six
            # element-wise passes over the (q, q) blocks (the sums are fused
            # into GEMM outputs or taken in place)
            flops += 2 * n * k * (q * q + p * q * (p + q))
            moved += n * k * (6 * q * q + 2 * p * q + p * p)
            live += n * k * (q * q + 2 * p * q + p * p)
        ops += 8
    return LayerCost(flops, ops, moved, live, 3 * n * q)

r"""Cost model: floating-point work and peak memory of each route.

For a chain of layers :math:`p_\ell \to q_\ell`, ``n`` examples, ``k``
forward tangents (``d`` or the columns of ``V``) or ``k`` backward
output directions (``m`` or the columns of ``V``), counting a
multiply-add as two flops:

=================  ====================================  ============================================
quantity           forward mode                          backward mode
=================  ====================================  ============================================
gradient           :math:`2 n k \sum p_\ell q_\ell`       :math:`2 n k \sum p_\ell q_\ell`
Hessian            :math:`+\,2 n T \sum p_\ell q_\ell`,   :math:`+\,2 n k \sum p_\ell q_\ell (p_\ell + q_\ell)`
                   :math:`T = k(k+1)/2` (symmetric)
Laplacian          :math:`+\,2 n \sum p_\ell q_\ell`      Hessian cost of layers :math:`\ell > 1`, and
                                                         :math:`2 n k q_1^2` at the first layer
Hessian diagonal   :math:`+\,2 n k \sum p_\ell q_\ell`    as Laplacian, :math:`2 n k q_1^2 p_1` first
=================  ====================================  ============================================

(the first forward layer costs no ``n`` factor for its input-derivative
product: the seed is shared by the whole batch). A fixed per-array-operation
overhead is added so that tiny problems are judged by call count, and the
bytes that element-wise passes move are charged at ``FLOPS_PER_BYTE``:
without kernel fusion the carried arrays' traffic, not the GEMMs, often
decides (the packed forward Hessian of ``n·k(k+1)/2·w`` entries per layer). The model
is validated against measured timings in ``benchmarks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from ..rules.cost import CostRequest, LayerCost, gemm_cost

#: flops charged per array operation, ~5 µs at ~4 GFLOP/s: the Python and
#: dispatch overhead that dominates tiny problems
OP_OVERHEAD_FLOPS = 2.0e4

#: flops charged per byte that an element-wise pass moves: without kernel
#: fusion every product, sum and gather reads and writes its operands, and
#: on CPUs the ratio of GEMM rate to copy bandwidth is ~10 flops/byte (80
#: GFLOP/s against ~12 GB/s on the benchmark machine)
FLOPS_PER_BYTE = 12.0

#: the same charge under a fusing compiler (JAX / XLA): chains of
#: element-wise operations become one kernel whose traffic hides behind the
#: GEMMs. Measured with the W2 ResNet under ``jax.jit`` (n = 1000, 10 points
#: d = 16..128, m = 4..64): flops + per-op overhead alone pick the faster
#: mode at all 10, a charge of 1 flop/byte at 6 (at d = m = 64 forward is
#: 1.7x faster traced, 1.6x slower in eager torch)
FUSED_FLOPS_PER_BYTE = 0.0


#: a training step (the call recorded by autograd, then its backward pass) per
#: flop-equivalent of the evaluation's score, by how the step runs.
#: ``"analytic"``: the forward sweep as one autograd Function whose backward is
#: the adjoint sweep (two more GEMMs per layer over the same carries, no tape);
#: ``"taped"``: autograd over the generic sweep's operations (each op's backward
#: reads its saved operands); ``"taped-second"``: the taped backward mode with a
#: second-order adjoint, whose ``(n, k, w, w)`` blocks are saved on the tape
#: layer by layer and read back. Calibrated on the W6 Laplacian step (tanh MLP,
#: width 64, depth 4, n = 1024, float64, one thread; CPU ms per unit of score):
#: analytic forward 6.3e-8 / 6.5e-8 / 5.8e-8 at d = 64 / 128 / 256, taped
#: backward 1.56e-7 / 1.42e-7 / 1.54e-7, taped forward from 6.7e-8 (d = 2) over
#: 7.7e-8 (d = 64) to 9e-8 (d = 256): the second-order tape costs ~2.4x the
#: analytic step per unit, the taped forward sweep ~1.1-1.6x.
#: ``"analytic-first"``: the analytic forward sweep of a first-order step (value
#: and gradient only), whose backward is dominated by per-layer work the score
#: does not count: on the W6 gradient loss (width 64, depth 4, float64) the taped
#: backward step beats it at d = 1 / 2 by 1.06x / 1.53x (n = 1024, quiet) and
#: 1.25x / 1.49x (n = 8), where the factor 3 priced forward at 0.42x / 0.75x of
#: backward; at 7.5 backward is chosen there and forward stays chosen for a
#: first-order step with more outputs than tangents beyond ~1.7x.
TRAINING_FACTOR = {"analytic": 3.0, "analytic-first": 7.5, "taped": 4.5, "taped-second": 7.0}


@dataclass
class RouteCost:
    """The estimate of one route for a whole batch: GEMM ``flops``, ``peak_bytes``
    of working memory (``per_example_bytes`` for one example), array ``ops``,
    ``bytes_moved`` by element-wise passes; ``score`` combines them."""

    mode: str
    flops: float
    peak_bytes: float
    per_example_bytes: float
    ops: int
    bytes_moved: float = 0.0
    flops_per_byte: float = FLOPS_PER_BYTE
    #: 1 for an evaluation; a training step's factor (:data:`TRAINING_FACTOR`)
    step_factor: float = 1.0

    @property
    def score(self) -> float:
        """Flop-equivalents: GEMM flops + memory traffic + per-operation overhead
        (times :attr:`step_factor` for a training step)."""
        base = self.flops + self.flops_per_byte * self.bytes_moved + OP_OVERHEAD_FLOPS * self.ops
        return self.step_factor * base


@dataclass
class CostReport:
    """Estimated cost of each mode for one request; ``chosen`` is the cheaper.

    From ``net.cost()`` it also states what the planner does with the request
    (:meth:`hessquik_core.NN.cost`): ``route``, the name of the
    route the call runs (``"forward"``, ``"backward"``, ``"value"``,
    ``"forward/gram-laplacian"``, ``"forward/divergence"``), its estimate
    ``planned``, the batch ``chunk`` and number of ``chunks`` under the memory
    budget or cache blocking, the result's size and whether the call ``fits``
    (else ``refusal``, the :class:`~hessquik_core.engine.plan.MemoryBudgetError`
    message the call raises). ``route`` is empty for a bare estimate."""

    n: int
    d: int
    m: int
    request: str
    routes: dict = field(default_factory=dict)
    #: the route the call runs, its estimate (whole batch), and its batch plan
    route: str = ""
    planned: RouteCost | None = None
    chunk: int = 0
    chunks: int = 1
    #: the chunk is a cache block (a few MiB working set), not the memory budget's
    blocked: bool = False
    result_bytes: float = 0.0
    result_fields: str = ""
    #: free memory and the working-memory budget, where the planner asks
    #: (calls over 64 MiB or with ``max_memory``); ``None`` otherwise
    available: float | None = None
    budget: float | None = None
    fits: bool = True
    refusal: str | None = None
    #: how a recorded training step's forward route runs (``None``: an evaluation)
    training: str | None = None
    notes: tuple = ()

    @property
    def chosen(self) -> str:
        # a plain loop, not ``min(..., key=...)``: torch.compile traces it
        # without a graph break (dynamo cannot call min with a key)
        routes = list(self.routes.values())
        best = routes[0]
        for r in routes[1:]:
            if r.score < best.score:
                best = r
        return best.mode

    def __str__(self) -> str:
        rows = [(r.mode, r) for r in self.routes.values()]
        if self.route == "value" and self.planned is not None:
            rows = [("value", self.planned)]  # the plain pass: the modes are the same
        elif self.route and self.planned is not None and self.route not in self.routes:
            rows.append((self.route, self.planned))
        width = max(9, *(len(name) for name, _ in rows))
        lines = [
            f"cost of {self.request} for n={self.n}, d={self.d}, m={self.m}:",
            f"  {'route':{width}s} {'GFLOP':>10s} {'GB moved':>10s} {'peak MiB':>10s} {'array ops':>10s}"
            f" {'score':>10s}",
        ]
        chosen = self.chosen
        for name, r in rows:
            marks = (["chosen"] if name == chosen and name in self.routes else []) + (
                ["runs"] if name == self.route else []
            )
            mark = f"  <- {', '.join(marks)}" if marks else ""
            lines.append(
                f"  {name:{width}s} {r.flops / 1e9:10.4f} {r.bytes_moved / 1e9:10.4f} "
                f"{r.peak_bytes / 2**20:10.2f} {r.ops:10d} {r.score / 1e9:10.4f}{mark}"
            )
        if not self.route:
            return "\n".join(lines)
        if self.refusal is not None:
            lines.append(f"  runs: {self.route}: refused before any work (MemoryBudgetError): {self.refusal}")
        else:
            if self.chunks <= 1:
                batch = "one batch"
            else:
                why = "cache blocks" if self.blocked else "chunks (memory budget)"
                batch = f"{self.chunks} {why} of {self.chunk} examples"
            budget = "" if self.budget is None else f", budget {_fmt(self.budget)}"
            lines.append(f"  runs: {self.route}, {batch}{budget}")
            free = "" if self.available is None else f" of {_fmt(self.available)} free"
            lines.append(f"  result: {_fmt(self.result_bytes)}{free} ({self.result_fields}): fits")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _fmt(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024:
            return f"{b:.1f} {unit}" if unit != "B" else f"{b:.0f} B"
        b /= 1024
    return f"{b:.1f} TiB"


def _gemms(dims, n, k, request: CostRequest) -> list[LayerCost]:
    """The default layer cost (:func:`~hessquik_core.rules.cost.gemm_cost`) of every GEMM
    of a chain with shapes ``dims``; the chain's first is ``first``."""
    return [gemm_cost(p, q, n, k, replace(request, first=i == 0)) for i, (p, q) in enumerate(dims)]


def _total(costs: list[LayerCost]) -> LayerCost:
    out = LayerCost()
    for c in costs:
        out = out + c
    return out


def _value_chain(costs, itemsize):
    """The plain forward pass: one GEMM and one activation per layer; live
    are a layer's input and output, ``n·(p + q)`` entries."""
    t = _total(costs)
    return t.flops, t.live * itemsize, t.ops, t.moved * itemsize


def _fwd_chain(costs, n, k, m, hess, itemsize, packed):
    t = _total(costs)
    peak, moved = t.live * itemsize, t.moved
    if hess:
        T = k * (k + 1) // 2 if packed else k * k
        # the packed triangle is gathered into the (n, k, k, m) result; a
        # gather costs about twice a streaming pass
        peak = max(peak, n * (k * k + T) * m * itemsize)
        moved += 6 * n * k * k * m
    return t.flops, peak, t.ops, moved * itemsize


def _bwd_chain(costs, itemsize):
    t = _total(costs)
    return t.flops, (t.live + t.stored) * itemsize, t.ops, t.moved * itemsize


def _value_cost(dims, n, itemsize):
    """:func:`_value_chain` of GEMM-shaped layers ``dims``."""
    return _value_chain(_gemms(dims, n, 0, CostRequest("value")), itemsize)


def _fwd_cost(dims, n, k, hess, diag, lap, itemsize, packed):
    """The forward sweep of GEMM-shaped layers ``dims``."""
    req = CostRequest("forward", hessian=hess, diagonal=diag, laplacian=lap, packed=packed)
    return _fwd_chain(_gemms(dims, n, k, req), n, k, dims[-1][1], hess, itemsize, packed)


def _bwd_cost(dims, n, k, hess, diag, lap, itemsize):
    """The backward sweep of GEMM-shaped layers ``dims``."""
    req = CostRequest("backward", hessian=hess, diagonal=diag, laplacian=lap)
    return _bwd_chain(_gemms(dims, n, k, req), itemsize)


def estimate(leaves, n, **request) -> CostReport:
    """Cost of each route for ``n`` examples (see :func:`_estimate`).

    Memoised on the layer shapes: the model is pure arithmetic on them, and
    it runs on every call.
    """
    if all(not _own_cost(leaf) for leaf in leaves):
        dims = tuple(shape for leaf in leaves for shape in leaf.cost_shapes)
        return _estimate(dims, n, **request)
    # a layer states its own cost (Layer.cost overridden): asked per call, not memoised
    return _estimate.__wrapped__(_Layers(tuple(leaves)), n, **request)


def _own_cost(leaf) -> bool:
    """Does ``leaf`` (or a layer inside it) override :meth:`~hessquik_core.layers.Layer.cost`?"""
    from ..layers.base import Layer

    return any(type(mod).cost is not Layer.cost for mod in leaf.modules() if isinstance(mod, Layer))


class _Layers(tuple):
    """The leaves of a chain, priced by their own :meth:`~hessquik_core.layers.Layer.cost`."""

    def costs(self, n, k, request: CostRequest) -> list[LayerCost]:
        return [leaf.cost(n, k, replace(request, first=i == 0)) for i, leaf in enumerate(self)]

    @property
    def last_width(self) -> int:
        return self[-1].out_features


def _last_width(dims) -> int:
    return dims.last_width if isinstance(dims, _Layers) else dims[-1][1]


def _chain_costs(dims, n, k, request: CostRequest) -> list[LayerCost]:
    if isinstance(dims, _Layers):
        return dims.costs(n, k, request)
    return _gemms(dims, n, k, request)


@lru_cache(maxsize=1024)
def _estimate(
    dims,
    n,
    *,
    d,
    m,
    hessian,
    laplacian,
    hessian_diagonal,
    k_fwd=None,
    k_bwd=None,
    itemsize=8,
    modes=("forward", "backward"),
    packed=True,
    fused=False,
    derivatives=True,
    gradient=None,
    training=None,
) -> CostReport:
    """Cost of each route in ``modes`` for ``n`` examples of a chain with
    layer shapes ``dims = ((p1, q1), (p2, q2), ...)``; ``fused``: score
    memory traffic at :data:`FUSED_FLOPS_PER_BYTE` (a fusing compiler);
    ``derivatives=False``: a value-only call, the plain forward pass in
    every mode (nothing is carried, so the mode changes nothing); ``gradient``:
    whether the title names the gradient (default: whenever derivatives are
    carried, as the sweeps always carry it); ``training``: the call is a training
    step that autograd records, ``None`` for an evaluation, else how the forward
    route runs (``"analytic"`` or ``"taped"``; the backward route is always taped):
    each route's score is scaled by its :data:`TRAINING_FACTOR`, because the
    backward pass of a step costs the routes differently."""
    k_fwd = d if k_fwd is None else k_fwd
    k_bwd = m if k_bwd is None else k_bwd
    parts = (
        ["value"]
        + (["gradient"] if (derivatives if gradient is None else gradient) else [])
        + [
            name
            for name, on in (
                ("Hessian", hessian),
                ("Laplacian", laplacian),
                ("Hessian diagonal", hessian_diagonal),
            )
            if on
        ]
    )
    report = CostReport(n=n, d=d, m=m, request=" + ".join(parts))
    lap_fwd = laplacian and not hessian
    for mode in modes:
        n1 = max(n, 1)
        if not derivatives:
            f, pk, ops, mv = _value_chain(_chain_costs(dims, n1, 0, CostRequest("value")), itemsize)
        elif mode == "forward":
            req = CostRequest(
                "forward", hessian=hessian, diagonal=hessian_diagonal, laplacian=lap_fwd, packed=packed
            )
            costs = _chain_costs(dims, n1, k_fwd, req)
            f, pk, ops, mv = _fwd_chain(costs, n1, k_fwd, _last_width(dims), hessian, itemsize, packed)
        else:
            req = CostRequest("backward", hessian=hessian, diagonal=hessian_diagonal, laplacian=laplacian)
            f, pk, ops, mv = _bwd_chain(_chain_costs(dims, n1, k_bwd, req), itemsize)
        route = RouteCost(
            mode,
            f * n / n1,
            pk * n / n1,
            pk / n1,
            ops,
            mv * n / n1,
            FUSED_FLOPS_PER_BYTE if fused else FLOPS_PER_BYTE,
        )
        if training is not None and derivatives:
            second = hessian or laplacian or hessian_diagonal
            if mode == "forward":
                how = training if second or training != "analytic" else "analytic-first"
            else:
                how = "taped-second" if second else "taped"
            route.step_factor = TRAINING_FACTOR[how]
        report.routes[mode] = route
    return report

"""``net.cost()``: what the planner would do with a request, without running it.

The request is resolved into a :class:`~hessquik_core._array.CallContext`
whose input is a zero-stride array of the call's shape (nothing of size
``n·d`` is allocated), and handed to the planner itself
(:func:`~hessquik_core.engine.plan.plan`): the route, the chunking and the
refusals that the report states are the ones a call would meet, not a
second model of them.
"""

from __future__ import annotations

from dataclasses import replace

from .._array import CallContext
from ..backends import autograd_backend, home_backend
from ..rules import affine
from .cost import CostReport
from .higher_steps import biharmonic_streams, check_biharmonic_call, check_taylor_request
from .plan import VALUE, _result_fields, estimate_routes, plan
from .routes import analytic_step


class _Priced:
    """A backend as ``net.cost()`` prices it: ``fuses`` as asked, and a recorded
    training step (``training``: the route's answer, or ``None``) is never
    cache-blocked (the planner is handed the answer instead of asking whether
    autograd records the zero-stride input)."""

    def __init__(self, be, fuses: bool, training: str | None) -> None:
        self._be = be
        self.fuses = fuses
        self._training = training

    def __getattr__(self, name):
        return getattr(self._be, name)

    def cache_blocking(self, x, arrays) -> bool:
        # a recorded call is one autograd graph over the whole batch: never blocked
        return self._training is None and self._be.cache_blocking(x, arrays)


def explain(
    leaves: list,
    n: int,
    *,
    d: int,
    m: int,
    gradient: bool,
    hessian: bool,
    laplacian: bool,
    hessian_diagonal: bool,
    divergence: bool = False,
    num_directions: int | None = None,
    itemsize: int = 8,
    fused: bool = False,
    mode: str = "auto",
    max_memory=None,
    training: bool = False,
    biharmonic: bool = False,
    third_derivative: bool = False,
    fourth_derivative: bool = False,
) -> CostReport:
    """The cost report of a request, with the planner's decisions (module docstring).

    ``num_directions`` with ``mode="auto"``: directions fix the mode by their
    first axis, so the plan is made for the cheaper of the two (as if the
    directions had that side's length). With ``third_derivative`` /
    ``fourth_derivative`` it is the ``k`` of the call's ``directions (d, k)``,
    required as the call requires ``directions`` (the route ``"forward/taylor"``)."""
    if n < 0:
        raise ValueError(f"n must be a number of examples >= 0, got {n}")
    if itemsize not in (4, 8):
        raise ValueError(f"itemsize must be 4 (float32) or 8 (float64), got {itemsize!r}")
    if mode not in ("auto", "forward", "backward"):
        raise ValueError(f"mode must be one of ('auto', 'forward', 'backward'), got {mode!r}")
    if divergence and d != m:
        raise ValueError(f"divergence needs as many outputs as inputs (d == m), got d={d}, m={m}")
    if biharmonic:
        check_biharmonic_call(
            mode, None if num_directions is None else num_directions, hessian, hessian_diagonal, divergence
        )
    taylor = bool(third_derivative or fourth_derivative)
    if taylor:
        if isinstance(num_directions, bool) or not isinstance(num_directions, int) or num_directions < 1:
            what = "fourth_derivative" if fourth_derivative else "third_derivative"
            raise ValueError(
                f"{what}=True is priced along the k columns of the call's directions (d, k): give "
                f"num_directions=k, a positive int (1 per pure partial), got {num_directions!r}"
            )
        others = (gradient, hessian, laplacian, hessian_diagonal, divergence, biharmonic)
        check_taylor_request(
            leaves, d, mode, (d, num_directions), bool(third_derivative), bool(fourth_derivative), others
        )
    derivatives = bool(gradient or hessian or laplacian or hessian_diagonal or divergence)
    # a training step is priced on the library with autograd; an evaluation on the home library
    be = autograd_backend() if training else home_backend()
    xp = be.xp
    dtype = xp.float32 if itemsize == 4 else xp.float64
    x = xp.broadcast_to(xp.zeros((1, 1), dtype=dtype), (n, d))
    ctx = CallContext(
        xp=xp,
        be=be,
        x=x,
        d=d,
        m=m,
        mode=mode,
        gradient=bool(gradient),
        hessian=bool(hessian),
        laplacian=bool(laplacian),
        hessian_diagonal=bool(hessian_diagonal),
        divergence=bool(divergence),
        biharmonic=bool(biharmonic),
        third_derivative=bool(third_derivative),
        fourth_derivative=bool(fourth_derivative),
        backend=be.name,
    )
    if taylor:  # one forward sweep along the columns of directions (d, k)
        ctx = replace(
            ctx, mode="forward", V=xp.broadcast_to(xp.zeros((1, 1), dtype=dtype), (d, num_directions))
        )
    answer = None
    if training:
        answer = analytic_step.route_kind(leaves, ctx)
        if answer is None:  # pragma: no cover - autograd_backend has autograd
            raise ValueError("training=True prices an autograd training step; this backend has none")
    # both classic routes, as before: the table the mode is chosen from
    report = estimate_routes(
        leaves,
        n,
        d=d,
        m=m,
        derivatives=derivatives,
        gradient=bool(gradient),
        hessian=hessian,
        laplacian=laplacian,
        hessian_diagonal=hessian_diagonal,
        k_fwd=num_directions,
        k_bwd=num_directions,
        itemsize=itemsize,
        fused=bool(fused),
        training=answer,
    )
    notes = []
    if num_directions is not None and not taylor:
        side = report.chosen if mode == "auto" or not derivatives else mode
        rows = d if side == "forward" else m
        ctx = replace(
            ctx, mode=side, V=xp.broadcast_to(xp.zeros((1, 1), dtype=dtype), (rows, num_directions))
        )
        if mode == "auto":
            notes.append(
                f"directions fix the mode by their first axis; planned for {side} ({rows}, k) directions"
            )
    ctx = replace(ctx, be=_Priced(be, bool(fused), answer))
    p = plan(leaves, ctx, max_memory, training=answer)
    ctx = p.call  # the settled call
    request = report.request + (" + divergence" if divergence else "")
    request = request + (" + biharmonic" if biharmonic else "")
    request += "".join(
        f" + {k}"
        for k, on in (("third_derivative", third_derivative), ("fourth_derivative", fourth_derivative))
        if on
    )
    notes += _notes(leaves, ctx, p)
    return replace(
        report,
        request=request,
        routes=dict(report.routes),  # the estimate is memoised: never share its dict
        route=p.route,
        planned=p.cost,
        chunk=min(p.chunk, n),
        chunks=1 if p.chunk >= n else -(-n // p.chunk),
        blocked=p.blocked and p.chunk < n,
        result_bytes=p.result_bytes,
        result_fields=_result_fields(ctx),
        available=p.available,
        budget=p.budget,
        fits=p.refusal is None,
        refusal=p.refusal,
        training=p.training,
        notes=tuple(notes),
    )


def _notes(leaves, ctx: CallContext, p) -> list:
    """What the route does that its name does not say."""
    notes = []
    first = leaves[0].affine_structure() if leaves else None
    affine_first = first is not None and first.plain
    if p.training is not None:
        notes.append(
            f"a recorded torch training step (forward route {p.training}): scores include the "
            f"backward pass, x{p.cost.step_factor:g}"
        )
    if p.route == VALUE:
        notes.append("value only: one plain forward pass, nothing carried, never cache-blocked")
    elif ctx.biharmonic:
        s = biharmonic_streams(ctx.d)
        notes.append(
            f"bi-Laplacian sweep: d(d+1)/2 + 2d + 3 = {s} streams per feature through each weight "
            f"matrix (the forward Laplacian's: d + 2 = {ctx.d + 2}); no (n, d, d, d, d) array"
        )
    elif ctx.taylor_order:
        k, o = ctx.k, ctx.taylor_order
        notes.append(
            f"Taylor sweep of order {o}: {o}k + 1 = {o * k + 1} streams per feature (k = {k} directions)"
        )
    elif ctx.route:
        q = leaves[0].cost_shapes[0][1]
        what = "Gram root R (RᵀR = MᵀM)" if ctx.route == "gram-laplacian" else "pre-activation coordinates"
        notes.append(
            f"high-dimensional route: {q} first-width tangents ({what}) instead of d = {ctx.d}; "
            f"batch-independent weight products are memoised for read-only weights and not charged"
        )
    elif p.route == "backward" and affine_first and not ctx.hessian and ctx.second_order:
        if ctx.hessian_diagonal:
            rows = min(p.chunk, p.n) * ctx.k
            how = "the packed triangle of K" if rows >= affine.PACKED_FROM else "row blocks of M (sandwich)"
            notes.append(f"first layer: Hessian diagonal by GEMMs over {how}, never the (n, k, d, d) block")
        if ctx.laplacian:
            notes.append("first layer: Laplacian as <K, MᵀM> with the memoised Gram matrix")
    return notes


__all__ = ["explain"]

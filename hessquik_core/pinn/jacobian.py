r"""Per-point parameter Jacobians of derivative quantities, without automatic differentiation.

For a network :math:`u(x;\theta) : \mathbb{R}^d \to \mathbb{R}^m` with parameters
:math:`\theta \in \mathbb{R}^P` (in :class:`~hessquik_core.curvature.ParameterLayout`
order) and a quantity :math:`q(x;\theta)` computed by a forward Taylor sweep,

* ``"value"``: :math:`u` — ``J : (n, m, P)``,
* ``"gradient"``: :math:`\partial_i u` — ``(n, d, m, P)``,
* ``"laplacian"``: :math:`\Delta u` — ``(n, m, P)``,
* ``"hessian_diagonal"``: :math:`\partial_{ii} u` — ``(n, d, m, P)``,
* ``"weighted_laplacian"``: :math:`\mathrm{tr}(S S^\top \nabla^2 u)` for ``weights = S : (d, r)`` — ``(n, m, P)``,
* ``"biharmonic"``: :math:`\Delta^2 u` — ``(n, m, P)`` (affine-structure layers:
  dense, residual, SIREN, Fourier features; :mod:`hessquik_core.pinn._streams_bh`),
* ``"directional"``: :math:`\partial^k u[v, \dots, v]` for each column ``v`` of
  ``directions = V : (d, K)``, and ``"pure_partial"``: :math:`\partial^k u/\partial x_i^k` for
  ``coords = (i, …)`` (``K = len(coords)``), ``order = k`` in 1–4 — ``(n, K, m, P)``
  (layers declaring affine structure, :mod:`hessquik_core.pinn._streams_taylor`),

this module returns :math:`J_i = \partial q(x_i;\theta)/\partial\theta` for every
point, and the matrix-free products :math:`J v` and :math:`J^\top w`.

How. The forward sweep carries, per point, the *streams*
:math:`Y = [u; \partial u_1; \dots; \partial u_k; L]` of every layer's input
(:mod:`hessquik_core.rules.streams`); one backward sweep of the adjoints of the
forward recurrences, per output component and never summed over the points,
gives each layer's per-point Jacobian as :math:`\sum_s Y_s^\top \bar Z_s`. The
quantities are swept as:

* Laplacian: ``k = d`` tangents seeded with the identity and one second-order row;
* weighted Laplacian: ``k = r`` tangents seeded with the columns of ``S``
  (:math:`\mathrm{tr}(SS^\top\nabla^2u) = \sum_c S_c^\top \nabla^2 u\, S_c`);
* Hessian diagonal and gradient: ``d`` independent *groups* of streams
  :math:`(u, \partial_i u, \partial_{ii} u)` (resp. :math:`(u, \partial_i u)`),
  folded into the point axis (``N = n·d`` rows, point-major): the adjoint of
  :math:`\partial_{ii} u` never reaches :math:`\partial_j u, j \ne i`, so each
  component's backward sweep carries three streams, not ``2d + 1``;
* value: the value stream alone (plain backpropagation, per point).

Memory: the result is ``n·c·m·P`` numbers (``c`` = ``d`` for the gradient and
diagonal, else 1); the per-layer blocks are written straight into it (mutable
libraries) and no temporary exceeds one layer's block ``(N, m, p, q)``. A call
whose result (plus the sweep's streams) exceeds the memory budget is refused
with :class:`~hessquik_core.engine.plan.MemoryBudgetError` before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..rules.streams import StreamSpec
from . import _streams_bh_call as bh
from . import _streams_taylor as tay
from ._streams import (
    PER_COORDINATE,
    QUANTITIES,
    Bound,
    Sweep,
    backward,
    check_memory,
    check_quantity,
    combined_seed,
    combined_values,
    forward,
    input_streams,
    jacobian_of,
    prepare,
    prepare_many,
    sweep_of,
    weights_matrix,
)
from ._streams_bh_call import weight_map

#: every quantity with a per-point Jacobian (``QUANTITIES``, the bi-Laplacian, and the
#: directional derivatives / pure partials of order 1–4 of :func:`jacobian`, :func:`jvp`, :func:`vjp`)
ALL_QUANTITIES = (*QUANTITIES, "biharmonic", "directional", "pure_partial")

__all__ = ["ALL_QUANTITIES", "QUANTITIES", "Quantities", "jacobian", "jvp", "kfac_factors"]
__all__ += ["quantities_and_jacobians", "vjp"]


@dataclass
class Quantities:
    """The quantities of :func:`quantities_and_jacobians` (``None`` where not asked).

    Attributes
    ----------
    value : (n, m)
    gradient : (n, d, m) or None
    laplacian : (n, m) or None
    hessian_diagonal : (n, d, m) or None
    weighted_laplacian : (n, m) or None
    biharmonic : (n, m) or None
    directional, pure_partial : (n, K, m) or None
    """

    value: Any = None
    gradient: Any = None
    laplacian: Any = None
    hessian_diagonal: Any = None
    weighted_laplacian: Any = None
    biharmonic: Any = None
    directional: Any = None
    pure_partial: Any = None

    def __getitem__(self, name: str):
        if name not in ALL_QUANTITIES:
            raise KeyError(f"unknown quantity {name!r}; known: {ALL_QUANTITIES}")
        return getattr(self, name)


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------


def jacobian(
    net,
    x,
    quantity="laplacian",
    *,
    weights=None,
    backend=None,
    max_memory=None,
    directions=None,
    coords=None,
    order=None,
):
    r"""Per-point Jacobian :math:`J_i = \partial q(x_i;\theta)/\partial\theta` of a derivative quantity.

    Parameters
    ----------
    net : NN or Layer (or a torch ``nn.Sequential``, converted by ``from_torch``)
        Of layers with stream passes (``Layer.stream_forward``): dense, residual,
        ICNN and quadratic(-ICNN) layers, Fourier features, periodic embeddings,
        layer normalisation, the gated MLP and the gated residual block; another
        layer type raises ``ValueError`` naming it, before any work.
    x : array of shape (n, d)
        The points; the result is in ``x``'s library, dtype and device.
    quantity : {"value", "gradient", "laplacian", "hessian_diagonal", "weighted_laplacian", "biharmonic"}
        ``"biharmonic"``, ``"directional"``, ``"pure_partial"``: affine-structure layers only.
    weights : array of shape (d, r), optional
        ``S`` of the weighted Laplacian :math:`\mathrm{tr}(SS^\top\nabla^2 u)` (required
        for, and only for, ``"weighted_laplacian"``).
    backend : str, optional
        Backend that runs the call (as for network calls).
    max_memory : float, optional
        Bytes the call may use; default half the free memory of the device.
    directions : array of shape (d, K), optional
        The directions of ``"directional"`` (required for, and only for, it).
    coords : sequence of int, optional
        The coordinates of ``"pure_partial"`` (required for, and only for, it).
    order : int, optional
        ``k`` in 1–4 of ``"directional"`` and ``"pure_partial"``. Order ``k`` needs :math:`\sigma^{(k+1)}`,
        :math:`\Delta^2 u` :math:`\sigma^{(5)}` (tanh, sin, antiTanh, sigmoid, identity, quadratic).

    Returns
    -------
    J : array
        ``(n, m, P)`` for ``"value"``, ``"laplacian"``, ``"weighted_laplacian"``, ``"biharmonic"``;
        ``(n, d, m, P)`` for ``"gradient"``, ``"hessian_diagonal"`` (``m`` not squeezed);
        ``(n, K, m, P)`` for ``"directional"``, ``"pure_partial"``;
        parameters in :class:`~hessquik_core.curvature.ParameterLayout` order.

    Raises
    ------
    MemoryBudgetError
        Before any work, when the result cannot fit the budget.
    ValueError
        Unknown quantity, bad ``weights``, an unsupported layer, or an
        activation without :math:`\sigma'''` for a second-order quantity.
    """
    if isinstance(quantity, str) and quantity in tay.TAYLOR:
        return tay.run(
            "jacobian", net, x, quantity, None, weights, backend, directions, coords, order, max_memory
        )
    tay.no_taylor_keywords(quantity, directions, coords, order)
    if isinstance(quantity, str) and quantity == "biharmonic":
        Bb = bh.bound(net, x, weights, backend, max_memory)
        return Bb.to_user(bh.jacobian(Bb)[0])
    B, S, sw = prepare(net, x, quantity, weights, backend)
    check_memory(B, sw, sw.groups, max_memory)
    _, caches = forward(B, sw, S)
    return B.to_user(jacobian_of(B, sw, caches))


def quantities_and_jacobians(
    net,
    x,
    needs=("value", "laplacian"),
    *,
    weights=None,
    backend=None,
    max_memory=None,
    directions=None,
    coords=None,
    order=None,
):
    r"""The quantities ``needs`` at the points and their per-point Jacobians.

    One forward sweep serves all of ``"value"``, ``"gradient"``,
    ``"hessian_diagonal"`` and ``"laplacian"`` when a per-coordinate quantity is
    among them (the Laplacian's Jacobian is then the sum of the diagonal's over
    the coordinates); ``"weighted_laplacian"`` takes a sweep of its own, and
    the value's Jacobian a value-only sweep when the other sweep is per-coordinate.

    Parameters
    ----------
    needs : sequence of str
        Names from ``ALL_QUANTITIES`` (duplicates ignored); ``"biharmonic"`` and
        ``"directional"`` / ``"pure_partial"`` (one of them per call) take sweeps of their own.
    net, x, weights, backend, max_memory, directions, coords, order
        As for :func:`jacobian`.

    Returns
    -------
    quantities : Quantities
        ``value (n, m)`` always; each needed quantity with the shapes of
        :class:`Quantities`.
    jacobians : dict
        name -> ``J`` as :func:`jacobian` returns it, for every name in ``needs``.
    """
    if isinstance(needs, str):
        needs = (needs,)
    kw = (directions, coords, order)
    if any(q in tay.TAYLOR for q in needs):  # its own sweep; the other quantities by theirs
        return tay.run_quantities(
            net, x, needs, weights, backend, max_memory, *kw, quantities_and_jacobians, Quantities
        )
    tay.no_taylor_keywords(needs, *kw)
    if "biharmonic" in needs:  # its own sweep; the other quantities by theirs
        return bh.run_quantities(
            net, x, needs, weights, backend, max_memory, quantities_and_jacobians, Quantities
        )
    needs = tuple(dict.fromkeys(check_quantity(q) for q in needs))
    if not needs:
        raise ValueError(f"needs must name at least one of {QUANTITIES}")
    B = Bound(net, x, backend)
    d = B.net.in_features
    S = weights_matrix(B, needs, weights)
    coord = any(q in needs for q in PER_COORDINATE)
    diag = "hessian_diagonal" in needs
    # the sweeps and the quantities each yields: per-coordinate groups for the gradient
    # and the diagonal (and the Laplacian as the diagonal's sum when the diagonal is
    # wanted anyway); the Laplacian's own streams otherwise (its Jacobian then has no
    # d-fold intermediate); the value's Jacobian from the first sweep of one group
    plans: list[tuple[Sweep, tuple[str, ...]]] = []
    if coord:
        main = Sweep(d, StreamSpec(1, diag), 2 if diag else 1, coord=True)
        plans.append(
            (
                main,
                tuple(
                    q for q in needs if q in ("gradient", "hessian_diagonal") or (diag and q == "laplacian")
                ),
            )
        )
    if "laplacian" in needs and not diag:
        plans.append((sweep_of("laplacian", d, 0), ("value", "laplacian")))
    if S is not None:
        plans.append((sweep_of("weighted_laplacian", d, S.shape[1]), ("value", "weighted_laplacian")))
    if "value" in needs and all(sw.coord for sw, _ in plans):
        plans.append((sweep_of("value", d, 0), ("value",)))
    # the value's Jacobian: once, from the first one-group sweep
    first = next((i for i, (sw, _) in enumerate(plans) if not sw.coord), None)
    plans = [
        (sw, tuple(q for q in names if q != "value" or i == first)) for i, (sw, names) in enumerate(plans)
    ]
    for sw, _ in plans:
        B.check_supported(sw.spec)
    for sw, names in plans:
        js = [q for q in names if q in needs]
        comps = sum(d if (q in PER_COORDINATE or sw.coord) else 1 for q in js)
        if js:
            check_memory(B, sw, comps, max_memory)
    xp = B.xp
    n, m = B.x.shape[0], B.net.out_features
    Q = Quantities()
    J: dict[str, Any] = {}
    for sw, names in plans:
        Y, caches = forward(B, sw, S if sw.weighted else None)
        if sw.coord:
            Yg = xp.reshape(Y, (Y.shape[0], n, d, m))
            if "gradient" in names:
                Q.gradient = Yg[1, ...]
            if sw.spec.second:
                Q.hessian_diagonal = Yg[2, ...]
                if "laplacian" in needs:
                    Q.laplacian = xp.sum(Yg[2, ...], axis=1)
            if Q.value is None:  # the value stream is the same in every group (a copy: not a view of Y)
                Q.value = xp.asarray(Yg[0, :, 0, :], copy=True)
        else:
            if Q.value is None:
                Q.value = Y[0, ...]
            if sw.spec.second:
                setattr(Q, "weighted_laplacian" if sw.weighted else "laplacian", Y[sw.row, ...])
        for q in names:
            if q not in needs:
                continue
            if sw.coord and q in ("hessian_diagonal", "laplacian"):
                if "hessian_diagonal" not in J:
                    Jd = jacobian_of(B, replace(sw, row=2), caches)
                    if "hessian_diagonal" in needs:
                        J["hessian_diagonal"] = Jd
                    if "laplacian" in needs:
                        J["laplacian"] = xp.sum(Jd, axis=1)
                continue
            row = {"value": 0, "gradient": 1}.get(q, sw.row)
            J[q] = jacobian_of(B, replace(sw, row=row), caches)
    out = Quantities(**{f: (None if getattr(Q, f) is None else B.to_user(getattr(Q, f))) for f in QUANTITIES})
    for f in QUANTITIES:
        if f != "value" and f not in needs:
            setattr(out, f, None)
    return out, {q: B.to_user(J[q]) for q in needs}


def jvp(net, x, quantity, v, *, weights=None, backend=None, directions=None, coords=None, order=None):
    r"""Matrix-free :math:`J v`: the derivative of the quantity along the parameter direction ``v``.

    One forward sweep and one forward R-sweep over the streams
    (``Layer.stream_rop`` of every layer); ``J`` is never formed.

    Parameters
    ----------
    quantity : str or sequence of str
        A name of ``ALL_QUANTITIES``, or several swept together (one sweep, see
        :func:`kfac_factors` for which combine; ``"biharmonic"`` combines with
        ``"value"``, ``"gradient"``, ``"laplacian"`` and ``"hessian_diagonal"``,
        all carried by its streams).
    v : array of shape (P,)
        In :class:`~hessquik_core.curvature.ParameterLayout` order, ``x``'s library.
    net, x, weights, backend
        As for :func:`jacobian`.

    Returns
    -------
    array of shape (n, m) or (n, d, m), or dict
        Like the quantity; for several, ``name -> array``.
    """
    if isinstance(quantity, str) and quantity in tay.TAYLOR:
        return tay.run("jvp", net, x, quantity, v, weights, backend, directions, coords, order)
    tay.no_taylor_keywords(quantity, directions, coords, order)
    bnames = bh.names_of(quantity)
    if bnames is not None:
        return bh.run_jvp(net, x, quantity, bnames, v, weights, backend)
    B, S, sw, names = prepare_many(net, x, quantity, weights, backend)
    Vs = bh.param_direction(B, v)
    Y = input_streams(B, sw, S)
    RY: Any = None  # the input streams do not depend on the parameters
    for leaf, Pm, V in zip(B.leaves, B.params, Vs):
        Y, cache = leaf.stream_forward(Y, Pm, sw.spec, B.be)
        RY = leaf.stream_rop(cache, Pm, RY, V, B.be)
    out = {k: B.to_user(a) for k, a in combined_values(B, sw, RY, names).items()}
    return out[names[0]] if isinstance(quantity, str) else out


def vjp(net, x, quantity, w=None, *, weights=None, backend=None, directions=None, coords=None, order=None):
    r"""Matrix-free :math:`J^\top w = \sum_i J_i^\top w_i`.

    One forward sweep and one backward sweep seeded with ``w`` and summed over
    the points as it goes; ``J`` is never formed.

    Parameters
    ----------
    quantity : str or mapping of str to array
        A name of ``ALL_QUANTITIES`` (then ``w`` is required), or ``{name: w_name}``
        for :math:`\sum_q J_q^\top w_q` of several quantities in one sweep
        (e.g. ``{"gradient": wg, "hessian_diagonal": wd}`` for a heat residual, or
        ``{"biharmonic": w4, "value": w0}`` for :math:`\Delta^2 u + cu`).
    w : array of the quantity's shape, (n, m) or (n, d, m)
    net, x, weights, backend
        As for :func:`jacobian`.

    Returns
    -------
    array of shape (P,)
    """
    if isinstance(quantity, str) and quantity in tay.TAYLOR:
        return tay.run("vjp", net, x, quantity, w, weights, backend, directions, coords, order)
    tay.no_taylor_keywords(quantity, directions, coords, order)
    ws = weight_map(quantity, w, "vjp", True)
    if bh.names_of(tuple(ws)) is not None:
        return bh.run_vjp(net, x, quantity, ws, weights, backend)
    B, S, sw, names = prepare_many(net, x, tuple(ws), weights, backend)
    Ybar = combined_seed(B, sw, ws, "w")
    _, caches = forward(B, sw, S)
    outs = backward(B, caches, Ybar, "sum")
    parts = [None] * len(B.layout.keys)
    for slots, g in zip(B.slots, outs):
        for name, j in slots:
            parts[j] = B.xp.reshape(g[name], (B.layout.sizes[j],))
    return B.to_user(B.xp.concat(parts, axis=0))


def kfac_factors(net, x, quantity="laplacian", w=None, *, weights=None, backend=None) -> list:
    r"""Kronecker factors ("expand") of the Gramian of :math:`r_i = \sum_q \langle w_{q,i}, q(x_i;\theta)\rangle`.

    Per affine block :math:`Z = YM + b` of the network, the per-point Jacobian of
    :math:`r_i` with respect to :math:`\tilde M = [M; b]` is
    :math:`\sum_{s} \tilde Y_{is}^\top \bar Z_{is}` over the ``R`` stream rows of
    point ``i`` (``R = S'·groups``; :math:`\tilde Y_s = [Y_s, \delta_{s0}]`, the bias
    entering the value row only). KFAC-expand treats the rows as shared-weight
    examples:

    .. math::
        \frac1n\sum_i J_i^\top J_i \approx A \otimes B,\qquad
        A = \frac{1}{nR}\sum_{i,s} \tilde Y_{is}\tilde Y_{is}^\top,\qquad
        B = \frac1n\sum_{i,s} \bar Z_{is}\bar Z_{is}^\top

    (``vec`` row-major: the entry of :math:`\tilde M_{ab}` is row ``a·q + b``).

    Parameters
    ----------
    quantity : str or mapping of str to array
        One quantity (weighted by ``w``), or ``{name: w_name}`` (``None`` for ones):
        a residual combining several quantities, swept together. ``"value"``
        combines with anything; ``"gradient"``, ``"hessian_diagonal"`` and
        ``"laplacian"`` with each other (per-coordinate streams);
        ``"weighted_laplacian"`` only with ``"value"``.
    w : array of the quantity's shape, optional
        The residual's coefficient per point and component; default ones.
    net, x, weights, backend
        As for :func:`jacobian`.

    Returns
    -------
    list of (A, B)
        One pair per affine block in layer order: ``A : (p+1, p+1)`` (``(p, p)``
        without bias), ``B : (q, q)``.
    """
    ws = weight_map(quantity, w, "kfac_factors", False)
    if "biharmonic" in ws:
        raise ValueError("kfac_factors: 'biharmonic' has no Kronecker factors yet (use jacobian, jvp or vjp)")
    B_, S, sw, _ = prepare_many(net, x, tuple(ws), weights, backend)
    for i, leaf in enumerate(B_.leaves):
        if not leaf.stream_kfac:
            raise ValueError(
                f"kfac_factors: layer {i} ({type(leaf).__name__}) has no Kronecker-factored curvature "
                "(only affine blocks: SingleLayer, ResnetLayer, ICNNLayer, GatedMLP)"
            )
    Ybar = combined_seed(B_, sw, ws, "w")
    _, caches = forward(B_, sw, S)
    outs = backward(B_, caches, Ybar, "kfac")
    n = B_.x.shape[0]
    R = (sw.row + 1) * sw.groups
    res = []
    for pairs in outs:
        for A, G in pairs:
            res.append((B_.to_user(A / (n * R)), B_.to_user(G / n)))
    return res

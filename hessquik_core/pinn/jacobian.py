r"""Per-point parameter Jacobians of derivative quantities, without automatic differentiation.

For a network :math:`u(x;\theta) : \mathbb{R}^d \to \mathbb{R}^m` with parameters
:math:`\theta \in \mathbb{R}^P` (in :class:`~hessquik_core.curvature.ParameterLayout`
order) and a quantity :math:`q(x;\theta)` computed by a forward Taylor sweep,

* ``"value"``: :math:`u` — ``J : (n, m, P)``,
* ``"gradient"``: :math:`\partial_i u` — ``(n, d, m, P)``,
* ``"laplacian"``: :math:`\Delta u` — ``(n, m, P)``,
* ``"hessian_diagonal"``: :math:`\partial_{ii} u` — ``(n, d, m, P)``,
* ``"weighted_laplacian"``: :math:`\mathrm{tr}(S S^\top \nabla^2 u)` for ``weights = S : (d, r)`` — ``(n, m, P)``,

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

from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

from .._array import resolve_input
from ..activations import Activation
from ..curvature.layout import _network, parameter_layout
from ..engine.plan import MemoryBudgetError
from ..layers.base import Layer
from ..rules.streams import StreamSpec, check_order

__all__ = ["QUANTITIES", "Quantities", "jacobian", "jvp", "kfac_factors", "quantities_and_jacobians", "vjp"]

#: the quantities a per-point Jacobian is available for
QUANTITIES = ("value", "gradient", "laplacian", "hessian_diagonal", "weighted_laplacian")

#: quantities with a coordinate axis ``d`` after the point axis
_PER_COORDINATE = ("gradient", "hessian_diagonal")


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
    """

    value: Any = None
    gradient: Any = None
    laplacian: Any = None
    hessian_diagonal: Any = None
    weighted_laplacian: Any = None

    def __getitem__(self, name: str):
        if name not in QUANTITIES:
            raise KeyError(f"unknown quantity {name!r}; known: {QUANTITIES}")
        return getattr(self, name)


# --------------------------------------------------------------------------
# the network bound to a call
# --------------------------------------------------------------------------


class _Bound:
    """Leaves, their parameters and the input, in the library the call runs in."""

    def __init__(self, net, x, backend):
        net = _network(net)
        self.net = net
        self.layout = parameter_layout(net)
        inp = resolve_input(net, x, backend)
        if x.shape[0] < 1:
            raise ValueError(f"x must hold at least one point, got shape {tuple(x.shape)}")
        self.inp = inp
        self.be, self.xp = inp.be, inp.xp
        x = inp.x
        if getattr(x, "requires_grad", False):
            x = x.detach()
        self.x = x
        self.dtype, self.device = x.dtype, aac.device(x)
        self.leaves = list(net._leaves())
        self.params = []
        for leaf in self.leaves:
            P = leaf._eval_params(inp.cache_key, self.be, self.xp, self.dtype, self.device)
            self.params.append(
                {k: (v.detach() if getattr(v, "requires_grad", False) else v) for k, v in P.items()}
            )
        self.slots = []  # per leaf: (local parameter name, index in the layout)
        j = 0
        for leaf in self.leaves:
            slots = []
            for k, _ in leaf.named_parameters():
                slots.append((leaf.local_param_name(k), j))
                j += 1
            self.slots.append(slots)
        if j != len(self.layout.keys):  # pragma: no cover - structural invariant
            raise RuntimeError("leaf parameters do not cover state_dict")

    def check_supported(self, spec: StreamSpec) -> None:
        """Refuse, before any work, a layer without stream passes or an activation
        without the derivative order the sweep needs."""
        for i, leaf in enumerate(self.leaves):
            if type(leaf).stream_forward is Layer.stream_forward:
                raise leaf._streams_unsupported()
            for act in leaf.stream_activations():
                if isinstance(act, Activation):
                    check_order(act, spec, f"layer {i} ({type(leaf).__name__})")

    def to_user(self, a):
        if not self.inp.converted:
            return a
        ub = self.inp.user_be
        dt = getattr(ub.xp, str(a.dtype).split(".")[-1])
        return ub.convert(a, xp=ub.xp, dtype=dt, device=aac.device(self.inp.orig_x))

    def to_call(self, a, name):
        """A user array (``v``, ``w``, ``S``) in the call's library, dtype and device."""
        if not self.inp.converted and aac.array_namespace(a) is not aac.array_namespace(self.inp.orig_x):
            raise TypeError(
                f"{name} must be an array of x's library ({aac.array_namespace(self.inp.orig_x).__name__}), "
                f"got {type(a).__name__}"
            )
        return self.be.convert(a, xp=self.xp, dtype=self.dtype, device=self.device)


# --------------------------------------------------------------------------
# the sweep of one quantity
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sweep:
    """How a quantity is swept: ``groups`` stream groups per point (folded into
    the point axis), ``spec`` of each, and the stream row holding the quantity."""

    groups: int
    spec: StreamSpec
    row: int
    weighted: bool = False


def _sweep_of(quantity: str, d: int, r: int) -> _Sweep:
    if quantity == "value":
        return _Sweep(1, StreamSpec(0, False), 0)
    if quantity == "gradient":
        return _Sweep(d, StreamSpec(1, False), 1)
    if quantity == "hessian_diagonal":
        return _Sweep(d, StreamSpec(1, True), 2)
    if quantity == "laplacian":
        return _Sweep(1, StreamSpec(d, True), 1 + d)
    return _Sweep(1, StreamSpec(r, True), 1 + r, weighted=True)


def _check_quantity(quantity) -> str:
    if not isinstance(quantity, str) or quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    return quantity


def _weights(B: _Bound, quantity: str, weights):
    """``S : (d, r)`` in the call's library for the weighted Laplacian, else ``None``."""
    d = B.net.in_features
    if quantity != "weighted_laplacian":
        if weights is not None:
            raise ValueError(
                f"weights (S of the weighted Laplacian) are only used by 'weighted_laplacian', not {quantity!r}"
            )
        return None
    if weights is None:
        raise ValueError(f"quantity 'weighted_laplacian' needs weights = S of shape ({d}, r)")
    S = B.to_call(weights, "weights")
    if S.ndim != 2 or S.shape[0] != d or S.shape[1] < 1:
        raise ValueError(f"weights (S) must have shape ({d}, r) with r >= 1, got {tuple(S.shape)}")
    return S


def _input_streams(B: _Bound, sw: _Sweep, S):
    """``Y0 : (rows, N, d)``: the points (each repeated ``groups`` times, point-major),
    the tangent seeds (identity, ``e_g`` per group, or ``Sᵀ``) and a zero second-order row."""
    xp, x = B.xp, B.x
    n, d = x.shape
    g, k = sw.groups, sw.spec.k
    N = n * g
    rows = [xp.reshape(xp.broadcast_to(x[:, None, :], (n, g, d)), (1, N, d))]
    if k:
        if g > 1:  # group i seeds e_i: row (point, i) of the one tangent is e_i
            eye = xp.eye(d, dtype=x.dtype, device=B.device)
            seed = xp.reshape(xp.broadcast_to(eye[None, ...], (n, d, d)), (1, N, d))
        else:
            seed0 = xp.eye(d, dtype=x.dtype, device=B.device) if S is None else xp.matrix_transpose(S)
            seed = xp.broadcast_to(seed0[:, None, :], (k, N, d))
        rows.append(seed)
    if sw.spec.second:
        rows.append(xp.zeros((1, N, d), dtype=x.dtype, device=B.device))
    return xp.concat(rows, axis=0)


def _forward(B: _Bound, sw: _Sweep, S):
    Y = _input_streams(B, sw, S)
    caches = []
    for leaf, P in zip(B.leaves, B.params):
        Y, cache = leaf.stream_forward(Y, P, sw.spec, B.be)
        caches.append(cache)
    return Y, caches


def _itemsize(dtype) -> int:
    return 4 if "32" in str(dtype) else 8


def _check_memory(B: _Bound, sw: _Sweep, c: int, max_memory, count: int = 1) -> None:
    """Refuse a call whose result and streams cannot fit (before any work)."""
    n = B.x.shape[0]
    m, P = B.net.out_features, B.layout.size
    N = n * sw.groups
    item = _itemsize(B.dtype)
    width = max([B.net.in_features] + [leaf.out_features for leaf in B.leaves])
    result = float(count) * n * c * m * P * item
    streams = 2.0 * len(B.leaves) * sw.spec.rows * N * width * item
    block = max(float(N) * m * leaf.in_features * leaf.out_features for leaf in B.leaves) * item
    need = result + streams + 2.0 * block
    if max_memory is None:
        available = float(B.be.available_memory(B.device))
        budget = 0.5 * available
    else:
        budget = float(max_memory)
    if need > budget:
        raise MemoryBudgetError(
            f"the per-point Jacobian (n = {n}, {c} component(s) × {m} output(s) × P = {P} per point) needs "
            f"about {need / 2**20:.1f} MiB, more than the memory budget of {budget / 2**20:.1f} MiB; "
            "use the matrix-free products hessquik_core.pinn.jvp / vjp, fewer points per call, or raise max_memory"
        )


def _seed(B: _Bound, sw: _Sweep, rows: int, w=None):
    """Output adjoints ``(c, rows, N, m)``: one direction per output (``w is None``),
    or the single direction ``w : (N, m)`` on the quantity's row."""
    xp = B.xp
    N = B.x.shape[0] * sw.groups
    m = B.net.out_features
    dt, dev = B.dtype, B.device
    if w is None:
        eye = xp.eye(m, dtype=dt, device=dev)
        hot = xp.broadcast_to(eye[:, None, None, :], (m, 1, N, m))
        c = m
    else:
        hot = w[None, None, ...]
        c = 1
    parts = []
    if sw.row:
        parts.append(xp.zeros((c, sw.row, N, m), dtype=dt, device=dev))
    parts.append(hot)
    if rows > sw.row + 1:  # pragma: no cover - the driver asks for prefixes ending at the row
        parts.append(xp.zeros((c, rows - sw.row - 1, N, m), dtype=dt, device=dev))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)


def _backward(B: _Bound, caches, Ybar, mode: str):
    """Run the adjoint sweep; returns per leaf the layer's ``out`` (see ``Layer.stream_vjp``)."""
    outs: list = [None] * len(B.leaves)
    for i in range(len(B.leaves) - 1, -1, -1):
        Ybar, outs[i] = B.leaves[i].stream_vjp(caches[i], B.params[i], Ybar, mode, i > 0, B.be)
    return outs


def _assemble(B: _Bound, outs, N: int, c: int):
    """Per-leaf blocks ``(N, c, *shape)`` into ``(N, c, P)`` in layout order."""
    xp, lay = B.xp, B.layout
    parts = [None] * len(lay.keys)
    for slots, g in zip(B.slots, outs):
        for name, j in slots:
            parts[j] = g[name]
    if B.be.mutable:
        out = xp.empty((N, c, lay.size), dtype=B.dtype, device=B.device)
        for j, a in enumerate(parts):
            o, s = lay.offsets[j], lay.sizes[j]
            out[:, :, o : o + s] = xp.reshape(a, (N, c, s))
        return out
    return xp.concat([xp.reshape(a, (N, c, s)) for a, s in zip(parts, lay.sizes)], axis=-1)


def _shape_out(B: _Bound, sw: _Sweep, J):
    """``(N, ...)`` with ``N = n·groups`` to ``(n, groups, ...)`` (per-coordinate) or ``(n, ...)``."""
    if sw.groups == 1:
        return J
    n = B.x.shape[0]
    return B.xp.reshape(J, (n, sw.groups, *J.shape[1:]))


def _jacobian_of(B: _Bound, sw: _Sweep, caches):
    N = B.x.shape[0] * sw.groups
    m = B.net.out_features
    Ybar = _seed(B, sw, sw.row + 1)
    outs = _backward(B, caches, Ybar, "point")
    return _shape_out(B, sw, _assemble(B, outs, N, m))


def _prepare(net, x, quantity, weights, backend):
    quantity = _check_quantity(quantity)
    B = _Bound(net, x, backend)
    S = _weights(B, quantity, weights)
    sw = _sweep_of(quantity, B.net.in_features, 0 if S is None else S.shape[1])
    B.check_supported(sw.spec)
    return B, S, sw


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------


def jacobian(net, x, quantity: str = "laplacian", *, weights=None, backend=None, max_memory=None):
    r"""Per-point Jacobian :math:`J_i = \partial q(x_i;\theta)/\partial\theta` of a derivative quantity.

    Parameters
    ----------
    net : NN or Layer (or a torch ``nn.Sequential``, converted by ``from_torch``)
        Of dense (:class:`~hessquik_core.SingleLayer`) and residual
        (:class:`~hessquik_core.ResnetLayer`) layers; other layer types raise
        ``ValueError`` until they supply stream passes.
    x : array of shape (n, d)
        The points; the result is in ``x``'s library, dtype and device.
    quantity : {"value", "gradient", "laplacian", "hessian_diagonal", "weighted_laplacian"}
    weights : array of shape (d, r), optional
        ``S`` of the weighted Laplacian :math:`\mathrm{tr}(SS^\top\nabla^2 u)` (required
        for, and only for, ``"weighted_laplacian"``).
    backend : str, optional
        Backend that runs the call (as for network calls).
    max_memory : float, optional
        Bytes the call may use; default half the free memory of the device.

    Returns
    -------
    J : array
        ``(n, m, P)`` for ``"value"``, ``"laplacian"``, ``"weighted_laplacian"``;
        ``(n, d, m, P)`` for ``"gradient"``, ``"hessian_diagonal"`` (``m`` not squeezed);
        parameters in :class:`~hessquik_core.curvature.ParameterLayout` order.

    Raises
    ------
    MemoryBudgetError
        Before any work, when the result cannot fit the budget.
    ValueError
        Unknown quantity, bad ``weights``, an unsupported layer, or an
        activation without :math:`\sigma'''` for a second-order quantity.
    """
    B, S, sw = _prepare(net, x, quantity, weights, backend)
    _check_memory(B, sw, sw.groups, max_memory)
    _, caches = _forward(B, sw, S)
    return B.to_user(_jacobian_of(B, sw, caches))


def quantities_and_jacobians(
    net, x, needs=("value", "laplacian"), *, weights=None, backend=None, max_memory=None
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
        Names from ``QUANTITIES`` (duplicates ignored).
    net, x, weights, backend, max_memory
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
    needs = tuple(dict.fromkeys(_check_quantity(q) for q in needs))
    if not needs:
        raise ValueError(f"needs must name at least one of {QUANTITIES}")
    B = _Bound(net, x, backend)
    d = B.net.in_features
    S = _weights(B, "weighted_laplacian" if "weighted_laplacian" in needs else "value", weights)
    coord = any(q in needs for q in _PER_COORDINATE)
    second = "hessian_diagonal" in needs or "laplacian" in needs
    plans: list[tuple[_Sweep, tuple[str, ...]]] = []
    if coord:
        main = _Sweep(d, StreamSpec(1, second), 2 if second else 1)
        plans.append((main, tuple(q for q in needs if q in ("gradient", "hessian_diagonal", "laplacian"))))
        plans.append((_sweep_of("value", d, 0), ("value",)))
    elif "laplacian" in needs:
        plans.append((_sweep_of("laplacian", d, 0), ("value", "laplacian")))
    else:
        plans.append((_sweep_of("value", d, 0), ("value",)))
    if S is not None:
        plans.append((_sweep_of("weighted_laplacian", d, S.shape[1]), ("weighted_laplacian",)))
    for sw, _ in plans:
        B.check_supported(sw.spec)
    for sw, names in plans:
        js = [q for q in names if q in needs]
        comps = sum(d if (q in _PER_COORDINATE or sw.groups > 1) else 1 for q in js)
        if js:
            _check_memory(B, sw, comps, max_memory)
    xp = B.xp
    n, m = B.x.shape[0], B.net.out_features
    Q = Quantities()
    J: dict[str, Any] = {}
    for sw, names in plans:
        if sw.groups == 1 and sw.spec.k == 0 and Q.value is not None and "value" not in needs:
            continue
        Y, caches = _forward(B, sw, S if sw.weighted else None)
        if sw.groups > 1:
            Yg = xp.reshape(Y, (Y.shape[0], n, d, m))
            if "gradient" in names:
                Q.gradient = Yg[1, ...]
            if sw.spec.second:
                Q.hessian_diagonal = Yg[2, ...] if "hessian_diagonal" in needs else None
                if "laplacian" in needs:
                    Q.laplacian = xp.sum(Yg[2, ...], axis=1)
            if Q.value is None:
                Q.value = Yg[0, :, 0, :]
        else:
            if Q.value is None:
                Q.value = Y[0, ...]
            if sw.spec.second:
                setattr(Q, "weighted_laplacian" if sw.weighted else "laplacian", Y[sw.row, ...])
        for q in names:
            if q not in needs:
                continue
            if sw.groups > 1 and q in ("hessian_diagonal", "laplacian"):
                if "hessian_diagonal" not in J:
                    Jd = _jacobian_of(B, _Sweep(sw.groups, sw.spec, 2), caches)
                    if "hessian_diagonal" in needs:
                        J["hessian_diagonal"] = Jd
                    if "laplacian" in needs:
                        J["laplacian"] = xp.sum(Jd, axis=1)
                continue
            row = {"value": 0, "gradient": 1}.get(q, sw.row)
            J[q] = _jacobian_of(B, _Sweep(sw.groups, sw.spec, row), caches)
    out = Quantities(**{f: (None if getattr(Q, f) is None else B.to_user(getattr(Q, f))) for f in QUANTITIES})
    for f in QUANTITIES:
        if f != "value" and f not in needs:
            setattr(out, f, None)
    return out, {q: B.to_user(J[q]) for q in needs}


def _quantity_shape(B: _Bound, quantity: str) -> tuple[int, ...]:
    n, d, m = B.x.shape[0], B.net.in_features, B.net.out_features
    return (n, d, m) if quantity in _PER_COORDINATE else (n, m)


def jvp(net, x, quantity: str, v, *, weights=None, backend=None):
    r"""Matrix-free :math:`J v`: the derivative of the quantity along the parameter direction ``v``.

    One forward sweep and one forward R-sweep over the streams
    (:meth:`~hessquik_core.layers.base.Layer.stream_rop`); ``J`` is never formed.

    Parameters
    ----------
    v : array of shape (P,)
        In :class:`~hessquik_core.curvature.ParameterLayout` order, ``x``'s library.
    net, x, quantity, weights, backend
        As for :func:`jacobian`.

    Returns
    -------
    array of shape (n, m) or (n, d, m)
        Like the quantity.
    """
    B, S, sw = _prepare(net, x, quantity, weights, backend)
    P = B.layout.size
    v = B.to_call(v, "v")
    if v.ndim != 1 or v.shape[0] != P:
        raise ValueError(f"v must have shape ({P},) (one parameter direction), got {tuple(v.shape)}")
    Y0 = _input_streams(B, sw, S)
    Vs = [
        {
            name: B.xp.reshape(
                v[B.layout.offsets[j] : B.layout.offsets[j] + B.layout.sizes[j]], B.layout.shapes[j]
            )
            for name, j in slots
        }
        for slots in B.slots
    ]
    Y = Y0
    RY: Any = None  # the input streams do not depend on the parameters
    for leaf, Pm, V in zip(B.leaves, B.params, Vs):
        Y, cache = leaf.stream_forward(Y, Pm, sw.spec, B.be)
        RY = leaf.stream_rop(cache, Pm, RY, V, B.be)
    return B.to_user(B.xp.reshape(RY[sw.row, ...], _quantity_shape(B, quantity)))


def _weighted_seed(B: _Bound, sw: _Sweep, quantity: str, w, name: str):
    shape = _quantity_shape(B, quantity)
    w = B.to_call(w, name)
    if tuple(w.shape) != shape:
        raise ValueError(
            f"{name} must have the shape of the quantity {quantity!r}, {shape}, got {tuple(w.shape)}"
        )
    N = B.x.shape[0] * sw.groups
    return _seed(B, sw, sw.row + 1, B.xp.reshape(w, (N, B.net.out_features)))


def vjp(net, x, quantity: str, w, *, weights=None, backend=None):
    r"""Matrix-free :math:`J^\top w = \sum_i J_i^\top w_i`.

    One forward sweep and one backward sweep seeded with ``w`` and summed over
    the points as it goes; ``J`` is never formed.

    Parameters
    ----------
    w : array of the quantity's shape, (n, m) or (n, d, m)
    net, x, quantity, weights, backend
        As for :func:`jacobian`.

    Returns
    -------
    array of shape (P,)
    """
    B, S, sw = _prepare(net, x, quantity, weights, backend)
    Ybar = _weighted_seed(B, sw, quantity, w, "w")
    _, caches = _forward(B, sw, S)
    outs = _backward(B, caches, Ybar, "sum")
    parts = [None] * len(B.layout.keys)
    for slots, g in zip(B.slots, outs):
        for name, j in slots:
            parts[j] = B.xp.reshape(g[name], (B.layout.sizes[j],))
    return B.to_user(B.xp.concat(parts, axis=0))


def kfac_factors(net, x, quantity: str = "laplacian", w=None, *, weights=None, backend=None) -> list:
    r"""Kronecker factors ("expand") of the Gramian of :math:`r_i = \langle w_i, q(x_i;\theta)\rangle`.

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
    w : array of the quantity's shape, optional
        The residual's coefficient per point and component; default ones.
    net, x, quantity, weights, backend
        As for :func:`jacobian`.

    Returns
    -------
    list of (A, B)
        One pair per affine block in layer order: ``A : (p+1, p+1)`` (``(p, p)``
        without bias), ``B : (q, q)``.
    """
    B_, S, sw = _prepare(net, x, quantity, weights, backend)
    shape = _quantity_shape(B_, quantity)
    if w is None:
        Ybar = _seed(
            B_,
            sw,
            sw.row + 1,
            B_.xp.ones((B_.x.shape[0] * sw.groups, B_.net.out_features), dtype=B_.dtype, device=B_.device),
        )
    else:
        Ybar = _weighted_seed(B_, sw, quantity, w, "w")
    del shape
    _, caches = _forward(B_, sw, S)
    outs = _backward(B_, caches, Ybar, "kfac")
    n = B_.x.shape[0]
    R = (sw.row + 1) * sw.groups
    res = []
    for pairs in outs:
        for A, G in pairs:
            res.append((B_.to_user(A / (n * R)), B_.to_user(G / n)))
    return res

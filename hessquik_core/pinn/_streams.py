r"""The machinery of :mod:`hessquik_core.pinn.jacobian`: the network bound to a call,
how each quantity is swept, the input streams, the two sweeps and the assembly of
per-point blocks into ``(N, c, P)``.

Shapes: ``n`` points, ``d`` inputs, ``m`` outputs, ``P`` parameters; a sweep has
``groups`` stream groups per point folded into the point axis (``N = n·groups``,
point-major) and streams ``(S, N, width)`` (:mod:`hessquik_core.rules.streams`).
"""

from __future__ import annotations

from dataclasses import dataclass

import array_api_compat as aac

from .._array import check_max_memory, resolve_input
from ..activations import Activation
from ..curvature.layout import _network, parameter_layout
from ..engine.plan import MemoryBudgetError
from ..layers.base import Layer
from ..rules.streams import StreamSpec, check_order

#: the quantities a per-point Jacobian is available for
QUANTITIES = ("value", "gradient", "laplacian", "hessian_diagonal", "weighted_laplacian")

#: quantities with a coordinate axis ``d`` after the point axis
PER_COORDINATE = ("gradient", "hessian_diagonal")

# --------------------------------------------------------------------------
# the network bound to a call
# --------------------------------------------------------------------------


class Bound:
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
class Sweep:
    """How a quantity is swept: ``groups`` stream groups per point (folded into
    the point axis), ``spec`` of each, and the stream row holding the quantity."""

    groups: int
    spec: StreamSpec
    row: int
    weighted: bool = False
    #: one group per input coordinate (gradient, Hessian diagonal): a ``d`` axis
    #: after the points in the results, even for ``d = 1``
    coord: bool = False


def sweep_of(quantity: str, d: int, r: int) -> Sweep:
    if quantity == "value":
        return Sweep(1, StreamSpec(0, False), 0)
    if quantity == "gradient":
        return Sweep(d, StreamSpec(1, False), 1, coord=True)
    if quantity == "hessian_diagonal":
        return Sweep(d, StreamSpec(1, True), 2, coord=True)
    if quantity == "laplacian":
        return Sweep(1, StreamSpec(d, True), 1 + d)
    return Sweep(1, StreamSpec(r, True), 1 + r, weighted=True)


def check_quantity(quantity) -> str:
    if not isinstance(quantity, str) or quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    return quantity


def weights_matrix(B: Bound, names, weights):
    """``S : (d, r)`` in the call's library when ``names`` (a name or a tuple of them)
    holds the weighted Laplacian, else ``None``."""
    d = B.net.in_features
    names = (names,) if isinstance(names, str) else tuple(names)
    if "weighted_laplacian" not in names:
        if weights is not None:
            asked = names[0] if len(names) == 1 else list(names)
            raise ValueError(
                f"weights (S of the weighted Laplacian) are only used by 'weighted_laplacian', not {asked!r}"
            )
        return None
    if weights is None:
        raise ValueError(f"quantity 'weighted_laplacian' needs weights = S of shape ({d}, r)")
    S = B.to_call(weights, "weights")
    if S.ndim != 2 or S.shape[0] != d or S.shape[1] < 1:
        raise ValueError(f"weights (S) must have shape ({d}, r) with r >= 1, got {tuple(S.shape)}")
    return S


def input_streams(B: Bound, sw: Sweep, S):
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


def forward(B: Bound, sw: Sweep, S):
    Y = input_streams(B, sw, S)
    caches = []
    for leaf, P in zip(B.leaves, B.params):
        Y, cache = leaf.stream_forward(Y, P, sw.spec, B.be)
        caches.append(cache)
    return Y, caches


def itemsize(dtype) -> int:
    return 4 if "32" in str(dtype) else 8


def check_memory(B: Bound, sw: Sweep, c: int, max_memory, count: int = 1) -> None:
    """Refuse a call whose result and streams cannot fit (before any work)."""
    n = B.x.shape[0]
    m, P = B.net.out_features, B.layout.size
    N = n * sw.groups
    item = itemsize(B.dtype)
    width = max([B.net.in_features] + [leaf.out_features for leaf in B.leaves])
    result = float(count) * n * c * m * P * item
    streams = 2.0 * len(B.leaves) * sw.spec.rows * N * width * item
    block = max(float(N) * m * leaf.in_features * leaf.out_features for leaf in B.leaves) * item
    need = result + streams + 2.0 * block
    checked = check_max_memory(max_memory)
    budget = 0.5 * float(B.be.available_memory(B.device)) if checked is None else checked
    if need > budget:
        raise MemoryBudgetError(
            f"the per-point Jacobian (n = {n}, {c} component(s) × {m} output(s) × P = {P} per point) needs "
            f"about {need / 2**20:.1f} MiB, more than the memory budget of {budget / 2**20:.1f} MiB; "
            "use the matrix-free products hessquik_core.pinn.jvp / vjp, fewer points per call, or raise max_memory"
        )


def seed(B: Bound, sw: Sweep, rows: int, w=None):
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


def backward(B: Bound, caches, Ybar, mode: str):
    """Run the adjoint sweep; returns per leaf the layer's ``out`` (see ``Layer.stream_vjp``)."""
    outs: list = [None] * len(B.leaves)
    for i in range(len(B.leaves) - 1, -1, -1):
        Ybar, outs[i] = B.leaves[i].stream_vjp(caches[i], B.params[i], Ybar, mode, i > 0, B.be)
    return outs


def assemble(B: Bound, outs, N: int, c: int):
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


def shape_out(B: Bound, sw: Sweep, J):
    """``(N, ...)`` with ``N = n·groups`` to ``(n, groups, ...)`` (per-coordinate) or ``(n, ...)``."""
    if not sw.coord:
        return J
    n = B.x.shape[0]
    return B.xp.reshape(J, (n, sw.groups, *J.shape[1:]))


def jacobian_of(B: Bound, sw: Sweep, caches):
    N = B.x.shape[0] * sw.groups
    m = B.net.out_features
    Ybar = seed(B, sw, sw.row + 1)
    outs = backward(B, caches, Ybar, "point")
    return shape_out(B, sw, assemble(B, outs, N, m))


def prepare(net, x, quantity, weights, backend):
    quantity = check_quantity(quantity)
    B = Bound(net, x, backend)
    S = weights_matrix(B, quantity, weights)
    sw = sweep_of(quantity, B.net.in_features, 0 if S is None else S.shape[1])
    B.check_supported(sw.spec)
    return B, S, sw


def quantity_shape(B: Bound, quantity: str) -> tuple[int, ...]:
    n, d, m = B.x.shape[0], B.net.in_features, B.net.out_features
    return (n, d, m) if quantity in PER_COORDINATE else (n, m)


def weighted_seed(B: Bound, sw: Sweep, quantity: str, w, name: str):
    shape = quantity_shape(B, quantity)
    w = B.to_call(w, name)
    if tuple(w.shape) != shape:
        raise ValueError(
            f"{name} must have the shape of the quantity {quantity!r}, {shape}, got {tuple(w.shape)}"
        )
    N = B.x.shape[0] * sw.groups
    return seed(B, sw, sw.row + 1, B.xp.reshape(w, (N, B.net.out_features)))


# --------------------------------------------------------------------------
# several quantities in one sweep (a residual combining them)
# --------------------------------------------------------------------------


def names_of(quantity) -> tuple[str, ...]:
    """``quantity`` (a name, or a sequence / mapping of names) as a tuple of checked names."""
    if isinstance(quantity, str):
        return (check_quantity(quantity),)
    try:
        names = tuple(quantity)
    except TypeError:
        raise ValueError(
            f"quantity must be one of {QUANTITIES} or a collection of them, got {quantity!r}"
        ) from None
    if not names:
        raise ValueError(f"quantity must name at least one of {QUANTITIES}")
    return tuple(dict.fromkeys(check_quantity(q) for q in names))


def combined_sweep(names: tuple[str, ...], d: int, r: int) -> Sweep:
    """The one sweep that carries every quantity of ``names``: per-coordinate groups
    when a gradient or Hessian diagonal is among them (the Laplacian is then the sum of
    the diagonal rows), else the Laplacian's or the weighted Laplacian's streams."""
    got = set(names)
    if "weighted_laplacian" in got:
        if got - {"value", "weighted_laplacian"}:
            raise ValueError(
                "'weighted_laplacian' combines only with 'value' in one sweep (its tangents are the "
                f"columns of S), got {sorted(got)}"
            )
        return sweep_of("weighted_laplacian", d, r)
    if got & set(PER_COORDINATE):
        second = bool(got & {"hessian_diagonal", "laplacian"})
        return Sweep(d, StreamSpec(1, second), 2 if second else 1, coord=True)
    if "laplacian" in got:
        return sweep_of("laplacian", d, 0)
    return sweep_of("value", d, 0)


def prepare_many(net, x, quantity, weights, backend):
    """``(B, S, sweep, names)`` for one or several quantities swept together."""
    names = names_of(quantity)
    B = Bound(net, x, backend)
    S = weights_matrix(B, names, weights)
    sw = combined_sweep(names, B.net.in_features, 0 if S is None else S.shape[1])
    B.check_supported(sw.spec)
    return B, S, sw, names


def row_of(sw: Sweep, name: str) -> int:
    """The stream row that holds ``name`` in the sweep ``sw``."""
    return {"value": 0, "gradient": 1}.get(name, sw.row)


def combined_seed(B: Bound, sw: Sweep, ws: dict, what: str):
    """Output adjoints ``(1, sw.row + 1, N, m)`` of :math:`\\sum_q \\langle w_q, q\\rangle`
    (``ws``: name -> weights of the quantity's shape, ``None`` for ones)."""
    xp = B.xp
    n, m, g = B.x.shape[0], B.net.out_features, sw.groups
    N = n * g
    dt, dev = B.dtype, B.device
    rows: list = [None] * (sw.row + 1)
    for name, w in ws.items():
        shape = quantity_shape(B, name)
        if w is None:
            w = xp.ones(shape, dtype=dt, device=dev)
        else:
            w = B.to_call(w, f"{what}[{name!r}]" if len(ws) > 1 else what)
            if tuple(w.shape) != shape:
                label = f"{what}[{name!r}]" if len(ws) > 1 else what
                raise ValueError(
                    f"{label} must have the shape of the quantity {name!r}, {shape}, got {tuple(w.shape)}"
                )
        if name in PER_COORDINATE:
            w = xp.reshape(w, (N, m))
        elif g > 1 and name == "value":  # the value of group 0 only: it is the same in every group
            w = xp.reshape(
                xp.concat([w[:, None, :], xp.zeros((n, g - 1, m), dtype=dt, device=dev)], axis=1), (N, m)
            )
        elif g > 1:  # the Laplacian: the sum of the diagonal rows of all groups
            w = xp.reshape(xp.broadcast_to(w[:, None, :], (n, g, m)), (N, m))
        j = row_of(sw, name)
        rows[j] = w if rows[j] is None else rows[j] + w
    zero = xp.zeros((N, m), dtype=dt, device=dev)
    return xp.stack([zero if r is None else r for r in rows], axis=0)[None, ...]


def combined_values(B: Bound, sw: Sweep, RY, names: tuple[str, ...]) -> dict:
    """The quantities ``names`` read off the last streams ``RY : (S, N, m)`` of ``sw``
    (values, or their R-derivatives), in their shapes."""
    xp = B.xp
    n, m, g = B.x.shape[0], B.net.out_features, sw.groups
    out = {}
    for name in names:
        a = RY[row_of(sw, name), ...]
        if name in PER_COORDINATE:
            out[name] = xp.reshape(a, (n, g, m))
        elif g > 1 and name == "value":
            out[name] = xp.reshape(a, (n, g, m))[:, 0, :]
        elif g > 1:
            out[name] = xp.sum(xp.reshape(a, (n, g, m)), axis=1)
        else:
            out[name] = a
    return out

"""The bi-Laplacian's sweeps for :mod:`hessquik_core.pinn.jacobian`: forward, adjoint and
R-passes over the streams of :mod:`hessquik_core.pinn._streams_bh`, the seeds, and the
bodies of the public functions for ``quantity="biharmonic"`` (kept here so that
``jacobian.py`` only dispatches)."""

from __future__ import annotations

from collections.abc import Mapping

from ..rules.streams import StreamSpec
from ._streams import QUANTITIES, Bound, Sweep, assemble, check_memory, quantity_shape
from ._streams_bh import check_supported, input_streams, layer_forward, layer_rop, layer_vjp, rows

# --------------------------------------------------------------------------
# the sweeps (the network bound to a call: hessquik_core.pinn._streams.Bound)
# --------------------------------------------------------------------------

#: the quantities the bi-Laplacian sweep carries (rows of its output streams)
CARRIED = ("value", "gradient", "laplacian", "hessian_diagonal", "biharmonic")


def row_index(name: str, d: int):
    """The rows of the output streams holding ``name`` (an int, or a list of ``d`` rows)."""
    if name == "value":
        return 0
    if name == "gradient":
        return list(range(1, 1 + d))
    if name == "hessian_diagonal":
        return [1 + d + i * d + i for i in range(d)]
    if name == "laplacian":
        return 1 + 2 * d + d * d
    return 2 + 2 * d + d * d


def forward(B):
    """Output streams ``(S, n, m)`` and the per-layer caches."""
    check_supported(B.leaves)
    d = B.net.in_features
    Y = input_streams(B.x, B.xp, B.device)
    caches = []
    for leaf, P in zip(B.leaves, B.params):
        Y, cache = layer_forward(leaf, Y, P, d, B.be)
        caches.append(cache)
    return Y, caches


def backward(B, caches, Ybar, mode: str) -> list:
    outs: list = [None] * len(B.leaves)
    for i in range(len(B.leaves) - 1, -1, -1):
        Ybar, outs[i] = layer_vjp(B.leaves[i], caches[i], B.params[i], Ybar, mode, i > 0, B.be)
    return outs


def seed(B, ws: dict):
    """Output adjoints ``(1, S, n, m)`` of :math:`\\sum_q \\langle w_q, q\\rangle` (``ws``:
    name -> weights of the quantity's shape, already in the call's library)."""
    xp = B.xp
    n, d, m = B.x.shape[0], B.net.in_features, B.net.out_features
    rows_: list = [None] * rows(d)
    for name, w in ws.items():
        r = row_index(name, d)
        pairs = [(r, w)] if isinstance(r, int) else [(j, w[:, i, :]) for i, j in enumerate(r)]
        for j, wj in pairs:
            rows_[j] = wj if rows_[j] is None else rows_[j] + wj
    zero = xp.zeros((n, m), dtype=B.dtype, device=B.device)
    return xp.stack([zero if r is None else r for r in rows_], axis=0)[None, ...]


def jacobian(B):
    """``(n, m, P)`` of :math:`\\Delta^2 u` and the output streams ``(S, n, m)``."""
    Y, caches = forward(B)
    xp = B.xp
    n, d, m = B.x.shape[0], B.net.in_features, B.net.out_features
    eye = xp.eye(m, dtype=B.dtype, device=B.device)
    hot = xp.broadcast_to(eye[:, None, None, :], (m, 1, n, m))
    Ybar = xp.concat([xp.zeros((m, rows(d) - 1, n, m), dtype=B.dtype, device=B.device), hot], axis=1)
    outs = backward(B, caches, Ybar, "point")
    return assemble(B, outs, n, m), Y


def values(B, Y, names) -> dict:
    """The quantities ``names`` read off output streams (or their R-derivatives) ``Y : (S, n, m)``."""
    xp = B.xp
    d = B.net.in_features
    out = {}
    for name in names:
        r = row_index(name, d)
        out[name] = Y[r, ...] if isinstance(r, int) else xp.stack([Y[j, ...] for j in r], axis=1)
    return out


def rop(B, Vs):
    """The R-pass: output streams' derivative along the parameter direction ``Vs`` (per leaf)."""
    check_supported(B.leaves)
    d = B.net.in_features
    Y = input_streams(B.x, B.xp, B.device)
    RY = None
    for leaf, P, V in zip(B.leaves, B.params, Vs):
        Y, cache = layer_forward(leaf, Y, P, d, B.be)
        RY = layer_rop(leaf, cache, P, RY, V, B.be)
    return RY


# --------------------------------------------------------------------------
# the bi-Laplacian's sweep (layers declaring affine structure)
# --------------------------------------------------------------------------


def bound(net, x, weights, backend, max_memory, c: int = 1) -> Bound:
    """The network bound to a bi-Laplacian call, refused before any work when a layer,
    an activation, ``weights`` or the memory budget do not allow it."""
    B = Bound(net, x, backend)
    if weights is not None:
        raise ValueError("weights (S of the weighted Laplacian) are not used by 'biharmonic'")
    check_supported(B.leaves)
    r = rows(B.net.in_features)
    check_memory(B, Sweep(1, StreamSpec(r - 2, True), r - 1), c, max_memory)
    return B


def names_of(quantity) -> tuple[str, ...] | None:
    """The names of ``quantity`` (a name or a collection) when the bi-Laplacian is among
    them, else ``None``; refuses one the bi-Laplacian's sweep does not carry."""
    if isinstance(quantity, str):
        names: tuple = (quantity,)
    elif isinstance(quantity, (tuple, list, Mapping)):
        names = tuple(quantity)
    else:
        return None
    if "biharmonic" not in names:
        return None
    bad = [q for q in names if q not in CARRIED]
    if bad:
        raise ValueError(f"'biharmonic' combines in one sweep only with {CARRIED[:-1]}, got {bad}")
    return tuple(dict.fromkeys(names))


def param_direction(B: Bound, v) -> list:
    """``v : (P,)`` as per-leaf dicts of local parameter blocks."""
    P = B.layout.size
    v = B.to_call(v, "v")
    if v.ndim != 1 or v.shape[0] != P:
        raise ValueError(f"v must have shape ({P},) (one parameter direction), got {tuple(v.shape)}")
    lay = B.layout
    return [
        {
            name: B.xp.reshape(v[lay.offsets[j] : lay.offsets[j] + lay.sizes[j]], lay.shapes[j])
            for name, j in slots
        }
        for slots in B.slots
    ]


def weights_of(B: Bound, ws: dict, what: str) -> dict:
    xp = B.xp
    out = {}
    for name, w in ws.items():
        shape = quantity_shape(B, name)
        label = f"{what}[{name!r}]" if len(ws) > 1 else what
        if w is None:
            w = xp.ones(shape, dtype=B.dtype, device=B.device)
        else:
            w = B.to_call(w, label)
            if tuple(w.shape) != shape:
                raise ValueError(
                    f"{label} must have the shape of the quantity {name!r}, {shape}, got {tuple(w.shape)}"
                )
        out[name] = w
    return out


# --------------------------------------------------------------------------
# the public functions' bodies for the bi-Laplacian
# --------------------------------------------------------------------------


def run_jvp(net, x, quantity, names, v, weights, backend):
    """:math:`Jv` of ``names`` (carried by the bi-Laplacian's streams) by one R-pass."""
    B = bound(net, x, weights, backend, float("inf"))
    RY = rop(B, param_direction(B, v))
    out = {k: B.to_user(a) for k, a in values(B, RY, names).items()}
    return out[names[0]] if isinstance(quantity, str) else out


def run_vjp(net, x, quantity, ws: dict, weights, backend):
    r""":math:`\sum_q J_q^\top w_q` by one forward and one backward sweep summed over the points."""
    B = bound(net, x, weights, backend, float("inf"))
    Ybar = seed(B, weights_of(B, ws, "w" if isinstance(quantity, str) else "vjp"))
    _, caches = forward(B)
    outs = backward(B, caches, Ybar, "sum")
    parts: list = [None] * len(B.layout.keys)
    for slots, g in zip(B.slots, outs):
        for name, j in slots:
            parts[j] = B.xp.reshape(g[name], (B.layout.sizes[j],))
    return B.to_user(B.xp.concat(parts, axis=0))


def run_quantities(net, x, needs, weights, backend, max_memory, rest_of, Quantities):
    """:func:`~hessquik_core.pinn.quantities_and_jacobians` with ``"biharmonic"`` among
    ``needs``: the bi-Laplacian's own sweep, the other quantities by ``rest_of`` (the
    function itself, called on the rest)."""
    rest = tuple(q for q in needs if q != "biharmonic")
    B = bound(net, x, None, backend, max_memory)
    Jb, Y = jacobian(B)
    if rest:
        Q, J = rest_of(net, x, rest, weights=weights, backend=backend, max_memory=max_memory)
    else:
        if weights is not None:
            raise ValueError("weights (S of the weighted Laplacian) are not used by 'biharmonic'")
        Q, J = Quantities(value=B.to_user(Y[0, ...])), {}
    Q.biharmonic = B.to_user(Y[-1, ...])
    J["biharmonic"] = B.to_user(Jb)
    return Q, {q: J[q] for q in dict.fromkeys(needs)}


def weight_map(quantity, w, what: str, required: bool) -> dict:
    """``{name: w}`` from ``(quantity, w)``: a name and its weights, or a mapping."""
    if isinstance(quantity, str):
        if required and w is None:
            raise ValueError(f"{what} needs w, of the shape of the quantity {quantity!r}")
        return {quantity: w}
    if not isinstance(quantity, Mapping):
        known = (*QUANTITIES, "biharmonic", "directional", "pure_partial")
        raise ValueError(f"quantity must be one of {known} or a mapping of them to weights, got {quantity!r}")
    if w is not None:
        raise ValueError(
            "with a mapping of quantities to weights, w must be None (the weights are in the mapping)"
        )
    return dict(quantity)

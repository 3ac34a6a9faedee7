r"""Input derivatives beyond second order, exact and without automatic
differentiation: the bi-Laplacian :math:`\Delta^2 u`, third and fourth
directional derivatives :math:`\partial^k u[v, …, v]` and the pure partials
:math:`\partial^k u / \partial x_i^k`.

Each function runs its own forward sweep over the network's layers with a
carry of higher order (:mod:`hessquik_core.rules.taylor`):

* :func:`biharmonic` carries, per feature, :math:`\nabla u` (``d``), the
  packed Hessian (``d(d+1)/2``), :math:`\nabla\Delta u` (``d``), :math:`\Delta u`
  and :math:`\Delta^2 u`: with the value, :math:`d(d+1)/2 + 2d + 3` numbers go
  through each weight matrix against the forward Laplacian's ``d + 2`` — about
  2.5× its GEMM work at ``d = 2``, 4× at ``d = 5``, 6.5× at ``d = 10``
  (growing like ``d/2``). Never an ``(n, d, d, d, d)`` array; the largest
  temporary is one layer's unpacked ``(n, d, d, q)`` Hessian.
* :func:`taylor_derivatives` carries the ``K`` directional derivatives along
  ``k`` directions, ``K·k`` numbers per feature (Taylor mode, in derivatives).

Supported layers (``hessquik_core.engine.higher_steps``): every built-in layer —
:class:`~hessquik_core.SingleLayer`, :class:`~hessquik_core.ResnetLayer`,
:class:`~hessquik_core.ICNNLayer`, :class:`~hessquik_core.QuadraticLayer`,
:class:`~hessquik_core.QuadraticICNNLayer`, :class:`~hessquik_core.FourierFeatures`,
:class:`~hessquik_core.PeriodicEmbedding`, :class:`~hessquik_core.GatedMLP` (its
gate is a product of two features: the Leibniz rule
:func:`~hessquik_core.rules.taylor.biharmonic_mul`),
:class:`~hessquik_core.GatedResidual` and :class:`~hessquik_core.LayerNorm`
(centring, a sum of squares, :math:`s^{-1/2}` and a product) — and any layer
declaring its affine structure :math:`[u +]\,h\,\sigma(uM + b)`
(``affine_structure``); nested networks are flattened. Any other layer is
refused by name, as is an activation that cannot supply the derivative order
a request needs (:attr:`~hessquik_core.activations.Activation.max_order`).

Every result is an ordinary array expression of the weights in ``x``'s
library, dtype and device, so a loss built from it trains with torch
autograd; where the per-point parameter Jacobians exist (layers declaring affine
structure: dense, residual, SIREN, Fourier features; activations with
:math:`\sigma^{(k+1)}`) the weight gradient is analytic: one
custom-gradient function whose backward is the streams' adjoint
(``pinn/_streams_bh_train.py``, ``pinn/_streams_taylor_train.py``). The bi-Laplacian is also a flag of the network call,
``net(x, biharmonic=True)`` (the route :mod:`hessquik_core.engine.routes.higher`;
:func:`biharmonic` without ``full`` calls it); the directional derivatives and
pure partials are functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import array_api_compat as aac

from ._array import as_batch, as_plain_array, namespace_of, resolve_input
from .engine import higher_steps as S
from .pinn import _streams_bh_train  # noqa: F401 - installs the analytic weight gradient of the flag's route
from .pinn import _streams_taylor_train as _taylor_train
from .rules import taylor as T

if TYPE_CHECKING:
    from .networks import NN

__all__ = ["BiharmonicResult", "biharmonic", "pure_partials", "taylor_derivatives"]


#: the nonlinear rules of one carry (``hessquik_core.engine.higher_steps.Rule``)
_Rule = S.Rule


#: target working set (bytes) of one row block of a sweep: larger batches run in
#: row blocks (the rows are independent), so the carries never exceed it by much
CHUNK_BYTES = 2**29


def _sweep(net, x, backend, seed: Callable, rule: Callable, order: int, what: str, width: int):
    """Push a carry from the input through every layer.

    ``seed(xp, dtype, device) -> carry``, ``rule(xp, dtype, device) -> _Rule``,
    ``width``: the numbers carried per feature (for the row-block size).
    Returns ``(inp, value, carry)``: the resolved input (for converting results
    back), the network value ``(n, m)`` and the carry of the output. A single
    point ``x : (d,)`` runs as a batch of one (``inp.single``); a batch whose
    carries would exceed :data:`CHUNK_BYTES` runs in row blocks."""
    single = getattr(x, "ndim", None) == 1
    if single:
        x = as_batch(x, net.in_features)
    leaves = list(net._leaves())
    for leaf in leaves:  # refuse up front, before any work
        S.check_leaf(leaf, order, what)
    inp = resolve_input(net, x, backend)
    xp, be, xc = inp.xp, inp.be, inp.x
    dev = aac.device(xc)
    key = inp.cache_key
    params = [leaf._eval_params(key, be, xp, xc.dtype, dev) for leaf in leaves]
    r = rule(xp, xc.dtype, dev)
    q = max([net.in_features, *(w for leaf in leaves for shape in leaf.cost_shapes for w in shape)])
    # the carries, their products through the weights and the rule's temporaries
    per_row = 4 * width * q * (2 if "32" in str(xc.dtype) else 8)
    n = xc.shape[0]
    rows = max(1, CHUNK_BYTES // per_row)
    parts = []
    for i in range(0, max(n, 1), rows):
        parts.append(
            S.sweep(leaves, params, xc[i : min(i + rows, n), ...], seed(xp, xc.dtype, dev), r, order, be)
        )
    if len(parts) == 1:
        return _Input(inp, single), *parts[0]
    u = xp.concat([p[0] for p in parts], axis=0)
    fields: list = []
    for j in range(len(parts[0][1])):
        col = [p[1][j] for p in parts]
        if all(a is None for a in col):
            fields.append(None)
            continue
        like = next(a for a in col if a is not None)
        blocks = []
        for (uk, _), a in zip(parts, col):
            shape = (uk.shape[0], *like.shape[1:])
            blocks.append(_full(a, shape, xp, uk))
        fields.append(xp.concat(blocks, axis=0))
    return _Input(inp, single), u, tuple(fields)


def _full(a, shape, xp, like):
    """``a`` broadcast to ``shape`` (zeros where the field is identically zero)."""
    if a is None:
        return xp.zeros(shape, dtype=like.dtype, device=aac.device(like))
    return a if tuple(a.shape) == tuple(shape) else xp.broadcast_to(a, shape)


@dataclass(frozen=True)
class _Input:
    ctx: Any  # the resolved input (hessquik_core._array.InputContext)
    single: bool  # x was one point (d,): results drop the batch axis

    @property
    def xp(self):
        return self.ctx.xp


def _back(inp: _Input, a):
    """A result in the caller's library (the call may have run in another
    backend's), without the batch axis for a single point."""
    ctx = inp.ctx
    if ctx.converted:
        be = ctx.user_be
        dt = getattr(be.xp, str(a.dtype).split(".")[-1])
        a = be.convert(a, xp=be.xp, dtype=dt, device=aac.device(ctx.orig_x))
    return a[0, ...] if inp.single else a


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------


@dataclass
class BiharmonicResult:
    """Everything the bi-Laplacian sweep carries to the output.

    Attributes
    ----------
    value : (n, m)
    gradient : (n, d, m)
    laplacian : (n, m)
    laplacian_gradient : (n, d, m)
        :math:`\\nabla \\Delta u`.
    biharmonic : (n, m)
        :math:`\\Delta^2 u = \\sum_{ij} \\partial_i^2 \\partial_j^2 u`.
    """

    value: Any
    gradient: Any
    laplacian: Any
    laplacian_gradient: Any
    biharmonic: Any


def biharmonic(net: NN, x: Any, *, full: bool = False, backend: str | None = None) -> Any:
    r"""Exact bi-Laplacian :math:`\Delta^2 u = \sum_{i,j} \partial_i^2 \partial_j^2 u` of every output.

    One forward sweep carries :math:`(\nabla u, \nabla^2 u, \nabla\Delta u, \Delta u, \Delta^2 u)`
    of every feature through :math:`f = \sigma(uK + b)` by

    .. math::
        \Delta^2 f = \sigma'''' |\nabla z|^4 + 2\sigma''' \Delta z |\nabla z|^2
        + 4\sigma''' \nabla z^\top \nabla^2 z \nabla z
        + \sigma''(2\|\nabla^2 z\|_F^2 + 4 \nabla z\cdot\nabla\Delta z + (\Delta z)^2)
        + \sigma' \Delta^2 z

    (:mod:`hessquik_core.rules.taylor`); residual layers add the identity path.
    Cost: :math:`d(d+1)/2 + 2d + 3` carried numbers per feature, value
    included (the forward Laplacian carries ``d + 2``); no array of size
    :math:`d^3` or :math:`d^4`.

    Parameters
    ----------
    net : NN
        Of the layer types listed in :mod:`hessquik_core.higher`, with
        activations supplying :math:`\sigma''''` (``act.max_order >= 4``).
    x : array (n, d), or one point (d,)
        A single point gives results without the batch axis.
    full : bool
        Return a :class:`BiharmonicResult` (value, gradient, Laplacian,
        :math:`\nabla\Delta u` and :math:`\Delta^2 u`, all from the same sweep)
        instead of the bi-Laplacian alone.
    backend : optional, as in :meth:`~hessquik_core.NN.__call__`.

    Returns
    -------
    array (n, m), or BiharmonicResult
        In ``x``'s library, dtype and device.

    Raises
    ------
    TypeError
        A layer type without an order-4 rule (named).
    ValueError
        An activation without :math:`\sigma''''` (named), or a bad ``x``.
    """
    if not full:  # the call flag's route (hessquik_core.engine.routes.higher)
        return net(x, biharmonic=True, backend=backend).biharmonic
    d = net.in_features

    def seed(xp, dtype, dev):
        return T.biharmonic_seed(d, xp, dtype, dev)

    def rule(xp, dtype, dev):
        return S.biharmonic_rule(d, xp, dtype, dev)

    inp, u, (g, _, gL, L, B) = _sweep(net, x, backend, seed, rule, 4, "biharmonic", S.biharmonic_width(d))
    xp = inp.xp
    n, m = u.shape
    B = _full(B, (n, m), xp, u)
    fields = (u, _full(g, (n, d, m), xp, u), _full(L, (n, m), xp, u), _full(gL, (n, d, m), xp, u), B)
    return BiharmonicResult(*(_back(inp, a) for a in fields))


def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"order must be an integer from 1 to 4, got {order!r}")
    return order


def taylor_derivatives(net: NN, x: Any, directions: Any, order: int, *, backend: str | None = None) -> tuple:
    r"""Directional derivatives :math:`\partial^j u[v, …, v] = \frac{d^j}{dt^j} u(x + tv)\big|_{t=0}`,
    ``j = 1 … order``, along every column ``v`` of ``directions``.

    Taylor mode in derivatives: each layer maps the ``order`` derivatives of
    :math:`z = uK + b` to those of :math:`\sigma(z)` by Faà di Bruno, e.g.
    :math:`f_3 = \sigma' z_3 + 3\sigma'' z_1 z_2 + \sigma''' z_1^3`
    (:mod:`hessquik_core.rules.taylor`). Cost: ``order · k`` carried numbers
    per feature.

    Parameters
    ----------
    net : NN
        Activations supplying ``order`` derivatives (``act.max_order >= order``).
    x : array (n, d), or one point (d,)
        A single point gives results without the batch axis.
    directions : array (d, k)
        Same library as ``x`` or NumPy; need not be normalised (the result is
        homogeneous of degree ``j`` in ``v``).
    order : int, 1 to 4
    backend : optional, as in :meth:`~hessquik_core.NN.__call__`.

    Returns
    -------
    tuple of ``order`` arrays (n, k, m)
        Entry ``j - 1`` is :math:`\partial^j u[v_c, …, v_c]` for column ``c``;
        in ``x``'s library, dtype and device.
    """
    order = _check_order(order)
    d = net.in_features
    directions = as_plain_array(directions, "directions")
    namespace_of(directions, "directions")
    if directions.ndim != 2 or directions.shape[0] != d or directions.shape[1] < 1:
        raise ValueError(
            f"directions must have shape ({d}, k) with k >= 1 (one direction per column), "
            f"got shape {tuple(directions.shape)}"
        )

    def seed(xp, dtype, dev):
        V = xp.asarray(_to(directions, xp), dtype=dtype, device=dev)
        return T.taylor_seed(V, order)

    def compute() -> tuple:
        inp, u, c = _sweep(
            net,
            x,
            backend,
            seed,
            lambda *_: _Rule(T.taylor_act, T.taylor_mul),
            order,
            "taylor_derivatives",
            order * directions.shape[1] + 1,
        )
        n, m = u.shape
        k = directions.shape[1]
        return tuple(_back(inp, _full(a, (n, k, m), inp.xp, u)) for a in c)

    # torch training: the analytic weight gradient where it applies (pinn/_streams_taylor_train)
    recorded = _taylor_train.run(net, x, directions, order, backend, compute)
    return compute() if recorded is None else recorded


def _to(a, xp):
    """``a`` (any supported library) as an array ``xp.asarray`` accepts."""
    from .backends import owner_of, to_numpy

    # the host interchange format (NumPy) is accepted by every namespace's asarray
    if aac.array_namespace(a) is xp or owner_of(a).interchange:
        return a

    return to_numpy(a)


def pure_partials(net: NN, x: Any, coords: Sequence[int], order: int, *, backend: str | None = None) -> Any:
    r"""Pure partial derivatives :math:`\partial^k u / \partial x_i^k` for the coordinates ``i`` in ``coords``.

    The directional derivatives of :func:`taylor_derivatives` along the unit
    vectors :math:`e_i` (KdV's :math:`u_{xxx}`: ``coords=[1], order=3`` for
    inputs ``(t, x)``; Kuramoto–Sivashinsky's :math:`u_{xxxx}`: ``order=4``).

    Parameters
    ----------
    net : NN
    x : array (n, d), or one point (d,)
    coords : sequence of int
        Coordinates in ``0 … d-1`` (repeats allowed).
    order : int, 1 to 4
    backend : optional

    Returns
    -------
    array (n, len(coords), m)
    """
    import numpy as np

    d = net.in_features
    if isinstance(coords, (int, np.integer)) or not isinstance(coords, Sequence) or len(coords) == 0:
        raise ValueError(f"coords must be a non-empty sequence of coordinates in 0..{d - 1}, got {coords!r}")
    for i in coords:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < d:
            raise ValueError(f"coords must hold integers in 0..{d - 1}, got {coords!r}")
    x = as_plain_array(x, "x")
    dtype = np.dtype(str(getattr(x, "dtype", "float64")).split(".")[-1])
    V = np.eye(d, dtype=dtype if dtype.kind == "f" else np.float64)[:, list(coords)]
    return taylor_derivatives(net, x, V, order, backend=backend)[-1]

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

Supported layers: :class:`~hessquik_core.SingleLayer`,
:class:`~hessquik_core.ResnetLayer`, :class:`~hessquik_core.ICNNLayer`,
:class:`~hessquik_core.QuadraticLayer`, :class:`~hessquik_core.QuadraticICNNLayer`,
``FourierFeatures`` and ``PeriodicEmbedding`` (nested networks are flattened);
any other layer (the gated and normalisation layers, which have no structured
rule of order 3 or 4 yet) is refused by name, as is an
activation that cannot supply the derivative order a request needs
(:attr:`~hessquik_core.activations.Activation.max_order`).

Every result is an ordinary array expression of the weights in ``x``'s
library, dtype and device, so a loss built from it trains with torch
autograd. These are functions, not yet flags of the network call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import array_api_compat as aac

from ._array import as_plain_array, namespace_of, resolve_input
from .rules import taylor as T

if TYPE_CHECKING:
    from .networks import NN

__all__ = ["BiharmonicResult", "biharmonic", "pure_partials", "taylor_derivatives"]


# --------------------------------------------------------------------------
# one step per layer type: (leaf, params, u, carry, act, order, ops) -> (f, carry)
# --------------------------------------------------------------------------


def _affine(leaf, P, u, c, act, order, ops, M, h=None):
    """:math:`h\\,\\sigma(uM + b)` and its carry (``h = None``: no scaling)."""
    z = u @ M
    if P.get("b") is not None:
        z = z + P["b"]
    if leaf.act.name == "identity":  # linear: the carry maps through M alone
        return (z, T.linear(c, M)) if h is None else (h * z, T.scale(T.linear(c, M), h))
    s = leaf.act.derivatives(z, order, xp=ops.xp)
    if h is not None:
        s = tuple(h * a for a in s)
    return s[0], act(T.linear(c, M), s[1:])


def _dense(leaf, P, u, c, act, order, ops):
    return _affine(leaf, P, u, c, act, order, ops, P["K"])


def _resnet(leaf, P, u, c, act, order, ops):
    # f = u + h σ(uK + b): the identity path adds the incoming carry
    f, cf = _affine(leaf, P, u, c, act, order, ops, P["K"], h=leaf.h)
    return u + f, T.add(c, cf)


def _icnn(leaf, P, u, c, act, order, ops):
    # f = [σ(u M + b), x] with M = [softplus(L); K]; x = u[:, n_in:] passes through
    xp = ops.xp
    f, cf = _affine(leaf, P, u, c, act, order, ops, leaf._M(P, xp))
    s = leaf.n_in
    return xp.concat([f, u[:, s:]], axis=-1), T.concat(cf, T.columns(c, s), xp)


def _pointwise_trig(leaf, P, u, c, act, order, ops):
    # φ(uK) with per-column φ: sin, cos (FourierFeatures) or cos, sin, identity
    # (PeriodicEmbedding). The layer supplies y = φ(z), φ'(z) and K; on the
    # trigonometric columns φ'' = -φ, φ''' = -φ', φ'''' = φ, on the identity
    # columns all three vanish
    xp = ops.xp
    y, cache = leaf.evaluate(u, P, 1, ops)
    s1, K = cache.dsigma, cache.K
    q = y.shape[-1]
    trig = 2 * len(leaf.periods) if hasattr(leaf, "periods") else q
    ym, s1m = y, s1
    if trig < q:
        dev = aac.device(y)
        ones = xp.ones((trig,), dtype=y.dtype, device=dev)
        mask = xp.concat([ones, xp.zeros((q - trig,), dtype=y.dtype, device=dev)])
        ym, s1m = y * mask, s1 * mask
    return y, act(T.linear(c, K), (s1, -ym, -s1m, ym)[:order])


def _quadratic(leaf, P, u, c, act, order, ops):
    # f = u c + ½|y Aᵀ|² + μ, y = u[:, s:]: a linear part plus Σ_r of the
    # quadratic activation ½t² (σ' = t, σ'' = 1, higher zero) of t = y Aᵀ
    xp = ops.xp
    lin = leaf._lin(P, xp)
    At = xp.matrix_transpose(P["A"])
    s = leaf._start
    t = u[:, s:] @ At
    f = u @ lin + 0.5 * xp.sum(t * t, axis=-1) + P["mu"]
    derivs = (t, xp.ones_like(t), None, None)[:order]
    quad = T.sum_features(act(T.linear(T.columns(c, s), At), derivs), xp)
    return f[:, None], T.add(T.linear(c, lin[:, None]), quad)


def _steps() -> dict[type, tuple[Callable, bool]]:
    """Layer class -> (step, whether it calls ``leaf.act``). Exact classes: a
    subclass may change the maths, so it is refused until registered."""
    from .layers import ICNNLayer, QuadraticICNNLayer, QuadraticLayer, ResnetLayer, SingleLayer
    from .layers.fourier import FourierFeatures, PeriodicEmbedding

    return {
        SingleLayer: (_dense, True),
        ResnetLayer: (_resnet, True),
        ICNNLayer: (_icnn, True),
        QuadraticLayer: (_quadratic, False),
        QuadraticICNNLayer: (_quadratic, False),
        FourierFeatures: (_pointwise_trig, False),
        PeriodicEmbedding: (_pointwise_trig, False),
    }


def _check_network(net, order: int, what: str) -> list:
    """The leaves, after refusing up front any layer without a rule and any
    activation that cannot supply ``order`` derivatives."""
    steps = _steps()
    leaves = list(net._leaves())
    for leaf in leaves:
        entry = steps.get(type(leaf))
        if entry is None:
            names = ", ".join(sorted(cls.__name__ for cls in steps))
            raise TypeError(
                f"{what}: no rule of order {order} for layer type {type(leaf).__name__} (supported: {names})"
            )
        act = getattr(leaf, "act", None)
        if entry[1] and act is not None and act.name != "identity" and act.max_order < order:
            raise ValueError(
                f"{what} needs derivatives of order {order} of every activation; activation "
                f"{act.name!r} ({type(act).__name__}) of layer {type(leaf).__name__} supplies up to order {act.max_order}"
            )
    return leaves


def _sweep(net, x, backend, seed: Callable, act: Callable, order: int, what: str):
    """Push a carry from the input through every layer.

    Returns ``(inp, value, carry)``: the resolved input (for converting results
    back), the network value ``(n, m)`` and the carry of the output."""
    leaves = _check_network(net, order, what)
    inp = resolve_input(net, x, backend)
    xp, be, xc = inp.xp, inp.be, inp.x
    dev = aac.device(xc)
    key = inp.cache_key
    params = [leaf._eval_params(key, be, xp, xc.dtype, dev) for leaf in leaves]
    steps = _steps()
    u, c = xc, seed(xp, xc.dtype, dev)
    for leaf, P in zip(leaves, params):
        u, c = steps[type(leaf)][0](leaf, P, u, c, act, order, be)
    return inp, u, c


def _full(a, shape, xp, like):
    """``a`` broadcast to ``shape`` (zeros where the field is identically zero)."""
    if a is None:
        return xp.zeros(shape, dtype=like.dtype, device=aac.device(like))
    return a if tuple(a.shape) == tuple(shape) else xp.broadcast_to(a, shape)


def _back(inp, a):
    """A result in the caller's library (the call may have run in another backend's)."""
    if not inp.converted:
        return a
    be = inp.user_be
    dt = getattr(be.xp, str(a.dtype).split(".")[-1])
    return be.convert(a, xp=be.xp, dtype=dt, device=aac.device(inp.orig_x))


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
    x : array (n, d)
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
    d = net.in_features
    holder: dict = {}

    def seed(xp, dtype, dev):
        holder["tri"], holder["xp"] = T.triangle(d, xp, dtype, dev), xp
        return T.biharmonic_seed(d, xp, dtype, dev)

    def act(c, s):
        return T.biharmonic_act(c, s, holder["tri"], holder["xp"])

    inp, u, (g, _, gL, L, B) = _sweep(net, x, backend, seed, act, 4, "biharmonic")
    xp = inp.xp
    n, m = u.shape
    B = _full(B, (n, m), xp, u)
    if not full:
        return _back(inp, B)
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
    x : array (n, d)
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

    inp, u, c = _sweep(net, x, backend, seed, T.taylor_act, order, "taylor_derivatives")
    n, m = u.shape
    k = directions.shape[1]
    return tuple(_back(inp, _full(a, (n, k, m), inp.xp, u)) for a in c)


def _to(a, xp):
    """``a`` (any supported library) as an array ``xp.asarray`` accepts."""
    if aac.array_namespace(a) is xp or aac.is_numpy_array(a):
        return a
    from .backends import to_numpy

    return to_numpy(a)


def pure_partials(net: NN, x: Any, coords: Sequence[int], order: int, *, backend: str | None = None) -> Any:
    r"""Pure partial derivatives :math:`\partial^k u / \partial x_i^k` for the coordinates ``i`` in ``coords``.

    The directional derivatives of :func:`taylor_derivatives` along the unit
    vectors :math:`e_i` (KdV's :math:`u_{xxx}`: ``coords=[1], order=3`` for
    inputs ``(t, x)``; Kuramoto–Sivashinsky's :math:`u_{xxxx}`: ``order=4``).

    Parameters
    ----------
    net : NN
    x : array (n, d)
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

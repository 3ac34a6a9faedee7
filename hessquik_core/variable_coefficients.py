r"""Second-order operators whose coefficients vary with :math:`x`:

.. math::
    (\mathcal{L}u)(x) = \sum_{ij} a_{ij}(x)\,\partial_i\partial_j u + \sum_i b_i(x)\,\partial_i u + c(x)\,u,

with the coefficient matrix given per point in one of three forms:

* **factored** :math:`A(x) = S(x) S(x)^\top`, ``S : (n, d, r)`` (a diffusion
  tensor of Fokker–Planck or Black–Scholes, an anisotropic medium):
  :math:`\mathrm{tr}(S^\top \nabla^2 u\, S)` by one forward Laplacian sweep whose
  tangents are seeded **per point** with :math:`S(x_i)^\top` (``(n, r, d)``
  instead of the shared ``(1, k, d)`` of constant directions). The drift
  :math:`b(x)\cdot\nabla u` rides along as one more per-point tangent. No
  Hessian is formed: cost ``r + 1`` tangents.
* **diagonal** :math:`A(x) = \mathrm{diag}(a(x))`, ``a : (n, d)``: the weighted
  Hessian diagonal :math:`\sum_i a_i \partial_i^2 u` (``d`` tangents, no Hessian).
* **dense** ``A : (n, d, d)`` (any sign, not necessarily symmetric):
  :math:`\sum_{ij} A_{ij} (\nabla^2 u)_{ij}` from the network's Hessian.

Shared coefficients drop the leading ``n`` (``(d, r)``, ``(d,)``, ``(d, d)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import array_api_compat as aac

from ._array import as_plain_array, namespace_of, resolve_input
from .carry import Request, Tangents

if TYPE_CHECKING:
    from .networks import NN

__all__ = ["pointwise_weighted_laplacian", "second_order_operator"]


def _coef(a, name: str, inp, shapes: tuple[tuple[int, ...], ...]):
    """``a`` in the call's library, dtype and device, after checking its shape
    against the accepted ``shapes`` (spelled out in the error)."""
    if isinstance(a, (int, float)) and not isinstance(a, bool) and () in shapes:
        return float(a)
    a = as_plain_array(a, name)
    xpa = namespace_of(a, name)
    if not xpa.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {a.dtype}")
    if tuple(a.shape) not in shapes:
        want = " or ".join(str(s).replace(",)", ")") for s in shapes)
        raise ValueError(f"{name} must have shape {want}, got {tuple(a.shape)}")
    xc, xp = inp.x, inp.xp
    if aac.array_namespace(a) == aac.array_namespace(xc):
        return a if a.dtype == xc.dtype else xp.astype(a, xc.dtype)
    return inp.be.convert(a, dtype=xc.dtype, device=aac.device(xc))


def _back(inp, a):
    if not inp.converted:
        return a
    be = inp.user_be
    dt = getattr(be.xp, str(a.dtype).split(".")[-1])
    return be.convert(a, xp=be.xp, dtype=dt, device=aac.device(inp.orig_x))


def _sweep(net, inp, seed, request: Request):
    """Value and :class:`~hessquik_core.carry.Tangents` at the output of a forward
    sweep seeded with ``seed : (n | 1, k, d)`` (per-point tangents allowed)."""
    xp, be, xc = inp.xp, inp.be, inp.x
    leaves = list(net._leaves())
    key = inp.cache_key
    params = [leaf._eval_params(key, be, xp, xc.dtype, aac.device(xc)) for leaf in leaves]
    u, tangents = xc, Tangents(seed)
    for leaf, P in zip(leaves, params):
        u, cache = leaf.evaluate(u, P, 2, be)
        tangents = leaf.forward_step(cache, P, tangents, request, be)
    return u, tangents


def _factored(net, inp, S, b):
    """``(value, tr(Sᵀ∇²u S) + b·∇u)`` by one per-point forward sweep (``b`` may be None)."""
    xp = inp.xp
    n, d = inp.x.shape
    St = xp.matrix_transpose(S)
    if St.ndim == 2:
        St = St[None, :, :]
    if b is None:
        u, t = _sweep(net, inp, St, Request(laplacian=True))
        L = t.laplacian
        return u, xp.zeros_like(u) if L is None else L
    r = St.shape[1]
    bb = b[None, None, :] if b.ndim == 1 else b[:, None, :]
    if St.shape[0] != bb.shape[0]:
        N = max(St.shape[0], bb.shape[0])
        St, bb = xp.broadcast_to(St, (N, r, d)), xp.broadcast_to(bb, (N, 1, d))
    u, t = _sweep(net, inp, xp.concat([St, bb], axis=1), Request(diagonal=True))
    # the diagonal entries are vᵀ∇²u v per tangent: the first r sum to tr(Sᵀ∇²u S)
    D = xp.zeros_like(u) if t.diagonal is None else xp.sum(t.diagonal[:, :r, :], axis=1)
    return u, D + t.jacobian[:, r, :]


def pointwise_weighted_laplacian(net: NN, x: Any, S: Any, *, backend: str | None = None) -> Any:
    r""":math:`\mathrm{tr}(S(x_i) S(x_i)^\top \nabla^2 u(x_i))` for a factor given per point, ``S : (n, d, r)``.

    :func:`~hessquik_core.estimators.weighted_laplacian` with a three-dimensional ``S``
    calls this (module docstring: one forward sweep, tangents seeded per point).

    Returns
    -------
    array (n, m)
    """
    inp = resolve_input(net, x, backend)
    n, d = inp.x.shape
    S = as_plain_array(S, "S")
    r = S.shape[-1] if getattr(S, "ndim", 0) == 3 else 1
    S = _coef(S, "S", inp, ((n, d, r),))
    return _back(inp, _factored(net, inp, S, None)[1])


def second_order_operator(
    net: NN,
    x: Any,
    A: Any = None,
    b: Any = None,
    c: Any = None,
    *,
    A_diagonal: Any = None,
    A_factor: Any = None,
    backend: str | None = None,
) -> Any:
    r"""Apply :math:`\mathcal{L}u = \sum_{ij} a_{ij}(x)\partial_{ij} u + \sum_i b_i(x)\partial_i u + c(x) u`
    to every output of the network.

    Give the second-order coefficient in at most one form (module docstring):

    Parameters
    ----------
    net : NN
    x : array (n, d)
    A : array (n, d, d) or (d, d), optional
        Dense :math:`a_{ij}` (any sign; a non-symmetric ``A`` acts through its
        symmetric part). Uses the network's Hessian ``(n, d, d, m)``.
    b : array (n, d) or (d,), optional
        Drift :math:`b_i(x)`.
    c : array (n,), Python float, optional
        Reaction :math:`c(x)`.
    A_diagonal : array (n, d) or (d,), optional
        :math:`a_{ii}` of a diagonal :math:`A`: the weighted Hessian diagonal,
        no Hessian formed.
    A_factor : array (n, d, r) or (d, r), optional
        ``S`` with :math:`A = S S^\top`: ``r`` per-point tangents, no Hessian.
    backend : optional, as in :meth:`~hessquik_core.NN.__call__`.

    Returns
    -------
    array (n, m)
        In ``x``'s library, dtype and device.

    Raises
    ------
    ValueError
        Two forms of :math:`A` at once, or a coefficient of the wrong shape
        (the accepted shapes are named).

    Notes
    -----
    Coefficients are arrays of ``x``'s library or NumPy with a real floating
    element type (cast to ``x``'s); they are never modified.
    """
    given = [
        name for name, v in (("A", A), ("A_diagonal", A_diagonal), ("A_factor", A_factor)) if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give the second-order coefficient in one form only, got {' and '.join(given)}")
    inp = resolve_input(net, x, backend)
    xp = inp.xp
    n, d = inp.x.shape
    bb = None if b is None else _coef(b, "b", inp, ((n, d), (d,)))
    cc = None if c is None else _coef(c, "c", inp, ((n,), ()))
    if A_factor is not None:
        Sf = as_plain_array(A_factor, "A_factor")
        r = Sf.shape[-1] if getattr(Sf, "ndim", 0) in (2, 3) else 1
        Sf = _coef(Sf, "A_factor", inp, ((n, d, r), (d, r)))
        u, out = _factored(net, inp, Sf, bb)
    else:
        Ad = None if A_diagonal is None else _coef(A_diagonal, "A_diagonal", inp, ((n, d), (d,)))
        Af = None if A is None else _coef(A, "A", inp, ((n, d, d), (d, d)))
        xc = inp.x
        res = net(
            xc,
            gradient=bb is not None,
            hessian=Af is not None,
            hessian_diagonal=Ad is not None,
            backend=inp.backend,
        )
        u = res.value
        out = xp.zeros_like(u)
        if Af is not None:
            Ab = Af[None, :, :, None] if Af.ndim == 2 else Af[:, :, :, None]
            out = out + xp.sum(xp.sum(Ab * res.hessian, axis=1), axis=1)
        if Ad is not None:
            Db = Ad[None, :, None] if Ad.ndim == 1 else Ad[:, :, None]
            out = out + xp.sum(Db * res.hessian_diagonal, axis=1)
        if bb is not None:
            Bb = bb[None, :, None] if bb.ndim == 1 else bb[:, :, None]
            out = out + xp.sum(Bb * res.gradient, axis=1)
    if cc is not None:
        out = out + (cc * u if isinstance(cc, float) or cc.ndim == 0 else cc[:, None] * u)
    return _back(inp, out)

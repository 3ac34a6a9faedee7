r"""The residual function and its derivative with respect to the quantities, point by point.

A residual term evaluates :math:`r_i = f(q_i, x_i)` from the quantities
:math:`q_i` (value, gradient, Laplacian, Hessian diagonal of the network) at
point :math:`x_i`. Its Jacobian with respect to the parameters is, by the
chain rule,

.. math::
    \frac{\partial r_i}{\partial\theta} = \sum_{q}\sum_{k}
    \frac{\partial r_i}{\partial q_{i,k}}\,\frac{\partial q_{i,k}}{\partial\theta},

where :math:`k` runs over the components of :math:`q` (1 for the value and
the Laplacian, :math:`d` for the gradient and the Hessian diagonal). The
coefficients :math:`c_{i,k} = \partial r_i/\partial q_{i,k}` are derivatives
of the *small* function :math:`f` only, never of the network; they are taken
here, one component :math:`k` at a time for all points at once. That relies on
:math:`f` being **point-wise**: :math:`r_i` depends on :math:`q_i` and
:math:`x_i` only (no sums or means over the points inside ``fn``).

* NumPy and every Array-API library: the **complex step**
  :math:`c_{i,k} = \operatorname{Im} f(q + \mathrm{i}h e_k)_i / h` with
  :math:`h = 10^{-20}`. It has no subtractive cancellation, so it is exact to
  rounding for every real-analytic ``fn`` (polynomials, ``sin``, ``exp``,
  ``tanh``, quotients, ...). It fails for non-analytic code (``abs``,
  ``maximum``, comparisons, casts to real): a complex input that comes back
  real raises :class:`TypeError`, a complex evaluation whose real part
  differs from the real one raises :class:`ValueError`.
* torch: reverse-mode AD on ``fn`` alone (``torch.func.vjp`` with a
  cotangent of ones, which gives every :math:`c_{i,k}` at once because ``fn`` is
  point-wise); it also handles ``abs`` & co.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat as aac

from ..backends import owner_of

__all__ = ["QUANTITIES", "PointQuantities", "evaluate_residual", "residual_derivatives"]

#: the quantities a residual may declare in ``needs``, in the order they are computed
QUANTITIES = (
    "value",
    "gradient",
    "laplacian",
    "hessian_diagonal",
    "weighted_laplacian",
    "biharmonic",
    "directional",
    "pure_partial",
)

#: the complex step (any h far below the rounding unit works; 1e-20 is safe in complex64 too)
_H = 1e-20


class PointQuantities:
    """The quantities ``fn(q, x)`` receives: the network and its input derivatives at the points.

    With one output (``m == 1``) the output axis is dropped: ``value (n,)``,
    ``gradient (n, d)``, ``laplacian (n,)``, ``hessian_diagonal (n, d)``; with
    ``m > 1`` it is kept last (``value (n, m)``, ``gradient (n, d, m)``, ...);
    ``weighted_laplacian (n,)`` is :math:`\\mathrm{tr}(SS^\\top\\nabla^2 u)` for the residual's ``weights``;
    ``biharmonic (n,)`` is :math:`\\Delta^2 u`; ``directional (n, K)`` and ``pure_partial (n, K)``
    are :math:`\\partial^k u[v_c, \\dots, v_c]` for the residual's ``directions`` and
    :math:`\\partial^k u/\\partial x_i^k` for its ``coords`` (``order = k``).
    Reading a quantity the residual did not declare in ``needs`` raises
    :class:`ValueError` naming the residual.
    """

    __slots__ = ("_data", "_name", "_needs")

    def __init__(self, data: dict[str, Any], name: str, needs: tuple[str, ...]) -> None:
        self._data, self._name, self._needs = data, name, needs

    def _get(self, q: str) -> Any:
        if q not in self._data:
            raise ValueError(
                f"residual {self._name!r} reads q.{q}, which it did not declare: needs={self._needs}; "
                f"add {q!r} to its needs"
            )
        return self._data[q]

    @property
    def value(self) -> Any:
        """``(n,)`` (``(n, m)`` for ``m > 1``)."""
        return self._get("value")

    @property
    def gradient(self) -> Any:
        """``(n, d)`` (``(n, d, m)``)."""
        return self._get("gradient")

    @property
    def laplacian(self) -> Any:
        """``(n,)`` (``(n, m)``)."""
        return self._get("laplacian")

    @property
    def hessian_diagonal(self) -> Any:
        """``(n, d)`` (``(n, d, m)``)."""
        return self._get("hessian_diagonal")

    @property
    def weighted_laplacian(self) -> Any:
        """:math:`\\mathrm{tr}(SS^\\top\\nabla^2 u)`, ``(n,)`` (``(n, m)``), for the residual's ``weights`` ``S``."""
        return self._get("weighted_laplacian")

    @property
    def biharmonic(self) -> Any:
        """:math:`\\Delta^2 u`, ``(n,)`` (``(n, m)``)."""
        return self._get("biharmonic")

    @property
    def directional(self) -> Any:
        """:math:`\\partial^k u[v_c, \\dots, v_c]` per column ``v_c`` of the residual's ``directions``.

        ``(n, K)`` (``(n, K, m)``).
        """
        return self._get("directional")

    @property
    def pure_partial(self) -> Any:
        """:math:`\\partial^k u/\\partial x_i^k` per coordinate ``i`` of the residual's ``coords``.

        ``(n, K)`` (``(n, K, m)``).
        """
        return self._get("pure_partial")

    def __repr__(self) -> str:
        return f"PointQuantities({', '.join(f'{k}{tuple(v.shape)}' for k, v in self._data.items())})"


def _check_output(r: Any, xp: Any, n: int, dtype: Any, name: str, what: str = "returned") -> Any:
    if not hasattr(r, "shape") or not hasattr(r, "dtype"):
        raise TypeError(f"residual {name!r}: fn {what} {type(r).__name__}, expected an array of shape ({n},)")
    if tuple(r.shape) != (n,):
        raise ValueError(
            f"residual {name!r}: fn {what} shape {tuple(r.shape)}, expected ({n},) (one residual per "
            f"point; split a vector-valued residual into several Residual terms)"
        )
    return r


def evaluate_residual(fn: Callable, data: dict[str, Any], x: Any, xp: Any, name: str, needs) -> Any:
    """``fn(q, x)`` checked: an array of ``x``'s library, shape ``(n,)``, ``x``'s dtype."""
    n = x.shape[0]
    r = fn(PointQuantities(data, name, needs), x)
    r = _check_output(r, xp, n, x.dtype, name)
    if aac.array_namespace(r).__name__ != xp.__name__:
        raise TypeError(
            f"residual {name!r}: fn returned a {type(r).__module__}.{type(r).__name__}, expected an "
            f"array of the points' library ({xp.__name__})"
        )
    if r.dtype != x.dtype:
        raise TypeError(f"residual {name!r}: fn returned dtype {r.dtype}, expected the points' {x.dtype}")
    return r


def _components(a: Any) -> int:
    return math.prod(int(s) for s in a.shape[1:])


def residual_derivatives(
    fn: Callable, data: dict[str, Any], x: Any, xp: Any, name: str, needs, r: Any
) -> dict[str, Any]:
    r"""The coefficients :math:`c_q = \partial r/\partial q`, point by point.

    Parameters
    ----------
    fn : callable
        ``fn(q, x) -> (n,)``, point-wise.
    data : dict of str to array
        The quantities, ``(n, *s_q)`` each.
    x : array of shape (n, d)
    xp : namespace
    name : str
        The residual's name (for messages).
    needs : tuple of str
    r : array of shape (n,)
        ``fn(q, x)``, already evaluated (the complex step checks against it).

    Returns
    -------
    dict of str to array
        ``q -> (n, K_q)``, :math:`K_q` the number of components of ``q``
        (its trailing axes flattened row-major).
    """
    n = x.shape[0]
    if owner_of(x).autograd:  # the library's own autodiff on fn (torch.func)
        return _torch_vjp(fn, data, x, name, needs, n)
    cdt = xp.complex64 if x.dtype == xp.float32 else xp.complex128
    out: dict[str, Any] = {}
    scale = xp.max(xp.abs(r)) if n else 0.0
    for q, a in data.items():
        K = _components(a)
        cols = []
        base = xp.astype(xp.reshape(a, (n, K)), cdt)
        for k in range(K):
            onehot = xp.astype(xp.arange(K, device=aac.device(x)) == k, cdt)
            pert = dict(data)
            pert[q] = xp.reshape(base + (1j * _H) * onehot, tuple(a.shape))
            try:
                rc = fn(PointQuantities(pert, name, needs), x)
            except Exception as err:  # noqa: BLE001 - re-raised with the reason
                raise TypeError(
                    f"residual {name!r}: the complex-step derivative of fn with respect to q.{q} failed "
                    f"({type(err).__name__}: {err}); fn must be real-analytic code that accepts complex "
                    f"arrays (no abs, maximum, comparisons or casts to real)"
                ) from err
            rc = _check_output(rc, xp, n, cdt, name, "returned, for a complex step,")
            if not xp.isdtype(rc.dtype, "complex floating"):
                raise TypeError(
                    f"residual {name!r}: fn returned real dtype {rc.dtype} for complex q.{q}; the complex-"
                    f"step derivative needs real-analytic code that keeps complex inputs complex (no abs, "
                    f"real casts or comparisons)"
                )
            # the real part of an analytic fn at q + ih e_k is fn(q) to rounding (h² ≈ 0)
            dev = xp.max(xp.abs(xp.real(rc) - r)) if n else 0.0
            tol = 64 * float(xp.finfo(x.dtype).eps) * (1.0 + float(scale))
            if float(dev) > tol:
                raise ValueError(
                    f"residual {name!r}: the complex evaluation of fn differs from the real one by "
                    f"{float(dev):.2e} (tolerance {tol:.1e}); fn is not real-analytic in q.{q} (conj, abs "
                    f"or a branch?) or not point-wise, so its complex-step derivative would be wrong"
                )
            cols.append(xp.imag(rc) / _H)
        out[q] = xp.stack(cols, axis=1)
    return out


def _torch_vjp(fn, data, x, name, needs, n):
    r"""torch: one reverse-mode product of ``fn`` alone (``torch.func.vjp``) with the cotangent of ones.

    ``fn`` is point-wise, so :math:`\sum_j \partial r_j/\partial q_{i,k} = \partial r_i/\partial q_{i,k}`:
    one backward pass through ``fn`` gives every coefficient of every quantity.
    """
    import torch
    from torch.func import vjp

    keys = tuple(data)

    def g(*arrays):
        return fn(PointQuantities(dict(zip(keys, arrays)), name, needs), x)

    r, pullback = vjp(g, *(data[q] for q in keys))
    cots = pullback(torch.ones_like(r))
    return {q: torch.reshape(c, (n, _components(data[q]))) for q, c in zip(keys, cots)}

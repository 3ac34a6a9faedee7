r"""The curvature of the residual function in the quantities: :math:`H_f\,\delta`, point by point.

For a point-wise residual :math:`r_i = f(q_i, x_i)` (all quantities of point
:math:`i` flattened into :math:`q_i \in \mathbb{R}^K`) the loss-Hessian product
needs, besides the network's own curvature, the derivative of the coefficients
:math:`c_i = \nabla_q f(q_i)` along the quantities' tangent :math:`\delta_i = (Jv)_i`:

.. math::
    (H_f\delta)_i = \nabla_q^2 f(q_i)\,\delta_i \in \mathbb{R}^K .

Like the coefficients themselves (:mod:`~hessquik_core.pinn._linearize`) it is
a derivative of the *small* function :math:`f` only, never of the network:

The per-point Hessians :math:`H_{f,i}` (``(n, K, K)``, :math:`K` small: the
scalar quantities ``fn`` reads) are formed once per operator, so each product
adds only :math:`(H_f\delta)_i = H_{f,i}\delta_i`:

* torch: reverse over reverse on ``fn`` alone, one pass per component
  (``torch.func.grad`` of :math:`\sum_i c_{i,k}(q)`, point-wise so its gradient is
  row :math:`k` of :math:`H_{f,i}` for every point); exact.
* NumPy and every Array-API library (no autodiff): polarisation,
  :math:`H_{kl} = \frac14\big(D^2_{e_k+e_l} f - D^2_{e_k-e_l} f\big)`
  (:math:`H_{kk} = D^2_{e_k} f`), and each second directional derivative
  :math:`D^2_w f = g''(0)`, :math:`g(t) = f(q_i + t w)`, by Cauchy's integral
  formula on the circle :math:`|t| = \varrho` with :math:`M` nodes
  :math:`t_j = \varrho\,\omega^j`, :math:`\omega = e^{2\pi\mathrm i/M}`:

  .. math::
      g''(0) = \frac{2}{M\varrho^2}\sum_{j<M} g(t_j)\,\omega^{-2j}
      \;-\; 2\sum_{l\ge1} g_{2+lM}\,\varrho^{lM}

  (:math:`g_j` the Taylor coefficients). The aliasing sum vanishes for
  residuals polynomial in the quantities of degree :math:`\le M+1` (Poisson,
  heat, Allen–Cahn, Burgers, ...), so the result is exact to rounding there;
  for other analytic ``fn`` it decays like :math:`(\varrho/R)^M` (``R`` the
  radius of analyticity). Never silently: the same nodes give :math:`g'(0)`
  with the same kind of aliasing, which is checked against the exact
  complex-step coefficient :math:`c_i\cdot w`; a mismatch raises
  :class:`ValueError` (use torch, or the central-difference operator).
  ``fn`` must accept complex arrays, as for the complex step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..backends import owner_of
from ._linearize import PointQuantities

__all__ = ["apply", "fn_hessian"]

#: nodes and radius of the Cauchy formula (on unit directions in the quantities)
M_NODES, RADIUS = 32, 0.5


def fn_hessian(
    fn: Callable, data: dict[str, Any], x: Any, xp: Any, name: str, needs: tuple, coef: dict
) -> Any:
    r"""The per-point Hessians :math:`H_{f,i} = \nabla_q^2 f(q_i, x_i)`, ``(n, K, K)``.

    Parameters
    ----------
    fn : callable
        ``fn(q, x) -> (n,)``, point-wise.
    data : dict of str to array
        The quantities ``(n, *s_q)`` (``m == 1`` squeezed, as ``fn`` sees them); :math:`q_i`
        is their concatenation in ``data``'s order, each flattened row-major (``K = Σ K_q``).
    x : array of shape (n, d)
    xp : namespace
    name : str
        The residual's name (messages).
    needs : tuple of str
    coef : dict of str to array
        :math:`c_q = \partial f/\partial q`, ``(n, K_q)`` each (the self-check of the Cauchy formula).

    Returns
    -------
    array of shape (n, K, K)
        Symmetric per point.

    Raises
    ------
    ValueError
        NumPy: when the Cauchy formula's first derivative misses the exact one (``fn``
        not analytic on the circle); the message names ``exact=False`` and torch.
    """
    n = x.shape[0]
    if owner_of(x).autograd:
        return _torch(fn, data, x, name, needs, n)
    return _cauchy(fn, data, x, xp, name, needs, coef, n)


def apply(H: Any, delta: dict, keys: tuple, xp: Any) -> dict[str, Any]:
    r""":math:`(H_f\delta)_i` split by quantity: ``delta``, ``q -> (n, K_q)`` in ``keys`` order."""
    d = xp.concat([delta[q] for q in keys], axis=1)
    Hd = xp.matmul(H, d[:, :, None])[:, :, 0]
    out, o = {}, 0
    for q in keys:
        s = int(delta[q].shape[1])
        out[q] = Hd[:, o : o + s]
        o += s
    return out


def _torch(fn, data, x, name, needs, n):
    import torch
    from torch.func import grad, vjp

    keys = tuple(data)
    flat = [torch.reshape(data[q], (n, -1)) for q in keys]
    K = sum(int(a.shape[1]) for a in flat)

    def f(*arrays):
        return fn(PointQuantities(dict(zip(keys, arrays)), name, needs), x)

    def coefs(*arrays):  # (n, K): every point's gradient, one reverse pass (fn is point-wise)
        r, pull = vjp(f, *arrays)
        return torch.cat([torch.reshape(c, (n, -1)) for c in pull(torch.ones_like(r))], dim=1)

    rows = []
    for k in range(K):
        g = grad(lambda *a, k=k: torch.sum(coefs(*a)[:, k]), argnums=tuple(range(len(keys))))
        rows.append(torch.cat([torch.reshape(h, (n, -1)) for h in g(*(data[q] for q in keys))], dim=1))
    return torch.stack(rows, dim=1)


def _cauchy(fn, data, x, xp, name, needs, coef, n):
    keys = tuple(data)
    sizes = [int(coef[q].shape[1]) for q in keys]
    K = sum(sizes)
    cdt = xp.complex64 if x.dtype == xp.float32 else xp.complex128
    q0 = xp.concat([xp.reshape(data[q], (n, s)) for q, s in zip(keys, sizes)], axis=1)
    c = xp.concat([coef[q] for q in keys], axis=1)
    q0c = xp.astype(q0, cdt)
    eps = float(xp.finfo(x.dtype).eps)
    angles = [2 * math.pi * j / M_NODES for j in range(M_NODES)]

    def evaluate(qc):  # (n, K) complex -> (n,) complex
        pert, o = {}, 0
        for q, s in zip(keys, sizes):
            pert[q] = xp.reshape(qc[:, o : o + s], tuple(data[q].shape))
            o += s
        return fn(PointQuantities(pert, name, needs), x)

    def second(w):  # g''(0) of g(t) = f(q + t w), w : (K,) real, checked through g'(0) = c·w
        d1: Any = 0.0
        d2: Any = 0.0
        gmax = 0.0
        wc = xp.asarray([complex(a) for a in w], dtype=cdt, device=_device(x))
        for a in angles:
            g = evaluate(q0c + complex(RADIUS * math.cos(a), RADIUS * math.sin(a)) * wc)
            gmax = max(gmax, float(xp.max(xp.abs(g))))
            d1 = d1 + g * complex(math.cos(-a), math.sin(-a))
            d2 = d2 + g * complex(math.cos(-2 * a), math.sin(-2 * a))
        d1 = xp.real(d1) / (M_NODES * RADIUS)
        exact1 = xp.sum(c * xp.asarray(w, dtype=x.dtype, device=_device(x)), axis=1)
        dev = float(xp.max(xp.abs(d1 - exact1)))
        tol = 64 * M_NODES * eps * (1.0 + gmax) / RADIUS
        if dev > tol:
            raise ValueError(
                f"residual {name!r}: the Cauchy-formula second derivative of fn is not reliable here (its "
                f"first derivative misses the exact one by {dev:.2e}, tolerance {tol:.1e}); fn is not "
                f"analytic in a disc of radius {RADIUS} around the quantities (or not point-wise). Use "
                f"torch arrays (autodiff on fn) or hessian_operator(exact=False)"
            )
        return 2.0 * xp.real(d2) / (M_NODES * RADIUS**2)

    def unit(*idx_sign):
        w = [0.0] * K
        for i, sg in idx_sign:
            w[i] += sg
        return w

    entries: dict = {}
    for k in range(K):
        entries[k, k] = second(unit((k, 1.0)))
        for j in range(k):
            entries[k, j] = entries[j, k] = 0.25 * (
                second(unit((k, 1.0), (j, 1.0))) - second(unit((k, 1.0), (j, -1.0)))
            )
    return xp.stack([xp.stack([entries[k, j] for j in range(K)], axis=1) for k in range(K)], axis=1)


def _device(a: Any) -> Any:
    import array_api_compat as aac

    return aac.device(a)

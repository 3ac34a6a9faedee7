r"""The curvature of the residual function in the quantities: :math:`H_f\,\delta`, point by point.

For a point-wise residual :math:`r_i = f(q_i, x_i)` (all quantities of point
:math:`i` flattened into :math:`q_i \in \mathbb{R}^K`) the loss-Hessian product
needs, besides the network's own curvature, the derivative of the coefficients
:math:`c_i = \nabla_q f(q_i)` along the quantities' tangent :math:`\delta_i = (Jv)_i`:

.. math::
    (H_f\delta)_i = \nabla_q^2 f(q_i)\,\delta_i \in \mathbb{R}^K .

Like the coefficients themselves (:mod:`~hessquik_core.pinn._linearize`) it is
a derivative of the *small* function :math:`f` only, never of the network:

* torch: reverse over reverse on ``fn`` alone (``torch.func.grad`` of
  :math:`\sum_i c_i(q)\cdot\delta_i`, point-wise so its gradient is
  :math:`(H_f\delta)_i` per point); exact.
* NumPy and every Array-API library (no autodiff): polarisation,
  :math:`e_k^\top H u = \frac14\big(D^2_{e_k+u} f - D^2_{e_k-u} f\big)` with
  :math:`u = \delta_i/\|\delta_i\|`, and each second directional derivative
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

__all__ = ["fn_curvature"]

#: nodes and radius of the Cauchy formula (on unit directions in the quantities)
M_NODES, RADIUS = 32, 0.5


def fn_curvature(
    fn: Callable, data: dict[str, Any], x: Any, xp: Any, name: str, needs: tuple, delta: dict, coef: dict
) -> dict[str, Any]:
    r""":math:`(H_f\delta)_i` per quantity.

    Parameters
    ----------
    fn : callable
        ``fn(q, x) -> (n,)``, point-wise.
    data : dict of str to array
        The quantities ``(n, *s_q)`` (``m == 1`` squeezed, as ``fn`` sees them).
    x : array of shape (n, d)
    xp : namespace
    name : str
        The residual's name (messages).
    needs : tuple of str
    delta : dict of str to array
        The tangents :math:`\delta_q`, ``(n, K_q)`` each.
    coef : dict of str to array
        :math:`c_q = \partial f/\partial q`, ``(n, K_q)`` each (the self-check of the Cauchy formula).

    Returns
    -------
    dict of str to array
        ``q -> (n, K_q)``.
    """
    n = x.shape[0]
    if owner_of(x).autograd:
        return _torch(fn, data, x, name, needs, delta, n)
    return _cauchy(fn, data, x, xp, name, needs, delta, coef, n)


def _torch(fn, data, x, name, needs, delta, n):
    import torch
    from torch.func import grad, vjp

    keys = tuple(data)

    def f(*arrays):
        return fn(PointQuantities(dict(zip(keys, arrays)), name, needs), x)

    def c_dot_delta(*arrays):
        r, pull = vjp(f, *arrays)
        cs = pull(torch.ones_like(r))
        return sum(torch.sum(torch.reshape(c, (n, -1)) * delta[q]) for q, c in zip(keys, cs))

    out = grad(c_dot_delta, argnums=tuple(range(len(keys))))(*(data[q] for q in keys))
    return {q: torch.reshape(h, (n, -1)) for q, h in zip(keys, out)}


def _cauchy(fn, data, x, xp, name, needs, delta, coef, n):
    keys = tuple(data)
    sizes = [int(delta[q].shape[1]) for q in keys]
    K = sum(sizes)
    cdt = xp.complex64 if x.dtype == xp.float32 else xp.complex128
    q0 = xp.concat([xp.reshape(data[q], (n, s)) for q, s in zip(keys, sizes)], axis=1)
    dl = xp.concat([delta[q] for q in keys], axis=1)
    c = xp.concat([coef[q] for q in keys], axis=1)
    nrm = xp.sqrt(xp.sum(dl * dl, axis=1))  # (n,)
    safe = xp.where(nrm > 0, nrm, xp.ones_like(nrm))
    u = dl / safe[:, None]
    q0c = xp.astype(q0, cdt)

    def evaluate(qc):  # (n, K) complex -> (n,) complex
        pert, o = {}, 0
        for q, s in zip(keys, sizes):
            pert[q] = xp.reshape(qc[:, o : o + s], tuple(data[q].shape))
            o += s
        return fn(PointQuantities(pert, name, needs), x)

    nodes = [
        complex(RADIUS * math.cos(2 * math.pi * j / M_NODES), RADIUS * math.sin(2 * math.pi * j / M_NODES))
        for j in range(M_NODES)
    ]
    eps = float(xp.finfo(x.dtype).eps)

    def taylor12(w):  # g'(0), g''(0) along w : (n, K) real, and the check of g'(0) against c·w
        wc = xp.astype(w, cdt)
        d1 = d2 = 0.0
        gmax = 0.0
        for j, t in enumerate(nodes):
            g = evaluate(q0c + t * wc)
            gmax = max(gmax, float(xp.max(xp.abs(g))))
            w1 = complex(math.cos(-2 * math.pi * j / M_NODES), math.sin(-2 * math.pi * j / M_NODES))
            d1 = d1 + g * w1
            d2 = d2 + g * (w1 * w1)
        d1 = xp.real(d1) / (M_NODES * RADIUS)
        d2 = 2.0 * xp.real(d2) / (M_NODES * RADIUS**2)
        exact1 = xp.sum(c * w, axis=1)
        dev = float(xp.max(xp.abs(d1 - exact1)))
        tol = 64 * M_NODES * eps * (1.0 + gmax) / RADIUS
        if dev > tol:
            raise ValueError(
                f"residual {name!r}: the Cauchy-formula second derivative of fn is not reliable here (its "
                f"first derivative misses the exact one by {dev:.2e}, tolerance {tol:.1e}); fn is not "
                f"analytic in a disc of radius {RADIUS} around the quantities (or not point-wise). Use "
                f"torch arrays (autodiff on fn) or hessian_operator(exact=False)"
            )
        return d2

    cols = []
    eye = xp.eye(K, dtype=x.dtype, device=_device(x))
    for k in range(K):
        ek = xp.broadcast_to(eye[k : k + 1, :], (n, K))
        cols.append(0.25 * (taylor12(ek + u) - taylor12(ek - u)))
    Hu = xp.stack(cols, axis=1) * nrm[:, None]
    out, o = {}, 0
    for q, s in zip(keys, sizes):
        out[q] = Hu[:, o : o + s]
        o += s
    return out


def _device(a: Any) -> Any:
    import array_api_compat as aac

    return aac.device(a)

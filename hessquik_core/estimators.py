r"""Weighted Laplacians and randomized (Hutchinson) trace estimates.

All three rest on the forward directional recurrence: with ``V : (d, k)``
seeded as the tangents, the network carries the diagonal of
:math:`V^\top \nabla^2 f\, V` (``hessian_diagonal=True``) or its trace
(``laplacian=True``) at cost :math:`O(n k \sum p_\ell q_\ell)`, never the
``k × k`` block.

* :func:`weighted_laplacian`: :math:`\mathrm{tr}(A\,\nabla^2 f) = \sum_{ij} A_{ij}\partial_i\partial_j f`
  for :math:`A = S S^\top`, exactly, as :math:`\mathrm{tr}(S^\top \nabla^2 f\, S)`.
* :func:`laplacian_estimate`: for random :math:`v` with
  :math:`\mathbb{E}[vv^\top] = I` (Rademacher or Gaussian),
  :math:`\mathbb{E}[v^\top \nabla^2 f\, v] = \Delta f`; the mean over ``k``
  samples is unbiased with standard error :math:`s/\sqrt{k}`.
* :func:`divergence_estimate`: likewise :math:`\mathbb{E}[v^\top J v] = \mathrm{tr}\,J`.
* :func:`biharmonic_estimate`: for Gaussian :math:`v \sim N(0, I)`, Isserlis'
  theorem :math:`\mathbb{E}[v_i v_j v_k v_l] = \delta_{ij}\delta_{kl} + \delta_{ik}\delta_{jl}
  + \delta_{il}\delta_{jk}` gives :math:`\mathbb{E}[\partial^4 f[v, v, v, v]] = 3\,\Delta^2 f`;
  each probe is one fourth-order directional derivative
  (:func:`~hessquik_core.higher.taylor_derivatives`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._array import namespace_of

if TYPE_CHECKING:
    from .networks import NN

__all__ = [
    "Estimate",
    "biharmonic_estimate",
    "divergence_estimate",
    "laplacian_estimate",
    "weighted_laplacian",
]

_DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass
class Estimate:
    """A Monte-Carlo estimate; ``str(est)`` reads ``value ± stderr``.

    Attributes
    ----------
    value : float or array
        Sample mean: (n, m) for the Laplacian, (n,) for the divergence, a
        float for a trace, (P,) for a curvature diagonal.
    stderr : float or array
        Standard error of the mean, :math:`s / \\sqrt{k}` (sample standard
        deviation with ``ddof=1``), same shape.
    num_samples : int
        Number of probes ``k``.
    """

    value: Any
    stderr: Any
    num_samples: int

    def __str__(self) -> str:
        v, s = _host(self.value), _host(self.stderr)
        tail = f" ({self.num_samples} samples)"
        if v.ndim == 0:
            return _pm(float(v), float(s)) + tail
        cells = np.empty(v.shape, dtype=object)
        for i in np.ndindex(v.shape):
            cells[i] = _pm(float(v[i]), float(s[i]))
        body = np.array2string(cells, formatter={"all": str}, threshold=12, edgeitems=2, separator=", ")
        return body + tail


def _host(a) -> np.ndarray:
    """A float64 NumPy copy of a scalar or an array of any library (for printing)."""
    from .backends import to_numpy

    return np.asarray(to_numpy(a), dtype=np.float64)


def _pm(v: float, s: float) -> str:
    """``v ± s`` with ``s`` to two significant digits and ``v`` to the same decimal place."""
    if not (math.isfinite(s) and s > 0 and math.isfinite(v)):
        return f"{v:.6g} ± {s:.2g}"
    dec = 1 - math.floor(math.log10(s))
    if 0 <= dec <= 6:
        return f"{v:.{dec}f} ± {s:.{dec}f}"
    return f"{v:.6g} ± {s:.2g}"


def _probes(net, x, num_samples, seed, distribution):
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (for a standard error), got {num_samples!r}")
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {_DISTRIBUTIONS}, got {distribution!r}")
    namespace_of(x)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    d = net.in_features
    dtype = np.dtype(str(x.dtype).split(".")[-1])
    if distribution == "rademacher":
        V = rng.choice(np.array([-1.0, 1.0]), size=(d, int(num_samples)))
    else:
        V = rng.standard_normal((d, int(num_samples)))
    return V.astype(dtype)


def _mean_stderr(samples, axis: int):
    xp = namespace_of(samples, "samples")
    k = samples.shape[axis]
    mean = xp.mean(samples, axis=axis)
    var = xp.sum((samples - xp.expand_dims(mean, axis=axis)) ** 2, axis=axis) / (k - 1)
    return mean, xp.sqrt(var / k)


def laplacian_estimate(
    net: NN,
    x: Any,
    num_samples: int = 16,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    backend: str | None = None,
) -> Estimate:
    """Hutchinson estimate of the Laplacian of every output, (n, m).

    Costs ``num_samples`` forward tangents instead of ``d``: worth it when
    ``num_samples << d`` and a few digits suffice.

    Parameters
    ----------
    net : NN
    x : array (n, d)
    num_samples : int, >= 2
        Probe vectors ``k`` (shared by all examples in the batch).
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}
        Rademacher probes have the smaller variance,
        :math:`2\\sum_{i \\ne j} H_{ij}^2` against :math:`2\\|H\\|_F^2`.
    backend : optional, as in :meth:`~hessquik_core.NN.__call__`.

    Returns
    -------
    Estimate
        ``value`` and ``stderr`` of shape (n, m).
    """
    V = _probes(net, x, num_samples, seed, distribution)
    D = net(x, hessian_diagonal=True, directions=V, mode="forward", backend=backend).hessian_diagonal
    mean, se = _mean_stderr(D, axis=1)  # D : (n, k, m), one vᵀHv per probe
    return Estimate(mean, se, int(num_samples))


def divergence_estimate(
    net: NN,
    x: Any,
    num_samples: int = 16,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    backend: str | None = None,
) -> Estimate:
    """Hutchinson estimate of the divergence :math:`\\mathrm{tr}(\\partial f/\\partial x)`, (n,), d = m.

    Each probe costs one forward tangent: :math:`v^\\top J v` from
    :math:`G = V^\\top J^\\top` of shape (n, k, m).

    Parameters
    ----------
    net : NN
        With as many outputs as inputs (d = m).
    x : array of shape (n, d)
    num_samples : int, >= 2
        Probe vectors ``k`` (shared by all examples in the batch).
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}
    backend : optional, as in :meth:`~hessquik_core.NN.__call__`.

    Returns
    -------
    Estimate
        ``value`` and ``stderr`` of shape (n,).
    """
    if net.in_features != net.out_features:
        raise ValueError(f"divergence needs d == m, got d={net.in_features}, m={net.out_features}")
    V = _probes(net, x, num_samples, seed, distribution)
    G = net(x, gradient=True, directions=V, mode="forward", backend=backend).gradient
    xp = namespace_of(G, "gradient")
    Vt = xp.asarray(V.T, device=_device(G)) if not isinstance(G, np.ndarray) else V.T
    samples = xp.sum(G * Vt[None, :, :], axis=-1)  # (n, k): vₖᵀ J vₖ
    mean, se = _mean_stderr(samples, axis=1)
    return Estimate(mean, se, int(num_samples))


def biharmonic_estimate(
    net: NN,
    x: Any,
    num_samples: int = 16,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "gaussian",
    backend: str | None = None,
) -> Estimate:
    r"""Unbiased Monte-Carlo estimate of the bi-Laplacian :math:`\Delta^2 f` of every output, (n, m).

    With Gaussian probes :math:`v \sim N(0, I_d)`,
    :math:`\mathbb{E}[v_i v_j v_k v_l] = \delta_{ij}\delta_{kl} + \delta_{ik}\delta_{jl} + \delta_{il}\delta_{jk}`
    (Isserlis), so :math:`\mathbb{E}[\partial^4 f[v,v,v,v]] = 3 \sum_{ij} \partial_i^2\partial_j^2 f
    = 3\Delta^2 f`; each sample is :math:`\partial^4 f[v,v,v,v] / 3`, one
    fourth-order directional derivative (``4 k`` carried numbers per feature
    for ``k`` probes, against :math:`d(d+1)/2 + 2d + 2` for the exact
    :func:`~hessquik_core.higher.biharmonic`). Rademacher probes are *biased* here
    (:math:`\mathbb{E}[\partial^4 f[v,v,v,v]] = 3\Delta^2 f - 2\sum_i \partial_i^4 f`)
    and are refused.

    Parameters
    ----------
    net : NN
        Activations supplying the fourth derivative (``act.max_order >= 4``).
    x : array (n, d)
    num_samples : int, >= 2
        Probe vectors ``k`` (shared by all examples in the batch).
    seed : int or numpy.random.Generator, optional
    distribution : {"gaussian"}
    backend : optional, as in :meth:`~hessquik_core.NN.__call__`.

    Returns
    -------
    Estimate
        ``value`` and ``stderr`` of shape (n, m), in ``x``'s library.
    """
    if distribution != "gaussian":
        raise ValueError(
            "biharmonic_estimate needs Gaussian probes (distribution='gaussian'): Rademacher probes "
            f"estimate 3Δ²f - 2Σ_i ∂_i⁴f, not 3Δ²f; got distribution={distribution!r}"
        )
    from .higher import taylor_derivatives

    V = _probes(net, x, num_samples, seed, distribution)
    D4 = taylor_derivatives(net, x, V, 4, backend=backend)[-1]  # (n, k, m): ∂⁴f[v,v,v,v] per probe
    mean, se = _mean_stderr(D4 / 3.0, axis=1)
    return Estimate(mean, se, int(num_samples))


def weighted_laplacian(net: NN, x: Any, S: Any, *, backend: str | None = None) -> Any:
    """Exact :math:`\\mathrm{tr}(A \\nabla^2 f) = \\sum_{ij} A_{ij} \\partial_i \\partial_j f` with :math:`A = S S^\\top`.

    Parameters
    ----------
    net : NN
    x : array of shape (n, d)
    S : array (d, r) or (n, d, r)
        A factor of the (positive semi-definite) coefficient matrix, e.g.
        its Cholesky factor; ``r`` may be smaller than ``d``. Same library
        as ``x`` or NumPy. Of shape ``(n, d, r)``, a factor per point,
        :math:`A(x_i) = S_i S_i^\\top` (a diffusion tensor that varies with
        :math:`x`): the forward sweep's tangents are then seeded per point
        with :math:`S_i^\\top` (:mod:`hessquik_core.variable_coefficients`).
    backend : optional, as in :meth:`~hessquik_core.NN.__call__`.

    Returns
    -------
    array (n, m)
    """
    if getattr(S, "ndim", None) == 3:
        from .variable_coefficients import pointwise_weighted_laplacian

        return pointwise_weighted_laplacian(net, x, S, backend=backend)
    return net(x, laplacian=True, directions=S, mode="forward", backend=backend).laplacian


def _device(a):
    from array_api_compat import device

    return device(a)

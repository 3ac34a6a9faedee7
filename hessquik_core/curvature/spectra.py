r"""Spectra of curvature operators: eigenpairs, traces, diagonals and densities.

Everything here acts on a symmetric operator (:class:`~hessquik_core.curvature.LinearOperatorBase`:
a :class:`~hessquik_core.curvature.CurvatureOperator`, an approximation, or a dense matrix via
:func:`~hessquik_core.curvature.aslinearoperator`) through products with blocks of vectors
only, in the operator's own array library. Random probes are drawn on the
host with ``numpy.random.default_rng(seed)``, so one seed gives the same
probes on every backend; every stochastic estimate reports its spread.

* :func:`top_eigenpairs`: ``K`` extreme eigenpairs by Lanczos — SciPy's
  ARPACK (``eigsh``) on host copies, or a thick-restart Lanczos with full
  reorthogonalisation kept in the operator's library (``O(ncv·P)``
  memory, ``ncv ≈ 2K``).
* :func:`empirical_fisher_eigenpairs`: top ``K`` of :math:`G = \frac1N\sum_n g_n g_n^\top`,
  exact by default (Gram matrix, dense ``G`` or Lanczos); incremental SVD
  and randomised subspace iteration as opt-in approximations;
  :func:`empirical_fisher_trace`: the exact :math:`\mathrm{tr}\,G`.
* :func:`hutchinson_trace`, :func:`hutchpp_trace`, :func:`hutchinson_diagonal`.
* :func:`spectral_density`: stochastic Lanczos quadrature.

Eigenvectors are in :class:`~hessquik_core.curvature.ParameterLayout`
order (``state_dict`` order, each parameter row-major); a ``Linear``
layer's ``K`` is torch's ``weight`` transposed, so
``layout.unflatten(v)["0.K"].T`` is the direction of torch's ``0.weight``.

The long computations (:func:`top_eigenpairs`, :func:`spectral_density`,
:func:`empirical_fisher_eigenpairs`) take ``progress=``: ``None`` shows a
tqdm bar only in an interactive session with tqdm installed, ``True``
always, ``False`` never.

This module gathers them; they live in :mod:`~hessquik_core.curvature.lanczos`
(:func:`top_eigenpairs`, :func:`hessian_eigenpairs`),
:mod:`~hessquik_core.curvature.fisher_spectrum` (:func:`empirical_fisher_eigenpairs`),
:mod:`~hessquik_core.curvature.trace_estimation` (the Hutchinson estimators) and
:mod:`~hessquik_core.curvature.density` (:func:`spectral_density`).
"""

from __future__ import annotations

from ._spectral import _check_int, _rng  # noqa: F401 - hessquik_core.dask uses them from here
from .density import SpectralDensity, lanczos_tridiagonal, spectral_density
from .fisher_spectrum import (  # noqa: F401 - _randomized: hessquik_core.dask uses it from here
    ApproximationWarning,
    _randomized,
    empirical_fisher_eigenpairs,
    empirical_fisher_trace,
)
from .lanczos import LanczosNoConvergence, _auto_method, hessian_eigenpairs, top_eigenpairs  # noqa: F401
from .trace_estimation import hutchinson_diagonal, hutchinson_trace, hutchpp_trace

__all__ = [
    "ApproximationWarning",
    "LanczosNoConvergence",
    "SpectralDensity",
    "empirical_fisher_eigenpairs",
    "empirical_fisher_trace",
    "hessian_eigenpairs",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_tridiagonal",
    "spectral_density",
    "top_eigenpairs",
]

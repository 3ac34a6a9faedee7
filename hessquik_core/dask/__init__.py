"""Dask entry points: derivatives at points and curvature over data held as Dask arrays.

Importing this module imports Dask (``pip install 'hessquik-core[dask]'``);
the rest of the library does so only when it meets a Dask array:

* ``net(x_dask, ...)`` (:func:`call`): one task per batch chunk, lazy Dask
  results chunked like ``x``;
* :mod:`hessquik_core.curvature` functions given dask ``x, y``: the
  functions here, tree reductions over chunks (:class:`DaskCurvatureOperator`).

See ``docs/dask.md``.
"""

from ._curvature import (
    DaskCurvatureOperator,
    empirical_fisher,
    empirical_fisher_eigenpairs,
    empirical_fisher_operator,
    empirical_fisher_vp,
    ggn,
    ggn_operator,
    ggn_vp,
    gradient,
    hessian,
    hessian_operator,
    hvp,
    per_example_gradients,
    value_and_gradient,
)
from ._network import call

__all__ = [
    "DaskCurvatureOperator",
    "empirical_fisher_eigenpairs",
    "call",
    "empirical_fisher",
    "empirical_fisher_operator",
    "empirical_fisher_vp",
    "ggn",
    "ggn_operator",
    "ggn_vp",
    "gradient",
    "hessian",
    "hessian_operator",
    "hvp",
    "per_example_gradients",
    "value_and_gradient",
]

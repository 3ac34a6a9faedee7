"""Dask as a data source: derivatives at points and curvature over data held as Dask arrays.

Importing this module imports Dask (``pip install 'hessquik-core[dask]'``);
the rest of the library does so only when it meets a Dask array
(``hessquik_core._dask_hook.chunked_plugin``):

* ``net(x_dask, ...)`` (:func:`call`): one task per batch chunk, lazy Dask
  results chunked like ``x``;
* every :mod:`hessquik_core.curvature` function and operator given dask
  ``x, y`` (same function, same arguments): its data source is a
  :class:`DaskSource`, tree reductions of per-chunk partial sums;
  operators are :class:`DaskCurvatureOperator`;
* ``hq.pinn.Residual`` given dask points: ``hq.pinn.Problem`` is a
  :class:`DaskProblem`, its sums over the points tree reductions.

See ``docs/dask.md``.
"""

from ._curvature import DaskCurvatureOperator, DaskSource, curvature_source
from ._network import call
from ._pinn import DaskGaussNewtonOperator, DaskHessianOperator, DaskProblem
from ._pinn_chunks import residual_points

#: the plugin's problem class for hq.pinn.Problem with dask points (hessquik_core._dask_hook)
PinnProblem = DaskProblem

__all__ = [
    "DaskCurvatureOperator",
    "DaskGaussNewtonOperator",
    "DaskHessianOperator",
    "DaskProblem",
    "DaskSource",
    "call",
]
__all__ += ["curvature_source", "residual_points"]

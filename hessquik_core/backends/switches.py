"""Process-wide switches of the training-step machinery (:data:`SWITCHES`).

Split from :mod:`~hessquik_core.backends.base` (which re-exports them): the bottom
of the import graph, read by routes, backends and the pinn training functions.
"""

from __future__ import annotations

__all__ = ["SWITCHES", "Switches"]


class Switches:
    """Process-wide switches of the training-step machinery, set through
    :func:`hessquik_core.training.analytic_weight_gradient` and
    :func:`hessquik_core.training.step_workspace`. They live here, at the bottom
    of the import graph, so that neither the route reading one nor the backend
    reading the other imports :mod:`hessquik_core.training`."""

    #: recorded training steps of affine chains take the analytic weight gradient
    analytic_step: bool = True
    #: those steps keep their large stacks in a reused workspace
    step_workspace: bool = True
    #: recorded calls of the order-3/4 routes (``biharmonic=True``, the Taylor routes and
    #: functions) take the AD-free vjp of the per-point parameter Jacobians as their
    #: backward pass; off by default: measured 1.4–2.4× slower than autograd through the
    #: sweep (session 7, W8's networks), so it is an option, not the default
    analytic_higher_order: bool = False
    #: who computes the GEMMs of a stacked sweep on the CPU: ``"library"`` (the array
    #: library's own), ``"auto"`` (measured once per process: the faster of the library
    #: and NumPy's BLAS) or ``"host"`` (NumPy, for tests); see ``backends/_torch_gemm.py``
    gemm_provider: str = "library"


#: the one instance
SWITCHES = Switches()

"""Physics-informed training: per-point parameter Jacobians of derivative quantities.

:func:`jacobian`, :func:`quantities_and_jacobians`, :func:`jvp`, :func:`vjp` and
:func:`kfac_factors` live in :mod:`hessquik_core.pinn.jacobian`.
"""

from .jacobian import QUANTITIES, Quantities, jacobian, jvp, kfac_factors, quantities_and_jacobians, vjp

__all__ = ["QUANTITIES", "Quantities", "jacobian", "jvp", "kfac_factors", "quantities_and_jacobians", "vjp"]

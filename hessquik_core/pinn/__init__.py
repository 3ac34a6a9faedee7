r"""Physics-informed training: per-point parameter Jacobians, residual problems, second-order optimizers.

:func:`jacobian`, :func:`quantities_and_jacobians`, :func:`jvp`, :func:`vjp` and
:func:`kfac_factors` live in ``hessquik_core.pinn.jacobian``;
:class:`Problem` and :class:`Residual` (``hessquik_core.pinn.problem``) describe a
least-squares loss on the network's input derivatives, trained by :class:`GaussNewton`,
:class:`ENGD`, :class:`KFAC`, :class:`Adam` and :class:`LBFGS`. Guide: ``docs/pinn.md``.
"""

from ._base import Optimizer, StepRecord
from ._linearize import PointQuantities
from .first_order import LBFGS, Adam
from .jacobian import QUANTITIES, Quantities, jacobian, jvp, kfac_factors, quantities_and_jacobians, vjp
from .kfac import KFAC
from .operators import GaussNewtonOperator, LossHessianOperator
from .optim import ENGD, GaussNewton
from .problem import Problem, Residual

__all__ = ["QUANTITIES", "Quantities", "jacobian", "jvp", "kfac_factors", "quantities_and_jacobians", "vjp"]
__all__ += [
    "ENGD",
    "LBFGS",
    "Adam",
    "GaussNewton",
    "GaussNewtonOperator",
    "KFAC",
    "LossHessianOperator",
    "Optimizer",
    "PointQuantities",
    "Problem",
    "Residual",
    "StepRecord",
]

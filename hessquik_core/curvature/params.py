r"""Derivatives of a training loss with respect to the network parameters, without AD.

For data :math:`(x_n, y_n)_{n=1}^N` and a :class:`~hessquik_core.curvature.losses.Loss`
the training loss is :math:`C(\theta) = w\sum_n \ell(f(x_n;\theta), y_n)` with
:math:`w = 1/N` (``reduction="mean"``) or 1 (``"sum"``). This module gives

* the gradient :math:`\nabla C` and the per-example gradients
  :math:`\nabla_\theta \ell_n` (rows of an ``(N, P)`` array, *without* the
  factor :math:`w`),
* products with the exact Hessian :math:`H = \nabla^2 C` (Pearlmutter's
  R-operator, worked out per layer), with the generalised Gauss–Newton
  matrix :math:`G_{GN} = w \sum_n J_n^\top \nabla_f^2\ell_n\, J_n`
  (:math:`J_n = \partial f_n/\partial\theta`), and with the empirical Fisher
  / outer-product matrix :math:`G = \frac1N \sum_n \nabla\ell_n \nabla\ell_n^\top`
  (always :math:`1/N`, whatever the reduction; :math:`G \ne \nabla C\,\nabla C^\top`),
* those matrices as operators (matvec, dense assembly in column blocks of
  products under a memory budget, mini-batch accumulation).

``net`` may also be a torch ``nn.Sequential`` (or a single supported torch
module): it is converted once with :func:`hessquik_core.from_torch` (weights
copied) and the parameter vector is that of the converted network, whose
``K`` of a ``Linear`` layer is torch's ``weight`` transposed, see
:class:`ParameterLayout`.

Every layer owns its parameter derivatives (``param_vjp``, ``param_rop_forward``,
``param_rop_backward`` in :mod:`hessquik_core.layers`); this package only composes
them. Parameter order is ``net.state_dict()`` order; each parameter is
flattened row-major (C order), see :class:`ParameterLayout`.

This module is the historic import path of those names; they live in

* :mod:`~hessquik_core.curvature.layout` — :class:`ParameterLayout`,
  :func:`parameter_layout`, :func:`flatten_parameters`;
* :mod:`~hessquik_core.curvature.operators` — :class:`LinearOperatorBase`,
  :class:`DenseOperator`, :func:`aslinearoperator`;
* :mod:`~hessquik_core.curvature.problem` — the network bound to a call, the
  gradient and R-passes, mini-batches, :class:`CurvatureOperator`;
* :mod:`~hessquik_core.curvature.gradients` — :func:`value_and_gradient`,
  :func:`gradient`, :func:`per_example_gradients`;
* :mod:`~hessquik_core.curvature.products` — the ``*_operator`` and ``*_vp`` functions;
* :mod:`~hessquik_core.curvature.dense` — :func:`hessian`, :func:`ggn`,
  :func:`empirical_fisher`.
"""

from __future__ import annotations

from .dense import empirical_fisher, ggn, hessian
from .gradients import gradient, per_example_gradients, value_and_gradient
from .layout import ParameterLayout, flatten_parameters, parameter_layout
from .operators import DenseOperator, LinearOperatorBase, aslinearoperator
from .problem import DEFAULT_MEMORY_BUDGET, CurvatureOperator  # noqa: F401 - the constant stays importable here
from .products import (
    empirical_fisher_operator,
    empirical_fisher_vp,
    ggn_operator,
    ggn_vp,
    hessian_operator,
    hvp,
)

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "LinearOperatorBase",
    "ParameterLayout",
    "aslinearoperator",
    "empirical_fisher",
    "empirical_fisher_operator",
    "empirical_fisher_vp",
    "flatten_parameters",
    "ggn",
    "ggn_operator",
    "ggn_vp",
    "gradient",
    "hessian",
    "hessian_operator",
    "hvp",
    "parameter_layout",
    "per_example_gradients",
    "value_and_gradient",
]

r"""Pointwise activation functions with their derivatives.

Every activation is a small immutable object whose call

.. code-block:: python

    sigma, dsigma, d2sigma = act(z, order=2, xp=xp)

returns :math:`\sigma(z)`, :math:`\sigma'(z)` and :math:`\sigma''(z)` (``None``
beyond ``order``), all of ``z``'s shape, dtype and device, and whose
:meth:`~Activation.derivatives` returns :math:`(\sigma, \sigma', \dots,
\sigma^{(k)})` up to :attr:`~Activation.max_order`. The formulas are chosen
so that no intermediate overflows for :math:`|z|` up to :math:`10^4` in
float32 or float64: exponentials are only ever taken of :math:`-|z|`.

A new activation is one class: ``_eval`` (σ, σ′, σ″) and, for orders 3 and 4,
``_eval_high``; its ``name``, ``torch_twin`` and ``hessquik_name`` (the torch
module and the hessQuik class computing the same function), and
``@register_activation``. Everything else (:func:`get_activation`,
``hq.save``/``hq.load``, ``to_torch``/``from_torch``, ``from_hessquik``,
:mod:`hessquik_core.compat`) finds it in the registry :data:`ACTIVATIONS`.

The package's modules: ``_base`` (the base class, the registry, the lookups),
``_elementary`` (tanh, sigmoid, softplus, SiLU, sin, identity, quadratic,
antiTanh, ReLU), ``_smooth`` (GELU, Mish, Gaussian, LogSigmoid), ``_piecewise`` (ELU, CELU,
SELU, Softsign: smooth but for a kink at 0), ``_custom`` (:func:`custom`),
``torch_modules`` (torch twins that ``torch.nn`` lacks).
"""

from __future__ import annotations

from ._base import (
    _REGISTRY,
    ACTIVATIONS,
    Activation,
    _backend_of,
    _sigmoid_parts,
    get_activation,
    register_activation,
    registered_class,
    require_order,
)
from ._custom import CustomActivation, custom
from ._elementary import AntiTanh, Identity, Quadratic, ReLU, Sigmoid, SiLU, Sin, Softplus, Tanh
from ._piecewise import CELU, ELU, SELU, Softsign
from ._smooth import GELU, Gaussian, LogSigmoid, Mish

__all__ = [
    "ACTIVATIONS",
    "CELU",
    "ELU",
    "GELU",
    "SELU",
    "Softsign",
    "Activation",
    "AntiTanh",
    "CustomActivation",
    "Gaussian",
    "Identity",
    "LogSigmoid",
    "Mish",
    "Quadratic",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Sin",
    "Softplus",
    "Tanh",
    "custom",
    "get_activation",
    "register_activation",
    "registered_class",
    "require_order",
]
# private names other modules and tests use
_ = (_REGISTRY, _backend_of, _sigmoid_parts)

#: the registered activations, by name (:func:`register_activation`)
ACTIVATIONS = ACTIVATIONS  # noqa: PLW0127 - re-bound here so that the docs find its comment

# ReLU is documented twice (here and as hessquik_core.interop.ReLU in the migration guide):
# one canonical name, the public one, keeps Sphinx from seeing two classes
ReLU.__module__ = __name__

"""Layers: each owns its local first and second derivatives, one file per layer.

The contract every layer fulfils is :class:`~hessquik_core.layers.base.Layer`
(see the documentation page "Adding a layer"); the shared rule of
:math:`\\sigma(uM + b)` lives in :mod:`hessquik_core.rules.affine`.

Every module of this package is imported here, so a layer file dropped into
it and decorated with :func:`register_layer` is exported as
``hessquik_core.<ClassName>`` and known to ``save``/``load``, ``to_torch``
and ``from_torch`` without editing any other file.
"""

import importlib
import pkgutil

from .base import LAYERS, Layer, register_layer
from .dense import SingleLayer
from .icnn import ICNNLayer
from .quadratic import QuadraticICNNLayer, QuadraticLayer
from .resnet import ResnetLayer

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
globals().update(LAYERS)

__all__ = [
    "ICNNLayer",
    "LAYERS",
    "Layer",
    "QuadraticICNNLayer",
    "QuadraticLayer",
    "ResnetLayer",
    "SingleLayer",
    "register_layer",
]
__all__ += sorted(set(LAYERS) - set(__all__))  # layers found by the import loop above

"""hessquik-core: exact gradients, Hessians and Laplacians of layered networks
without automatic differentiation, on NumPy, CuPy, PyTorch and any Array-API
library.

>>> import numpy as np, hessquik_core as hq
>>> net = hq.ResnetNN(width=3, depth=2, h=0.5, act="tanh", seed=0)
>>> res = net(np.ones((4, 3)), gradient=True, hessian=True)
>>> res.hessian.shape
(4, 3, 3, 3)
"""

from . import activations, checks, compat, curvature, higher, layers, networks, pinn, training
from .activations import (
    GELU,
    AntiTanh,
    Gaussian,
    Identity,
    Mish,
    Quadratic,
    Sigmoid,
    SiLU,
    Sin,
    Softplus,
    Tanh,
)
from .estimators import (
    Estimate,
    biharmonic_estimate,
    divergence_estimate,
    laplacian_estimate,
    weighted_laplacian,
)
from .higher import biharmonic, pure_partials, taylor_derivatives
from .interop import from_torch, to_torch
from .interop_hessquik import from_hessquik
from .io import load, save
from .layers import ICNNLayer, QuadraticICNNLayer, QuadraticLayer, ResnetLayer, SingleLayer
from .networks import ICNN, NN, FullyConnectedNN, MemoryBudgetError, ResnetNN, Result
from .variable_coefficients import second_order_operator

__version__ = "0.1.0"

# every registered layer (one file each in hessquik_core/layers) is hq.<ClassName>
globals().update(layers.LAYERS)

__all__ = [
    "ICNN",
    "NN",
    "AntiTanh",
    "FullyConnectedNN",
    "GELU",
    "Gaussian",
    "Mish",
    "Estimate",
    "ICNNLayer",
    "MemoryBudgetError",
    "Identity",
    "Quadratic",
    "QuadraticICNNLayer",
    "QuadraticLayer",
    "ResnetLayer",
    "ResnetNN",
    "Result",
    "SiLU",
    "Sigmoid",
    "Sin",
    "SingleLayer",
    "Softplus",
    "Tanh",
    "activations",
    "curvature",
    "pinn",
    "training",
    "checks",
    "from_hessquik",
    "from_torch",
    "to_torch",
    "save",
    "load",
    "compat",
    "divergence_estimate",
    "laplacian_estimate",
    "weighted_laplacian",
    "biharmonic",
    "biharmonic_estimate",
    "higher",
    "pure_partials",
    "second_order_operator",
    "taylor_derivatives",
    "layers",
    "networks",
]
__all__ += sorted(set(layers.LAYERS) - set(__all__))

"""hessquik-core: exact gradients, Hessians and Laplacians of layered networks
without automatic differentiation, on NumPy, CuPy, PyTorch and any Array-API
library.

>>> import numpy as np, hessquik_core as hq
>>> net = hq.ResnetNN(width=3, depth=2, h=0.5, act="tanh", seed=0)
>>> res = net(np.ones((4, 3)), gradient=True, hessian=True)
>>> res.hessian.shape
(4, 3, 3, 3)
"""

from . import activations, layers, networks
from .activations import AntiTanh, Identity, Quadratic, Sigmoid, SiLU, Sin, Softplus, Tanh
from .layers import ICNNLayer, QuadraticICNNLayer, QuadraticLayer, ResnetLayer, SingleLayer
from .networks import ICNN, NN, FullyConnectedNN, ResnetNN, Result

__version__ = "0.1.0"

__all__ = [
    "ICNN",
    "NN",
    "AntiTanh",
    "FullyConnectedNN",
    "ICNNLayer",
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
    "layers",
    "networks",
]

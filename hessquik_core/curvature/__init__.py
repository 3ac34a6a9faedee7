r"""Curvature of a training loss with respect to the network parameters, without AD.

For a network :math:`f(x;\theta)` with :math:`P` parameters, data
:math:`(x_n, y_n)_{n\le N}` and a loss (:class:`MSELoss`,
:class:`CrossEntropyLoss`), with :math:`C = w\sum_n \ell(f(x_n;\theta), y_n)`
(:math:`w = 1/N` for the default ``reduction="mean"``):

* :func:`value_and_gradient`, :func:`per_example_gradients` ``(N, P)``;
* exact Hessian-vector products (:func:`hvp`, :func:`hessian_operator`) from
  Pearlmutter's R-operator worked out per layer, the dense Hessian
  (:func:`hessian`), generalised Gauss–Newton (:func:`ggn_vp`) and the
  empirical Fisher :math:`G = \frac1N\sum_n g_n g_n^\top` (:func:`empirical_fisher_vp`);
* spectra: :func:`top_eigenpairs` (Lanczos), :func:`empirical_fisher_eigenpairs`,
  :func:`empirical_fisher_trace` (exact), :func:`hutchinson_trace`, :func:`hutchpp_trace`,
  :func:`hutchinson_diagonal`, :func:`spectral_density`;
* :class:`LowRankApproximation`, :class:`FullRankApproximation` operators;
* Kronecker-factored curvature: :func:`kfac_operator` (KFAC, type-2 / MC / empirical
  Fisher) and :func:`ekfac_operator` (eigenvalue-corrected), with damped inverses and
  eigendecompositions from the factors (:class:`KFACOperator`, :class:`EKFACOperator`).

Parameters are ordered as in ``net.state_dict()``, each flattened row-major
(:class:`ParameterLayout`). Conventions and derivations: ``docs/curvature.md``.
Every computation runs in the array library of ``x`` (NumPy, torch, CuPy or
any Array-API library); SciPy is imported only by ``method="scipy"`` Lanczos.

>>> import numpy as np, hessquik_core as hq
>>> from hessquik_core import curvature as cv
>>> net = hq.FullyConnectedNN([2, 4, 3], act="tanh", seed=0)
>>> x, y = np.ones((5, 2)), np.array([0, 1, 2, 0, 1])
>>> cv.hessian(net, x, y, "cross_entropy").shape
(27, 27)
"""

from . import approx, kfac, losses, params, spectra
from .approx import FullRankApproximation, LowRankApproximation
from .kfac import ekfac_operator, kfac_operator
from .kfac_ops import EKFACOperator, KFACOperator, KroneckerBlock, KroneckerEigen, KroneckerEigenOperator
from .losses import CrossEntropyLoss, Loss, MSELoss, get_loss
from .params import (
    CurvatureOperator,
    DenseOperator,
    LinearOperatorBase,
    ParameterLayout,
    aslinearoperator,
    empirical_fisher,
    empirical_fisher_operator,
    empirical_fisher_vp,
    flatten_parameters,
    ggn,
    ggn_operator,
    ggn_vp,
    gradient,
    hessian,
    hessian_operator,
    hvp,
    parameter_layout,
    per_example_gradients,
    value_and_gradient,
)
from .spectra import (
    ApproximationWarning,
    LanczosNoConvergence,
    SpectralDensity,
    empirical_fisher_eigenpairs,
    empirical_fisher_trace,
    hessian_eigenpairs,
    hutchinson_diagonal,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_tridiagonal,
    spectral_density,
    top_eigenpairs,
)
from .torch_order import TorchOrderOperator

__all__ = [
    "ApproximationWarning",
    "CrossEntropyLoss",
    "CurvatureOperator",
    "DenseOperator",
    "EKFACOperator",
    "FullRankApproximation",
    "KFACOperator",
    "KroneckerBlock",
    "KroneckerEigen",
    "KroneckerEigenOperator",
    "LanczosNoConvergence",
    "LinearOperatorBase",
    "Loss",
    "LowRankApproximation",
    "MSELoss",
    "ParameterLayout",
    "SpectralDensity",
    "TorchOrderOperator",
    "approx",
    "aslinearoperator",
    "ekfac_operator",
    "empirical_fisher",
    "empirical_fisher_eigenpairs",
    "empirical_fisher_operator",
    "empirical_fisher_trace",
    "empirical_fisher_vp",
    "flatten_parameters",
    "get_loss",
    "ggn",
    "ggn_operator",
    "ggn_vp",
    "gradient",
    "hessian",
    "hessian_eigenpairs",
    "hessian_operator",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "hvp",
    "kfac",
    "kfac_operator",
    "lanczos_tridiagonal",
    "losses",
    "params",
    "parameter_layout",
    "per_example_gradients",
    "spectra",
    "spectral_density",
    "top_eigenpairs",
    "value_and_gradient",
]

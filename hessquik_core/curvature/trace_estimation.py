r"""Stochastic estimates of the trace and the diagonal of a symmetric operator.

:func:`hutchinson_trace`, :func:`hutchpp_trace` (Hutch++) and
:func:`hutchinson_diagonal`; probes drawn on the host, so one seed gives the
same estimate on every backend, each with its standard error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..estimators import Estimate
from ._spectral import (
    _apply_blocks,
    _check_int,
    _mean_se,
    _probes,
    _rng,
)
from .operators import aslinearoperator

__all__ = ["hutchinson_diagonal", "hutchinson_trace", "hutchpp_trace"]


def hutchinson_trace(
    op: Any,
    n_samples: int = 32,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    block_size: int | None = None,
) -> Estimate:
    r"""Hutchinson's estimate :math:`\mathrm{tr} A \approx \frac1s\sum_i z_i^\top A z_i`.

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_samples : int
        Probes ``s >= 2``.
    seed : int or numpy.random.Generator, optional
        Probes are drawn on the host, so a seed gives the same estimate on every backend.
    distribution : {"rademacher", "gaussian"}
    block_size : int, optional
        Probes per product (default: all at once).

    Returns
    -------
    Estimate
        Python floats: ``value`` (sample mean), ``stderr`` (sample
        standard deviation, ``ddof=1``, over :math:`\sqrt s`), ``num_samples``.
    """
    op = aslinearoperator(op)
    s = _check_int("n_samples", n_samples, 2)
    Z = op.asarray(_probes(_rng(seed), op.size, s, distribution))
    AZ = _apply_blocks(op, Z, block_size)
    samples = op.to_numpy(op.xp.sum(Z * AZ, axis=0))
    mean, se = _mean_se(samples)
    return Estimate(value=mean, stderr=se, num_samples=s)


def hutchpp_trace(
    op: Any,
    n_matvecs: int = 48,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
) -> Estimate:
    r"""Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with ``n_matvecs`` products.

    A third of the products sketch the range, :math:`Q = \mathrm{orth}(AS)`;
    :math:`\mathrm{tr}(Q^\top A Q)` is exact, and Hutchinson estimates the
    rest, :math:`\mathrm{tr}((I-QQ^\top)A(I-QQ^\top))`, from the last third.
    ``stderr`` is the standard error of that residual part (the sketch part
    has none given ``Q``); ``num_samples`` counts the residual probes.

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_matvecs : int
        Total operator-vector products, ``>= 6``.
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}

    Returns
    -------
    Estimate
        Python floats ``value``, ``stderr`` and ``num_samples``.
    """
    op = aslinearoperator(op)
    total = _check_int("n_matvecs", n_matvecs, 6)
    xp = op.xp
    s = total // 3
    rng = _rng(seed)
    S = op.asarray(_probes(rng, op.size, s, distribution))
    G = op.asarray(_probes(rng, op.size, total - 2 * s, distribution))
    Q, _ = xp.linalg.qr(op.matmat(S))
    t1 = float(op.to_numpy(xp.sum(Q * op.matmat(Q))))
    Gp = G - Q @ (xp.matrix_transpose(Q) @ G)
    samples = op.to_numpy(xp.sum(Gp * op.matmat(Gp), axis=0))
    mean, se = _mean_se(samples)
    return Estimate(value=t1 + mean, stderr=se, num_samples=int(samples.shape[0]))


def hutchinson_diagonal(
    op: Any,
    n_samples: int = 32,
    *,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    block_size: int | None = None,
) -> Estimate:
    r"""Estimate of :math:`\mathrm{diag}(A) \approx \frac1s \sum_i z_i \odot A z_i` (Bekas et al. 2007).

    Unbiased for Rademacher probes (exact for diagonal ``A``).

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_samples : int
        Probes ``s >= 2``.
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}
    block_size : int, optional
        Probes per product (default: all at once).

    Returns
    -------
    Estimate
        ``value`` and ``stderr``: arrays of shape (P,) in the operator's
        library; ``num_samples``.
    """
    op = aslinearoperator(op)
    s = _check_int("n_samples", n_samples, 2)
    xp = op.xp
    Z = op.asarray(_probes(_rng(seed), op.size, s, distribution))
    D = Z * _apply_blocks(op, Z, block_size)  # (P, s)
    mean = xp.mean(D, axis=1)
    var = xp.sum((D - mean[:, None]) ** 2, axis=1) / (s - 1)
    return Estimate(value=mean, stderr=xp.sqrt(var / s), num_samples=s)

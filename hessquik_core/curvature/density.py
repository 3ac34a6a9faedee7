r"""Spectral density of a symmetric operator by stochastic Lanczos quadrature.

:func:`spectral_density` returns a :class:`SpectralDensity`;
:func:`lanczos_tridiagonal` runs the block of Lanczos recurrences it is built on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._progress import progress_bar
from ..estimators import Estimate
from ._spectral import (
    _check_int,
    _host_dtype,
    _mean_se,
    _probes,
    _rng,
)
from .operators import aslinearoperator

__all__ = ["SpectralDensity", "lanczos_tridiagonal", "spectral_density"]


@dataclass
class SpectralDensity:
    r"""Stochastic Lanczos quadrature of the density :math:`\phi(t) = \frac1P\sum_i \delta(t-\lambda_i)`.

    For a probe :math:`v` with :math:`\lVert v \rVert = 1`, ``m`` Lanczos steps
    give :math:`T = Y\,\mathrm{diag}(\theta)\,Y^\top`; Gauss quadrature gives
    :math:`v^\top f(A) v \approx \sum_j \tau_j f(\theta_j)` with
    :math:`\tau_j = (e_1^\top y_j)^2` (so :math:`\sum_j \tau_j = 1`, exact for
    polynomials of degree :math:`< 2m`). For Rademacher :math:`v = z/\sqrt P`,
    :math:`\mathbb{E}[v^\top f(A) v] = \frac1P \mathrm{tr} f(A)`.

    Attributes
    ----------
    nodes : numpy.ndarray of shape (n_vectors, m)
        Ritz values :math:`\theta_{lj}` per probe.
    weights : numpy.ndarray of shape (n_vectors, m)
        Quadrature weights :math:`\tau_{lj}` per probe (each row sums to 1).
    size : int
        ``P``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    size: int

    @property
    def n_vectors(self) -> int:
        """Number of probes ``L``."""
        return int(self.nodes.shape[0])

    def trace(self, f: Any = None) -> Estimate:
        r"""Estimate of :math:`\mathrm{tr} f(A)`: ``P·Σ_j τ_j f(θ_j)`` per probe, mean and spread.

        Parameters
        ----------
        f : callable, optional
            Elementwise function of a NumPy array (default :math:`f(t) = t`,
            the trace); e.g. ``np.log`` for the log-determinant of a
            positive definite ``A``.

        Returns
        -------
        Estimate
            Python floats ``value``, ``stderr``; ``num_samples = n_vectors``.
        """
        vals = self.nodes if f is None else f(self.nodes)
        mean, se = _mean_se(self.size * np.sum(self.weights * vals, axis=1))
        return Estimate(value=mean, stderr=se, num_samples=self.n_vectors)

    def density(self, grid: Any, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Gaussian-smoothed density on ``grid``, mean and standard error over the probes.

        :math:`\hat\phi(t) = \frac{1}{L}\sum_l \sum_j \tau_{lj}\, \mathcal N(t;\theta_{lj},\sigma^2)`;
        integrates to 1.

        Parameters
        ----------
        grid : array_like of shape (G,)
            Points :math:`t`.
        sigma : float, optional
            Width of the Gaussians; default 1 % of the node range.

        Returns
        -------
        mean : numpy.ndarray of shape (G,)
        stderr : numpy.ndarray of shape (G,)
            Over the probes (NaN for a single probe).
        """
        grid = np.asarray(grid, dtype=np.float64)
        if sigma is None:
            span = float(np.ptp(self.nodes)) or 1.0
            sigma = 0.01 * span
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        d = (grid[None, None, :] - self.nodes[:, :, None]) / sigma
        per = np.sum(self.weights[:, :, None] * np.exp(-0.5 * d * d), axis=1) / (
            sigma * math.sqrt(2 * math.pi)
        )
        se = (
            per.std(axis=0, ddof=1) / math.sqrt(self.n_vectors)
            if self.n_vectors > 1
            else np.full(grid.shape, np.nan)
        )
        return per.mean(axis=0), se

    def plot(
        self,
        ax: Any = None,
        *,
        grid: Any = None,
        sigma: float | None = None,
        n_points: int = 400,
        stderr: bool = True,
        log: bool = False,
        **kwargs: Any,
    ) -> Any:
        r"""Plot the smoothed density :meth:`density` (matplotlib, imported here).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw; default a new figure's axes.
        grid : array_like of shape (G,), optional
            Default ``n_points`` points spanning the nodes, with a margin of
            five ``sigma``.
        sigma : float, optional
            As in :meth:`density`.
        n_points : int
            Grid size when ``grid`` is not given.
        stderr : bool
            Shade ``mean ± stderr`` over the probes (needs ``n_vectors > 1``).
        log : bool
            Logarithmic density axis (spectra of trained networks span decades).
        **kwargs
            Passed to ``ax.plot`` for the mean curve.

        Returns
        -------
        matplotlib.axes.Axes
        """
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots()
        if sigma is None:
            sigma = 0.01 * (float(np.ptp(self.nodes)) or 1.0)
        if grid is None:
            n = _check_int("n_points", n_points, 2)
            lo, hi = float(np.min(self.nodes)) - 5 * sigma, float(np.max(self.nodes)) + 5 * sigma
            grid = np.linspace(lo, hi, n)
        grid = np.asarray(grid, dtype=np.float64)
        mean, se = self.density(grid, sigma)
        kwargs.setdefault("label", f"SLQ density ({self.n_vectors} probes)")
        (line,) = ax.plot(grid, mean, **kwargs)
        if stderr and self.n_vectors > 1:
            ax.fill_between(grid, np.maximum(mean - se, 0.0), mean + se, color=line.get_color(), alpha=0.25)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        return ax


def lanczos_tridiagonal(
    op: Any, V: Any, n_steps: int, *, progress: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""``n_steps`` Lanczos steps from every column of ``V : (P, L)`` (unit norm), all at once.

    Each step is one product with an ``(P, L)`` block; every probe is fully
    reorthogonalised against its own basis (memory ``n_steps·P·L``). A probe
    whose Krylov space is exhausted continues with zero vectors, which
    leaves decoupled zero blocks of zero quadrature weight.

    Parameters
    ----------
    op : LinearOperatorBase
    V : array of shape (P, L)
        Start vectors with unit norm, in the operator's library.
    n_steps : int
        Lanczos steps ``m`` (at most ``P``).
    progress : bool, optional
        Progress bar over the steps; ``None`` (default) only when
        interactive with tqdm installed.

    Returns
    -------
    alpha : numpy.ndarray of shape (L, m)
        Diagonals of the tridiagonal matrices.
    beta : numpy.ndarray of shape (L, m - 1)
        Off-diagonals.
    """
    xp = op.xp
    L = V.shape[1]
    m = min(_check_int("n_steps", n_steps, 1), op.size)
    eps = float(np.finfo(_host_dtype(op)).eps)
    basis = [V]
    alpha = np.zeros((L, m))
    beta = np.zeros((L, max(m - 1, 0)))
    anorm = np.zeros(L)
    bar = progress_bar(progress, total=m, desc="Lanczos steps", unit="step")
    for j in range(m):
        w = op.matmat(basis[j])
        Wst = xp.stack(basis, axis=0)  # (j+1, P, L)
        for _pass in range(2):
            h = xp.sum(Wst * w[None, :, :], axis=1)  # (j+1, L)
            w = w - xp.sum(Wst * h[:, None, :], axis=0)
            if _pass == 0:
                alpha[:, j] = op.to_numpy(h[j, :])
            else:
                alpha[:, j] += op.to_numpy(h[j, :])
        bar.update()
        if j + 1 == m:
            break
        b = op.to_numpy(xp.linalg.vector_norm(w, axis=0)).astype(np.float64)
        anorm = np.maximum(anorm, np.abs(alpha[:, j]) + b)
        dead = b <= 100 * eps * np.maximum(anorm, 1e-300)
        b = np.where(dead, 0.0, b)
        beta[:, j] = b
        inv = op.asarray(np.where(dead, 0.0, 1.0 / np.where(dead, 1.0, b))[None, :])
        basis.append(w * inv)
    bar.close()
    return alpha, beta


def spectral_density(
    op: Any,
    *,
    n_vectors: int = 8,
    n_steps: int = 30,
    seed: int | np.random.Generator | None = None,
    distribution: str = "rademacher",
    progress: bool | None = None,
) -> SpectralDensity:
    r"""Stochastic Lanczos quadrature nodes and weights (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

    ``n_vectors`` probes (Rademacher, normalised) each run ``n_steps``
    Lanczos steps, all probes in one block product per step; see
    :class:`SpectralDensity` for the quadrature.

    Parameters
    ----------
    op : LinearOperatorBase or array of shape (P, P)
        Symmetric operator or matrix.
    n_vectors : int
        Probes ``L``.
    n_steps : int
        Lanczos steps ``m`` per probe (quadrature exact for polynomials of
        degree below ``2m``).
    seed : int or numpy.random.Generator, optional
    distribution : {"rademacher", "gaussian"}
    progress : bool, optional
        Progress bar over the Lanczos steps (tqdm); ``None`` (default) only
        in an interactive session with tqdm installed, ``True`` always,
        ``False`` never.

    Returns
    -------
    SpectralDensity
        ``nodes`` and ``weights`` of shape (n_vectors, n_steps); ``.density(grid)``,
        ``.trace(f)``, ``.plot()``.
    """
    op = aslinearoperator(op)
    nv = _check_int("n_vectors", n_vectors, 1)
    Z = _probes(_rng(seed), op.size, nv, distribution)
    Z = Z / np.linalg.norm(Z, axis=0, keepdims=True)
    alpha, beta = lanczos_tridiagonal(op, op.asarray(Z), n_steps, progress=progress)
    m = alpha.shape[1]
    nodes = np.zeros((nv, m))
    weights = np.zeros((nv, m))
    for l in range(nv):
        T = np.diag(alpha[l]) + np.diag(beta[l], 1) + np.diag(beta[l], -1)
        theta, Y = np.linalg.eigh(T)
        nodes[l], weights[l] = theta, Y[0, :] ** 2
    return SpectralDensity(nodes=nodes, weights=weights, size=op.size)

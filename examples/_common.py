"""Shared bits of the example scripts: command line, output folder, test functions.

Not part of the library. Every example has a ``main(argv) -> dict`` that
returns the numbers it reports, so the tests can run it in ``--quick`` mode
and check them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_OUTDIR = Path(__file__).resolve().parent / "output"


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every example shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds of training (used by the tests); errors are larger",
    )
    p.add_argument(
        "--outdir",
        type=Path,
        default=DEFAULT_OUTDIR,
        help=f"where figures are written (default {DEFAULT_OUTDIR})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of data and initial weights")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these problems are small, and more threads "
        "only contend on shared CI runners)",
    )
    return p


def setup(args) -> None:
    """Seed torch, set its thread count, make the output folder."""
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if not args.no_plot:
        args.outdir.mkdir(parents=True, exist_ok=True)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (examples never open windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_solution_and_loss(path, X, Y, exact, approx, history, switch_step, *, names, xy_labels, loss_title):
    """The figure of a trained 2-D PINN example: exact field, network field (shared colour scale),
    their absolute difference, and the training loss with the Adam → L-BFGS switch marked
    (``switch_step=None``: no switch).

    ``names = (exact title, network title, difference title)``; ``xy_labels = (x label, y label)``."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 4, figsize=(17, 4), constrained_layout=True)
    levels = np.linspace(min(exact.min(), approx.min()), max(exact.max(), approx.max()), 21)
    for a, z, title in ((ax[0], exact, names[0]), (ax[1], approx, names[1])):
        c = a.contourf(X, Y, z, levels=levels, cmap="viridis")
        a.set_title(title)
    fig.colorbar(c, ax=ax[:2], shrink=0.9)
    c = ax[2].contourf(X, Y, np.abs(approx - exact), levels=20, cmap="magma")
    ax[2].set_title(names[2])
    fig.colorbar(c, ax=ax[2], shrink=0.9)
    for a in ax[:3]:
        a.set_aspect("equal")
        a.set_xlabel(xy_labels[0])
        a.set_ylabel(xy_labels[1])
    ax[3].semilogy(history)
    if switch_step is None:  # one optimizer throughout (e.g. Gauss-Newton)
        ax[3].set_xlabel("step")
    else:
        ax[3].axvline(switch_step, color="gray", ls="--", lw=1, label="Adam → L-BFGS")
        ax[3].legend()
        ax[3].set_xlabel("step (Adam, then L-BFGS outer steps)")
    ax[3].set_title(loss_title)
    ax[3].grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def rel_err(approx, exact) -> float:
    r"""Relative error :math:`\|a - e\|_F / \|e\|_F` over all points and entries."""
    approx, exact = np.asarray(approx), np.asarray(exact)
    return float(np.linalg.norm((approx - exact).ravel()) / np.linalg.norm(exact.ravel()))


# ---------------------------------------------------------------------------
# MATLAB's "peaks" function with its exact gradient and Hessian
# ---------------------------------------------------------------------------


def _gauss_term(p, dp, d2p, q, dq, d2q):
    r"""Value, gradient and Hessian of :math:`g = p\,e^{q}`:

    .. math::
        \nabla g = e^q(\nabla p + p\nabla q),\qquad
        \nabla^2 g = e^q\big(\nabla^2 p + \nabla p\nabla q^\top + \nabla q\nabla p^\top
        + p(\nabla^2 q + \nabla q\nabla q^\top)\big).
    """
    e = np.exp(q)
    g = p * e
    grad = e[:, None] * (dp + p[:, None] * dq)
    outer = dp[:, :, None] * dq[:, None, :]
    hess = e[:, None, None] * (
        d2p + outer + np.swapaxes(outer, 1, 2) + p[:, None, None] * (d2q + dq[:, :, None] * dq[:, None, :])
    )
    return g, grad, hess


def peaks(xy):
    r"""MATLAB's ``peaks`` and its exact derivatives at points ``xy : (n, 2)``.

    .. math::
        f(x, y) = 3(1-x)^2 e^{-x^2-(y+1)^2} - 10\,(x/5 - x^3 - y^5)\,e^{-x^2-y^2}
        - \tfrac13 e^{-(x+1)^2-y^2}

    Each term is a polynomial times a Gaussian, differentiated by
    :func:`_gauss_term`. Returns ``f (n,)``, ``∇f (n, 2)``, ``∇²f (n, 2, 2)``.
    """
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    n = x.shape[0]
    zero, one = np.zeros(n), np.ones(n)

    def vec(a, b):
        return np.stack([a, b], axis=-1)

    def mat(a, b, c, d):
        return np.stack([vec(a, b), vec(c, d)], axis=-2)

    d2q = mat(-2 * one, zero, zero, -2 * one)
    t1 = _gauss_term(
        3 * (1 - x) ** 2,
        vec(-6 * (1 - x), zero),
        mat(6 * one, zero, zero, zero),
        -(x**2) - (y + 1) ** 2,
        vec(-2 * x, -2 * (y + 1)),
        d2q,
    )
    t2 = _gauss_term(
        -2 * x + 10 * x**3 + 10 * y**5,
        vec(-2 + 30 * x**2, 50 * y**4),
        mat(60 * x, zero, zero, 200 * y**3),
        -(x**2) - y**2,
        vec(-2 * x, -2 * y),
        d2q,
    )
    t3 = _gauss_term(
        -one / 3,
        vec(zero, zero),
        mat(zero, zero, zero, zero),
        -((x + 1) ** 2) - y**2,
        vec(-2 * (x + 1), -2 * y),
        d2q,
    )
    return tuple(a + b + c for a, b, c in zip(t1, t2, t3))

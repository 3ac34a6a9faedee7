r"""Physics-informed network for the Poisson equation -Δu = f on [0, 1]^d (d = 2 or 10).

A network :math:`u_\theta : \mathbb R^d \to \mathbb R` is trained so that
:math:`-\Delta u_\theta = f` at interior collocation points and
:math:`u_\theta = g` at boundary points:

.. math::
    \mathcal L(\theta) = \frac{\operatorname{mean}_i\,(\Delta u_\theta(x_i) + f(x_i))^2}
                              {\operatorname{mean}_i\, f(x_i)^2}
    + \operatorname{mean}_j\,(u_\theta(y_j) - g(y_j))^2 .

``net(x, laplacian=True)`` returns :math:`\Delta u_\theta` from the forward
recurrence for the trace alone: it carries the first derivatives
``(n, d, width)`` and the Laplacian ``(n, width)`` of every layer, never a
``d × d`` Hessian. With torch tensors the whole expression is differentiable
in θ; training is Adam followed by L-BFGS (which escapes the plateau near
:math:`u_\theta \approx 0` that Adam alone often sits on).

Exact solutions (so that the error can be measured):

* ``--dim 2``: :math:`u = \sin(\pi x)\sin(\pi y)`, :math:`f = 2\pi^2 u`, :math:`g = 0`;
* ``--dim d`` (d ≠ 2): :math:`u = \frac1d\sum_i \sin(\pi x_i) + \frac1d\sum_{i<d} x_i x_{i+1}`,
  :math:`f = \frac{\pi^2}{d}\sum_i \sin(\pi x_i)` (the coupling terms are harmonic),
  :math:`g = u` on the boundary.

The reported error is :math:`\|u_\theta - u\|_2 / \|u\|_2` over 5000 random
points, computed in NumPy after ``net.to("numpy")``.

Run::

    python examples/poisson.py                # 2-D, ~25 s
    python examples/poisson.py --dim 10       # 10-D, ~40 s
    python examples/poisson.py --quick        # a few seconds, larger error
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, parser, plot_solution_and_loss, rel_err, setup  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import fit, torch_parameters  # noqa: E402

PI = np.pi

# (n_interior, n_boundary, adam_steps, lbfgs_steps) per (dimension kind, quick)
SETTINGS = {
    ("2d", False): (1000, 200, 500, 40),
    ("2d", True): (500, 100, 300, 10),
    ("nd", False): (600, 600, 400, 25),
    ("nd", True): (300, 300, 200, 8),
}


def exact(x):
    """Exact solution ``u (n,)`` and right-hand side ``f (n,)`` at ``x (n, d)``."""
    d = x.shape[1]
    if d == 2:
        u = np.sin(PI * x[:, 0]) * np.sin(PI * x[:, 1])
        return u, 2 * PI**2 * u
    s = np.sin(PI * x)
    u = s.sum(axis=1) / d + (x[:, :-1] * x[:, 1:]).sum(axis=1) / d
    return u, PI**2 * s.sum(axis=1) / d


def boundary_points(n: int, d: int, rng) -> np.ndarray:
    """Uniform points on the faces of the unit cube: one coordinate set to 0 or 1."""
    x = rng.uniform(0.0, 1.0, (n, d))
    face = rng.integers(0, d, n)
    x[np.arange(n), face] = rng.integers(0, 2, n)
    return x


def build_net(d: int, width: int, depth: int, seed: int) -> hq.NN:
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.SingleLayer(d, width, act="tanh", seed=rng),
        hq.ResnetNN(width, depth, h=0.5, act="tanh", seed=rng),
        hq.SingleLayer(width, 1, seed=rng),
    )


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=2, help="space dimension d (default 2; try 10)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    args = p.parse_args(argv)
    if args.dim < 2:
        p.error(f"--dim must be >= 2, got {args.dim}")
    setup(args)
    import torch

    d = args.dim
    n_int, n_bnd, adam_steps, lbfgs_steps = SETTINGS[("2d" if d == 2 else "nd", args.quick)]
    rng = np.random.default_rng(args.seed)

    x_int = rng.uniform(0.0, 1.0, (n_int, d))
    x_bnd = boundary_points(n_bnd, d, rng)
    xi = torch.from_numpy(x_int)
    fi = torch.from_numpy(exact(x_int)[1])[:, None]
    xb = torch.from_numpy(x_bnd)
    gb = torch.from_numpy(exact(x_bnd)[0])[:, None]
    f_scale = float((fi**2).mean())

    net = build_net(d, args.width, args.depth, args.seed)
    params = torch_parameters(net)

    def loss():
        lap = net(xi, laplacian=True).laplacian  # (n_int, 1): Δu_θ, forward mode
        residual = ((lap + fi) ** 2).mean() / f_scale
        return residual + ((net(xb).value - gb) ** 2).mean()

    print(
        f"d = {d}: {n_int} interior + {n_bnd} boundary points, {adam_steps} Adam + {lbfgs_steps} L-BFGS steps"
    )
    with Timer() as t:
        history = fit(
            loss, params, steps=adam_steps, lr=1e-2, final_lr=1e-4, log_every=max(1, adam_steps // 4)
        )
        history += fit(
            loss, params, steps=lbfgs_steps, lr=1.0, optimizer="lbfgs", log_every=max(1, lbfgs_steps // 4)
        )
    print(f"trained in {t.seconds:.1f} s, final loss {history[-1]:.3e}")

    net.to("numpy")
    x_test = np.random.default_rng(args.seed + 1).uniform(0.0, 1.0, (5000, d))
    u_test = exact(x_test)[0]
    err = rel_err(net(x_test).value[:, 0], u_test)
    # the PDE residual on the held-out points, evaluated in NumPy
    lap = net(x_test, laplacian=True).laplacian[:, 0]
    res = rel_err(-lap, exact(x_test)[1])
    print(f"relative L2 error of u: {err:.3e}   relative residual of -Δu = f: {res:.3e}")
    out = {
        "dim": d,
        "rel_l2_error": err,
        "rel_residual": res,
        "train_seconds": t.seconds,
        "final_loss": history[-1],
    }
    if not args.no_plot:
        out["figure"] = str(plot(net, d, history, adam_steps, args.outdir / f"poisson_{d}d.png"))
        print(f"figure: {out['figure']}")
    return out


def plot(net, d, history, adam_steps, path: Path) -> Path:
    """u, u_θ and |u_θ - u| on the (x1, x2) plane (other coordinates 0.5), and the loss."""
    m = 101
    s = np.linspace(0.0, 1.0, m)
    X, Y = np.meshgrid(s, s)
    pts = np.full((m * m, d), 0.5)
    pts[:, 0], pts[:, 1] = X.ravel(), Y.ravel()
    u = exact(pts)[0].reshape(m, m)
    uh = net(pts).value[:, 0].reshape(m, m)

    where = "" if d == 2 else rf" ($x_3, \ldots, x_{{{d}}} = 0.5$)"
    return plot_solution_and_loss(
        path, X, Y, u, uh, history, adam_steps,
        names=("exact u" + where, r"PINN $u_\theta$", r"$|u_\theta - u|$"),
        xy_labels=("$x_1$", "$x_2$"),
        loss_title=f"training loss, d = {d}",
    )  # fmt: skip


if __name__ == "__main__":
    main()

r"""Physics-informed network for a simply supported Kirchhoff plate: D Δ²w = q on [0, 1]².

The deflection :math:`w_\theta : \mathbb R^2 \to \mathbb R` of a thin plate of
bending stiffness :math:`D` under the load :math:`q` solves the fourth-order
equation :math:`D\,\Delta^2 w = q`; a simply supported (Navier) edge has
:math:`w = 0` and :math:`\Delta w = 0`. The network is trained on

.. math::
    \mathcal L(\theta) = \frac{\operatorname{mean}_i\,(D\,\Delta^2 w_\theta(x_i) - q(x_i))^2}
                              {\operatorname{mean}_i\, q(x_i)^2}
    + \operatorname{mean}_j\, w_\theta(y_j)^2
    + \frac{\operatorname{mean}_j\, (\Delta w_\theta(y_j))^2}{(2\pi^2)^2} .

``hq.biharmonic(net, x)`` returns :math:`\Delta^2 w_\theta` exactly, by one
forward sweep that carries the gradient, the packed Hessian, the gradient of
the Laplacian, the Laplacian and the bi-Laplacian of every feature
(``docs/higher_order.md``); with torch tensors it is differentiable in
:math:`\theta`. Training is Adam followed by L-BFGS, or, with
``--optimizer gauss-newton``, Levenberg–Marquardt-damped Gauss–Newton on the same
loss written as a ``hq.pinn.Problem`` (three residual terms, one with
``needs=("biharmonic",)``: the per-point parameter Jacobian of :math:`\Delta^2 w`
comes from an AD-free sweep, in NumPy, no torch needed).

Exact solution (so that the error can be measured): the load
:math:`q = 4\pi^4 D \sin(\pi x)\sin(\pi y)` gives
:math:`w = \sin(\pi x)\sin(\pi y)` (it satisfies both edge conditions). The
reported error is :math:`\|w_\theta - w\|_2 / \|w\|_2` over 5000 random
points, computed in NumPy after ``net.to("numpy")``, and the relative
residual of :math:`D\Delta^2 w = q` on the same points.

Run::

    python examples/kirchhoff_plate.py            # about a minute
    python examples/kirchhoff_plate.py --quick    # a few seconds, larger error
    python examples/kirchhoff_plate.py --optimizer gauss-newton [--quick]
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
D = 1.0  # bending stiffness

# (n_interior, n_boundary, adam_steps, lbfgs_steps)
SETTINGS = {False: (600, 200, 100, 80), True: (200, 80, 40, 15)}
# Gauss-Newton: (n_interior, n_boundary, steps)
GN_SETTINGS = {False: (600, 200, 40), True: (200, 80, 30)}


def exact(x):
    """Exact deflection ``w (n,)`` and load ``q (n,)`` at ``x (n, 2)``."""
    w = np.sin(PI * x[:, 0]) * np.sin(PI * x[:, 1])
    return w, 4.0 * PI**4 * D * w


def boundary_points(n: int, rng) -> np.ndarray:
    """Uniform points on the edges of the unit square."""
    x = rng.uniform(0.0, 1.0, (n, 2))
    side = rng.integers(0, 2, n)
    x[np.arange(n), side] = rng.integers(0, 2, n)
    return x


def build_net(width: int, depth: int, seed: int) -> hq.NN:
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.SingleLayer(2, width, act="tanh", seed=rng),
        hq.ResnetNN(width, depth, h=0.5, act="tanh", seed=rng),
        hq.SingleLayer(width, 1, seed=rng),
    )


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument(
        "--optimizer",
        choices=("adam-lbfgs", "gauss-newton"),
        default="adam-lbfgs",
        help="Adam then L-BFGS through torch autograd (default), or hq.pinn.GaussNewton in NumPy",
    )
    args = p.parse_args(argv)
    setup(args)
    if args.optimizer == "gauss-newton":
        return gauss_newton(args)
    import torch

    n_int, n_bnd, adam_steps, lbfgs_steps = SETTINGS[args.quick]
    rng = np.random.default_rng(args.seed)
    x_int = rng.uniform(0.0, 1.0, (n_int, 2))
    x_bnd = boundary_points(n_bnd, rng)
    xi = torch.from_numpy(x_int)
    qi = torch.from_numpy(exact(x_int)[1])[:, None]
    xb = torch.from_numpy(x_bnd)
    q_scale = float((qi**2).mean())
    lap_scale = (2.0 * PI**2) ** 2

    net = build_net(args.width, args.depth, args.seed)
    params = torch_parameters(net)

    def loss():
        bih = hq.biharmonic(net, xi)  # (n_int, 1): Δ²w_θ, exact
        residual = ((D * bih - qi) ** 2).mean() / q_scale
        edge = net(xb, laplacian=True)  # w_θ and Δw_θ on the edges
        return residual + (edge.value**2).mean() + (edge.laplacian**2).mean() / lap_scale

    print(f"{n_int} interior + {n_bnd} edge points, {adam_steps} Adam + {lbfgs_steps} L-BFGS steps")
    with Timer() as t:
        history = fit(
            loss, params, steps=adam_steps, lr=1e-2, final_lr=1e-4, log_every=max(1, adam_steps // 4)
        )
        history += fit(
            loss, params, steps=lbfgs_steps, lr=1.0, optimizer="lbfgs", log_every=max(1, lbfgs_steps // 4)
        )
    print(f"trained in {t.seconds:.1f} s, final loss {history[-1]:.3e}")

    net.to("numpy")
    return report(net, args, history, adam_steps, t.seconds, "kirchhoff_plate.png")


def report(net, args, history, switch_step, seconds, figure: str) -> dict:
    """Errors on 5000 random points (NumPy), and the figure."""
    x_test = np.random.default_rng(args.seed + 1).uniform(0.0, 1.0, (5000, 2))
    w_test, q_test = exact(x_test)
    err = rel_err(net(x_test).value[:, 0], w_test)
    res = rel_err(D * hq.biharmonic(net, x_test)[:, 0], q_test)
    print(f"relative L2 error of w: {err:.3e}   relative residual of D Δ²w = q: {res:.3e}")
    out = {"rel_l2_error": err, "rel_residual": res, "train_seconds": seconds, "final_loss": history[-1]}
    if not args.no_plot:
        out["figure"] = str(plot(net, history, switch_step, args.outdir / figure))
        print(f"figure: {out['figure']}")
    return out


def gauss_newton(args) -> dict:
    r"""The same loss as ``hq.pinn.Problem`` (each term ``w_t/(2n)‖r‖²`` with ``w_t = 2``), trained by
    damped Gauss–Newton with the Jacobian of :math:`\Delta^2 w_\theta` from the AD-free sweep."""
    from hessquik_core import pinn

    n_int, n_bnd, steps = GN_SETTINGS[args.quick]
    rng = np.random.default_rng(args.seed)
    x_int = rng.uniform(0.0, 1.0, (n_int, 2))
    x_bnd = boundary_points(n_bnd, rng)
    q_scale = np.sqrt(np.mean(exact(x_int)[1] ** 2))
    lap_scale = 2.0 * PI**2
    net = build_net(args.width, args.depth, args.seed)

    def plate(q, x):  # (D Δ²w - q) / rms(q)
        return (D * q.biharmonic - 4.0 * PI**4 * D * np.sin(PI * x[:, 0]) * np.sin(PI * x[:, 1])) / q_scale

    problem = pinn.Problem(
        net,
        [
            pinn.Residual(x_int, plate, needs=("biharmonic",), weight=2.0, name="plate"),
            pinn.Residual(x_bnd, lambda q, x: q.value, needs=("value",), weight=2.0, name="w"),
            pinn.Residual(
                x_bnd, lambda q, x: q.laplacian / lap_scale, needs=("laplacian",), weight=2.0, name="lap_w"
            ),
        ],
    )
    print(f"{n_int} interior + {n_bnd} edge points, {steps} Gauss-Newton steps, P = {problem.P}")
    history = [problem.loss()]
    with Timer() as t:
        records = pinn.GaussNewton(problem, solver="kernel").run(steps, progress=False)
    history += [r.loss for r in records]
    print(f"trained in {t.seconds:.1f} s, final loss {history[-1]:.3e}")
    return report(net, args, history, None, t.seconds, "kirchhoff_plate_gauss_newton.png")


def plot(net, history, adam_steps, path: Path) -> Path:
    """w, w_θ, |w_θ - w| on the plate, and the loss."""
    m = 101
    s = np.linspace(0.0, 1.0, m)
    X, Y = np.meshgrid(s, s)
    pts = np.stack([X.ravel(), Y.ravel()], axis=1)
    w = exact(pts)[0].reshape(m, m)
    wh = net(pts).value[:, 0].reshape(m, m)

    return plot_solution_and_loss(
        path, X, Y, w, wh, history, adam_steps,
        names=("exact deflection w", r"PINN $w_\theta$", r"$|w_\theta - w|$"),
        xy_labels=("x", "y"),
        loss_title=r"training loss, $D\Delta^2 w = q$",
    )  # fmt: skip


if __name__ == "__main__":
    main()

r"""Second-order PINN training, AD-free: Adam, L-BFGS, Gauss–Newton/ENGD and KFAC on the same problems.

Two problems of the Kronecker-factored-curvature-for-PINNs study, each with a
tanh MLP ``d-64-1`` (linear read-out) and the same initial weights for every
optimizer, trained for the same wall-clock budget:

* **Poisson 2-D**: :math:`-\Delta u = 2\pi^2\sin(\pi x)\sin(\pi y)` on the unit
  square, :math:`u = 0` on its boundary; :math:`u^* = \sin(\pi x)\sin(\pi y)`;
  900 interior and 120 boundary points.
* **heat 1-D**: :math:`\partial_t u = \tfrac14\partial_{xx}u` on
  :math:`(x, t) \in [0, 1]^2`, :math:`u(x, 0) = \sin(\pi x)`, :math:`u(0, t) = u(1, t) = 0`;
  :math:`u^* = e^{-\pi^2 t/4}\sin(\pi x)`; 900 interior, 120 boundary and 120
  initial points.

Each is one :class:`hessquik_core.pinn.Problem` (residual terms with the
quantities they need: the Laplacian, the gradient and Hessian diagonal, the
value); the optimizers are those of :mod:`hessquik_core.pinn`, all in NumPy,
with every Jacobian, Gramian and Kronecker factor computed by the library's
forward/backward sweeps (no automatic differentiation). The reported error is
the relative L2 error :math:`\|u_\theta - u^*\|_2/\|u^*\|_2` on 2000 random
points; the figure shows it against wall time (the optimizer's own time,
evaluation excluded) and against the step.

Run::

    python examples/pinn_second_order.py               # 30 s per optimizer and problem
    python examples/pinn_second_order.py --budget 120  # longer
    python examples/pinn_second_order.py --quick       # small sizes, 2.5 s each (< 60 s in all)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, pyplot, rel_err, setup  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core import pinn  # noqa: E402

PI = np.pi

#: (width, interior, boundary (and initial) points, seconds per optimizer)
SIZES = {False: (64, 900, 120, 30.0), True: (16, 150, 40, 2.5)}

OPTIMIZERS = {
    "Adam": lambda pr: pinn.Adam(pr, lr=1e-3),
    "L-BFGS": lambda pr: pinn.LBFGS(pr),
    "Gauss-Newton (LM)": lambda pr: pinn.GaussNewton(pr),
    "ENGD": lambda pr: pinn.ENGD(pr),
    "KFAC": lambda pr: pinn.KFAC(pr),
}


def boundary_square(n, rng):
    """Uniform points on the boundary of the unit square."""
    x = rng.uniform(0.0, 1.0, (n, 2))
    face = rng.integers(0, 2, n)
    x[np.arange(n), face] = rng.integers(0, 2, n)
    return x


def poisson(width, n_int, n_bnd, rng):
    """The problem, the exact solution and the network (before training)."""

    def exact(x):
        return np.sin(PI * x[:, 0]) * np.sin(PI * x[:, 1])

    net = hq.FullyConnectedNN([2, width, 1], act="tanh", output_act=None, seed=rng)
    terms = [
        pinn.Residual(
            rng.uniform(0.0, 1.0, (n_int, 2)),
            lambda q, x: -q.laplacian - 2 * PI**2 * exact(x),
            needs=("laplacian",),
            name="interior",
        ),
        pinn.Residual(boundary_square(n_bnd, rng), lambda q, x: q.value, needs=("value",), name="boundary"),
    ]
    return net, terms, exact


def heat(width, n_int, n_bnd, rng):
    """∂ₜu = ¼∂ₓₓu, points (x, t); the gradient's second entry is ∂ₜu."""

    def exact(z):
        return np.exp(-(PI**2) * z[:, 1] / 4) * np.sin(PI * z[:, 0])

    net = hq.FullyConnectedNN([2, width, 1], act="tanh", output_act=None, seed=rng)
    xb = rng.uniform(0.0, 1.0, (n_bnd, 2))
    xb[:, 0] = rng.integers(0, 2, n_bnd)
    x0 = rng.uniform(0.0, 1.0, (n_bnd, 2))
    x0[:, 1] = 0.0
    terms = [
        pinn.Residual(
            rng.uniform(0.0, 1.0, (n_int, 2)),
            lambda q, z: q.gradient[:, 1] - 0.25 * q.hessian_diagonal[:, 0],
            needs=("gradient", "hessian_diagonal"),
            name="interior",
        ),
        pinn.Residual(xb, lambda q, z: q.value, needs=("value",), name="boundary"),
        pinn.Residual(x0, lambda q, z: q.value - np.sin(PI * z[:, 0]), needs=("value",), name="initial"),
    ]
    return net, terms, exact


PROBLEMS = {"Poisson 2-D": poisson, "heat 1-D": heat}


def train(make, net, terms, exact, x_test, budget):
    """One optimizer from the shared initial weights: (error, seconds, step) after every step."""
    problem = pinn.Problem(net, terms)
    opt = make(problem)
    u_test = exact(x_test)
    curve = [(rel_err(net(x_test).value[:, 0], u_test), 0.0, 0)]
    seconds = 0.0
    while seconds < budget and opt.converged is None:
        rec = opt.step()
        seconds += rec.seconds
        curve.append((rel_err(net(x_test).value[:, 0], u_test), seconds, rec.step + 1))
    return np.array(curve), problem.loss()


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=None, help="seconds per optimizer and problem")
    args = p.parse_args(argv)
    setup(args)
    width, n_int, n_bnd, budget = SIZES[args.quick]
    if args.budget is not None:
        budget = args.budget
    out: dict = {"budget_seconds": budget, "errors": {}, "final_loss": {}, "steps": {}}
    curves: dict = {}
    for pname, build in PROBLEMS.items():
        x_test = np.random.default_rng(args.seed + 100).uniform(0.0, 1.0, (2000, 2))
        print(f"{pname}: 2-{width}-1 tanh, {n_int} interior points, {budget:g} s per optimizer")
        curves[pname] = {}
        for oname, make in OPTIMIZERS.items():
            # the same points and initial weights for every optimizer
            net, terms, exact = build(width, n_int, n_bnd, np.random.default_rng(args.seed))
            curve, loss = train(make, net, terms, exact, x_test, budget)
            curves[pname][oname] = curve
            key = f"{pname} / {oname}"
            out["errors"][key], out["final_loss"][key], out["steps"][key] = (
                float(curve[-1, 0]),
                loss,
                int(curve[-1, 2]),
            )
            print(
                f"  {oname:22s} rel. L2 error {curve[-1, 0]:.2e}  loss {loss:.2e}  ({int(curve[-1, 2])} steps)"
            )
    if not args.no_plot:
        out["figure"] = str(plot(curves, args.outdir / "pinn_second_order.png"))
        print(f"figure: {out['figure']}")
    return out


def plot(curves, path: Path) -> Path:
    """Relative L2 error against wall time and against the step, one row per problem."""
    plt = pyplot()
    fig, ax = plt.subplots(
        len(curves), 2, figsize=(11, 4 * len(curves)), constrained_layout=True, squeeze=False
    )
    for row, (pname, per_opt) in enumerate(curves.items()):
        for oname, c in per_opt.items():
            ax[row, 0].semilogy(c[:, 1], c[:, 0], label=oname)
            ax[row, 1].loglog(np.maximum(c[:, 2], 1), c[:, 0], label=oname)
        ax[row, 0].set_xlabel("wall time of the optimizer [s]")
        ax[row, 1].set_xlabel("step")
        for a in ax[row]:
            a.set_ylabel("relative L2 error")
            a.set_title(pname)
            a.grid(True, which="both", alpha=0.3)
        ax[row, 0].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()

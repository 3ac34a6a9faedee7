r"""Embed in SciPy: minimise a trained network with Newton methods, using the library's gradient and Hessian.

A network :math:`f_\theta` is first trained (torch backend, value + gradient
data) as a surrogate of the "log-Rosenbrock" function

.. math::
    f(x, y) = \log\!\big(1 + (1 - x)^2 + 20\,(y - x^2)^2\big),

whose curved valley makes first-order methods zig-zag; its minimiser is
:math:`(1, 1)`. Then the surrogate is minimised with
``scipy.optimize.minimize``, the network evaluated in NumPy:

* ``trust-exact`` and ``Newton-CG`` get ``jac=`` and ``hess=`` callbacks
  from one call ``net(x, gradient=True, hessian=True)`` per point (the
  :class:`NetworkObjective` below caches it, so ``fun``, ``jac`` and ``hess``
  at the same ``x`` cost one network evaluation);
* ``BFGS`` and ``CG`` get only ``jac=`` (``net(x, gradient=True)``).

Every method is asked for a gradient norm of 1e-8, from the classic start
:math:`(-1.2, 1)` and from random starts; the script reports iterations and
network evaluations. What to expect on this 2-D valley: ``trust-exact``
needs about as many iterations as BFGS but fewer network evaluations (no
line search, and quadratic convergence at the end), CG needs several times
more evaluations, and ``Newton-CG`` (truncated CG inner solves plus a line
search) is the slowest here. The numbers are printed, not assumed: on other
problems the balance differs.

Run::

    python examples/scipy_newton.py            # ~20 s
    python examples/scipy_newton.py --quick
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import check_grad, minimize

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, parser, pyplot, rel_err, setup  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import fit, torch_parameters  # noqa: E402

LO, HI = np.array([-1.5, -0.5]), np.array([1.5, 2.0])  # the training box
B = 20.0
X0 = np.array([-1.2, 1.0])
METHODS = {  # method: (uses Hessian, options asking for a gradient norm of about 1e-8)
    "trust-exact": (True, {"gtol": 1e-8}),
    "Newton-CG": (True, {"xtol": 1e-10}),
    "BFGS": (False, {"gtol": 1e-8}),
    "CG": (False, {"gtol": 1e-8}),
}


def log_rosenbrock(x):
    r"""Value ``(n,)`` and gradient ``(n, 2)`` of :math:`\log(1 + r)`, :math:`r` = Rosenbrock."""
    X, Y = x[:, 0], x[:, 1]
    r = (1 - X) ** 2 + B * (Y - X**2) ** 2
    dr = np.stack([-2 * (1 - X) - 4 * B * X * (Y - X**2), 2 * B * (Y - X**2)], axis=-1)
    return np.log1p(r), dr / (1 + r)[:, None]


class NetworkObjective:
    """``fun``, ``jac`` and ``hess`` of a scalar network for ``scipy.optimize.minimize``.

    The three callbacks at the same point share one library call, which
    computes the value, the gradient and (if ``hessian=True``) the Hessian
    together; ``calls`` counts those calls.
    """

    def __init__(self, net, hessian: bool) -> None:
        if net.out_features != 1:
            raise ValueError(f"the network must have one output, got {net.out_features}")
        self.net, self.hessian, self.calls = net, hessian, 0
        self._x = self._res = None

    def _eval(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or not np.array_equal(x, self._x):
            self._x = x.copy()
            self._res = self.net(x[None, :], gradient=True, hessian=self.hessian)
            self.calls += 1
        return self._res

    def fun(self, x) -> float:
        return float(self._eval(x).value[0, 0])

    def jac(self, x) -> np.ndarray:
        return self._eval(x).gradient[0, :, 0]  # (d,)

    def hess(self, x) -> np.ndarray:
        if not self.hessian:
            raise RuntimeError("built with hessian=False")
        return self._eval(x).hessian[0, :, :, 0]  # (d, d)


def minimise(net, x0, method):
    """Run one SciPy method from ``x0``; return the result, the path and the network-call count."""
    use_hess, options = METHODS[method]
    obj = NetworkObjective(net, hessian=use_hess)
    path = [np.array(x0, dtype=np.float64)]
    kw = {"jac": obj.jac, "hess": obj.hess} if use_hess else {"jac": obj.jac}
    with warnings.catch_warnings():
        # a method that stops on "precision loss" at a 1e-8 gradient still reports its point
        warnings.simplefilter("ignore")
        res = minimize(
            obj.fun,
            x0,
            method=method,
            options=options,
            callback=lambda xk, *a: path.append(np.array(xk)),
            **kw,
        )
    grad_norm = float(np.linalg.norm(obj.jac(res.x)))
    return res, np.array(path), obj.calls, grad_norm


def build_net(seed: int) -> hq.NN:
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.SingleLayer(2, 32, act="tanh", seed=rng),
        hq.ResnetNN(32, 3, h=0.5, act="tanh", seed=rng),
        hq.SingleLayer(32, 1, seed=rng),
    )


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=8, help="starting points (the classic one + random)")
    args = p.parse_args(argv)
    setup(args)
    import torch

    adam_steps, lbfgs_steps = (400, 5) if args.quick else (1500, 15)
    rng = np.random.default_rng(args.seed)

    # --- train the surrogate on values and gradients (Hermite data) --------
    m = 16
    grid = np.stack(np.meshgrid(np.linspace(LO[0], HI[0], m), np.linspace(LO[1], HI[1], m)), -1)
    x = np.concatenate([grid.reshape(-1, 2), rng.uniform(LO, HI, (250, 2))])
    f, g = log_rosenbrock(x)
    xt, ft, gt = torch.from_numpy(x), torch.from_numpy(f)[:, None], torch.from_numpy(g)[:, :, None]
    net = build_net(args.seed)
    params = torch_parameters(net)

    def loss():
        r = net(xt, gradient=True)
        return ((r.value - ft) ** 2).sum() / (ft**2).sum() + ((r.gradient - gt) ** 2).sum() / (gt**2).sum()

    with Timer() as t:
        fit(loss, params, steps=adam_steps, lr=1e-2, final_lr=1e-4)
        history = fit(loss, params, steps=lbfgs_steps, lr=1.0, optimizer="lbfgs")
    net.to("numpy")
    x_test = rng.uniform(LO, HI, (2000, 2))
    f, g = log_rosenbrock(x_test)
    r = net(x_test, gradient=True)
    out: dict = {
        "train_seconds": t.seconds,
        "final_loss": history[-1],
        "surrogate_value_rel_err": rel_err(r.value[:, 0], f),
        "surrogate_gradient_rel_err": rel_err(r.gradient[..., 0], g),
    }
    print(
        f"surrogate trained in {t.seconds:.1f} s; held-out relative error of value "
        f"{out['surrogate_value_rel_err']:.2e}, gradient {out['surrogate_gradient_rel_err']:.2e}"
    )

    # --- the callbacks are right: compare with finite differences ---------
    obj = NetworkObjective(net, hessian=True)
    out["jac_fd_error"] = float(check_grad(obj.fun, obj.jac, X0, epsilon=1e-6))
    hess_fd = np.stack([(obj.jac(X0 + 1e-6 * e) - obj.jac(X0 - 1e-6 * e)) / 2e-6 for e in np.eye(2)])
    out["hess_fd_error"] = float(np.abs(hess_fd - obj.hess(X0)).max())
    print(
        f"check_grad at x0: {out['jac_fd_error']:.1e}; Hessian vs central differences of jac: "
        f"{out['hess_fd_error']:.1e}"
    )

    # --- minimise from the classic start and from random starts -----------
    starts = np.concatenate([X0[None, :], rng.uniform(LO, HI, (args.starts - 1, 2))])
    paths, table = {}, {}
    for method in METHODS:
        runs = [minimise(net, s, method) for s in starts]
        paths[method] = runs[0][1]
        table[method] = {
            "x_classic": runs[0][0].x,
            "nit_classic": int(runs[0][0].nit),
            "calls_classic": runs[0][2],
            "mean_nit": float(np.mean([r[0].nit for r in runs])),
            "mean_calls": float(np.mean([r[2] for r in runs])),
            "max_grad_norm": float(max(r[3] for r in runs)),
            "minimisers": np.array([r[0].x for r in runs]),
        }
    ref = table["trust-exact"]["minimisers"]
    print(
        f"\nminimising the surrogate from {X0} and {len(starts) - 1} random starts "
        "(calls = network evaluations):"
    )
    print(
        f"{'method':12s} {'iters (x0)':>10s} {'calls (x0)':>10s} {'mean iters':>10s} "
        f"{'mean calls':>10s} {'max |∇f|':>9s} {'same min.':>9s}"
    )
    for method, row in table.items():
        agree = np.linalg.norm(row["minimisers"] - ref, axis=1) < 1e-4
        row["agree_with_trust_exact"] = float(agree.mean())
        print(
            f"{method:12s} {row['nit_classic']:10d} {row['calls_classic']:10d} {row['mean_nit']:10.1f} "
            f"{row['mean_calls']:10.1f} {row['max_grad_norm']:9.1e} {agree.sum():5d}/{len(agree)}"
        )
    x_star = table["trust-exact"]["x_classic"]
    out["minimiser"] = x_star.tolist()
    out["minimiser_distance_to_true"] = float(np.linalg.norm(x_star - 1.0))
    out["methods"] = {k: {kk: vv for kk, vv in v.items() if kk != "minimisers"} for k, v in table.items()}
    print(
        f"\nsurrogate minimiser from x0: {x_star} (true minimiser of f: [1, 1], "
        f"distance {out['minimiser_distance_to_true']:.3f})"
    )

    if not args.no_plot:
        out["figure"] = str(plot(net, paths, table, args.outdir / "scipy_newton.png"))
        print(f"figure: {out['figure']}")
    return out


def plot(net, paths, table, path: Path) -> Path:
    plt = pyplot()
    m = 161
    X, Y = np.meshgrid(np.linspace(LO[0], HI[0], m), np.linspace(LO[1], HI[1], m))
    Z = net(np.stack([X.ravel(), Y.ravel()], -1)).value[:, 0].reshape(m, m)
    fig, ax = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    c = ax[0].contourf(X, Y, Z, levels=30, cmap="viridis")
    fig.colorbar(c, ax=ax[0], shrink=0.9)
    for (method, pth), mk in zip(paths.items(), "osd^"):
        ax[0].plot(
            pth[:, 0], pth[:, 1], "-" + mk, ms=3.5, lw=1.2, label=f"{method} ({len(pth) - 1} iterations)"
        )
    ax[0].plot([1], [1], "w*", ms=14, label="true minimiser (1, 1)")
    ax[0].set_title(r"surrogate $f_\theta$ and iterates from $(-1.2, 1)$")
    ax[0].legend(fontsize=8, loc="lower right")
    ax[0].set_xlabel("x")
    ax[0].set_ylabel("y")
    names = list(table)
    pos = np.arange(len(names))
    ax[1].bar(pos - 0.2, [table[k]["mean_nit"] for k in names], 0.4, label="iterations")
    ax[1].bar(pos + 0.2, [table[k]["mean_calls"] for k in names], 0.4, label="network evaluations")
    ax[1].set_xticks(pos, [f"{k}\n({'∇, ∇²' if METHODS[k][0] else '∇ only'})" for k in names])
    ax[1].set_title("mean over starting points, to |∇f| ≈ 1e-8")
    ax[1].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()

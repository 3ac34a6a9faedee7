r"""Input-convex network (ICNN): fit noisy data of a convex function and check that every Hessian is PSD.

An ICNN layer computes :math:`\sigma(u\,\mathrm{softplus}(L) + xK + b)` with a
convex, non-decreasing :math:`\sigma` (softplus): non-negative weights on the
previous features keep convexity in :math:`x`, and the quadratic ICNN output
layer adds :math:`u\,\mathrm{softplus}(w) + xv + \tfrac12\|Ax\|^2`. So the
network is convex in its input *for every value of the parameters*, and
its Hessian

.. math::
    \nabla^2 f_\theta(x) = \sum (\text{non-negative weights}) \cdot \sigma''(z)\, \nabla z\, \nabla z^\top
    + A^\top A \;\succeq\; 0

is positive semidefinite everywhere, in and out of the training box.

The script fits the same noisy samples of

.. math::
    f(x) = \log \sum_j e^{a_j \cdot x + b_j} + \tfrac14 \|x - \tfrac12\|^2 \qquad (x \in [-2, 2]^2)

with the ICNN and with an unconstrained tanh network of similar size,
then evaluates the Hessians of both with ``net(x, hessian=True)`` (NumPy) at
random points in the box and in the larger box :math:`[-4, 4]^2`, and
reports the smallest eigenvalue and the fraction of points where the
Hessian is not PSD. A second, derivative-free check tests midpoint
convexity :math:`f(\frac{a+b}2) \le \frac{f(a) + f(b)}2` on random pairs.

Run::

    python examples/icnn_convex.py           # ~15 s
    python examples/icnn_convex.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, parser, pyplot, rel_err, setup  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import fit, torch_parameters  # noqa: E402

A = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, 2.0], [1.5, -1.0]])
B = np.array([0.0, 0.0, -1.0, -0.5])
NOISE = 0.1


def target(x):
    """Convex target: log-sum-exp of four affine functions plus a quadratic."""
    z = x @ A.T + B
    zmax = z.max(axis=1, keepdims=True)
    return zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1)) + 0.25 * ((x - 0.5) ** 2).sum(axis=1)


def build_icnn(seed: int) -> hq.NN:
    """ICNN 2 → [16, 16] (softplus) → quadratic ICNN read-out (rank 2): convex in x."""
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.ICNN(2, [None, 16, 16], act="softplus", seed=rng), hq.QuadraticICNNLayer(2, 16, rank=2, seed=rng)
    )


def build_mlp(seed: int) -> hq.NN:
    """Unconstrained comparison: 2 → 32 → 32 (tanh) → 1."""
    rng = np.random.default_rng(seed)
    return hq.NN(hq.FullyConnectedNN([2, 32, 32], act="tanh", seed=rng), hq.SingleLayer(32, 1, seed=rng))


def min_eigenvalues(net, x) -> tuple[np.ndarray, np.ndarray]:
    """Smallest Hessian eigenvalue at each point, and a rounding tolerance for it."""
    H = net(x, hessian=True).hessian[..., 0]  # (n, 2, 2), NumPy
    lam = np.linalg.eigvalsh(H)[:, 0]
    tol = 1e-10 * np.maximum(1.0, np.linalg.norm(H, axis=(1, 2)))
    return lam, tol


def midpoint_violations(net, rng, n=2000, box=4.0) -> float:
    """Fraction of random pairs with f((a+b)/2) > (f(a)+f(b))/2 (beyond rounding)."""
    a, b = rng.uniform(-box, box, (2, n, 2))
    fa, fb, fm = (net(p).value[:, 0] for p in (a, b, 0.5 * (a + b)))
    gap = 0.5 * (fa + fb) - fm
    return float(np.mean(gap < -1e-10 * (1 + np.abs(fm))))


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=400)
    args = p.parse_args(argv)
    setup(args)
    import torch

    adam_steps, lbfgs_steps = (150, 8) if args.quick else (300, 20)
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-2.0, 2.0, (args.n_train, 2))
    y = target(x) + NOISE * rng.standard_normal(args.n_train)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)[:, None]

    x_in = rng.uniform(-2.0, 2.0, (2000, 2))  # held-out, inside the training box
    x_out = rng.uniform(-4.0, 4.0, (2000, 2))  # extrapolation
    out: dict = {"noise_rel": float(NOISE / np.sqrt(np.mean(target(x_in) ** 2)))}
    nets, histories = {}, {}
    for name, net in (("icnn", build_icnn(args.seed)), ("mlp", build_mlp(args.seed))):
        params = torch_parameters(net)

        def loss(net=net):
            return ((net(xt).value - yt) ** 2).mean()

        with Timer() as t:
            h = fit(loss, params, steps=adam_steps, lr=3e-2, final_lr=3e-4)
            h += fit(loss, params, steps=lbfgs_steps, lr=1.0, optimizer="lbfgs")
        net.to("numpy")
        nets[name], histories[name] = net, h
        out[f"{name}_rel_err"] = rel_err(net(x_in).value[:, 0], target(x_in))
        for where, pts in (("in", x_in), ("out", x_out)):
            lam, tol = min_eigenvalues(net, pts)
            out[f"{name}_min_eig_{where}"] = float(lam.min())
            out[f"{name}_frac_not_psd_{where}"] = float(np.mean(lam < -tol))
        out[f"{name}_midpoint_violations"] = midpoint_violations(net, np.random.default_rng(args.seed + 7))
        out[f"{name}_train_seconds"] = t.seconds

    print(f"noise level (relative): {out['noise_rel']:.3f}")
    print(
        f"{'':6s} {'rel err':>9s} {'min eig [-2,2]²':>16s} {'not PSD [-2,2]²':>16s} "
        f"{'min eig [-4,4]²':>16s} {'not PSD [-4,4]²':>16s} {'midpoint viol.':>15s}"
    )
    for name in ("icnn", "mlp"):
        print(
            f"{name:6s} {out[name + '_rel_err']:9.3e} {out[name + '_min_eig_in']:16.3e} "
            f"{out[name + '_frac_not_psd_in']:16.1%} {out[name + '_min_eig_out']:16.3e} "
            f"{out[name + '_frac_not_psd_out']:16.1%} {out[name + '_midpoint_violations']:15.1%}"
        )

    if not args.no_plot:
        out["figure"] = str(plot(nets, x, args.outdir / "icnn_convex.png"))
        print(f"figure: {out['figure']}")
    return out


def plot(nets, x_train, path: Path) -> Path:
    plt = pyplot()
    m = 121
    s = np.linspace(-4.0, 4.0, m)
    X, Y = np.meshgrid(s, s)
    grid = np.stack([X.ravel(), Y.ravel()], axis=-1)
    f = target(grid).reshape(m, m)
    fig, ax = plt.subplots(1, 4, figsize=(18, 4.3), constrained_layout=True)
    levels = np.linspace(f.min(), np.percentile(f, 99), 25)
    c = ax[0].contourf(X, Y, f, levels=levels, cmap="viridis", extend="both")
    ax[0].plot(x_train[:, 0], x_train[:, 1], "k.", ms=1.5, alpha=0.4)
    ax[0].set_title("convex target and noisy samples")
    titles = {"icnn": "ICNN fit", "mlp": "tanh network fit"}
    for a, name in zip(ax[1:3], ("icnn", "mlp")):
        net = nets[name]
        a.contourf(X, Y, net(grid).value[:, 0].reshape(m, m), levels=levels, cmap="viridis", extend="both")
        lam, tol = min_eigenvalues(net, grid)
        bad = (lam < -tol).reshape(m, m)
        if bad.any():
            a.contourf(X, Y, bad.astype(float), levels=[0.5, 1.5], colors="red", alpha=0.35)
        a.set_title(f"{titles[name]}: red = Hessian not PSD ({bad.mean():.0%})")
    fig.colorbar(c, ax=ax[:3], shrink=0.9)
    for a in ax[:3]:
        a.add_patch(plt.Rectangle((-2, -2), 4, 4, fill=False, ls="--", color="w"))
        a.set_aspect("equal")
        a.set_xlabel("$x_1$")
        a.set_ylabel("$x_2$")
    for name, color in (("icnn", "C0"), ("mlp", "C3")):
        lam, _ = min_eigenvalues(nets[name], grid)
        ax[3].hist(lam, bins=60, alpha=0.6, color=color, label=titles[name])
    ax[3].axvline(0.0, color="k", lw=1)
    ax[3].set_xlabel(r"smallest eigenvalue of $\nabla^2 f_\theta$ on $[-4, 4]^2$")
    ax[3].set_ylabel("grid points")
    ax[3].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()

r"""Hermite interpolation of MATLAB's ``peaks``: fit f, ∇f and ∇²f, train in torch, evaluate in NumPy.

Hermite interpolation fits a function *and its derivatives* at the data
points. Here the data are the values, gradients and Hessians of

.. math::
    f(x, y) = 3(1-x)^2 e^{-x^2-(y+1)^2} - 10(x/5 - x^3 - y^5)e^{-x^2-y^2} - \tfrac13 e^{-(x+1)^2-y^2}

at random points of :math:`[-3, 3]^2`, and the model is a residual network
:math:`f_\theta`. The loss

.. math::
    \mathcal L(\theta) = \frac{\|f_\theta - f\|^2}{\|f\|^2}
    + \frac{\|\nabla f_\theta - \nabla f\|^2}{\|\nabla f\|^2}
    + \frac{\|\nabla^2 f_\theta - \nabla^2 f\|^2}{\|\nabla^2 f\|^2}

needs :math:`\nabla_x f_\theta` and :math:`\nabla_x^2 f_\theta` at every step.
``net(x, gradient=True, hessian=True)`` computes them by the library's
recurrences, with torch tensors, so ``loss.backward()`` differentiates the
loss with respect to θ in a single reverse sweep (no double backward).

After training, the parameters go back to NumPy (``net.to("numpy")``), are
saved to an ``.npz`` file, loaded into a fresh network and evaluated with
NumPy arrays only, on held-out points.

Run::

    python examples/hermite_peaks.py            # ~30 s
    python examples/hermite_peaks.py --quick    # a few seconds, larger errors
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, parser, peaks, pyplot, rel_err, setup  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import fit, torch_parameters  # noqa: E402

BOX = 3.0  # the domain is [-BOX, BOX]^2


def build_net(width: int, depth: int, seed: int) -> hq.NN:
    """Opening layer 2 → width, ``depth`` residual layers, linear read-out width → 1."""
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.SingleLayer(2, width, act="tanh", seed=rng),
        hq.ResnetNN(width, depth, h=0.5, act="tanh", seed=rng),
        hq.SingleLayer(width, 1, seed=rng),
    )


def hermite_loss(net, x, f, g, H):
    """Relative squared misfit of value, gradient and Hessian (torch tensors).

    Shapes follow the library: ``f (n, 1)``, ``g (n, 2, 1)``, ``H (n, 2, 2, 1)``.
    """
    r = net(x, gradient=True, hessian=True)
    return (
        ((r.value - f) ** 2).sum() / (f**2).sum()
        + ((r.gradient - g) ** 2).sum() / (g**2).sum()
        + ((r.hessian - H) ** 2).sum() / (H**2).sum()
    )


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=None, help="training points (default 500, quick 300)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default 2000, quick 400)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    args = p.parse_args(argv)
    setup(args)
    import torch

    n_train = args.n_train or (300 if args.quick else 500)
    steps = args.steps or (400 if args.quick else 2000)
    rng = np.random.default_rng(args.seed)

    # --- data: values, gradients and Hessians at random points ------------
    x_train = rng.uniform(-BOX, BOX, (n_train, 2))
    f, g, H = peaks(x_train)
    x_t = torch.from_numpy(x_train)
    f_t = torch.from_numpy(f)[:, None]  # (n, 1): one output
    g_t = torch.from_numpy(g)[:, :, None]  # (n, d, 1)
    H_t = torch.from_numpy(H)[:, :, :, None]  # (n, d, d, 1)

    # --- train with the torch backend -----------------------------------------
    net = build_net(args.width, args.depth, args.seed)
    params = torch_parameters(net)  # leaf tensors, float64
    print(f"training on {n_train} points, {sum(p.numel() for p in params)} parameters, {steps} Adam steps")
    with Timer() as t:
        history = fit(
            lambda: hermite_loss(net, x_t, f_t, g_t, H_t),
            params,
            steps=steps,
            lr=1e-2,
            final_lr=1e-4,
            log_every=max(1, steps // 5),
        )
    print(f"trained in {t.seconds:.1f} s, final loss {history[-1]:.3e}")

    # --- back to NumPy: save, reload into a fresh network, evaluate ---------
    net.to("numpy")
    weights = args.outdir / "hermite_peaks_weights.npz"
    weights.parent.mkdir(parents=True, exist_ok=True)
    np.savez(weights, **net.state_dict())
    fresh = build_net(args.width, args.depth, seed=12345)  # other initial weights...
    with np.load(weights) as z:  # ...replaced by the trained ones
        fresh.load_state_dict({k: z[k] for k in z.files})

    x_test = np.random.default_rng(args.seed + 1).uniform(-BOX, BOX, (2000, 2))
    f, g, H = peaks(x_test)
    res = fresh(x_test, gradient=True, hessian=True)  # NumPy in, NumPy out
    assert isinstance(res.hessian, np.ndarray)
    out = {
        "value_rel_err": rel_err(res.value[:, 0], f),
        "gradient_rel_err": rel_err(res.gradient[..., 0], g),
        "hessian_rel_err": rel_err(res.hessian[..., 0], H),
        "train_seconds": t.seconds,
        "final_loss": history[-1],
        "weights": str(weights),
    }
    print("held-out relative errors (NumPy evaluation, 2000 points):")
    for k in ("value", "gradient", "hessian"):
        print(f"  {k:9s} {out[k + '_rel_err']:.3e}")

    if not args.no_plot:
        out["figure"] = str(plot(fresh, x_train, history, args.outdir / "hermite_peaks.png"))
        print(f"figure: {out['figure']}")
    return out


def plot(net, x_train, history, path: Path) -> Path:
    plt = pyplot()
    m = 121
    s = np.linspace(-BOX, BOX, m)
    X, Y = np.meshgrid(s, s)
    grid = np.stack([X.ravel(), Y.ravel()], axis=-1)
    f, g, H = peaks(grid)
    r = net(grid, gradient=True, hessian=True)

    def img(a):
        return np.asarray(a).reshape(m, m)

    fig, ax = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    levels = np.linspace(min(f.min(), r.value.min()), max(f.max(), r.value.max()), 25)
    c = ax[0, 0].contourf(X, Y, img(f), levels=levels, cmap="viridis")
    ax[0, 0].plot(x_train[:, 0], x_train[:, 1], "k.", ms=2, alpha=0.5)
    ax[0, 0].set_title(f"peaks f and the {len(x_train)} training points")
    ax[0, 1].contourf(X, Y, img(r.value[:, 0]), levels=levels, cmap="viridis")
    ax[0, 1].set_title(r"fitted $f_\theta$ (evaluated in NumPy)")
    fig.colorbar(c, ax=ax[0, :2], shrink=0.9)
    errs = [
        (ax[0, 2], np.abs(r.value[:, 0] - f), r"$|f_\theta - f|$"),
        (ax[1, 0], np.linalg.norm(r.gradient[..., 0] - g, axis=1), r"$\|\nabla f_\theta - \nabla f\|$"),
        (
            ax[1, 1],
            np.linalg.norm((r.hessian[..., 0] - H).reshape(-1, 4), axis=1),
            r"$\|\nabla^2 f_\theta - \nabla^2 f\|_F$",
        ),
    ]
    for a, e, title in errs:
        ci = a.contourf(X, Y, img(e), levels=20, cmap="magma")
        a.set_title(title)
        fig.colorbar(ci, ax=a, shrink=0.9)
    for a in ax.flat[:5]:
        a.set_aspect("equal")
        a.set_xlabel("x")
        a.set_ylabel("y")
    ax[1, 2].semilogy(history)
    ax[1, 2].set_xlabel("Adam step")
    ax[1, 2].set_title("training loss (value + gradient + Hessian)")
    ax[1, 2].grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()

r"""High-frequency Poisson problem: a plain tanh MLP against Fourier features + a gated MLP.

Both networks :math:`u_\theta : [0, 1]^2 \to \mathbb R` are trained through
their Laplacian (``net(x, laplacian=True)``, differentiable in θ with torch)
on the manufactured problem

.. math::
    -\Delta u = f \text{ in } (0, 1)^2, \qquad u = 0 \text{ on the boundary}, \qquad
    u = \sin(2\pi k x)\sin(2\pi k y), \quad f = 8\pi^2 k^2 u

with ``k = --freq`` (default 3: three periods per axis), with the loss

.. math::
    \mathcal L(\theta) = \frac{\operatorname{mean}_i\,(\Delta u_\theta(x_i) + f(x_i))^2}
                              {\operatorname{mean}_i\, f(x_i)^2}
    + \operatorname{mean}_j\, u_\theta(y_j)^2 .

The two models, at (about) the same number of trainable parameters:

* **tanh MLP**: ``SingleLayer(2, w, tanh)``, hidden tanh layers, linear read-out;
  ``w`` is chosen so that its parameter count is closest to the other model's;
* **Fourier + gated**: a fixed random Fourier embedding
  :math:`x \mapsto [\sin(2\pi xB), \cos(2\pi xB)]`, :math:`B \sim N(0, \sigma^2)`
  of shape ``(2, F)``, followed by ``hq.GatedMLP`` (the "modified MLP").
  The embedding is built from an existing layer: one
  ``hq.SingleLayer(2, 2F, act=hq.Sin())`` with frozen weights
  :math:`[2\pi B, 2\pi B]` and bias :math:`[0, \pi/2]` (since
  :math:`\sin(z + \pi/2) = \cos z`); ``hq.FourierFeatures`` computes the same
  map as a layer of its own. Its weights are not trained and not counted.

Training is Adam with a decaying learning rate, then L-BFGS (which can leave
the plateau :math:`u_\theta \approx 0`), the same steps, points and seed for
both. The reported error is :math:`\|u_\theta - u\|_2/\|u\|_2` on a
201 × 201 grid, computed in NumPy after ``net.to("numpy")``.

Run::

    python examples/helmholtz_fourier.py            # a few minutes on one CPU thread
    python examples/helmholtz_fourier.py --quick    # ~20 s, larger errors
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, parser, pyplot, rel_err, setup  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import fit, torch_parameters  # noqa: E402

PI = np.pi

# (n_interior, n_boundary, adam_steps, lbfgs_steps) per quick
SETTINGS = {False: (1500, 300, 1500, 40), True: (800, 200, 150, 5)}


def exact(x, k):
    """Exact solution ``u (n,)`` and right-hand side ``f (n,)`` at ``x (n, 2)``."""
    u = np.sin(2 * PI * k * x[:, 0]) * np.sin(2 * PI * k * x[:, 1])
    return u, 8 * PI**2 * k**2 * u


def boundary_points(n: int, rng) -> np.ndarray:
    """Uniform points on the four edges of the unit square."""
    x = rng.uniform(0.0, 1.0, (n, 2))
    side = rng.integers(0, 2, n)
    x[np.arange(n), side] = rng.integers(0, 2, n)
    return x


def n_trainable(blocks) -> int:
    return sum(int(np.prod(p.shape)) for b in blocks for p in b.parameters())


def tanh_mlp(width: int, depth: int, rng) -> hq.NN:
    """``depth`` tanh layers of ``width`` then a linear read-out."""
    layers = [hq.SingleLayer(2, width, act="tanh", seed=rng)]
    layers += [hq.SingleLayer(width, width, act="tanh", seed=rng) for _ in range(depth - 1)]
    return hq.NN(*layers, hq.SingleLayer(width, 1, seed=rng))


def fourier_embedding(num_features: int, scale: float, rng) -> hq.SingleLayer:
    """:math:`[\\sin(2\\pi xB), \\cos(2\\pi xB)]` as one frozen ``SingleLayer`` with a sine."""
    B = rng.normal(0.0, scale, (2, num_features))
    emb = hq.SingleLayer(2, 2 * num_features, act=hq.Sin())
    emb.K = 2 * PI * np.concatenate([B, B], axis=1)
    emb.b = np.concatenate([np.zeros(num_features), np.full(num_features, PI / 2)])
    return emb


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--freq", type=int, default=3, help="k: periods of the solution per axis (default 3)")
    p.add_argument("--features", type=int, default=32, help="F: Fourier features (2F embedding outputs)")
    p.add_argument("--scale", type=float, default=1.0, help="sigma of the Fourier matrix B")
    p.add_argument("--width", type=int, default=32, help="width of the gated MLP")
    p.add_argument("--depth", type=int, default=3, help="gated steps / tanh hidden layers")
    args = p.parse_args(argv)
    setup(args)
    import torch

    k = args.freq
    n_int, n_bnd, steps, lbfgs_steps = SETTINGS[args.quick]
    rng = np.random.default_rng(args.seed)
    x_int = rng.uniform(0.0, 1.0, (n_int, 2))
    x_bnd = boundary_points(n_bnd, rng)
    xi, xb = torch.from_numpy(x_int), torch.from_numpy(x_bnd)
    fi = torch.from_numpy(exact(x_int, k)[1])[:, None]
    f_scale = float((fi**2).mean())

    # the Fourier + gated model; its trainable part is the gated MLP
    emb = fourier_embedding(args.features, args.scale, rng)
    gated = hq.GatedMLP(2 * args.features, args.width, args.depth, 1, act="tanh", seed=rng)
    fourier_net = hq.NN(emb, gated)
    target = n_trainable([gated])
    # the tanh MLP of the same depth whose parameter count is closest
    widths = range(4, 257)
    counts = [n_trainable([tanh_mlp(w, args.depth + 1, np.random.default_rng(0))]) for w in widths]
    w_tanh = widths[int(np.argmin([abs(c - target) for c in counts]))]
    plain_net = tanh_mlp(w_tanh, args.depth + 1, rng)
    models = {"tanh MLP": (plain_net, list(plain_net)), "Fourier + GatedMLP": (fourier_net, [gated])}

    out: dict = {"freq": k, "adam_steps": steps, "lbfgs_steps": lbfgs_steps}
    histories, nets = {}, {}
    for name, (net, trained) in models.items():
        params = torch_parameters(net)
        train = [p for b in trained for p in torch_parameters(b)]
        frozen = {id(p) for p in params} - {id(p) for p in train}
        for q in params:
            if id(q) in frozen:
                q.requires_grad_(False)

        def loss(net=net):
            lap = net(xi, laplacian=True).laplacian  # (n_int, 1): Δu_θ, forward mode
            return ((lap + fi) ** 2).mean() / f_scale + (net(xb).value ** 2).mean()

        n_par = n_trainable(trained)
        print(
            f"{name}: {n_par} trainable parameters, {steps} Adam + {lbfgs_steps} L-BFGS steps "
            f"on {n_int} + {n_bnd} points"
        )
        with Timer() as t:
            hist = fit(loss, train, steps=steps, lr=3e-3, final_lr=1e-4, log_every=max(1, steps // 4))
            hist += fit(
                loss, train, steps=lbfgs_steps, lr=1.0, optimizer="lbfgs", log_every=max(1, lbfgs_steps // 4)
            )
        net.to("numpy")
        nets[name], histories[name] = net, hist
        key = "tanh" if name.startswith("tanh") else "fourier_gated"
        out[f"{key}_params"] = n_par
        out[f"{key}_train_seconds"] = t.seconds
        out[f"{key}_first_loss"] = hist[0]
        out[f"{key}_final_loss"] = hist[-1]

    s = np.linspace(0.0, 1.0, 201)
    X, Y = np.meshgrid(s, s)
    grid = np.stack([X.ravel(), Y.ravel()], axis=1)
    u = exact(grid, k)[0]
    errors = {}
    for name, net in nets.items():
        key = "tanh" if name.startswith("tanh") else "fourier_gated"
        uh = net(grid).value[:, 0]
        errors[name] = (uh - u).reshape(X.shape)
        out[f"{key}_rel_l2_error"] = rel_err(uh, u)
        out[f"{key}_max_error"] = float(np.abs(uh - u).max())
        print(
            f"{name}: relative L2 error {out[f'{key}_rel_l2_error']:.3e}, final loss {histories[name][-1]:.3e}"
        )
    if not args.no_plot:
        out["figure"] = str(plot(X, Y, errors, histories, k, steps, args.outdir / "helmholtz_fourier.png"))
        print(f"figure: {out['figure']}")
    return out


def plot(X, Y, errors, histories, k, adam_steps, path: Path) -> Path:
    """The two error fields |u_θ - u| (each on its own colour scale) and the two loss curves."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.3), constrained_layout=True)
    for a, (name, e) in zip(ax[:2], errors.items()):
        c = a.contourf(X, Y, np.abs(e), levels=20, cmap="magma")
        a.set_title(rf"$|u_\theta - u|$, {name} (max {np.abs(e).max():.2g})")
        a.set_aspect("equal")
        a.set_xlabel("$x$")
        a.set_ylabel("$y$")
        fig.colorbar(c, ax=a, shrink=0.9)
    for name, h in histories.items():
        ax[2].semilogy(h, label=name)
    ax[2].axvline(adam_steps, color="gray", ls="--", lw=1, label="Adam → L-BFGS")
    ax[2].set_xlabel("step (Adam, then L-BFGS outer steps)")
    ax[2].set_title(rf"training loss, $u = \sin(2\pi {k} x)\sin(2\pi {k} y)$")
    ax[2].legend()
    ax[2].grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()

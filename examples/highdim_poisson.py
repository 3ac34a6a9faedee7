r"""Poisson equation -Δu = f in d = 10 000 dimensions, trained with the exact Laplacian.

The solution is a sum of ``J`` waves on the cube :math:`\Omega = [-1, 1]^d`,

.. math::
    u^*(x) = \sum_{j=1}^{J} a_j \sin(\kappa\, w_j \cdot x), \qquad w_j = e_{i_j},
    \qquad -\Delta u^* = \kappa^2 \sum_j a_j |w_j|^2 \sin(\kappa\, w_j\cdot x) = \kappa^2 u^*,

along ``J`` coordinates :math:`i_j` drawn at random among the ``d``
(seeded, unknown to the network, which must find them among 10⁴). So
:math:`f = \kappa^2 u^*` exactly and the Laplacian is O(κ²) whatever ``d``;
with ``κ = 2`` (``--kappa``) each wave runs through two thirds of a period
over the domain, so the solution varies by O(1) and is far from harmonic (a
function that concentrates, such as :math:`\frac1d\sum_i \sin x_i`, would
let a constant score a small error; a nearly linear one would leave the
residual blind).

A network :math:`u_\theta` (a dense layer ``d → width``, residual layers,
a linear read-out) minimises

.. math::
    \mathcal L(\theta) = \kappa^{-4} \operatorname{mean}_i (\Delta u_\theta(x_i) + f(x_i))^2
    + \operatorname{mean}_k (u_\theta(y_k) - u^*(y_k))^2

over fresh uniform interior points :math:`x_i` and boundary points
:math:`y_k` (one coordinate set to ±1) at every step. ``Δu_θ`` is the exact
Laplacian, ``net(x, laplacian=True, mode="backward")``: the backward sweep
carries ``(n, width, width)`` adjoints and takes the trace at the first
layer as :math:`\langle W, K^\top K\rangle`, so the only d-sized work is the
first layer's ``n·d·width`` product — no ``d × d`` Hessian, no stochastic
trace estimate. torch autograd through it gives the weight gradient. (In
high dimensions uniform boundary points look much like interior ones; the
boundary term pins the harmonic part that the residual alone leaves free.)

The reported error is :math:`\|u_\theta - u^*\|_2 / \|u^*\|_2` over 2000
held-out uniform points, and the time per step is the median wall time of
one optimizer step (loss, backward, update). The first layer's ``d × width``
weights are trained by SGD with momentum, the others by Adam: Adam moves
every weight by about its rate per step, and that noise, summed over 10⁴
inputs, drowns the few coordinates that matter (with Adam throughout the
error stayed at 1.0 in the runs tried).

Run::

    python examples/highdim_poisson.py            # d = 10^4, a few minutes on 2 cores
    python examples/highdim_poisson.py --quick    # d = 10^4, under a minute, larger error
    python examples/highdim_poisson.py --dim 100000
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, parser, pyplot, setup  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import torch_parameters  # noqa: E402

# (steps, interior points, boundary points per step) for (quick)
SETTINGS = {False: (1500, 256, 128), True: (250, 128, 64)}


class Ridges:
    """The exact solution :math:`u^* = \\sum_j a_j \\sin(\\kappa w_j\\cdot x)` (torch or NumPy)."""

    def __init__(self, d: int, J: int, kappa: float, seed: int) -> None:
        rng = np.random.default_rng(seed + 12345)
        # w_j = e_{i_j}: J coordinates out of d, unknown to the network
        self.coords = rng.choice(d, size=J, replace=False)
        self.kappa = kappa
        self.W = np.zeros((d, J))
        self.W[self.coords, np.arange(J)] = kappa  # columns κ w_j, |w_j| = 1
        self.a = rng.uniform(0.5, 1.0, J) * rng.choice([-1.0, 1.0], J)
        self.c = np.zeros(J)  # phases (0: odd waves)
        self._torch: dict = {}

    def __call__(self, x):
        """``u*(x)`` of shape ``(n, 1)``; ``f = -Δu* = κ² u*``."""
        if isinstance(x, np.ndarray):
            return (np.sin(x @ self.W + self.c) @ self.a)[:, None]
        import torch

        key = (x.dtype, x.device)
        if key not in self._torch:
            self._torch[key] = tuple(
                torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (self.W, self.c, self.a)
            )
        W, c, a = self._torch[key]
        return (torch.sin(x @ W + c) @ a)[:, None]


def build_net(d: int, width: int, depth: int, seed: int) -> hq.NN:
    r"""Dense ``d → width`` (tanh), ``depth`` residual layers, linear read-out.

    The first layer's rows are rescaled to unit norm on average (entries of
    variance 1/d): the default initialisation scales with the layer's
    *output* width, which at d = 10⁴ would put every tanh deep in
    saturation, with a Laplacian :math:`\sum_j \sigma''|K_j|^2` of
    hundreds."""
    rng = np.random.default_rng(seed)
    net = hq.NN(
        hq.SingleLayer(d, width, act="tanh", seed=rng),
        hq.ResnetNN(width, depth, h=0.5, act="tanh", seed=rng),
        hq.SingleLayer(width, 1, act="identity", seed=rng),
    )
    state = net.state_dict()
    state["0.K"] = rng.uniform(-np.sqrt(3.0 / d), np.sqrt(3.0 / d), (d, width))
    net.load_state_dict(state)
    return net


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=10_000, help="space dimension d (default 10^4)")
    p.add_argument("--ridges", type=int, default=2, help="number J of waves (coordinates) in u* (default 2)")
    p.add_argument("--kappa", type=float, default=2.0, help="wavenumber κ of the waves (default 2)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1500, --quick 250)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam rate of the other layers")
    p.add_argument("--first-lr", type=float, default=1e-2, help="SGD rate of the first layer")
    p.add_argument("--points", type=int, nargs=2, default=None, help="interior and boundary points per step")
    p.add_argument("--float64", action="store_true", help="train in float64 (default float32)")
    args = p.parse_args(argv)
    if args.dim < 2:
        p.error(f"--dim must be >= 2, got {args.dim}")
    setup(args)
    import torch

    d = args.dim
    steps, n_int, n_bnd = SETTINGS[args.quick]
    steps = args.steps if args.steps is not None else steps
    n_int, n_bnd = args.points if args.points is not None else (n_int, n_bnd)
    dtype = torch.float64 if args.float64 else torch.float32
    u_star = Ridges(d, args.ridges, args.kappa, args.seed)
    net = build_net(d, args.width, args.depth, args.seed)
    params = torch_parameters(net, dtype=dtype)
    # the first layer's d x width weights by SGD with momentum: Adam would move
    # every one of them by ~lr per step, and that noise, summed over 10^4 inputs,
    # drowns the few coordinates that matter; SGD moves each by its gradient
    first, rest = params[0], params[1:]
    opts = [
        torch.optim.SGD([first], lr=args.first_lr, momentum=0.9),
        torch.optim.Adam(rest, lr=args.lr),
    ]
    scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=(0.05) ** (1.0 / max(steps, 1))) for o in opts]
    gen = torch.Generator().manual_seed(args.seed)

    def uniform(n):
        return torch.rand((n, d), generator=gen, dtype=dtype) * 2 - 1

    def boundary(n):
        y = uniform(n)
        face = torch.randint(0, d, (n,), generator=gen)
        y[torch.arange(n), face] = torch.randint(0, 2, (n,), generator=gen).to(dtype) * 2 - 1
        return y

    x_test = uniform(2000)
    u_test = u_star(x_test)

    def error() -> float:
        with torch.no_grad():
            return float(torch.linalg.norm(net(x_test).value - u_test) / torch.linalg.norm(u_test))

    print(
        f"d = {d}: {args.ridges} ridge waves, network {d} -> {args.width} x {args.depth} residual -> 1 "
        f"({sum(p.numel() for p in params)} weights), {steps} steps on {n_int} interior + "
        f"{n_bnd} boundary points per step, {str(dtype).split('.')[-1]}"
    )
    history, errors, step_times = [], [(0, error())], []
    every = max(1, steps // 10)
    with Timer() as total:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            x, y = uniform(n_int), boundary(n_bnd)
            f = args.kappa**2 * u_star(x)  # f = -Δu* = κ² u*
            lap = net(x, laplacian=True, mode="backward").laplacian  # exact Δu_θ, (n_int, 1)
            # the residual scaled by 1/κ⁴ so that both terms are O(1)
            residual = ((lap + f) ** 2).mean() / args.kappa**4
            loss = residual + ((net(y).value - u_star(y)) ** 2).mean()
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o, sc in zip(opts, scheds):
                o.step()
                sc.step()
            step_times.append(time.perf_counter() - t0)
            history.append(float(loss.detach()))
            if step % every == 0 or step == steps:
                errors.append((step, error()))
                print(
                    f"step {step:5d}  loss {history[-1]:.3e}  rel. L2 error {errors[-1][1]:.3e}  "
                    f"{np.median(step_times[-every:]) * 1e3:.0f} ms/step"
                )
    ms = float(np.median(step_times)) * 1e3
    err = errors[-1][1]
    # the training Laplacian against the forward recurrence (a different route
    # through the same network: tangents (n, d, width) pushed from the input)
    with torch.no_grad():
        xc = x_test[:4]
        lb = net(xc, laplacian=True, mode="backward").laplacian
        lf = net(xc, laplacian=True, mode="forward").laplacian
        lap_agree = float((lb - lf).abs().max() / lf.abs().max())
    print(f"backward vs forward Laplacian at 4 held-out points: max relative difference {lap_agree:.1e}")
    print(f"trained in {total.seconds:.1f} s ({ms:.0f} ms per step); relative L2 error of u: {err:.3e}")
    out = {
        "dim": d,
        "steps": steps,
        "ms_per_step": ms,
        "rel_l2_error": err,
        "initial_rel_l2_error": errors[0][1],
        "laplacian_backward_vs_forward": lap_agree,
        "final_loss": history[-1],
        "first_loss": history[0],
        "train_seconds": total.seconds,
    }
    if not args.no_plot:
        out["figure"] = str(plot(history, errors, d, ms, args.outdir / "highdim_poisson.png"))
        print(f"figure: {out['figure']}")
    return out


def plot(history, errors, d, ms, path: Path) -> Path:
    """Training loss per step and the held-out relative error."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    ax[0].semilogy(np.arange(1, len(history) + 1), history, lw=0.8)
    ax[0].set_xlabel("step")
    ax[0].set_title(f"training loss (exact Laplacian), d = {d:,}")
    s, e = zip(*errors)
    ax[1].semilogy(s, e, "o-")
    ax[1].set_xlabel("step")
    ax[1].set_title(rf"$\|u_\theta - u^*\|_2 / \|u^*\|_2$ (held out), {ms:.0f} ms/step")
    for a in ax:
        a.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()

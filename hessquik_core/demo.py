"""``python -m hessquik_core.demo``: the main job in one minute.

Builds the hessQuik paper's ResNet (antiTanh opening layer, tanh residual
blocks with h = 0.5, identity output), evaluates value, gradient, Hessian
and Laplacian on NumPy and (if installed) PyTorch, checks them against
each other and by a Taylor test, and prints a timing line.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

import hessquik_core as hq


def paper_resnet(d: int, width: int = 16, depth: int = 4, m: int = 1, seed: int = 0) -> hq.NN:
    """The hessQuik paper's network: d -> width -> ResNet(depth) -> m."""
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.SingleLayer(d, width, act=hq.AntiTanh(), seed=rng),
        hq.ResnetNN(width, depth, h=0.5, act=hq.Tanh(), seed=rng),
        hq.SingleLayer(width, m, act=hq.Identity(), seed=rng),
    )


def _best_time(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=8, help="input dimension")
    parser.add_argument("--n", type=int, default=1000, help="batch size")
    args = parser.parse_args(argv)
    d, n = args.d, args.n

    net = paper_resnet(d)
    x = np.random.default_rng(1).standard_normal((n, d))
    print(
        f"hessquik-core {hq.__version__}: {net.in_features} -> {net.out_features} network, "
        f"{sum(p.size for p in net.parameters())} parameters, batch n = {n}"
    )

    res = net(x, gradient=True, hessian=True, laplacian=True)
    print(
        f"[numpy]   value {res.value.shape}  gradient {res.gradient.shape}  hessian {res.hessian.shape}"
        f"  laplacian {res.laplacian.shape}  (mode={res.mode})"
    )
    fwd = net(x, gradient=True, hessian=True, mode="forward")
    err = np.max(np.abs(fwd.hessian - res.hessian))
    print(f"[numpy]   forward vs backward mode, max |ΔH| = {err:.2e}")
    lap = net(x, laplacian=True)
    print(
        f"[numpy]   Laplacian alone vs trace of Hessian, max diff = "
        f"{np.max(np.abs(lap.laplacian - res.laplacian)):.2e}"
    )

    if importlib.util.find_spec("torch") is not None:
        import torch

        xt = torch.from_numpy(x)
        rt = net(xt, gradient=True, hessian=True, laplacian=True)
        diff = float((rt.hessian - torch.from_numpy(res.hessian)).abs().max())
        print(
            f"[torch]   {type(rt.hessian).__module__}.Tensor {tuple(rt.hessian.shape)} "
            f"{rt.hessian.dtype}, max |H_torch - H_numpy| = {diff:.2e}"
        )
    else:
        print("[torch]   not installed: skipped (pip install 'hessquik-core[torch]')")

    if hasattr(hq, "checks"):
        report = hq.checks.taylor_check(net, x[:8], seed=0)
        print("[taylor]  " + str(report).replace("\n", "\n          "))

    t = _best_time(lambda: net(x, gradient=True, hessian=True))
    print(
        f"[timing]  value+gradient+Hessian of n={n}, d={d}: {t * 1e3:.2f} ms "
        f"({t / n * 1e6:.2f} µs per example, numpy backend)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

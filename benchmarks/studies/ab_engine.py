"""Before/after timing of engine points, public API only: run with PYTHONPATH=<tree>.

PYTHONPATH=<tree> python benchmarks/studies/ab_engine.py OUT.json [--train]   (one process; best of R interleaved repeats)
"""

import json
import os
import sys
import time

import numpy as np
import torch

import hessquik_core as hq

torch.set_num_threads(2)
out = sys.argv[1]
R = int(os.environ.get("AB_REPEATS", "5"))


def resnet(d, m, w=16, depth=4, seed=2022):
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.SingleLayer(d, w, act="antitanh", seed=rng),
        hq.ResnetNN(w, depth, h=0.5, act="tanh", seed=rng),
        hq.SingleLayer(w, m, act="identity", seed=rng),
    )


def mlp(d, w, depth=4, seed=2022):
    rng = np.random.default_rng(seed)
    layers = [hq.SingleLayer(d, w, act="tanh", seed=rng)]
    layers += [hq.SingleLayer(w, w, act="tanh", seed=rng) for _ in range(depth - 1)]
    layers.append(hq.SingleLayer(w, 1, act="identity", seed=rng))
    return hq.NN(*layers)


points = []
for d in (1, 8, 64, 256):
    points.append(("W1", f"resnet d={d} m=1", lambda d=d: resnet(d, 1), d, 1000, "hessian"))
for d, m in ((2, 2), (16, 16), (32, 8), (8, 32)):
    points.append(("W2", f"resnet d={d} m={m}", lambda d=d, m=m: resnet(d, m), d, 1000, "hessian"))
for n in (256, 1000):
    for w in (64, 256):
        for d in (16, 64, 256, 1024):
            points.append(("W3", f"mlp w={w} d={d} n={n}", lambda d=d, w=w: mlp(d, w), d, n, "laplacian"))

rng = np.random.default_rng(0)
cases = []
for wl, label, make, d, n, task in points:
    net = make()
    x = rng.standard_normal((n, d))
    kw = dict(gradient=True, hessian=True) if task == "hessian" else dict(laplacian=True)
    for lib in ("numpy", "torch"):
        xx = x if lib == "numpy" else torch.from_numpy(x)
        for mode in os.environ.get("AB_MODES", "auto").split(","):
            if d >= 256 and mode == "forward":  # (n, d, d, w) / (n, d, w) carries: GBs, not a useful route
                continue
            cases.append((f"{wl} {label} {lib} {mode}", net, xx, dict(kw, mode=mode)))


def once(net, xx, kw):
    t = time.perf_counter()
    net(xx, **kw)
    return time.perf_counter() - t


best = {}
for _name, net, xx, kw in cases:  # warm-up (parameter conversion caches)
    once(net, xx, kw)
for r in range(R):
    for name, net, xx, kw in cases:
        reps = 1
        t = once(net, xx, kw)
        if t < 0.05:
            reps = max(1, int(0.05 / max(t, 1e-6)))
            t = min(once(net, xx, kw) for _ in range(reps))
        best[name] = min(best.get(name, 1e9), t)
    print("repeat", r, "done", time.strftime("%H:%M:%S"), os.getloadavg(), flush=True)

# training step (W6-like): tanh MLP w=64 depth 4, n=1024, loss mean((lap+f)^2), grad wrt weights
if "--train" in sys.argv:
    for d in (2, 16, 64, 256):
        net = mlp(d, 64)
        tnet = net.to("torch", requires_grad=True) if hasattr(net, "to") else net
        x = torch.from_numpy(rng.standard_normal((1024, d)))
        params = [p for p in tnet.parameters()] if hasattr(tnet, "parameters") else None

        def step(tnet=tnet, x=x):
            res = tnet(x, laplacian=True)
            loss = ((res.laplacian + 1.0) ** 2).mean()
            loss.backward()

        step()
        tt = []
        for _ in range(R):
            t = time.perf_counter()
            step()
            tt.append(time.perf_counter() - t)
        best[f"W6 mlp w=64 d={d} n=1024 torch step"] = min(tt)

json.dump({"load": os.getloadavg(), "best": best}, open(out, "w"), indent=1)
print("done", len(best), os.getloadavg())

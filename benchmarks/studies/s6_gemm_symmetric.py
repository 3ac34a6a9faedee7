"""(1) W6-like Laplacian step (tanh MLP w=64 depth 4, n=1024, float64) at d=2,3 with the GEMM provider
'library' (torch/MKL) vs 'auto' (measured once per process); (2) the dense weight Hessian with symmetry
against the column-by-column build and torch.func.hessian at P = 4370. Interleaved, best of R."""

# a one-off study: closures are called within the iteration that defines them (B023)
# ruff: noqa: B007, B023, E402, UP031

import json
import os
import sys
import time

import numpy as np
import torch

import hessquik_core as hq
from hessquik_core import curvature as cv
from hessquik_core.backends.base import SWITCHES

torch.set_num_threads(2)
R = int(os.environ.get("R", "7"))
out = {"load_start": os.getloadavg()}
rng = np.random.default_rng(0)


def mlp(d):
    g = np.random.default_rng(2022)
    L = (
        [hq.SingleLayer(d, 64, act="tanh", seed=g)]
        + [hq.SingleLayer(64, 64, act="tanh", seed=g) for _ in range(3)]
        + [hq.SingleLayer(64, 1, seed=g)]
    )
    return hq.NN(*L)


for d in (2, 3, 16):
    net = mlp(d)
    net.to("torch", requires_grad=True)
    x = torch.from_numpy(rng.standard_normal((1024, d)))

    def step():
        res = net(x, laplacian=True)
        ((res.laplacian + 1.0) ** 2).mean().backward()

    best = {}
    for prov in ("library", "auto"):
        SWITCHES.gemm_provider = prov
        step()
        step()
    for r in range(R):
        for prov in ("library", "auto") if r % 2 == 0 else ("auto", "library"):
            SWITCHES.gemm_provider = prov
            t = time.perf_counter()
            step()
            best[prov] = min(best.get(prov, 1e9), time.perf_counter() - t)
    SWITCHES.gemm_provider = "library"
    out[f"W6 step d={d}"] = dict(best, ratio_auto_over_library=best["auto"] / best["library"])
    print(d, out[f"W6 step d={d}"], flush=True)
# symmetric dense Hessian
net = hq.FullyConnectedNN([16, 40, 40, 40, 10], act="tanh", seed=0)
x = rng.standard_normal((256, 16))
y = rng.integers(0, 10, 256)
P = cv.parameter_layout(net).size
tnet = hq.to_torch(net)
from torch.func import functional_call, hessian

names = [n for n, _ in tnet.named_parameters()]
params = {n: p.detach() for n, p in tnet.named_parameters()}
xt, yt = torch.from_numpy(x), torch.from_numpy(y)


def tf_loss(*flat):
    return torch.nn.functional.cross_entropy(functional_call(tnet, dict(zip(names, flat)), (xt,)), yt)


def run_tf():
    return hessian(tf_loss, argnums=tuple(range(len(names))))(*params.values())


times = {"symmetric": 1e9, "columns": 1e9, "torch.func": 1e9}
H1 = cv.hessian(net, x, y, "cross_entropy", symmetric=True)
H0 = cv.hessian(net, x, y, "cross_entropy", symmetric=False)
run_tf()
for r in range(3):
    for k in ("symmetric", "columns", "torch.func"):
        t = time.perf_counter()
        if k == "torch.func":
            run_tf()
        else:
            cv.hessian(net, x, y, "cross_entropy", symmetric=(k == "symmetric"))
        times[k] = min(times[k], time.perf_counter() - t)
out["dense hessian P=%d" % P] = dict(
    times,
    sym_over_columns=times["symmetric"] / times["columns"],
    sym_over_torchfunc=times["symmetric"] / times["torch.func"],
    max_rel_diff=float(np.max(np.abs(H1 - H0)) / np.max(np.abs(H0))),
)
print(out["dense hessian P=%d" % P], flush=True)
out["load_end"] = os.getloadavg()
json.dump(out, open(sys.argv[1], "w"), indent=1)

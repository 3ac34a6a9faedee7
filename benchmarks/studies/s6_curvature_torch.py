"""Issue 24 item 12 timings, one process, interleaved, best of R:
(a) value_and_gradient on a torch nn.Sequential against plain torch autograd on the same model;
(b) block GGN / Hessian products on k directions, per-column time, ours vs curvlinops 3.0.1 (k = 1..64)."""

# a one-off study: closures are called within the iteration that defines them (B023)
# ruff: noqa: B007, B023, E402, UP031

import json
import os
import sys
import time

import numpy as np
import torch

from hessquik_core import curvature as cv

torch.set_num_threads(2)
torch.manual_seed(0)
R = int(os.environ.get("R", "7"))
out = {"load_start": os.getloadavg()}


def best(fns, R=R):
    b = {k: 1e9 for k in fns}
    for k, f in fns.items():
        f()
    for r in range(R):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t = time.perf_counter()
            fns[k]()
            b[k] = min(b[k], time.perf_counter() - t)
    return b


model = torch.nn.Sequential(
    torch.nn.Linear(10, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3)
).double()
X = torch.randn(512, 10, dtype=torch.float64)
y = torch.randint(0, 3, (512,))
lossf = torch.nn.CrossEntropyLoss()


def torch_vg():
    model.zero_grad()
    l = lossf(model(X), y)
    l.backward()
    return l


def ours_vg():
    return cv.value_and_gradient(model, X, y, lossf)


v1, g1 = ours_vg()
l2 = torch_vg()
g2 = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
lay = cv.parameter_layout(model)
g1t = lay.to_torch_order(g1, model)
err = float((torch.as_tensor(g1t) - g2).abs().max() / g2.abs().max())
b = best({"ours": ours_vg, "torch autograd": torch_vg})
out["value_and_gradient (n=512, 10-64-64-3, CE)"] = dict(
    b, ratio=b["ours"] / b["torch autograd"], grad_rel_diff=err
)
print(out, flush=True)
sys.path.insert(0, os.environ.get("CURVLINOPS_PATH", ""))
try:
    from curvlinops import GGNLinearOperator, HessianLinearOperator

    have = True
except Exception as e:  # pragma: no cover
    have = False
    out["curvlinops"] = f"unavailable: {e}"
params = [p for p in model.parameters()]
P = sum(p.numel() for p in params)
for kind in ("ggn", "hessian"):
    ours_op = (cv.ggn_operator if kind == "ggn" else cv.hessian_operator)(model, X, y, lossf)
    if have:
        Cls = GGNLinearOperator if kind == "ggn" else HessianLinearOperator
        cl = Cls(model, lossf, params, [(X, y)], check_deterministic=False)
    rows = {}
    for k in (1, 4, 16, 64):
        V = np.random.default_rng(k).standard_normal((P, k))
        Vt = torch.from_numpy(V)
        Vo = lay.from_torch_order(Vt.T, model).T  # ours takes its own order
        fns = {"ours": lambda: ours_op @ Vo}
        if have:
            fns["curvlinops"] = lambda: cl @ Vt
            a = lay.to_torch_order((ours_op @ Vo).T, model).T
            c = cl @ Vt
            rel = float((torch.as_tensor(np.asarray(a)) - c).abs().max() / c.abs().max())
        b = best(fns, R=5)
        rows[k] = {kk: v / k for kk, v in b.items()}  # per column
        if have:
            rows[k]["ratio"] = b["ours"] / b["curvlinops"]
            rows[k]["rel_diff"] = rel
        print(kind, k, rows[k], flush=True)
    out[f"{kind} block products per column (P={P})"] = rows
out["load_end"] = os.getloadavg()
json.dump(out, open(sys.argv[1], "w"), indent=1, default=str)

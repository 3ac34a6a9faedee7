"""Issue 24 item 12: ``hq.curvature.value_and_gradient`` on a torch ``nn.Sequential`` against
plain torch autograd (``zero_grad``, loss, ``backward``) on the same model, same process,
interleaved, best of R; 2 threads; load averages recorded.

Models (tanh between the Linear layers): 10-64-64-3 cross-entropy n = 512,
784-256-256-10 cross-entropy n = 256, 10-64-64-1 MSE n = 1024; float64 and float32.
Two loops per model: the same model every call ("fixed"), and a training step after every
call ("step": an in-place update of every parameter under no_grad, as an optimiser does; the
cost of the update is in both). ``ratio`` = ours / torch (< 1: ours faster).

Usage: ``python benchmarks/studies/s7_value_and_gradient.py out.json`` (``R`` from the
environment, default 30).
"""

# a one-off study: closures are called within the iteration that defines them (B023)
# ruff: noqa: B023

import json
import os
import sys
import time

import torch

from hessquik_core import curvature as cv

torch.set_num_threads(2)
R = int(os.environ.get("R", "30"))
out: dict = {"load_start": os.getloadavg(), "threads": torch.get_num_threads(), "R": R}


def best(fns, R=R):
    b = {k: 1e9 for k in fns}
    for f in fns.values():
        f()
    for r in range(R):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t = time.perf_counter()
            fns[k]()
            b[k] = min(b[k], time.perf_counter() - t)
    return b


CASES = {
    "10-64-64-3 CE n=512": ((10, 64, 64, 3), 512, "ce"),
    "784-256-256-10 CE n=256": ((784, 256, 256, 10), 256, "ce"),
    "10-64-64-1 MSE n=1024": ((10, 64, 64, 1), 1024, "mse"),
}

for name, (sizes, n, kind) in CASES.items():
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        mods: list = []
        for i in range(len(sizes) - 1):
            mods.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                mods.append(torch.nn.Tanh())
        model = torch.nn.Sequential(*mods).to(dtype)
        X = torch.randn(n, sizes[0], dtype=dtype)
        if kind == "ce":
            y = torch.randint(0, sizes[-1], (n,))
            lossf: torch.nn.Module = torch.nn.CrossEntropyLoss()
        else:
            y = torch.randn(n, sizes[-1], dtype=dtype)
            lossf = torch.nn.MSELoss()
        params = list(model.parameters())

        def torch_vg():
            model.zero_grad()
            loss = lossf(model(X), y)
            loss.backward()
            return loss

        def ours_vg():
            return cv.value_and_gradient(model, X, y, lossf)

        def step():
            with torch.no_grad():
                for p in params:
                    p.mul_(1.0 - 1e-12)

        # agreement with torch autograd, in torch's parameter order
        _, g1 = ours_vg()
        torch_vg()
        g2 = torch.cat([p.grad.reshape(-1) for p in params])
        g1t = torch.as_tensor(cv.parameter_layout(model).to_torch_order(g1, model))
        rel = float((g1t - g2).abs().max() / g2.abs().max())
        fixed = best({"ours": ours_vg, "torch autograd": torch_vg})
        stepped = best({"ours": lambda: (ours_vg(), step()), "torch autograd": lambda: (torch_vg(), step())})
        key = f"{name} {str(dtype).split('.')[-1]}"
        out[key] = {
            "fixed (s)": fixed,
            "fixed ratio": fixed["ours"] / fixed["torch autograd"],
            "step (s)": stepped,
            "step ratio": stepped["ours"] / stepped["torch autograd"],
            "grad_rel_diff": rel,
        }
        print(key, {k: (round(v, 3) if "ratio" in k else v) for k, v in out[key].items()}, flush=True)

out["load_end"] = os.getloadavg()
with open(sys.argv[1], "w") as fh:
    json.dump(out, fh, indent=1, default=str)

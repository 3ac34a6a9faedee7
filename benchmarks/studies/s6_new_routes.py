"""Training step of layers that newly take the analytic route: analytic vs taped, same process,
interleaved, best of R. Tanh width 64, n = 1024, float64, loss mean((Δu + 1)^2), backward to weights."""

# a one-off study: closures are called within the iteration that defines them (B023)
# ruff: noqa: B007, B023, E402, UP031

import json
import os
import sys
import time

import numpy as np
import torch

import hessquik_core as hq
from hessquik_core import training

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
R = int(os.environ.get("R", "7"))
rng = np.random.default_rng(0)


def resmlp(d):
    g = np.random.default_rng(1)
    return hq.NN(
        hq.SingleLayer(d, 64, act="tanh", seed=g),
        hq.ResnetNN(64, 3, h=0.5, act="tanh", seed=g),
        hq.SingleLayer(64, 1, seed=g),
    )


def ffmlp(d):
    g = np.random.default_rng(1)
    return hq.NN(
        hq.FourierFeatures(d, 32, scale=1.0, seed=g),
        hq.SingleLayer(64, 64, act="tanh", seed=g),
        hq.SingleLayer(64, 64, act="tanh", seed=g),
        hq.SingleLayer(64, 1, seed=g),
    )


def siren(d):
    g = np.random.default_rng(1)
    return hq.NN(
        hq.SirenLayer(d, 64, is_first=True, seed=g),
        hq.SirenLayer(64, 64, seed=g),
        hq.SirenLayer(64, 64, seed=g),
        hq.SingleLayer(64, 1, seed=g),
    )


out = {}
for name, make in (("residual MLP", resmlp), ("Fourier features + MLP", ffmlp), ("SIREN", siren)):
    for d in (2, 16):
        net = make(d)
        net.to("torch", requires_grad=True)
        x = torch.from_numpy(rng.uniform(-1, 1, (1024, d)))

        def step():
            res = net(x, laplacian=True)
            ((res.laplacian + 1.0) ** 2).mean().backward()

        best = {"analytic": 1e9, "taped": 1e9}
        grads = {}
        for mode in ("analytic", "taped"):
            training.analytic_weight_gradient(mode == "analytic")
            for p in net.parameters():
                p.grad = None
            step()
            grads[mode] = [
                torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for p in net.parameters()
                if p.requires_grad
            ]
        err = max(
            float((a - b).abs().max() / (b.abs().max() + 1e-300))
            for a, b in zip(grads["analytic"], grads["taped"])
        )
        for r in range(R):
            for mode in ("analytic", "taped") if r % 2 == 0 else ("taped", "analytic"):
                training.analytic_weight_gradient(mode == "analytic")
                t = time.perf_counter()
                step()
                best[mode] = min(best[mode], time.perf_counter() - t)
        out[f"{name} d={d}"] = dict(best, ratio=best["analytic"] / best["taped"], grad_rel_diff=err)
        print(name, d, out[f"{name} d={d}"], os.getloadavg(), flush=True)
training.analytic_weight_gradient(True)
json.dump({"load": os.getloadavg(), "points": out}, open(sys.argv[1], "w"), indent=1)

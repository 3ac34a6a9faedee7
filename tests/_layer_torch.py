"""Plain-torch forward passes of networks mixing the embeddings, LayerNorm and
dense layers, from a dict of parameters keyed like ``net.state_dict()`` (the
references of tests/test_layers_fourier.py and tests/test_layers_layer_norm.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
from _reference import torch_jit_script_quiet

import hessquik_core as hq

ACTS = {"tanh": torch.tanh, "identity": lambda z: z, "sigmoid": torch.sigmoid}


def torch_params(net):
    return {k: torch.tensor(np.asarray(v)) for k, v in net.state_dict().items()}


def forward(net, P, x):
    """``x : (..., d)`` through the leaves of ``net`` with parameters ``P``."""
    u = x
    for i, leaf in enumerate(net.blocks):
        if isinstance(leaf, hq.SingleLayer):
            z = u @ P[f"{i}.K"] + (P[f"{i}.b"] if leaf.bias else 0.0)
            u = ACTS[leaf.act.name](z)
        elif isinstance(leaf, hq.FourierFeatures):
            z = 2.0 * math.pi * (u @ P[f"{i}.B"])
            u = torch.cat([torch.sin(z), torch.cos(z)], dim=-1)
        elif isinstance(leaf, hq.PeriodicEmbedding):
            axes = leaf.axes if leaf.axes is not None else tuple(range(len(leaf.periods)))
            if leaf.trainable:
                w = P[f"{i}.omega"]
            else:
                w = torch.tensor([2.0 * math.pi / p for p in leaf.periods], dtype=u.dtype)
            xs = u[..., list(axes)] * w
            rest = [j for j in range(leaf.in_features) if j not in axes]
            u = torch.cat([torch.cos(xs), torch.sin(xs), u[..., rest]], dim=-1)
        elif isinstance(leaf, hq.LayerNorm):
            mu = u.mean(-1, keepdim=True)
            c = u - mu
            u = c / torch.sqrt((c * c).mean(-1, keepdim=True) + leaf.eps)
            if leaf.elementwise_affine:
                u = u * P[f"{i}.gamma"] + P[f"{i}.beta"]
        else:  # pragma: no cover - test helper
            raise TypeError(leaf)
    return u


def curvature_truth(net, x, y, v):
    """torch.func gradient, per-example gradients, HVP and GGN-vector product of
    the mean of ``0.5 |f(x_n) - y_n|²`` on the flattened trainable parameters
    (``net.named_parameters()``; frozen ones, in ``state_dict`` only, held fixed)."""
    from torch.func import grad, hessian, jacrev, jvp, vjp

    full = torch_params(net)
    P0 = {k: full[k] for k, _ in net.named_parameters()}
    keys = list(P0)
    shapes = [P0[k].shape for k in keys]
    sizes = [int(np.prod(s)) for s in shapes]
    theta = torch.cat([P0[k].reshape(-1) for k in keys])
    xt, yt = torch.tensor(x), torch.tensor(y)

    def unflat(t):
        out, o = dict(full), 0
        for k, s, n in zip(keys, shapes, sizes):
            out[k] = t[o : o + n].reshape(s)
            o += n
        return out

    def F(t, xx=xt):
        return forward(net, unflat(t), xx)

    def C(t):
        return (0.5 * ((F(t) - yt) ** 2).sum(-1)).mean()

    def per(t):
        return 0.5 * ((F(t) - yt) ** 2).sum(-1)

    vt = torch.tensor(v)
    g = grad(C)(theta)
    with torch_jit_script_quiet():  # torch.func's forward AD loads its decompositions
        H = hessian(C)(theta)
        _, Jv = jvp(F, (theta,), (vt,))
    _, back = vjp(F, theta)
    (Gv,) = back(Jv / x.shape[0])
    return {
        "gradient": g.numpy(),
        "per_example": jacrev(per)(theta).numpy(),
        "hvp": (H @ vt).numpy(),
        "ggn_vp": Gv.numpy(),
    }

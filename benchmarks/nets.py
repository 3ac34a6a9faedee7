r"""The benchmark networks, and the same weights in every peer's form.

A network is built once with :mod:`hessquik_core` (NumPy float64 weights
from a fixed seed). :func:`spec_of` flattens it into a list of plain layer
records; from that list the other peers' versions are made, so that every
method evaluates *the same function*:

* :func:`torch_function` — a per-example function :math:`f: \mathbb{R}^d \to \mathbb{R}^m`
  in torch, for ``torch.func``;
* :func:`jax_function` — the same in ``jax.numpy``, for JAX and folx;
* :func:`hessquik_net` — the original ``hessQuik`` 0.0.6 network with the
  weights copied in.

Activations are written with the same formulas as :mod:`hessquik_core.activations`
(antiTanh :math:`\sigma(z) = |z| + \log(1 + e^{-2|z|}) = \log(2\cosh z)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import hessquik_core as hq

__all__ = [
    "NetSpec",
    "LayerRecord",
    "build",
    "hessquik_net",
    "jax_function",
    "spec_of",
    "torch_function",
]


@dataclass(frozen=True)
class NetSpec:
    """Which network a benchmark point uses.

    ``kind="resnet"`` is the hessQuik paper's network
    ``[d] -antiTanh-> [w] -(depth tanh residual layers, h)-> [w] -identity-> [m]``;
    ``kind="mlp"`` is ``depth`` tanh layers of width ``w`` and an identity
    output layer to ``m``.
    """

    kind: str
    d: int
    m: int
    width: int
    depth: int
    h: float = 0.5
    seed: int = 2022

    @property
    def label(self) -> str:
        return f"{self.kind}(d={self.d}, m={self.m}, w={self.width}, depth={self.depth})"


@dataclass(frozen=True)
class LayerRecord:
    """One dense layer ``u -> [u +] h^[res] act(u K + b)`` with NumPy float64 weights."""

    K: np.ndarray
    b: np.ndarray | None
    act: str
    residual: bool = False
    h: float = 1.0


def build(spec: NetSpec) -> hq.NN:
    """The :mod:`hessquik_core` network of ``spec`` (NumPy float64 weights)."""
    rng = np.random.default_rng(spec.seed)
    if spec.kind == "resnet":
        return hq.NN(
            hq.SingleLayer(spec.d, spec.width, act="antitanh", seed=rng),
            hq.ResnetNN(spec.width, spec.depth, h=spec.h, act="tanh", seed=rng),
            hq.SingleLayer(spec.width, spec.m, act="identity", seed=rng),
        )
    if spec.kind == "mlp":
        widths = [spec.d] + [spec.width] * spec.depth
        return hq.NN(
            hq.FullyConnectedNN(widths, act="tanh", seed=rng),
            hq.SingleLayer(spec.width, spec.m, act="identity", seed=rng),
        )
    raise ValueError(f"unknown network kind {spec.kind!r}: expected 'resnet' or 'mlp'")


def spec_of(net: hq.NN) -> list[LayerRecord]:
    """Flatten a network of single and residual layers into layer records."""
    out = []
    for leaf in net._leaves():
        if isinstance(leaf, hq.ResnetLayer):
            inner = leaf.layer
            out.append(
                LayerRecord(
                    np.asarray(inner.K),
                    None if inner.b is None else np.asarray(inner.b),
                    leaf.act.name,
                    residual=True,
                    h=leaf.h,
                )
            )
        elif isinstance(leaf, hq.SingleLayer):
            out.append(
                LayerRecord(np.asarray(leaf.K), None if leaf.b is None else np.asarray(leaf.b), leaf.act.name)
            )
        else:
            raise TypeError(f"benchmark networks hold single and residual layers only, got {leaf!r}")
    return out


# --------------------------------------------------------------------------
# torch (for torch.func)
# --------------------------------------------------------------------------


def _torch_act(name: str):
    import torch

    if name == "antitanh":
        return lambda z: torch.abs(z) + torch.log1p(torch.exp(-2.0 * torch.abs(z)))
    if name == "tanh":
        return torch.tanh
    if name == "identity":
        return lambda z: z
    raise ValueError(f"no torch form for activation {name!r}")


def torch_function(records: list[LayerRecord], dtype, device="cpu"):
    """Per-example ``f(x: (d,)) -> (m,)`` in torch, weights converted once."""
    import torch

    layers = []
    for r in records:
        K = torch.tensor(r.K, dtype=dtype, device=device)
        b = None if r.b is None else torch.tensor(r.b, dtype=dtype, device=device)
        layers.append((K, b, _torch_act(r.act), r.residual, r.h))

    def f(x):
        u = x
        for K, b, act, res, h in layers:
            z = u @ K
            if b is not None:
                z = z + b
            u = u + h * act(z) if res else act(z)
        return u

    return f


# --------------------------------------------------------------------------
# JAX (for jax and folx)
# --------------------------------------------------------------------------


def _jax_act(name: str):
    import jax.numpy as jnp

    if name == "antitanh":
        return lambda z: jnp.abs(z) + jnp.log1p(jnp.exp(-2.0 * jnp.abs(z)))
    if name == "tanh":
        return jnp.tanh
    if name == "identity":
        return lambda z: z
    raise ValueError(f"no JAX form for activation {name!r}")


def jax_function(records: list[LayerRecord], dtype, device=None):
    """Per-example ``f(x: (d,)) -> (m,)`` in ``jax.numpy`` (weights closed over as constants)."""
    import jax
    import jax.numpy as jnp

    layers = []
    for r in records:
        K = jax.device_put(jnp.asarray(r.K, dtype=dtype), device)
        b = None if r.b is None else jax.device_put(jnp.asarray(r.b, dtype=dtype), device)
        layers.append((K, b, _jax_act(r.act), r.residual, r.h))

    def f(x):
        u = x
        for K, b, act, res, h in layers:
            z = u @ K
            if b is not None:
                z = z + b
            u = u + h * act(z) if res else act(z)
        return u

    return f


# --------------------------------------------------------------------------
# hessQuik 0.0.6
# --------------------------------------------------------------------------


def hessquik_net(records: list[LayerRecord], dtype, device="cpu") -> Any:
    """The original hessQuik network with the records' weights copied in."""
    import hessQuik.activations as hqa
    import hessQuik.layers as hql
    import hessQuik.networks as hqn
    import torch

    acts = {
        "antitanh": hqa.antiTanhActivation,
        "tanh": hqa.tanhActivation,
        "identity": hqa.identityActivation,
    }
    mods = []
    for r in records:
        p, q = r.K.shape
        if r.residual:
            mod = hql.resnetLayer(
                p, h=r.h, act=acts[r.act](), bias=r.b is not None, device=device, dtype=dtype
            )
            target = mod.layer
        else:
            mod = hql.singleLayer(p, q, act=acts[r.act](), bias=r.b is not None, device=device, dtype=dtype)
            target = mod
        with torch.no_grad():
            target.K.copy_(torch.tensor(r.K, dtype=dtype, device=device))
            if r.b is not None:
                target.b.copy_(torch.tensor(r.b, dtype=dtype, device=device))
        mods.append(mod)
    net = hqn.NN(*mods)
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net

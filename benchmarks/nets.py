r"""The benchmark networks, and the same weights in every peer's form.

A network is built once with :mod:`hessquik_core` (NumPy float64 weights, fixed seed);
:func:`spec_of` flattens it into layer records, from which :func:`torch_function`,
:func:`jax_function` and :func:`hessquik_net` (hessQuik 0.0.6) make the other peers' versions of
*the same function*, with the activations' formulas of :mod:`hessquik_core.activations`
(antiTanh :math:`\sigma(z) = |z| + \log(1 + e^{-2|z|}) = \log(2\cosh z)`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import hessquik_core as hq


@dataclass(frozen=True)
class NetSpec:
    """Which network a benchmark point uses: ``kind="resnet"`` is the hessQuik paper's network
    ``[d] -antiTanh-> [w] -(depth tanh residual layers, h)-> [w] -identity-> [m]``; ``kind="mlp"``
    is ``depth`` tanh layers of width ``w`` and an identity output layer to ``m``."""

    kind: str
    d: int
    m: int
    width: int
    depth: int
    h: float = 0.5
    seed: int = 2022


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
        res = isinstance(leaf, hq.ResnetLayer)
        if not (res or isinstance(leaf, hq.SingleLayer)):
            raise TypeError(f"benchmark networks hold single and residual layers only, got {leaf!r}")
        lay = leaf.layer if res else leaf
        b = None if lay.b is None else np.asarray(lay.b)
        out.append(LayerRecord(np.asarray(lay.K), b, leaf.act.name, residual=res, h=leaf.h if res else 1.0))
    return out


# --- torch (for torch.func) and JAX (for jax and folx): one forward, two libraries ---


def flat_weights(records: list[LayerRecord]) -> list[np.ndarray]:
    """The weights in ``net.named_parameters()`` order: ``K``, ``b`` of each layer."""
    return [a for r in records for a in ((r.K,) if r.b is None else (r.K, r.b))]


def _act(lib, name: str):
    """σ in ``lib`` (``torch``, ``jax.numpy`` or ``numpy``), with the formulas of :mod:`hessquik_core.activations`."""
    if name == "antitanh":
        return lambda z: lib.abs(z) + lib.log1p(lib.exp(-2.0 * lib.abs(z)))
    if name == "tanh":
        return lib.tanh
    if name == "identity":
        return lambda z: z
    raise ValueError(f"no {lib.__name__} form for activation {name!r}")


def param_function(records: list[LayerRecord], lib_name: str):
    """Per-example ``f(ps, x: (d,)) -> (m,)`` in ``"torch"``, ``"jax"`` or ``"numpy"`` (the last
    also for a batch ``x: (n, d)``: the plain forward pass), ``ps`` the weights in
    :func:`flat_weights` order (for gradients with respect to them)."""
    mod = "torch" if lib_name == "torch" else "jax.numpy"
    lib = np if lib_name == "numpy" else importlib.import_module(mod)
    layout, i = [], 0
    for r in records:
        layout.append((i, None if r.b is None else i + 1, _act(lib, r.act), r.residual, r.h))
        i += 1 if r.b is None else 2

    def f(ps, x):
        u = x
        for iK, ib, act, res, h in layout:
            z = u @ ps[iK] if ib is None else u @ ps[iK] + ps[ib]
            u = u + h * act(z) if res else act(z)
        return u

    return f


@dataclass(frozen=True)
class Model:
    """A network in every peer's form: ``build()`` a fresh hessquik_core network (NumPy
    float64 weights), ``weights`` in its ``named_parameters()`` order, ``function(lib)`` the
    per-example ``f(ps, x: (d,)) -> (m,)`` in ``"torch"`` or ``"jax"`` with ``ps`` in that
    order, and ``records`` (hessQuik 0.0.6's network; single and residual layers only).
    A workload with another architecture writes its own ``function`` and hands its Model
    to the same peers."""

    build: Callable[[], Any]
    weights: list
    function: Callable[[str], Callable]
    records: list | None = None


def records_model(records: list[LayerRecord], spec: NetSpec | None = None) -> Model:
    """The :class:`Model` of layer records (``spec``: to rebuild the network)."""
    rebuild = lambda: build(spec) if spec is not None else None  # noqa: E731
    return Model(rebuild, flat_weights(records), lambda lib: param_function(records, lib), records)


def torch_dtype(name: str) -> Any:
    """``torch.float32`` / ``torch.float64`` for ``"float32"`` / ``"float64"``."""
    import torch

    return getattr(torch, name)


def torch_function(m: Model, dtype, device="cpu"):
    """Per-example ``f(x: (d,)) -> (m,)`` in torch, weights converted once."""
    import torch

    ps, f = [torch.tensor(a, dtype=dtype, device=device) for a in m.weights], m.function("torch")
    return lambda x: f(ps, x)


def jax_function(m: Model, dtype, device=None):
    """Per-example ``f(x: (d,)) -> (m,)`` in ``jax.numpy`` (weights closed over as constants)."""
    import jax
    import jax.numpy as jnp

    ps, f = [jax.device_put(jnp.asarray(a, dtype=dtype), device) for a in m.weights], m.function("jax")
    return lambda x: f(ps, x)


# --- hessQuik 0.0.6 ---


def hessquik_net(records: list[LayerRecord], dtype, device="cpu") -> Any:
    """The original hessQuik network with the records' weights copied in."""
    import hessQuik.activations as hqa
    import hessQuik.layers as hql
    import hessQuik.networks as hqn
    import torch

    acts = dict(antitanh=hqa.antiTanhActivation, tanh=hqa.tanhActivation, identity=hqa.identityActivation)
    mods = []
    for r in records:
        p, q = r.K.shape
        kw = dict(act=acts[r.act](), bias=r.b is not None, device=device, dtype=dtype)
        mod = hql.resnetLayer(p, h=r.h, **kw) if r.residual else hql.singleLayer(p, q, **kw)
        target = mod.layer if r.residual else mod
        with torch.no_grad():
            target.K.copy_(torch.tensor(r.K, dtype=dtype, device=device))
            if r.b is not None:
                target.b.copy_(torch.tensor(r.b, dtype=dtype, device=device))
        mods.append(mod)
    net = hqn.NN(*mods)
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net

"""Property tests over random architectures (hypothesis).

Every drawn network (depth, widths, SingleLayer / ResnetLayer / nested NN
chains with an optional QuadraticLayer head, or ICNN chains with an optional
QuadraticICNNLayer head; all activations; d, m and n down to 1) must satisfy,
in float64 and to a relative 1e-10 of the magnitude involved:

* forward mode == backward mode, for every output;
* Laplacian == trace of the Hessian, Hessian diagonal == its diagonal, on the
  full and on the trace/diagonal-only routes of both modes;
* directional derivatives == the contracted full derivatives;
* NumPy == torch == array-api-strict == generic backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch, torch
from _reference import ACTIVATIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hessquik_core as hq

RTOL = 1e-10
FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal")
ALL = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)

SETTINGS = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def close(a, b, what=""):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    if a.size == 0:
        return
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    err = float(np.max(np.abs(a - b)))
    assert err <= RTOL * scale, f"{what}: |diff| {err:.3e} > {RTOL:g} * {scale:.3e}"


acts = st.sampled_from(ACTIVATIONS)


@st.composite
def networks(draw):
    """(net, x): a random architecture and a batch of inputs."""
    d = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.sampled_from(["dense", "icnn"])) == "dense":
        blocks, width = [], d
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["single", "resnet", "nested"]))
            if kind == "single":
                w = draw(st.integers(1, 5))
                blocks.append(hq.SingleLayer(width, w, act=draw(acts), bias=draw(st.booleans()), seed=rng))
                width = w
            elif kind == "resnet":
                h = draw(st.floats(0.05, 1.0))
                blocks.append(hq.ResnetLayer(width, h=h, act=draw(acts), bias=draw(st.booleans()), seed=rng))
            else:
                w = draw(st.integers(1, 4))
                blocks.append(
                    hq.NN(
                        hq.SingleLayer(width, w, act=draw(acts), seed=rng),
                        hq.ResnetLayer(w, h=0.5, act=draw(acts), seed=rng),
                    )
                )
                width = w
        if draw(st.booleans()):
            blocks.append(hq.QuadraticLayer(width, draw(st.integers(1, 3)), seed=rng))
    else:
        blocks, prev = [], None
        for _ in range(draw(st.integers(1, 3))):
            w = draw(st.integers(1, 4))
            blocks.append(hq.ICNNLayer(d, prev, w, act=draw(acts), bias=draw(st.booleans()), seed=rng))
            prev = w
        if draw(st.booleans()):
            blocks.append(hq.QuadraticICNNLayer(d, prev, draw(st.integers(1, 3)), seed=rng))
        if len(blocks) > 1 and draw(st.booleans()):  # nest the first two blocks
            blocks = [hq.NN(*blocks[:2]), *blocks[2:]]
    net = hq.NN(*blocks)
    n = draw(st.integers(1, 4))
    x = rng.normal(size=(n, d)) * draw(st.sampled_from([0.5, 1.0, 2.0]))
    return net, x


def _np(a):
    return hq.backends._generic.to_numpy(a)


@SETTINGS
@given(networks())
def test_forward_equals_backward(case):
    net, x = case
    f = net(x, mode="forward", **ALL)
    b = net(x, mode="backward", **ALL)
    for name in FIELDS:
        close(getattr(f, name), getattr(b, name), name)


@SETTINGS
@given(networks())
def test_laplacian_trace_and_diagonal(case):
    net, x = case
    full = net(x, mode="forward", gradient=True, hessian=True)
    H = full.hessian
    tr = np.trace(H, axis1=1, axis2=2)
    dg = np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1)
    for mode in ("forward", "backward"):
        r = net(x, mode=mode, **ALL)
        close(r.laplacian, tr, f"{mode} laplacian with hessian")
        close(r.hessian_diagonal, dg, f"{mode} diagonal with hessian")
        r = net(x, mode=mode, laplacian=True, hessian_diagonal=True)
        close(r.laplacian, tr, f"{mode} laplacian-only")
        close(r.hessian_diagonal, dg, f"{mode} diagonal-only")
        close(net(x, mode=mode, laplacian=True).laplacian, tr, f"{mode} laplacian alone")


@SETTINGS
@given(networks(), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_directional_equals_contracted(case, k, seed):
    net, x = case
    rng = np.random.default_rng(seed)
    d, m = net.in_features, net.out_features
    full = net(x, mode="backward", gradient=True, hessian=True)
    g, H = full.gradient, full.hessian
    V = rng.normal(size=(d, k))
    r = net(x, directions=V, mode="forward", **ALL)
    VHV = np.einsum("ia,nijm,jb->nabm", V, H, V)
    close(r.gradient, np.einsum("ia,nim->nam", V, g), "forward Vᵀg")
    close(r.hessian, VHV, "forward VᵀHV")
    close(r.laplacian, np.trace(VHV, axis1=1, axis2=2), "forward tr")
    close(r.hessian_diagonal, np.diagonal(VHV, axis1=1, axis2=2).transpose(0, 2, 1), "forward diag")
    W = rng.normal(size=(m, k))
    r = net(x, directions=W, mode="backward", **ALL)
    close(r.value, full.value, "value")
    close(r.gradient, g @ W, "backward gW")
    close(r.hessian, H @ W, "backward HW")
    close(r.laplacian, np.trace(H @ W, axis1=1, axis2=2), "backward tr")
    r = net(x, directions=W, mode="backward", laplacian=True, hessian_diagonal=True)
    close(r.laplacian, np.trace(H @ W, axis1=1, axis2=2), "backward tr only")
    close(r.hessian_diagonal, np.diagonal(H @ W, axis1=1, axis2=2).transpose(0, 2, 1), "backward diag only")


xs = pytest.importorskip("array_api_strict")


@needs_torch
@SETTINGS
@given(networks(), st.sampled_from(["forward", "backward"]), st.booleans())
def test_backends_agree(case, mode, lap_only):
    net, x = case
    flags = dict(laplacian=True, hessian_diagonal=True) if lap_only else ALL
    ref = net(x, mode=mode, **flags)
    runs = {
        "torch": net(torch.from_numpy(x), mode=mode, **flags),
        "array_api_strict": net(xs.asarray(x), mode=mode, **flags),
        "generic": net(x, mode=mode, backend="generic", **flags),
        "numpy->torch": net(x, mode=mode, backend="torch", **flags),
    }
    for lib, r in runs.items():
        for name in FIELDS:
            a, b = getattr(r, name), getattr(ref, name)
            assert (a is None) == (b is None), (lib, name)
            if b is not None:
                close(_np(a), b, f"{lib} {name}")

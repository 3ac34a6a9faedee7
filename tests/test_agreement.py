"""Agreement with independent references.

* torch.func (``vmap(jacrev)``, ``vmap(hessian)``) on a plain-torch rewrite of
  every layer type's math, float64: value, gradient, Hessian, Laplacian,
  Hessian diagonal, directional derivatives, both modes and the
  Laplacian/diagonal-only paths.
* hessQuik 0.0.6 through :func:`hessquik_core.from_hessquik` on random
  networks of every kind, forward and backward.
* float32 results against float64 truth.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from _reference import (
    ACTIVATIONS,
    HQ_ACTIVATIONS,
    HQ_NETWORKS,
    KINDS,
    build,
    hessquik_network,
    rel_err,
    truth,
)

import hessquik_core as hq

torch = pytest.importorskip("torch")

MODES = ("forward", "backward")
#: float64 agreement: a few hundred ulps of the largest entry
F64_TOL = 1e-12
#: float32 against float64 truth: 32 float32 ulps of the largest entry
F32_TOL = 32 * float(np.finfo(np.float32).eps)


def close(a, b, tol=F64_TOL, what=""):
    err = rel_err(np.asarray(a), np.asarray(b))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def trace(H):
    """(n, k, k, m) -> (n, m)."""
    return np.trace(H, axis1=1, axis2=2)


def diag(H):
    """(n, k, k, m) -> (n, k, m)."""
    return np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1)


# --------------------------------------------------------------------------
# torch.func
# --------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_torch_func_full_derivatives(kind, act, rng):
    net, d = build(kind, act, seed=11)
    x = rng.normal(size=(3, d))
    v, g, H = truth(net, x)
    for mode in MODES:
        r = net(x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
        assert r.mode == mode
        close(r.value, v, what=f"{mode} value")
        close(r.gradient, g, what=f"{mode} gradient")
        close(r.hessian, H, what=f"{mode} hessian")
        close(r.laplacian, trace(H), what=f"{mode} laplacian")
        close(r.hessian_diagonal, diag(H), what=f"{mode} hessian_diagonal")
        # the trace/diagonal-only routes never form the Hessian
        r2 = net(x, laplacian=True, hessian_diagonal=True, mode=mode)
        assert r2.hessian is None and r2.gradient is None
        close(r2.laplacian, trace(H), what=f"{mode} laplacian-only")
        close(r2.hessian_diagonal, diag(H), what=f"{mode} diagonal-only")
        r3 = net(x, laplacian=True, mode=mode)
        assert r3.hessian_diagonal is None
        close(r3.laplacian, trace(H), what=f"{mode} laplacian alone")
        r4 = net(x, gradient=True, mode=mode)
        assert r4.hessian is None and r4.laplacian is None
        close(r4.gradient, g, what=f"{mode} gradient alone")


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("act", ["tanh", "softplus", "sin"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_func_directional(kind, act, k, rng):
    net, d = build(kind, act, seed=5)
    m = net.out_features
    x = rng.normal(size=(4, d))
    _, g, H = truth(net, x)
    # forward: V (d, k) -> Vᵀ∇f (n, k, m), VᵀHV (n, k, k, m)
    V = rng.normal(size=(d, k))
    VHV = np.einsum("ia,nijm,jb->nabm", V, H, V)
    r = net(
        x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, directions=V, mode="forward"
    )
    close(r.gradient, np.einsum("ia,nim->nam", V, g), what="forward Vᵀ∇f")
    close(r.hessian, VHV, what="forward VᵀHV")
    close(r.laplacian, trace(VHV), what="forward tr VᵀHV")
    close(r.hessian_diagonal, diag(VHV), what="forward diag VᵀHV")
    r = net(x, laplacian=True, hessian_diagonal=True, directions=V, mode="forward")
    close(r.laplacian, trace(VHV), what="forward tr VᵀHV only")
    close(r.hessian_diagonal, diag(VHV), what="forward diag VᵀHV only")
    # backward: W (m, k) -> ∇(fW) (n, d, k), ∇²(fW) (n, d, d, k)
    W = rng.normal(size=(m, k))
    HW = H @ W
    r = net(
        x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, directions=W, mode="backward"
    )
    close(r.gradient, g @ W, what="backward ∇f W")
    close(r.hessian, HW, what="backward H W")
    close(r.laplacian, trace(HW), what="backward tr(H W)")
    close(r.hessian_diagonal, diag(HW), what="backward diag(H W)")
    r = net(x, laplacian=True, hessian_diagonal=True, directions=W, mode="backward")
    close(r.laplacian, trace(HW), what="backward laplacian-only W")
    close(r.hessian_diagonal, diag(HW), what="backward diagonal-only W")


def test_directions_auto_mode_follows_shape(rng):
    net, d = build("ICNNLayer-first", "tanh")  # d = 3, m = 7
    x = rng.normal(size=(2, d))
    assert net(x, gradient=True, directions=rng.normal(size=(3, 2))).mode == "forward"
    assert net(x, gradient=True, directions=rng.normal(size=(7, 2))).mode == "backward"
    # without directions "auto" picks a route; either way the numbers agree
    for kind in ("ICNNLayer-first", "QuadraticLayer"):
        net, d = build(kind, "tanh")
        x = rng.normal(size=(2, d))
        auto = net(x, gradient=True, hessian=True)
        assert auto.mode in MODES
        other = net(x, gradient=True, hessian=True, mode=({*MODES} - {auto.mode}).pop())
        close(auto.hessian, other.hessian)


@pytest.mark.parametrize("act", ["tanh", "softplus", "silu", "antitanh"])
@pytest.mark.parametrize("kind", KINDS)
def test_float32_against_float64_truth(kind, act, rng):
    net, d = build(kind, act, seed=2)
    x32 = rng.normal(size=(6, d)).astype(np.float32)
    v, g, H = truth(net, x32.astype(np.float64))  # truth at the same (rounded) points
    for mode in MODES:
        r = net(x32, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
        for a in (r.value, r.gradient, r.hessian, r.laplacian, r.hessian_diagonal):
            assert a.dtype == np.float32
        close(r.value, v, F32_TOL, f"{mode} value")
        close(r.gradient, g, F32_TOL, f"{mode} gradient")
        close(r.hessian, H, F32_TOL, f"{mode} hessian")
        close(r.laplacian, trace(H), F32_TOL, f"{mode} laplacian")
        close(r.hessian_diagonal, diag(H), F32_TOL, f"{mode} diagonal")
        r2 = net(x32, laplacian=True, mode=mode)
        close(r2.laplacian, trace(H), F32_TOL, f"{mode} laplacian-only")


# --------------------------------------------------------------------------
# hessQuik 0.0.6
# --------------------------------------------------------------------------

hessQuik = pytest.importorskip("hessQuik")


def _hq_eval(f, x, forward: bool, **kw):
    fx, df, d2f = f(torch.as_tensor(x), forward_mode=forward, **kw)
    return tuple(None if a is None else a.detach().numpy() for a in (fx, df, d2f))


@pytest.mark.parametrize("act", HQ_ACTIVATIONS)
@pytest.mark.parametrize("kind", HQ_NETWORKS)
def test_hessquik_float64(kind, act, rng):
    f = hessquik_network(kind, 3, act, seed=17)
    net = hq.from_hessquik(f)
    x = rng.normal(size=(5, 3))
    for mode in MODES:
        fwd = mode == "forward"
        fv, fg, fH = _hq_eval(f, x, fwd, do_gradient=True, do_Hessian=True)
        r = net(x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
        close(r.value, fv, what=f"{mode} value")
        close(r.gradient, fg, what=f"{mode} gradient")
        close(r.hessian, fH, what=f"{mode} hessian")
        close(r.laplacian, trace(fH), what=f"{mode} laplacian vs tr(hessQuik H)")
        close(r.hessian_diagonal, diag(fH), what=f"{mode} diagonal vs hessQuik")
        # Laplacian without the Hessian (hessQuik computes it for some nets, forward only)
        _, _, fL = _hq_eval(f, x, True, do_gradient=True, do_Laplacian=True)
        rl = net(x, laplacian=True, mode=mode)
        assert rl.hessian is None
        close(rl.laplacian, trace(fH), what=f"{mode} laplacian-only vs tr(hessQuik H)")
        if fL is not None:
            close(rl.laplacian, fL[:, 0, :], what=f"{mode} laplacian-only vs hessQuik laplacian")


@pytest.mark.parametrize("kind", HQ_NETWORKS)
def test_hessquik_float32_against_float64_truth(kind, rng):
    f32 = hessquik_network(kind, 3, "softplus", seed=23, dtype=torch.float32)
    net = hq.from_hessquik(f32)
    assert all(p.dtype == np.float32 for p in net.parameters())
    f64 = hq.from_hessquik(copy.deepcopy(f32).double())  # the float32-rounded weights, in float64
    x32 = rng.normal(size=(6, 3)).astype(np.float32)
    x64 = x32.astype(np.float64)
    for mode in MODES:
        t = f64(x64, gradient=True, hessian=True, mode=mode)
        r = net(x32, gradient=True, hessian=True, laplacian=True, mode=mode)
        assert r.hessian.dtype == np.float32
        close(r.value, t.value, F32_TOL, f"{mode} value")
        close(r.gradient, t.gradient, F32_TOL, f"{mode} gradient")
        close(r.hessian, t.hessian, F32_TOL, f"{mode} hessian")
        close(r.laplacian, trace(t.hessian), F32_TOL, f"{mode} laplacian")
        # hessQuik's own float32 run lands within the same tolerance of the truth
        hv, hg, hH = _hq_eval(f32, x32, mode == "forward", do_gradient=True, do_Hessian=True)
        close(hH, t.hessian, F32_TOL, f"hessQuik {mode} hessian")


def test_hessquik_truth_is_torch_func(rng):
    """The float64 hessQuik comparison is anchored to torch.func as well."""
    f = hessquik_network("NN-single-resnet-quadratic", 3, "tanh", seed=1)
    net = hq.from_hessquik(f)
    x = rng.normal(size=(4, 3))
    v, g, H = truth(net, x)
    fv, fg, fH = _hq_eval(f, x, False, do_gradient=True, do_Hessian=True)
    close(fv, v)
    close(fg, g)
    close(fH, H)

"""Networks of the existing layers with the new activations (GELU exact and
tanh, Mish, Gaussian, a user-defined one): every quantity in every mode
against torch.func, float32 against float64 truth, Taylor rates through
hq.checks, and the from_torch/to_torch and save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch, torch
from _reference import TORCH_TWINS, rel_err, truth

import hessquik_core as hq

F64_TOL = 1e-12
F32_TOL = 32 * float(np.finfo(np.float32).eps)


def _softsin():
    return hq.activations.custom(
        lambda z, xp: z + 0.5 * xp.sin(z),
        lambda z, xp: 1.0 + 0.5 * xp.cos(z),
        lambda z, xp: -0.5 * xp.sin(z),
        name="softsin",
    )


TORCH_TWINS["softsin"] = lambda z: z + 0.5 * torch.sin(z)

ACTS = {
    "gelu": hq.GELU(),
    "gelu-tanh": hq.GELU(approximate="tanh"),
    "mish": hq.Mish(),
    "gaussian": hq.Gaussian(),
    "custom": _softsin(),
}
NETS = ("single", "resnet", "fully-connected")


def _net(kind, act, seed=0):
    """(net, d); every net maps R^3 -> R^3 so the divergence is defined."""
    rng = np.random.default_rng(seed)
    if kind == "single":
        return hq.NN(hq.SingleLayer(3, 5, act=act, seed=rng), hq.SingleLayer(5, 3, act=act, seed=rng)), 3
    if kind == "resnet":
        return hq.NN(hq.SingleLayer(3, 3, act=act, seed=rng), hq.ResnetNN(3, 2, h=0.5, act=act, seed=rng)), 3
    return hq.FullyConnectedNN([3, 6, 4, 3], act=act, seed=rng), 3


def close(a, b, tol=F64_TOL, what=""):
    err = rel_err(np.asarray(a), np.asarray(b))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def trace(H):
    return np.trace(H, axis1=1, axis2=2)


def diag(H):
    return np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1)


@needs_torch
@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("act", list(ACTS), ids=list(ACTS))
def test_torch_func_every_quantity_and_mode(kind, act, rng):
    net, d = _net(kind, ACTS[act], seed=3)
    x = rng.normal(size=(4, d)) * 1.5
    v, g, H = truth(net, x)
    div = np.trace(g, axis1=1, axis2=2)
    for mode in ("forward", "backward", "auto"):
        r = net(
            x,
            gradient=True,
            hessian=True,
            laplacian=True,
            hessian_diagonal=True,
            divergence=True,
            mode=mode,
        )
        if mode != "auto":
            assert r.mode == mode
        close(r.value, v, what=f"{mode} value")
        close(r.gradient, g, what=f"{mode} gradient")
        close(r.hessian, H, what=f"{mode} hessian")
        close(r.laplacian, trace(H), what=f"{mode} laplacian")
        close(r.hessian_diagonal, diag(H), what=f"{mode} diagonal")
        close(r.divergence, div, what=f"{mode} divergence")
        r2 = net(x, laplacian=True, hessian_diagonal=True, mode=mode)
        assert r2.hessian is None
        close(r2.laplacian, trace(H), what=f"{mode} laplacian-only")
        close(r2.hessian_diagonal, diag(H), what=f"{mode} diagonal-only")
        close(net(x, divergence=True, mode=mode).divergence, div, what=f"{mode} divergence-only")


@needs_torch
@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("act", list(ACTS), ids=list(ACTS))
def test_torch_func_directional(kind, act, rng):
    net, d = _net(kind, ACTS[act], seed=4)
    x = rng.normal(size=(3, d))
    _, g, H = truth(net, x)
    V = rng.normal(size=(d, 2))
    VHV = np.einsum("ia,nijm,jb->nabm", V, H, V)
    r = net(
        x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, directions=V, mode="forward"
    )
    close(r.gradient, np.einsum("ia,nim->nam", V, g), what="Vᵀ∇f")
    close(r.hessian, VHV, what="VᵀHV")
    close(r.laplacian, trace(VHV), what="tr VᵀHV")
    close(r.hessian_diagonal, diag(VHV), what="diag VᵀHV")
    W = rng.normal(size=(net.out_features, 2))
    r = net(
        x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, directions=W, mode="backward"
    )
    close(r.gradient, g @ W, what="∇f W")
    close(r.hessian, H @ W, what="H W")
    close(r.laplacian, trace(H @ W), what="tr(H W)")
    close(r.hessian_diagonal, diag(H @ W), what="diag(H W)")


@needs_torch
@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("act", ["gelu", "gelu-tanh", "mish", "gaussian"])
def test_float32_against_float64_truth(kind, act, rng):
    net, d = _net(kind, ACTS[act], seed=5)
    x32 = rng.normal(size=(6, d)).astype(np.float32)
    v, g, H = truth(net, x32.astype(np.float64))
    for mode in ("forward", "backward"):
        r = net(x32, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
        for a in (r.value, r.gradient, r.hessian, r.laplacian, r.hessian_diagonal):
            assert a.dtype == np.float32
        close(r.value, v, F32_TOL, f"{mode} value")
        close(r.gradient, g, F32_TOL, f"{mode} gradient")
        close(r.hessian, H, F32_TOL, f"{mode} hessian")
        close(r.laplacian, trace(H), F32_TOL, f"{mode} laplacian")
        close(r.hessian_diagonal, diag(H), F32_TOL, f"{mode} diagonal")


@pytest.mark.parametrize("act", list(ACTS), ids=list(ACTS))
def test_taylor_rates(act, rng):
    net, d = _net("resnet", ACTS[act], seed=6)
    for mode in ("forward", "backward"):
        report = hq.checks.taylor_check(net, rng.normal(size=(5, d)), mode=mode, seed=1)
        assert report.passed, str(report)


@needs_torch
@pytest.mark.parametrize("act", ["gelu", "gelu-tanh", "mish"])
def test_torch_round_trip(act, rng):
    net, d = _net("fully-connected", ACTS[act], seed=7)
    tm = hq.to_torch(net)
    kinds = {type(m) for m in tm.modules()}
    assert (torch.nn.GELU if act.startswith("gelu") else torch.nn.Mish) in kinds
    x = rng.normal(size=(4, d))
    with torch.no_grad():
        y = tm(torch.as_tensor(x)).numpy()
    close(y, net(x).value, 1e-14, "to_torch value")
    back = hq.from_torch(tm)
    acts = {type(blk.act) for blk in back._leaves() if hasattr(blk, "act")}
    assert type(ACTS[act]) in acts
    for blk in back._leaves():
        if isinstance(blk.act, hq.GELU):
            assert blk.act == ACTS[act]
    r0 = net(x, gradient=True, hessian=True)
    r1 = back(x, gradient=True, hessian=True)
    close(r1.value, r0.value, 1e-15, "round-trip value")
    close(r1.hessian, r0.hessian, 1e-15, "round-trip hessian")


@needs_torch
def test_from_torch_gelu_mish_silu(rng):
    tm = torch.nn.Sequential(
        torch.nn.Linear(3, 5),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(5, 5),
        torch.nn.Mish(),
        torch.nn.Linear(5, 4),
        torch.nn.SiLU(),
        torch.nn.Linear(4, 4),
        torch.nn.GELU(),
        torch.nn.Linear(4, 1),
    ).double()
    net = hq.from_torch(tm)
    x = rng.normal(size=(3, 3))
    xt = torch.as_tensor(x)
    from torch.func import hessian, vmap

    H = vmap(hessian(lambda xi: tm(xi[None])[0]))(xt).permute(0, 2, 3, 1).detach().numpy()
    for mode in ("forward", "backward"):
        close(net(x, hessian=True, mode=mode).hessian, H, F64_TOL, f"{mode} hessian")


@pytest.mark.parametrize("act", ["gelu", "gelu-tanh", "mish", "gaussian"])
def test_save_load_round_trip(act, rng, tmp_path):
    net, d = _net("resnet", ACTS[act], seed=8)
    path = tmp_path / "net.hq"
    hq.save(net, path)
    back = hq.load(path)
    leaves = [blk for blk in back._leaves() if hasattr(blk, "act")]
    assert leaves and all(blk.act == ACTS[act] for blk in leaves)
    x = rng.normal(size=(3, d))
    r0 = net(x, gradient=True, laplacian=True)
    r1 = back(x, gradient=True, laplacian=True)
    np.testing.assert_array_equal(r1.value, r0.value)
    np.testing.assert_array_equal(r1.laplacian, r0.laplacian)


@needs_torch
def test_unregistered_custom_activation_is_not_saved_but_exported(tmp_path):
    """Saving needs register=True (tests/test_activation_custom.py); to_torch wraps it."""
    net, _ = _net("single", ACTS["custom"])
    with pytest.raises(TypeError, match="cannot save activation"):
        hq.save(net, tmp_path / "net.hq")
    tm = hq.to_torch(net)
    x = np.random.default_rng(2).standard_normal((3, 3))
    np.testing.assert_allclose(tm(torch.from_numpy(x)).detach().numpy(), net(x).value, rtol=1e-14, atol=1e-15)

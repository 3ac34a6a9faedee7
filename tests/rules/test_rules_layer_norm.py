"""Layer-normalisation derivative rules (hessquik_core.rules.layer_norm)
against torch.func on torch.nn.LayerNorm itself, float64, <= 1e-12."""

from __future__ import annotations

import _layer_norm_reference as R
import numpy as np
import pytest
from _reference import rel_err, torch_jit_script_quiet

torch = pytest.importorskip("torch")
from torch.func import hessian, jacrev, vmap  # noqa: E402

TOL = 1e-12


def close(a, b, what, tol=TOL):
    err = rel_err(np.asarray(a), np.asarray(b))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def _ln(w, affine, eps, seed):
    ln = torch.nn.LayerNorm(w, eps=eps, elementwise_affine=affine).double()
    if affine:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            ln.weight.copy_(1.0 + 0.5 * torch.randn(w, generator=g, dtype=torch.float64))
            ln.bias.copy_(0.3 * torch.randn(w, generator=g, dtype=torch.float64))
    gamma = ln.weight.detach().numpy() if affine else None
    beta = ln.bias.detach().numpy() if affine else None
    return ln, gamma, beta


CASES = [(True, 1e-5, 5), (False, 1e-5, 4), (True, 0.3, 6), (True, 1e-5, 1), (True, 1e-5, 2)]
IDS = ["affine", "plain", "large-eps", "w1", "w2"]


@pytest.mark.parametrize("affine, eps, w", CASES, ids=IDS)
def test_value_and_jacobian(affine, eps, w, rng):
    ln, gamma, beta = _ln(w, affine, eps, seed=1)
    z = rng.normal(size=(4, w)) * 2 + 0.5
    y, xhat, inv_std = R.layer_norm_forward(z, eps, gamma, beta)
    assert y.shape == (4, w) and xhat.shape == (4, w) and inv_std.shape == (4, 1)
    zt = torch.as_tensor(z)
    with torch.no_grad():
        close(y, ln(zt).numpy(), "value", 1e-14)
    J = vmap(jacrev(ln))(zt).detach().numpy()  # (n, out j, in i)
    close(R.layer_norm_jacobian(xhat, inv_std, gamma), J.transpose(0, 2, 1), "dense jacobian")
    T = rng.normal(size=(4, 3, 2, w))
    JT = R.layer_norm_jacobian_apply(T, xhat, inv_std)
    plain = J if gamma is None else J / gamma[:, None]
    close(JT, np.einsum("nji,nabi->nabj", plain, T), "jacobian apply")


def _tanh_layer(d, w, rng):
    K = rng.normal(size=(d, w))
    b = rng.normal(size=w) * 0.3
    return K, b


def _front(x, K, b):
    """z = tanh(xK + b) with its tangents G (n,d,w) and second tangents H (n,d,d,w)."""
    t = np.tanh(x @ K + b)
    s1, s2 = 1 - t * t, -2 * t * (1 - t * t)
    G = s1[:, None, :] * K[None]
    H = s2[:, None, None, :] * K[None, :, None, :] * K[None, None, :, :]
    return t, G, H


@pytest.mark.parametrize("affine, eps, w", CASES, ids=IDS)
@pytest.mark.parametrize("d", [1, 3])
def test_forward_tangents_laplacian_diagonal(affine, eps, w, d, rng):
    ln, gamma, beta = _ln(w, affine, eps, seed=2)
    K, b = _tanh_layer(d, w, rng)
    x = rng.normal(size=(5, d))
    Kt, bt = torch.as_tensor(K), torch.as_tensor(b)

    def f(xi):  # one example: (d,) -> (w,)
        return ln(torch.tanh(xi @ Kt + bt))

    xt = torch.as_tensor(x)
    jac = vmap(jacrev(f))(xt).detach().numpy()  # (n, w, d)
    with torch_jit_script_quiet():
        hes = vmap(hessian(f))(xt).detach().numpy()  # (n, w, d, d)
    g_true = jac.transpose(0, 2, 1)
    h_true = hes.transpose(0, 2, 3, 1)

    z, G, H = _front(x, K, b)
    y, xhat, inv_std = R.layer_norm_forward(z, eps, gamma, beta)
    Gy, Hy = R.layer_norm_forward_tangents(G, H, xhat, inv_std, gamma)
    close(Gy, g_true, "forward gradient")
    close(Hy, h_true, "forward hessian")
    Gy2, none = R.layer_norm_forward_tangents(G, None, xhat, inv_std, gamma)
    assert none is None
    close(Gy2, g_true, "forward gradient alone")
    L = np.trace(H, axis1=1, axis2=2).copy()
    Gl, Ly = R.layer_norm_forward_laplacian(G, L, xhat, inv_std, gamma)
    close(Gl, g_true, "laplacian route gradient")
    close(Ly, np.trace(h_true, axis1=1, axis2=2), "forward laplacian")
    Hd = np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1).copy()
    Gd, Dy = R.layer_norm_forward_diagonal(G, Hd, xhat, inv_std, gamma)
    close(Dy, np.diagonal(h_true, axis1=1, axis2=2).transpose(0, 2, 1), "forward diagonal")
    # packed pairs i <= j through the pair rule
    iu, ju = np.triu_indices(d)
    P = R.layer_norm_pair_curvature(G[:, iu], G[:, ju], xhat, inv_std)
    packed = R.layer_norm_jacobian_apply(H[:, iu, ju], xhat, inv_std) + P
    close(packed if gamma is None else packed * gamma, h_true[:, iu, ju], "packed pairs")


@pytest.mark.parametrize("affine, eps, w", CASES, ids=IDS)
@pytest.mark.parametrize("m", [1, 3])
def test_backward_adjoints(affine, eps, w, m, rng):
    ln, gamma, beta = _ln(w, affine, eps, seed=3)
    K2 = rng.normal(size=(w, m))
    b2 = rng.normal(size=m) * 0.2
    z = rng.normal(size=(4, w)) * 1.5
    K2t, b2t = torch.as_tensor(K2), torch.as_tensor(b2)

    def g(zi):  # one example: (w,) -> (m,), the rest of the network after the norm
        return torch.tanh(ln(zi) @ K2t + b2t)

    zt = torch.as_tensor(z)
    jac = vmap(jacrev(g))(zt).detach().numpy()  # (n, m, w)
    with torch_jit_script_quiet():
        hes = vmap(hessian(g))(zt).detach().numpy()  # (n, m, w, w)

    y, xhat, inv_std = R.layer_norm_forward(z, eps, gamma, beta)
    t = np.tanh(y @ K2 + b2)
    s1, s2 = 1 - t * t, -2 * t * (1 - t * t)
    A = K2[None] * s1[:, None, :]  # (n, w, m)
    B = s2[:, None, None, :] * K2[None, :, None, :] * K2[None, None, :, :]  # (n, w, w, m)
    A0, B0 = A.copy(), B.copy()
    Az, Bz = R.layer_norm_backward(A, B, xhat, inv_std, gamma)
    np.testing.assert_array_equal(A, A0)  # inputs untouched
    np.testing.assert_array_equal(B, B0)
    close(Az, jac.transpose(0, 2, 1), "backward adjoint")
    close(Bz, hes.transpose(0, 2, 3, 1), "backward second-order adjoint")
    Az2, none = R.layer_norm_backward(A, None, xhat, inv_std, gamma)
    assert none is None
    close(Az2, jac.transpose(0, 2, 1), "backward adjoint alone")


def test_float32_against_float64(rng):
    w, d = 6, 3
    _, gamma, beta = _ln(w, True, 1e-5, seed=4)
    K, b = _tanh_layer(d, w, rng)
    x = rng.normal(size=(5, d))
    z, G, H = _front(x, K, b)
    ref = R.layer_norm_forward_tangents(G, H, *R.layer_norm_forward(z, 1e-5, gamma, beta)[1:], gamma)
    f32 = [a.astype(np.float32) for a in (z, G, H, gamma, beta)]
    y32, xh32, r32 = R.layer_norm_forward(f32[0], 1e-5, f32[3], f32[4])
    out = R.layer_norm_forward_tangents(f32[1], f32[2], xh32, r32, f32[3])
    for a, r in zip(out, ref):
        assert a.dtype == np.float32
        close(a, r, "float32", 64 * float(np.finfo(np.float32).eps))


def test_every_backend(lib, rng):
    w, d, m = 5, 2, 2
    _, gamma, beta = _ln(w, True, 1e-5, seed=5)
    K, b = _tanh_layer(d, w, rng)
    z, G, H = _front(rng.normal(size=(3, d)), K, b)
    A = rng.normal(size=(3, w, m))
    B = rng.normal(size=(3, w, w, m))
    B = B + B.transpose(0, 2, 1, 3)
    y, xh, r = R.layer_norm_forward(z, 1e-5, gamma, beta)
    ref = (*R.layer_norm_forward_tangents(G, H, xh, r, gamma), *R.layer_norm_backward(A, B, xh, r, gamma))
    L = lib.asarray
    yl, xhl, rl = R.layer_norm_forward(L(z), 1e-5, L(gamma), L(beta))
    lib.check(yl, (3, w), like=L(z))
    out = (
        *R.layer_norm_forward_tangents(L(G), L(H), xhl, rl, L(gamma)),
        *R.layer_norm_backward(L(A), L(B), xhl, rl, L(gamma)),
    )
    for a, e in zip(out, ref):
        lib.check(a, e.shape, like=L(z))
        np.testing.assert_allclose(lib.to_numpy(a), e, rtol=1e-12, atol=1e-13)


def test_param_adjoint_against_autograd(rng):
    w, n = 5, 3
    ln, gamma, beta = _ln(w, True, 1e-5, seed=7)
    z = rng.normal(size=(n, w))
    c = rng.normal(size=(n, w))
    _, xhat, _ = R.layer_norm_forward(z, 1e-5, gamma, beta)
    dg, db = R.layer_norm_param_adjoint(c[:, :, None], xhat)
    loss = (ln(torch.as_tensor(z)) * torch.as_tensor(c)).sum()
    gw, gb = torch.autograd.grad(loss, [ln.weight, ln.bias])
    close(dg.sum(axis=0)[:, 0], gw.numpy(), "d/dgamma")
    close(db.sum(axis=0)[:, 0], gb.numpy(), "d/dbeta")

"""Gated-MLP forward rules (hessquik_core.rules.gated) against torch.func on
the torch formula of the modified MLP, float64, <= 1e-12."""

from __future__ import annotations

import _gated_reference as R
import numpy as np
import pytest
from _reference import rel_err, torch_act, torch_jit_script_quiet

import hessquik_core as hq

torch = pytest.importorskip("torch")
from torch.func import hessian, jacrev, vmap  # noqa: E402

TOL = 1e-12
ACTS = ["tanh", "gelu", "sin", "silu"]


def close(a, b, what, tol=TOL):
    err = rel_err(np.asarray(a), np.asarray(b))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def _params(d, w, m, depth, rng):
    def lin(p, q, s=1.0):
        return rng.normal(size=(p, q)) * s / np.sqrt(p), rng.normal(size=q) * 0.2

    return lin(d, w), lin(d, w), lin(d, w), [lin(w, w, 1.5) for _ in range(depth)], lin(w, m)


def _torch_net(params, act):
    (Wu, bu), (Wv, bv), (W1, b1), gates, (Wo, bo) = [
        [tuple(torch.as_tensor(a) for a in p) for p in x]
        if isinstance(x, list)
        else tuple(torch.as_tensor(a) for a in x)
        for x in params
    ]
    a = hq.activations.get_activation(act)

    def f(x):
        U = torch_act(a, x @ Wu + bu)
        V = torch_act(a, x @ Wv + bv)
        H = torch_act(a, x @ W1 + b1)
        for W, b in gates:
            Z = torch_act(a, H @ W + b)
            H = (1 - Z) * U + Z * V
        return H @ Wo + bo

    return f


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("depth", [1, 3])
def test_whole_block_against_torch_func(act, depth, rng):
    d, w, m, n = 3, 5, 2, 4
    params = _params(d, w, m, depth, rng)
    x = rng.normal(size=(n, d))
    f = _torch_net(params, act)
    xt = torch.as_tensor(x)
    with torch.no_grad():
        v_true = f(xt).numpy()
    g_true = vmap(jacrev(f))(xt).detach().numpy().transpose(0, 2, 1)
    with torch_jit_script_quiet():
        h_true = vmap(hessian(f))(xt).detach().numpy().transpose(0, 2, 3, 1)
    (enc_u, enc_v, first, gates, readout) = params
    v, g, h = R.gated_mlp_forward(x, (enc_u, enc_v), first, gates, readout, act)
    close(v, v_true, "value")
    close(g, g_true, "gradient")
    close(h, h_true, "hessian")


def _random_state(n, k, w, rng):
    arrs = [rng.normal(size=(n, w)) for _ in range(3)]
    G = [rng.normal(size=(n, k, w)) for _ in range(3)]
    H = []
    for _ in range(3):
        a = rng.normal(size=(n, k, k, w))
        H.append(a + a.transpose(0, 2, 1, 3))
    return arrs, G, H


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_step_shortcuts_match_full_hessian(act, rng):
    n, k, w = 3, 4, 5
    (U, V, Hs), (GU, GV, GH), (HU, HV, HH) = _random_state(n, k, w, rng)
    W = rng.normal(size=(w, w))
    b = rng.normal(size=w)
    out, Z, s1, s2 = R.gated_step(U, V, Hs, W, b, act)
    G, Hf = R.gated_step_forward_tangents(GU, GV, GH, HU, HV, HH, U, V, W, Z, s1, s2)
    G0, none = R.gated_step_forward_tangents(GU, GV, GH, None, None, None, U, V, W, Z, s1, s2)
    assert none is None
    np.testing.assert_array_equal(G0, G)
    np.testing.assert_allclose(Hf, Hf.transpose(0, 2, 1, 3), rtol=0, atol=1e-14)  # symmetric

    def tr(a):
        return np.trace(a, axis1=1, axis2=2)

    def dg(a):
        return np.diagonal(a, axis1=1, axis2=2).transpose(0, 2, 1)

    GL, L = R.gated_step_forward_laplacian(GU, GV, GH, tr(HU), tr(HV), tr(HH), U, V, W, Z, s1, s2)
    close(GL, G, "laplacian route gradient", 0)
    close(L, tr(Hf), "laplacian shortcut", 1e-13)
    GD, Dg = R.gated_step_forward_diagonal(GU, GV, GH, dg(HU), dg(HV), dg(HH), U, V, W, Z, s1, s2)
    close(Dg, dg(Hf), "diagonal shortcut", 1e-13)


def test_step_against_torch_func_along_a_curve(rng):
    """U, V, H given as smooth functions of x (d = 2): the step's rule must
    reproduce torch.func's derivatives of the composed map."""
    n, d, w = 3, 2, 4
    A = [rng.normal(size=(d, w)) for _ in range(3)]
    W = rng.normal(size=(w, w))
    b = rng.normal(size=w)
    At = [torch.as_tensor(a) for a in A]
    Wt, bt = torch.as_tensor(W), torch.as_tensor(b)

    def parts(x):  # U = sin(xA0), V = (xA1)^2 / 2, H = tanh(xA2)
        return torch.sin(x @ At[0]), 0.5 * (x @ At[1]) ** 2, torch.tanh(x @ At[2])

    def f(x):
        U, V, H = parts(x)
        Z = torch.sigmoid(H @ Wt + bt)
        return (1 - Z) * U + Z * V

    x = rng.normal(size=(n, d))
    xt = torch.as_tensor(x)
    g_true = vmap(jacrev(f))(xt).detach().numpy().transpose(0, 2, 1)
    with torch_jit_script_quiet():
        h_true = vmap(hessian(f))(xt).detach().numpy().transpose(0, 2, 3, 1)
    vals, Gs, Hs = [], [], []
    for fn in (lambda x: parts(x)[0], lambda x: parts(x)[1], lambda x: parts(x)[2]):
        with torch.no_grad():
            vals.append(fn(xt).numpy())
        Gs.append(vmap(jacrev(fn))(xt).detach().numpy().transpose(0, 2, 1))
        with torch_jit_script_quiet():
            Hs.append(vmap(hessian(fn))(xt).detach().numpy().transpose(0, 2, 3, 1))
    out, Z, s1, s2 = R.gated_step(*vals, W, b, "sigmoid")
    with torch.no_grad():
        close(out, f(xt).numpy(), "value")
    G, H = R.gated_step_forward_tangents(*Gs, *Hs, vals[0], vals[1], W, Z, s1, s2)
    close(G, g_true, "gradient")
    close(H, h_true, "hessian")


def test_every_backend(lib, rng):
    n, d, w, m = 2, 2, 3, 1
    params = _params(d, w, m, 2, rng)
    x = rng.normal(size=(n, d))
    ref = R.gated_mlp_forward(x, params[:2], params[2], params[3], params[4], "tanh")
    L = lib.asarray
    conv = [tuple(L(a) for a in p) for p in params[:3]]
    gates = [tuple(L(a) for a in p) for p in params[3]]
    out = R.gated_mlp_forward(L(x), conv[:2], conv[2], gates, tuple(L(a) for a in params[4]), "tanh")
    for a, e in zip(out, ref):
        lib.check(a, e.shape, like=L(x))
        np.testing.assert_allclose(lib.to_numpy(a), e, rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------
# the step as a layer on the state [U, V, H]: both modes
# --------------------------------------------------------------------------


def _torch_step(W, b, act):
    Wt, bt = torch.as_tensor(W), torch.as_tensor(b)
    a = hq.activations.get_activation(act)
    w = W.shape[0]

    def step(S):
        U, V, H = S[..., :w], S[..., w : 2 * w], S[..., 2 * w :]
        Z = torch_act(a, H @ Wt + bt)
        return torch.cat([U, V, (1 - Z) * U + Z * V], dim=-1)

    return step


@pytest.mark.parametrize("act", ["tanh", "gelu"])
@pytest.mark.parametrize("m", [1, 3])
def test_state_step_backward_against_torch_func(act, m, rng):
    n, w = 3, 4
    W = rng.normal(size=(w, w))
    b = rng.normal(size=w) * 0.3
    K2 = rng.normal(size=(3 * w, m))
    step = _torch_step(W, b, act)
    K2t = torch.as_tensor(K2)

    def g(S):
        return torch.tanh(step(S) @ K2t)

    S = rng.normal(size=(n, 3 * w))
    St = torch.as_tensor(S)
    jac = vmap(jacrev(g))(St).detach().numpy().transpose(0, 2, 1)
    with torch_jit_script_quiet():
        hes = vmap(hessian(g))(St).detach().numpy().transpose(0, 2, 3, 1)
    U, V, H = S[:, :w], S[:, w : 2 * w], S[:, 2 * w :]
    out, Z, s1, s2 = R.gated_step(U, V, H, W, b, act)
    Sp = np.concatenate([U, V, out], axis=1)
    t = np.tanh(Sp @ K2)
    A = K2[None] * (1 - t * t)[:, None, :]
    B = (-2 * t * (1 - t * t))[:, None, None, :] * K2[None, :, None, :] * K2[None, None, :, :]
    A_in, B_in = R.gated_step_backward(A, B, U, V, W, Z, s1, s2)
    close(A_in, jac, "state adjoint")
    close(B_in, hes, "state second-order adjoint")
    assert R.gated_step_backward(A, None, U, V, W, Z, s1, s2)[1] is None


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_state_step_forward_against_torch_func(act, rng):
    n, d, w = 3, 2, 4
    W = rng.normal(size=(w, w))
    b = rng.normal(size=w) * 0.3
    K0 = rng.normal(size=(d, 3 * w))
    step = _torch_step(W, b, act)
    K0t = torch.as_tensor(K0)

    def f(x):
        return step(torch.tanh(x @ K0t))

    x = rng.normal(size=(n, d))
    xt = torch.as_tensor(x)
    g_true = vmap(jacrev(f))(xt).detach().numpy().transpose(0, 2, 1)
    with torch_jit_script_quiet():
        h_true = vmap(hessian(f))(xt).detach().numpy().transpose(0, 2, 3, 1)
    S = np.tanh(x @ K0)
    s1, s2 = 1 - S * S, -2 * S * (1 - S * S)
    G = s1[:, None, :] * K0[None]
    Hs = s2[:, None, None, :] * K0[None, :, None, :] * K0[None, None, :, :]
    U, V, H = S[:, :w], S[:, w : 2 * w], S[:, 2 * w :]
    _, Z, z1, z2 = R.gated_step(U, V, H, W, b, act)
    Gs, Hn = R.gated_step_state_forward_tangents(G, Hs, U, V, W, Z, z1, z2)
    close(Gs, g_true, "state tangents")
    close(Hn, h_true, "state second tangents")
    G2, none = R.gated_step_state_forward_tangents(G, None, U, V, W, Z, z1, z2)
    assert none is None
    np.testing.assert_array_equal(G2, Gs)


@pytest.mark.parametrize("depth", [1, 2])
def test_whole_block_backward_chain(depth, rng):
    """lift (one dense layer to [U, V, H_1]) -> gated steps -> read-out of H,
    swept backward with the step rule, equals the forward composition."""
    from _fourier_reference import pointwise_linear_backward

    d, w, m, n = 3, 4, 2, 3
    params = _params(d, w, m, depth, rng)
    (Wu, bu), (Wv, bv), (W1, b1), gates, (Wo, bo) = params
    x = rng.normal(size=(n, d))
    v_ref, g_ref, h_ref = R.gated_mlp_forward(x, params[:2], params[2], gates, params[4], "tanh")
    K = np.concatenate([Wu, Wv, W1], axis=1)
    pre = x @ K + np.concatenate([bu, bv, b1])
    S = np.tanh(pre)
    ls1, ls2 = 1 - S * S, -2 * S * (1 - S * S)
    states = []
    for W, b in gates:
        U, V, H = S[:, :w], S[:, w : 2 * w], S[:, 2 * w :]
        out, Z, s1, s2 = R.gated_step(U, V, H, W, b, "tanh")
        states.append((U, V, W, Z, s1, s2))
        S = np.concatenate([U, V, out], axis=1)
    close(S[:, 2 * w :] @ Wo + bo, v_ref, "value")
    A = np.broadcast_to(np.concatenate([np.zeros((2 * w, m)), Wo])[None], (n, 3 * w, m)).copy()
    B = np.zeros((n, 3 * w, 3 * w, m))
    for st in reversed(states):
        A, B = R.gated_step_backward(A, B, *st)
    grad, hes = pointwise_linear_backward(A, B, K, ls1, ls2)
    close(grad, g_ref, "backward gradient")
    close(hes, h_ref, "backward hessian")


def test_state_step_every_backend(lib, rng):
    n, w, m, k = 2, 3, 2, 2
    S = rng.normal(size=(n, 3 * w))
    W = rng.normal(size=(w, w))
    b = rng.normal(size=w)
    G = rng.normal(size=(n, k, 3 * w))
    Hs = rng.normal(size=(n, k, k, 3 * w))
    A = rng.normal(size=(n, 3 * w, m))
    B = rng.normal(size=(n, 3 * w, 3 * w, m))

    def run(conv):
        U, V, H = conv(S[:, :w]), conv(S[:, w : 2 * w]), conv(S[:, 2 * w :])
        _, Z, s1, s2 = R.gated_step(U, V, H, conv(W), conv(b), "gelu")
        return (
            *R.gated_step_state_forward_tangents(conv(G), conv(Hs), U, V, conv(W), Z, s1, s2),
            *R.gated_step_backward(conv(A), conv(B), U, V, conv(W), Z, s1, s2),
        )

    ref = run(lambda a: a)
    out = run(lib.asarray)
    for a, e in zip(out, ref):
        lib.check(a, e.shape, like=lib.asarray(S))
        np.testing.assert_allclose(lib.to_numpy(a), e, rtol=1e-12, atol=1e-13)

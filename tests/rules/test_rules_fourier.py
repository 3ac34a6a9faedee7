"""Fourier-feature and periodic-embedding rules (hessquik_core.rules.fourier)
against torch.func on plain torch formulas, float64, <= 1e-12."""

from __future__ import annotations

import math

import _fourier_reference as R
import numpy as np
import pytest
from _reference import rel_err, torch_jit_script_quiet

torch = pytest.importorskip("torch")
from torch.func import hessian, jacrev, vmap  # noqa: E402

TOL = 1e-12


def close(a, b, what, tol=TOL):
    err = rel_err(np.asarray(a), np.asarray(b))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def _embedding(kind, d, rng):
    """(numpy eval(u, order) -> (y, s1, s2, K), torch formula u -> y)."""
    if kind == "fourier":
        B = R.fourier_features_matrix(d, 4, scale=0.7, seed=rng)
        Bt = torch.as_tensor(B)

        def tf(u):
            z = 2 * math.pi * (u @ Bt)
            return torch.cat([torch.sin(z), torch.cos(z)], dim=-1)

        return (lambda u, order=2: R.fourier_features_eval(u, B, order)), tf
    axes = (0, 2) if d >= 3 else (0,)
    periods = (1.5, 2.0)[: len(axes)]
    K = R.periodic_embedding_matrix(d, periods, axes)
    rest = [j for j in range(d) if j not in axes]
    om = torch.tensor([2 * math.pi / p for p in periods], dtype=torch.float64)

    def tp(u):
        xs = u[..., list(axes)] * om
        return torch.cat([torch.cos(xs), torch.sin(xs), u[..., rest]], dim=-1)

    return (lambda u, order=2: R.periodic_embedding_eval(u, K, len(axes), order)), tp


def _front(x, K, b):
    t = np.tanh(x @ K + b)
    s1, s2 = 1 - t * t, -2 * t * (1 - t * t)
    return t, s1[:, None, :] * K[None], s2[:, None, None, :] * K[None, :, None, :] * K[None, None, :, :]


@pytest.mark.parametrize("kind", ["fourier", "periodic"])
@pytest.mark.parametrize("front", [False, True], ids=["at-x", "after-tanh"])
def test_forward(kind, front, rng):
    d, n = 3, 4
    ev, tf = _embedding(kind, d, rng)
    x = rng.normal(size=(n, d))
    K0 = rng.normal(size=(d, d))
    b0 = rng.normal(size=d) * 0.2
    K0t, b0t = torch.as_tensor(K0), torch.as_tensor(b0)

    def f(xi):
        return tf(torch.tanh(xi @ K0t + b0t) if front else xi)

    xt = torch.as_tensor(x)
    g_true = vmap(jacrev(f))(xt).detach().numpy().transpose(0, 2, 1)
    with torch_jit_script_quiet():
        h_true = vmap(hessian(f))(xt).detach().numpy().transpose(0, 2, 3, 1)
    if front:
        u, G, H = _front(x, K0, b0)
    else:
        u, G, H = x, np.broadcast_to(np.eye(d), (n, d, d)), None
    y, s1, s2, K = ev(u)
    with torch.no_grad():
        close(y, tf(torch.as_tensor(u)).numpy(), "value", 1e-14)
    Gy, Hy = R.pointwise_linear_forward_tangents(G, H, K, s1, s2)
    close(Gy, g_true, "gradient")
    close(Hy, h_true, "hessian")
    L = None if H is None else np.trace(H, axis1=1, axis2=2).copy()
    _, Ly = R.pointwise_linear_forward_laplacian(G, L, K, s1, s2)
    close(Ly, np.trace(h_true, axis1=1, axis2=2), "laplacian")
    D = None if H is None else np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1).copy()
    _, Dy = R.pointwise_linear_forward_diagonal(G, D, K, s1, s2)
    close(Dy, np.diagonal(h_true, axis1=1, axis2=2).transpose(0, 2, 1), "diagonal")
    y0, none1, none2, _ = ev(u, 0)
    assert none1 is None and none2 is None
    np.testing.assert_array_equal(y0, y)


@pytest.mark.parametrize("kind", ["fourier", "periodic"])
@pytest.mark.parametrize("m", [1, 2])
def test_backward(kind, m, rng):
    d, n = 3, 4
    ev, tf = _embedding(kind, d, rng)
    x = rng.normal(size=(n, d))
    y, s1, s2, K = ev(x)
    q = y.shape[1]
    K2 = rng.normal(size=(q, m))
    K2t = torch.as_tensor(K2)

    def g(xi):
        return torch.tanh(tf(xi) @ K2t)

    xt = torch.as_tensor(x)
    jac = vmap(jacrev(g))(xt).detach().numpy()
    with torch_jit_script_quiet():
        hes = vmap(hessian(g))(xt).detach().numpy()
    t = np.tanh(y @ K2)
    A = K2[None] * (1 - t * t)[:, None, :]
    B = (-2 * t * (1 - t * t))[:, None, None, :] * K2[None, :, None, :] * K2[None, None, :, :]
    Au, Bu = R.pointwise_linear_backward(A, B, K, s1, s2)
    close(Au, jac.transpose(0, 2, 1), "backward adjoint")
    close(Bu, hes.transpose(0, 2, 3, 1), "backward hessian")
    assert R.pointwise_linear_backward(A, None, K, s1, s2)[1] is None


def test_periodic_is_exactly_periodic(rng):
    d = 3
    K = R.periodic_embedding_matrix(d, (1.5, 2.0), (0, 2))
    x = rng.normal(size=(5, d))
    y = R.periodic_embedding_eval(x, K, 2, 0)[0]
    for axis, p in ((0, 1.5), (2, 2.0)):
        shifted = x.copy()
        shifted[:, axis] += 3 * p
        np.testing.assert_allclose(R.periodic_embedding_eval(shifted, K, 2, 0)[0], y, atol=1e-13)
    np.testing.assert_array_equal(y[:, 4], x[:, 1])  # passed through
    assert K.shape == (3, 5)
    assert R.periodic_embedding_matrix(2, 1.0).shape == (2, 4)  # all axes, one period


def test_fourier_matrix():
    B = R.fourier_features_matrix(3, 200, scale=2.0, seed=0)
    assert B.shape == (3, 200) and B.dtype == np.float64
    np.testing.assert_array_equal(B, R.fourier_features_matrix(3, 200, scale=2.0, seed=0))
    assert abs(B.std() - 2.0) < 0.2
    for bad in ({"in_features": 0}, {"num_features": 2.5}, {"scale": -1.0}, {"scale": float("inf")}):
        kw = {"in_features": 2, "num_features": 3, "scale": 1.0, **bad}
        with pytest.raises(ValueError, match="must be a positive"):
            R.fourier_features_matrix(**kw)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"periods": (1.0,), "axes": (3,)}, ValueError, "distinct indices"),
        ({"periods": (1.0, 1.0), "axes": (0, 0)}, ValueError, "distinct indices"),
        ({"periods": (1.0,), "axes": (0, 1)}, ValueError, "periods must be 2 positive"),
        ({"periods": (0.0,), "axes": (1,)}, ValueError, "periods must be 1 positive"),
        ({"periods": 1.0, "axes": (0.5,)}, TypeError, "axes must be integers"),
    ],
)
def test_periodic_errors(kw, err, match):
    with pytest.raises(err, match=match):
        R.periodic_embedding_matrix(3, **kw)


def test_every_backend(lib, rng):
    d, n, m = 3, 3, 2
    x = rng.normal(size=(n, d))
    B = R.fourier_features_matrix(d, 2, seed=1)
    K2 = R.periodic_embedding_matrix(d, (1.0, 3.0), (1, 2))
    L = lib.asarray
    for ev_np, ev_lib in (
        (lambda u: R.fourier_features_eval(u, B), lambda u: R.fourier_features_eval(u, L(B))),
        (lambda u: R.periodic_embedding_eval(u, K2, 2), lambda u: R.periodic_embedding_eval(u, L(K2), 2)),
    ):
        y, s1, s2, K = ev_np(x)
        G = np.broadcast_to(np.eye(d), (n, d, d)).copy()
        A = rng.normal(size=(n, y.shape[1], m))
        Bm = rng.normal(size=(n, y.shape[1], y.shape[1], m))
        ref = (
            y,
            *R.pointwise_linear_forward_tangents(G, None, K, s1, s2),
            *R.pointwise_linear_backward(A, Bm, K, s1, s2),
        )
        yl, s1l, s2l, Kl = ev_lib(L(x))
        out = (
            yl,
            *R.pointwise_linear_forward_tangents(L(G), None, Kl, s1l, s2l),
            *R.pointwise_linear_backward(L(A), L(Bm), Kl, s1l, s2l),
        )
        for a, e in zip(out, ref):
            lib.check(a, e.shape, like=L(x))
            np.testing.assert_allclose(lib.to_numpy(a), e, rtol=1e-12, atol=1e-13)

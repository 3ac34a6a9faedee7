"""LayerNorm as a layer (generic rule for the input derivatives, own parameter
derivatives): every input derivative in both modes against torch.func, float32
against float64 truth, Taylor rates, save/load, nn.LayerNorm round trips,
curvature products on the flattened parameters, and the array libraries."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from _checks import twin_curvature_truth  # noqa: E402
from _optional import needs_torch, torch
from layer_checks import check_input_derivatives, check_save_load, check_to_torch, torch_truth

import hessquik_core as hq
from hessquik_core import curvature as cv


def _net(affine=True, eps=1e-5):
    rng = np.random.default_rng(7)
    ln = hq.LayerNorm(5, eps=eps, elementwise_affine=affine)
    if affine:  # nontrivial γ, β (the initial values 1, 0 would hide errors)
        ln.gamma = 1.0 + 0.3 * rng.standard_normal(5)
        ln.beta = 0.2 * rng.standard_normal(5)
    return hq.NN(
        hq.FourierFeatures(3, 4, scale=0.5, seed=rng),
        hq.SingleLayer(8, 5, act="tanh", seed=rng),
        ln,
        hq.SingleLayer(5, 2, act="sigmoid", seed=rng),
    )


def _f(net):
    """The network's torch twin (``hq.to_torch``) as a function of one point, ``(d,) -> (m,)``."""
    tm = hq.to_torch(net).double().requires_grad_(False)
    return lambda xi: tm(xi[None])[0]


def _x(n=5, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


@needs_torch
@pytest.mark.parametrize("affine", [True, False])
def test_input_derivatives_vs_torch_func(affine):
    net = _net(affine)
    check_input_derivatives(net, _f(net), _x(), rtol=1e-12)


@needs_torch
def test_first_layer_and_auto():
    """LayerNorm first (shared seed, zero input Hessian), packed forward Hessian, auto."""
    rng = np.random.default_rng(1)
    ln = hq.LayerNorm(4, eps=0.1)
    ln.gamma = 1.0 + 0.3 * rng.standard_normal(4)
    ln.beta = rng.standard_normal(4)
    net = hq.NN(ln, hq.SingleLayer(4, 2, act="tanh", seed=2))
    x = _x(4, 4, 1)
    check_input_derivatives(net, _f(net), x, backends=(None,), rtol=1e-12)
    a = net(x, gradient=True, hessian=True, mode="auto")
    b = net(x, gradient=True, hessian=True, mode="forward")
    np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-12, atol=1e-13)


@needs_torch
@pytest.mark.parametrize("affine", [True, False])
def test_last_and_only_layer(affine):
    """LayerNorm last (shared output seed, no incoming second-order adjoint) and
    as the whole network (first and last: both shortcuts at once)."""
    rng = np.random.default_rng(4)
    ln = hq.LayerNorm(3, eps=0.05, elementwise_affine=affine)
    if affine:
        ln.gamma = 1.0 + 0.3 * rng.standard_normal(3)
        ln.beta = rng.standard_normal(3)
    net = hq.NN(hq.SingleLayer(2, 3, act="tanh", seed=5), ln)
    check_input_derivatives(net, _f(net), _x(4, 2, 2), backends=(None,), rtol=1e-12)
    alone = hq.NN(ln)  # d = m: directions would be ambiguous, so the quantities only
    x = _x(4, 3, 3)
    v, g, H = torch_truth(_f(alone), x)
    for mode in ("forward", "backward"):
        r = alone(x, gradient=True, hessian=True, mode=mode)
        r2 = alone(x, laplacian=True, hessian_diagonal=True, mode=mode)
        for got, want in (
            (r.value, v),
            (r.gradient, g),
            (r.hessian, H),
            (r2.laplacian, np.trace(H, axis1=1, axis2=2)),
            (r2.hessian_diagonal, np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1)),
        ):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=mode)


def test_structured_steps_match_generic_rule():
    """The structured steps against the generic rule on the dense per-example
    J and T (the previous implementation), including packed and shared seeds."""
    # the rule references live with the rule tests (tests/rules)
    rules = str(pathlib.Path(__file__).resolve().parents[1] / "rules")
    if rules not in sys.path:
        sys.path.insert(0, rules)
    import _layer_norm_reference as R

    from hessquik_core.backends import get_backend
    from hessquik_core.carry import Adjoints, Packing, Request, Tangents
    from hessquik_core.rules import jacobian

    rng = np.random.default_rng(9)
    n, w, k = 3, 5, 4
    gamma = 1.0 + 0.3 * rng.standard_normal(w)
    z = rng.standard_normal((n, w))
    _, xhat, r = R.layer_norm_forward(z, 1e-5, gamma, None)
    J = R.layer_norm_jacobian(xhat, r, gamma)
    # T from the pair rule on unit vectors: T_ab = D²x̂[e_a, e_b] γ
    E = np.eye(w)
    iu, ju = np.meshgrid(np.arange(w), np.arange(w), indexing="ij")
    S = np.broadcast_to(E[iu.ravel()], (n, w * w, w))
    T2 = np.broadcast_to(E[ju.ravel()], (n, w * w, w))
    T = (R.layer_norm_pair_curvature(S, T2, xhat, r) * gamma).reshape(n, w, w, w)
    local = jacobian.LocalDerivatives(J, T)
    ops = get_backend("numpy")
    G = rng.standard_normal((1, k, w))
    H = rng.standard_normal((n, k, k, w))
    H = H + H.transpose(0, 2, 1, 3)
    tri = np.triu_indices(k)
    pk = Packing(tri[0], tri[1])
    for tang, req in (
        (Tangents(G), Request(hessian=True, diagonal=True)),
        (
            Tangents(
                G,
                H,
                np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1).copy(),
                np.trace(H, axis1=1, axis2=2),
            ),
            Request(hessian=True, diagonal=True, laplacian=True),
        ),
        (Tangents(G, H[:, tri[0], tri[1]]), Request(hessian=True, packing=pk)),
        (Tangents(G), Request(laplacian=True)),
    ):
        a = R.forward_step(xhat, r, gamma, tang, req, ops)
        b = jacobian.forward_step(local, tang, req, ops)
        for x1, x2 in zip(
            (a.jacobian, a.hessian, a.diagonal, a.laplacian), (b.jacobian, b.hessian, b.diagonal, b.laplacian)
        ):
            assert (x1 is None) == (x2 is None)
            if x1 is not None:
                np.testing.assert_allclose(x1, x2, rtol=1e-12, atol=1e-13)
    dl = rng.standard_normal((1, k, w))
    Dl = rng.standard_normal((n, k, w, w))
    Dl = Dl + Dl.transpose(0, 1, 3, 2)
    for adj in (Adjoints(dl), Adjoints(np.broadcast_to(dl, (n, k, w)), Dl)):
        a = R.backward_step(xhat, r, gamma, adj, True, ops)
        b = jacobian.backward_step(local, adj, True, ops)
        np.testing.assert_allclose(a.gradient, b.gradient, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-12, atol=1e-13)
        d = np.diagonal(b.hessian, axis1=2, axis2=3)
        np.testing.assert_allclose(
            R.backward_first(xhat, r, gamma, adj, "diagonal", ops), d, rtol=1e-12, atol=1e-13
        )
        np.testing.assert_allclose(
            R.backward_first(xhat, r, gamma, adj, "trace", ops), d.sum(-1), rtol=1e-12, atol=1e-13
        )


@needs_torch
def test_divergence_vs_torch_func():
    net = hq.NN(hq.SingleLayer(3, 3, act="tanh", seed=0), hq.LayerNorm(3))
    x = _x(4, 3)
    from torch.func import jacrev, vmap

    J = vmap(jacrev(_f(net)))(torch.tensor(x)).numpy()
    div = np.trace(J, axis1=1, axis2=2)
    for mode in ("forward", "backward"):
        np.testing.assert_allclose(net(x, divergence=True, mode=mode).divergence, div, rtol=1e-12, atol=1e-12)


def test_float32_against_float64_truth():
    net = _net()
    x = _x()
    r64 = net(x, gradient=True, hessian=True, laplacian=True)
    for mode in ("forward", "backward"):
        r32 = net(x.astype(np.float32), gradient=True, hessian=True, laplacian=True, mode=mode)
        assert r32.hessian.dtype == np.float32
        for name in ("value", "gradient", "hessian", "laplacian"):
            want = getattr(r64, name)
            assert np.max(np.abs(getattr(r32, name) - want)) <= 1e-4 * max(1.0, np.max(np.abs(want))), name


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_taylor_rates(mode):
    rep = hq.checks.taylor_check(_net(), _x(3), mode=mode, seed=0)
    assert rep.passed, rep


@needs_torch
@pytest.mark.parametrize("affine", [True, False])
def test_save_load_and_torch_round_trip(affine):
    net = _net(affine, eps=1e-3)
    x = _x()
    check_save_load(net, x)
    check_to_torch(net, x)
    tm = hq.to_torch(net)
    ln = [m for m in tm if isinstance(m, torch.nn.LayerNorm)]
    assert len(ln) == 1 and ln[0].eps == 1e-3


@needs_torch
def test_from_plain_torch_layer_norm():
    torch.manual_seed(0)
    tm = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.LayerNorm(6), torch.nn.Linear(6, 1)
    )
    tm = tm.double()
    with torch.no_grad():
        tm[2].weight.normal_()
        tm[2].bias.normal_()
    net = hq.from_torch(tm)
    assert isinstance(net[1], hq.LayerNorm)
    x = _x(4, 3)
    np.testing.assert_allclose(net(x).value, tm(torch.tensor(x)).detach().numpy(), rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="normalized_shape"):
        hq.from_torch(torch.nn.Sequential(torch.nn.LayerNorm((2, 3))))


def test_config_cost_and_bad_input():
    ln = hq.LayerNorm(6, eps=1e-6)
    assert ln.cost_shapes == ((1, 6),)
    assert hq.LayerNorm.parameter_shapes(ln.config()) == {"gamma": (6,), "beta": (6,)}
    assert hq.LayerNorm.parameter_shapes(hq.LayerNorm(6, elementwise_affine=False).config()) == {}
    with pytest.raises(ValueError):
        hq.LayerNorm(0)
    with pytest.raises(ValueError):
        hq.LayerNorm(3, eps=0.0)
    with pytest.raises(TypeError):
        hq.LayerNorm(3, eps="1e-5")
    with pytest.raises(TypeError):
        hq.LayerNorm(3, elementwise_affine=1)


@needs_torch
@pytest.mark.parametrize("affine", [True, False])
def test_curvature_vs_torch_func(affine):
    net = _net(affine)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3))
    y = rng.standard_normal((4, 2))
    v = rng.standard_normal(cv.parameter_layout(net).size)
    want = twin_curvature_truth(net, x, y, v)
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cv.gradient(net, x, y, "mse"), want["gradient"], **tol)
    np.testing.assert_allclose(cv.per_example_gradients(net, x, y, "mse"), want["per_example"], **tol)
    np.testing.assert_allclose(cv.hvp(net, x, y, "mse", v), want["hvp"], **tol)
    np.testing.assert_allclose(cv.ggn_vp(net, x, y, "mse", v), want["ggn_vp"], **tol)
    A = want["per_example"]  # (N, P): the empirical Fisher is AᵀA / N
    np.testing.assert_allclose(cv.empirical_fisher_vp(net, x, y, "mse", v), A.T @ (A @ v) / len(x), **tol)


def test_all_libraries(lib):
    net = _net()
    x = _x(4, 3)
    want = net(x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)
    xl = lib.asarray(x)
    for mode in ("forward", "backward"):
        r = net(
            xl,
            gradient=True,
            hessian=True,
            laplacian=True,
            hessian_diagonal=True,
            mode=mode,
            backend=lib.backend,
        )
        lib.check(r.hessian, want.hessian.shape, xl)
        for name in ("value", "gradient", "hessian", "laplacian", "hessian_diagonal"):
            np.testing.assert_allclose(
                lib.to_numpy(getattr(r, name)), getattr(want, name), rtol=1e-12, atol=1e-13
            )
    g = cv.gradient(net, xl, lib.asarray(np.zeros((4, 2))), "mse", backend=lib.backend)
    np.testing.assert_allclose(
        lib.to_numpy(g), cv.gradient(net, x, np.zeros((4, 2)), "mse"), rtol=1e-12, atol=1e-13
    )

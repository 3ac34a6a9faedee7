"""GatedMLP and GatedResidual (hessquik_core/layers/gated.py, gated_residual.py): every
input derivative in both modes against torch.func on plain torch formulas (float64),
float32 against float64, Taylor rates, save/load, the torch twins, parameter gradients
(the curvature products: tests/test_curvature_gated.py)."""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch, torch
from _reference import torch_act
from layer_checks import check_input_derivatives, check_save_load, check_to_torch

import hessquik_core as hq


def _torch_gated(blk, x):
    """The modified MLP in plain torch, from the layer's parameters."""

    def T(a):
        return torch.from_numpy(np.array(a))

    w = blk.width
    K, b = T(blk.S.K), T(blk.S.b)
    z = x @ K + b
    U, V, H = (torch_act(blk.act, z[..., j * w : (j + 1) * w]) for j in range(3))
    for i in range(blk.depth):
        g = blk._children[f"g{i}"]
        Z = torch_act(blk.act, H @ T(g.W) + T(g.b))
        H = (1 - Z) * U + Z * V
    return H @ T(blk.out.K) + T(blk.out.b)


def _torch_dense(layer, x):
    K, b = torch.from_numpy(np.array(layer.K)), torch.from_numpy(np.array(layer.b))
    return torch_act(layer.act, x @ K + b)


@needs_torch
@pytest.mark.parametrize("act", ["tanh", "sin", "softplus"])
def test_gated_mlp_inside_a_network(act):
    first = hq.SingleLayer(3, 4, act="tanh", seed=0)
    blk = hq.GatedMLP(4, 5, 2, 2, act=act, seed=1)
    net = hq.NN(first, blk)

    def f(xi):
        return _torch_gated(blk, _torch_dense(first, xi))

    x = np.random.default_rng(0).standard_normal((4, 3))
    check_input_derivatives(net, f, x)


@needs_torch
def test_gated_mlp_first_and_followed():
    blk = hq.GatedMLP(3, 4, 1, 3, act="tanh", seed=2)
    last = hq.SingleLayer(3, 2, act="tanh", seed=3)
    net = hq.NN(blk, last)

    def f(xi):
        return _torch_dense(last, _torch_gated(blk, xi))

    x = np.random.default_rng(1).standard_normal((3, 3))
    check_input_derivatives(net, f, x)
    check_save_load(net, x)
    check_to_torch(net, x)


def test_gated_mlp_array_api_strict_and_packed():
    pytest.importorskip("array_api_strict")
    import array_api_strict as xps

    net = hq.NN(hq.GatedMLP(2, 3, 2, 1, act="tanh", seed=4))
    x = np.random.default_rng(2).standard_normal((4, 2))
    want = net(x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode="backward")
    for mode in ("forward", "backward", "auto"):
        r = net(xps.asarray(x), gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
        for name in ("value", "gradient", "hessian", "laplacian", "hessian_diagonal"):
            np.testing.assert_allclose(
                np.asarray(getattr(r, name)), getattr(want, name), rtol=1e-12, atol=1e-13
            )


def test_gated_mlp_float32_and_taylor():
    net = hq.NN(hq.GatedMLP(3, 6, 3, 2, act="tanh", seed=5))
    x = np.random.default_rng(3).standard_normal((5, 3))
    want = net(x, gradient=True, hessian=True, laplacian=True)
    got = net(x.astype(np.float32), gradient=True, hessian=True, laplacian=True)
    assert got.hessian.dtype == np.float32
    for name in ("value", "gradient", "hessian", "laplacian"):
        a, b = getattr(got, name), getattr(want, name)
        assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, np.max(np.abs(b))), name
    for mode in ("forward", "backward"):
        assert hq.checks.taylor_check(net, x, mode=mode, seed=0).passed


@needs_torch
def test_gated_mlp_parameter_gradients_against_autograd():
    """hq.curvature's gradient and per-example gradients (the blocks' param_vjp)
    against torch autograd through the same network's value."""
    net = hq.NN(hq.SingleLayer(2, 3, act="tanh", seed=0), hq.GatedMLP(3, 4, 2, 2, act="tanh", seed=6))
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    loss = torch.nn.MSELoss(reduction="sum")
    got = hq.curvature.gradient(net, x, y, loss)
    per = hq.curvature.per_example_gradients(net, x, y, loss)
    tnet = _copy(net)
    tnet.to("torch", requires_grad=True)
    params = [p for _, p in tnet.named_parameters()]
    out = tnet(torch.from_numpy(x)).value
    loss(out, torch.from_numpy(y)).backward()
    want = np.concatenate([p.grad.detach().numpy().ravel() for p in params])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(per.sum(axis=0), want, rtol=1e-12, atol=1e-13)


def _copy(net):
    back = hq.NN(hq.SingleLayer(2, 3, act="tanh"), hq.GatedMLP(3, 4, 2, 2, act="tanh"))
    back.load_state_dict({k: np.array(v) for k, v in net.state_dict().items()})
    return back


@needs_torch
def test_gated_residual_derivatives_and_twin():
    inner = hq.NN(hq.GatedMLP(3, 4, 1, 3, act="tanh", seed=7))
    res = hq.GatedResidual(inner)
    res.alpha = np.array([0.3])
    net = hq.NN(hq.SingleLayer(2, 3, act="tanh", seed=8), res, hq.SingleLayer(3, 1, act="tanh", seed=9))
    first, last = net[0], net[2]
    blk = inner[0]

    def f(xi):
        h = _torch_dense(first, xi)
        h = 0.3 * _torch_gated(blk, h) + 0.7 * h
        return _torch_dense(last, h)

    x = np.random.default_rng(5).standard_normal((4, 2))
    check_input_derivatives(net, f, x)
    check_to_torch(net, x)
    check_save_load(net, x)


def test_gated_residual_starts_as_identity():
    res = hq.GatedResidual(hq.SingleLayer(3, 3, act="tanh", seed=0))
    x = np.random.default_rng(6).standard_normal((4, 3))
    r = res(x, gradient=True, hessian=True)
    np.testing.assert_array_equal(r.value, x)
    np.testing.assert_allclose(r.gradient, np.broadcast_to(np.eye(3), (4, 3, 3)))
    np.testing.assert_array_equal(r.hessian, 0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="width"):
        hq.GatedMLP(2, 0, 1, 1)
    with pytest.raises(ValueError, match="depth"):
        hq.GatedMLP(2, 3, 0, 1)
    with pytest.raises(TypeError, match="layer or NN"):
        hq.GatedResidual(np.eye(3))
    with pytest.raises(ValueError, match="R\\^p to R\\^p"):
        hq.GatedResidual(hq.SingleLayer(2, 3))

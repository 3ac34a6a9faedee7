"""SirenLayer, f(u) = sin(w0 (uK + b)): added as one layer file and this test file.

Every input derivative (both modes, three backends, directions, the Laplacian and
diagonal routes) and every parameter pass is compared with ``torch.func`` applied to
the layer's own torch twin in float64; save/load and the torch round trip are exact
or at rounding level; SIREN's initialisation is checked by its bounds.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
from _checks import check_parameter_passes
from _optional import needs_torch, torch
from layer_checks import check_input_derivatives, check_save_load, check_to_torch

import hessquik_core as hq


@pytest.fixture(autouse=True)
def _analytic_higher_order_on():
    """This module tests the AD-free order-3/4 weight gradient, an opt-in (slower than taping)."""
    from hessquik_core.training import analytic_higher_order_gradient

    before = analytic_higher_order_gradient(True)
    yield
    analytic_higher_order_gradient(before)


def _net(w0=30.0, bias=True):
    rng = np.random.default_rng(7)
    return hq.NN(
        hq.SirenLayer(3, 6, w0=w0, is_first=True, bias=bias, seed=rng),
        hq.SirenLayer(6, 5, w0=w0, bias=bias, seed=rng),
        hq.SingleLayer(5, 2, seed=rng),
    )


def _twin_f(net):
    tm = hq.to_torch(net).double().requires_grad_(False)
    return lambda xi: tm(xi[None])[0]


def _x(n=5, d=3, seed=0):
    return 0.3 * np.random.default_rng(seed).standard_normal((n, d))


@needs_torch
@pytest.mark.parametrize("w0, bias", [(30.0, True), (1.5, False)])
def test_input_derivatives_vs_torch_func_on_the_twin(w0, bias):
    net = _net(w0, bias)
    check_input_derivatives(net, _twin_f(net), _x(), rtol=1e-12, atol=1e-12)


@needs_torch
def test_siren_alone_first_layer_routes():
    """A SIREN layer as the whole network: the first-layer trace/diagonal shortcut and
    the packed forward Hessian (many directions)."""
    net = hq.NN(hq.SirenLayer(6, 2, w0=3.0, is_first=True, seed=1))
    check_input_derivatives(net, _twin_f(net), _x(4, 6, 2), backends=(None,))


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_passes_vs_torch_func_on_the_twin(bias):
    net = _net(w0=2.0, bias=bias)
    rng = np.random.default_rng(3)
    x, y = _x(4), rng.standard_normal((4, 2))
    check_parameter_passes(net, x, y, rtol=1e-12, atol=1e-12)


@needs_torch
def test_parameter_passes_at_w0_30():
    net = _net()
    x, y = _x(3), np.random.default_rng(4).standard_normal((3, 2))
    check_parameter_passes(net, x, y, rtol=1e-12, atol=1e-12)


@needs_torch
def test_save_load_and_torch_round_trip(tmp_path):
    net = _net()
    x = _x()
    check_save_load(net, x)
    check_to_torch(net, x)
    p = tmp_path / "siren.safetensors"
    hq.save(net, p)
    back = hq.load(p)
    for a, b in zip(back.blocks[:2], net.blocks[:2]):
        assert type(a) is hq.SirenLayer and a.config() == b.config()
    assert back[0].is_first and not back[1].is_first and back[1].w0 == 30.0
    tm = hq.to_torch(net)
    assert type(tm[0]).__name__ == "SirenBlock" and tm[0].w0 == 30.0 and tm[0].is_first
    again = hq.from_torch(tm)
    assert type(again[0]) is hq.SirenLayer and again[0].config() == net[0].config()
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)


def test_float32():
    net = _net(w0=3.0)
    x = _x()
    r64 = net(x, gradient=True, laplacian=True)
    for mode in ("forward", "backward"):
        r32 = net(x.astype(np.float32), gradient=True, laplacian=True, mode=mode)
        assert r32.laplacian.dtype == np.float32 and r32.gradient.shape == r64.gradient.shape
        for name in ("value", "gradient", "laplacian"):
            want = getattr(r64, name)
            assert np.max(np.abs(getattr(r32, name) - want)) <= 1e-4 * max(1.0, np.max(np.abs(want))), name


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_taylor_rates(mode):
    rep = hq.checks.taylor_check(_net(w0=2.0), _x(3), mode=mode, seed=0)
    assert rep.passed, rep


def test_siren_initialisation():
    p, q, w0 = 40, 300, 30.0
    first = hq.SirenLayer(p, q, w0=w0, is_first=True, seed=0)
    hidden = hq.SirenLayer(p, q, w0=w0, seed=0)
    assert np.abs(first.K).max() <= 1.0 / p and np.abs(first.K).max() > 0.95 / p
    bound = math.sqrt(6.0 / p) / w0
    assert np.abs(hidden.K).max() <= bound and np.abs(hidden.K).max() > 0.95 * bound
    np.testing.assert_allclose(np.std(hidden.K), bound / math.sqrt(3.0), rtol=0.05)  # U(-a, a): a/√3
    assert np.abs(first.b).max() <= 1.0 / math.sqrt(p)
    assert hq.SirenLayer(2, 3, bias=False).b is None
    assert hq.SirenLayer(2, 3).w0 == 30.0  # SIREN's default


def test_config_and_bad_input():
    layer = hq.SirenLayer(2, 3, w0=5, is_first=True, seed=0)
    assert layer.config() == {"in_features": 2, "out_features": 3, "w0": 5.0, "is_first": True, "bias": True}
    assert hq.SirenLayer.parameter_shapes(layer.config()) == {"K": (2, 3), "b": (3,)}
    assert "is_first=True" in repr(layer)
    with pytest.raises(ValueError, match="w0 must be a positive finite number, got 0"):
        hq.SirenLayer(2, 3, w0=0)
    with pytest.raises(ValueError, match="w0"):
        hq.SirenLayer(2, 3, w0=float("inf"))
    with pytest.raises(TypeError, match="w0"):
        hq.SirenLayer(2, 3, w0="30")
    with pytest.raises(TypeError, match="is_first"):
        hq.SirenLayer(2, 3, is_first=1)
    with pytest.raises(ValueError, match="in_features"):
        hq.SirenLayer(0, 3)


def test_added_as_one_file():
    """Nothing else in the package names the layer: the registry, io, interop and the cost
    model found it through its own file."""
    root = pathlib.Path(hq.__file__).parent
    naming = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if "Siren" in p.read_text(encoding="utf-8") and p.name != "siren.py"
    ]
    assert naming == []
    assert "SirenLayer" in hq.__all__ and hq.layers.LAYERS["SirenLayer"] is hq.SirenLayer


# --------------------------------------------------------------------------
# the declared affine structure: the analytic training step and the high-dimensional routes
# --------------------------------------------------------------------------


def test_declared_structure_is_what_the_layer_computes():
    from hessquik_core.backends import get_backend

    layer = hq.SirenLayer(3, 4, w0=2.5, seed=0)
    form = layer.affine_structure()
    assert form.plain and form.act.name == "sin" and form.M is None and form.pullback is None
    ops = get_backend("numpy").bind(np)
    P = {"K": layer.K, "b": layer.b}
    st = layer.affine_structure(P)
    u = _x(6, 3, 1)
    np.testing.assert_allclose(np.sin(u @ st.M + st.b), layer.evaluate(u, P, 0, ops)[0], rtol=1e-15)
    g = st.pullback(np.ones((3, 4)), np.ones(4))
    np.testing.assert_array_equal(g["K"], np.full((3, 4), 2.5))
    np.testing.assert_array_equal(g["b"], np.full(4, 2.5))
    assert set(
        hq.SirenLayer(3, 4, bias=False)
        .affine_structure({"K": layer.K, "b": None})
        .pullback(np.ones((3, 4)), None)
    ) == {"K"}


@needs_torch
def test_high_dimensional_laplacian_route():
    """At d > width the Gram-root Laplacian route is planned for a SIREN first layer
    (chosen from the declaration) and agrees with torch.func on the twin."""
    rng = np.random.default_rng(3)
    net = hq.NN(
        hq.SirenLayer(40, 6, w0=2.0, is_first=True, seed=rng), hq.SingleLayer(6, 1, act="tanh", seed=rng)
    )
    x = 0.3 * rng.standard_normal((5, 40))
    assert net.cost(5, gradient=False, laplacian=True).route == "forward/gram-laplacian"
    from layer_checks import torch_truth

    _, _, H = torch_truth(_twin_f(net), x)
    np.testing.assert_allclose(
        net(x, laplacian=True).laplacian, np.trace(H, axis1=1, axis2=2), rtol=1e-11, atol=1e-12
    )


@needs_torch
def test_analytic_training_step():
    """A SIREN network's torch training step runs the analytic sweep, with the gradients
    of the taped path."""
    from layer_checks import uses_analytic_sweep

    from hessquik_core.training import analytic_weight_gradient, torch_parameters

    rng = np.random.default_rng(4)
    net = hq.NN(
        hq.SirenLayer(2, 6, w0=3.0, is_first=True, seed=rng),
        hq.SirenLayer(6, 6, w0=3.0, bias=False, seed=rng),
        hq.SingleLayer(6, 1, seed=rng),
    )
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((7, 2)), requires_grad=True)

    def step(on):
        before = analytic_weight_gradient(on)
        try:
            r = net(x, gradient=True, laplacian=True, mode="forward")
            used = uses_analytic_sweep(r.laplacian)
            loss = (r.laplacian**2).mean() + (r.gradient**2).sum() + (r.value**3).sum()
            return used, torch.autograd.grad(loss, [*params, x])
        finally:
            analytic_weight_gradient(before)

    (used, got), (unused, want) = step(True), step(False)
    assert used and not unused
    for a, b in zip(got, want):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)

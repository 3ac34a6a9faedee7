"""The analytic weight gradient of ``net(x, biharmonic=True)`` on torch
(``pinn/_streams_bh_train``, registered with ``engine/routes/higher``).

Reference: the same call with the switch off
(``hq.training.analytic_weight_gradient(False)``): torch autograd through every
operation of the route's sweep (itself checked against ``torch.func`` nested AD in
``tests/test_higher.py``), and ``torch.func`` nested AD directly for one network.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from layer_checks import on_graph as _on_graph  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.training import analytic_weight_gradient, torch_parameters  # noqa: E402

FN = "_BiharmonicBackward"


@pytest.fixture(autouse=True)
def _analytic_higher_order_on():
    """This module tests the AD-free order-3/4 weight gradient, an opt-in (slower than taping)."""
    from hessquik_core.training import analytic_higher_order_gradient

    before = analytic_higher_order_gradient(True)
    yield
    analytic_higher_order_gradient(before)


def nets():
    return {
        "mlp_tanh": hq.FullyConnectedNN([2, 6, 5, 1], act="tanh", output_act=None, seed=0),
        "resnet_sin_m2": hq.NN(
            hq.SingleLayer(3, 6, act="tanh", seed=0),
            hq.ResnetNN(6, depth=2, h=0.5, act="sin", seed=1),
            hq.SingleLayer(6, 2, seed=2),
        ),
        "sigmoid_antitanh": hq.NN(
            hq.SingleLayer(2, 5, act="sigmoid", seed=3),
            hq.SingleLayer(5, 4, act="antitanh", seed=4),
            hq.SingleLayer(4, 1, act="quadratic", seed=5),
        ),
    }


def loss_of(r, full):
    loss = (r.biharmonic**2).mean() + r.biharmonic.sum()
    if full:
        loss = loss + (r.laplacian * r.value).sum() + (r.gradient**3).sum() + r.value.sum()
    return loss


def step(net, params, x, analytic, full=True, *, wrt_x=False, create_graph=False, dtype=torch.float64):
    before = analytic_weight_gradient(analytic)
    try:
        r = net(x, biharmonic=True, laplacian=full, gradient=full)
        loss = loss_of(r, full)
        used = on_graph(r.biharmonic)
        inputs = [*params, x] if wrt_x else list(params)
        grads = torch.autograd.grad(loss, inputs, create_graph=create_graph, materialize_grads=True)
    finally:
        analytic_weight_gradient(before)
    return loss, grads, used


def close(ga, gb, rtol):
    for a, b in zip(ga, gb):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = float(b.abs().max()) or 1.0
        assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max()) / scale


@pytest.mark.parametrize("name", sorted(nets()))
@pytest.mark.parametrize("full", [False, True], ids=["biharmonic", "all_fields"])
def test_analytic_equals_taped(name, full):
    net = nets()[name]
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(0).standard_normal((7, net.in_features)))
    la, ga, used_a = step(net, params, x, True, full)
    lt, gt, used_t = step(net, params, x, False, full)
    assert used_a and not used_t  # the analytic function is the route taken, and only with the switch on
    assert float(la.detach()) == pytest.approx(float(lt.detach()), rel=1e-14)  # same forward sweep
    close(ga, gt, 1e-12)
    assert net.cost(7, biharmonic=True, gradient=False, training=True).training == "analytic"


def test_against_torch_func_nested_ad():
    """The weight gradient of mean((Δ²u)²) by torch.func (hessian of the Laplacian, nested jacrev)."""
    from torch.func import functional_call, jacrev, vmap

    tnet = torch.nn.Sequential(
        torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    ).double()
    net = hq.from_torch(tnet)
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(1).standard_normal((6, 2)))
    _, g, used = step(net, params, x, True, full=False)
    assert used
    theta = {k: v.detach().clone() for k, v in tnet.named_parameters()}

    def u(th, xi):
        return functional_call(tnet, th, (xi,))[0]

    def lap(f):
        return lambda th, xi: torch.diagonal(jacrev(jacrev(f, argnums=1), argnums=1)(th, xi)).sum()

    def loss(th):
        B = vmap(lap(lap(u)), in_dims=(None, 0))(th, x)
        return (B**2).mean() + B.sum()

    ref = torch.func.grad(loss)(theta)
    # hessquik's parameters: K (p, q) = Linear.weight.T, b = Linear.bias
    lin = [0, 2, 4]
    refs = []
    for i in lin:
        refs += [ref[f"{i}.weight"].T, ref[f"{i}.bias"]]
    close(g, refs, 1e-12)


def test_x_requiring_grad_takes_the_taped_path():
    net = nets()["resnet_sin_m2"]
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(2).standard_normal((5, 3)), requires_grad=True)
    _, ga, used_a = step(net, params, x, True, wrt_x=True)
    _, gt, _ = step(net, params, x, False, wrt_x=True)
    assert not used_a  # ∇ₓΔ²u is a fifth-order input derivative: the taped path
    close(ga, gt, 1e-14)


def test_double_backward_is_exact():
    """A penalty on the weight gradient (create_graph=True) differentiates the backward pass."""
    net = nets()["resnet_sin_m2"]
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(3).standard_normal((5, 3)))
    out = []
    for analytic in (True, False):
        _, g, used = step(net, params, x, analytic, create_graph=True)
        assert used is analytic
        pen = sum((gi**2).sum() for gi in g)
        out.append(torch.autograd.grad(pen, params, materialize_grads=True))
    close(out[0], out[1], 1e-12)


def test_unsupported_networks_take_the_taped_path():
    """No σ⁽⁵⁾ (softplus) or a layer without the stream Jacobian (layer norm): taped, unchanged."""
    x = torch.tensor(np.random.default_rng(4).standard_normal((4, 2)))
    for net in (
        hq.FullyConnectedNN([2, 5, 1], act="softplus", output_act=None, seed=0),
        hq.NN(
            hq.SingleLayer(2, 4, act="tanh", seed=0), hq.LayerNorm(4, seed=1), hq.SingleLayer(4, 1, seed=2)
        ),
    ):
        params = torch_parameters(net)
        _, ga, used = step(net, params, x, True)
        _, gt, _ = step(net, params, x, False)
        assert not used
        close(ga, gt, 0.0)
        assert net.cost(4, biharmonic=True, gradient=False, training=True).training == "taped"


def test_float32_and_no_grad():
    net = nets()["mlp_tanh"]
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(5).standard_normal((6, 2)))
    _, g64, _ = step(net, params, x, True)
    net.to(dtype=torch.float32)
    params32 = torch_parameters(net)
    _, g32, used = step(net, params32, x.float(), True)
    assert used and all(g.dtype == torch.float32 for g in g32)
    for a, b in zip(g32, g64):
        assert float((a.double() - b).abs().max()) <= 1e-4 * float(b.abs().max())
    with torch.no_grad():  # not recorded: the plain sweep, no function on the graph
        r = net(x.float(), biharmonic=True)
    assert r.biharmonic.grad_fn is None


# --------------------------------------------------------------------------
# hq.taylor_derivatives / hq.pure_partials (pinn/_streams_taylor_train)
# --------------------------------------------------------------------------

TFN = "_TaylorBackward"
V3 = np.array([[1.0, -0.4], [0.3, 0.9], [-0.7, 0.2]])


def taylor_step(net, params, x, analytic, order, *, wrt_x=False, create_graph=False):
    before = analytic_weight_gradient(analytic)
    try:
        V = V3[: net.in_features]
        D = hq.taylor_derivatives(net, x, V, order)
        pp = hq.pure_partials(net, x, [net.in_features - 1], order)
        loss = (D[-1] ** 2).mean() + (pp**2).sum() + sum(Dj.sum() for Dj in D[:-1])
        if order > 1:
            loss = loss + (D[0] * D[1]).sum()
        used = on_graph(D[-1], TFN) and on_graph(pp, TFN)
        inputs = [*params, x] if wrt_x else list(params)
        grads = torch.autograd.grad(loss, inputs, create_graph=create_graph, materialize_grads=True)
    finally:
        analytic_weight_gradient(before)
    return loss, grads, used


@pytest.mark.parametrize("name", sorted(nets()))
@pytest.mark.parametrize("order", [1, 3, 4])
def test_taylor_analytic_equals_taped(name, order):
    net = nets()[name]
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(6).standard_normal((5, net.in_features)))
    la, ga, used_a = taylor_step(net, params, x, True, order)
    lt, gt, used_t = taylor_step(net, params, x, False, order)
    assert used_a and not used_t
    assert float(la.detach()) == pytest.approx(float(lt.detach()), rel=1e-14)
    close(ga, gt, 1e-12)


def test_pure_partial_against_torch_func():
    """The weight gradient of mean((u_xxx)²) by torch.func (three nested jacrev along e_1)."""
    from torch.func import functional_call, jacrev, vmap

    tnet = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    net = hq.from_torch(tnet)
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(7).standard_normal((6, 2)))
    before = analytic_weight_gradient(True)
    try:
        pp = hq.pure_partials(net, x, [1], 3)
        assert on_graph(pp, TFN)
        g = torch.autograd.grad((pp**2).mean(), params, materialize_grads=True)
    finally:
        analytic_weight_gradient(before)
    theta = {k: v.detach().clone() for k, v in tnet.named_parameters()}
    e1 = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def u_xxx(th, xi):
        def along(t):
            return functional_call(tnet, th, (xi + t * e1,))[0]

        return jacrev(jacrev(jacrev(along)))(torch.zeros((), dtype=torch.float64))

    ref = torch.func.grad(lambda th: (vmap(u_xxx, in_dims=(None, 0))(th, x) ** 2).mean())(theta)
    close(g, [ref["0.weight"].T, ref["0.bias"], ref["2.weight"].T, ref["2.bias"]], 1e-12)


def test_taylor_taped_where_it_does_not_apply_and_double_backward():
    net = nets()["resnet_sin_m2"]
    params = torch_parameters(net)
    xr = torch.tensor(np.random.default_rng(8).standard_normal((4, 3)), requires_grad=True)
    _, ga, used = taylor_step(net, params, xr, True, 3, wrt_x=True)
    _, gt, _ = taylor_step(net, params, xr, False, 3, wrt_x=True)
    assert not used  # x records: the taped path
    close(ga, gt, 0.0)
    x = xr.detach()
    out = []
    for analytic in (True, False):
        _, g, used = taylor_step(net, params, x, analytic, 4, create_graph=True)
        assert used is analytic
        out.append(torch.autograd.grad(sum((gi**2).sum() for gi in g), params, materialize_grads=True))
    close(out[0], out[1], 1e-12)
    ln = hq.NN(
        hq.SingleLayer(2, 4, act="tanh", seed=0), hq.LayerNorm(4, seed=1), hq.SingleLayer(4, 1, seed=2)
    )
    _, _, used = taylor_step(ln, torch_parameters(ln), x[:, :2], True, 3)
    assert not used  # no stream Jacobian for layer norm


def test_the_ad_free_order_four_gradient_is_an_opt_in():
    """Off by default (it measured 1.4-2.4x slower than taping the sweep): a recorded Δ²u call is
    taped unless analytic_higher_order_gradient(True); the switch reports and restores."""
    from hessquik_core.training import analytic_higher_order_gradient

    net = nets()["resnet_sin_m2"]
    params = torch_parameters(net)
    x = torch.tensor(np.random.default_rng(0).standard_normal((5, net.in_features)))
    before = analytic_higher_order_gradient(False)  # the default (this module's fixture turns it on)
    try:
        assert net.cost(5, biharmonic=True, gradient=False, training=True).training == "taped"
        _, g_taped, used = step(net, params, x, True)
        assert not used
        assert analytic_higher_order_gradient(True) is False
        assert net.cost(5, biharmonic=True, gradient=False, training=True).training == "analytic"
        _, g_analytic, used = step(net, params, x, True)
        assert used
        close(g_analytic, g_taped, 1e-12)
    finally:
        analytic_higher_order_gradient(before)
    with pytest.raises(TypeError, match="enabled must be True, False or None"):
        analytic_higher_order_gradient("yes")
    from hessquik_core.backends.switches import Switches

    assert Switches().analytic_higher_order is False


def on_graph(t, name=FN) -> bool:
    """Is the autograd node ``name`` on the graph of ``t``?"""
    return _on_graph(t, name)

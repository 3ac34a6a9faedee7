"""The analytic weight gradient of torch training steps (the route
``engine/routes/analytic_step`` and its torch kernel ``backends/_torch_step``).

A forward-mode call of value / gradient / Laplacian through a chain of layers
that declare affine structure (dense, residual),
recorded by autograd, runs as one ``torch.autograd.Function`` whose backward
is the hand-written adjoint of the forward recurrences. It must give what
autograd over the generic sweep gives (to 1e-12, float64), and an independent
``torch.func`` Laplacian; it must stay out of the cases it does not cover.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from layer_checks import uses_analytic_sweep as _uses_sweep  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.backends.base import SWITCHES  # noqa: E402
from hessquik_core.training import analytic_weight_gradient, torch_parameters  # noqa: E402

ACTS = ["tanh", "sin", "sigmoid", "antitanh", "quadratic", "identity"]


def _step(net, params, x, analytic, *, laplacian=True, gradient=True, directions=None, dtype=torch.float64):
    """Loss on value, gradient and Laplacian; gradients w.r.t. the weights and x."""
    before = analytic_weight_gradient(analytic)
    try:
        r = net(x, laplacian=laplacian, gradient=gradient, mode="forward", directions=directions)
        loss = (r.value**3).sum() * 0.1
        if gradient:
            loss = loss + (r.gradient**2).sum() * 0.3
        if laplacian:
            loss = loss + ((r.laplacian + 0.5) ** 2).mean()
        used = _uses_sweep(loss)
        grads = torch.autograd.grad(loss, [*params, x], materialize_grads=True)
    finally:
        analytic_weight_gradient(before)
    return loss.detach(), grads, used


def _close(a, b, rtol=1e-12):
    la, ga, _ = a
    lb, gb, _ = b
    assert abs(float(la - lb)) <= rtol * abs(float(lb)) + 1e-300
    for u, v in zip(ga, gb):
        scale = float(v.abs().max())
        assert float((u - v).abs().max()) <= rtol * max(scale, 1e-30), (u, v)
    # the comparison can fail: the weight gradient is not trivially zero
    assert max(float(v.abs().max()) for v in gb) > 1e-3


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("what", ["laplacian", "gradient", "both"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_autograd_over_generic_sweep(act, what, bias):
    rng = np.random.default_rng(3)
    net = hq.NN(
        hq.SingleLayer(3, 7, act=act, bias=bias, seed=0),
        hq.SingleLayer(7, 6, act="tanh", bias=bias, seed=1),
        hq.SingleLayer(6, 5, act=act, bias=bias, seed=2),
        hq.SingleLayer(5, 2, bias=bias, seed=3),
    )
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((9, 3)), requires_grad=True)
    kw = {"laplacian": what != "gradient", "gradient": what != "laplacian"}
    got = _step(net, params, x, True, **kw)
    want = _step(net, params, x, False, **kw)
    assert got[2] and not want[2]
    _close(got, want)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_matches_torch_func_laplacian():
    # an independent reference: vmap(hessian) of the same MLP in plain torch
    from torch.func import hessian, vmap

    rng = np.random.default_rng(0)
    net = hq.FullyConnectedNN([2, 8, 8, 1], act="tanh", seed=4)
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((16, 2)))
    f = torch.tensor(rng.standard_normal((16, 1)))
    r = net(x, laplacian=True, mode="forward")
    assert _uses_sweep(r.laplacian)
    loss = ((r.laplacian + f) ** 2).mean()
    g = torch.autograd.grad(loss, params, materialize_grads=True)

    Ks, bs = params[0::2], params[1::2]

    def u(xi):
        h = xi
        for K, b in zip(Ks, bs):  # FullyConnectedNN: tanh on every layer
            h = torch.tanh(h @ K + b)
        return h[0]

    lap = vmap(lambda xi: torch.trace(hessian(u)(xi)))(x)[:, None]
    ref_loss = ((lap + f) ** 2).mean()
    ref = torch.autograd.grad(ref_loss, params, materialize_grads=True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_directions_and_divergence():
    rng = np.random.default_rng(1)
    net = hq.FullyConnectedNN([4, 6, 4], act="tanh", seed=0)
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    V = torch.tensor(rng.standard_normal((4, 2)))
    _close(_step(net, params, x, True, directions=V), _step(net, params, x, False, directions=V))

    def div(analytic):
        before = analytic_weight_gradient(analytic)
        try:
            r = net(x, divergence=True, mode="forward")
            return r.divergence.pow(2).sum(), _uses_sweep(r.divergence)
        finally:
            analytic_weight_gradient(before)

    (a, used), (b, unused) = div(True), div(False)
    assert used and not unused
    ga = torch.autograd.grad(a, params)
    gb = torch.autograd.grad(b, params)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-15)


def test_float32_against_float64():
    rng = np.random.default_rng(2)
    net = hq.FullyConnectedNN([3, 16, 16, 1], act="tanh", seed=0)
    x64 = torch.tensor(rng.standard_normal((32, 3)), requires_grad=True)
    p64 = torch_parameters(net)
    want = _step(net, p64, x64, True)
    net32 = hq.FullyConnectedNN([3, 16, 16, 1], act="tanh", seed=0)
    p32 = torch_parameters(net32, dtype=torch.float32)
    x32 = x64.detach().float().requires_grad_(True)
    got = _step(net32, p32, x32, True)
    assert got[2]
    for u, v in zip(got[1], want[1]):
        assert float((u.double() - v).abs().max()) <= 1e-4 * float(v.abs().max())


def test_inputs_and_output_adjoints_untouched():
    rng = np.random.default_rng(5)
    net = hq.FullyConnectedNN([2, 8, 1], act="tanh", seed=0)
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((6, 2)), requires_grad=True)
    x0 = x.detach().clone()
    p0 = [p.detach().clone() for p in params]
    r = net(x, laplacian=True, mode="forward")
    seed = torch.ones_like(r.laplacian)
    seed0 = seed.clone()
    torch.autograd.grad(r.laplacian, params, grad_outputs=seed, materialize_grads=True)
    assert torch.equal(x, x0) and torch.equal(seed, seed0)
    assert all(torch.equal(p, q) for p, q in zip(params, p0))


def test_not_used_where_it_does_not_apply():
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((5, 3)))
    net = hq.FullyConnectedNN([3, 6, 1], act="tanh", seed=0)
    params = torch_parameters(net)
    # second-order requests beyond the Laplacian, backward mode
    assert not _uses_sweep(net(x, hessian=True, mode="forward").hessian)
    assert not _uses_sweep(net(x, hessian_diagonal=True, mode="forward").hessian_diagonal)
    assert not _uses_sweep(net(x, laplacian=True, mode="backward").laplacian)
    # nothing requires grad, or autograd off
    with torch.no_grad():
        assert net(x, laplacian=True, mode="forward").laplacian.grad_fn is None
    plain = hq.FullyConnectedNN([3, 6, 1], act="tanh", seed=0).to("torch")
    assert plain(x, laplacian=True, mode="forward").laplacian.grad_fn is None
    # a layer that declares no affine structure, activations without a known third derivative
    norm = hq.NN(hq.SingleLayer(3, 6, act="tanh", seed=0), hq.LayerNorm(6), hq.SingleLayer(6, 1, seed=1))
    assert norm[1].affine_structure() is None
    torch_parameters(norm)
    assert not _uses_sweep(norm(x, laplacian=True, mode="forward").laplacian)
    # (every built-in supplies σ‴ since issue 23: a custom activation with σ, σ′, σ″ only)
    two = hq.activations.custom(
        lambda z, xp: xp.tanh(z),
        lambda z, xp: 1.0 - xp.tanh(z) ** 2,
        lambda z, xp: -2.0 * xp.tanh(z) * (1.0 - xp.tanh(z) ** 2),
    )
    assert two.max_order == 2
    soft = hq.FullyConnectedNN([3, 6, 1], act=two, seed=0)
    torch_parameters(soft)
    assert not _uses_sweep(soft(x, laplacian=True, mode="forward").laplacian)
    assert params


@pytest.mark.parametrize("acts", [("tanh", "identity"), ("sin", "sigmoid"), ("identity", "identity")])
@pytest.mark.parametrize("quantity", ["laplacian", "gradient"])
def test_second_backward_is_exact(acts, quantity):
    """create_graph=True (a penalty on the weight gradient, and a weight-space HVP)
    differentiates the Function's backward: the same numbers as the generic sweep."""
    rng = np.random.default_rng(7)
    net = hq.NN(
        hq.SingleLayer(3, 6, act=acts[0], seed=rng),
        hq.SingleLayer(6, 5, act=acts[1], seed=rng),
        hq.SingleLayer(5, 1, act="identity", seed=rng),
    )
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    v = [torch.tensor(rng.standard_normal(p.shape)) for p in params]

    def penalty_grads():
        res = net(x, **{quantity: True}, mode="forward")
        out = res.laplacian if quantity == "laplacian" else res.gradient
        loss = (torch.sin(out) ** 2).mean()
        g = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
        pen = sum((gi**2).sum() for gi in g)
        hv = torch.autograd.grad(
            g, params + [x], v, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        full = torch.autograd.grad(pen, params + [x], allow_unused=True, materialize_grads=True)
        return [t.detach() for t in full] + [t.detach() for t in hv]

    analytic = penalty_grads()
    before = analytic_weight_gradient(False)
    try:
        generic = penalty_grads()
    finally:
        analytic_weight_gradient(before)
    for a, g in zip(analytic, generic):
        assert a.dtype == g.dtype == torch.float64 and a.shape == g.shape
        torch.testing.assert_close(a, g, rtol=1e-12, atol=1e-13)


def test_switch_arguments():
    assert analytic_weight_gradient() is SWITCHES.analytic_step
    before = analytic_weight_gradient(False)
    try:
        assert analytic_weight_gradient() is False
    finally:
        analytic_weight_gradient(before)
    with pytest.raises(TypeError, match="True, False or None"):
        analytic_weight_gradient(1)  # type: ignore[arg-type]


def test_empty_batch():
    net = hq.FullyConnectedNN([2, 5, 1], act="tanh", seed=0)
    params = torch_parameters(net)
    x = torch.zeros((0, 2), dtype=torch.float64)
    r = net(x, laplacian=True, gradient=True, mode="forward")
    assert r.laplacian.shape == (0, 1) and r.gradient.shape == (0, 2, 1)
    assert _uses_sweep(r.laplacian)
    g = torch.autograd.grad(r.laplacian.sum(), params, materialize_grads=True)
    assert all(float(gi.abs().max()) == 0 for gi in g)


def test_auto_mode_prices_the_training_step():
    # d = 200, width 64: the evaluation is cheaper in backward mode, but a recorded
    # step is cheaper in forward mode with the analytic weight gradient (measured on
    # W6, n = 1024, CPU time: 1.48 s forward against 2.34 s backward at d = 128,
    # 2.64 s against 2.52 s at d = 256), so auto picks forward when autograd records
    # the call; autograd over the generic (taped) forward sweep keeps backward. The
    # gradient is requested too: a Laplacian alone takes engine/highdim.py's Gram-root
    # route at d > width (tested in tests/test_highdim.py), in evaluations and steps
    rng = np.random.default_rng(8)
    dims = [(200, 64), (64, 64), (64, 64), (64, 64)]
    net = hq.NN(
        *[hq.SingleLayer(p, q, act="tanh", seed=i) for i, (p, q) in enumerate(dims)], hq.SingleLayer(64, 1)
    )
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((64, 200)))
    with torch.no_grad():
        assert net(x, laplacian=True, gradient=True).mode == "backward"
    r = net(x, laplacian=True, gradient=True)
    assert r.mode == "forward" and _uses_sweep(r.laplacian)
    before = analytic_weight_gradient(False)
    try:
        assert net(x, laplacian=True, gradient=True).mode == "backward"
    finally:
        analytic_weight_gradient(before)
    # at d = 2 forward mode wins either way; first-order steps with d >> m stay backward
    small = hq.FullyConnectedNN([2, 16, 1], act="tanh", seed=0)
    torch_parameters(small)
    assert small(x[:, :2], laplacian=True).mode == "forward"
    # and the Gram-root route is priced as a taped step: still chosen at d = 200 (measured
    # there: 1.29 s per step against 2.08 s analytic forward and 2.35 s backward, CPU time)
    r = net(x, laplacian=True)
    assert r.laplacian.grad_fn is not None and not _uses_sweep(r.laplacian)
    assert net(x, gradient=True).mode == "backward"
    assert params


def test_sweep_follows_the_planners_answer():
    """The planner asks ``training_kind`` once and keeps the answer on the call
    (``ctx.training``); the sweep follows it and does not decide again."""
    from dataclasses import replace

    from hessquik_core._array import resolve_call
    from hessquik_core.engine import plan

    rng = np.random.default_rng(8)
    x = torch.tensor(rng.standard_normal((4, 2)))
    net = hq.FullyConnectedNN([2, 5, 1], act="tanh", seed=0)
    torch_parameters(net)
    leaves = list(net._leaves())
    kw = dict(
        directions=None, backend=None, gradient=True, hessian=False, laplacian=True, hessian_diagonal=False
    )

    def run(mode, training=None):
        ctx = resolve_call(net, x, mode=mode, **kw)
        assert ctx.training is None
        ctx = plan._settle(leaves, ctx, x.shape[0])[2]
        if training is not None:
            ctx = replace(ctx, training=training)
        return ctx, plan._guarded(leaves, ctx)

    ctx, fwd = run("forward")
    assert ctx.training == "analytic" and _uses_sweep(fwd.laplacian)
    ctx, res = run("backward")
    assert ctx.training == "analytic" and not _uses_sweep(res.laplacian)  # forward only
    _, taped = run("forward", "taped")
    assert not _uses_sweep(taped.laplacian)
    torch.testing.assert_close(taped.laplacian, fwd.laplacian, rtol=1e-12, atol=0)
    torch.testing.assert_close(fwd.gradient, taped.gradient, rtol=1e-12, atol=0)
    with torch.no_grad():
        ctx, res = run("forward")
    assert ctx.training is None and res.laplacian.grad_fn is None
    before = analytic_weight_gradient(False)
    try:
        ctx, res = run("forward")
    finally:
        analytic_weight_gradient(before)
    assert ctx.training == "taped" and not _uses_sweep(res.laplacian)


def test_auto_mode_prices_first_order_steps():
    """A recorded value + gradient step prices the analytic forward sweep at
    ``TRAINING_FACTOR["analytic-first"]``: on the W6 gradient loss (width 64,
    scalar output) the taped backward step is faster at d = 1 and 2 (1.06-1.53x,
    cost.py), so auto picks backward there; a Laplacian step stays forward, and
    so does a first-order step with several outputs and one input."""
    rng = np.random.default_rng(9)
    for d in (1, 2):
        net = hq.FullyConnectedNN([d, 64, 64, 64, 64, 1], act="tanh", seed=d)
        torch_parameters(net)
        x = torch.tensor(rng.standard_normal((1024, d)))
        assert net(x, gradient=True).mode == "backward"
        r = net(x, laplacian=True)
        assert r.mode == "forward" and _uses_sweep(r.laplacian)
        with torch.no_grad():  # an evaluation is priced without the step factors
            assert net(x, gradient=True).mode == net.cost(1024, gradient=True).chosen
    wide = hq.FullyConnectedNN([1, 64, 64, 4], act="tanh", seed=0)
    torch_parameters(wide)
    r = wide(torch.tensor(rng.standard_normal((64, 1))), gradient=True)
    assert r.mode == "forward" and _uses_sweep(r.gradient)


# -- residual layers: f(u) = u + h σ(uK + b) declares affine structure with the identity path


def _residual_net(act, h, first_residual, rng):
    """A chain with residual layers inside (and, optionally, as the first layer: d == width)."""
    if first_residual:
        head = [hq.ResnetLayer(4, h=h, act=act, seed=rng)]
    else:
        head = [hq.SingleLayer(3, 4, act="tanh", seed=rng)]
    return hq.NN(
        *head,
        hq.ResnetLayer(4, h=h, act=act, seed=rng),
        hq.ResnetLayer(4, h=0.5, act="tanh", bias=False, seed=rng),
        hq.SingleLayer(4, 2, seed=rng),
    )


@pytest.mark.parametrize("act", ["tanh", "sin", "identity"])
@pytest.mark.parametrize("h", [1.0, 0.3])
@pytest.mark.parametrize("first_residual", [False, True])
@pytest.mark.parametrize("what", ["laplacian", "gradient", "both"])
def test_residual_matches_autograd_over_generic_sweep(act, h, first_residual, what):
    """Weight and input gradients of residual chains (ResnetLayer) through the analytic
    step equal autograd over the generic sweep to 1e-12 (float64), and the step is taken."""
    rng = np.random.default_rng(11)
    net = _residual_net(act, h, first_residual, rng)
    assert all(leaf.affine_structure().residual for leaf in list(net._leaves())[1:3])
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((7, net.in_features)), requires_grad=True)
    kw = {"laplacian": what != "gradient", "gradient": what != "laplacian"}
    got = _step(net, params, x, True, **kw)
    want = _step(net, params, x, False, **kw)
    assert got[2] and not want[2]  # the route is taken, and the reference is the taped sweep
    _close(got, want)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_resnet_nn_takes_the_step_and_the_planner_says_so():
    """ResnetNN (every leaf a ResnetLayer) is planned and run as the analytic step; its
    Laplacian agrees with an independent torch.func reference."""
    from torch.func import hessian, vmap

    rng = np.random.default_rng(12)
    net = hq.NN(hq.SingleLayer(2, 5, act="tanh", seed=0), hq.ResnetNN(5, 2, h=0.4, act="tanh", seed=1))
    net = hq.NN(*list(net._leaves()), hq.SingleLayer(5, 1, seed=2))
    assert net.cost(8, gradient=False, laplacian=True, training=True).training == "analytic"
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((8, 2)))
    r = net(x, laplacian=True, mode="forward")
    assert _uses_sweep(r.laplacian)
    K0, b0, K1, b1, K2, b2, K3, b3 = params

    def u(xi):
        h = torch.tanh(xi @ K0 + b0)
        h = h + 0.4 * torch.tanh(h @ K1 + b1)
        h = h + 0.4 * torch.tanh(h @ K2 + b2)
        return (h @ K3 + b3)[0]

    lap = vmap(lambda xi: torch.trace(hessian(u)(xi)))(x)[:, None]
    torch.testing.assert_close(r.laplacian, lap, rtol=1e-12, atol=1e-14)
    loss = (r.laplacian**2).sum()
    ref = torch.autograd.grad((lap**2).sum(), params, materialize_grads=True)
    for a, b in zip(torch.autograd.grad(loss, params, materialize_grads=True), ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("quantity", ["laplacian", "gradient"])
def test_residual_second_backward_is_exact(quantity):
    """create_graph=True through residual layers: the double backward equals the generic sweep's."""
    rng = np.random.default_rng(13)
    net = _residual_net("sin", 0.7, True, rng)
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    v = [torch.tensor(rng.standard_normal(p.shape)) for p in params]

    def penalty_grads():
        res = net(x, **{quantity: True}, mode="forward")
        out = res.laplacian if quantity == "laplacian" else res.gradient
        used = _uses_sweep(out)
        loss = (torch.sin(out) ** 2).mean()
        g = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
        pen = sum((gi**2).sum() for gi in g)
        hv = torch.autograd.grad(
            g, params + [x], v, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        full = torch.autograd.grad(pen, params + [x], allow_unused=True, materialize_grads=True)
        return used, [t.detach() for t in full] + [t.detach() for t in hv]

    used, analytic = penalty_grads()
    before = analytic_weight_gradient(False)
    try:
        unused, generic = penalty_grads()
    finally:
        analytic_weight_gradient(before)
    assert used and not unused
    for a, g in zip(analytic, generic):
        assert a.dtype == g.dtype == torch.float64 and a.shape == g.shape
        torch.testing.assert_close(a, g, rtol=1e-12, atol=1e-13)


def test_the_route_runs_the_backend_capability(monkeypatch):
    """The route hands the backend plain data (SweepLayer flags, arrays), never layers."""
    from hessquik_core.backends import get_backend
    from hessquik_core.backends.base import SweepLayer

    be = get_backend("torch")
    seen = []
    real = type(be).stacked_affine_sweep

    def spy(self, layers, laplacian, x, seed, weights):
        seen.append((tuple(layers), laplacian, len(weights)))
        return real(self, layers, laplacian, x, seed, weights)

    monkeypatch.setattr(type(be), "stacked_affine_sweep", spy)
    net = _residual_net("tanh", 0.3, False, np.random.default_rng(14))
    torch_parameters(net)
    x = torch.tensor(np.random.default_rng(15).standard_normal((3, 3)))
    net(x, laplacian=True, mode="forward").laplacian.sum().backward()
    ((layers, lap, nw),) = seen
    assert lap and nw == 8 and all(type(s) is SweepLayer for s in layers)
    assert [(s.scale, s.residual, s.linear) for s in layers] == [
        (1.0, False, False),
        (0.3, True, False),
        (0.5, True, False),
        (1.0, False, True),
    ]


# -- the GEMM provider of the stacked sweep (backends/_torch_gemm.py)


@pytest.fixture
def provider():
    """Set ``SWITCHES.gemm_provider`` for one test, restored afterwards."""
    before = SWITCHES.gemm_provider
    yield lambda value: setattr(SWITCHES, "gemm_provider", value)
    SWITCHES.gemm_provider = before


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("mode", ["host", "auto"])
def test_gemm_provider_gives_the_same_step(provider, monkeypatch, residual, mode):
    """Products through NumPy's BLAS (zero-copy views) give the step of torch's own
    products to rounding (1e-12, float64), weights and input; "host" really uses NumPy."""
    from hessquik_core.backends import _torch_gemm

    rng = np.random.default_rng(21)
    net = (
        _residual_net("tanh", 0.6, False, rng)
        if residual
        else hq.FullyConnectedNN([3, 8, 8, 2], act="tanh", seed=5)
    )
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((9, 3)), requires_grad=True)
    want = _step(net, params, x, True)
    provider(mode)
    calls = []
    real = np.matmul
    monkeypatch.setattr(_torch_gemm.np, "matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = _step(net, params, x, True)
    assert got[2] and want[2]
    _close(got, want)
    if mode == "host":
        assert len(calls) >= 2 * len(list(net._leaves()))  # forward and backward products
    else:
        assert _torch_gemm._DECIDED.get(torch.float64) in (True, False)  # measured once


def test_gemm_provider_float32_and_library_default(provider):
    assert SWITCHES.gemm_provider == "library"  # the default: torch's products, the numbers of before
    rng = np.random.default_rng(22)
    net = hq.FullyConnectedNN([3, 16, 1], act="tanh", seed=0)
    p32 = torch_parameters(net, dtype=torch.float32)
    x = torch.tensor(rng.standard_normal((32, 3)), dtype=torch.float32, requires_grad=True)
    want = _step(net, p32, x, True, dtype=torch.float32)
    provider("host")
    got = _step(net, p32, x, True, dtype=torch.float32)
    for u, v in zip(got[1], want[1]):
        assert u.dtype == torch.float32
        assert float((u - v).abs().max()) <= 1e-5 * float(v.abs().max())

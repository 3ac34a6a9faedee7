"""Orders 3 and 4 for every layer that declares affine structure: SIREN stacks and
Fourier features in front of dense and residual layers.

The per-point parameter Jacobians of Δ²u, ∂ᵏu[v,…,v] and ∂ᵏu/∂x_iᵏ
(``pinn/_streams_bh.py`` sweeps a layer by its ``Layer.affine_structure`` alone),
hence ``Problem`` / Gauss–Newton and the analytic weight gradient on torch, and
``net.cost`` for the call flags ``third_derivative`` / ``fourth_derivative``.

Reference: the network written out in torch on the flat parameter vector
(``torch_u``: ``sin(ω₀(uK + b))``, ``[sin, cos](2π uB)``, ``σ(uK + b)``,
``u + h σ(uK + b)``), its input derivatives by nested ``torch.func`` (``hessian`` of
the Laplacian for Δ²u, ``k`` nested ``jacrev`` of ``t ↦ u(x + t v)``), and ``jacrev``
over the parameters; for the analytic weight gradient also the taped path (switch off).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from layer_checks import on_graph  # noqa: E402

import hessquik_core as hq
from hessquik_core import pinn

torch = pytest.importorskip("torch")
from torch.func import jacrev, vmap  # noqa: E402

from hessquik_core.training import analytic_weight_gradient, torch_parameters  # noqa: E402

RTOL = 1e-12
V2 = np.array([[1.0, 0.3], [-0.5, 0.8]])


@pytest.fixture(autouse=True)
def _analytic_higher_order_on():
    """This module tests the AD-free order-3/4 weight gradient, an opt-in (slower than taping)."""
    from hessquik_core.training import analytic_higher_order_gradient

    before = analytic_higher_order_gradient(True)
    yield
    analytic_higher_order_gradient(before)


def nets() -> dict:
    return {
        "siren": hq.NN(
            hq.SirenLayer(2, 6, w0=3.0, is_first=True, seed=0),
            hq.SirenLayer(6, 5, w0=2.0, seed=1),
            hq.SirenLayer(5, 4, w0=1.5, bias=False, seed=2),
            hq.SingleLayer(4, 1, act="identity", seed=3),
        ),
        "fourier_mlp": hq.NN(
            hq.FourierFeatures(2, 3, scale=0.5, trainable=True, seed=0),
            hq.SingleLayer(6, 5, act="tanh", seed=1),
            hq.ResnetLayer(5, h=0.5, act="sin", seed=2),
            hq.SingleLayer(5, 1, act="identity", seed=3),
        ),
        "fourier_frozen": hq.NN(
            hq.FourierFeatures(2, 3, scale=0.5, seed=4),
            hq.SingleLayer(6, 4, act="tanh", seed=5),
            hq.SingleLayer(4, 1, act="identity", seed=6),
        ),
    }


_ACT = {"tanh": torch.tanh, "sin": torch.sin, "identity": lambda z: z}


def _t(a):
    """A float64 torch copy, detached, of a NumPy array or tensor (the parameters may be either)."""
    if isinstance(a, torch.Tensor):
        return a.detach().clone().to(torch.float64)
    return torch.tensor(np.asarray(a, dtype=np.float64))


def torch_u(net):
    """``u(theta, x) -> scalar`` for one point, written out layer by layer in torch."""
    layout = hq.curvature.parameter_layout(net)
    state = {k: _t(v) for k, v in net.state_dict().items()}
    leaves = list(net._leaves())

    def u(theta, x):
        P = {**state, **layout.unflatten(theta)}
        h = x
        for i, leaf in enumerate(leaves):
            p = {k.removeprefix(f"{i}."): v for k, v in P.items() if k.startswith(f"{i}.")}
            if isinstance(leaf, hq.SirenLayer):
                z = h @ p["K"] + (p["b"] if "b" in p else 0.0)
                h = torch.sin(leaf.w0 * z)
            elif isinstance(leaf, hq.FourierFeatures):
                z = 2.0 * math.pi * (h @ p["B"])
                h = torch.cat([torch.sin(z), torch.cos(z)])
            elif isinstance(leaf, hq.ResnetLayer):
                h = h + leaf.h * _ACT[leaf.act.name](h @ p["layer.K"] + p["layer.b"])
            else:
                h = _ACT[leaf.act.name](h @ p["K"] + p["b"])
        return h[0]

    return u


def _lap(u):
    return lambda th, x: torch.diagonal(jacrev(jacrev(u, argnums=1), argnums=1)(th, x)).sum()


def _directional(u, k):
    def g(th, x, v):
        f = lambda t: u(th, x + t * v)  # noqa: E731
        for _ in range(k):
            f = jacrev(f)
        return f(torch.zeros((), dtype=x.dtype))

    return g


def reference(net, x, quantity, V=None, order=None):
    """``(q (n, K), J (n, K, P))`` of the quantity by nested torch.func (``K = 1`` for Δ²u)."""
    u = torch_u(net)
    X = torch.tensor(x)
    theta = _t(hq.curvature.flatten_parameters(net))

    def q(th):
        if quantity == "biharmonic":
            return vmap(_lap(_lap(u)), in_dims=(None, 0))(th, X)[:, None]
        g = _directional(u, order)
        Vt = torch.tensor(V)
        return torch.stack([vmap(g, in_dims=(None, 0, None))(th, X, Vt[:, c]) for c in range(Vt.shape[1])], 1)

    return q(theta).numpy(), jacrev(q)(theta).numpy()


def to_np(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def rel(a, b):
    a, b = to_np(a), to_np(b)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


POINTS = np.random.default_rng(1).uniform(-0.5, 0.5, (5, 2))
#: quantity -> (pinn keywords, reference V, order)
QUANTITIES = {
    "biharmonic": ({}, None, None),
    "directional3": ({"directions": V2, "order": 3}, V2, 3),
    "directional4": ({"directions": V2, "order": 4}, V2, 4),
    "pure_partial4": ({"coords": [1], "order": 4}, np.eye(2)[:, [1]], 4),
}


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("what", sorted(QUANTITIES))
@pytest.mark.parametrize("name", sorted(nets()))
def test_jacobian_and_products_against_nested_ad(name, what, lib):
    net = nets()[name]
    kw, V, order = QUANTITIES[what]
    quantity = "directional" if what.startswith("directional") else what.rstrip("34")
    conv = torch.from_numpy if lib == "torch" else np.asarray
    kw = {k: conv(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    x = conv(POINTS)
    q_ref, J_ref = reference(net, POINTS, quantity, V, order)
    n, K, P = J_ref.shape
    assert P == hq.curvature.parameter_layout(net).size
    J = pinn.jacobian(net, x, quantity, **kw)
    assert isinstance(J, torch.Tensor if lib == "torch" else np.ndarray) and J.dtype == x.dtype
    assert tuple(J.shape) == ((n, 1, P) if quantity == "biharmonic" else (n, K, 1, P))
    assert rel(np.reshape(to_np(J), (n, K, P)), J_ref) <= RTOL
    Q, Js = pinn.quantities_and_jacobians(net, x, (quantity,), **kw)
    assert rel(np.reshape(to_np(getattr(Q, quantity)), (n, K)), q_ref) <= RTOL
    assert rel(np.reshape(to_np(Js[quantity]), (n, K, P)), J_ref) <= RTOL
    # the R-pass (the structure's tangent along v) and the adjoint sweep summed over the points
    rng = np.random.default_rng(2)
    v, w = rng.standard_normal(P), rng.standard_normal((n, K))
    shape = (n, 1) if quantity == "biharmonic" else (n, K, 1)
    Jv = pinn.jvp(net, x, quantity, conv(v), **kw)
    assert rel(np.reshape(to_np(Jv), (n, K)), J_ref @ v) <= RTOL
    Jtw = pinn.vjp(net, x, quantity, conv(np.reshape(w, shape)), **kw)
    assert rel(Jtw, np.einsum("nk,nkp->p", w, J_ref)) <= RTOL


def test_frozen_fourier_features_have_no_parameter_columns():
    net = nets()["fourier_frozen"]
    P = hq.curvature.parameter_layout(net).size
    assert P == 6 * 4 + 4 + 4 + 1  # the two dense layers only
    J = pinn.jacobian(net, POINTS, "biharmonic")
    assert J.shape == (5, 1, P)


def _kuramoto(q, x):  # u_t + u u_x + u_xx + u_xxxx along the second coordinate
    return q.gradient[:, 0] + q.value * q.gradient[:, 1] + q.hessian_diagonal[:, 1] + q.pure_partial[:, 0]


def _plate(q, x):
    return q.biharmonic - np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1])


@pytest.mark.parametrize("name", ["siren", "fourier_mlp"])
def test_problem_and_gauss_newton(name):
    """A fourth-order ``Problem`` on these networks: its Jacobian rows are the nested-AD ones,
    and Gauss–Newton lowers the loss of a plate problem."""
    net = nets()[name]
    xi, xb = POINTS, np.random.default_rng(3).uniform(0.0, 1.0, (4, 2))
    pr = pinn.Problem(
        net,
        [
            pinn.Residual(
                xi,
                _kuramoto,
                needs=("value", "gradient", "hessian_diagonal", "pure_partial"),
                coords=[1],
                order=4,
            ),
            pinn.Residual(xb, lambda q, x: q.value, needs=("value",), name="bnd"),
        ],
    )
    u = torch_u(net)
    theta = _t(hq.curvature.flatten_parameters(net))
    X = torch.tensor(xi)
    d4 = _directional(u, 4)
    e1 = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def r(th):
        val = vmap(u, in_dims=(None, 0))(th, X)
        g = vmap(jacrev(u, argnums=1), in_dims=(None, 0))(th, X)
        H = vmap(jacrev(jacrev(u, argnums=1), argnums=1), in_dims=(None, 0))(th, X)
        return g[:, 0] + val * g[:, 1] + H[:, 1, 1] + vmap(d4, in_dims=(None, 0, None))(th, X, e1)

    J = pr.jacobian()
    assert rel(J[: len(xi)], np.sqrt(1.0 / len(xi)) * jacrev(r)(theta).numpy()) <= RTOL
    plate = pinn.Problem(
        nets()[name],
        [
            pinn.Residual(xi, _plate, needs=("biharmonic",)),
            pinn.Residual(xb, lambda q, x: q.value, needs=("value",), name="bnd"),
        ],
    )
    l0 = plate.loss()
    recs = pinn.GaussNewton(plate, solver="dense").run(3, progress=False)
    assert all(rc.loss <= rc.loss_before for rc in recs) and recs[-1].loss < l0


def test_layers_without_the_rule_are_refused_by_name():
    first = hq.ICNNLayer(2, None, 4, seed=0)
    icnn = hq.NN(first, hq.SingleLayer(first.out_features, 1, act="identity", seed=1))
    with pytest.raises(ValueError, match=r"layer 0 \(ICNNLayer\) is not supported .*affine structure.*SIREN"):
        pinn.jacobian(icnn, POINTS, "biharmonic")
    with pytest.raises(ValueError, match=r"layer 0 \(ICNNLayer\) is not supported"):
        pinn.jacobian(icnn, POINTS, "pure_partial", coords=[0], order=3)
    soft = hq.NN(hq.FourierFeatures(2, 3, seed=0), hq.SingleLayer(6, 1, act="softplus", seed=1))
    with pytest.raises(ValueError, match=r"layer 1 \(SingleLayer\) uses .*fifth derivative"):
        pinn.jacobian(soft, POINTS, "biharmonic")


# --------------------------------------------------------------------------
# the analytic weight gradient on torch
# --------------------------------------------------------------------------


def _losses(net, x):
    """Losses through Δ²u, the Taylor functions and the call flags, with their function names."""
    Vt = torch.from_numpy(V2)
    r = net(x, biharmonic=True, laplacian=True, gradient=True)
    yield "_BiharmonicBackward", r.biharmonic, (r.biharmonic**2).mean() + (r.laplacian * r.value).sum()
    D = hq.taylor_derivatives(net, x, Vt, 4)
    pp = hq.pure_partials(net, x, [1], 3)
    yield "_TaylorBackward", D[-1], (D[-1] ** 2).mean() + D[2].sum() + (pp**2).sum() + (D[0] * D[1]).sum()
    f = net(x, third_derivative=True, fourth_derivative=True, directions=Vt)
    loss = (f.fourth_derivative**2).mean() + f.third_derivative.sum() + f.value.sum()
    yield "_TaylorRouteBackward", f.fourth_derivative, loss


def _grads(net, params, x, analytic):
    before = analytic_weight_gradient(analytic)
    try:
        out = []
        for fn, a, loss in _losses(net, x):
            g = torch.autograd.grad(loss, params, materialize_grads=True)
            out.append((on_graph(a, fn), float(loss.detach()), g))
        return out
    finally:
        analytic_weight_gradient(before)


@pytest.mark.parametrize("name", sorted(nets()))
def test_analytic_weight_gradient_equals_taped(name):
    net = nets()[name]
    params = torch_parameters(net)
    x = torch.from_numpy(POINTS)
    for (used_a, la, ga), (used_t, lt, gt) in zip(
        _grads(net, params, x, True), _grads(net, params, x, False)
    ):
        assert used_a and not used_t  # the analytic function is the route taken, only with the switch on
        assert la == pytest.approx(lt, rel=1e-14)
        for a, b in zip(ga, gt):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert float((a - b).abs().max()) <= RTOL * float(b.abs().max())
    for kw in ({"biharmonic": True}, {"fourth_derivative": True, "num_directions": 2}):
        assert (
            net.cost(5, gradient=False if "biharmonic" in kw else None, training=True, **kw).training
            == "analytic"
        )


def test_analytic_weight_gradient_against_nested_ad():
    """∇_θ mean((Δ²u)²) of the SIREN stack by torch.func (hessian of the Laplacian, nested jacrev)."""
    net = nets()["siren"]
    params = torch_parameters(net)
    x = torch.from_numpy(POINTS)
    before = analytic_weight_gradient(True)
    try:
        B = net(x, biharmonic=True).biharmonic
        assert on_graph(B, "_BiharmonicBackward")
        g = torch.autograd.grad((B**2).mean(), params, materialize_grads=True)
    finally:
        analytic_weight_gradient(before)
    u = torch_u(net)
    theta = _t(hq.curvature.flatten_parameters(net))
    ref = torch.func.grad(lambda th: (vmap(_lap(_lap(u)), in_dims=(None, 0))(th, x) ** 2).mean())(theta)
    refs = hq.curvature.parameter_layout(net).unflatten(ref)
    keys = [k for k, _ in net.named_parameters()]
    assert rel(torch.cat([a.reshape(-1) for a in g]), torch.cat([refs[k].reshape(-1) for k in keys])) <= RTOL


# --------------------------------------------------------------------------
# net.cost for the call flags third_derivative / fourth_derivative
# --------------------------------------------------------------------------


def test_cost_names_the_taylor_route():
    net = hq.FullyConnectedNN([3, 8, 8, 1], act="tanh", output_act=None, seed=0)
    shapes = [s for leaf in net._leaves() for s in leaf.cost_shapes]
    c = net.cost(100, third_derivative=True, num_directions=2)
    assert c.route == "forward/taylor"
    assert "third_derivative" in c.request and "gradient" not in c.request
    assert any("Taylor sweep of order 3: 3k + 1 = 7 streams" in note for note in c.notes)
    assert c.result_fields == "value (100, 1), third_derivative (100, 2, 1)"
    # flops of the stated model: 2 n p q S per weight matrix, S = K k + 1
    assert c.planned.flops == sum(2.0 * 100 * p * q * 7 for p, q in shapes)
    c4 = net.cost(100, third_derivative=True, fourth_derivative=True, num_directions=3)
    assert c4.route == "forward/taylor" and "fourth_derivative (100, 3, 1)" in c4.result_fields
    assert c4.planned.flops == sum(2.0 * 100 * p * q * 13 for p, q in shapes)
    assert c4.fits and c4.result_bytes == 100 * (1 + 2 * 3) * 8
    assert net.cost(100, fourth_derivative=True, num_directions=1, training=True).training == "analytic"
    soft = hq.FullyConnectedNN([3, 8, 1], act="softplus", output_act=None, seed=0)
    assert soft.cost(100, fourth_derivative=True, num_directions=1, training=True).training == "taped"
    # the request without the flags takes another route
    assert net.cost(100, gradient=False).route != "forward/taylor"


def test_cost_refuses_what_the_call_refuses():
    net = hq.FullyConnectedNN([3, 8, 1], act="tanh", output_act=None, seed=0)
    with pytest.raises(ValueError, match=r"third_derivative=True .* num_directions=k"):
        net.cost(100, third_derivative=True)
    with pytest.raises(ValueError, match=r"num_directions=k"):
        net.cost(100, fourth_derivative=True, num_directions=0)
    with pytest.raises(ValueError, match=r"not with gradient"):
        net.cost(100, third_derivative=True, num_directions=2, gradient=True)
    with pytest.raises(ValueError, match=r"not with laplacian"):
        net.cost(100, third_derivative=True, num_directions=2, laplacian=True)
    with pytest.raises(ValueError, match=r"mode must be 'auto' or 'forward'"):
        net.cost(100, third_derivative=True, num_directions=2, mode="backward")
    low = hq.FullyConnectedNN([3, 4, 1], act="softplus", output_act=None, seed=0)
    assert low.cost(10, fourth_derivative=True, num_directions=1).route == "forward/taylor"


# --------------------------------------------------------------------------
# the SIREN layer's second-order stream passes, the generic backend, float32
# --------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("quantity", ["value", "gradient", "laplacian", "hessian_diagonal"])
def test_siren_second_order_jacobians_against_nested_ad(quantity, lib):
    """``SirenLayer.stream_forward / stream_vjp / stream_rop``: J, Jv and Jᵀw of the quantities a
    ``Residual`` of order ≤ 2 reads, against ``jacrev`` of nested AD."""
    net = nets()["siren"]
    u = torch_u(net)
    X = torch.tensor(POINTS)
    theta = _t(hq.curvature.flatten_parameters(net))
    hess = jacrev(jacrev(u, argnums=1), argnums=1)

    def q(th):  # (n, c): c = 1 or d
        if quantity == "value":
            return vmap(u, in_dims=(None, 0))(th, X)[:, None]
        if quantity == "gradient":
            return vmap(jacrev(u, argnums=1), in_dims=(None, 0))(th, X)
        H = vmap(hess, in_dims=(None, 0))(th, X)
        diag = torch.diagonal(H, dim1=1, dim2=2)
        return diag.sum(1, keepdim=True) if quantity == "laplacian" else diag

    J_ref = jacrev(q)(theta).numpy()
    n, c, P = J_ref.shape
    conv = torch.from_numpy if lib == "torch" else np.asarray
    x = conv(POINTS)
    J = pinn.jacobian(net, x, quantity)
    assert isinstance(J, torch.Tensor if lib == "torch" else np.ndarray)
    assert rel(np.reshape(to_np(J), (n, c, P)), J_ref) <= RTOL
    rng = np.random.default_rng(4)
    v, w = rng.standard_normal(P), rng.standard_normal((n, c))
    assert rel(np.reshape(to_np(pinn.jvp(net, x, quantity, conv(v))), (n, c)), J_ref @ v) <= RTOL
    shape = (n, c, 1) if c > 1 else (n, 1)
    Jtw = pinn.vjp(net, x, quantity, conv(np.reshape(w, shape)))
    assert rel(Jtw, np.einsum("nc,ncp->p", w, J_ref)) <= RTOL
    with pytest.raises(ValueError, match=r"layer 0 \(SirenLayer\) has no Kronecker-factored curvature"):
        pinn.kfac_factors(net, POINTS, "laplacian")


def test_array_api_strict_and_float32():
    """The generic backend gives NumPy's numbers; float32 agrees with float64 to its precision."""
    xs = pytest.importorskip("array_api_strict")
    for name in ("siren", "fourier_mlp"):
        net = nets()[name]
        for quantity, kw in (("biharmonic", {}), ("pure_partial", {"coords": [0, 1], "order": 4})):
            J = pinn.jacobian(net, POINTS, quantity, **kw)
            Js = pinn.jacobian(net, xs.asarray(POINTS), quantity, **kw)
            assert type(Js).__module__.startswith("array_api_strict") and Js.shape == J.shape
            assert rel(np.asarray(Js), J) <= 1e-14
            J32 = pinn.jacobian(net, POINTS.astype(np.float32), quantity, **kw)
            assert J32.dtype == np.float32 and rel(J32, J) <= 1e-5


def test_double_backward_through_the_analytic_function_is_exact():
    """A penalty on the weight gradient (``create_graph=True``) of a Fourier-feature network."""
    net = nets()["fourier_mlp"]
    params = torch_parameters(net)
    x = torch.from_numpy(POINTS)
    out = []
    for analytic in (True, False):
        before = analytic_weight_gradient(analytic)
        try:
            B = net(x, biharmonic=True).biharmonic
            assert on_graph(B, "_BiharmonicBackward") is analytic
            g = torch.autograd.grad((B**2).mean(), params, create_graph=True, materialize_grads=True)
            pen = sum((gi**2).sum() for gi in g)
            out.append(torch.autograd.grad(pen, params, materialize_grads=True))
        finally:
            analytic_weight_gradient(before)
    for a, b in zip(*out):
        assert float((a - b).abs().max()) <= RTOL * float(b.abs().max())

"""hq.pinn loss-Hessian operator: exact products (forward-over-adjoint of the stream sweep).

Reference: the network as a functional torch model on the flat parameter vector
(ParameterLayout order), its quantities by nested autograd, the residual ``fn``
applied to them, and the loss Hessian by ``jacrev(jacrev(loss))`` — independent of
the stream recurrences, of the complex step and of the Cauchy formula.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import pinn

torch = pytest.importorskip("torch")
import array_api_compat.torch as ctorch  # noqa: E402
from torch.func import jacrev, vmap  # noqa: E402

RTOL = 1e-12
PI = np.pi


# --------------------------------------------------------------------------
# networks and the nested-autograd reference
# --------------------------------------------------------------------------


def dense_net(m=1, seed=0):
    return hq.NN(
        hq.SingleLayer(2, 5, act="tanh", seed=seed),
        hq.SingleLayer(5, 4, act="sin", seed=seed + 1),
        hq.SingleLayer(4, m, seed=seed + 2),
    )


def resnet_net(seed=0):
    return hq.NN(
        hq.SingleLayer(2, 4, act="sin", seed=seed),
        hq.ResnetLayer(4, h=0.7, act="tanh", seed=seed + 1),
        hq.ResnetLayer(4, h=0.3, act="sigmoid", bias=False, seed=seed + 2),
        hq.SingleLayer(4, 1, act="tanh", bias=False, seed=seed + 3),
    )


NETS = {"dense": dense_net, "resnet": resnet_net}


def torch_u(net):
    """``u(theta, x) -> (m,)`` for one point (dense and residual layers)."""
    layout = hq.curvature.parameter_layout(net)
    leaves, slots, j = list(net._leaves()), [], 0
    for leaf in leaves:
        slots.append([(leaf.local_param_name(k), (j := j + 1) - 1) for k, _ in leaf.named_parameters()])

    def u(theta, x):
        h = x
        for leaf, s in zip(leaves, slots):
            P = {
                n: theta[layout.offsets[i] : layout.offsets[i] + layout.sizes[i]].reshape(layout.shapes[i])
                for n, i in s
            }
            z = h @ P["K"] + (P["b"] if "b" in P else 0.0)
            a = leaf.act.derivatives(z, 0, xp=ctorch)[0]
            h = h + leaf.h * a if type(leaf).__name__ == "ResnetLayer" else a
        return h

    return u


class _Q:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def torch_loss(pr, net):
    """``L(theta)`` of ``pr`` by nested autograd, and ``theta`` (float64 torch)."""
    u = torch_u(net)
    m = int(net.out_features)
    sq = (lambda a: a[..., 0]) if m == 1 else (lambda a: a)
    terms = []
    for t in pr.terms:
        X = torch.tensor(to_np(t.points))
        S = None if t.weights is None else torch.tensor(to_np(t.weights))
        terms.append((t, X, S))

    def loss(th):
        total = 0.0
        for t, X, S in terms:
            q = {}
            if "value" in t.needs:
                q["value"] = sq(vmap(u, in_dims=(None, 0))(th, X))
            if "gradient" in t.needs:  # (n, m, d) -> (n, d, m)
                q["gradient"] = sq(vmap(jacrev(u, argnums=1), in_dims=(None, 0))(th, X).transpose(1, 2))
            if {"laplacian", "hessian_diagonal", "weighted_laplacian"} & set(t.needs):
                H = vmap(jacrev(jacrev(u, argnums=1), argnums=1), in_dims=(None, 0))(th, X)  # (n, m, d, d)
                D = torch.diagonal(H, dim1=2, dim2=3)  # (n, m, d)
                q["laplacian"] = sq(D.sum(-1))
                q["hessian_diagonal"] = sq(D.transpose(1, 2))
                if S is not None:
                    q["weighted_laplacian"] = sq(torch.einsum("ir,nmij,jr->nm", S, H, S))
            r = t.fn(_Q(**q), X)
            total = total + 0.5 * t.weight * (r**2).mean()
        return total

    return loss, torch.tensor(to_np(pr.parameters()))


def reference_hessian(pr, net):
    loss, theta = torch_loss(pr, net)
    return jacrev(jacrev(loss))(theta).numpy()  # reverse over reverse (forward AD warns)


def to_np(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def rel(a, b):
    a, b = to_np(a), to_np(b)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# --------------------------------------------------------------------------
# residuals (written once for NumPy and torch)
# --------------------------------------------------------------------------


def _xp(x):
    return np if isinstance(x, np.ndarray) else torch


def poisson(q, x):
    xp = _xp(x)
    return -q.laplacian - 2 * PI**2 * xp.sin(PI * x[:, 0]) * xp.sin(PI * x[:, 1])


def allen_cahn(q, x):
    u = q.value
    return q.laplacian + u - u**3


def burgers(q, x):
    u = q.value
    return q.gradient[:, 1] + u * q.gradient[:, 0] - 0.05 * q.hessian_diagonal[:, 0]


def eikonal(q, x):
    return q.gradient[:, 0] ** 2 + q.gradient[:, 1] ** 2 - 1.0


def diffusion(q, x):
    return 0.5 * q.weighted_laplacian + q.value - q.value**3


def sine_gordon(q, x):  # non-polynomial in u: the Cauchy formula's aliasing is below rounding
    xp = _xp(x)
    return q.laplacian - xp.sin(q.value)


def boundary(q, x):
    return q.value - 0.3 * x[:, 0]


S_DIFF = np.array([[0.8, 0.1, -0.3], [0.2, 0.5, 0.4]])

CASES = {
    "poisson": (poisson, ("laplacian",)),
    "allen_cahn": (allen_cahn, ("value", "laplacian")),
    "burgers": (burgers, ("value", "gradient", "hessian_diagonal")),
    "eikonal": (eikonal, ("gradient",)),
    "diffusion": (diffusion, ("value", "weighted_laplacian")),
    "sine_gordon": (sine_gordon, ("value", "laplacian")),
}


def make_problem(net, case="allen_cahn", lib="numpy", n=5, nb=3):
    fn, needs = CASES[case]
    rng = np.random.default_rng(1)
    xi, xb = rng.uniform(0, 1, (n, 2)), rng.uniform(0, 1, (nb, 2))
    S = S_DIFF if case == "diffusion" else None
    conv = torch.from_numpy if lib == "torch" else np.asarray
    return pinn.Problem(
        net,
        [
            pinn.Residual(conv(xi), fn, needs, name="interior", weights=None if S is None else conv(S)),
            pinn.Residual(conv(xb), boundary, ("value",), weight=3.0, name="boundary"),
        ],
    )


# --------------------------------------------------------------------------
# exactness against nested autograd
# --------------------------------------------------------------------------


@pytest.mark.parametrize("netname", ["dense", "resnet"])
@pytest.mark.parametrize("case", list(CASES))
def test_exact_hessian_against_torch_func(case, netname):
    net = NETS[netname]()
    pr = make_problem(net, case)
    op = pr.hessian_operator()
    assert op.method == "exact" and op.shape == (pr.P, pr.P)
    H = op.to_dense()
    assert isinstance(H, np.ndarray) and H.dtype == np.float64 and H.shape == (pr.P, pr.P)
    Href = reference_hessian(pr, net)
    assert rel(H, Href) <= RTOL
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-13 * np.abs(H).max())


@pytest.mark.parametrize("netname", ["dense", "resnet"])
@pytest.mark.parametrize("case", ["poisson", "allen_cahn", "burgers", "diffusion"])
def test_exact_hessian_torch(case, netname):
    net = NETS[netname]()
    pr = make_problem(net, case, "torch")
    op = pr.hessian_operator()
    H = op.to_dense()
    assert isinstance(H, torch.Tensor) and H.dtype == torch.float64 and tuple(H.shape) == (pr.P, pr.P)
    assert rel(H, reference_hessian(pr, net)) <= RTOL


def test_vector_output():
    """``m = 2``: a residual coupling both outputs, nonlinearly."""
    net = dense_net(m=2, seed=3)

    def fn(q, x):
        return q.laplacian[:, 0] - q.value[:, 1] ** 2 + q.gradient[:, 0, 1] * q.value[:, 0]

    x = np.random.default_rng(2).uniform(0, 1, (4, 2))
    for conv in (np.asarray, torch.from_numpy):
        pr = pinn.Problem(net, [pinn.Residual(conv(x), fn, ("value", "gradient", "laplacian"))])
        assert rel(pr.hessian_operator().to_dense(), reference_hessian(pr, net)) <= RTOL


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------


@pytest.mark.parametrize("netname", ["dense", "resnet"])
def test_symmetry_and_block_products(netname):
    pr = make_problem(NETS[netname](), "burgers")
    op = pr.hessian_operator()
    rng = np.random.default_rng(5)
    v, w = rng.standard_normal(pr.P), rng.standard_normal(pr.P)
    a, b = float(w @ (op @ v)), float(v @ (op @ w))
    assert abs(a - b) <= 1e-13 * (abs(a) + abs(b))
    V = rng.standard_normal((pr.P, 3))
    V0 = V.copy()
    HV = op @ V
    assert HV.shape == (pr.P, 3)
    np.testing.assert_array_equal(V, V0)  # the caller's array is untouched
    for j in range(3):
        np.testing.assert_allclose(HV[:, j], op @ V[:, j], rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(op @ np.zeros(pr.P), np.zeros(pr.P))


@pytest.mark.parametrize("netname", ["dense", "resnet"])
def test_taylor_rate_of_the_gradient(netname):
    """``‖∇L(θ + εv) − ∇L(θ) − εHv‖ = O(ε²)``: halving ε quarters the remainder."""
    pr = make_problem(NETS[netname](), "allen_cahn")
    theta = pr.parameters()
    v = np.random.default_rng(7).standard_normal(pr.P)
    g0, Hv, Gv = pr.gradient(), pr.hessian_operator() @ v, pr.ggn_operator() @ v
    errs, errs_ggn = [], []
    for eps in (1e-2, 5e-3, 2.5e-3, 1.25e-3):
        pr.set_parameters(theta + eps * v)
        g = pr.gradient()
        errs.append(np.linalg.norm(g - g0 - eps * Hv))
        errs_ggn.append(np.linalg.norm(g - g0 - eps * Gv))
    pr.set_parameters(theta)
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(rates - 2.0) < 0.1), rates
    # the test can fail: the Gauss–Newton matrix in its place gives first order only
    rates_ggn = np.log2(np.array(errs_ggn[:-1]) / np.array(errs_ggn[1:]))
    assert np.all(np.abs(rates_ggn - 1.0) < 0.1), rates_ggn


@pytest.mark.parametrize("case", ["poisson", "allen_cahn"])
def test_hessian_minus_ggn_is_the_residual_term(case):
    """``∇²L − JᵀJ = Σ ρ_i ∇²ρ_i``: the ``part="residual"`` operator, nonzero off a solution."""
    net = resnet_net(seed=4)
    pr = make_problem(net, case)
    H = pr.hessian_operator().to_dense()
    G = pr.ggn_operator().to_dense()
    R = pinn.LossHessianOperator(pr, part="residual").to_dense()
    np.testing.assert_allclose(H - G, R, rtol=0, atol=1e-13 * np.abs(H).max())
    Rref = reference_hessian(pr, net) - G
    assert rel(R, Rref) <= 1e-11  # a difference of two O(1) matrices: its own rounding
    assert np.linalg.norm(R) > 1e-2 * np.linalg.norm(H)  # the second term is there


def test_central_differences_on_request_and_reported():
    pr = make_problem(dense_net(), "allen_cahn")
    fd = pr.hessian_operator(exact=False)
    assert fd.method == "central_differences"
    H, Hfd = pr.hessian_operator(exact=True).to_dense(), fd.to_dense()
    assert 1e-13 < rel(Hfd, H) <= 1e-7  # the approximation is what it says it is
    assert "exact" in repr(pr.hessian_operator())


def test_operator_at_its_parameters_and_tools():
    pr = make_problem(dense_net(), "allen_cahn")
    op = pr.hessian_operator()
    H = op.to_dense()
    theta = pr.parameters()
    pr.set_parameters(theta * 1.1)
    np.testing.assert_allclose(op.to_dense(), H, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(pr.parameters(), theta * 1.1)  # restored after each product
    pr.set_parameters(theta)
    vals, _ = hq.curvature.top_eigenpairs(op, 2, seed=0, progress=False)  # algebraically largest
    np.testing.assert_allclose(to_np(vals), np.linalg.eigvalsh(H)[::-1][:2], rtol=1e-8)
    # the Hessian is indefinite off a solution (the Gauss–Newton matrix is not)
    assert np.linalg.eigvalsh(H)[0] < 0


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_float32(lib):
    net = dense_net()
    H64 = to_np(make_problem(net, "allen_cahn", lib).hessian_operator().to_dense())
    rng = np.random.default_rng(1)
    conv = torch.from_numpy if lib == "torch" else np.asarray
    xi, xb = (conv(rng.uniform(0, 1, s).astype(np.float32)) for s in ((5, 2), (3, 2)))
    terms = [pinn.Residual(xi, allen_cahn, ("value", "laplacian")), pinn.Residual(xb, boundary, weight=3.0)]
    H32 = pinn.Problem(net, terms).hessian_operator().to_dense()
    assert type(H32) is type(xi) and H32.dtype == xi.dtype and tuple(H32.shape) == H64.shape
    assert rel(to_np(H32).astype(np.float64), H64) < 1e-4


# --------------------------------------------------------------------------
# refusals: never silently approximate
# --------------------------------------------------------------------------


def test_unsupported_layer_refused_unless_central_differences():
    net = hq.NN(hq.SingleLayer(2, 4, act="tanh", seed=0), hq.LayerNorm(4), hq.SingleLayer(4, 1, seed=1))
    pr = make_problem(net, "allen_cahn")
    with pytest.raises(ValueError, match=r"LayerNorm.*exact=False"):
        pr.hessian_operator()
    with pytest.raises(ValueError, match="LayerNorm"):
        pr.hessian_operator(exact=True)
    assert pr.hessian_operator(exact=False).method == "central_differences"


def test_activation_order_refused():
    class _Tanh3(hq.Tanh):
        max_order = 3

    net = hq.NN(hq.SingleLayer(2, 3, act=_Tanh3(), seed=0), hq.SingleLayer(3, 1, seed=1))
    with pytest.raises(ValueError, match="order 4"):
        make_problem(net, "poisson").hessian_operator()


def test_bad_arguments():
    pr = make_problem(dense_net(), "poisson")
    with pytest.raises(ValueError, match="eps"):
        pr.hessian_operator(eps=1e-4)
    with pytest.raises(TypeError, match="exact"):
        pr.hessian_operator(exact="yes")
    with pytest.raises(ValueError, match="part"):
        pinn.LossHessianOperator(pr, part="ggn")
    with pytest.raises(ValueError, match="exact"):
        pinn.LossHessianOperator(pr, exact=False, part="residual")


def test_cauchy_formula_checked_not_silent():
    """A residual with a pole 0.05 from each point's value (inside the Cauchy circle): refused on NumPy."""
    net = dense_net()
    xi = np.random.default_rng(3).uniform(0, 1, (4, 2))
    u0 = np.asarray(net(xi).value)[:, 0]

    def near_pole(q, x):
        return q.laplacian + 1.0 / (q.value - (u0 + 0.05))

    pr = pinn.Problem(net, [pinn.Residual(xi, near_pole, ("value", "laplacian"))])
    op = pr.hessian_operator()
    with pytest.raises(ValueError, match="Cauchy.*exact=False"):
        op @ np.ones(pr.P)
    # torch differentiates fn itself: exact there
    prt = pinn.Problem(net, [pinn.Residual(torch.from_numpy(xi), near_pole_t(u0), ("value", "laplacian"))])
    assert rel(prt.hessian_operator().to_dense(), reference_hessian(prt, net)) <= RTOL


def near_pole_t(u0):
    u0t = torch.from_numpy(u0)

    def fn(q, x):
        return q.laplacian + 1.0 / (q.value - (u0t + 0.05))

    return fn


def test_array_api_strict_namespace():
    xs = pytest.importorskip("array_api_strict")
    net = resnet_net()
    x = np.random.default_rng(4).uniform(0, 1, (4, 2))
    pn = pinn.Problem(net, [pinn.Residual(x, burgers, CASES["burgers"][1])])
    ps = pinn.Problem(net, [pinn.Residual(xs.asarray(x), burgers, CASES["burgers"][1])])
    v = np.random.default_rng(0).standard_normal(pn.P)
    Hv = ps.hessian_operator() @ xs.asarray(v)
    assert type(Hv).__module__.startswith("array_api_strict") and Hv.shape == (pn.P,)
    assert rel(np.asarray(Hv), pn.hessian_operator() @ v) <= 1e-14


@pytest.mark.parametrize("netname", ["dense", "resnet"])
def test_value_residual_is_curvature_mse_hessian(netname):
    """A value-only residual ``u − y`` is half-MSE regression: the same Hessian as hq.curvature's
    exact output-loss products (``param_rop_backward``, an independent code path)."""
    net = NETS[netname]()
    x = np.random.default_rng(6).uniform(0, 1, (7, 2))
    y = np.sin(3 * x[:, :1]) * x[:, 1:]
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.value - np.sin(3 * x[:, 0]) * x[:, 1])])
    H = pr.hessian_operator().to_dense()
    Hc = hq.curvature.hessian_operator(net, x, y, "mse").to_dense()
    assert rel(H, Hc) <= 1e-13


def test_unsupported_quantity_named():
    from hessquik_core.pinn._second_order import unsupported

    assert unsupported(dense_net(), ("value", "laplacian")) is None
    assert "biharmonic" in unsupported(dense_net(), ("value", "biharmonic"))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ACTS = ("tanh", "sin", "sigmoid", "softplus", "gelu", "antitanh")


@st.composite
def architectures(draw):
    w = draw(st.integers(2, 4))
    act = lambda: draw(st.sampled_from(ACTS))  # noqa: E731
    layers = [hq.SingleLayer(2, w, act=act(), seed=draw(st.integers(0, 99)))]
    for _ in range(draw(st.integers(0, 2))):
        seed, bias = draw(st.integers(0, 99)), draw(st.booleans())
        if draw(st.booleans()):
            h = draw(st.sampled_from([0.3, 0.8]))
            layers.append(hq.ResnetLayer(w, h=h, act=act(), bias=bias, seed=seed))
        else:
            layers.append(hq.SingleLayer(w, w, act=act(), bias=bias, seed=seed))
    last = draw(st.sampled_from(("identity", *ACTS)))
    layers.append(hq.SingleLayer(w, 1, act=last, seed=draw(st.integers(0, 99))))
    return hq.NN(*layers), draw(st.sampled_from(sorted(CASES)))


@settings(max_examples=8, deadline=None)
@given(architectures())
def test_random_architectures(arch):
    """One product ``Hv`` against reverse-over-reverse of the nested-AD loss."""
    net, case = arch
    pr = make_problem(net, case, n=3, nb=2)
    v = np.random.default_rng(0).standard_normal(pr.P)
    loss, theta = torch_loss(pr, net)
    vt = torch.from_numpy(v)
    ref = torch.func.grad(lambda th: torch.dot(torch.func.grad(loss)(th), vt))(theta).numpy()
    assert rel(pr.hessian_operator() @ v, ref) <= RTOL


@pytest.mark.parametrize("netname", ["dense", "resnet"])
def test_residual_term_vanishes_at_a_solution(netname):
    """With the source taken from the network itself (``r = 0``), ``∇²L = JᵀJ``."""
    net = NETS[netname]()
    x = np.random.default_rng(8).uniform(0, 1, (5, 2))
    res = net(x, laplacian=True)
    u0, lap0 = np.asarray(res.value)[:, 0], np.asarray(res.laplacian)[:, 0]
    g = lap0 + u0 - u0**3

    def fn(q, x):
        return q.laplacian + q.value - q.value**3 - g

    pr = pinn.Problem(net, [pinn.Residual(x, fn, ("value", "laplacian"))])
    assert np.abs(pr.residuals()["term0"]).max() < 1e-13
    R = pinn.LossHessianOperator(pr, part="residual").to_dense()
    G = pr.ggn_operator().to_dense()
    assert np.linalg.norm(R) <= 1e-12 * np.linalg.norm(G)
    assert rel(pr.hessian_operator().to_dense(), G) <= 1e-12

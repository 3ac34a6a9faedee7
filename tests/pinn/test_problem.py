"""hq.pinn.Problem / Residual: residuals, loss, Jacobian, Gramian, kernel, curvature operators.

Reference: the network rewritten as a functional torch model on the flat
parameter vector, its quantities by nested autograd (``torch.func``), the
residual ``fn`` applied to them, and ``jacrev`` over the parameters of the
whole residual, independent of the AD-free sweeps and of the complex step.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import pinn

torch = pytest.importorskip("torch")
from torch.func import jacrev, vmap  # noqa: E402

RTOL = 1e-12
PI = np.pi


def make_net(widths=(2, 5, 4, 1), seed=0):
    return hq.FullyConnectedNN(list(widths), act="tanh", output_act=None, seed=seed)


def torch_u(net):
    """``u(theta, x) -> scalar`` for one point of a tanh MLP with linear read-out."""
    layout = hq.curvature.parameter_layout(net)
    n_layers = len(list(net._leaves()))

    def u(theta, x):
        P = layout.unflatten(theta)
        h = x
        for i in range(n_layers):
            z = h @ P[f"{i}.K"] + P[f"{i}.b"]
            h = torch.tanh(z) if i < n_layers - 1 else z
        return h[0]

    return u


class _Q:
    """Stand-in for the quantities object in the reference."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def torch_residual(net, x, fn, needs, S=None):
    """``r(theta) (n,)`` by nested autograd, and ``theta``."""
    u = torch_u(net)
    X = torch.tensor(np.asarray(x, dtype=np.float64))
    theta = torch.tensor(np.asarray(hq.curvature.flatten_parameters(net), dtype=np.float64))

    def r(th):
        q = {}
        if "value" in needs:
            q["value"] = vmap(u, in_dims=(None, 0))(th, X)
        if "gradient" in needs:
            q["gradient"] = vmap(jacrev(u, argnums=1), in_dims=(None, 0))(th, X)
        H = (
            vmap(jacrev(jacrev(u, argnums=1), argnums=1), in_dims=(None, 0))(th, X)
            if ("laplacian" in needs or "hessian_diagonal" in needs)
            else None
        )
        if "weighted_laplacian" in needs:
            Ht = vmap(jacrev(jacrev(u, argnums=1), argnums=1), in_dims=(None, 0))(th, X)
            St = torch.tensor(S)
            q["weighted_laplacian"] = torch.einsum("ij,nik,kj->n", St, Ht, St)
        if "laplacian" in needs:
            q["laplacian"] = torch.diagonal(H, dim1=1, dim2=2).sum(-1)
        if "hessian_diagonal" in needs:
            q["hessian_diagonal"] = torch.diagonal(H, dim1=1, dim2=2)
        return fn(_Q(**q), X)

    return r, theta


def f_poisson(x, xp=np):
    return 2 * PI**2 * xp.sin(PI * x[:, 0]) * xp.sin(PI * x[:, 1])


# residual functions written once for NumPy and torch (they only use operators and sin)
def poisson(q, x):
    xp = np if isinstance(x, np.ndarray) else torch
    return -q.laplacian - f_poisson(x, xp)


def allen_cahn(q, x):
    u = q.value
    return q.laplacian + u - u**3


def burgers(q, x):  # x = (x, t): u_t + u u_x - nu u_xx
    u = q.value
    return q.gradient[:, 1] + u * q.gradient[:, 0] - 0.05 * q.hessian_diagonal[:, 0]


def boundary(q, x):
    return q.value


CASES = {
    "poisson": (poisson, ("laplacian",)),
    "allen_cahn": (allen_cahn, ("value", "laplacian")),
    "burgers": (burgers, ("value", "gradient", "hessian_diagonal")),
}


def points(n, seed=1):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, 2))


def problem(net, case="poisson", lib="numpy", n=7, nb=5, weight=3.0):
    fn, needs = CASES[case]
    xi, xb = points(n), points(nb, 2)
    if lib == "torch":
        xi, xb = torch.from_numpy(xi), torch.from_numpy(xb)
    return pinn.Problem(
        net,
        [
            pinn.Residual(xi, fn, needs=needs, name="interior"),
            pinn.Residual(xb, boundary, needs=("value",), weight=weight, name="boundary"),
        ],
    )


def to_np(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def rel(a, b):
    a, b = to_np(a), to_np(b)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# --------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------


def test_residuals_and_loss_against_direct_computation():
    net = make_net()
    pr = problem(net, "allen_cahn")
    xi, xb = pr.terms[0].points, pr.terms[1].points
    res = net(xi, laplacian=True)
    r_int = res.laplacian[:, 0] + res.value[:, 0] - res.value[:, 0] ** 3
    r_bnd = net(xb).value[:, 0]
    got = pr.residuals()
    assert set(got) == {"interior", "boundary"}
    assert got["interior"].shape == (7,) and isinstance(got["interior"], np.ndarray)
    np.testing.assert_allclose(got["interior"], r_int, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(got["boundary"], r_bnd, rtol=1e-14, atol=1e-14)
    loss = 0.5 * np.mean(r_int**2) + 3.0 * 0.5 * np.mean(r_bnd**2)
    assert pr.loss() == pytest.approx(loss, rel=1e-14)
    rho = pr.residual_vector()
    assert rho.shape == (pr.N,) == (12,)
    assert 0.5 * float(rho @ rho) == pytest.approx(loss, rel=1e-14)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_jacobian_against_torch_func(case, lib):
    net = make_net()
    pr = problem(net, case, lib)
    J = pr.jacobian()
    assert J.shape == (pr.N, pr.P)
    assert isinstance(J, torch.Tensor if lib == "torch" else np.ndarray)
    fn, needs = CASES[case]
    rows = []
    for t, w in ((pr.terms[0], 1.0), (pr.terms[1], 3.0)):
        r, theta = torch_residual(net, to_np(t.points), t.fn, t.needs)
        rows.append(np.sqrt(w / t.n) * jacrev(r)(theta).numpy())
        # the residuals themselves agree too
        np.testing.assert_allclose(
            to_np(pr.residuals()[pr.names[len(rows) - 1]]), r(theta).numpy(), rtol=1e-12
        )
    ref = np.concatenate(rows)
    assert rel(J, ref) <= RTOL


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_jvp_vjp_gradient_gramian_kernel(lib):
    net = make_net()
    pr = problem(net, "burgers", lib)
    J = to_np(pr.jacobian())
    rng = np.random.default_rng(3)
    v, w = rng.standard_normal(pr.P), rng.standard_normal(pr.N)
    conv = torch.from_numpy if lib == "torch" else np.asarray
    assert rel(pr.jvp(conv(v)), J @ v) <= 1e-13
    assert rel(pr.vjp(conv(w)), J.T @ w) <= 1e-13
    rho = to_np(pr.residual_vector())
    assert rel(pr.gradient(), J.T @ rho) <= 1e-13
    assert rel(pr.gramian(), J.T @ J) <= 1e-14
    assert rel(pr.kernel(), J @ J.T) <= 1e-14
    # the gradient is that of the loss (central differences, O(h^2))
    theta = pr.parameters()
    h = 1e-5
    fd = (pr.loss_at(theta + h * conv(v)) - pr.loss_at(theta - h * conv(v))) / (2 * h)
    assert fd == pytest.approx(float(J.T @ rho @ v), rel=1e-7)


def test_one_term_gramian_is_JtJ_over_n():
    net = make_net()
    x = points(9)
    pr = pinn.Problem(net, [pinn.Residual(x, poisson, needs="laplacian")])
    Jq = hq.pinn.jacobian(net, x, "laplacian")[:, 0, :]  # r = -Δu - f: ∂r/∂θ = -∂Δu/∂θ
    np.testing.assert_allclose(pr.gramian(), Jq.T @ Jq / 9, rtol=1e-13, atol=1e-15)


def test_operators():
    net = make_net()
    pr = problem(net, "allen_cahn")
    G = pr.gramian()
    for op in (pr.ggn_operator(), pr.ggn_operator(matrix_free=False)):
        assert isinstance(op, hq.curvature.LinearOperatorBase) and op.shape == (pr.P, pr.P)
        np.testing.assert_allclose(op.to_dense(), G, rtol=1e-13, atol=1e-14)
    vals, vecs = hq.curvature.top_eigenpairs(pr.ggn_operator(), 3, seed=0, progress=False)
    np.testing.assert_allclose(np.sort(to_np(vals))[::-1], np.linalg.eigvalsh(G)[::-1][:3], rtol=1e-8)

    # the loss Hessian (central differences of the exact gradient) against nested autograd
    def loss(th):
        total = 0.0
        for t in pr.terms:
            r, _ = torch_residual(net, t.points, t.fn, t.needs)
            total = total + 0.5 * t.weight * (r(th) ** 2).mean()
        return total

    theta = torch.tensor(pr.parameters())
    Href = jacrev(jacrev(loss))(theta).numpy()  # reverse over reverse (forward AD warns)
    H = pr.hessian_operator().to_dense()
    assert rel(H, Href) <= 1e-7
    assert not np.allclose(Href, G, rtol=1e-3)  # the residual curvature is there
    # the operators are at the parameters they were built at
    op = pr.ggn_operator()
    pr.set_parameters(pr.parameters() * 1.1)
    np.testing.assert_allclose(op.to_dense(), G, rtol=1e-13, atol=1e-14)


def test_parameters_round_trip_and_copies():
    net = make_net()
    pr = problem(net)
    theta = pr.parameters()
    assert theta.shape == (pr.P,) and pr.P == hq.curvature.parameter_layout(net).size
    new = theta + 0.5
    keep = new.copy()
    pr.set_parameters(new)
    new[:] = 0.0  # the problem holds its own copy
    np.testing.assert_array_equal(pr.parameters(), keep)
    np.testing.assert_array_equal(hq.curvature.flatten_parameters(net), keep)


def test_cache_follows_parameters():
    net = make_net()
    pr = problem(net)
    l0 = pr.loss()
    J0 = pr.jacobian()
    theta = pr.parameters()
    pr.set_parameters(theta * 0.9)
    assert pr.loss() != l0 and not np.allclose(pr.jacobian(), J0)
    pr.set_parameters(theta)
    assert pr.loss() == l0


def test_float32_and_torch_agree():
    net = make_net()
    p64 = problem(net, "burgers")
    p32 = pinn.Problem(
        net, [pinn.Residual(points(7).astype(np.float32), burgers, ("value", "gradient", "hessian_diagonal"))]
    )
    assert p32.jacobian().dtype == np.float32 and p32.parameters().dtype == np.float32
    assert rel(p32.jacobian(), p64.jacobian()[:7]) <= 1e-4
    pt = problem(net, "burgers", "torch")
    assert rel(pt.jacobian(), p64.jacobian()) <= 1e-13


def test_nonlinear_fn_of_x_and_vector_output_kept():
    net = make_net((2, 4, 2))
    x = points(5)

    def fn(q, x):  # m = 2: q.value is (n, 2), q.gradient (n, 2, 2)
        return q.value[:, 0] * q.value[:, 1] + np.exp(x[:, 0]) * q.gradient[:, 0, 1]

    pr = pinn.Problem(net, [pinn.Residual(x, fn, ("value", "gradient"))])
    res = net(x, gradient=True)
    np.testing.assert_allclose(
        pr.residuals()["term0"], res.value[:, 0] * res.value[:, 1] + np.exp(x[:, 0]) * res.gradient[:, 0, 1]
    )
    J = pr.jacobian()
    rng = np.random.default_rng(0)
    v = rng.standard_normal(pr.P)
    np.testing.assert_allclose(pr.jvp(v), J @ v, rtol=1e-12, atol=1e-14)
    # against central differences of the residual
    theta = pr.parameters()
    h = 1e-6

    def rvec(th):
        pr.set_parameters(th)
        return pr.residual_vector()

    fd = (rvec(theta + h * v) - rvec(theta - h * v)) / (2 * h)
    pr.set_parameters(theta)
    np.testing.assert_allclose(J @ v, fd, rtol=1e-7, atol=1e-8)


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_bad_points_and_terms():
    net = make_net()
    with pytest.raises(ValueError, match=r"expected \(n, 2\)"):
        pinn.Problem(net, [pinn.Residual(np.ones((4, 3)), boundary)])
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        pinn.Residual(np.ones(4), boundary)
    with pytest.raises(TypeError, match="floating"):
        pinn.Residual(np.ones((4, 2), dtype=int), boundary)
    with pytest.raises(ValueError, match="needs"):
        pinn.Residual(points(3), boundary, needs=("hessian",))
    with pytest.raises(TypeError, match="callable"):
        pinn.Residual(points(3), 3.0)
    with pytest.raises(ValueError, match="weight"):
        pinn.Residual(points(3), boundary, weight=-1.0)
    with pytest.raises(TypeError, match="library and dtype"):
        pinn.Problem(
            net, [pinn.Residual(points(3), boundary), pinn.Residual(points(3).astype(np.float32), boundary)]
        )
    with pytest.raises(ValueError, match="unique"):
        pinn.Problem(
            net, [pinn.Residual(points(3), boundary, name="a"), pinn.Residual(points(3), boundary, name="a")]
        )
    with pytest.raises(TypeError, match="Residual"):
        pinn.Problem(net, [])
    with pytest.raises(TypeError, match="network"):
        pinn.Problem("net", [pinn.Residual(points(3), boundary)])


def test_bad_residual_output():
    net = make_net()
    x = points(4)
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.value[:3], name="short")])
    with pytest.raises(ValueError, match=r"'short'.*shape \(3,\), expected \(4,\)"):
        pr.loss()
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.laplacian, needs=("value",), name="undeclared")])
    with pytest.raises(ValueError, match=r"'undeclared' reads q.laplacian.*needs=\('value',\)"):
        pr.loss()
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.value * np.nan, name="nan")])
    with pytest.raises(ValueError, match="'nan' has 4 non-finite"):
        pr.loss()
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: torch.from_numpy(q.value), name="lib")])
    with pytest.raises(TypeError, match="points' library"):
        pr.loss()
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.value.astype(np.float32), name="dt")])
    with pytest.raises(TypeError, match="dtype float32"):
        pr.loss()


def test_non_analytic_fn_detected_with_numpy():
    net = make_net()
    x = points(4)
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: np.abs(q.value), name="abs")])
    with pytest.raises(TypeError, match="'abs'.*real dtype"):
        pr.loss()
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: np.real(np.conj(q.value) * q.value), name="conj")])
    with pytest.raises(TypeError, match="'conj'"):
        pr.loss()

    def conj(q, x):
        return np.conj(q.value) ** 2 if np.iscomplexobj(q.value) else q.value**2

    pr = pinn.Problem(net, [pinn.Residual(x, conj, name="conj2")])
    J = pr.jacobian()  # conj keeps the real part: not detectable, the derivative is wrong in sign
    assert J.shape == (4, pr.P)
    # torch takes the derivative by forward AD instead: abs is fine there
    xt = torch.from_numpy(x)
    pt = pinn.Problem(net, [pinn.Residual(xt, lambda q, x: torch.abs(q.value) - 1.0, name="abs")])
    u = net(x).value[:, 0]
    Jv = hq.pinn.jacobian(net, x, "value")[:, 0, :]
    np.testing.assert_allclose(pt.jacobian().numpy(), np.sign(u)[:, None] * Jv / 2.0, rtol=1e-13)


def test_bad_parameters():
    net = make_net()
    pr = problem(net)
    with pytest.raises(ValueError, match=rf"\({pr.P},\)"):
        pr.set_parameters(np.zeros(pr.P + 1))
    with pytest.raises(TypeError, match="library and dtype"):
        pr.set_parameters(np.zeros(pr.P, dtype=np.float32))
    with pytest.raises(TypeError, match="library and dtype"):
        pr.set_parameters(torch.zeros(pr.P, dtype=torch.float64))


def test_exported():
    assert hq.pinn.Problem is pinn.Problem
    for name in ("Problem", "Residual", "GaussNewton", "ENGD", "KFAC", "Adam", "LBFGS", "StepRecord"):
        assert name in hq.pinn.__all__, name


def test_array_api_strict_namespace():
    xs = pytest.importorskip("array_api_strict")
    net = make_net()
    fn, needs = CASES["burgers"]
    x = points(6)
    pn = pinn.Problem(net, [pinn.Residual(x, fn, needs)])
    ps = pinn.Problem(net, [pinn.Residual(xs.asarray(x), fn, needs)])
    J = ps.jacobian()
    assert type(J).__module__.startswith("array_api_strict") and J.shape == (6, ps.P)
    assert rel(np.asarray(J), pn.jacobian()) <= 1e-14
    assert rel(np.asarray(ps.gradient()), pn.gradient()) <= 1e-14
    assert type(ps.parameters()).__module__.startswith("array_api_strict")
    l0 = ps.loss()
    for opt in (pinn.GaussNewton(ps), pinn.GaussNewton(ps, solver="cg", cg_maxiter=5), pinn.KFAC(ps)):
        opt.run(2, progress=False)
    assert ps.loss() < l0


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_weighted_laplacian_residual(lib):
    """A diffusion ½tr(σσᵀ∇²u) + u - u³ with a non-diagonal σ, against nested autograd."""
    net = make_net()
    S = np.array([[0.8, 0.1, -0.3], [0.2, 0.5, 0.4]])
    x = points(6)

    def fn(q, x):
        return 0.5 * q.weighted_laplacian + q.value - q.value**3

    conv = torch.from_numpy if lib == "torch" else np.asarray
    pr = pinn.Problem(net, [pinn.Residual(conv(x), fn, ("value", "weighted_laplacian"), weights=conv(S))])
    r, theta = torch_residual(net, x, fn, ("value", "weighted_laplacian"), S)
    np.testing.assert_allclose(to_np(pr.residuals()["term0"]), r(theta).numpy(), rtol=1e-12)
    ref = np.sqrt(1 / 6) * jacrev(r)(theta).numpy()
    J = pr.jacobian()
    assert rel(J, ref) <= RTOL
    v, w = np.random.default_rng(0).standard_normal(pr.P), np.random.default_rng(1).standard_normal(6)
    assert rel(pr.jvp(conv(v)), ref @ v) <= 1e-13
    assert rel(pr.vjp(conv(w)), ref.T @ w) <= 1e-13
    l0 = pr.loss()
    pinn.KFAC(pr).run(3, progress=False)
    assert pr.loss() < l0


def test_weighted_laplacian_bad_input():
    x = points(4)
    S = np.ones((2, 3))
    with pytest.raises(ValueError, match="required for, and only for"):
        pinn.Residual(x, boundary, ("weighted_laplacian",))
    with pytest.raises(ValueError, match="required for, and only for"):
        pinn.Residual(x, boundary, ("value",), weights=S)
    with pytest.raises(ValueError, match="combines with 'value' only"):
        pinn.Residual(x, boundary, ("gradient", "weighted_laplacian"), weights=S)
    with pytest.raises(ValueError, match=r"\(2, r\)"):
        pinn.Residual(x, boundary, ("weighted_laplacian",), weights=np.ones((3, 3)))
    with pytest.raises(TypeError, match="library and dtype"):
        pinn.Residual(x, boundary, ("weighted_laplacian",), weights=S.astype(np.float32))

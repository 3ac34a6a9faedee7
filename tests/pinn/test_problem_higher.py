"""hq.pinn.Problem with residuals of order 3 and 4: Δ²u, ∂ᵏu[v,…,v], ∂ᵏu/∂x_iᵏ.

Reference: the network as a functional torch model on the flat parameter vector
(``torch_u``, as in ``test_problem.py``), its input derivatives by nested ``torch.func``
(``hessian`` of the Laplacian for Δ²u, repeated ``jacrev`` along ``t`` of
``u(x + t v)`` for the directional derivatives), the residual ``fn`` applied to
them, and ``jacrev`` over the parameters of the whole residual.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import pinn

torch = pytest.importorskip("torch")
from test_problem import make_net, torch_u  # noqa: E402  (one functional reference for both files)
from torch.func import jacrev, vmap  # noqa: E402

RTOL = 1e-12
PI = np.pi


def points(n, seed=1):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, 2))


def to_np(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def rel(a, b):
    a, b = to_np(a), to_np(b)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _lap(u):
    def L(th, x):
        return torch.diagonal(jacrev(jacrev(u, argnums=1), argnums=1)(th, x)).sum()

    return L


def _directional(u, k):
    """``(th, x, v) -> ∂ᵏu[v,…,v]`` by ``k`` nested jacrev of ``t ↦ u(x + t v)``."""

    def g(th, x, v):
        def along(t):
            return u(th, x + t * v)

        f = along
        for _ in range(k):
            f = jacrev(f)
        return f(torch.zeros((), dtype=x.dtype))

    return g


def torch_residual(net, x, fn, needs, V=None, order=None):
    """``r(theta) (n,)`` by nested autograd, and ``theta`` (one output)."""
    u = torch_u(net)
    X = torch.tensor(np.asarray(x, dtype=np.float64))
    theta = torch.tensor(np.asarray(hq.curvature.flatten_parameters(net), dtype=np.float64))

    def r(th):
        q = {}
        if "value" in needs:
            q["value"] = vmap(u, in_dims=(None, 0))(th, X)
        if "gradient" in needs:
            q["gradient"] = vmap(jacrev(u, argnums=1), in_dims=(None, 0))(th, X)
        if "laplacian" in needs:
            q["laplacian"] = vmap(_lap(u), in_dims=(None, 0))(th, X)
        if "hessian_diagonal" in needs:
            H = vmap(jacrev(jacrev(u, argnums=1), argnums=1), in_dims=(None, 0))(th, X)
            q["hessian_diagonal"] = torch.diagonal(H, dim1=1, dim2=2)
        if "biharmonic" in needs:
            q["biharmonic"] = vmap(_lap(_lap(u)), in_dims=(None, 0))(th, X)
        for name in ("directional", "pure_partial"):
            if name in needs:
                Vt = torch.tensor(V)
                g = _directional(u, order)
                cols = [vmap(g, in_dims=(None, 0, None))(th, X, Vt[:, c]) for c in range(Vt.shape[1])]
                q[name] = torch.stack(cols, dim=1)
        return fn(_Q(**q), X)

    return r, theta


class _Q:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _sin(x):
    return np.sin(x) if isinstance(x, np.ndarray) else torch.sin(x)


def plate(q, x):  # Kirchhoff plate Δ²u = f, f = 4π⁴ sin(πx) sin(πy)
    return q.biharmonic - 4 * PI**4 * _sin(PI * x[:, 0]) * _sin(PI * x[:, 1])


def plate_value_term(q, x):  # a Δ²u + u - u³ residual, nonlinear in two quantities
    return q.biharmonic + q.value - q.value**3


def kdv(q, x):  # x = (t, x): u_t + 6 u u_x + u_xxx
    return q.gradient[:, 0] + 6.0 * q.value * q.gradient[:, 1] + q.pure_partial[:, 0]


def ks(q, x):  # u_t + u u_x + u_xx + u_xxxx, along the x coordinate only
    return q.gradient[:, 0] + q.value * q.gradient[:, 1] + q.hessian_diagonal[:, 1] + q.pure_partial[:, 0]


def directional(q, x):  # two directions of order 3, both in the residual
    return q.directional[:, 0] - 0.5 * q.directional[:, 1] ** 2 + q.value


V2 = np.array([[1.0, 0.3], [-0.5, 0.8]])
CASES = {
    # name: (fn, needs, Residual keywords, reference (V, order))
    "plate": (plate, ("biharmonic",), {}, (None, None)),
    "plate_value": (plate_value_term, ("value", "biharmonic"), {}, (None, None)),
    "kdv": (kdv, ("value", "gradient", "pure_partial"), {"coords": (1,), "order": 3}, (np.eye(2)[:, [1]], 3)),
    "ks": (
        ks,
        ("value", "gradient", "hessian_diagonal", "pure_partial"),
        {"coords": [1], "order": 4},
        (np.eye(2)[:, [1]], 4),
    ),
    "directional": (directional, ("value", "directional"), {"directions": V2, "order": 3}, (V2, 3)),
}


def _conv(lib):
    return torch.from_numpy if lib == "torch" else np.asarray


def make_problem(case, lib, n=6, nb=4, seed=0):
    fn, needs, kw, _ = CASES[case]
    conv = _conv(lib)
    kw = {k: (conv(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    net = make_net(seed=seed)
    return pinn.Problem(
        net,
        [
            pinn.Residual(conv(points(n)), fn, needs=needs, name="interior", **kw),
            pinn.Residual(
                conv(points(nb, 2)), lambda q, x: q.value, needs=("value",), weight=2.0, name="bnd"
            ),
        ],
    )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_jacobian_and_products_against_torch_func(case, lib):
    pr = make_problem(case, lib)
    fn, needs, _, (V, order) = CASES[case]
    J = pr.jacobian()
    assert J.shape == (pr.N, pr.P) and J.dtype == pr.dtype
    assert isinstance(J, torch.Tensor if lib == "torch" else np.ndarray)
    rows = []
    for t, w in zip(pr.terms, (1.0, 2.0)):
        ns = needs if t.name == "interior" else ("value",)
        r, theta = torch_residual(pr.net, to_np(t.points), t.fn, ns, V, order)
        np.testing.assert_allclose(to_np(pr.residuals()[t.name]), r(theta).numpy(), rtol=1e-12, atol=1e-10)
        rows.append(np.sqrt(w / t.n) * jacrev(r)(theta).numpy())
    ref = np.concatenate(rows)
    assert rel(J, ref) <= RTOL
    rng = np.random.default_rng(3)
    v, w = rng.standard_normal(pr.P), rng.standard_normal(pr.N)
    conv = _conv(lib)
    assert rel(pr.jvp(conv(v)), ref @ v) <= 1e-12
    assert rel(pr.vjp(conv(w)), ref.T @ w) <= 1e-12
    assert rel(pr.gradient(), ref.T @ to_np(pr.residual_vector())) <= 1e-12


def test_loss_jacobian_is_the_gradient_of_the_loss():
    """The loss of a Δ²u residual: J^Tρ equals torch.func's gradient of ½‖ρ‖² (nested AD)."""
    pr = make_problem("plate", "numpy")
    r0, theta = torch_residual(pr.net, pr.terms[0].points, plate, ("biharmonic",))
    r1, _ = torch_residual(pr.net, pr.terms[1].points, lambda q, x: q.value, ("value",))

    def loss(th):
        return 0.5 * (r0(th) ** 2).mean() + 2.0 * 0.5 * (r1(th) ** 2).mean()

    assert pr.loss() == pytest.approx(float(loss(theta)), rel=1e-13)
    assert rel(pr.gradient(), torch.func.grad(loss)(theta).numpy()) <= RTOL


def plate_unit(q, x):  # Δ²u = sin(πx) sin(πy): u* = sin(πx) sin(πy) / (4π⁴), of the initial net's scale
    return q.biharmonic - _sin(PI * x[:, 0]) * _sin(PI * x[:, 1])


def kirchhoff(lib="numpy", n=24, nb=16, seed=0):
    """Δ²u = sin(πx) sin(πy) on the unit square, u = Δu = 0 on its boundary (a simply supported plate)."""
    net = hq.FullyConnectedNN([2, 6, 1], act="tanh", output_act=None, seed=seed)
    rng = np.random.default_rng(seed + 1)
    xi = rng.uniform(0.0, 1.0, (n, 2))
    xb = rng.uniform(0.0, 1.0, (nb, 2))
    face = rng.integers(0, 2, nb)
    xb[np.arange(nb), face] = rng.integers(0, 2, nb)
    conv = _conv(lib)
    return pinn.Problem(
        net,
        [
            pinn.Residual(conv(xi), plate_unit, needs=("biharmonic",), name="interior"),
            pinn.Residual(conv(xb), lambda q, x: q.value, needs=("value",), name="u"),
            pinn.Residual(conv(xb), lambda q, x: q.laplacian, needs=("laplacian",), name="lap_u"),
        ],
    )


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize(
    "make",
    [
        lambda pr: pinn.GaussNewton(pr, solver="dense"),
        lambda pr: pinn.ENGD(pr, damping=1e-3, adaptive=True),
        lambda pr: pinn.GaussNewton(pr, solver="cg", cg_maxiter=10),
    ],
    ids=["gn_dense", "engd", "gn_cg"],
)
def test_gauss_newton_trains_a_kirchhoff_plate(make, lib):
    losses = []
    for _ in range(2):
        pr = kirchhoff(lib)
        l0 = pr.loss()
        recs = make(pr).run(10, progress=False)
        assert all(r.loss <= r.loss_before for r in recs)
        assert recs[-1].loss < 0.1 * l0, (l0, recs[-1].loss)
        losses.append([r.loss for r in recs])
    assert losses[0] == losses[1]  # deterministic


def test_kfac_refuses_higher_order_quantities():
    pr = kirchhoff()
    with pytest.raises(
        ValueError, match=r"KFAC has no Kronecker factors for 'biharmonic' \(residual 'interior'\)"
    ):
        pinn.KFAC(pr)
    with pytest.raises(ValueError, match="'pure_partial'"):
        pinn.KFAC(make_problem("kdv", "numpy"))


def test_unsupported_layer_and_activation_refused_by_name():
    x = points(4)
    net = hq.NN(
        hq.SingleLayer(2, 4, act="tanh", seed=0), hq.LayerNorm(4, seed=1), hq.SingleLayer(4, 1, seed=2)
    )
    with pytest.raises(ValueError, match=r"layer 1 \(LayerNorm\) is not supported"):
        pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.biharmonic, needs=("biharmonic",))])
    soft = hq.FullyConnectedNN([2, 4, 1], act="softplus", output_act=None, seed=0)
    with pytest.raises(ValueError, match=r"layer 0 \(SingleLayer\) uses .*fifth derivative"):
        pinn.Problem(soft, [pinn.Residual(x, lambda q, x: q.biharmonic, needs=("biharmonic",))])
    with pytest.raises(ValueError, match="fifth derivative"):
        pinn.Problem(
            soft,
            [pinn.Residual(x, lambda q, x: q.pure_partial[:, 0], ("pure_partial",), coords=(0,), order=4)],
        )


def test_bad_options():
    x = points(4)
    f = lambda q, x: q.value  # noqa: E731
    with pytest.raises(ValueError, match="order = 1, 2, 3 or 4"):
        pinn.Residual(x, f, ("pure_partial",), coords=(0,))
    with pytest.raises(ValueError, match="order = 1, 2, 3 or 4"):
        pinn.Residual(x, f, ("pure_partial",), coords=(0,), order=5)
    with pytest.raises(ValueError, match=r"coords, a non-empty sequence of integers in 0..1"):
        pinn.Residual(x, f, ("pure_partial",), coords=(2,), order=3)
    with pytest.raises(ValueError, match=r"directions = V of shape \(2, K\)"):
        pinn.Residual(x, f, ("directional",), order=3)
    with pytest.raises(ValueError, match=r"shape \(2, K\) with K >= 1, got \(3, 1\)"):
        pinn.Residual(x, f, ("directional",), directions=np.ones((3, 1)), order=3)
    with pytest.raises(TypeError, match="library and dtype"):
        pinn.Residual(x, f, ("directional",), directions=np.ones((2, 1), np.float32), order=3)
    with pytest.raises(ValueError, match="one of .* per residual"):
        pinn.Residual(x, f, ("directional", "pure_partial"), directions=np.ones((2, 1)), coords=(0,), order=3)
    with pytest.raises(ValueError, match="go with needs 'directional' or 'pure_partial' only"):
        pinn.Residual(x, f, ("value",), order=3)
    with pytest.raises(ValueError, match="takes coords=, not directions="):
        pinn.Residual(x, f, ("pure_partial",), directions=np.ones((2, 1)), order=3)
    # reading an undeclared higher-order quantity names the residual
    pr = pinn.Problem(make_net(), [pinn.Residual(x, lambda q, x: q.biharmonic, ("value",), name="b")])
    with pytest.raises(ValueError, match=r"residual 'b' reads q.biharmonic"):
        pr.loss()


def test_caller_directions_not_modified_and_copied():
    V = V2.copy()
    t = pinn.Residual(points(4), directional, ("value", "directional"), directions=V, order=3)
    V[0, 0] = 99.0
    assert t.taylor["directions"][0, 0] == 1.0
    assert V2[0, 0] == 1.0


@pytest.mark.slow  # trains the example (--quick, 30 Gauss-Newton steps): seconds with one BLAS thread
def test_kirchhoff_plate_example_gauss_newton(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "kirchhoff_plate.py"
    spec = importlib.util.spec_from_file_location("kirchhoff_plate_gn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--quick", "--optimizer", "gauss-newton", "--outdir", str(tmp_path)])
    fig = Path(out["figure"])
    assert fig.name == "kirchhoff_plate_gauss_newton.png" and fig.stat().st_size > 10_000
    # measured in --quick mode (seed 0, 200 + 80 points, 30 steps): 6.9e-4 and 4.9e-4
    assert out["rel_l2_error"] < 5e-3
    assert out["rel_residual"] < 5e-3


def test_array_api_strict_and_float32():
    """The generic backend gives NumPy's numbers; float32 agrees with float64 to its precision."""
    xs = pytest.importorskip("array_api_strict")
    net = make_net()
    x = points(5)

    def fn(q, x):
        return q.gradient[:, 0] + 6.0 * q.value * q.gradient[:, 1] + q.pure_partial[:, 0] + q.biharmonic

    def make(X):
        needs = ("value", "gradient", "biharmonic", "pure_partial")
        return pinn.Problem(net, [pinn.Residual(X, fn, needs, coords=(1,), order=3)])

    pn, ps, p32 = make(x), make(xs.asarray(x)), make(x.astype(np.float32))
    Js = ps.jacobian()
    assert type(Js).__module__.startswith("array_api_strict") and Js.shape == (5, pn.P)
    assert rel(np.asarray(Js), pn.jacobian()) <= 1e-14
    assert rel(np.asarray(ps.gradient()), pn.gradient()) <= 1e-14
    J32 = p32.jacobian()
    assert J32.dtype == np.float32 and rel(J32, pn.jacobian()) <= 1e-5

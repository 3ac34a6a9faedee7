"""Collocation points held by Dask: every sum of a pinn.Problem as a tree reduction, equal to in memory.

The same residual terms are built twice, on NumPy points and on Dask arrays
chunked along the points (uneven chunks, data chunked alike, a NumPy boundary
term mixed in); every quantity and one optimizer step must agree to 1e-13
relative (float64), on the threaded scheduler and on a ``distributed``
``LocalCluster`` of two worker processes (the products ship the network
snapshot and the user's residual functions, pickled, to the workers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from _dask_cluster import local_client  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core import pinn  # noqa: E402
from hessquik_core.dask import DaskGaussNewtonOperator, DaskProblem  # noqa: E402

RTOL = 1e-13
CHUNKS = (40, 40, 57)  # uneven: the chunk weights w n_c / N must add up to the term's


@pytest.fixture(scope="module")
def client():
    """Two worker processes (tests/_dask_cluster.py): the network snapshot and the user's
    residual functions travel pickled, as on a real cluster; this folder is on their path."""
    with local_client(str(Path(__file__).parent)) as c:
        yield c


@pytest.fixture(params=["threads", "cluster"])
def scheduler(request):
    if request.param == "threads":
        with dask.config.set(scheduler="threads"):
            yield "threads"
    else:
        c = request.getfixturevalue("client")
        with dask.config.set(scheduler=c):
            yield c


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def interior(q, x, f):
    # nonlinear in the quantities, per-point data f
    return -q.laplacian + q.value**3 - f


def boundary(q, x):
    return q.value - x[:, 0] * x[:, 1]


def _problems(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (sum(CHUNKS), 2)).astype(dtype)
    f = np.sin(np.pi * x[:, 0]) * np.cos(x[:, 1])
    xb = rng.uniform(-1.0, 1.0, (30, 2)).astype(dtype)
    net = hq.FullyConnectedNN([2, 6, 6, 1], act="tanh", output_act=None, seed=seed)
    if dtype == np.float32:
        net.to(dtype="float32")

    def terms(xi, fi):
        return [
            pinn.Residual(xi, interior, ("value", "laplacian"), data=fi, name="interior"),
            pinn.Residual(xb, boundary, ("value",), weight=3.0, name="boundary"),
        ]

    mem = pinn.Problem(net, terms(x, f))
    xd = da.from_array(x, chunks=(CHUNKS, 2))
    dist = pinn.Problem(net, terms(xd, da.from_array(f, chunks=(CHUNKS,))))
    return net, mem, dist, rng


def test_problem_with_dask_points_is_distributed():
    _, mem, dist, _ = _problems()
    assert type(mem) is pinn.Problem
    assert isinstance(dist, DaskProblem) and isinstance(dist, pinn.Problem)
    assert (dist.N, dist.P, dist.names) == (mem.N, mem.P, mem.names)
    assert "chunks=4" in repr(dist)  # three interior chunks and the NumPy boundary term as one
    one = pinn.Problem(dist.net, (dist.terms[0],))  # a tuple, or one Residual, works as well
    assert isinstance(one, DaskProblem) and isinstance(pinn.Problem(dist.net, dist.terms[0]), DaskProblem)


def test_sums_and_rows_match_in_memory(scheduler):
    _, mem, dist, rng = _problems()
    loss = dist.loss()
    assert isinstance(loss, float) and abs(loss - mem.loss()) <= RTOL * mem.loss()
    g = dist.gradient()
    assert isinstance(g, np.ndarray) and g.dtype == np.float64 and rel(g, mem.gradient()) <= RTOL
    G = dist.gramian()
    assert isinstance(G, np.ndarray) and G.shape == (mem.P, mem.P) and rel(G, mem.gramian()) <= RTOL
    rho = dist.residual_vector()
    assert isinstance(rho, da.Array) and rho.chunks == ((*CHUNKS, 30),)
    assert rel(rho.compute(), mem.residual_vector()) <= RTOL
    r = dist.residuals()
    assert set(r) == {"interior", "boundary"}
    for name in r:
        assert rel(r[name].compute(), mem.residuals()[name]) <= RTOL
    J = dist.jacobian()
    assert isinstance(J, da.Array) and J.chunks == ((*CHUNKS, 30), (mem.P,))
    assert rel(J.compute(), mem.jacobian()) <= RTOL
    K = dist.kernel()
    assert isinstance(K, da.Array) and K.chunks == ((*CHUNKS, 30),) * 2
    assert rel(K.compute(), mem.kernel()) <= RTOL
    theta = mem.parameters() + 0.05 * rng.standard_normal(mem.P)
    assert abs(dist.loss_at(theta) - mem.loss_at(theta)) <= RTOL * mem.loss_at(theta)
    assert rel(dist.parameters(), mem.parameters()) == 0.0  # loss_at restored the network


def test_matrix_free_products_match_in_memory(scheduler):
    _, mem, dist, rng = _problems()
    v = rng.standard_normal(mem.P)
    w = rng.standard_normal(mem.N)
    jv = dist.jvp(v)
    assert isinstance(jv, da.Array) and jv.chunks == ((*CHUNKS, 30),)  # rows stay chunked like the points
    assert rel(jv.compute(), mem.jvp(v)) <= RTOL
    for wd in (w, da.from_array(w, chunks=50)):  # NumPy, or dask chunked otherwise (rechunked to the points)
        jtw = dist.vjp(wd)
        assert isinstance(jtw, np.ndarray) and rel(jtw, mem.vjp(w)) <= RTOL
    assert rel(dist.vjp(jv), mem.vjp(mem.jvp(v))) <= RTOL
    V = rng.standard_normal((mem.P, 3))
    ref = mem.ggn_operator() @ V
    for matrix_free in (True, False):
        op = dist.ggn_operator(matrix_free=matrix_free)
        assert isinstance(op, DaskGaussNewtonOperator) and op.shape == (mem.P, mem.P)
        assert rel(op @ V, ref) <= RTOL
        assert rel(op @ V[:, 0], ref[:, 0]) <= RTOL


def test_operator_keeps_its_parameters_and_feeds_the_spectral_tools():
    from hessquik_core import curvature as cv

    net, mem, dist, rng = _problems()
    with dask.config.set(scheduler="threads"):
        op = dist.ggn_operator()
        theta = mem.parameters()
        dist.set_parameters(theta + 0.1)  # the operator is the Gauss-Newton matrix where it was built
        v = rng.standard_normal(mem.P)
        mem.set_parameters(theta)
        assert rel(op @ v, mem.ggn_operator() @ v) <= RTOL
        dist.set_parameters(theta)
        vals, _ = cv.top_eigenpairs(op, 2, seed=0, progress=False)
    top = np.linalg.eigvalsh(mem.gramian())[::-1][:2]
    assert rel(np.sort(np.asarray(vals))[::-1], top) <= 1e-10  # Lanczos, not the reduction, sets this


def test_sums_are_tree_reductions(monkeypatch):
    """One task per chunk, added with fan-in 8: 20 chunks reach the root in two levels."""
    import hessquik_core.dask._pinn as mod

    rng = np.random.default_rng(1)
    x = da.from_array(rng.uniform(size=(200, 2)), chunks=(10, 2))
    net = hq.FullyConnectedNN([2, 4, 1], act="tanh", output_act=None, seed=0)
    dist = pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.value - 1.0)])
    seen = []
    real = mod.tree_sum

    def counting(layer, keys, name, combine=None):
        root = real(layer, keys, name, combine)
        seen.append(sorted({k[0].rsplit("-", 1)[-1] for k in layer if isinstance(k, tuple)}))
        return root

    monkeypatch.setattr(mod, "tree_sum", counting)
    with dask.config.set(scheduler="sync"):
        dist.gramian()
    assert seen == [["chunk", "sum0", "sum1"]]


# Every product agrees to rounding (above); CG's iterates amplify those last-bit differences
# (the chunks' sums are added in another order than one array's) by up to the condition
# number of G + λI, so the step is compared where that is moderate (λ = 1: 9 iterations, the
# step to 1e-15 here); with λ = 1e-3 (26 iterations) the two steps differ by 1e-10 relative,
# as two in-memory runs with another summation order would.
@pytest.mark.parametrize(
    "make",
    [
        lambda p: pinn.GaussNewton(p, solver="cg", damping=1.0, line_search="grid"),
        lambda p: pinn.ENGD(p, solver="cg", damping=1.0, grid_full=False),
        lambda p: pinn.GaussNewton(p, solver="dense", damping=1e-2),
        lambda p: pinn.Adam(p, lr=1e-2),
        lambda p: pinn.LBFGS(p),
    ],
    ids=["gauss-newton-cg", "engd-cg", "gauss-newton-dense", "adam", "lbfgs"],
)
def test_one_optimizer_step_matches_in_memory(make, scheduler):
    net, mem, dist, _ = _problems()
    theta0 = mem.parameters()
    rec_mem = make(mem).step()
    theta_mem = mem.parameters()
    dist.set_parameters(theta0)  # the two problems share the network
    rec = make(dist).step()
    assert rec.accepted and rec_mem.accepted and rec.loss < rec.loss_before
    assert (rec.step_size, rec.damping, rec.cg_iterations) == (
        rec_mem.step_size,
        rec_mem.damping,
        rec_mem.cg_iterations,
    )
    assert abs(rec.loss - rec_mem.loss) <= RTOL * rec_mem.loss
    step = dist.parameters() - theta0
    assert rel(step, theta_mem - theta0) <= RTOL
    assert rel(dist.parameters(), theta_mem) <= RTOL


def _small():
    """A small network whose J is well conditioned (κ ≈ 7e3): R and the pseudo-inverse step are
    then determined to rounding (for an ill-conditioned J both vary at the level κ(J)·ε between
    any two implementations, in-memory or not)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (137, 2))
    net = hq.FullyConnectedNN([2, 3, 1], act="tanh", output_act=None, seed=0)

    def fn(q, x):
        return -q.laplacian + q.value**3 - np.sin(x[:, 0])

    mem = pinn.Problem(net, [pinn.Residual(x, fn, ("value", "laplacian"))])
    dist = pinn.Problem(
        net, [pinn.Residual(da.from_array(x, chunks=(CHUNKS, 2)), fn, ("value", "laplacian"))]
    )
    return mem, dist


def test_tsqr_factor_is_the_r_of_j_and_rho(scheduler):
    """The tree of stacked R-factors gives the R of [J ρ] without gathering J."""
    _, mem, dist, _ = _problems()
    R = dist.tsqr_factor()
    A = np.concatenate([mem.jacobian(), mem.residual_vector()[:, None]], axis=1)
    assert R.shape == (mem.P + 1, mem.P + 1) and np.allclose(R, np.triu(R), rtol=0, atol=0)
    assert rel(R.T @ R, A.T @ A) <= RTOL  # backward stable whatever J's conditioning
    mem, dist = _small()
    R = dist.tsqr_factor()
    ref = np.linalg.qr(np.concatenate([mem.jacobian(), mem.residual_vector()[:, None]], axis=1), mode="r")
    sign = np.sign(np.diag(R) * np.diag(ref))  # rows are unique up to sign
    assert rel(sign[:, None] * R, ref) <= RTOL


def test_engd_step_matches_in_memory(scheduler):
    """ENGD's defaults (pseudo-inverse, solver="dense": the TSQR route on dask points)."""
    mem, dist = _small()
    theta0 = mem.parameters()
    rec_mem = pinn.ENGD(mem).step()
    theta_mem = mem.parameters()
    dist.set_parameters(theta0)
    rec = pinn.ENGD(dist).step()
    assert rec.accepted and rec.step_size == rec_mem.step_size and rec.damping == 0.0
    assert rel(dist.parameters() - theta0, theta_mem - theta0) <= RTOL
    assert abs(rec.loss - rec_mem.loss) <= RTOL * rec_mem.loss


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda p: pinn.GaussNewton(p, solver="kernel"), "GaussNewton(solver='kernel')"),
        (lambda p: pinn.ENGD(p, solver="kernel"), "ENGD(solver='kernel')"),
        (lambda p: pinn.KFAC(p), "KFAC"),
    ],
)
def test_optimizers_needing_all_of_J_are_refused(make, what):
    _, _, dist, _ = _problems()
    with pytest.raises(ValueError, match="does not run on collocation points held by Dask") as err:
        make(dist)
    assert what in str(err.value) and "solver='dense' (TSQR) or 'cg'" in str(err.value)


def test_dense_solver_memory_is_checked_up_front():
    _, _, dist, _ = _problems()
    with pytest.raises(hq.MemoryBudgetError, match="solver='cg'"):
        pinn.GaussNewton(dist, solver="dense", max_memory=1e4)
    assert dist.tsqr_bytes() > 8 * (dist.P + 1) ** 2
    pinn.GaussNewton(dist, solver="cg", max_memory=1e4)  # matrix-free: nothing to refuse


def test_float32_stays_float32():
    _, mem, dist, rng = _problems(np.float32)
    with dask.config.set(scheduler="threads"):
        assert dist.gradient().dtype == np.float32 and dist.gramian().dtype == np.float32
        assert dist.jvp(rng.standard_normal(mem.P).astype(np.float32)).dtype == np.float32
        assert rel(dist.gradient(), mem.gradient()) <= 1e-5


def test_bad_input_before_anything_is_computed():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(60, 2))
    net = hq.FullyConnectedNN([2, 4, 1], act="tanh", output_act=None, seed=0)
    with pytest.raises(ValueError, match="chunked along axis 1"):
        pinn.Residual(da.from_array(x, chunks=(20, 1)), boundary)
    with pytest.raises(ValueError, match="chunked like x|must be chunked like"):
        pinn.Residual(da.from_array(x, chunks=(20, 2)), interior, data=da.from_array(x[:, 0], chunks=30))
    with pytest.raises(ValueError, match="one row per point"):
        pinn.Residual(da.from_array(x, chunks=(20, 2)), interior, data=np.zeros(59))
    with pytest.raises(TypeError, match="points are not"):
        pinn.Residual(x, interior, data=da.from_array(x[:, 0], chunks=20))
    with pytest.raises(ValueError, match="one row per point"):
        pinn.Residual(x, interior, data=np.zeros(59))
    with pytest.raises(ValueError, match=r"expected \(n, 2\)"):
        pinn.Problem(net, [pinn.Residual(da.from_array(rng.uniform(size=(6, 3)), chunks=(3, 3)), boundary)])
    # a residual function that fails is found on one point on the client, at construction
    with pytest.raises(ValueError, match="did not declare"):
        pinn.Problem(net, [pinn.Residual(da.from_array(x, chunks=(20, 2)), lambda q, x: q.laplacian)])


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_per_point_data_in_memory(library):
    """``data=`` rows reach ``fn(q, x, data)``: the same problem as closing over the array."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1.0, 1.0, (25, 2))
    f = np.cos(x[:, 1])
    net = hq.FullyConnectedNN([2, 5, 1], act="tanh", output_act=None, seed=0)
    if library == "torch":
        torch = pytest.importorskip("torch")
        x, f = torch.from_numpy(x), torch.from_numpy(f)
        net.to("torch")
    with_data = pinn.Problem(net, [pinn.Residual(x, interior, ("value", "laplacian"), data=f)])
    closed = pinn.Problem(net, [pinn.Residual(x, lambda q, x: interior(q, x, f), ("value", "laplacian"))])
    assert with_data.loss() == closed.loss()
    J, Jc = with_data.jacobian(), closed.jacobian()
    assert type(J) is type(Jc) and bool((J == Jc).all())
    assert with_data.terms[0].data is f and with_data.terms[0].point_fn is interior


def test_weighted_laplacian_and_vector_outputs():
    """The terms' other forms travel too: S of the weighted Laplacian, m = 2 outputs, gradients."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1.0, 1.0, (90, 3))
    S = rng.standard_normal((3, 2))
    net = hq.FullyConnectedNN([3, 5, 2], act="tanh", output_act=None, seed=0)

    def diffusion(q, x):
        return q.weighted_laplacian[:, 0] + q.value[:, 1] ** 2

    def transport(q, x):
        return q.gradient[:, 0, 1] * q.value[:, 0] - x[:, 2]

    def terms(points):
        return [
            pinn.Residual(points, diffusion, ("value", "weighted_laplacian"), weights=S, name="diffusion"),
            pinn.Residual(points, transport, ("value", "gradient"), weight=0.5, name="transport"),
        ]

    mem = pinn.Problem(net, terms(x))
    dist = pinn.Problem(net, terms(da.from_array(x, chunks=(30, 3))))
    v = rng.standard_normal(mem.P)
    with dask.config.set(scheduler="threads"):
        assert abs(dist.loss() - mem.loss()) <= RTOL * mem.loss()
        assert rel(dist.gramian(), mem.gramian()) <= RTOL
        assert rel(dist.jvp(v).compute(), mem.jvp(v)) <= RTOL
        assert rel(dist.jacobian().compute(), mem.jacobian()) <= RTOL
        H = dist.hessian_operator()  # the exact product of every chunk, tree-reduced
        assert H.method == "exact" and rel(H @ v, mem.hessian_operator() @ v) <= RTOL
        Hfd = dist.hessian_operator(exact=False)  # central differences of each chunk's gradient
        ref = mem.hessian_operator(exact=False) @ v  # the same differences in memory
        assert Hfd.method == "central_differences" and rel(Hfd @ v, ref) <= 1e-6


def test_non_finite_residuals_fail_the_computation():
    x = da.from_array(np.random.default_rng(5).uniform(size=(40, 2)), chunks=(10, 2))
    f = np.zeros(40)
    f[25] = np.nan  # one bad source value in the third chunk
    net = hq.FullyConnectedNN([2, 4, 1], act="tanh", output_act=None, seed=0)
    bad = pinn.Problem(net, [pinn.Residual(x, lambda q, x, f: q.value - f, data=f, name="src")])
    with dask.config.set(scheduler="sync"):
        with pytest.raises(ValueError, match="'src' has 1 non-finite entries"):
            bad.loss()
        assert bad.loss_at(bad.parameters()) == np.inf  # the line searches' trial losses


@pytest.mark.parametrize(
    "needs, options",
    [(("value", "biharmonic"), {}), (("pure_partial",), dict(coords=(1,), order=3))],
)
def test_higher_order_residual_on_dask_points(needs, options):
    """Δ²u and a pure third partial on chunked points: the chunks get the term's coords/order."""
    rng = np.random.default_rng(5)
    net = hq.FullyConnectedNN([2, 6, 5, 1], act="tanh", output_act=None, seed=3)
    x = rng.uniform(-1.0, 1.0, (90, 2))

    def fn(q, z):
        return (q.biharmonic - q.value) if "biharmonic" in needs else q.pure_partial[:, 0] - z[:, 0]

    mem = pinn.Problem(net, [pinn.Residual(x, fn, needs, **options)])
    dsk = pinn.Problem(net, [pinn.Residual(da.from_array(x, chunks=(30, 2)), fn, needs, **options)])
    assert isinstance(dsk, DaskProblem)
    with dask.config.set(scheduler="threads"):
        assert rel(dsk.loss(), mem.loss()) <= RTOL
        assert rel(dsk.gradient(), mem.gradient()) <= RTOL
        assert rel(dsk.gramian(), mem.gramian()) <= RTOL

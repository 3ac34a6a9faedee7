"""Dask arrays in, Dask arrays out: network calls and curvature over chunked data.

Every result is checked against the in-memory computation on the same data
(float64, <= 1e-12 relative), on the threaded scheduler and on a real
``LocalCluster`` of two worker processes; one test kills a worker process
in the middle of a computation.
"""

from __future__ import annotations

import os
import pickle
import signal
import time

import numpy as np
import pytest

dask = pytest.importorskip("dask")
pytest.importorskip("dask.core")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from _dask_cluster import local_client  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core import curvature as cv  # noqa: E402
from hessquik_core.dask import _network  # noqa: E402

RTOL = 1e-12
FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal")


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each, a small memory limit, localhost only."""
    with local_client() as c:
        yield c


@pytest.fixture(params=["threads", "cluster"])
def scheduler(request):
    """What ``dask.compute`` runs on: the threaded scheduler or the process cluster."""
    if request.param == "threads":
        with dask.config.set(scheduler="threads"):
            yield "threads"
    else:
        c = request.getfixturevalue("client")
        with dask.config.set(scheduler=c):
            yield c


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _net():
    return hq.NN(
        hq.SingleLayer(3, 6, act="tanh", seed=0),
        hq.ResnetNN(6, depth=2, h=0.5, act="softplus", seed=1),
        hq.SingleLayer(6, 2, act="identity", seed=2),
    )


def _x(n=301, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


# uneven chunks (the last one short) exercise the chunk-size weighting
CHUNKS = (64, 64, 100, 73)


# --------------------------------------------------------------------------
# network calls
# --------------------------------------------------------------------------


def test_call_matches_in_memory(scheduler):
    net, xn = _net(), _x()
    x = da.from_array(xn, chunks=(CHUNKS, 3))
    kw = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)
    res, ref = net(x, **kw), net(xn, **kw)
    assert res.mode in ("forward", "backward")
    for f in FIELDS:
        a = getattr(res, f)
        assert isinstance(a, da.Array) and a.chunks[0] == CHUNKS
        assert all(len(c) == 1 for c in a.chunks[1:]) and a.dtype == np.float64
    vals = dask.compute(*(getattr(res, f) for f in FIELDS))
    for f, v in zip(FIELDS, vals):
        assert v.shape == getattr(ref, f).shape
        assert rel(v, getattr(ref, f)) <= RTOL, f
    assert res.divergence is None


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_directions_and_divergence(mode):
    net = hq.ResnetNN(4, depth=2, h=0.3, act="tanh", seed=3)
    xn = _x(150, 4, seed=1)
    x = da.from_array(xn, chunks=40)  # a (40, 4) chunk shape: the feature axis is whole
    V = np.random.default_rng(2).standard_normal((4, 2))
    kw = dict(gradient=True, hessian=True, laplacian=True, directions=V, mode=mode)
    with dask.config.set(scheduler="sync"):
        res, ref = net(x, **kw), net(xn, **kw)
        assert res.mode == ref.mode == mode
        for f in ("value", "gradient", "hessian", "laplacian"):
            assert rel(getattr(res, f).compute(), getattr(ref, f)) <= RTOL
        div = net(x, divergence=True, mode=mode)
        assert div.divergence.shape == (150,) and div.divergence.chunks == ((40, 40, 40, 30),)
        assert rel(div.divergence.compute(), net(xn, divergence=True, mode=mode).divergence) <= RTOL


@pytest.mark.parametrize("what", ["laplacian", "divergence"])
def test_high_dimensional_routes_in_every_chunk(monkeypatch, what):
    """At d >> width a chunked auto call takes the planner's high-dimensional route
    (the Gram-root Laplacian, the divergence without the Jacobian) in every chunk,
    as the in-memory call does, not a classic sweep forced by the mode."""
    from hessquik_core.engine import highdim

    runs = []
    name = "run_laplacian" if what == "laplacian" else "run_divergence"
    inner = getattr(highdim, name)

    def spy(*args, **kwargs):
        runs.append(name)
        return inner(*args, **kwargs)

    monkeypatch.setattr(highdim, name, spy)
    d = 3000
    m = 1 if what == "laplacian" else d
    rng = np.random.default_rng(5)
    net = hq.NN(hq.SingleLayer(d, 8, act="tanh", seed=rng), hq.SingleLayer(8, m, seed=rng))
    xn = _x(50, d, seed=2)
    x = da.from_array(xn, chunks=(20, d))
    with dask.config.set(scheduler="sync"):
        res = net(x, **{what: True})
        got = getattr(res, what).compute()
    assert runs.count(name) == 4  # one per chunk, and the one-example argument probe
    runs.clear()
    ref = net(xn, **{what: True})
    assert runs == [name]
    assert res.mode == ref.mode == "forward"
    assert rel(got, getattr(ref, what)) <= RTOL


def test_float32_chunks_stay_float32():
    net, xn = _net(), _x().astype(np.float32)
    res = net(da.from_array(xn, chunks=(100, 3)), laplacian=True)
    assert res.laplacian.dtype == np.float32
    lap = res.laplacian.compute(scheduler="sync")
    assert lap.dtype == np.float32
    np.testing.assert_allclose(lap, net(xn, laplacian=True).laplacian, rtol=1e-6, atol=1e-6)


def test_one_task_per_chunk_each_computed_once(monkeypatch):
    calls = []
    inner = _network._eval_chunk

    def counted(xb, shared, index):
        calls.append(index)
        return inner(xb, shared, index)

    monkeypatch.setattr(_network, "_eval_chunk", counted)
    net, xn = _net(), _x()
    x = da.from_array(xn, chunks=(CHUNKS, 3))
    res = net(x, gradient=True, laplacian=True, hessian_diagonal=True)
    assert calls == []  # lazy: building the graph evaluates nothing
    dask.compute(res.value, res.gradient, res.laplacian, res.hessian_diagonal, scheduler="threads")
    assert sorted(calls) == [0, 1, 2, 3]
    # the graph: one evaluation task per chunk (plus the key holding the network)
    g = dict(res.value.__dask_graph__())
    name = res.value.name.rsplit("-", 1)[0]
    assert sorted(k[1] for k in g if isinstance(k, tuple) and k[0] == name) == [0, 1, 2, 3]


def test_parameters_travel_under_one_key():
    # a network whose parameters dwarf one chunk's task
    net = hq.FullyConnectedNN([3, 300, 300, 1], act="tanh", seed=0)
    x = da.from_array(_x(64), chunks=(16, 3))
    res = net(x, laplacian=True)
    g = dict(res.laplacian.__dask_graph__())
    net_bytes = len(pickle.dumps(net.state_dict()))
    sizes = {k: len(pickle.dumps(v)) for k, v in g.items()}
    big = [k for k, s in sizes.items() if s > net_bytes // 2]
    assert len(big) == 1 and isinstance(big[0], str) and big[0].endswith("-net"), big
    # every chunk task references that key instead of holding the parameters
    name = res.laplacian.name.rsplit("-", 1)[0]
    chunk_tasks = [k for k in g if isinstance(k, tuple) and k[0] == name]
    assert len(chunk_tasks) == 4
    assert all(big[0] in dask.core.get_dependencies(g, k) for k in chunk_tasks)
    assert all(sizes[k] < 2000 for k in chunk_tasks)


def test_result_is_a_snapshot_of_the_parameters():
    net, xn = _net(), _x(50)
    res = net(da.from_array(xn, chunks=25), laplacian=True)
    ref = net(xn, laplacian=True).laplacian
    net.load_state_dict({k: 2 * np.asarray(v) for k, v in net.state_dict().items()})
    assert rel(res.laplacian.compute(scheduler="sync"), ref) <= RTOL


def test_dask_operations_compose(scheduler):
    net, xn = _net(), _x()
    res = net(da.from_array(xn, chunks=(CHUNKS, 3)), laplacian=True)
    ref = net(xn, laplacian=True).laplacian
    mean = res.laplacian.mean(axis=0)
    hist, _ = da.histogram(res.laplacian[:, 0], bins=8, range=(-3.0, 3.0))
    top = (res.laplacian[:, 1] ** 2).sum()
    m, h, t = dask.compute(mean, hist, top)
    np.testing.assert_allclose(m, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(h, np.histogram(ref[:, 0], bins=8, range=(-3.0, 3.0))[0])
    np.testing.assert_allclose(t, (ref[:, 1] ** 2).sum(), rtol=1e-12)


def _watched(xn, chunks):
    """A dask x whose chunks record when they are produced (nothing may be computed on bad input)."""
    seen = []

    def mark(b):
        seen.append(b.shape)
        return b

    return da.from_array(xn, chunks=chunks).map_blocks(mark, meta=np.empty((0, 0), dtype=xn.dtype)), seen


def test_bad_input_errors_before_anything_is_computed():
    net, xn = _net(), _x()
    x, seen = _watched(xn, (100, 1))
    with pytest.raises(ValueError, match=r"rechunk\(\{1: -1\}\)"):
        net(x, laplacian=True)
    x, seen = _watched(xn, (100, 3))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        net(x[:, :2], laplacian=True)
    with pytest.raises(TypeError, match="real floating"):
        net(da.from_array(np.ones((10, 3), dtype=np.int64), chunks=5), laplacian=True)
    with pytest.raises(TypeError, match="dask array"):
        net(x, gradient=True, directions=da.from_array(np.eye(3)))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="directions must be a NumPy array"):
        net(x, gradient=True, directions=torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        net(x, gradient=True, directions=np.ones((5, 2)), mode="forward")
    with pytest.raises(ValueError):
        net(x, gradient=True, mode="sideways")
    unknown = da.from_array(xn, chunks=(100, 3))
    unknown = unknown[unknown[:, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        net(unknown, laplacian=True)
    assert seen == []


def test_chunks_of_another_dtype_or_library_fail_clearly():
    net, xn = _net(), _x(60)
    parts = [
        da.from_delayed(dask.delayed(xn[:30]), shape=(30, 3), dtype=np.float64),
        da.from_delayed(dask.delayed(xn[30:].astype(np.float32)), shape=(30, 3), dtype=np.float64),
    ]
    x = da.concatenate(parts)
    with pytest.raises(TypeError, match="chunk 1 of x has dtype float32"):
        net(x, laplacian=True).laplacian.compute(scheduler="sync")
    torch = pytest.importorskip("torch")
    mixed = da.concatenate(
        [parts[0], da.from_delayed(dask.delayed(torch.from_numpy(xn[30:])), shape=(30, 3), dtype=np.float64)]
    )
    with pytest.raises(TypeError, match="all chunks must be one array type"):
        net(mixed, laplacian=True).laplacian.compute(scheduler="sync")


# --------------------------------------------------------------------------
# curvature
# --------------------------------------------------------------------------


def _data(loss, n=301, seed=0, chunks=CHUNKS):
    net = hq.NN(hq.SingleLayer(3, 5, act="tanh", seed=4), hq.SingleLayer(5, 3, act="identity", seed=5))
    xn = _x(n, 3, seed)
    rng = np.random.default_rng(seed + 1)
    yn = rng.integers(0, 3, n) if loss.startswith("cross") else rng.standard_normal((n, 3))
    x = da.from_array(xn, chunks=(chunks, 3))
    y = da.from_array(yn, chunks=(chunks,) + ((3,) if yn.ndim == 2 else ()))
    return net, x, y, xn, yn


LOSSES = [cv.CrossEntropyLoss(), cv.MSELoss(), cv.MSELoss(reduction="sum")]


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_value_gradient_products_match_in_memory(loss, scheduler):
    net, x, y, xn, yn = _data("cross" if isinstance(loss, cv.CrossEntropyLoss) else "mse")
    v0, g0 = cv.value_and_gradient(net, xn, yn, loss)
    v, g = cv.value_and_gradient(net, x, y, loss)
    assert isinstance(g, da.Array) and v.shape == () and g.shape == g0.shape
    P = g0.shape[0]
    V = np.random.default_rng(7).standard_normal((P, 3))
    lazy = [v, g]
    refs = [v0, g0]
    for fn in (cv.hvp, cv.ggn_vp, cv.empirical_fisher_vp):
        lazy += [fn(net, x, y, loss, V[:, 0]), fn(net, x, y, loss, V), fn(net, x, y, loss, da.from_array(V))]
        r = fn(net, xn, yn, loss, V)
        refs += [r[:, 0], r, r]
    got = dask.compute(*lazy)
    for a, b in zip(got, refs):
        assert a.shape == b.shape
        assert rel(a, b) <= RTOL


def test_dense_matrices_and_per_example_gradients(scheduler):
    loss = cv.CrossEntropyLoss()
    net, x, y, xn, yn = _data("cross")
    A = cv.per_example_gradients(net, x, y, loss)
    assert A.chunks[0] == CHUNKS and A.shape == (301, cv.parameter_layout(net).size)
    H, G, F, Ac = dask.compute(
        cv.hessian(net, x, y, loss), cv.ggn(net, x, y, loss), cv.empirical_fisher(net, x, y, loss), A
    )
    assert rel(H, cv.hessian(net, xn, yn, loss)) <= RTOL
    assert rel(G, cv.ggn(net, xn, yn, loss)) <= RTOL
    assert rel(F, cv.empirical_fisher(net, xn, yn, loss)) <= RTOL
    assert rel(Ac, cv.per_example_gradients(net, xn, yn, loss)) <= RTOL
    # the options reach each chunk's in-memory call (results are exact either way)
    Hb = cv.hessian(net, x, y, loss, batch_size=16, block_size=5).compute()
    assert rel(Hb, H) <= RTOL


def test_products_are_tree_reductions():
    net, x, y, *_ = _data("mse", n=2000, chunks=100)  # 20 chunks
    out = cv.hvp(net, x, y, "mse", np.ones(cv.parameter_layout(net).size))
    names = {k[0] if isinstance(k, tuple) else k for k in dict(out.__dask_graph__())}
    assert sum(n.endswith("-chunk") for n in names) == 1
    g = dict(out.__dask_graph__())
    assert len([k for k in g if isinstance(k, tuple) and k[0].endswith("-chunk")]) == 20
    assert len([k for k in g if isinstance(k, tuple) and k[0].endswith("-sum0")]) == 3  # ceil(20 / 8)
    assert len([k for k in g if isinstance(k, tuple) and k[0].endswith("-sum1")]) == 1


def test_operator_products_through_the_cluster(client):
    loss = cv.CrossEntropyLoss()
    net, x, y, xn, yn = _data("cross")
    with dask.config.set(scheduler=client):
        op, ref = cv.hessian_operator(net, x, y, loss), cv.hessian_operator(net, xn, yn, loss)
        v = np.random.default_rng(3).standard_normal(op.size)
        out = op @ v
        assert isinstance(out, np.ndarray) and rel(out, ref @ v) <= RTOL
        assert rel(op.quadratic_form(v), ref.quadratic_form(v)) <= RTOL
        gop, gref = cv.ggn_operator(net, x, y, loss), cv.ggn_operator(net, xn, yn, loss)
        t, rt = cv.hutchpp_trace(gop, 12, seed=2), cv.hutchpp_trace(gref, 12, seed=2)
        assert abs(t.value - rt.value) <= 1e-10 * abs(rt.value)


def test_operators_and_spectra_match_in_memory():
    """The spectral routines on distributed operators (threaded scheduler: many small products)."""
    loss = cv.CrossEntropyLoss()
    net, x, y, xn, yn = _data("cross")
    with dask.config.set(scheduler="threads"):
        _spectra(net, x, y, xn, yn, loss)


def _spectra(net, x, y, xn, yn, loss):
    op, ref = cv.hessian_operator(net, x, y, loss), cv.hessian_operator(net, xn, yn, loss)
    v = np.random.default_rng(3).standard_normal(op.size)
    assert rel(op @ v, ref @ v) <= RTOL
    vals, vecs = cv.top_eigenpairs(op, 3)
    rvals, rvecs = cv.top_eigenpairs(ref, 3)
    assert rel(vals, rvals) <= 1e-10
    assert np.allclose(np.abs(vecs.T @ rvecs), np.eye(3), atol=1e-6)
    t, rt = cv.hutchinson_trace(op, 6, seed=1), cv.hutchinson_trace(ref, 6, seed=1)
    assert abs(t.value - rt.value) <= 1e-10 * abs(rt.value)
    gop, gref = cv.ggn_operator(net, x, y, loss), cv.ggn_operator(net, xn, yn, loss)
    t, rt = cv.hutchpp_trace(gop, 12, seed=2), cv.hutchpp_trace(gref, 12, seed=2)
    assert abs(t.value - rt.value) <= 1e-10 * abs(rt.value)
    dens = cv.spectral_density(gop, n_vectors=2, n_steps=6, seed=0)
    rdens = cv.spectral_density(gref, n_vectors=2, n_steps=6, seed=0)
    np.testing.assert_allclose(dens.nodes, rdens.nodes, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dens.weights, rdens.weights, rtol=1e-8, atol=1e-12)
    ev, _, _ = cv.empirical_fisher_eigenpairs(net, x, y, loss, 2, seed=0)
    rev, _, _ = cv.empirical_fisher_eigenpairs(net, xn, yn, loss, 2, method="randomized", seed=0)
    assert rel(ev, rev) <= 1e-10


def test_curvature_bad_input_before_anything_is_computed():
    loss = cv.MSELoss()
    net, _, _, xn, yn = _data("mse")
    x, seen = _watched(xn, (CHUNKS, 3))
    y = da.from_array(yn, chunks=(CHUNKS, 3))
    with pytest.raises(TypeError, match="both be dask arrays"):
        cv.value_and_gradient(net, x, yn, loss)
    with pytest.raises(TypeError, match="both be dask arrays"):
        cv.hvp(net, xn, y, loss, np.ones(38))
    with pytest.raises(ValueError, match=r"chunked like x along axis 0.*rechunk\(\{0: x.chunks\[0\]\}\)"):
        cv.gradient(net, x, y.rechunk((100, 3)), loss)
    with pytest.raises(ValueError, match=r"y = y.rechunk\(\{1: -1\}\)"):
        cv.gradient(net, x, y.rechunk((CHUNKS, 1)), loss)
    with pytest.raises(ValueError, match="301 rows"):
        cv.gradient(net, x, y[:300], loss)
    with pytest.raises(ValueError):  # MSE targets of the wrong width: the in-memory check, on the client
        cv.gradient(net, x, y[:, :2], loss)
    op = cv.ggn_operator(net, x, y, loss)
    with pytest.raises(ValueError, match=r"V must have shape \(38, k\)"):
        op.lazy_matmat(np.ones((5, 1)))
    with pytest.raises(ValueError, match="randomized"):
        cv.empirical_fisher_eigenpairs(net, x, y, loss, 2, method="incremental")
    assert seen == []


# --------------------------------------------------------------------------
# a real cluster: lost workers
# --------------------------------------------------------------------------


def test_worker_killed_mid_computation_result_complete(client):
    net, xn = _net(), _x(4000, seed=5)
    slow = da.from_array(xn, chunks=(100, 3)).map_blocks(lambda b: (time.sleep(0.05), b)[1], dtype=xn.dtype)
    res = net(slow, gradient=True, laplacian=True)
    before = client.run(os.getpid)
    futs = client.compute([res.gradient, res.laplacian])
    # wait until the cluster is busy with the 40 chunks, then kill one worker process
    deadline = time.monotonic() + 30
    while not any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert not all(f.done() for f in futs)
    victim = sorted(before)[0]
    os.kill(before[victim], signal.SIGKILL)
    g, lap = client.gather(futs, errors="raise")
    ref = net(xn, gradient=True, laplacian=True)
    assert rel(g, ref.gradient) <= RTOL and rel(lap, ref.laplacian) <= RTOL
    # the nanny brought a fresh process up in place of the killed one
    client.wait_for_workers(2, timeout=60)
    assert before[victim] not in client.run(os.getpid).values()

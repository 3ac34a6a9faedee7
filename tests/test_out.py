"""``net(x, ..., out=...)`` and ``net.empty_result``: preallocated result buffers,
and chunked results assembled in place on every backend."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import hessquik_core as hq
import hessquik_core.engine.plan as plan

FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal", "divergence")
KW = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)


def _net(d=4, m=2):
    return hq.NN(hq.SingleLayer(d, 6, act="tanh", seed=0), hq.ResnetNN(6, 2, h=0.5, act="tanh", seed=1),
                 hq.SingleLayer(6, m, act="identity", seed=2))  # fmt: skip


def _x(n=40, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def _count_runs(monkeypatch):
    calls = []
    real = plan._run
    monkeypatch.setattr(plan, "_run", lambda leaves, ctx: calls.append(ctx.x.shape[0]) or real(leaves, ctx))
    return calls


def _requested(res):
    return [f for f in FIELDS if getattr(res, f) is not None]


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("chunked", [False, True])
def test_out_is_filled_in_place_and_returned(lib, mode, chunked, monkeypatch):
    if lib.name == "jax":
        pytest.skip("JAX arrays are immutable: out= is refused (test_out_refuses_immutable_jax)")
    net, xn = _net(), _x()
    x = lib.asarray(xn)
    kw = dict(KW, mode=mode, backend=lib.backend)
    if chunked:
        kw["max_memory"] = net.cost(40, hessian=True).routes[mode].peak_bytes / 5
    want = net(x, **kw)
    out = net.empty_result(x, **{k: v for k, v in kw.items() if k != "max_memory"})
    assert _requested(out) == _requested(want)
    for f in _requested(out):
        lib.check(getattr(out, f), getattr(want, f).shape, x)
    bufs = {f: getattr(out, f) for f in _requested(out)}
    calls = _count_runs(monkeypatch)
    res = net(x, **kw, out=out)
    assert res is out and res.mode == mode
    assert (len(calls) >= 5) if chunked else (calls == [40])
    for f, buf in bufs.items():
        assert getattr(res, f) is buf  # the caller's arrays, not copies
        # identical to the same call without out= (same chunks, same arithmetic)
        np.testing.assert_array_equal(lib.to_numpy(buf), lib.to_numpy(getattr(want, f)))
    # a second call with other inputs refills the same buffers
    x2 = lib.asarray(_x(seed=1))
    res2 = net(x2, **kw, out=out)
    assert res2 is out and res2.hessian is bufs["hessian"]
    np.testing.assert_allclose(
        lib.to_numpy(res2.hessian), lib.to_numpy(net(x2, **KW).hessian), rtol=1e-12, atol=1e-14
    )
    # unpacking yields exactly the requested quantities, like any result
    assert len(list(res2)) == len(bufs)


def test_previous_result_as_out_and_unpacking():
    net, x = _net(), _x()
    res = net(x, gradient=True, hessian=True)
    h = res.hessian
    x2 = _x(seed=3)
    f, g, H = net(x2, gradient=True, hessian=True, out=res)
    assert H is h
    np.testing.assert_allclose(H, net(x2, gradient=True, hessian=True).hessian, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("backend", [None, "torch", "generic"])
def test_single_point(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    net, xs = _net(), _x()[3]
    out = net.empty_result(xs, **KW, backend=backend)
    assert out.value.shape == (2,) and out.hessian.shape == (4, 4, 2) and isinstance(out.value, np.ndarray)
    res = net(xs, **KW, out=out, backend=backend)
    want = net(xs, **KW, backend=backend)
    assert res is out
    for f in _requested(want):
        np.testing.assert_allclose(getattr(res, f), getattr(want, f), rtol=1e-13, atol=1e-15)


def test_converted_backend_chunked_writes_into_the_callers_arrays(monkeypatch):
    pytest.importorskip("torch")
    net, x = _net(), _x()
    budget = net.cost(40, hessian=True).routes["backward"].peak_bytes / 4
    want = net(x, **KW, mode="backward")
    out = net.empty_result(x, **KW, mode="backward", backend="torch")
    assert isinstance(out.hessian, np.ndarray)  # the caller's library, not torch
    calls = _count_runs(monkeypatch)
    res = net(x, **KW, mode="backward", backend="torch", max_memory=budget, out=out)
    assert len(calls) >= 4 and res is out
    np.testing.assert_allclose(res.hessian, want.hessian, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("mode,vshape", [("forward", (4, 2)), ("backward", (2, 3))])
def test_directions(mode, vshape):
    net, x = _net(), _x()
    V = np.random.default_rng(5).standard_normal(vshape)
    want = net(x, gradient=True, hessian=True, directions=V, mode=mode)
    out = net.empty_result(x, gradient=True, hessian=True, directions=V, mode=mode)
    assert out.hessian.shape == want.hessian.shape and out.gradient.shape == want.gradient.shape
    net(x, gradient=True, hessian=True, directions=V, mode=mode, out=out)
    np.testing.assert_array_equal(out.hessian, want.hessian)
    np.testing.assert_array_equal(out.gradient, want.gradient)


def test_empty_result_has_the_routes_layout():
    net, x = _net(), _x()
    out = net.empty_result(x, gradient=True, hessian=True, mode="backward")
    res = net(x, gradient=True, hessian=True, mode="backward")
    assert out.hessian.strides == res.hessian.strides and out.gradient.strides == res.gradient.strides


# ---------------------------------------------------------------------------
# refusals: before any work, saying what was expected and what was given
# ---------------------------------------------------------------------------


def _no_run(monkeypatch):
    monkeypatch.setattr(plan, "_run", lambda leaves, ctx: pytest.fail("a layer ran"))


def test_out_must_match_the_request(monkeypatch):
    net, x = _net(), _x()
    good = net.empty_result(x, gradient=True, hessian=True)
    _no_run(monkeypatch)
    with pytest.raises(TypeError, match="out must be a hessquik_core.Result.*got dict"):
        net(x, gradient=True, out={"value": good.value})
    with pytest.raises(ValueError, match=r"out.hessian is None, but this call computes hessian"):
        net(x, gradient=True, hessian=True, out=net.empty_result(x, gradient=True))
    with pytest.raises(ValueError, match=r"out holds hessian, which this call does not compute"):
        net(x, gradient=True, out=good)
    bad = net.empty_result(x, gradient=True)
    bad.gradient = np.empty((40, 4, 3))
    with pytest.raises(ValueError, match=r"out.gradient must have shape \(40, 4, 2\), got \(40, 4, 3\)"):
        net(x, gradient=True, out=bad)
    bad.gradient = np.empty((40, 4, 2), dtype=np.float32)
    with pytest.raises(TypeError, match="out.gradient must have x's dtype float64, got float32"):
        net(x, gradient=True, out=bad)
    bad.gradient = [[0.0]]
    with pytest.raises(TypeError, match="out.gradient must be an array of x's library.*got builtins.list"):
        net(x, gradient=True, out=bad)
    ro = np.empty((40, 4, 2))
    ro.flags.writeable = False
    bad.gradient = ro
    with pytest.raises(ValueError, match="out.gradient cannot be written in place: it is read-only"):
        net(x, gradient=True, out=bad)
    single = net.empty_result(x[0], gradient=True)
    with pytest.raises(ValueError, match=r"out.value must have shape \(40, 2\), got \(2,\)"):
        net(x, gradient=True, out=single)
    with pytest.raises(ValueError, match=r"out.value must have shape \(2,\), got \(40, 2\)"):
        net(x[0], gradient=True, out=net.empty_result(x, gradient=True))


def test_out_of_another_library_or_device(monkeypatch):
    torch = pytest.importorskip("torch")
    net, x = _net(), _x()
    _no_run(monkeypatch)
    bad = net.empty_result(x)
    bad.value = torch.empty((40, 2), dtype=torch.float64)
    with pytest.raises(TypeError, match="out.value must be an array of x's library"):
        net(x, out=bad)
    xt = torch.from_numpy(x)
    meta = hq.Result(value=torch.empty((40, 2), dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="out.value must be on x's device cpu, got meta"):
        net(xt, out=meta)


def test_out_sharing_memory_is_refused(monkeypatch):
    net = hq.FullyConnectedNN([3, 5, 3], act="tanh", seed=0)  # d == m
    x = _x(10, 3)
    _no_run(monkeypatch)
    with pytest.raises(ValueError, match="out.value shares memory with x"):
        net(x, out=hq.Result(value=x))
    big = np.empty((10, 3, 2))
    with pytest.raises(ValueError, match="out.value shares memory with x"):
        net(big[:, :, 0], out=hq.Result(value=big[:, :, 1][:, ::-1]))  # interleaved views
    out = net.empty_result(x, gradient=True, hessian_diagonal=True)
    out.hessian_diagonal = out.gradient
    with pytest.raises(ValueError, match="out.hessian_diagonal shares memory with out.gradient"):
        net(x, gradient=True, hessian_diagonal=True, out=out)
    V = np.zeros((3, 30))  # forward directions (d, k)
    out = hq.Result(value=V.reshape(-1)[:30].reshape(10, 3), gradient=np.empty((10, 30, 3)))
    with pytest.raises(ValueError, match="out.value shares memory with directions"):
        net(x, gradient=True, directions=V, out=out)


def test_out_sharing_memory_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    net = hq.FullyConnectedNN([3, 5, 3], act="tanh", seed=0)
    x = torch.zeros((10, 3), dtype=torch.float64)
    _no_run(monkeypatch)
    with pytest.raises(ValueError, match="out.value shares memory with x"):
        net(x, out=hq.Result(value=x.view(10, 3)))
    # disjoint halves of one storage are fine
    buf = torch.empty((20, 3), dtype=torch.float64)
    monkeypatch.undo()
    res = net(buf[:10].zero_(), out=hq.Result(value=buf[10:]))
    assert torch.equal(res.value, net(torch.zeros((10, 3), dtype=torch.float64)).value)


def test_out_refused_under_autograd():
    torch = pytest.importorskip("torch")
    net = _net()
    x = torch.from_numpy(_x()).requires_grad_(True)
    out = net.empty_result(x, laplacian=True)
    with pytest.raises(ValueError, match="autograd records the call.*torch.no_grad"):
        net(x, laplacian=True, out=out)
    with torch.no_grad():
        assert net(x, laplacian=True, out=out) is out
    out.value.requires_grad_(True)
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match="out.value cannot be written in place: it requires grad"),
    ):
        net(x, laplacian=True, out=out)


def test_out_refuses_immutable_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    net = _net()
    x = jnp.asarray(_x().astype(np.float32))
    out = net.empty_result(x, gradient=True)
    assert out.gradient.shape == (40, 4, 2)
    with pytest.raises(TypeError, match="out.value cannot be written in place: .*jax.* arrays are immutable"):
        net(x, gradient=True, out=out)


def test_out_refuses_dask():
    da = pytest.importorskip("dask.array")
    net = _net()
    x = da.from_array(_x(), chunks=(20, 4))
    with pytest.raises(TypeError, match="out= is not supported for Dask arrays"):
        net(x, out=net.empty_result(_x()))
    with pytest.raises(TypeError, match="empty_result does not take Dask arrays"):
        net.empty_result(x)


# ---------------------------------------------------------------------------
# results larger than memory; chunks assembled in place on every backend
# ---------------------------------------------------------------------------


def test_result_refusal_names_out_and_a_memmap_out_fits(monkeypatch, tmp_path):
    from hessquik_core.backends.base import Backend

    net = hq.FullyConnectedNN([256, 4, 1], act="tanh", seed=0)
    x = _x(300, 256)  # Hessian: 300 x 256^2 x 8 B = 150 MiB
    monkeypatch.setattr(Backend, "available_memory", lambda self, device: 100 * 2**20)
    with pytest.raises(hq.MemoryBudgetError, match=r"150\.0 MiB.*out= buffers.*open_memmap"):
        net(x, hessian=True)
    out = hq.Result(
        value=np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", shape=(300, 1)),
        hessian=np.lib.format.open_memmap(tmp_path / "h.npy", mode="w+", shape=(300, 256, 256, 1)),
    )
    calls = _count_runs(monkeypatch)
    res = net(x, hessian=True, out=out)
    assert res is out and len(calls) > 1  # chunks of the 50 MiB working budget
    out.hessian.flush()
    monkeypatch.undo()
    want = net(x[:7], hessian=True).hessian
    np.testing.assert_allclose(np.load(tmp_path / "h.npy", mmap_mode="r")[:7], want, rtol=1e-13, atol=1e-15)


def _chunk_call(net, x, **kw):
    budget = net.cost(x.shape[0], hessian=True).routes["backward"].peak_bytes / 8
    return net(x, hessian=True, mode="backward", max_memory=budget, **kw)


@pytest.mark.parametrize("backend", [None, "generic"])
def test_chunks_are_assembled_in_place_numpy_peak(backend):
    """The peak of a chunked call is the result plus one chunk's work, not the
    result twice (which concatenating the chunks would need)."""
    net = hq.FullyConnectedNN([64, 4, 1], act="tanh", seed=0)
    x = _x(2000, 64)
    result_bytes = 2000 * 64 * 64 * 8  # 62.5 MiB Hessian
    _chunk_call(net, x[:10], backend=backend)  # warm caches
    tracemalloc.start()
    try:
        res = _chunk_call(net, x, backend=backend)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.hessian.shape == (2000, 64, 64, 1)
    assert peak < 1.4 * result_bytes, peak / result_bytes


def test_chunks_are_assembled_in_place_strict_peak():
    xps = pytest.importorskip("array_api_strict")
    net = hq.FullyConnectedNN([64, 4, 1], act="tanh", seed=0)
    x = xps.asarray(_x(2000, 64))
    tracemalloc.start()
    try:
        res = _chunk_call(net, x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.hessian.shape == (2000, 64, 64, 1)
    assert peak < 1.4 * 2000 * 64 * 64 * 8


def test_chunks_are_not_concatenated_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as tx

    net = _net()
    x = torch.from_numpy(_x(200))
    whole = net(x, hessian=True, mode="backward")

    def no_concat(*args, **kwargs):
        raise AssertionError("chunked results must not be concatenated")

    monkeypatch.setattr(torch, "cat", no_concat)
    monkeypatch.setattr(torch, "concat", no_concat)
    monkeypatch.setattr(tx, "concat", no_concat)
    calls = _count_runs(monkeypatch)
    res = _chunk_call(net, x)
    assert len(calls) >= 8
    torch.testing.assert_close(res.hessian, whole.hessian, rtol=1e-13, atol=1e-15)


def test_chunks_are_written_in_place_jax(monkeypatch):
    """JAX: each chunk goes into a donated buffer (dynamic_update_slice), never a concatenation."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    net = _net()
    x = jnp.asarray(_x(200))
    whole = net(x, hessian=True, mode="backward")

    def no_concat(*args, **kwargs):
        raise AssertionError("chunked results must not be concatenated")

    monkeypatch.setattr(jnp, "concat", no_concat)
    monkeypatch.setattr(jnp, "concatenate", no_concat)
    calls = _count_runs(monkeypatch)
    res = _chunk_call(net, x)
    assert len(calls) >= 8
    np.testing.assert_allclose(np.asarray(res.hessian), np.asarray(whole.hessian), rtol=1e-13, atol=1e-15)
    # under jax.jit too (the update is traced, XLA plans the buffer)
    monkeypatch.undo()
    budget = net.cost(200, hessian=True).routes["backward"].peak_bytes / 8
    f = jax.jit(lambda x: net(x, hessian=True, mode="backward", max_memory=budget).hessian)
    np.testing.assert_allclose(np.asarray(f(x)), np.asarray(whole.hessian), rtol=1e-13, atol=1e-15)


def test_set_rows_donates_the_jax_buffer():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from hessquik_core.backends import get_backend

    be = get_backend("generic").bind(jax.numpy)
    buf = jnp.zeros((10, 3), dtype=jnp.float32)
    ptr = buf.unsafe_buffer_pointer()
    buf2 = be.set_rows(buf, 4, jnp.ones((2, 3), dtype=jnp.float32))
    assert buf2.unsafe_buffer_pointer() == ptr and buf.is_deleted()
    np.testing.assert_array_equal(np.asarray(buf2).sum(axis=1), [0, 0, 0, 0, 3, 3, 0, 0, 0, 0])


def test_docs_example_runs():
    """The ``out=`` block of docs/second_order.md runs as printed."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "second_order.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page, re.S | re.M) if "empty_result" in b]
    assert len(blocks) == 1
    ns: dict = {}
    exec(compile(blocks[0], "docs/second_order.md", "exec"), ns)
    assert ns["H"] is ns["out"].hessian and ns["H"].shape == (500, 64, 64, 1)

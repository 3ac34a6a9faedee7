"""Second-order quantities beyond the full Hessian (issue 3): diagonal,
Laplacian in both modes, directional diagonal, weighted Laplacian,
Hutchinson estimates, divergence, symmetric packing, cost model, memory
governance. Every quantity is checked against the full Hessian/Jacobian
computed by the same engine in the other mode, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.engine.forward import _packs


def _nets(d, m, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "mlp": hq.FullyConnectedNN([d, 7, 5, m], act="tanh", seed=rng),
        "resnet": hq.NN(
            hq.SingleLayer(d, 6, act="antitanh", seed=rng),
            hq.ResnetNN(6, 2, h=0.5, act="softplus", seed=rng),
            hq.SingleLayer(6, m, act="sigmoid", seed=rng),
        ),
        "icnn": hq.NN(
            hq.ICNN(d, [None, 5, 4], act="softplus", seed=rng), hq.QuadraticICNNLayer(d, 4, 3, seed=rng)
        ),
        "quad": hq.NN(hq.SingleLayer(d, 5, act="silu", seed=rng), hq.QuadraticLayer(5, 2, seed=rng)),
    }


def _close(a, b, scale=None, rtol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b)))) if scale is None else scale
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("name", ["mlp", "resnet", "icnn", "quad"])
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_diagonal_and_laplacian_match_full_hessian(lib, name, mode):
    d = 5
    net = _nets(d, 3)[name]
    xn = np.random.default_rng(1).standard_normal((4, d))
    full = net(xn, hessian=True, mode="forward").hessian  # (n, d, d, m) reference
    x = lib.asarray(xn)
    res = net(x, laplacian=True, hessian_diagonal=True, mode=mode, backend=lib.backend)
    m = net.out_features
    lib.check(res.laplacian, (4, m), like=x)
    lib.check(res.hessian_diagonal, (4, d, m), like=x)
    assert res.hessian is None and res.gradient is None
    _close(lib.to_numpy(res.hessian_diagonal), np.einsum("niim->nim", full))
    _close(lib.to_numpy(res.laplacian), np.einsum("niim->nm", full))


@pytest.mark.parametrize("name", ["mlp", "resnet", "icnn"])
def test_directional_diagonal_is_diag_of_VtHV(lib, name):
    d, k = 5, 3
    net = _nets(d, 2)[name]
    rng = np.random.default_rng(2)
    xn, V = rng.standard_normal((3, d)), rng.standard_normal((d, k))
    H = net(xn, hessian=True).hessian
    x = lib.asarray(xn)
    res = net(x, hessian_diagonal=True, laplacian=True, directions=lib.asarray(V), backend=lib.backend)
    assert res.mode == "forward"
    m = net.out_features
    lib.check(res.hessian_diagonal, (3, k, m), like=x)
    VHV = np.einsum("ia,nijm,jb->nabm", V, H, V)
    _close(lib.to_numpy(res.hessian_diagonal), np.einsum("naam->nam", VHV))
    _close(lib.to_numpy(res.laplacian), np.einsum("naam->nm", VHV))


def test_weighted_laplacian_is_trace_AH(lib):
    d = 6
    net = _nets(d, 2)["resnet"]
    rng = np.random.default_rng(3)
    xn, S = rng.standard_normal((4, d)), rng.standard_normal((d, 4))
    H = net(xn, hessian=True).hessian
    x = lib.asarray(xn)
    out = hq.weighted_laplacian(net, x, lib.asarray(S), backend=lib.backend)
    lib.check(out, (4, 2), like=x)
    _close(lib.to_numpy(out), np.einsum("ij,nijm->nm", S @ S.T, H))


def test_weighted_laplacian_identity_is_laplacian():
    net = _nets(4, 1)["mlp"]
    x = np.random.default_rng(4).standard_normal((5, 4))
    _close(hq.weighted_laplacian(net, x, np.eye(4)), net(x, laplacian=True).laplacian)


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_divergence_exact(lib, name):
    d = 4
    net = _nets(d, d)[name]
    xn = np.random.default_rng(5).standard_normal((6, d))
    J = net(xn, gradient=True).gradient
    x = lib.asarray(xn)
    for mode in ("forward", "backward"):
        res = net(x, divergence=True, mode=mode, backend=lib.backend)
        lib.check(res.divergence, (6,), like=x)
        assert res.gradient is None
        _close(lib.to_numpy(res.divergence), np.trace(J, axis1=1, axis2=2))


def test_divergence_requires_square():
    net = _nets(4, 2)["mlp"]
    with pytest.raises(ValueError, match="d == m"):
        net(np.zeros((1, 4)), divergence=True)
    with pytest.raises(ValueError, match="d == m"):
        hq.divergence_estimate(net, np.zeros((1, 4)), 4)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_laplacian_estimate_unbiased_and_error_shrinks(distribution):
    d = 12
    net = hq.FullyConnectedNN([d, 10, 10, 2], act="tanh", seed=7)
    x = np.random.default_rng(8).standard_normal((5, d))
    exact = net(x, laplacian=True).laplacian
    # unbiased: the mean of R independent estimates converges to the exact value;
    # judged by a z-score against the spread of those estimates (fixed seeds)
    R, k = 200, 8
    ests = np.stack(
        [hq.laplacian_estimate(net, x, k, seed=s, distribution=distribution).value for s in range(R)]
    )
    z = (ests.mean(0) - exact) / (ests.std(0, ddof=1) / np.sqrt(R))
    assert np.all(np.abs(z) < 4.5), z
    # the reported standard error shrinks like 1/sqrt(k) ...
    se = {
        k: hq.laplacian_estimate(net, x, k, seed=1, distribution=distribution).stderr.mean()
        for k in (64, 4096)
    }
    assert 0.6 / 8 < se[4096] / se[64] < 1.6 / 8
    # ... and describes the actual error
    big = hq.laplacian_estimate(net, x, 4096, seed=2, distribution=distribution)
    assert np.all(np.abs(big.value - exact) < 5 * big.stderr + 1e-12)


def test_divergence_estimate_unbiased():
    net = hq.ResnetNN(6, 3, h=0.5, act="tanh", seed=1)
    x = np.random.default_rng(3).standard_normal((5, 6))
    exact = net(x, divergence=True).divergence
    ests = np.stack([hq.divergence_estimate(net, x, 8, seed=s).value for s in range(200)])
    z = (ests.mean(0) - exact) / (ests.std(0, ddof=1) / np.sqrt(200))
    assert np.all(np.abs(z) < 4.5), z


def test_estimates_on_every_backend(lib):
    net = hq.FullyConnectedNN([6, 8, 2], act="tanh", seed=3)
    xn = np.random.default_rng(4).standard_normal((3, 6))
    x = lib.asarray(xn)
    e = hq.laplacian_estimate(net, x, 16, seed=5, backend=lib.backend)
    lib.check(e.value, (3, 2), like=x)
    lib.check(e.stderr, (3, 2), like=x)
    ref = hq.laplacian_estimate(net, xn, 16, seed=5)  # same probes
    _close(lib.to_numpy(e.value), ref.value)
    sq = hq.ResnetNN(4, 2, act="tanh", seed=1)
    x4 = lib.asarray(xn[:, :4])
    e = hq.divergence_estimate(sq, x4, 16, seed=5, backend=lib.backend)
    lib.check(e.value, (3,), like=x4)
    _close(lib.to_numpy(e.value), hq.divergence_estimate(sq, xn[:, :4], 16, seed=5).value)


@pytest.mark.parametrize("bad", [1, 0, 2.5, True])
def test_estimate_rejects_bad_num_samples(bad):
    net = _nets(3, 1)["mlp"]
    with pytest.raises(ValueError, match="num_samples"):
        hq.laplacian_estimate(net, np.zeros((1, 3)), bad)


def test_estimate_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="distribution"):
        hq.laplacian_estimate(_nets(3, 1)["mlp"], np.zeros((1, 3)), 4, distribution="uniform")


@pytest.mark.parametrize("name", ["mlp", "resnet", "icnn", "quad"])
def test_packed_forward_hessian_equals_unpacked(name, monkeypatch):
    d = 6  # >= 4: packed by default
    assert _packs(d)
    net = _nets(d, 2)[name]
    x = np.random.default_rng(6).standard_normal((3, d))
    packed = net(x, hessian=True, laplacian=True, mode="forward")
    monkeypatch.setattr("hessquik_core.engine.forward._packs", lambda k: False)
    full = net(x, hessian=True, laplacian=True, mode="forward")
    _close(packed.hessian, full.hessian)
    _close(packed.laplacian, full.laplacian)
    np.testing.assert_array_equal(packed.hessian, np.swapaxes(packed.hessian, 1, 2))


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_chunked_call_is_identical(lib, mode):
    net = _nets(5, 2)["resnet"]
    xn = np.random.default_rng(9).standard_normal((23, 5))
    x = lib.asarray(xn)
    whole = net(x, gradient=True, hessian=True, laplacian=True, mode=mode, backend=lib.backend)
    route = net.cost(23, hessian=True, laplacian=True).routes[mode]
    budget = route.peak_bytes / 4  # forces at least 4 chunks
    assert route.per_example_bytes < budget
    chunked = net(
        x, gradient=True, hessian=True, laplacian=True, mode=mode, backend=lib.backend, max_memory=budget
    )
    for name in ("value", "gradient", "hessian", "laplacian"):
        a, b = getattr(chunked, name), getattr(whole, name)
        lib.check(a, b.shape, like=x)
        if lib.name == "jax":
            # XLA chooses its dot kernel by shape, so a smaller batch may round
            # differently in the last bit; every other library is bitwise equal
            np.testing.assert_allclose(lib.to_numpy(a), lib.to_numpy(b), rtol=4e-16, atol=4e-16)
        else:
            np.testing.assert_array_equal(lib.to_numpy(a), lib.to_numpy(b))


def test_chunking_really_splits(monkeypatch):
    import hessquik_core.engine.plan as nw

    calls = []
    real = nw._run
    monkeypatch.setattr(nw, "_run", lambda leaves, ctx: calls.append(ctx.x.shape[0]) or real(leaves, ctx))
    net = _nets(5, 2)["mlp"]
    x = np.random.default_rng(1).standard_normal((40, 5))
    route = net.cost(40, hessian=True).routes["backward"]
    net(x, hessian=True, mode="backward", max_memory=route.peak_bytes / 3)
    assert len(calls) >= 3 and sum(calls) == 40


def _strides(a):
    return tuple(a.stride()) if callable(getattr(a, "stride", None)) else a.strides


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_cache_blocking_splits_and_is_identical(monkeypatch, backend, mode):
    """Large eager CPU calls run in batch blocks (cache blocking); the result is
    the unblocked one, bit for bit, with the same memory layout."""
    import hessquik_core.engine.plan as nw

    if backend == "torch":
        torch = pytest.importorskip("torch")
    net = _nets(5, 3)["resnet"]
    xn = np.random.default_rng(4).standard_normal((100, 5))
    x = xn if backend == "numpy" else torch.from_numpy(xn)
    kw = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
    monkeypatch.setattr(nw, "_BLOCK_ABOVE", float("inf"))
    whole = net(x, **kw)
    calls = []
    real = nw._run
    monkeypatch.setattr(nw, "_run", lambda leaves, ctx: calls.append(ctx.x.shape[0]) or real(leaves, ctx))
    monkeypatch.setattr(nw, "_BLOCK_ABOVE", 0)
    monkeypatch.setattr(nw, "_BLOCK_TRAFFIC", 0.0)
    monkeypatch.setattr(nw, "_BLOCK_BYTES", 1)  # blocks of _BLOCK_MIN examples
    blocked = net(x, **kw)
    assert calls == [16] * 6 + [4]
    for name in ("value", "gradient", "hessian", "laplacian", "hessian_diagonal"):
        a, b = getattr(blocked, name), getattr(whole, name)
        assert type(a) is type(b) and a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
        assert _strides(a) == _strides(b), name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cache_blocking_is_off_where_it_cannot_help(monkeypatch):
    import hessquik_core.engine.plan as nw

    torch = pytest.importorskip("torch")
    net = _nets(5, 3)["resnet"]
    monkeypatch.setattr(nw, "_BLOCK_ABOVE", 0)
    monkeypatch.setattr(nw, "_BLOCK_TRAFFIC", 0.0)
    monkeypatch.setattr(nw, "_BLOCK_BYTES", 1)
    calls = []
    real = nw._run
    monkeypatch.setattr(nw, "_run", lambda leaves, ctx: calls.append(ctx.x.shape[0]) or real(leaves, ctx))
    xn = np.random.default_rng(5).standard_normal((100, 5))
    # autograd records the call: one graph over the whole batch
    net(torch.tensor(xn, requires_grad=True), hessian=True)
    # the generic backend (immutable libraries, XLA) is never blocked
    net(xn, hessian=True, backend="generic")
    # too few examples for two blocks
    net(xn[:31], hessian=True)
    assert calls == [100, 100, 31]
    # with the default thresholds a small call is not blocked either
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(nw, "_run", lambda leaves, ctx: calls.append(ctx.x.shape[0]) or real(leaves, ctx))
    net(xn, hessian=True)
    assert calls == [100]


def test_cache_blocking_triggers_on_a_benchmark_sized_call():
    """The default thresholds block the W2 ResNet at d = 32, m = 16, n = 1000
    (element-wise traffic ~20x the output), not the W1 d = 256 call whose cost
    is writing its 500 MB Hessian."""
    import hessquik_core.engine.plan as nw
    from hessquik_core._array import resolve_call

    def block(d, m):
        rng = np.random.default_rng(0)
        net = hq.NN(
            hq.SingleLayer(d, 16, act="antitanh", seed=rng),
            hq.ResnetNN(16, 4, h=0.5, act="tanh", seed=rng),
            hq.SingleLayer(16, m, seed=rng),
        )
        ctx = resolve_call(
            net,
            np.zeros((1000, d)),
            directions=None,
            mode="backward",
            backend=None,
            gradient=True,
            hessian=True,
            laplacian=False,
            hessian_diagonal=False,
            divergence=False,
        )
        leaves = list(net._leaves())
        route = net._cost(ctx, leaves, 1000, modes=("backward",)).routes["backward"]
        return nw._cache_block(ctx, leaves, route, 1000)

    assert 16 <= block(32, 16) < 100
    assert block(256, 1) == 1000


def test_memory_budget_error_states_estimate_and_limit():
    net = _nets(5, 2)["mlp"]
    with pytest.raises(hq.MemoryBudgetError, match=r"estimated .* budget of 64\.0 B"):
        net(np.zeros((3, 5)), hessian=True, max_memory=64)
    with pytest.raises(ValueError, match="max_memory"):
        net(np.zeros((3, 5)), hessian=True, max_memory=-1)


def test_cost_model_prefers_backward_for_scalar_output_and_forward_for_wide_output():
    scalar = hq.FullyConnectedNN([64, 32, 32, 1], act="tanh", seed=0)
    assert scalar.cost(1000, hessian=True).chosen == "backward"
    wide = hq.FullyConnectedNN([2, 32, 32, 64], act="tanh", seed=0)
    assert wide.cost(1000, hessian=True).chosen == "forward"
    x = np.zeros((10, 64))
    assert scalar(x, hessian=True).mode == "backward"
    assert wide(np.zeros((10, 2)), hessian=True).mode == "forward"
    text = str(scalar.cost(1000, hessian=True))
    assert "forward" in text and "backward" in text and "chosen" in text


def test_cost_model_scores_traffic_lower_under_a_fusing_compiler():
    """JAX (XLA fuses element-wise chains) is scored without the memory-traffic
    charge: at d = m = 64 the packed forward Hessian moves ~2x the bytes of
    backward but needs ~1/3 of its flops (measured traced: forward 1.7x faster;
    eager torch: backward 1.6x faster)."""
    rng = np.random.default_rng(0)
    net = hq.NN(
        hq.SingleLayer(64, 16, act="antitanh", seed=rng),
        hq.ResnetNN(16, 4, h=0.5, act="tanh", seed=rng),
        hq.SingleLayer(16, 64, seed=rng),
    )
    eager, fused = net.cost(1000, hessian=True), net.cost(1000, hessian=True, fused=True)
    assert eager.chosen == "backward" and fused.chosen == "forward"
    for mode in ("forward", "backward"):
        e, f = eager.routes[mode], fused.routes[mode]
        assert (e.flops, e.bytes_moved, e.peak_bytes) == (f.flops, f.bytes_moved, f.peak_bytes)
        assert f.score < e.score
    assert net(np.zeros((3, 64)), hessian=True).mode == net.cost(3, hessian=True).chosen
    jnp = pytest.importorskip("jax.numpy")
    assert net(jnp.zeros((1000, 64)), hessian=True).mode == "forward"


def test_backward_laplacian_cheaper_than_hessian_for_large_d():
    net = hq.FullyConnectedNN([512, 16, 16, 1], act="tanh", seed=0)
    lap = net.cost(100, gradient=False, laplacian=True)
    hess = net.cost(100, gradient=False, hessian=True)
    assert lap.routes["backward"].flops < hess.routes["backward"].flops / 10
    assert lap.chosen == "backward"
    # and the backward Laplacian never forms a d x d array per example
    assert lap.routes["backward"].per_example_bytes < 512 * 512 * 8


def test_chunked_result_is_preallocated_not_concatenated(monkeypatch):
    """NumPy chunks are written into one preallocated result (peak = output +
    one chunk), never concatenated (which would hold the output twice)."""
    import array_api_compat.numpy as xnp

    net = _nets(5, 2)["mlp"]  # no layer of this net concatenates features
    x = np.random.default_rng(2).standard_normal((30, 5))
    whole = net(x, hessian=True, mode="backward")
    route = net.cost(30, gradient=False, hessian=True).routes["backward"]

    def no_concat(*args, **kwargs):
        raise AssertionError("chunked results must not be concatenated")

    monkeypatch.setattr(xnp, "concat", no_concat)
    chunked = net(x, hessian=True, mode="backward", max_memory=route.peak_bytes / 5)
    assert chunked.hessian.flags.writeable
    np.testing.assert_array_equal(chunked.hessian, whole.hessian)


def test_jax_jit_traces_the_engine():
    """The engine is pure Array-API code, so jax.jit compiles a whole call;
    the parameter cache must not keep tracers across traces."""
    jax_mod = pytest.importorskip("jax")
    jax_mod.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    nets = _nets(4, 2)
    xn = np.random.default_rng(3).standard_normal((6, 4))
    for name in ("mlp", "resnet"):
        net = nets[name]
        f = jax_mod.jit(lambda x, net=net: tuple(net(x, gradient=True, hessian=True)))
        value, grad, hess = f(jnp.asarray(xn))
        ref = net(xn, gradient=True, hessian=True)
        _close(np.asarray(hess), ref.hessian)
        # a second, different transformation of the same network must not
        # see the first trace's cached tracers
        g = jax_mod.jit(jax_mod.grad(lambda x, net=net: net(x, laplacian=True).laplacian.sum()))
        assert np.all(np.isfinite(np.asarray(g(jnp.asarray(xn)))))
        again = net(jnp.asarray(xn), gradient=True, hessian=True)
        _close(np.asarray(again.hessian), ref.hessian)

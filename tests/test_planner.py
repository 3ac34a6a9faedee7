"""The planner (hessquik_core.engine.plan): what it chunks, what it refuses, and when."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
import hessquik_core.engine.plan as plan


def _count_runs(monkeypatch):
    calls = []
    real = plan._run
    monkeypatch.setattr(plan, "_run", lambda leaves, ctx: calls.append(ctx.x.shape[0]) or real(leaves, ctx))
    return calls


def test_value_only_is_priced_as_the_forward_pass():
    net = hq.FullyConnectedNN([10**5, 8, 1], act="tanh", seed=0)
    from hessquik_core.engine.cost import estimate

    rep = estimate(
        list(net._leaves()),
        4,
        d=10**5,
        m=1,
        hessian=False,
        laplacian=False,
        hessian_diagonal=False,
        derivatives=False,
    )
    for route in rep.routes.values():
        # live: the input and the first layer's output, n (d + w) entries
        assert route.peak_bytes == 4 * (10**5 + 8) * 8
    assert rep.request == "value"


def test_value_only_at_d_1e5_runs_unchunked(monkeypatch):
    calls = _count_runs(monkeypatch)
    net = hq.FullyConnectedNN([10**5, 8, 1], act="tanh", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 10**5))
    res = net(x)
    assert calls == [4] and res.gradient is None
    want = net(x, gradient=True, mode="forward", directions=np.zeros((10**5, 1))).value
    np.testing.assert_allclose(res.value, want, rtol=1e-13, atol=1e-13)


def test_value_only_is_never_cache_blocked(monkeypatch):
    monkeypatch.setattr(plan, "_BLOCK_ABOVE", 0)
    monkeypatch.setattr(plan, "_BLOCK_TRAFFIC", 0.0)
    monkeypatch.setattr(plan, "_BLOCK_BYTES", 1)
    calls = _count_runs(monkeypatch)
    net = hq.FullyConnectedNN([50, 16, 1], act="tanh", seed=0)
    x = np.random.default_rng(1).standard_normal((100, 50))
    net(x)
    assert calls == [100]
    net(x, gradient=True)  # with derivatives the same thresholds do block
    assert len(calls) > 2


def test_backward_estimates_at_large_d_are_size_of_x_plus_width_terms():
    d, n, w = 10**5, 256, 64
    net = hq.FullyConnectedNN([d, w, w, w, 1], act="tanh", seed=0)
    size_x = n * d * 8
    for kw in (dict(gradient=True), dict(gradient=False, laplacian=True)):
        route = net.cost(n, **kw).routes["backward"]
        assert route.peak_bytes < size_x + 40 * n * w * w * 8, kw


def _huge_hessian_net():
    return hq.FullyConnectedNN([4096, 4, 1], act="tanh", seed=0)


@pytest.mark.parametrize("backend", ["numpy", "torch", "generic"])
def test_result_that_cannot_be_allocated_is_refused_before_any_layer_runs(monkeypatch, backend):
    def boom(leaves, ctx):
        raise AssertionError("a layer ran before the refusal")

    monkeypatch.setattr(plan, "_run", boom)
    net = _huge_hessian_net()
    x = np.zeros((2, 4096))
    if backend == "torch":
        torch = pytest.importorskip("torch")
        x = torch.zeros((2, 4096), dtype=torch.float64)
    # 2 x 4096^2 x 8 B = 256 MiB of Hessian against 100 MiB of free memory
    from hessquik_core.backends.base import Backend

    monkeypatch.setattr(Backend, "available_memory", lambda self, device: 100 * 2**20)
    if backend == "torch":
        from hessquik_core.backends._torch import TorchBackend

        monkeypatch.setattr(TorchBackend, "available_memory", lambda self, device: 100 * 2**20)
    kw = dict(backend="generic") if backend == "generic" else {}
    with pytest.raises(
        hq.MemoryBudgetError, match=r"result .*hessian \(2, 4096, 4096, 1\).*256\.0 MiB.*hessian_diagonal"
    ):
        net(x, hessian=True, max_memory=2**30, **kw)
    # the Laplacian of the same call is fine (its result is n x m)
    monkeypatch.undo()
    assert net(x, laplacian=True, **kw).laplacian.shape == (2, 1)


def test_issue_example_is_refused_up_front_with_real_free_memory(monkeypatch):
    """n = 2000, d = 4096: a 250 GiB Hessian (the issue's n = 10^6 call, scaled
    so that x itself fits) is refused with the machine's real free memory."""
    monkeypatch.setattr(plan, "_run", lambda leaves, ctx: pytest.fail("ran"))
    with pytest.raises(hq.MemoryBudgetError, match="directions"):
        _huge_hessian_net()(np.zeros((2000, 4096)), hessian=True, max_memory=2**30)


@pytest.mark.parametrize(
    "err",
    [MemoryError("numpy"), RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")],
)
def test_allocator_failures_surface_as_memory_budget_error(monkeypatch, err):
    def fail(leaves, ctx):
        raise err

    monkeypatch.setattr(plan, "_run", fail)
    with pytest.raises(hq.MemoryBudgetError, match="allocator failed"):
        hq.FullyConnectedNN([3, 4, 1], seed=0)(np.zeros((5, 3)), gradient=True)


def test_torch_out_of_memory_error_surfaces_as_memory_budget_error(monkeypatch):
    torch = pytest.importorskip("torch")

    def fail(leaves, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 122 TiB")

    monkeypatch.setattr(plan, "_run", fail)
    with pytest.raises(hq.MemoryBudgetError, match="OutOfMemoryError"):
        hq.FullyConnectedNN([3, 4, 1], seed=0)(torch.zeros((5, 3), dtype=torch.float64), gradient=True)


def test_other_runtime_errors_pass_through(monkeypatch):
    def fail(leaves, ctx):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(plan, "_run", fail)
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        hq.FullyConnectedNN([3, 4, 1], seed=0)(np.zeros((5, 3)), gradient=True)
    assert not isinstance(info.value, hq.MemoryBudgetError)


def test_generic_backend_assembles_chunks_in_place(monkeypatch):
    xps = pytest.importorskip("array_api_strict")
    net = hq.FullyConnectedNN([5, 6, 1], act="tanh", seed=0)
    xn = np.random.default_rng(2).standard_normal((30, 5))
    x = xps.asarray(xn)
    whole = net(x, hessian=True, mode="backward")
    route = net.cost(30, gradient=False, hessian=True).routes["backward"]

    def no_concat(*args, **kwargs):
        raise AssertionError("chunked results must not be concatenated")

    monkeypatch.setattr(xps, "concat", no_concat)
    calls = _count_runs(monkeypatch)
    chunked = net(x, hessian=True, mode="backward", max_memory=route.peak_bytes / 5)
    assert len(calls) >= 5
    np.testing.assert_array_equal(np.asarray(chunked.hessian), np.asarray(whole.hessian))


def test_progress_bar_over_chunks(capsys):
    pytest.importorskip("tqdm")
    net = hq.FullyConnectedNN([5, 6, 1], act="tanh", seed=0)
    x = np.random.default_rng(3).standard_normal((40, 5))
    route = net.cost(40, hessian=True).routes["backward"]
    budget = route.peak_bytes / 4
    net(x, hessian=True, mode="backward", max_memory=budget, progress=True)
    assert "hessquik chunks" in capsys.readouterr().err
    net(x, hessian=True, mode="backward", max_memory=budget)  # not a terminal: quiet by default
    net(x, hessian=True, mode="backward", max_memory=budget, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress"):
        net(x, hessian=True, progress="yes")

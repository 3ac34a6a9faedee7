"""``net.cost()`` names the route the planner takes (issue 13): for each request the
report's route, chunking and refusal are checked against what the call executes,
observed by spies on the engine's sweeps (not by asking the planner twice)."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.backends import get_backend
from hessquik_core.engine import highdim, plan
from hessquik_core.rules import affine


def _net(d, w, m, *, out="identity", mid="softplus", seed=0):
    rng = np.random.default_rng(seed)
    return hq.NN(
        hq.SingleLayer(d, w, act="tanh", seed=rng),
        hq.SingleLayer(w, w, act=mid, seed=rng),
        hq.SingleLayer(w, m, act=out, seed=rng),
    )


class _Executed:
    """Which sweep a call runs, and the batch chunks it is split into."""

    def __init__(self, monkeypatch):
        self.sweeps = []
        self.chunks = []
        for mod, name, route in (
            (plan, "run_forward", "forward"),
            (plan, "run_backward", "backward"),
            (highdim, "run_laplacian", "forward/gram-laplacian"),
            (highdim, "run_divergence", "forward/divergence"),
        ):
            monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name), route))
        real = plan._chunked

        def chunked(*args, **kwargs):
            self.chunks.append(args[3])  # (leaves, ctx, n, chunk, ...)
            return real(*args, **kwargs)

        monkeypatch.setattr(plan, "_chunked", chunked)

    def _wrap(self, fn, route):
        def run(*args, **kwargs):
            self.sweeps.append(route)
            return fn(*args, **kwargs)

        return run

    @property
    def route(self) -> str:
        # a value-only call runs no sweep: the layers' evaluations only
        assert len(set(self.sweeps)) <= 1, self.sweeps
        return self.sweeps[0] if self.sweeps else "value"


def _check(monkeypatch, net, n, max_memory=None, **request):
    """The report's route and chunks against the executed call's; returns the report."""
    rep = net.cost(
        n,
        gradient=request.get("gradient", False),
        max_memory=max_memory,
        **{k: v for k, v in request.items() if k != "gradient"},
    )
    x = np.random.default_rng(1).standard_normal((n, net.in_features))
    seen = _Executed(monkeypatch)
    res = net(x, max_memory=max_memory, **request)
    assert rep.fits and rep.refusal is None
    assert rep.route == seen.route
    assert res.mode == rep.planned.mode == (rep.route.split("/")[0] if rep.route != "value" else "forward")
    assert seen.chunks == ([] if rep.chunks == 1 else [rep.chunk])
    if rep.chunks > 1:
        assert len(seen.sweeps) in (rep.chunks, 0)  # one sweep per chunk (value only: none)
    text = str(rep)
    assert f"runs: {rep.route}" in text and "<- " in text
    return rep


def test_value_only_at_d_1e5(monkeypatch):
    net = _net(10**5, 16, 1)
    rep = _check(monkeypatch, net, 3)
    assert rep.route == "value" and rep.chunks == 1 and rep.request == "value"
    # a budget that fits the plain pass: never chunked, never refused
    rep = _check(monkeypatch, net, 3, max_memory=64 * 2**20)
    assert rep.chunks == 1 and rep.budget == 64 * 2**20


def test_laplacian_at_d_1e4_takes_the_gram_route(monkeypatch):
    net = _net(10**4, 16, 1)
    rep = _check(monkeypatch, net, 4, laplacian=True)
    assert rep.route == "forward/gram-laplacian"
    # the classic sweeps cost more: the report shows both and marks which one runs
    assert rep.planned.score < rep.routes[rep.chosen].score
    assert "forward/gram-laplacian" in str(rep) and "16 first-width tangents" in str(rep)


def test_laplacian_chunked_by_the_budget(monkeypatch):
    net = _net(10**4, 16, 1)
    per = net.cost(1, gradient=False, laplacian=True).planned.per_example_bytes
    rep = _check(monkeypatch, net, 5, max_memory=2.5 * per, laplacian=True)
    assert rep.route == "forward/gram-laplacian" and (rep.chunk, rep.chunks) == (2, 3)
    assert not rep.blocked and "3 chunks (memory budget) of 2 examples" in str(rep)


def test_small_d_laplacian_with_gradient_keeps_the_classic_sweep(monkeypatch):
    rep = _check(monkeypatch, _net(10**4, 16, 1), 4, gradient=True, laplacian=True)
    assert rep.route == rep.chosen  # the Gram route is for a Laplacian alone


@pytest.mark.parametrize("out", ["identity", "tanh"])
def test_divergence(monkeypatch, out):
    net = _net(300, 6, 300, out=out)
    rep = _check(monkeypatch, net, 4, divergence=True)
    assert rep.route == "forward/divergence" and rep.request == "value + divergence"
    # with the gradient asked for, the Jacobian is formed: a classic sweep
    rep = _check(monkeypatch, net, 4, gradient=True, divergence=True)
    assert rep.route in ("forward", "backward")


@pytest.mark.parametrize(("n", "how"), [(8, "_diag_sandwich"), (64, "_diag_packed")])
def test_hessian_diagonal_at_high_d(monkeypatch, n, how):
    net = _net(10**4, 8, 1)
    used = []
    for name in ("_diag_sandwich", "_diag_packed"):
        real = getattr(affine, name)
        monkeypatch.setattr(affine, name, lambda *a, _f=real, _n=name: used.append(_n) or _f(*a))
    rep = _check(monkeypatch, net, n, hessian_diagonal=True)
    assert rep.route == "backward" and used == [how]
    assert ("packed triangle" in str(rep)) == (how == "_diag_packed")


@pytest.mark.parametrize("m", [1, 12])
def test_small_d_full_hessian(monkeypatch, m):
    rep = _check(monkeypatch, _net(6, 8, m), 10, gradient=True, hessian=True)
    assert rep.route == rep.chosen == ("backward" if m == 1 else "forward")


def test_explicit_mode_and_directions(monkeypatch):
    net = _net(40, 8, 1)
    rep = net.cost(6, gradient=False, laplacian=True, mode="backward")
    assert rep.route == "backward"
    seen = _Executed(monkeypatch)
    net(np.ones((6, 40)), laplacian=True, mode="backward")
    assert seen.route == "backward"
    rep = net.cost(6, num_directions=3, mode="forward")
    net(np.ones((6, 40)), gradient=True, directions=np.ones((40, 3)))
    assert rep.route == seen.sweeps[-1] == "forward"


def test_cache_blocks(monkeypatch):
    # the thresholds are module constants the planner reads at each call: lowered,
    # a small call is blocked, and the report gives the call's blocks
    monkeypatch.setattr(plan, "_BLOCK_ABOVE", 0)
    monkeypatch.setattr(plan, "_BLOCK_TRAFFIC", 0.0)
    monkeypatch.setattr(plan, "_BLOCK_BYTES", 1)
    rep = _check(monkeypatch, _net(8, 16, 1), 100, gradient=True, laplacian=True)
    assert rep.blocked and (rep.chunk, rep.chunks) == (plan._BLOCK_MIN, 7)
    assert "7 cache blocks of 16 examples" in str(rep)


def test_a_result_that_cannot_fit_is_reported_as_the_call_refuses_it(monkeypatch):
    be = get_backend("numpy")
    monkeypatch.setattr(type(be), "available_memory", lambda self, device: 2**30)
    net = _net(2000, 4, 1)
    rep = net.cost(100, gradient=False, hessian=True)
    assert not rep.fits and "needs 3.0 GiB" in rep.refusal
    seen = _Executed(monkeypatch)
    with pytest.raises(hq.MemoryBudgetError) as err:
        net(np.zeros((100, 2000)), hessian=True)
    assert str(err.value) == rep.refusal and seen.sweeps == []
    assert "refused before any work" in str(rep)
    # one example over the budget: the other refusal, the same message
    rep = net.cost(2, gradient=False, hessian=True, max_memory=1000)
    with pytest.raises(hq.MemoryBudgetError) as err:
        net(np.zeros((2, 2000)), hessian=True, max_memory=1000)
    assert not rep.fits and str(err.value) == rep.refusal and "one example needs" in rep.refusal


def test_training_step(monkeypatch):
    torch = pytest.importorskip("torch")
    from hessquik_core.backends import _torch_step
    from hessquik_core.training import torch_parameters

    analytic = []
    real = _torch_step.run
    monkeypatch.setattr(_torch_step, "run", lambda *a: analytic.append(1) or real(*a))
    net = _net(20, 8, 1, mid="tanh")
    rep = net.cost(16, laplacian=True, training=True)
    evaluation = net.cost(16, laplacian=True)
    # σ, σ′, σ″ only (every built-in supplies σ‴ since issue 23): no analytic step
    two = hq.activations.custom(
        lambda z, xp: xp.tanh(z),
        lambda z, xp: 1.0 - xp.tanh(z) ** 2,
        lambda z, xp: -2.0 * xp.tanh(z) * (1.0 - xp.tanh(z) ** 2),
    )
    taped_net = _net(20, 8, 1, mid=two)
    taped = taped_net.cost(16, laplacian=True, training=True)
    torch_parameters(net)
    torch_parameters(taped_net)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((16, 20)))
    seen = _Executed(monkeypatch)
    res = net(x, gradient=True, laplacian=True)
    res.laplacian.sum().backward()
    assert rep.training == "analytic" and analytic == [1] and rep.route == "forward"
    assert rep.planned.step_factor == 3.0 and evaluation.training is None
    assert rep.planned.score == 3.0 * evaluation.routes["forward"].score
    assert "training step (forward route analytic)" in str(rep)
    res = taped_net(x, gradient=True, laplacian=True)
    res.laplacian.sum().backward()
    assert taped.training == "taped" and analytic == [1]
    assert seen.sweeps == [rep.route, taped.route]
    # a Laplacian alone at d above the first width: the Gram route, priced taped
    rep = net.cost(16, gradient=False, laplacian=True, training=True)
    net(x, laplacian=True).laplacian.sum().backward()
    assert rep.route == seen.sweeps[-1] == "forward/gram-laplacian"
    assert rep.planned.step_factor == 4.5
    # the Hessian diagonal has no analytic step
    rep = net.cost(16, gradient=False, hessian_diagonal=True, training=True)
    net(x, hessian_diagonal=True)
    assert rep.training == "taped" and rep.route == seen.sweeps[-1]


def test_bad_arguments():
    net = _net(4, 3, 1)
    with pytest.raises(ValueError, match="itemsize"):
        net.cost(3, itemsize=2)
    with pytest.raises(ValueError, match="mode"):
        net.cost(3, mode="sideways")
    with pytest.raises(ValueError, match="d == m"):
        net.cost(3, divergence=True)
    with pytest.raises(ValueError, match="n must be"):
        net.cost(-1)
    with pytest.raises(TypeError, match="max_memory"):
        net.cost(3, max_memory="1G")

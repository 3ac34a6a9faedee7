"""Routes as objects (issue 21, item 3): the planner asks every route whether it
applies, prices those that do and returns one immutable plan with the settled call;
the resolved call is frozen, so nothing downstream can decide again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core._array import resolve_call
from hessquik_core.engine import plan
from hessquik_core.engine.routes.base import Route

FLAGS = dict(gradient=False, hessian=False, laplacian=False, hessian_diagonal=False, divergence=False)


def _ctx(net, x, mode="auto", **flags):
    return resolve_call(net, x, directions=None, mode=mode, backend=None, **{**FLAGS, **flags})


def _applicable(net, x, mode="auto", **flags):
    ctx = _ctx(net, x, mode, **flags)
    return [r.name for r in plan.ROUTES if r.applies(ctx, list(net._leaves()))]


def test_every_route_is_a_route():
    names = [r.name for r in plan.ROUTES]
    assert names == [
        "value",
        "forward",
        "backward",
        "forward/gram-laplacian",
        "forward/divergence",
        "forward/biharmonic",
        "forward/taylor",
    ]
    for r in plan.ROUTES:
        assert all(callable(getattr(r, f)) for f in ("applies", "cost", "mode", "run"))
        assert isinstance(r.sweep, str) and isinstance(r.preferred, bool)
    _: tuple[Route, ...] = plan.ROUTES  # the protocol, for mypy


def test_which_routes_apply():
    wide = hq.NN(hq.SingleLayer(40, 6, act="tanh", seed=0), hq.SingleLayer(6, 1, seed=1))
    square = hq.NN(hq.SingleLayer(40, 6, act="tanh", seed=0), hq.SingleLayer(6, 40, seed=1))
    x = np.zeros((3, 40))
    assert _applicable(wide, x) == ["value"]
    assert _applicable(wide, x, laplacian=True) == ["forward", "backward", "forward/gram-laplacian"]
    assert _applicable(wide, x, mode="backward", laplacian=True) == ["backward"]
    assert _applicable(wide, x, gradient=True, laplacian=True) == ["forward", "backward"]
    assert _applicable(square, x, divergence=True) == ["forward", "backward", "forward/divergence"]
    # a first layer that declares no affine structure: no high-dimensional route
    normed = hq.NN(hq.LayerNorm(40), hq.SingleLayer(40, 1, seed=0))
    assert _applicable(normed, x, laplacian=True) == ["forward", "backward"]
    # the bi-Laplacian has one route, and it steps aside for every other request
    assert _applicable(wide, x, biharmonic=True) == ["forward/biharmonic"]
    assert _applicable(wide, x, laplacian=True, biharmonic=True) == ["forward/biharmonic"]


def test_the_plan_is_immutable_and_carries_the_settled_call():
    net = hq.NN(hq.SingleLayer(40, 6, act="tanh", seed=0), hq.SingleLayer(6, 1, seed=1))
    x = np.random.default_rng(0).standard_normal((3, 40))
    ctx = _ctx(net, x, laplacian=True)
    p = plan.plan(list(net._leaves()), ctx, None)
    assert (ctx.mode, ctx.route, ctx.training) == ("auto", "", None)  # the resolved call is untouched
    assert (p.call.mode, p.call.route, p.route) == ("forward", "gram-laplacian", "forward/gram-laplacian")
    assert plan.route_of(p.call).name == p.route == net.cost(3, gradient=False, laplacian=True).route
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.mode = "forward"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.chunk = 1  # type: ignore[misc]


def test_a_preferred_route_wins():
    net = hq.NN(hq.SingleLayer(40, 6, act="tanh", seed=0), hq.SingleLayer(6, 40, seed=1))
    x = np.random.default_rng(1).standard_normal((2, 40))
    leaves = list(net._leaves())
    _, _, settled = plan._settle(leaves, _ctx(net, x, divergence=True), 2)
    assert settled.route == "divergence"
    res = net(x, divergence=True)
    ref = net(x, gradient=True, mode="forward").gradient
    np.testing.assert_allclose(res.divergence, np.trace(ref, axis1=1, axis2=2), rtol=1e-12, atol=1e-12)

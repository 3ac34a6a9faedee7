"""High-dimensional inputs (issue 13 item 3): the Gram-root forward Laplacian,
the divergence without the Jacobian, the blocked first-layer Hessian diagonal,
the memoised weight products, and the planner's decisions at large d.

References are torch.func (float64) on small d, the classic sweeps, and, at
d = 10⁵, each route against another."""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch
from _reference import rel_err, torch_layer, truth

import hessquik_core as hq
from hessquik_core.engine import highdim
from hessquik_core.engine.cost import estimate
from hessquik_core.rules import affine


def _net(d, w, m, *, out="identity", residual=False, first_residual=False, seed=0):
    rng = np.random.default_rng(seed)
    blocks = []
    if first_residual:
        blocks.append(hq.ResnetNN(d, 1, h=0.5, act="tanh", seed=rng))
    blocks.append(hq.SingleLayer(d, w, act="tanh", seed=rng))
    if residual:
        blocks.append(hq.ResnetNN(w, 2, h=0.5, act="tanh", seed=rng))
    blocks += [hq.SingleLayer(w, w, act="softplus", seed=rng), hq.SingleLayer(w, m, act=out, seed=rng)]
    return hq.NN(*blocks)


class _Spy:
    """Counts the calls of a highdim sweep (and runs it)."""

    def __init__(self, monkeypatch, name):
        self.calls = 0
        orig = getattr(highdim, name)

        def wrapped(*a, **k):
            self.calls += 1
            return orig(*a, **k)

        monkeypatch.setattr(highdim, name, wrapped)


# --------------------------------------------------------------------------
# agreement with torch.func (float64)
# --------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("out", ["identity", "tanh"])
@pytest.mark.parametrize("residual", [False, True])
def test_divergence_route_matches_jacrev_trace(monkeypatch, out, residual):
    d, w = 24, 5
    net = _net(d, w, d, out=out, residual=residual)
    x = np.random.default_rng(1).standard_normal((6, d))
    spy = _Spy(monkeypatch, "run_divergence")
    r = net(x, divergence=True)
    assert spy.calls == 1 and r.mode == "forward" and r.gradient is None
    val, grad, _ = truth(net, x, hessian=False)
    ref = np.trace(grad, axis1=1, axis2=2)
    assert rel_err(r.divergence, ref) <= 1e-12
    assert rel_err(r.value, val) <= 1e-12


def test_divergence_route_column_blocks(monkeypatch):
    """Non-linear last layer, d split over several column blocks."""
    d, w = 300, 4
    net = _net(d, w, d, out="tanh")
    x = np.random.default_rng(2).standard_normal((3, d))
    monkeypatch.setattr(highdim, "BLOCK_BYTES", 1)  # 64 columns per block
    r = net(x, divergence=True)
    ref = net(x, divergence=True, mode="backward").divergence
    assert rel_err(r.divergence, ref) <= 1e-12


@pytest.mark.parametrize("kw", [{"mode": "forward"}, {"mode": "backward"}])
def test_divergence_explicit_modes_keep_the_classic_sweeps(monkeypatch, kw):
    d, w = 12, 4
    net = _net(d, w, d, out="tanh")
    x = np.random.default_rng(3).standard_normal((4, d))
    spy = _Spy(monkeypatch, "run_divergence")
    r = net(x, divergence=True, **kw)
    assert spy.calls == 0 and r.mode == kw["mode"]
    assert rel_err(r.divergence, net(x, divergence=True).divergence) <= 1e-12


@needs_torch
@pytest.mark.parametrize(
    "make",
    [
        lambda d: _net(d, 4, d, first_residual=True),  # first layer not σ(xM + b)
        lambda d: _net(d, 40, d),  # first layer wider than d
        lambda d: hq.NN(hq.SingleLayer(d, d, act="tanh", seed=1)),  # a single layer
    ],
)
def test_divergence_falls_back_where_the_shape_does_not_allow(monkeypatch, make):
    d = 10
    net = make(d)
    x = np.random.default_rng(4).standard_normal((3, d))
    spy = _Spy(monkeypatch, "run_divergence")
    r = net(x, divergence=True)
    assert spy.calls == 0
    _, grad, _ = truth(net, x, hessian=False)
    assert rel_err(r.divergence, np.trace(grad, axis1=1, axis2=2)) <= 1e-12


@needs_torch
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("m", [1, 3])
def test_gram_laplacian_matches_torch_func(monkeypatch, residual, m):
    d, w = 20, 6
    net = _net(d, w, m, out="sigmoid", residual=residual)
    x = np.random.default_rng(5).standard_normal((5, d))
    spy = _Spy(monkeypatch, "run_laplacian")
    r = net(x, laplacian=True)
    assert spy.calls == 1 and r.mode == "forward"
    val, _, hess = truth(net, x)
    assert rel_err(r.laplacian, np.trace(hess, axis1=1, axis2=2)) <= 1e-12
    assert rel_err(r.value, val) <= 1e-12


def test_gram_laplacian_only_for_a_laplacian_alone(monkeypatch):
    d, w = 20, 6
    net = _net(d, w, 2)
    x = np.random.default_rng(6).standard_normal((4, d))
    ref = net(x, laplacian=True).laplacian
    spy = _Spy(monkeypatch, "run_laplacian")
    for kw in ({"gradient": True}, {"hessian_diagonal": True}, {"mode": "backward"}, {"mode": "forward"}):
        r = net(x, laplacian=True, **kw)
        assert rel_err(r.laplacian, ref) <= 1e-12
    assert spy.calls == 0


@needs_torch
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("blocks", [False, True])
def test_hessian_diagonal_blocked_matches_torch_func(monkeypatch, blocks, packed):
    d, w = 30, 5
    net = _net(d, w, 2, out="tanh", residual=True)
    x = np.random.default_rng(7).standard_normal((4, d))
    if blocks:  # one row of M per block, one example per batch block
        monkeypatch.setattr(affine, "BLOCK_BYTES", 1)
    monkeypatch.setattr(affine, "PACKED_FROM", 1 if packed else 10**9)
    r = net(x, hessian_diagonal=True, mode="backward")
    _, _, hess = truth(net, x)
    ref = np.diagonal(hess, axis1=1, axis2=2).transpose(0, 2, 1)
    assert rel_err(r.hessian_diagonal, ref) <= 1e-12
    # the sum of the diagonal is the Laplacian of either route
    assert rel_err(np.sum(r.hessian_diagonal, axis=1), net(x, laplacian=True).laplacian) <= 1e-12


@needs_torch
def test_laplacian_without_gradient_skips_the_first_layer_gradient():
    d, w = 16, 4
    net = _net(d, w, 1)
    x = np.random.default_rng(8).standard_normal((3, d))
    r = net(x, laplacian=True, hessian_diagonal=True, mode="backward")
    assert r.gradient is None
    g = net(x, laplacian=True, gradient=True, mode="backward")
    _, grad, hess = truth(net, x)
    assert rel_err(g.gradient, grad) <= 1e-12
    assert rel_err(r.laplacian, np.trace(hess, axis1=1, axis2=2)) <= 1e-12


# --------------------------------------------------------------------------
# other libraries
# --------------------------------------------------------------------------


@needs_torch
def test_routes_on_torch_and_generic(monkeypatch):
    import torch

    xs = pytest.importorskip("array_api_strict")
    d, w = 18, 4
    lap_net, div_net = _net(d, w, 2, out="tanh"), _net(d, w, d, out="tanh", residual=True)
    x = np.random.default_rng(9).standard_normal((3, d))
    lap, div = lap_net(x, laplacian=True).laplacian, div_net(x, divergence=True).divergence
    spy_l, spy_d = _Spy(monkeypatch, "run_laplacian"), _Spy(monkeypatch, "run_divergence")
    xt = torch.from_numpy(x)
    assert rel_err(lap_net(xt, laplacian=True).laplacian.numpy(), lap) <= 1e-12
    assert rel_err(div_net(xt, divergence=True).divergence.numpy(), div) <= 1e-12
    xa = xs.asarray(x)
    got = lap_net(xa, laplacian=True, backend="generic").laplacian
    assert rel_err(np.asarray(hq.backends._generic.to_numpy(got)), lap) <= 1e-12
    got = div_net(xa, divergence=True, backend="generic").divergence
    assert rel_err(np.asarray(hq.backends._generic.to_numpy(got)), div) <= 1e-12
    assert spy_l.calls == 2 and spy_d.calls == 2


@needs_torch
def test_gram_laplacian_differentiable_in_torch():
    """The route under autograd: d(Σ Δu)/dx against torch.func's third derivative."""
    import torch
    from torch.func import hessian, vmap

    d, w = 12, 4
    net = _net(d, w, 1)
    x = torch.from_numpy(np.random.default_rng(10).standard_normal((3, d))).requires_grad_(True)
    lap = net(x, laplacian=True).laplacian
    (g,) = torch.autograd.grad(lap.sum(), x)

    def lap1(xi):
        return torch.trace(hessian(lambda v: torch_layer(net, v[None, :])[0, 0])(xi))

    ref = vmap(torch.func.grad(lap1))(x.detach())
    assert rel_err(g.numpy(), ref.numpy()) <= 1e-11


# --------------------------------------------------------------------------
# memoised weight products
# --------------------------------------------------------------------------


def test_memo_follows_the_parameters():
    d, w = 20, 5
    net = _net(d, w, 1)
    x = np.random.default_rng(11).standard_normal((4, d))
    before = net(x, laplacian=True).laplacian
    assert np.array_equal(net(x, laplacian=True).laplacian, before)  # the memo's answer
    # new weights: a new home array, so the memoised Gram matrix is not reused
    state = net.state_dict()
    key = next(k for k in state if k.endswith("K"))
    state[key] = np.asarray(state[key]) * 1.5
    net.load_state_dict(state)
    fresh = _net(d, w, 1)
    fresh.load_state_dict(state)
    after = net(x, laplacian=True).laplacian
    assert not np.allclose(after, before)
    assert rel_err(after, fresh(x, laplacian=True, mode="backward").laplacian) <= 1e-12


def test_memo_only_for_read_only_numpy():
    M = np.random.default_rng(12).standard_normal((7, 3))
    calls = []

    def compute():
        calls.append(1)
        return np.ones((3, 3))

    affine.memo(M, "t", compute)
    affine.memo(M, "t", compute)
    assert len(calls) == 2  # writeable: never remembered
    M.setflags(write=False)
    G1 = affine.memo(M, "t", compute)
    G2 = affine.memo(M, "t", compute)
    assert len(calls) == 3 and G1 is G2 and not G1.flags.writeable
    key = ("t", id(M))
    assert key in affine._MEMO
    del M
    assert key not in affine._MEMO  # the entry dies with its weight


# --------------------------------------------------------------------------
# the planner at large d
# --------------------------------------------------------------------------

D_BIG = 100_000


@pytest.fixture(scope="module")
def big():
    net = _net(D_BIG, 16, 1, seed=3)
    x = np.random.default_rng(13).standard_normal((3, D_BIG))
    return net, x


def test_value_only_at_d_1e5_is_one_plain_pass(big):
    net, x = big
    r = net(x)  # no MemoryBudgetError, whatever the derivatives would cost
    assert r.value.shape == (3, 1)
    # a budget that fits the forward pass (x is input, not working memory here)
    # is enough: value-only calls are never refused nor chunked when it fits
    r2 = net(x, max_memory=64 * 2**20)
    assert np.array_equal(r.value, r2.value)


def test_laplacian_and_diagonal_at_d_1e5(big, monkeypatch):
    net, x = big
    spy = _Spy(monkeypatch, "run_laplacian")
    lap = net(x, laplacian=True)
    assert spy.calls == 1
    bwd = net(x, laplacian=True, mode="backward").laplacian
    diag = net(x, hessian_diagonal=True).hessian_diagonal
    assert rel_err(lap.laplacian, bwd) <= 1e-12
    assert rel_err(np.sum(diag, axis=1), bwd) <= 1e-12


def test_high_d_memory_estimates_are_size_of_x_plus_width_squared():
    """Per example the routes need x's row plus O(width²): never O(d·width)."""
    d, q, n = D_BIG, 64, 4
    dims = ((d, q), (q, q), (q, q), (q, 1))
    lap = highdim._route_cost(dims, n, q, 8, False, lap=True, last_d=0)
    assert lap.per_example_bytes <= 8 * (d + 8 * q * q)
    dims_v = ((d, q), (q, q), (q, q), (q, d))
    div = highdim._route_cost(dims_v, n, q, 8, False, lap=False, last_d=d)
    # the divergence adds the output row and one column block of BLOCK_BYTES
    assert div.per_example_bytes <= 8 * (3 * d + 8 * q * q) + highdim.BLOCK_BYTES
    # backward Laplacian / diagonal at the first layer: x's row, K, the diagonal
    rep = estimate(
        [hq.SingleLayer(d, q), hq.SingleLayer(q, q), hq.SingleLayer(q, 1)],
        n,
        d=d,
        m=1,
        hessian=False,
        laplacian=False,
        hessian_diagonal=True,
        modes=("backward",),
    )
    assert rep.routes["backward"].per_example_bytes <= 8 * (4 * d + 8 * q * q)


def test_high_d_divergence_is_not_refused():
    d, w = 20_000, 8
    net = _net(d, w, d, out="tanh")
    x = np.random.default_rng(14).standard_normal((2, d))
    # the (n, d, d) Jacobian would be 6.4 GB: the route needs a few MiB
    r = net(x, divergence=True, max_memory=256 * 2**20)
    # reference from the weights: diag(J) = σ'_L ⊙ diag(M_1 D_1 M_2 D_2 M_L)
    l1, l2, l3 = net.blocks
    z1 = x @ l1.K + l1.b
    D1 = 1 - np.tanh(z1) ** 2
    z2 = np.tanh(z1) @ l2.K + l2.b
    D2 = 1 / (1 + np.exp(-z2))  # softplus' = sigmoid
    z3 = np.log1p(np.exp(z2)) @ l3.K + l3.b
    D3 = 1 - np.tanh(z3) ** 2
    A = D1[:, :, None] * l2.K[None] * D2[:, None, :]  # (n, w, w)
    ref = np.einsum("aj,njk,ka,na->n", l1.K, A, l3.K, D3)
    assert rel_err(r.divergence, ref) <= 1e-12
    assert rel_err(r.value, np.tanh(z3)) <= 1e-12


def test_chunked_high_d_routes_agree(big, monkeypatch):
    """A budget that chunks the batch: the same answer, example by example."""
    net, x = big
    from hessquik_core.engine import plan

    chunks = []
    orig = plan._chunked

    def spy(*args, **kwargs):
        chunks.append(args[3])  # (leaves, ctx, n, chunk, ...)
        return orig(*args, **kwargs)

    monkeypatch.setattr(plan, "_chunked", spy)
    whole = net(x, laplacian=True).laplacian
    per = highdim._route_cost(
        tuple(s for leaf in net._leaves() for s in leaf.cost_shapes), 1, 16, 8, False, lap=True, last_d=0
    ).per_example_bytes
    part = net(x, laplacian=True, max_memory=int(1.5 * per)).laplacian
    assert chunks == [1]
    assert rel_err(part, whole) <= 1e-12  # BLAS blocks differ with the batch size


def test_routes_in_float32_against_float64():
    d, w = 40, 6
    lap_net, div_net = _net(d, w, 2, out="tanh"), _net(d, w, d, out="tanh", residual=True)
    x = np.random.default_rng(15).standard_normal((4, d))
    lap64, div64 = lap_net(x, laplacian=True).laplacian, div_net(x, divergence=True).divergence
    x32 = x.astype(np.float32)
    lap32 = lap_net(x32, laplacian=True).laplacian
    div32 = div_net(x32, divergence=True).divergence
    diag32 = lap_net(x32, hessian_diagonal=True).hessian_diagonal
    assert lap32.dtype == div32.dtype == diag32.dtype == np.float32
    assert rel_err(lap32, lap64) <= 1e-4 and rel_err(div32, div64) <= 1e-4
    assert rel_err(np.sum(diag32, axis=1), lap64) <= 1e-4


@needs_torch
def test_gram_laplacian_weight_gradient_matches_backward_route(monkeypatch):
    """A training step through the route: the weight gradient of a Laplacian loss
    (autograd through Cholesky of the Gram matrix) equals the classic route's."""
    import torch

    from hessquik_core.training import torch_parameters

    d, w = 30, 5
    net = _net(d, w, 1, out="identity", residual=True)
    params = torch_parameters(net)
    x = torch.from_numpy(np.random.default_rng(16).standard_normal((6, d)))
    spy = _Spy(monkeypatch, "run_laplacian")
    grads = []
    for mode in ("auto", "backward"):
        for p in params:
            p.grad = None
        loss = ((net(x, laplacian=True, mode=mode).laplacian + 1.0) ** 2).mean()
        loss.backward()
        # (None: a parameter the Laplacian does not depend on, e.g. the last bias)
        grads.append([None if p.grad is None else p.grad.clone() for p in params])
    assert spy.calls == 1
    assert sum(g is not None for g in grads[0]) >= len(params) - 1
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert rel_err(a.numpy(), b.numpy()) <= 1e-11

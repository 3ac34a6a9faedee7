"""The declared affine structure ``f(u) = [u +] h σ(uM + b)`` (issue 21, item 2):
what each declaring layer says is what it computes, the pullback is the chain rule
through ``M(params)``, and any layer that declares it gets the routes written for
that form (analytic training step, high-dimensional sweeps) — a subclass and a
SIREN-style layer included, with no class test anywhere."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.backends import get_backend
from hessquik_core.layers.affine_structure import AffineStructure
from hessquik_core.rules import affine

OPS = get_backend("numpy")


@pytest.fixture(autouse=True)
def _analytic_higher_order_on():
    """This module tests the AD-free order-3/4 weight gradient, an opt-in (slower than taping)."""
    from hessquik_core.training import analytic_higher_order_gradient

    before = analytic_higher_order_gradient(True)
    yield
    analytic_higher_order_gradient(before)


class ScaledLayer(hq.SingleLayer):
    r"""A SIREN-style subclass, :math:`f(u) = \sigma(w_0 (uK + b))`: declares ``M = w_0 K``,
    ``b = w_0 b``, and computes its steps with that ``M`` (the affine rule)."""

    def __init__(self, *args, w0: float = 3.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.w0 = float(w0)

    def _Mb(self, params):
        b = params["b"]
        return self.w0 * params["K"], (None if b is None else self.w0 * b)

    def evaluate(self, u, params, order, ops):
        M, b = self._Mb(params)
        s0, s1, s2 = affine.evaluate(u, M, b, self.act, order, ops.xp)
        return s0, type(super().evaluate(u, params, 0, ops)[1])(s1, s2)

    def forward_step(self, cache, params, tangents, request, ops):
        M = self._Mb(params)[0]
        return affine.forward_step(
            cache.dsigma, cache.d2sigma, ops.mm(tangents.jacobian, M), tangents, M, request, ops
        )

    def backward_step(self, cache, params, adjoints, second, ops):
        return affine.backward_step(cache.dsigma, cache.d2sigma, self._Mb(params)[0], adjoints, second, ops)

    def backward_first(self, cache, params, adjoints, what, ops):
        M = self._Mb(params)[0]
        return affine.backward_first(cache.dsigma, cache.d2sigma, M, adjoints, what, ops)

    def affine_structure(self, params=None):
        if params is None:
            return AffineStructure(self.act)
        M, b = self._Mb(params)
        w0 = self.w0
        return AffineStructure(
            self.act, M, b, pullback=lambda gM, gb: {"K": w0 * gM, **({} if gb is None else {"b": w0 * gb})}
        )


def _params(leaf):
    return leaf._eval_params(("numpy", "numpy", "cpu", "float64"), OPS, OPS.xp, np.float64, "cpu")


def _layers():
    rng = np.random.default_rng(0)
    return [
        hq.SingleLayer(3, 5, act="tanh", seed=rng),
        hq.SingleLayer(3, 5, act="sin", bias=False, seed=rng),
        hq.ResnetLayer(4, h=0.3, act="tanh", seed=rng),
        hq.ResnetLayer(4, h=1.0, act="sigmoid", bias=False, seed=rng),
        ScaledLayer(3, 4, act="sin", w0=2.5, seed=rng),
        hq.FourierFeatures(3, 4, scale=0.7, seed=rng),
        hq.FourierFeatures(3, 2, trainable=True, seed=rng),
    ]


@pytest.mark.parametrize("leaf", _layers(), ids=repr)
def test_declaration_is_what_the_layer_computes(leaf):
    form = leaf.affine_structure()
    assert isinstance(form, AffineStructure) and form.M is None and form.pullback is None
    P = _params(leaf)
    st = leaf.affine_structure(P)
    assert (st.act, st.scale, st.residual) == (form.act, form.scale, form.residual)
    p, q = leaf.in_features, leaf.out_features
    assert st.M.shape == (p, q) and (st.b is None or st.b.shape == (q,))
    u = np.random.default_rng(1).standard_normal((6, p))
    want = leaf.evaluate(u, P, 0, OPS)[0]
    got = st.scale * st.act(u @ st.M + (0.0 if st.b is None else st.b), 0)[0] + (u if st.residual else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
    # and σ', σ'' at z are what the layer's own steps use (its cache; unscaled by h)
    z = u @ st.M + (0.0 if st.b is None else st.b)
    cache = leaf.evaluate(u, P, 2, OPS)[1]
    _, s1, s2 = st.act.derivatives(z, 2)
    np.testing.assert_allclose(s1, cache.dsigma, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(s2, cache.d2sigma, rtol=1e-13, atol=1e-14)


def test_sincos_derivatives_by_taylor():
    """σ⁽ʲ⁾ of the column-block activation of Fourier features, j = 1..4, against
    central differences of σ⁽ʲ⁻¹⁾ (error O(h²))."""
    from hessquik_core.layers.affine_structure import SinCos

    act = SinCos(3)
    z = np.random.default_rng(5).standard_normal((4, 6))
    d = act.derivatives(z, 4)
    for j in range(1, 5):
        errs = []
        for h in (1e-2, 5e-3):
            fd = (act.derivatives(z + h, 4)[j - 1] - act.derivatives(z - h, 4)[j - 1]) / (2 * h)
            errs.append(np.max(np.abs(fd - d[j])))
        assert errs[1] < errs[0] / 3.5 and errs[0] < 1e-4, (j, errs)
    np.testing.assert_array_equal(d[0], np.concatenate([np.sin(z[:, :3]), np.cos(z[:, 3:])], axis=1))


@pytest.mark.parametrize("leaf", _layers(), ids=repr)
def test_pullback_is_the_chain_rule_through_M(leaf):
    """⟨∂C/∂M, dM⟩ + ⟨∂C/∂b, db⟩ = ⟨pullback(∂C/∂M, ∂C/∂b), dθ⟩ for a direction dθ of the
    layer's parameters (central differences of the linear map θ ↦ (M, b))."""
    P = _params(leaf)
    st = leaf.affine_structure(P)
    rng = np.random.default_rng(2)
    gM = rng.standard_normal(st.M.shape)
    gb = None if st.b is None else rng.standard_normal(st.b.shape)
    g = st.pullback(gM, gb)
    assert set(g) == {k for k, v in P.items() if v is not None}
    assert all(g[k].shape == P[k].shape for k in g)
    dtheta = {k: rng.standard_normal(v.shape) for k, v in P.items() if v is not None}
    eps = 1e-3
    plus = leaf.affine_structure({k: (v + eps * dtheta[k] if v is not None else None) for k, v in P.items()})
    minus = leaf.affine_structure({k: (v - eps * dtheta[k] if v is not None else None) for k, v in P.items()})
    lhs = np.sum(gM * (plus.M - minus.M)) / (2 * eps)
    if gb is not None:
        lhs += np.sum(gb * (plus.b - minus.b)) / (2 * eps)
    rhs = sum(np.sum(g[k] * dtheta[k]) for k in g)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


def test_layers_without_the_form_declare_none():
    assert hq.LayerNorm(4).affine_structure() is None
    assert hq.ICNNLayer(2, 3, 4, seed=0).affine_structure() is None


def test_a_declaring_subclass_takes_the_high_dimensional_route():
    """Gram-root Laplacian at d > width for a first layer that is a SingleLayer subclass
    with its own M: the route is chosen from the declaration, and agrees with the
    classic sweep."""
    rng = np.random.default_rng(3)
    net = hq.NN(ScaledLayer(40, 6, act="tanh", w0=1.5, seed=rng), hq.SingleLayer(6, 1, act="tanh", seed=rng))
    x = rng.standard_normal((5, 40))
    assert net.cost(5, gradient=False, laplacian=True).route == "forward/gram-laplacian"
    got = net(x, laplacian=True).laplacian
    want = net(x, laplacian=True, mode="backward").laplacian
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


def test_a_declaring_subclass_takes_the_analytic_step():
    torch = pytest.importorskip("torch")
    from layer_checks import uses_analytic_sweep

    from hessquik_core.training import analytic_weight_gradient, torch_parameters

    rng = np.random.default_rng(4)
    net = hq.NN(
        ScaledLayer(2, 6, act="sin", w0=3.0, seed=rng),
        ScaledLayer(6, 6, act="sin", w0=1.0, bias=False, seed=rng),
        hq.SingleLayer(6, 1, seed=rng),
    )
    params = torch_parameters(net)
    x = torch.tensor(rng.standard_normal((7, 2)), requires_grad=True)

    def step(on):
        before = analytic_weight_gradient(on)
        try:
            r = net(x, gradient=True, laplacian=True, mode="forward")
            used = uses_analytic_sweep(r.laplacian)
            loss = (r.laplacian**2).mean() + (r.gradient**2).sum() + (r.value**3).sum()
            return used, torch.autograd.grad(loss, [*params, x])
        finally:
            analytic_weight_gradient(before)

    (used, got), (unused, want) = step(True), step(False)
    assert used and not unused
    for a, b in zip(got, want):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("trainable", [False, True])
def test_fourier_features_front_end_takes_the_analytic_step(trainable):
    """Fourier features + MLP: the step runs as the analytic route (SinCos declares σ‴)
    and equals autograd over the generic sweep to 1e-12, input and (trainable) B included."""
    torch = pytest.importorskip("torch")
    from layer_checks import uses_analytic_sweep

    from hessquik_core.training import analytic_weight_gradient, torch_parameters

    rng = np.random.default_rng(6)
    net = hq.NN(
        hq.FourierFeatures(2, 3, scale=0.5, trainable=trainable, seed=rng),
        hq.SingleLayer(6, 5, act="tanh", seed=rng),
        hq.SingleLayer(5, 1, seed=rng),
    )
    params = torch_parameters(net)
    assert len(params) == (5 if trainable else 4)
    x = torch.tensor(rng.standard_normal((7, 2)), requires_grad=True)

    def step(on):
        before = analytic_weight_gradient(on)
        try:
            r = net(x, gradient=True, laplacian=True, mode="forward")
            used = uses_analytic_sweep(r.laplacian)
            loss = (r.laplacian**2).mean() + (r.gradient**2).sum() + (r.value**3).sum()
            return used, torch.autograd.grad(loss, [*params, x])
        finally:
            analytic_weight_gradient(before)

    (used, got), (unused, want) = step(True), step(False)
    assert used and not unused
    for a, b in zip(got, want):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_fourier_features_first_takes_the_gram_route():
    """d = 30 inputs into 2·8 Fourier features: the Gram-root Laplacian applies from the
    declaration, and agrees with the backward sweep."""
    rng = np.random.default_rng(7)
    net = hq.NN(hq.FourierFeatures(30, 8, scale=0.3, seed=rng), hq.SingleLayer(16, 1, act="tanh", seed=rng))
    x = rng.standard_normal((6, 30))
    assert net.cost(6, gradient=False, laplacian=True).route == "forward/gram-laplacian"
    np.testing.assert_allclose(
        net(x, laplacian=True).laplacian,
        net(x, laplacian=True, mode="backward").laplacian,
        rtol=1e-11,
        atol=1e-13,
    )

"""Orders 3 and 4 through every built-in layer family beyond the dense ones
(Fourier and periodic embeddings, gated MLP, gated residual, layer
normalisation) and through a declared affine structure, against nested AD."""

from __future__ import annotations

import numpy as np
import pytest
from _higher_reference import nested_biharmonic, nested_directional
from _reference import rel_err

import hessquik_core as hq
from hessquik_core.activations import get_activation

torch = pytest.importorskip("torch")

RTOL = 1e-11


@pytest.mark.parametrize("which", ["fourier", "periodic", "periodic-trainable"])
def test_fourier_embeddings_match_nested_ad(which):
    """Per-column sin/cos/identity embeddings (the reference is the layer's torch twin)."""
    L = hq.layers.LAYERS
    first = {
        "fourier": lambda: L["FourierFeatures"](2, 3, seed=0),
        "periodic": lambda: L["PeriodicEmbedding"](3, [2.0], axes=[1]),
        "periodic-trainable": lambda: L["PeriodicEmbedding"](3, [2.0, 3.0], axes=[0, 2], trainable=True),
    }[which]()
    d = first.in_features
    net = hq.NN(
        first, hq.SingleLayer(first.out_features, 4, act="tanh", seed=1), hq.SingleLayer(4, 2, seed=2)
    )
    twin = hq.to_torch(net, dtype=torch.float64)
    f1 = lambda xi: twin(xi[None])[0]  # noqa: E731
    x = np.random.default_rng(0).standard_normal((3, d))
    with torch.no_grad():
        assert rel_err(hq.biharmonic(net, x), nested_biharmonic(f1, x).numpy()) <= RTOL
        V = np.random.default_rng(1).standard_normal((d, 2))
        for j, Dj in enumerate(hq.taylor_derivatives(net, x, V, 4), start=1):
            assert rel_err(Dj, nested_directional(f1, x, V, j).numpy()) <= RTOL, j


def _randomise(layer, rng):
    """Every parameter drawn afresh (the gated layers start with zero biases and α = 0)."""
    layer.load_state_dict({k: rng.uniform(-0.8, 0.8, np.shape(v)) for k, v in layer.state_dict().items()})
    return layer


def test_gated_layers_match_nested_ad():
    """GatedMLP (a product of two features per step: the Leibniz rule) and
    GatedResidual (α g(u) + (1 - α) u around a block), against their torch twins."""
    L = hq.layers.LAYERS
    rng = np.random.default_rng(0)
    block = hq.NN(hq.SingleLayer(3, 5, act="sin", seed=rng), hq.ResnetLayer(5, h=0.4, act="tanh", seed=rng))
    net = hq.NN(
        _randomise(L["GatedMLP"](2, 4, 2, 3, act="tanh", seed=rng), rng),
        _randomise(L["GatedResidual"](hq.NN(block, hq.SingleLayer(5, 3, act="tanh", seed=rng))), rng),
        hq.SingleLayer(3, 2, seed=rng),
    )
    twin = hq.to_torch(net, dtype=torch.float64)
    f1 = lambda xi: twin(xi[None])[0]  # noqa: E731
    x = rng.standard_normal((3, 2))
    with torch.no_grad():
        assert rel_err(net(x).value, twin(torch.as_tensor(x)).numpy()) <= 1e-14
        assert rel_err(hq.biharmonic(net, x), nested_biharmonic(f1, x).numpy()) <= RTOL
        V = rng.standard_normal((2, 2))
        for j, Dj in enumerate(hq.taylor_derivatives(net, x, V, 4), start=1):
            assert rel_err(Dj, nested_directional(f1, x, V, j).numpy()) <= RTOL, j


class _ScaledSin(hq.layers.Layer):
    """:math:`\\sin(\\omega_0 (uK + b))`, known to the sweeps only by its declared
    affine structure (the contract of the engine's affine routes)."""

    def __init__(self, p, q, w0, residual=False, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.in_features, self.out_features, self.w0, self.residual = p, q, w0, residual
        self._register("K", rng.uniform(-1, 1, (p, q)), (p, q))
        self._register("b", rng.uniform(-1, 1, (q,)), (q,))

    def affine_structure(self, params=None):
        from types import SimpleNamespace

        M = None if params is None else self.w0 * params["K"]
        b = None if params is None else self.w0 * params["b"]
        return SimpleNamespace(act=get_activation("sin"), M=M, b=b, scale=0.5, residual=self.residual)


def test_declared_affine_structure_is_used():
    layers = (
        hq.SingleLayer(2, 3, act="tanh", seed=1),
        _ScaledSin(3, 3, 1.5, residual=True),
        _ScaledSin(3, 2, 0.7),
    )
    net = hq.NN(*layers)

    def t(a):
        return torch.tensor(np.array(a))

    def f1(xi):
        u = torch.tanh(xi[None] @ t(layers[0].K) + t(layers[0].b))
        for lay in layers[1:]:
            z = lay.w0 * (u @ t(lay.K) + t(lay.b))
            u = u + 0.5 * torch.sin(z) if lay.residual else 0.5 * torch.sin(z)
        return u[0]

    x = np.random.default_rng(2).standard_normal((4, 2))
    assert rel_err(hq.biharmonic(net, x), nested_biharmonic(f1, x).numpy()) <= RTOL
    V = np.random.default_rng(3).standard_normal((2, 1))
    assert rel_err(hq.taylor_derivatives(net, x, V, 3)[-1], nested_directional(f1, x, V, 3).numpy()) <= RTOL


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_nested_ad(affine):
    """Layer normalisation: centring, a sum of squares and a product (Leibniz),
    and the power s^(-1/2). The reference writes the layer out in torch:
    nested *forward*-mode AD of ``torch.nn.LayerNorm`` itself is wrong in torch
    (pytorch/pytorch#196700, second-order JVP of layer_norm), while
    ``hessian`` (forward-over-reverse) of it agrees with the formula."""
    L = hq.layers.LAYERS
    rng = np.random.default_rng(0)
    norm = L["LayerNorm"](4, elementwise_affine=affine)
    if affine:
        _randomise(norm, rng)
    first, last = hq.SingleLayer(2, 4, act="tanh", seed=rng), hq.SingleLayer(4, 2, act="sin", seed=rng)
    net = hq.NN(first, norm, last)

    def t(a):
        return torch.tensor(np.array(a))

    def f1(xi):
        u = torch.tanh(xi[None] @ t(first.K) + t(first.b))
        c = u - u.mean(-1, keepdim=True)
        u = c / torch.sqrt((c * c).mean(-1, keepdim=True) + norm.eps)
        if affine:
            u = u * t(norm.gamma) + t(norm.beta)
        return torch.sin(u @ t(last.K) + t(last.b))[0]

    x = rng.standard_normal((3, 2))
    with torch.no_grad():
        assert rel_err(net(x).value, torch.func.vmap(f1)(torch.as_tensor(x)).numpy()) <= 1e-14
        assert rel_err(hq.biharmonic(net, x), nested_biharmonic(f1, x).numpy()) <= RTOL
        V = rng.standard_normal((2, 2))
        for j, Dj in enumerate(hq.taylor_derivatives(net, x, V, 4), start=1):
            assert rel_err(Dj, nested_directional(f1, x, V, j).numpy()) <= RTOL, j

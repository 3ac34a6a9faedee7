"""The dense Hessian / Gauss–Newton / empirical Fisher built from the layer blocks on and
below the diagonal only (issue 24, item 3): identical to the column-by-column build
(symmetric=False) and to torch.func to 1e-13 / 1e-12, exactly symmetric, and each column
block pushed only through the layers from its own on."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv

pytest.importorskip("torch")
from test_curvature import CASES, _jax_subset, _y, close, loss_name, problem  # noqa: E402


@pytest.mark.parametrize("name,kind", CASES)
def test_symmetric_hessian_equals_column_build_and_torch_func(lib, name, kind):
    jax = _jax_subset(lib, name)
    net, x, y, ref = problem(name, kind)
    xl, yl = lib.asarray(x), _y(lib, y)
    P = ref.lay.size
    bs, ex = (None, None) if jax else (7, 3)
    kw = dict(block_size=bs, batch_size=ex, backend=lib.backend)
    H = cv.hessian(net, xl, yl, loss_name(kind), **kw)
    lib.check(H, (P, P), like=xl)
    Hn = lib.to_numpy(H)
    old = lib.to_numpy(cv.hessian(net, xl, yl, loss_name(kind), symmetric=False, **kw))
    scale = max(1.0, float(np.max(np.abs(old))))
    assert np.max(np.abs(Hn - old)) <= 1e-13 * scale
    close(Hn, ref.hessian, atol=1e-12)
    np.testing.assert_array_equal(Hn, Hn.T)  # mirrored, not symmetric to rounding only


@pytest.mark.parametrize("name,kind", CASES)
def test_symmetric_ggn_and_fisher(name, kind):
    net, x, y, ref = problem(name, kind)
    ln = loss_name(kind)
    G = cv.ggn(net, x, y, ln, block_size=5)
    close(G, ref.ggn, atol=1e-12)
    assert np.max(np.abs(G - cv.ggn(net, x, y, ln, block_size=5, symmetric=False))) <= 1e-13 * max(
        1.0, np.max(np.abs(G))
    )
    F = cv.empirical_fisher_operator(net, x, y, ln, batch_size=2).to_dense(block_size=4)
    close(F, ref.fisher, atol=1e-12)
    np.testing.assert_array_equal(F, F.T)


def _count_passes(net, monkeypatch):
    """Count each leaf's forward and backward R-passes (instance attributes shadow the methods)."""
    counts = {"fwd": [0] * len(list(net._leaves())), "bwd": [0] * len(list(net._leaves()))}
    for i, leaf in enumerate(net._leaves()):
        for key, meth in (("fwd", "param_rop_forward"), ("bwd", "param_rop_backward")):
            orig = getattr(leaf, meth)

            def wrapped(*a, _orig=orig, _i=i, _key=key, **k):
                counts[_key][_i] += 1
                return _orig(*a, **k)

            monkeypatch.setattr(leaf, meth, wrapped)
    return counts


def test_each_column_block_runs_from_its_own_layer_on(monkeypatch):
    """Three layers, one block of columns per layer: layer i is visited by the blocks of
    layers 0..i only (1, 2, 3 times) instead of by all three (3, 3, 3)."""
    net = hq.FullyConnectedNN([3, 4, 5, 2], act="tanh", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    P = cv.parameter_layout(net).size
    counts = _count_passes(net, monkeypatch)
    H = cv.hessian(net, x, y, "cross_entropy", block_size=P)
    assert counts == {"fwd": [1, 2, 3], "bwd": [1, 2, 3]}
    counts["fwd"][:], counts["bwd"][:] = [0, 0, 0], [0, 0, 0]
    old = cv.hessian(net, x, y, "cross_entropy", block_size=P, symmetric=False)
    assert counts == {"fwd": [1, 1, 1], "bwd": [1, 1, 1]}  # one block of all P columns
    assert np.max(np.abs(H - old)) <= 1e-13 * np.max(np.abs(old))


def test_layers_without_parameters_and_bad_block_size():
    """A parameter-free layer (a frozen Fourier embedding) owns no column block."""
    from hessquik_core.layers import FourierFeatures, SingleLayer

    net = hq.NN(
        FourierFeatures(2, 3, trainable=False, seed=0), SingleLayer(6, 4, act="tanh"), SingleLayer(4, 2)
    )
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    H = cv.hessian(net, x, y, "mse", block_size=3)
    old = cv.hessian(net, x, y, "mse", block_size=3, symmetric=False)
    assert H.shape == old.shape == (cv.parameter_layout(net).size,) * 2
    assert np.max(np.abs(H - old)) <= 1e-13 * np.max(np.abs(old))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        cv.hessian_operator(net, x, y, "mse").to_dense(block_size=0)


@pytest.mark.parametrize("kind", ["hessian", "ggn", "fisher"])
def test_block_products_take_one_gemm_per_contraction_for_all_k_columns(monkeypatch, kind):
    """k directions go through every layer together: the number of GEMMs of a product does not
    grow with k (no loop over columns), and each column equals the single-vector product."""
    from hessquik_core.backends._numpy import NumPyBackend

    calls = []
    orig = NumPyBackend.mm

    def mm(self, a, b, **kw):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return orig(self, a, b, **kw)

    monkeypatch.setattr(NumPyBackend, "mm", mm)
    net = hq.FullyConnectedNN([3, 6, 5, 2], act="tanh", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.integers(0, 2, 7)
    make = {"hessian": cv.hessian_operator, "ggn": cv.ggn_operator, "fisher": cv.empirical_fisher_operator}
    op = make[kind](net, x, y, "cross_entropy", block_size=64)
    P = op.size
    V = rng.standard_normal((P, 32))
    op @ V[:, :1]  # the forward pass is cached from here on
    counts = {}
    for k in (1, 8, 32):
        calls.clear()
        out = op @ V[:, :k]
        counts[k] = len(calls)
        for j in (0, k - 1):
            np.testing.assert_allclose(out[:, j], op @ V[:, j], rtol=1e-13, atol=1e-15)
    assert counts[1] == counts[8] == counts[32] > 0, counts

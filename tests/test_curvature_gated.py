"""Parameter curvature of GatedMLP and GatedResidual (hq.curvature), and GatedResidual's file format.

Truth is torch.func (grad, hessian, jacrev) of a plain-torch rebuild of each network from
the layers' formulas (never the library's code), over the flattened parameter vector in
state_dict order, float64; networks mix GatedMLP / GatedResidual with dense, residual and
Fourier-feature layers; MSE and cross-entropy losses.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile

import numpy as np
import pytest
from _reference import torch_act, torch_jit_script_quiet
from layer_checks import check_save_load, check_to_torch

import hessquik_core as hq
from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
with torch_jit_script_quiet():
    # torch.func's forward mode imports this lazily and warns about its own use of torch.jit.script
    import torch._decomp.decompositions_for_jvp  # noqa: E402, F401

from hessquik_core.layers import GatedMLP, GatedResidual, ResnetLayer, SingleLayer  # noqa: E402
from hessquik_core.layers.fourier import FourierFeatures  # noqa: E402

# --------------------------------------------------------------------------
# the reference: each block's formula in torch, parameters by state_dict key
# --------------------------------------------------------------------------


def t_forward(block, P, prefix, x):
    """``block`` applied to ``x`` with the parameters ``P[prefix + key]`` (torch tensors)."""
    if isinstance(block, hq.NN):
        for i, b in enumerate(block.blocks):
            x = t_forward(b, P, f"{prefix}{i}.", x)
        return x

    def aff(key, u):
        z = u @ P[prefix + key + "K"]
        return z + P[prefix + key + "b"] if prefix + key + "b" in P else z

    if isinstance(block, SingleLayer):
        return torch_act(block.act, aff("", x))
    if isinstance(block, ResnetLayer):
        return x + block.h * torch_act(block.act, aff("layer.", x))
    if isinstance(block, FourierFeatures):
        z = x @ (2.0 * math.pi * P[prefix + "B"])
        return torch.cat([torch.sin(z), torch.cos(z)], dim=-1)
    if isinstance(block, GatedMLP):  # U, V, H_1; Z = σ(HW + b); H ← (1 - Z) U + Z V; linear read-out
        w = block.width
        s = aff("S.", x)
        U, V, H = (torch_act(block.act, s[..., j * w : (j + 1) * w]) for j in range(3))
        for i in range(block.depth):
            z = H @ P[f"{prefix}g{i}.W"]
            if f"{prefix}g{i}.b" in P:
                z = z + P[f"{prefix}g{i}.b"]
            Z = torch_act(block.act, z)
            H = (1 - Z) * U + Z * V
        return aff("out.", H)
    if isinstance(block, GatedResidual):  # α g(x) + (1 - α) x
        a = P[prefix + "alpha"]
        return a * t_forward(block.block, P, prefix + "block.", x) + (1 - a) * x
    raise TypeError(type(block))  # pragma: no cover


def t_per_example(kind, F, y):
    if kind == "mse":  # hq's "mse": ½‖f - y‖² per example
        return 0.5 * ((F - y) ** 2).sum(-1)
    return torch.nn.functional.cross_entropy(F, y, reduction="none")


class Ref:
    """torch.func truth for one (network, data, loss), mean reduction."""

    def __init__(self, net, x, y, kind):
        self.net, self.kind = net, kind
        self.lay = cv.parameter_layout(net)
        assert list(self.lay.keys) == list(net.state_dict())
        self.theta = torch.tensor(np.asarray(cv.flatten_parameters(net)))
        self.x, self.y = torch.tensor(x), torch.tensor(y)

    def F(self, theta):
        P = {
            k: theta[o : o + s].reshape(sh)
            for k, o, s, sh in zip(self.lay.keys, self.lay.offsets, self.lay.sizes, self.lay.shapes)
        }
        return t_forward(self.net, P, "", self.x)

    def per(self, theta):
        return t_per_example(self.kind, self.F(theta), self.y)

    def C(self, theta):
        return self.per(theta).mean()

    @functools.cached_property
    def grad(self):
        return torch.func.grad(self.C)(self.theta).numpy()

    @functools.cached_property
    def per_example(self):  # (N, P): gradients of the per-example losses
        return torch.func.jacrev(self.per)(self.theta).numpy()

    @functools.cached_property
    def hessian(self):
        return torch.func.hessian(self.C)(self.theta).numpy()

    @functools.cached_property
    def ggn(self):
        J = torch.func.jacrev(self.F)(self.theta)  # (N, m, P)
        F0 = self.F(self.theta).detach()
        HF = torch.func.hessian(lambda F: t_per_example(self.kind, F, self.y).mean())(F0)
        return torch.einsum("iap,iajb,jbq->pq", J, HF, J).numpy()

    @functools.cached_property
    def fisher(self):  # (1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ
        A = self.per_example
        return A.T @ A / A.shape[0]


# --------------------------------------------------------------------------
# architectures mixing the gated blocks with dense, residual and Fourier layers
# --------------------------------------------------------------------------


def _archs():
    return {
        # Fourier features -> gated MLP -> dense: the PINN stack
        "fourier_gated_dense": (
            lambda m: hq.NN(
                FourierFeatures(2, 3, scale=0.5, trainable=True, seed=0),
                GatedMLP(6, 4, 2, 3, act="tanh", seed=1),
                SingleLayer(3, m, act="identity", seed=2),
            ),
            2,
        ),
        # the gated MLP first (its S layer reads x: no input R-image), no biases, sine gates
        "gated_first_nobias": (
            lambda m: hq.NN(GatedMLP(2, 3, 2, m, act="sin", bias=False, seed=3)),
            2,
        ),
        # gated residual blocks around a gated MLP, a dense layer and a residual layer
        "dense_residuals": (
            lambda m: hq.NN(
                SingleLayer(2, 3, act="tanh", seed=4),
                GatedResidual(hq.NN(GatedMLP(3, 3, 1, 3, act="tanh", seed=5)), alpha=0.3),
                GatedResidual(SingleLayer(3, 3, act="softplus", seed=6), alpha=-0.4),
                GatedResidual(ResnetLayer(3, h=0.5, act="sin", seed=7), alpha=0.8),
                SingleLayer(3, m, act="identity", seed=8),
            ),
            2,
        ),
        # a gated residual block first (no input R-image), holding Fourier features,
        # and a nested gated residual block
        "residual_first_nested": (
            lambda m: hq.NN(
                GatedResidual(
                    hq.NN(
                        FourierFeatures(2, 2, trainable=True, seed=9),
                        SingleLayer(4, 2, act="tanh", seed=10),
                    ),
                    alpha=0.6,
                ),
                GatedResidual(
                    hq.NN(
                        GatedResidual(SingleLayer(2, 2, act="tanh", seed=11), alpha=0.2), SingleLayer(2, 2)
                    ),
                    alpha=0.45,
                ),
                GatedMLP(2, 3, 1, m, act="tanh", seed=12),
            ),
            2,
        ),
    }


ARCHS = _archs()
CASES = [(name, kind) for name in ARCHS for kind in ("mse", "ce")]


def _data(d, m, kind, n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.integers(0, m, n) if kind == "ce" else rng.standard_normal((n, m))
    return x, y


def _loss(kind):
    return "cross_entropy" if kind == "ce" else "mse"


@functools.cache
def problem(name, kind):
    make, d = ARCHS[name]
    m = 3 if kind == "ce" else 2
    net = make(m)
    x, y = _data(d, m, kind)
    return net, x, y, Ref(net, x, y, kind)


def rel_close(got, want, tol=1e-12):
    """``max |got - want| <= tol * max |want|`` (relative to the scale of the truth)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.max(np.abs(got - want))
    scale = max(np.max(np.abs(want)), 1e-300)
    assert err <= tol * scale, f"relative error {err / scale:.3e} > {tol:.0e}"


# --------------------------------------------------------------------------
# products against torch.func
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,kind", CASES)
def test_gradients_vs_torch_func(name, kind):
    net, x, y, ref = problem(name, kind)
    rel_close(cv.gradient(net, x, y, _loss(kind)), ref.grad)
    value, g = cv.value_and_gradient(net, x, y, _loss(kind))
    rel_close(g, ref.grad)
    rel_close(value, ref.C(ref.theta).item())
    # the per-example gradients are those of the per-example losses (no 1/N)
    rel_close(cv.per_example_gradients(net, x, y, _loss(kind)), ref.per_example)


@pytest.mark.parametrize("name,kind", CASES)
def test_hvp_ggn_fisher_products_vs_torch_func(name, kind):
    net, x, y, ref = problem(name, kind)
    V = np.random.default_rng(1).standard_normal((ref.lay.size, 3))
    ln = _loss(kind)
    for fn, M in ((cv.hvp, ref.hessian), (cv.ggn_vp, ref.ggn), (cv.empirical_fisher_vp, ref.fisher)):
        rel_close(fn(net, x, y, ln, V), M @ V)
        rel_close(fn(net, x, y, ln, V[:, 0]), M @ V[:, 0])


@pytest.mark.parametrize("name", ["fourier_gated_dense", "residual_first_nested"])
def test_dense_matrices_vs_torch_func(name):
    net, x, y, ref = problem(name, "ce")
    # blocks of 5 columns, mini-batches of 4 examples: still the exact full-data matrices
    H = cv.hessian(net, x, y, "cross_entropy", block_size=5, batch_size=4)
    rel_close(H, ref.hessian)
    assert np.max(np.abs(H - H.T)) <= 1e-13 * np.max(np.abs(H))
    rel_close(cv.ggn(net, x, y, "cross_entropy", block_size=7), ref.ggn)
    rel_close(cv.empirical_fisher(net, x, y, "cross_entropy"), ref.fisher)
    # the GGN differs from the Hessian: the blocks' own curvature terms are not zero
    assert np.linalg.norm(ref.hessian - ref.ggn) > 1e-3 * np.linalg.norm(ref.ggn)


def test_operators_and_other_libraries():
    """The torch backend and the generic one (array-api-strict) give the NumPy products, and
    a torch twin module is accepted as the network."""
    xs = pytest.importorskip("array_api_strict")
    net, x, y, ref = problem("dense_residuals", "mse")
    V = np.random.default_rng(2).standard_normal((ref.lay.size, 2))
    for fn, M in ((cv.hvp, ref.hessian), (cv.ggn_vp, ref.ggn), (cv.empirical_fisher_vp, ref.fisher)):
        out = fn(net, torch.from_numpy(x), torch.from_numpy(y), "mse", torch.from_numpy(V))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
        rel_close(out.numpy(), M @ V)
        out = fn(net, xs.asarray(x), xs.asarray(y), "mse", xs.asarray(V))
        rel_close(np.asarray(out), M @ V)
    Hop = cv.hessian_operator(net, x, y, "mse")
    rel_close(Hop @ V, ref.hessian @ V)
    # the torch twin (GatedResidualBlock, GatedMLPBlock) is converted back by from_torch
    tm = hq.to_torch(net)
    out = cv.hvp(tm, torch.from_numpy(x), torch.from_numpy(y), "mse", torch.from_numpy(V))
    rel_close(out.numpy(), ref.hessian @ V)


def test_float32_against_float64_truth():
    net, x, y, ref = problem("fourier_gated_dense", "ce")
    v = np.random.default_rng(3).standard_normal(ref.lay.size)
    x32 = x.astype(np.float32)
    for fn, M in ((cv.hvp, ref.hessian), (cv.ggn_vp, ref.ggn), (cv.empirical_fisher_vp, ref.fisher)):
        out = fn(net, x32, y, "cross_entropy", v.astype(np.float32))
        assert out.dtype == np.float32
        truth = M @ v
        assert np.linalg.norm(out - truth) <= 1e-5 * np.linalg.norm(truth)
    A = cv.per_example_gradients(net, x32, y, "cross_entropy")
    assert A.dtype == np.float32
    assert np.abs(A - ref.per_example).max() <= 1e-5 * np.abs(ref.per_example).max()


def test_hvp_taylor_rate():
    """|∇C(θ + hv) - ∇C(θ) - h Hv| = O(h²): the R-passes against the library's own gradient."""
    make, d = ARCHS["dense_residuals"]
    net = make(2)
    x, y = _data(d, 2, "mse", seed=4)
    lay = cv.parameter_layout(net)
    theta = cv.flatten_parameters(net)
    v = np.random.default_rng(5).standard_normal(lay.size)
    Hv = cv.hvp(net, x, y, "mse", v)
    g0 = cv.gradient(net, x, y, "mse")

    def grad_at(t):
        other = make(2)
        other.load_state_dict(lay.unflatten(t))
        return cv.gradient(other, x, y, "mse")

    errs = [np.linalg.norm(grad_at(theta + h * v) - g0 - h * Hv) for h in (1e-2, 5e-3, 2.5e-3)]
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(rates > 1.9), rates


def test_alpha_zero_block_still_has_curvature():
    """At α = 0 the block is the identity, but ∂f/∂α = g(x) - x and the mixed α/θ_g terms are not zero."""
    net = hq.NN(SingleLayer(2, 3, act="tanh", seed=0), GatedResidual(GatedMLP(3, 3, 1, 3, seed=1)))
    x, y = _data(2, 3, "mse", seed=6)
    ref = Ref(net, x, y, "mse")
    lay = cv.parameter_layout(net)
    V = np.eye(lay.size)[:, lay.slice("1.alpha")]
    Hv = cv.hvp(net, x, y, "mse", V)
    rel_close(Hv, ref.hessian @ V)
    assert np.abs(Hv[lay.slice("1.block.S.K")]).max() > 1e-3  # the α/θ_g block


# --------------------------------------------------------------------------
# GatedResidual: save / load, state_dict, torch twin
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dense_residuals", "residual_first_nested"])
def test_save_load_round_trip(name):
    net, x, _, _ = problem(name, "mse")
    check_save_load(net, x)
    check_to_torch(net, x)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.safetensors")
        hq.save(net, path)
        back = hq.load(path)
        from safetensors.numpy import load_file

        raw = load_file(path)
    assert list(back.state_dict()) == list(net.state_dict()) == sorted(raw, key=list(net.state_dict()).index)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
        np.testing.assert_array_equal(raw[k], v)
    assert repr(back) == repr(net)
    # the curvature of the loaded network is the same
    xs, ys = _data(2, 2, "mse", seed=7)
    v = np.random.default_rng(8).standard_normal(cv.parameter_layout(net).size)
    np.testing.assert_array_equal(cv.hvp(back, xs, ys, "mse", v), cv.hvp(net, xs, ys, "mse", v))


def test_save_load_float32_and_layer_block():
    res = GatedResidual(SingleLayer(3, 3, act="tanh", seed=0, dtype=np.float32), alpha=0.25, dtype=np.float32)
    assert list(res.state_dict()) == ["alpha", "block.K", "block.b"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "res.safetensors")
        hq.save(res, path)
        back = hq.load(path)
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
    arch = json.loads(header["__metadata__"]["architecture"])
    assert arch["layer"] == "GatedResidual" and arch["config"] == {}
    assert arch["block"]["layer"] == "SingleLayer"
    assert isinstance(back, GatedResidual) and isinstance(back.block, SingleLayer)
    for k, v in res.state_dict().items():
        assert back.state_dict()[k].dtype == np.float32
        np.testing.assert_array_equal(back.state_dict()[k], v)
    x = np.random.default_rng(9).standard_normal((3, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x).value, res(x).value)


def test_load_refuses_a_malformed_nested_node():
    from hessquik_core import io

    tables = io._class_tables()
    good = {"layer": "GatedResidual", "config": {}, "block": {"layer": "SingleLayer", "config": {}}}
    with pytest.raises(io.FileFormatError, match="missing \\['block'\\]"):
        io._plan({"layer": "GatedResidual", "config": {}}, tables)
    with pytest.raises(io.FileFormatError, match="architecture.block.config"):
        io._plan(good, tables)
    with pytest.raises(io.FileFormatError, match="architecture.block: expected an object"):
        io._plan({**good, "block": [1]}, tables)
    with pytest.raises(io.FileFormatError, match="unexpected \\['block'\\]"):
        io._plan({"layer": "SingleLayer", "config": {}, "block": {}}, tables)
    blk = {"layer": "SingleLayer", "config": {"in_features": 2, "out_features": 2, "bias": True}}
    blk["act"] = {"name": "tanh", "config": {}}
    shapes = io._plan({**good, "block": {"network": "NN", "blocks": [blk]}}, tables)
    assert shapes == {"alpha": (1,), "block.0.K": (2, 2), "block.0.b": (2,)}

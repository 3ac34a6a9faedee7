"""Parameter curvature (hessquik_core.curvature): losses, gradients, per-example
gradients, Hessian / Gauss-Newton / empirical-Fisher products and dense matrices.

Truth is torch.func (grad, hessian, jacrev) through ``functional_call`` on
torch reference models written here from the layer formulas, in float64,
over the flattened parameter vector in state_dict order.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import curvature as cv

torch = pytest.importorskip("torch")
from _reference import torch_jit_script_quiet  # noqa: E402

with torch_jit_script_quiet():
    # torch.func's forward mode imports this lazily and warns about its own use of torch.jit.script
    import torch._decomp.decompositions_for_jvp  # noqa: E402, F401
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# --------------------------------------------------------------------------
# torch reference models, from the math (never from the library's code)
# --------------------------------------------------------------------------

_TACT = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda z: z,
    "quadratic": lambda z: 0.5 * z * z,
    "sin": torch.sin,
    "silu": torch.nn.functional.silu,
    "antitanh": lambda z: torch.log(2.0 * torch.cosh(z)),
}


def _act(act, z):
    if act.name == "softplus":
        return torch.nn.functional.softplus(z, beta=act.beta, threshold=act.threshold)
    return _TACT[act.name](z)


class TRef(torch.nn.Module):
    """Torch twin of a hessquik_core block; ``named_parameters`` == ``state_dict`` keys."""

    def __init__(self, block):
        super().__init__()
        from hessquik_core.layers import (
            ICNNLayer,
            QuadraticICNNLayer,
            QuadraticLayer,
            ResnetLayer,
            SingleLayer,
        )

        self.block = block
        if isinstance(block, hq.NN):
            self.kind = "nn"
            for i, b in enumerate(block.blocks):
                self.add_module(str(i), TRef(b))
            return
        self.kind = {
            SingleLayer: "single",
            ResnetLayer: "resnet",
            ICNNLayer: "icnn",
            QuadraticLayer: "quad",
            QuadraticICNNLayer: "qicnn",
        }[type(block)]
        if self.kind == "resnet":
            self.add_module("layer", TRef(block.layer))
            return
        for name, p in block._params.items():
            if p is not None:
                self.register_parameter(name, torch.nn.Parameter(torch.tensor(np.asarray(p))))

    def _p(self, name):
        return self._parameters.get(name)

    def forward(self, x):
        sp = torch.nn.functional.softplus
        b = self.block
        if self.kind == "nn":
            for child in self.children():
                x = child(x)
            return x
        if self.kind == "single":
            z = x @ self._p("K")
            return _act(b.act, z if self._p("b") is None else z + self._p("b"))
        if self.kind == "resnet":
            inner = self.layer
            z = x @ inner._p("K")
            z = z if inner._p("b") is None else z + inner._p("b")
            return x + b.h * _act(b.act, z)
        if self.kind == "icnn":
            s = b.n_in
            u, xx = x[:, :s], x[:, s:]
            z = xx @ self._p("K")
            if self._p("L") is not None:
                z = z + u @ sp(self._p("L"))
            if self._p("b") is not None:
                z = z + self._p("b")
            return torch.cat([_act(b.act, z), xx], dim=-1)
        s = b.n_in if self.kind == "qicnn" else 0
        u, xx = x[:, :s], x[:, s:]
        a = xx @ self._p("A").T
        f = xx @ self._p("v") + 0.5 * (a * a).sum(-1) + self._p("mu")
        if self._p("w") is not None:
            f = f + u @ sp(self._p("w"))
        return f[:, None]


def t_loss(kind, F, y, reduction="mean"):
    """Reference training loss from torch primitives."""
    if kind == "mse":
        per = 0.5 * ((F - y) ** 2).sum(-1)
    else:
        per = torch.nn.functional.cross_entropy(F, y, reduction="none")
    return per.mean() if reduction == "mean" else per.sum()


class Ref:
    """torch.func truth for one (network, data, loss)."""

    def __init__(self, net, x, y, kind, reduction="mean"):
        self.net, self.kind, self.reduction = net, kind, reduction
        self.model = TRef(net)
        self.lay = cv.parameter_layout(net)
        names = [k for k, _ in self.model.named_parameters()]
        assert names == list(self.lay.keys), (names, self.lay.keys)
        self.theta = torch.tensor(np.asarray(cv.flatten_parameters(net)))
        self.x = torch.tensor(x)
        self.y = torch.tensor(y)

    def params(self, theta):
        return {
            k: theta[o : o + s].reshape(sh)
            for k, o, s, sh in zip(self.lay.keys, self.lay.offsets, self.lay.sizes, self.lay.shapes)
        }

    def F(self, theta, x=None):
        return torch.func.functional_call(self.model, self.params(theta), (self.x if x is None else x,))

    def C(self, theta):
        return t_loss(self.kind, self.F(theta), self.y, self.reduction)

    def _per(self, theta):
        F = self.F(theta)
        if self.kind == "mse":
            return 0.5 * ((F - self.y) ** 2).sum(-1)
        return torch.nn.functional.cross_entropy(F, self.y, reduction="none")

    @functools.cached_property
    def value(self):
        return self.C(self.theta).item()

    @functools.cached_property
    def grad(self):
        return torch.func.grad(self.C)(self.theta).numpy()

    @functools.cached_property
    def hessian(self):
        return torch.func.hessian(self.C)(self.theta).numpy()

    @functools.cached_property
    def per_example(self):
        return torch.func.jacrev(self._per)(self.theta).numpy()

    @functools.cached_property
    def ggn(self):
        J = torch.func.jacrev(self.F)(self.theta)  # (N, m, P)
        F0 = self.F(self.theta).detach()
        HF = torch.func.hessian(lambda F: t_loss(self.kind, F, self.y, self.reduction))(F0)  # (N, m, N, m)
        return torch.einsum("iap,iajb,jbq->pq", J, HF, J).numpy()

    @functools.cached_property
    def fisher(self):
        A = self.per_example
        return A.T @ A / A.shape[0]


# --------------------------------------------------------------------------
# architectures: every layer type, nested NNs, switched-off parameters
# --------------------------------------------------------------------------


def _archs():
    from hessquik_core.activations import Softplus

    return {
        "fc_tanh": (lambda: hq.FullyConnectedNN([3, 5, 4], act="tanh", seed=1), 3, 4),
        "single_resnet_nested": (
            lambda: hq.NN(
                hq.SingleLayer(3, 4, act="softplus", seed=2),
                hq.NN(
                    hq.ResnetLayer(4, h=0.3, act="antitanh", seed=3),
                    hq.ResnetLayer(4, h=0.7, act="sin", seed=4),
                ),
                hq.SingleLayer(4, 3, act="identity", bias=False, seed=5),
            ),
            3,
            3,
        ),
        "icnn": (lambda: hq.ICNN(3, [None, 4, 3], act=Softplus(beta=2.0), seed=6), 3, 6),
        "icnn_qicnn": (
            lambda: hq.NN(
                hq.ICNNLayer(3, None, 4, act="sigmoid", seed=7),
                hq.ICNNLayer(3, 4, 2, act="silu", bias=False, seed=8),
                hq.QuadraticICNNLayer(3, 2, 2, seed=9),
            ),
            3,
            1,
        ),
        "qicnn_first": (lambda: hq.NN(hq.QuadraticICNNLayer(3, None, 2, seed=10)), 3, 1),
        "single_quadratic": (
            lambda: hq.NN(hq.SingleLayer(3, 4, act="quadratic", seed=11), hq.QuadraticLayer(4, 3, seed=12)),
            3,
            1,
        ),
    }


ARCHS = _archs()


def make_data(d, m, kind, n=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.integers(0, m, n) if kind == "ce" else rng.standard_normal((n, m))
    return x, y


def loss_name(kind):
    return "cross_entropy" if kind == "ce" else "mse"


def cases():
    out = []
    for name, (_, _, m) in ARCHS.items():
        out.append((name, "mse"))
        if m >= 2:
            out.append((name, "ce"))
    return out


CASES = cases()


@functools.cache
def problem(name, kind, reduction="mean"):
    make, d, m = ARCHS[name]
    net = make()
    x, y = make_data(d, m, kind)
    return net, x, y, Ref(net, x, y, kind, reduction)


def _y(lib, y):
    return lib.asarray(y)


# JAX runs eagerly here and compiles every new shape: it covers every layer type
# through these architectures only, in one pass, to keep the suite fast.
JAX_ARCHS = ("single_resnet_nested", "icnn_qicnn")


def _jax_subset(lib, name):
    if lib.name == "jax" and name not in JAX_ARCHS:
        pytest.skip("JAX: covered by JAX_ARCHS (eager compilation per shape is slow)")
    return lib.name == "jax"


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# 1. losses against dense brute force
# --------------------------------------------------------------------------


def _dense_loss_derivs(kind, F, y, reduction):
    Ft = torch.tensor(F)
    yt = torch.tensor(y)

    def C(Fflat):
        return t_loss(kind, Fflat.reshape(F.shape), yt, reduction)

    g = torch.func.grad(C)(Ft.reshape(-1)).numpy().reshape(F.shape)
    H = torch.func.hessian(C)(Ft.reshape(-1)).numpy()
    return C(Ft.reshape(-1)).item(), g, H


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["mse", "ce_int", "ce_onehot", "ce_soft"])
def test_loss_value_gradient_hessian_vs_dense(lib, kind, reduction, rng):
    N, m = 5, 4
    F = 3.0 * rng.standard_normal((N, m))
    if kind == "mse":
        y, ty, loss = rng.standard_normal((N, m)), None, cv.MSELoss(reduction)
    else:
        lab = rng.integers(0, m, N)
        loss = cv.CrossEntropyLoss(reduction)
        if kind == "ce_int":
            y = lab
        elif kind == "ce_onehot":
            y = np.eye(m)[lab]
        else:
            y = rng.dirichlet(np.ones(m), N)
        ty = y
    val_ref, g_ref, H_ref = _dense_loss_derivs(
        "mse" if kind == "mse" else "ce", F, y if ty is None else ty, reduction
    )
    Fl, yl = lib.asarray(F), lib.asarray(y)
    val = loss.value(Fl, yl)
    g = loss.gradient(Fl, yl)
    Hb = loss.hessian(Fl, yl)
    lib.check(g, (N, m), like=Fl)
    lib.check(Hb, (N, m, m), like=Fl)
    close(lib.to_numpy(val), val_ref)
    close(lib.to_numpy(g), g_ref)
    # the dense (Nm x Nm) Hessian of C is block diagonal with exactly these blocks
    H = np.zeros((N * m, N * m))
    for n in range(N):
        H[n * m : (n + 1) * m, n * m : (n + 1) * m] = lib.to_numpy(Hb)[n]
    close(H, H_ref, atol=1e-13)
    R = rng.standard_normal((N, m))
    close(lib.to_numpy(loss.hvp(Fl, yl, lib.asarray(R))), np.einsum("nab,nb->na", lib.to_numpy(Hb), R))
    close(lib.to_numpy(loss.per_example(Fl, yl)).sum() * loss.weight(N), val_ref)


def test_loss_conventions_pinned(rng):
    """½ in MSE, mean over examples, sum over outputs; CE == torch cross_entropy."""
    F, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    assert float(cv.MSELoss().value(F, y)) == pytest.approx(0.5 * np.sum((F - y) ** 2) / 6, rel=1e-14)
    assert float(cv.MSELoss("sum").value(F, y)) == pytest.approx(0.5 * np.sum((F - y) ** 2), rel=1e-14)
    # torch's MSELoss averages over all N·m entries without the ½
    tmse = torch.nn.functional.mse_loss(torch.tensor(F), torch.tensor(y)).item()
    assert float(cv.MSELoss().value(F, y)) == pytest.approx(tmse * 3 / 2, rel=1e-14)
    lab = rng.integers(0, 3, 6)
    tce = torch.nn.functional.cross_entropy(torch.tensor(F), torch.tensor(lab)).item()
    assert float(cv.CrossEntropyLoss().value(F, lab)) == pytest.approx(tce, rel=1e-14)


def test_cross_entropy_stable_for_huge_logits():
    F = np.array([[1e4, -1e4, 0.0], [-3e4, 2e4, 2e4 - 1.0]])
    lab = np.array([0, 2])
    loss = cv.CrossEntropyLoss()
    per = loss.per_example(F, lab)
    assert np.all(np.isfinite(per)) and np.all(np.isfinite(loss.hessian(F, lab)))
    # shift invariance: lse(f + c) - (f + c)_y = lse(f) - f_y
    np.testing.assert_allclose(per, loss.per_example(F - F.max(axis=1, keepdims=True), lab), atol=1e-12)
    np.testing.assert_allclose(per, [0.0, 1.0 + np.log1p(np.exp(-1.0))], atol=1e-12)
    g32 = loss.gradient(F.astype(np.float32), lab)
    assert g32.dtype == np.float32 and np.all(np.isfinite(g32))


def test_loss_bad_input(rng):
    F = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cv.CrossEntropyLoss().value(F, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="shape"):
        cv.CrossEntropyLoss().value(F, np.array([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        cv.CrossEntropyLoss().value(F, np.array([True, False, True, False]))
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        cv.MSELoss().value(F, F[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        cv.MSELoss("avg")
    with pytest.raises(ValueError, match="loss must be"):
        cv.get_loss("hinge")


# --------------------------------------------------------------------------
# 2. layout, gradients, per-example gradients
# --------------------------------------------------------------------------


def test_layout_order_and_roundtrip(rng):
    net = ARCHS["single_resnet_nested"][0]()
    lay = cv.parameter_layout(net)
    sd = net.state_dict()
    assert lay.keys == tuple(sd)
    assert lay.keys[:4] == ("0.K", "0.b", "1.0.layer.K", "1.0.layer.b")
    assert lay.size == sum(int(np.prod(a.shape)) for a in sd.values())
    theta = cv.flatten_parameters(net)
    np.testing.assert_array_equal(theta[lay.slice("0.K")], np.asarray(sd["0.K"]).ravel())  # row-major
    back = lay.unflatten(theta)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    # per-example arrays keep their leading axis
    A = rng.standard_normal((5, lay.size))
    parts = lay.unflatten(A)
    assert parts["1.1.layer.K"].shape == (5, 4, 4)
    np.testing.assert_array_equal(lay.flatten(parts), A)
    # loading a changed vector changes the network, and flatten sees it
    net2 = ARCHS["single_resnet_nested"][0]()
    net2.load_state_dict(lay.unflatten(theta + 1.0))
    np.testing.assert_allclose(cv.flatten_parameters(net2), theta + 1.0)
    t = cv.flatten_parameters(net, like=torch.zeros(1, dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    with pytest.raises(ValueError, match="theta must have shape"):
        lay.unflatten(theta[:-1])
    with pytest.raises(ValueError, match="missing"):
        lay.flatten({"0.K": sd["0.K"]})


@pytest.mark.parametrize("name,kind", CASES)
def test_gradient_and_per_example_vs_torch_func(lib, name, kind):
    _jax_subset(lib, name)
    net, x, y, ref = problem(name, kind)
    xl, yl = lib.asarray(x), _y(lib, y)
    val, g = cv.value_and_gradient(net, xl, yl, loss_name(kind), backend=lib.backend)
    lib.check(g, (ref.lay.size,), like=xl)
    close(lib.to_numpy(val), ref.value)
    close(lib.to_numpy(g), ref.grad)
    A = cv.per_example_gradients(net, xl, yl, loss_name(kind), backend=lib.backend)
    lib.check(A, (x.shape[0], ref.lay.size), like=xl)
    close(lib.to_numpy(A), ref.per_example)
    # mean of per-example gradients == batch gradient (reduction mean)
    close(lib.to_numpy(A).mean(axis=0), lib.to_numpy(g))


def test_sum_of_per_example_gradients_is_batch_gradient(rng):
    net = ARCHS["icnn"][0]()
    x, y = make_data(3, 6, "ce", n=9)
    loss = cv.CrossEntropyLoss("sum")
    A = cv.per_example_gradients(net, x, y, loss)
    np.testing.assert_allclose(A.sum(axis=0), cv.gradient(net, x, y, loss), rtol=1e-12, atol=1e-13)
    # mini-batches accumulate to the full-data gradient with the global 1/N
    g_mean = cv.gradient(net, x, y, "cross_entropy")
    np.testing.assert_allclose(cv.gradient(net, x, y, "cross_entropy", batch_size=4), g_mean, rtol=1e-12)
    np.testing.assert_allclose(A.sum(axis=0) / 9, g_mean, rtol=1e-12, atol=1e-14)


def test_gradient_taylor_rate(rng):
    """|C(θ+hv) - C(θ) - h gᵀv| = O(h²) with the library's own gradient: no torch involved."""
    make, d, m = ARCHS["icnn_qicnn"]
    net = make()
    x, y = make_data(d, m, "mse")
    lay = cv.parameter_layout(net)
    theta = cv.flatten_parameters(net)
    v = rng.standard_normal(lay.size)
    g = cv.gradient(net, x, y, "mse")

    def C(t):
        net2 = make()
        net2.load_state_dict(lay.unflatten(t))
        return float(cv.value_and_gradient(net2, x, y, "mse")[0])

    c0 = C(theta)
    errs = [abs(C(theta + h * v) - c0 - h * g @ v) for h in (1e-2, 5e-3, 2.5e-3)]
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(rates > 1.9), rates


# --------------------------------------------------------------------------
# 3. Hessian, GGN, empirical Fisher
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name,kind", CASES)
def test_hessian_vs_torch_func(lib, name, kind):
    jax = _jax_subset(lib, name)
    net, x, y, ref = problem(name, kind)
    xl, yl = lib.asarray(x), _y(lib, y)
    P = ref.lay.size
    # blocks of 7 columns, mini-batches of 3 examples: still the exact full-data Hessian
    bs, ex = (None, None) if jax else (7, 3)
    H = cv.hessian(net, xl, yl, loss_name(kind), block_size=bs, batch_size=ex, backend=lib.backend)
    lib.check(H, (P, P), like=xl)
    Hn = lib.to_numpy(H)
    close(Hn, ref.hessian, atol=1e-12)
    assert np.max(np.abs(Hn - Hn.T)) <= 1e-13 * max(1.0, np.max(np.abs(Hn)))


@pytest.mark.parametrize("name,kind", CASES)
def test_ggn_and_fisher_vs_reference(name, kind):
    net, x, y, ref = problem(name, kind)
    ln = loss_name(kind)
    close(cv.ggn(net, x, y, ln, block_size=5), ref.ggn, atol=1e-12)
    Gop = cv.empirical_fisher_operator(net, x, y, ln, batch_size=2)
    close(Gop.to_dense(), ref.fisher, atol=1e-12)
    close(cv.empirical_fisher(net, x, y, ln), ref.fisher, atol=1e-12)


def test_products_all_libraries(lib, rng):
    net, x, y, ref = problem("icnn_qicnn", "mse")
    xl, yl = lib.asarray(x), _y(lib, y)
    V = rng.standard_normal((ref.lay.size, 3))
    for fn, M in ((cv.hvp, ref.hessian), (cv.ggn_vp, ref.ggn), (cv.empirical_fisher_vp, ref.fisher)):
        out = fn(net, xl, yl, "mse", lib.asarray(V), backend=lib.backend)
        lib.check(out, V.shape, like=xl)
        close(lib.to_numpy(out), M @ V, atol=1e-12)
        if lib.name == "jax":
            continue
        out1 = fn(net, xl, yl, "mse", lib.asarray(V[:, 0]), backend=lib.backend)
        lib.check(out1, (V.shape[0],), like=xl)
        close(lib.to_numpy(out1), M @ V[:, 0], atol=1e-12)


def test_fisher_is_not_outer_product_of_mean_gradient():
    net, x, y, ref = problem("fc_tanh", "ce")
    G = cv.empirical_fisher(net, x, y, "cross_entropy")
    g = cv.gradient(net, x, y, "cross_entropy")
    outer = np.outer(g, g)
    assert np.linalg.norm(G - outer) > 0.1 * np.linalg.norm(G)
    # G - ggᵀ is the (biased) covariance of the per-example gradients: PSD
    assert np.linalg.eigvalsh(G - outer).min() > -1e-12
    # and GGN != empirical Fisher != Hessian in general
    assert np.linalg.norm(ref.ggn - G) > 1e-3 * np.linalg.norm(G)
    assert np.linalg.norm(ref.hessian - ref.ggn) > 1e-3 * np.linalg.norm(ref.ggn)


def test_reduction_sum_scales_by_n():
    net, x, y, ref = problem("fc_tanh", "ce")
    n = x.shape[0]
    Hs = cv.hessian(net, x, y, cv.CrossEntropyLoss("sum"))
    close(Hs, n * ref.hessian, atol=1e-11)
    # G keeps its 1/N whatever the reduction
    close(cv.empirical_fisher(net, x, y, cv.CrossEntropyLoss("sum")), ref.fisher, atol=1e-12)


def test_hvp_taylor_rate(rng):
    """|∇C(θ+hv) - ∇C(θ) - h Hv| = O(h²): the R-operator against the library's own gradient."""
    make, d, m = ARCHS["single_resnet_nested"]
    net = make()
    x, y = make_data(d, m, "ce")
    lay = cv.parameter_layout(net)
    theta = cv.flatten_parameters(net)
    v = rng.standard_normal(lay.size)
    Hv = cv.hvp(net, x, y, "cross_entropy", v)
    g0 = cv.gradient(net, x, y, "cross_entropy")

    def grad_at(t):
        net2 = make()
        net2.load_state_dict(lay.unflatten(t))
        return cv.gradient(net2, x, y, "cross_entropy")

    errs = [np.linalg.norm(grad_at(theta + h * v) - g0 - h * Hv) for h in (1e-2, 5e-3, 2.5e-3)]
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(rates > 1.9), rates


def test_float32_against_float64_truth(rng):
    net, x, y, ref = problem("single_resnet_nested", "ce")
    v = rng.standard_normal(ref.lay.size)
    Hv = cv.hvp(net, x.astype(np.float32), y, "cross_entropy", v.astype(np.float32))
    assert Hv.dtype == np.float32
    truth = ref.hessian @ v
    assert np.linalg.norm(Hv - truth) <= 1e-5 * np.linalg.norm(truth)
    A = cv.per_example_gradients(net, x.astype(np.float32), y, "cross_entropy")
    assert A.dtype == np.float32
    assert np.abs(A - ref.per_example).max() <= 1e-5 * np.abs(ref.per_example).max()


def test_forced_backend_returns_callers_library(rng):
    net, x, y, ref = problem("fc_tanh", "ce")
    v = rng.standard_normal(ref.lay.size)
    out = cv.hvp(net, x, y, "cross_entropy", v, backend="torch")
    assert isinstance(out, np.ndarray)
    close(out, ref.hessian @ v)
    A = cv.per_example_gradients(net, torch.tensor(x), torch.tensor(y), "cross_entropy", backend="numpy")
    assert isinstance(A, torch.Tensor)
    close(A.numpy(), ref.per_example)


def test_torch_parameters_with_requires_grad_give_plain_tensors():
    make, d, m = ARCHS["fc_tanh"]
    net = make().to("torch", requires_grad=True)
    x, y = make_data(d, m, "ce")
    ref = problem("fc_tanh", "ce")[3]
    A = cv.per_example_gradients(net, torch.tensor(x), torch.tensor(y), "cross_entropy")
    Hv = cv.hvp(
        net, torch.tensor(x), torch.tensor(y), "cross_entropy", torch.ones(ref.lay.size, dtype=torch.float64)
    )
    assert not A.requires_grad and not Hv.requires_grad
    close(A.numpy(), ref.per_example)
    close(Hv.numpy(), ref.hessian @ np.ones(ref.lay.size))


def test_memory_budget_sets_block_size():
    net, x, y, _ = problem("fc_tanh", "ce")
    small = cv.hessian_operator(net, x, y, "cross_entropy", memory_budget=4096)
    big = cv.hessian_operator(net, x, y, "cross_entropy")
    assert 1 <= small.block_size < big.block_size == big.size
    # keeping each mini-batch's forward pass between products changes nothing
    cached = cv.hessian_operator(net, x, y, "cross_entropy", batch_size=3, cache_forward=True)
    V = np.random.default_rng(3).standard_normal((big.size, 2))
    np.testing.assert_allclose(cached @ V, big @ V, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cached @ V, big @ V, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(small.to_dense(), big.to_dense(), rtol=1e-13, atol=1e-15)


def test_operator_bad_input(rng):
    net, x, y, _ = problem("fc_tanh", "ce")
    op = cv.hessian_operator(net, x, y, "cross_entropy")
    with pytest.raises(ValueError, match=r"shape \(44, k\)"):
        op.matmat(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"shape \(44,\)"):
        op.matvec(np.ones(3))
    with pytest.raises(ValueError, match="rows"):
        cv.hvp(net, x, y[:3], "cross_entropy", np.ones(44))
    with pytest.raises(ValueError, match="batch_size"):
        cv.hessian_operator(net, x, y, "cross_entropy", batch_size=0)
    with pytest.raises(ValueError, match="x must have shape"):
        cv.gradient(net, x[:, :2], y, "cross_entropy")
    with pytest.raises(TypeError, match="network"):
        cv.gradient(object(), x, y, "mse")
    xc = x.copy()
    cv.hvp(net, xc, y, "cross_entropy", np.ones(44))
    np.testing.assert_array_equal(xc, x)  # caller arrays untouched


# --------------------------------------------------------------------------
# property test: random architectures
# --------------------------------------------------------------------------


@st.composite
def architectures(draw):
    acts = ["tanh", "softplus", "sigmoid", "sin", "silu", "antitanh", "identity", "quadratic"]
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    d = draw(st.integers(1, 3))
    family = draw(st.sampled_from(["fc", "resnet", "icnn"]))
    blocks = []
    if family == "icnn":
        widths = [None] + draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
        for i in range(len(widths) - 1):
            blocks.append(
                hq.ICNNLayer(
                    d,
                    widths[i],
                    widths[i + 1],
                    act=draw(st.sampled_from(acts)),
                    bias=draw(st.booleans()),
                    seed=rng,
                )
            )
        last = widths[-1]
        if draw(st.booleans()):
            blocks.append(hq.QuadraticICNNLayer(d, last, draw(st.integers(1, 2)), seed=rng))
    else:
        w = draw(st.integers(1, 4))
        blocks.append(
            hq.SingleLayer(d, w, act=draw(st.sampled_from(acts)), bias=draw(st.booleans()), seed=rng)
        )
        for _ in range(draw(st.integers(0, 2))):
            if family == "resnet":
                blk = hq.ResnetLayer(
                    w, h=draw(st.floats(0.1, 1.0)), act=draw(st.sampled_from(acts)), seed=rng
                )
            else:
                w2 = draw(st.integers(1, 4))
                blk = hq.SingleLayer(w, w2, act=draw(st.sampled_from(acts)), seed=rng)
                w = w2
            blocks.append(hq.NN(blk) if draw(st.booleans()) else blk)
        if draw(st.booleans()):
            blocks.append(hq.QuadraticLayer(w, draw(st.integers(1, 2)), seed=rng))
    return hq.NN(*blocks), d, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), kind=st.sampled_from(["mse", "ce"]))
def test_property_random_architectures(arch, kind):
    net, d, seed = arch
    m = net.out_features
    if kind == "ce" and m < 2:
        kind = "mse"
    x, y = make_data(d, m, kind, n=4, seed=seed)
    ref = Ref(net, x, y, kind)
    rng = np.random.default_rng(seed + 1)
    v = rng.standard_normal(ref.lay.size)
    ln = loss_name(kind)
    # HVP against torch.func forward-over-reverse
    _, hv_ref = torch.func.jvp(torch.func.grad(ref.C), (ref.theta,), (torch.tensor(v),))
    close(cv.hvp(net, x, y, ln, v), hv_ref.numpy(), rtol=1e-9, atol=1e-11)
    A = cv.per_example_gradients(net, x, y, ln)
    close(A, ref.per_example, rtol=1e-9, atol=1e-11)
    close(A.mean(axis=0), cv.gradient(net, x, y, ln), rtol=1e-9, atol=1e-12)
    Gv = cv.empirical_fisher_vp(net, x, y, ln, v)
    close(Gv, A.T @ (A @ v) / x.shape[0], rtol=1e-9, atol=1e-11)
    # GGN is symmetric positive semi-definite for both losses
    M = cv.ggn(net, x, y, ln)
    assert np.abs(M - M.T).max() <= 1e-12 * max(1.0, np.abs(M).max())
    assert np.linalg.eigvalsh(M).min() >= -1e-10 * max(1.0, np.abs(M).max())

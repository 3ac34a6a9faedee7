"""Backends: results in the caller's library/dtype/device, backend forcing,
mixed-array rejection, the parameter-conversion cache, torch autograd to the
parameters, import hygiene and value-only calls doing no derivative work."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _optional import needs_torch, torch
from _reference import build, representative_only_on_jax

import hessquik_core as hq
from hessquik_core import activations as acts_mod

ALL = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)
FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal")


def shapes(n, d, m):
    return {
        "value": (n, m),
        "gradient": (n, d, m),
        "hessian": (n, d, d, m),
        "laplacian": (n, m),
        "hessian_diagonal": (n, d, m),
    }


# --------------------------------------------------------------------------
# library, dtype, device of results
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["nested-NN", "QuadraticICNNLayer"])
def test_results_in_input_library(kind, dtype, lib, rng):
    representative_only_on_jax(lib, kind)
    net, d = build(kind, "softplus")
    m, n = net.out_features, 3
    x_np = rng.normal(size=(n, d)).astype(dtype)
    x = lib.asarray(x_np)
    ref = net(x_np.astype(np.float64), mode="forward", **ALL)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for mode in ("forward", "backward"):
        r = net(x, mode=mode, backend=lib.backend, **ALL)
        assert r.mode == mode
        for name, shape in shapes(n, d, m).items():
            lib.check(getattr(r, name), shape, like=x)
            np.testing.assert_allclose(lib.to_numpy(getattr(r, name)), getattr(ref, name), rtol=tol, atol=tol)
    # directions of the same library
    V = lib.asarray(rng.normal(size=(d, 2)).astype(dtype))
    r = net(x, gradient=True, hessian=True, directions=V, mode="forward", backend=lib.backend)
    lib.check(r.gradient, (n, 2, m), like=x)
    lib.check(r.hessian, (n, 2, 2, m), like=x)
    W = lib.asarray(rng.normal(size=(m, 2)).astype(dtype))
    r = net(
        x, gradient=True, hessian=True, laplacian=True, directions=W, mode="backward", backend=lib.backend
    )
    lib.check(r.gradient, (n, d, 2), like=x)
    lib.check(r.hessian, (n, d, d, 2), like=x)
    lib.check(r.laplacian, (n, 2), like=x)


def test_numpy_directions_accepted_with_any_library(lib, rng):
    net, d = build("QuadraticICNNLayer", "tanh")
    x = lib.asarray(rng.normal(size=(3, d)))
    V = rng.normal(size=(d, 2))
    r = net(x, gradient=True, directions=V, mode="forward", backend=lib.backend)
    lib.check(r.gradient, (3, 2, net.out_features), like=x)
    ref = net(lib.to_numpy(x), gradient=True, directions=V, mode="forward")
    np.testing.assert_allclose(lib.to_numpy(r.gradient), ref.gradient, rtol=1e-13)


# --------------------------------------------------------------------------
# forcing a backend
# --------------------------------------------------------------------------

xs = pytest.importorskip("array_api_strict")
_TENSOR = torch.Tensor if torch is not None else None  # the expected type (torch params only)


@pytest.mark.parametrize(
    "make, forced, expect",
    [
        pytest.param(np.asarray, "torch", np.ndarray, marks=needs_torch),
        (np.asarray, "generic", np.ndarray),
        (np.asarray, "numpy", np.ndarray),
        pytest.param(lambda a: torch.from_numpy(a), "numpy", _TENSOR, marks=needs_torch),
        pytest.param(lambda a: torch.from_numpy(a), "generic", _TENSOR, marks=needs_torch),
        (lambda a: xs.asarray(a), "numpy", type(xs.asarray(1.0))),
        pytest.param(lambda a: xs.asarray(a), "torch", type(xs.asarray(1.0)), marks=needs_torch),
        (lambda a: xs.asarray(a), "generic", type(xs.asarray(1.0))),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backend_forcing_returns_input_library(make, forced, expect, dtype, rng):
    net, d = build("ICNN-chain", "sigmoid")
    x_np = rng.normal(size=(3, d)).astype(dtype)
    x = make(x_np)
    ref = net(x, **ALL)
    for mode in ("forward", "backward"):
        r = net(x, backend=forced, mode=mode, **ALL)
        for name in FIELDS:
            a = getattr(r, name)
            assert isinstance(a, expect), (name, type(a))
            assert str(a.dtype).split(".")[-1] == np.dtype(dtype).name
            tol = 1e-12 if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(
                hq.backends._generic.to_numpy(a),
                hq.backends._generic.to_numpy(getattr(ref, name)),
                rtol=tol,
                atol=tol,
            )


@needs_torch
def test_torch_backend_from_numpy_with_numpy_directions(rng):
    net, d = build("QuadraticLayer", "tanh")  # m = 1: W (1, 2) can only be backward
    x = rng.normal(size=(2, d))
    W = rng.normal(size=(net.out_features, 2))
    r = net(x, gradient=True, hessian=True, directions=W, backend="torch")
    assert isinstance(r.hessian, np.ndarray) and r.mode == "backward"
    np.testing.assert_allclose(
        r.hessian, net(x, gradient=True, hessian=True, directions=W).hessian, rtol=1e-13
    )


@pytest.mark.parametrize(
    "x_make, v_make",
    [
        pytest.param(np.asarray, lambda a: torch.from_numpy(a), marks=needs_torch),
        (np.asarray, lambda a: xs.asarray(a)),
        pytest.param(lambda a: torch.from_numpy(a), lambda a: xs.asarray(a), marks=needs_torch),
        pytest.param(lambda a: xs.asarray(a), lambda a: torch.from_numpy(a), marks=needs_torch),
    ],
)
def test_mixed_direction_libraries_rejected(x_make, v_make, rng):
    net, d = build("SingleLayer", "tanh")
    x = x_make(rng.normal(size=(2, d)))
    V = v_make(rng.normal(size=(d, 2)))
    with pytest.raises(
        TypeError, match="directions must be the same kind of array as x .* or a NumPy array, got"
    ):
        net(x, gradient=True, directions=V)


# --------------------------------------------------------------------------
# conversion cache
# --------------------------------------------------------------------------


@pytest.fixture
def count_torch_conversions(monkeypatch):
    """Count parameter conversions into torch (``TorchBackend.convert``)."""
    from hessquik_core.backends import _torch

    calls = []
    real = _torch.TorchBackend.convert

    def spy(self, a, **kw):
        calls.append(a)
        return real(self, a, **kw)

    monkeypatch.setattr(_torch.TorchBackend, "convert", spy)
    return calls


def _n_params(net):
    return len(net.parameters())


@needs_torch
def test_cache_reused_and_invalidated(count_torch_conversions, rng):
    calls = count_torch_conversions
    net, d = build("nested-NN", "tanh")
    x = torch.from_numpy(rng.normal(size=(3, d)))
    r1 = net(x, **ALL)
    assert len(calls) == _n_params(net)
    calls.clear()
    r2 = net(x, **ALL)
    assert calls == []  # reused
    torch.testing.assert_close(r1.hessian, r2.hessian, rtol=0, atol=0)
    # a second dtype is a second cache entry; the first stays valid
    net(x.float(), gradient=True)
    assert len(calls) == _n_params(net)
    calls.clear()
    net(x, gradient=True)
    net(x.float(), gradient=True)
    assert calls == []

    # load_state_dict invalidates: the new weights are used
    other, _ = build("nested-NN", "tanh", seed=99)
    net.load_state_dict(other.state_dict())
    r3 = net(x, **ALL)
    assert len(calls) == _n_params(net)
    torch.testing.assert_close(
        r3.hessian, torch.from_numpy(other(x.numpy(), **ALL).hessian), rtol=1e-13, atol=1e-15
    )

    # attribute assignment invalidates (only that module is reconverted)
    calls.clear()
    first = net[0][0]
    first.K = np.asarray(first.K) * 2.0
    r4 = net(x, **ALL)
    assert len(calls) == len(first.parameters())
    torch.testing.assert_close(r4.value, torch.from_numpy(net(x.numpy()).value))
    assert not torch.allclose(r4.value, r3.value)


@needs_torch
def test_cache_sees_torch_in_place_updates(rng):
    net, d = build("QuadraticICNNLayer", "softplus")
    ref_net, _ = build("QuadraticICNNLayer", "softplus")
    net.to("torch")
    x64 = torch.from_numpy(rng.normal(size=(3, d)))
    x32 = x64.float()
    net(x64, **ALL), net(x32, **ALL)  # fill both cache entries
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5).add_(0.1)  # in place: same tensor object, new version
    ref_net.load_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    want = ref_net(x64.numpy(), **ALL)
    for x, tol in ((x64, 1e-13), (x32, 1e-5)):
        r = net(x, **ALL)
        for name in FIELDS:
            np.testing.assert_allclose(getattr(r, name).numpy(), getattr(want, name), rtol=tol, atol=tol)


@needs_torch
def test_optimizer_step_is_seen(rng):
    net, d = build("nested-NN", "tanh")
    net.to("torch", requires_grad=True)
    x = torch.from_numpy(rng.normal(size=(4, d)))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net(x, laplacian=True).laplacian.detach().clone()
    loss = (net(x, laplacian=True).laplacian ** 2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = net(x, laplacian=True).laplacian.detach()
    ref, _ = build("nested-NN", "tanh")
    ref.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    np.testing.assert_allclose(after.numpy(), ref(x.numpy(), laplacian=True).laplacian, rtol=1e-13)
    assert not torch.allclose(before, after)


# --------------------------------------------------------------------------
# torch autograd through the derivative outputs to the parameters
# --------------------------------------------------------------------------


def _loss_numpy(net, x, mode):
    r = net(x, mode=mode, hessian=True, laplacian=True, gradient=True)
    return float(
        np.sum(r.hessian**2) + np.sum(np.sin(r.laplacian)) + np.sum(r.gradient * r.value[:, None, :])
    )


@needs_torch
@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("kind", ["nested-NN", "ICNN-chain", "QuadraticICNNLayer"])
def test_autograd_matches_finite_differences(kind, mode, rng):
    net, d = build(kind, "softplus", seed=4)
    x_np = rng.normal(size=(3, d))
    tnet, _ = build(kind, "softplus", seed=4)
    tnet.to("torch", requires_grad=True)
    x = torch.from_numpy(x_np)
    r = tnet(x, mode=mode, hessian=True, laplacian=True, gradient=True)
    loss = (r.hessian**2).sum() + torch.sin(r.laplacian).sum() + (r.gradient * r.value[:, None, :]).sum()
    loss.backward()
    np.testing.assert_allclose(loss.item(), _loss_numpy(net, x_np, mode), rtol=1e-13)
    # central differences of the loss in each parameter entry (numpy network, float64)
    state = {k: np.array(v) for k, v in net.state_dict().items()}
    grads = {k: p.grad.numpy() for k, p in tnet.named_parameters()}
    eps = 1e-6
    for key, value in state.items():
        assert grads[key].shape == value.shape
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            for sign in (1.0, -1.0):
                pert = dict(state)
                v = value.copy()
                v[idx] += sign * eps
                pert[key] = v
                net.load_state_dict(pert)
                fd[idx] += sign * _loss_numpy(net, x_np, mode) / (2 * eps)
        np.testing.assert_allclose(grads[key], fd, rtol=1e-6, atol=1e-7, err_msg=key)


@needs_torch
def test_autograd_to_input(rng):
    """x.requires_grad: d/dx of a Laplacian loss equals torch.func on the gradient of Δf."""
    net, d = build("nested-NN", "tanh")
    x = torch.from_numpy(rng.normal(size=(2, d))).requires_grad_(True)
    lap = net(x, laplacian=True, mode="backward").laplacian
    (g,) = torch.autograd.grad(lap.sum(), x)
    x_np = x.detach().numpy()
    eps = 1e-6
    fd = np.zeros_like(x_np)
    for idx in np.ndindex(x_np.shape):
        for sign in (1.0, -1.0):
            y = x_np.copy()
            y[idx] += sign * eps
            fd[idx] += sign * net(y, laplacian=True).laplacian.sum() / (2 * eps)
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------
# import hygiene and laziness
# --------------------------------------------------------------------------


def test_import_does_not_pull_heavy_libraries():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import hessquik_core as hq
        heavy = ("torch", "cupy", "jax", "hessQuik", "scipy", "matplotlib", "dask", "distributed")
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
        net = hq.NN(hq.FullyConnectedNN([3, 4, 2], act="tanh", seed=0), hq.QuadraticLayer(2, 1, seed=1))
        x = np.random.default_rng(0).normal(size=(5, 3))
        for mode in ("forward", "backward"):
            net(x, gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
            net(x, backend="generic", laplacian=True, mode=mode)
        hq.checks.taylor_check(net, x, seed=0)
        net.state_dict(); net.load_state_dict(net.state_dict())
        loaded = [m for m in heavy if m in sys.modules]
        assert not loaded, loaded
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


class _OrderSpy:
    """Record the ``order`` of every activation evaluation."""

    def __init__(self, monkeypatch):
        self.orders = []
        real = acts_mod.Activation.__call__
        spy = self

        def call(self, z, order=2, *, xp=None):
            spy.orders.append(order)
            return real(self, z, order, xp=xp)

        monkeypatch.setattr(acts_mod.Activation, "__call__", call)


@pytest.mark.parametrize("kind", ["nested-NN", "ICNN-chain", "QuadraticICNNLayer"])
def test_value_only_call_does_no_derivative_work(kind, monkeypatch, rng):
    net, d = build(kind, "softplus")
    x = rng.normal(size=(3, d))
    spy = _OrderSpy(monkeypatch)
    r = net(x)
    assert spy.orders and set(spy.orders) == {0}, spy.orders
    for name in FIELDS[1:]:
        assert getattr(r, name) is None
    spy.orders.clear()
    for mode in ("forward", "backward"):
        net(x, gradient=True, mode=mode)
    # first derivatives only: σ'' is never formed by the network's activations
    assert set(spy.orders) <= {0, 1} and 1 in spy.orders, spy.orders
    spy.orders.clear()
    net(x, laplacian=True)
    assert 2 in spy.orders


def test_value_only_call_uses_no_contractions(monkeypatch, rng):
    from hessquik_core.backends import get_backend

    numpy_backend = get_backend("numpy")
    used = []
    for name in ("mm", "einsum"):
        real = getattr(numpy_backend, name)
        monkeypatch.setattr(
            numpy_backend, name, lambda *a, _r=real, _n=name, **k: used.append(_n) or _r(*a, **k)
        )
    net, d = build("nested-NN", "tanh")
    net(rng.normal(size=(3, d)))
    assert used == []

"""Training through the library: autodiff of derivative-based losses w.r.t. parameters.

The reference for every autograd gradient is a finite difference of the
*same loss evaluated by the NumPy backend* (``functional_call`` with
perturbed NumPy parameters), so the two sides share no code path below the
engine's formulas.
"""

from __future__ import annotations

import doctest
import importlib.util

import numpy as np
import pytest
from _optional import needs_torch, torch

import hessquik_core as hq
from hessquik_core import training
from hessquik_core.training import fit, functional_call, jax_parameters, torch_parameters


def _resnet(d=3, m=2):
    rng = np.random.default_rng(1)
    return hq.NN(
        hq.SingleLayer(d, 5, act="tanh", seed=rng),
        hq.ResnetNN(5, 2, h=0.5, act="softplus", seed=rng),
        hq.SingleLayer(5, m, act="sigmoid", seed=rng),
    )


def _icnn(d=3):
    rng = np.random.default_rng(2)
    return hq.NN(hq.ICNN(d, [None, 4, 5], act="softplus", seed=rng), hq.QuadraticICNNLayer(d, 5, 2, seed=rng))


def _fc_quadratic(d=3):
    rng = np.random.default_rng(3)
    return hq.NN(hq.FullyConnectedNN([d, 6, 4], act="antitanh", seed=rng), hq.QuadraticLayer(4, 3, seed=rng))


NETS = {"resnet": _resnet, "icnn": _icnn, "fc_quadratic": _fc_quadratic}


def _loss_fn(net, x, mode, xp_sum, weights):
    """A loss that uses every output: value, gradient, Hessian, Laplacian, diagonal."""

    def loss(params=None):
        kw = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True, mode=mode)
        r = net(x, **kw) if params is None else functional_call(net, params, x, **kw)
        wv, wg, wh, wl, wd = weights
        return (
            xp_sum(wv * r.value)
            + xp_sum(wg * r.gradient**2)
            + xp_sum(wh * r.hessian)
            + xp_sum(wl * r.laplacian**2)
            + xp_sum(wd * r.hessian_diagonal)
        )

    return loss


def _weights(net, n, d, rng):
    m = net.out_features
    return [rng.standard_normal(s) for s in ((n, m), (n, d, m), (n, d, d, m), (n, m), (n, d, m))]


@needs_torch
@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_torch_autograd_matches_finite_differences(name, mode, rng):
    """d loss/d θ by torch autograd through all derivative outputs = central differences (NumPy)."""
    net = NETS[name]()
    n, d = 4, net.in_features
    x = rng.standard_normal((n, d))
    w = _weights(net, n, d, rng)
    theta0 = {k: np.array(v) for k, v in net.state_dict().items()}

    # numpy side: loss as a function of the parameters, evaluated by the NumPy backend
    loss_np = _loss_fn(net, x, mode, np.sum, w)

    # torch side: the same loss, parameters as leaf tensors
    params = torch_parameters(net)
    loss_t = _loss_fn(net, torch.from_numpy(x), mode, torch.sum, [torch.from_numpy(a) for a in w])()
    loss_t.backward()
    grads = {
        k: (p.grad.numpy() if p.grad is not None else np.zeros(p.shape))
        for (k, _), p in zip(net.named_parameters(), params)
    }
    assert np.isclose(float(loss_t.detach()), loss_np(theta0), rtol=1e-12)

    # (1) along a random direction in parameter space
    v = {k: rng.standard_normal(a.shape) for k, a in theta0.items()}
    eps = 1e-5
    fd = (
        loss_np({k: theta0[k] + eps * v[k] for k in v}) - loss_np({k: theta0[k] - eps * v[k] for k in v})
    ) / (2 * eps)
    ad = sum(float(np.sum(grads[k] * v[k])) for k in v)
    assert abs(fd - ad) <= 1e-6 * max(1.0, abs(ad)), (fd, ad)

    # (2) entry by entry for one weight matrix (the first one) -- "with respect to a parameter"
    key = next(iter(theta0))
    for idx in np.ndindex(theta0[key].shape):
        e = np.zeros_like(theta0[key])
        e[idx] = eps
        fd_i = (loss_np({key: theta0[key] + e}) - loss_np({key: theta0[key] - e})) / (2 * eps)
        assert abs(fd_i - grads[key][idx]) <= 1e-6 * max(1.0, abs(fd_i)), (key, idx, fd_i, grads[key][idx])


@needs_torch
@pytest.mark.parametrize("what", ["hessian", "laplacian", "hessian_diagonal"])
def test_taylor_remainder_is_second_order(what, rng):
    """|L(θ+εv) - L(θ) - ε<∇L, v>| = O(ε²): halving ε divides the remainder by ~4."""
    net = _resnet()
    n, d = 5, net.in_features
    x = rng.standard_normal((n, d))
    w = rng.standard_normal(
        (n, d, d, 2) if what == "hessian" else ((n, 2) if what == "laplacian" else (n, d, 2))
    )
    theta0 = {k: np.array(v) for k, v in net.state_dict().items()}

    def loss_np(p):
        return float(np.sum(w * getattr(functional_call(net, p, x, **{what: True}), what) ** 2))

    params = torch_parameters(net)
    out = getattr(net(torch.from_numpy(x), **{what: True}), what)
    (torch.from_numpy(w) * out**2).sum().backward()
    v = {k: rng.standard_normal(a.shape) for k, a in theta0.items()}
    slope = sum(
        float((p.grad * torch.from_numpy(v[k])).sum()) for (k, _), p in zip(net.named_parameters(), params)
    )
    L0 = loss_np(theta0)
    eps = 1e-2 * 0.5 ** np.arange(6)
    rem = np.array([abs(loss_np({k: theta0[k] + e * v[k] for k in v}) - L0 - e * slope) for e in eps])
    rates = np.log2(rem[:-1] / rem[1:])
    assert np.all(np.abs(rates - 2.0) < 0.25), rates


@needs_torch
def test_float32_autograd_agrees_with_float64(rng):
    net64, net32 = _resnet(), _resnet()
    x = rng.standard_normal((6, 3))
    grads = []
    for net, dt in ((net64, torch.float64), (net32, torch.float32)):
        params = torch_parameters(net, dtype=dt)
        assert all(p.dtype == dt for p in params)
        r = net(torch.from_numpy(x).to(dt), hessian=True, laplacian=True)
        ((r.hessian**2).sum() + r.laplacian.sum()).backward()
        grads.append(torch.cat([p.grad.reshape(-1).double() for p in params]))
    rel = float((grads[1] - grads[0]).norm() / grads[0].norm())
    assert rel < 1e-5, rel


@needs_torch
def test_torch_parameters_leaves_idempotent_and_trainable(rng):
    net = _resnet()
    x = torch.from_numpy(rng.standard_normal((8, 3)))
    params = torch_parameters(net)
    assert all(isinstance(p, torch.Tensor) and p.is_leaf and p.requires_grad for p in params)
    assert [k for k, _ in net.named_parameters()] == list(net.state_dict())
    again = torch_parameters(net)
    assert all(a is b for a, b in zip(params, again)), "second call must not replace the leaves"
    before = net(x, laplacian=True).laplacian.detach().clone()
    opt = torch.optim.SGD(params, lr=1e-2)
    (net(x, laplacian=True).laplacian ** 2).sum().backward()
    opt.step()  # in-place update: the next call must see the new weights
    after = net(x, laplacian=True).laplacian.detach()
    assert not torch.allclose(before, after)
    # the trained weights come back to NumPy and give the same numbers there
    net.to("numpy")
    assert all(isinstance(p, np.ndarray) for p in net.parameters())
    np.testing.assert_allclose(
        net(x.numpy(), laplacian=True).laplacian, after.numpy(), rtol=1e-12, atol=1e-14
    )


def test_torch_parameters_rejects_non_module():
    with pytest.raises(TypeError, match="hessquik_core network"):
        torch_parameters([np.ones(3)])


def test_functional_call_is_pure_and_validates(rng):
    net = _resnet()
    homes = net.parameters()
    x = rng.standard_normal((4, 3))
    ref = net(x, gradient=True).gradient
    new = {k: v * 0.5 for k, v in net.state_dict().items()}
    got = functional_call(net, new, x, gradient=True).gradient
    assert all(a is b for a, b in zip(homes, net.parameters())), "stored parameters must be restored"
    np.testing.assert_array_equal(net(x, gradient=True).gradient, ref)
    other = _resnet()
    other.load_state_dict(new)
    np.testing.assert_allclose(got, other(x, gradient=True).gradient, rtol=1e-14)
    # partial mapping: the other parameters keep their stored values
    part = functional_call(net, {"0.K": new["0.K"]}, x).value
    mixed = _resnet()
    mixed.load_state_dict({"0.K": new["0.K"]}, strict=False)
    np.testing.assert_allclose(part, mixed(x).value, rtol=1e-14)
    with pytest.raises(ValueError, match="unknown parameter keys"):
        functional_call(net, {"nope": np.ones(2)}, x)
    with pytest.raises(ValueError, match="shape"):
        functional_call(net, {"0.K": np.ones((2, 2))}, x)
    with pytest.raises(TypeError, match="mapping"):
        functional_call(net, [np.ones(2)], x)
    # restored even when the call itself fails
    with pytest.raises(ValueError):
        functional_call(net, new, np.ones((4, 7)))
    assert all(a is b for a, b in zip(homes, net.parameters()))


@needs_torch
def test_fit_decreases_loss_and_validates(rng):
    net = hq.NN(hq.SingleLayer(2, 8, act="tanh", seed=0), hq.SingleLayer(8, 1, seed=1))
    x = torch.from_numpy(rng.uniform(-1, 1, (64, 2)))
    target = (x**2).sum(1, keepdim=True)  # Laplacian of |x|² is 4 everywhere

    def loss():
        r = net(x, laplacian=True)
        return ((r.laplacian - 4.0) ** 2).mean() + ((r.value - target) ** 2).mean()

    params = torch_parameters(net)
    hist = fit(loss, params, steps=60, lr=2e-2, final_lr=2e-3)
    assert len(hist) == 60 and hist[-1] < 0.5 * hist[0]
    hist2 = fit(loss, params, steps=3, optimizer="lbfgs", lr=1.0)
    assert hist2[-1] <= hist[-1]
    with pytest.raises(ValueError, match="steps"):
        fit(loss, params, steps=-1)
    with pytest.raises(ValueError, match="lr"):
        fit(loss, params, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        fit(loss, params, steps=1, optimizer="sgd")
    with pytest.raises(ValueError, match="final_lr"):
        fit(loss, params, steps=1, optimizer="lbfgs", final_lr=1e-3)
    with pytest.raises(TypeError, match="requires_grad"):
        fit(loss, [torch.zeros(2)], steps=1)


def _tiny_problem(rng):
    net = hq.NN(hq.SingleLayer(2, 6, act="tanh", seed=0), hq.SingleLayer(6, 1, seed=1))
    x = torch.from_numpy(rng.uniform(-1, 1, (32, 2)))
    target = torch.sin(x[:, :1]) + x[:, 1:] ** 2

    def loss():
        return ((net(x).value - target) ** 2).mean()

    return loss, torch_parameters(net)


@needs_torch
def test_fit_lbfgs_stops_when_it_stalls_and_reports_why(rng):
    loss, params = _tiny_problem(rng)
    hist = fit(loss, params, steps=400, optimizer="lbfgs", lr=1.0)
    assert isinstance(hist, training.FitHistory) and isinstance(hist, list)
    # a 6-unit net fits this to a floor within far fewer than 400 outer steps
    assert hist.reason == "stalled" and hist.converged and len(hist) < 400
    assert hist[-1] == hist[-2]  # the last step left the loss exactly unchanged
    assert "stalled" in repr(hist)


@needs_torch
def test_fit_tol_stops_on_small_relative_change(rng):
    loss, params = _tiny_problem(rng)
    lines = []
    hist = fit(loss, params, steps=2000, lr=1e-2, tol=1e-3, log_every=1000, print_fn=lines.append)
    assert hist.reason == "tol" and hist.converged and len(hist) < 2000
    assert abs(hist[-2] - hist[-1]) <= 1e-3 * abs(hist[-2])
    # every earlier step changed the loss by more than tol
    assert all(abs(a - b) > 1e-3 * abs(a) for a, b in zip(hist[:-2], hist[1:-1]))
    assert any("stopped (tol)" in line for line in lines)
    full = fit(loss, params, steps=5, lr=1e-2)
    assert len(full) == 5 and full.reason == "steps" and not full.converged
    for bad in (-1.0, float("nan"), True, "1e-3"):
        with pytest.raises(ValueError, match="tol"):
            fit(loss, params, steps=1, tol=bad)


@needs_torch
def test_fit_stops_on_a_nonfinite_loss(rng):
    loss, params = _tiny_problem(rng)
    hist = fit(lambda: loss() * float("nan"), params, steps=10)
    assert hist.reason == "nonfinite" and not hist.converged and len(hist) == 1


@needs_torch
def test_module_docstring_example():
    res = doctest.testmod(training, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_jax_grad_matches_torch_autograd(mode, rng):
    """jax.jit(jax.grad(...)) through the generic backend on jax.numpy agrees with torch autograd.

    (Only the jitted gradient is checked: un-jitted ``jax.grad`` runs the same
    code op by op and is merely slow.)
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    net = _resnet()
    n, d = 4, 3
    x = rng.standard_normal((n, d))
    w = _weights(net, n, d, rng)

    loss_j = _loss_fn(net, jnp.asarray(x), mode, jnp.sum, [jnp.asarray(a) for a in w])
    p = jax_parameters(net)
    assert set(p) == set(net.state_dict()) and all(a.dtype == jnp.float64 for a in p.values())
    g_jit = jax.jit(jax.grad(loss_j))(p)
    assert all(isinstance(a, np.ndarray) for a in net.parameters()), "net must keep its NumPy weights"

    params = torch_parameters(net)
    _loss_fn(net, torch.from_numpy(x), mode, torch.sum, [torch.from_numpy(a) for a in w])().backward()
    for (k, _), t in zip(net.named_parameters(), params):
        ref = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        np.testing.assert_allclose(np.asarray(g_jit[k]), ref, rtol=1e-10, atol=1e-12, err_msg=k)


@needs_torch
@pytest.mark.parametrize("chunk", [1, 7, 64, 100])
def test_backward_in_chunks_matches_one_backward(chunk, rng):
    # the chunked gradient of a mean Laplacian loss equals the one-call gradient
    net = hq.FullyConnectedNN([3, 8, 8, 1], act="tanh", seed=1)
    params = torch_parameters(net)
    n = 50
    x = torch.tensor(rng.standard_normal((n, 3)))
    f = torch.tensor(rng.standard_normal((n, 1)))
    for p in params:
        p.grad = None
    full = ((net(x, laplacian=True).laplacian + f) ** 2).mean()
    full.backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    total = training.backward_in_chunks(
        lambda s: ((net(x[s], laplacian=True).laplacian + f[s]) ** 2).sum() / n, n, chunk=chunk
    )
    torch.testing.assert_close(total, full.detach(), rtol=1e-13, atol=0)
    for g, w in zip((p.grad for p in params), want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    assert max(float(w.abs().max()) for w in want) > 1e-3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_backward_in_chunks_validates(bad):
    with pytest.raises(ValueError, match="chunk must be an integer"):
        training.backward_in_chunks(lambda s: None, 4, chunk=bad)
    with pytest.raises(ValueError, match="n must be an integer"):
        training.backward_in_chunks(lambda s: None, bad)

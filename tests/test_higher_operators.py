"""Variable-coefficient second-order operators: the per-point weighted
Laplacian and :func:`hessquik_core.second_order_operator`, against the dense
Hessian contraction, on every library and every layer type."""

from __future__ import annotations

import numpy as np
import pytest
from _reference import make_network, rel_err

import hessquik_core as hq

RTOL = 1e-12


def _networks(d):
    """Every layer family, including those with only the generic rule."""
    L = hq.layers.LAYERS
    rng = np.random.default_rng(7)
    yield "resnet", make_network("resnet", d, "tanh", 1)
    yield "quadratic_icnn", make_network("quadratic_icnn", d, "softplus", 2)
    yield (
        "fourier+gated+layernorm",
        hq.NN(
            L["FourierFeatures"](d, 3, seed=rng),
            L["GatedMLP"](6, 5, 1, 4, act="tanh", seed=rng),
            L["LayerNorm"](4, seed=rng),
            hq.SingleLayer(4, 2, act="sin", seed=rng),
        ),
    )


def _dense(net, x, A=None, Adiag=None, b=None, c=None):
    r = net(x, gradient=True, hessian=True)
    n, d = x.shape
    out = np.zeros_like(r.value)
    if A is not None:
        out += np.einsum("nij,nijm->nm", np.broadcast_to(A, (n, d, d)), r.hessian)
    if Adiag is not None:
        out += np.einsum("ni,niim->nm", np.broadcast_to(Adiag, (n, d)), r.hessian)
    if b is not None:
        out += np.einsum("ni,nim->nm", np.broadcast_to(b, (n, d)), r.gradient)
    if c is not None:
        out += (np.broadcast_to(c, (n,)))[:, None] * r.value
    return out


@pytest.mark.parametrize("name_net", list(_networks(3)), ids=lambda p: p[0])
def test_pointwise_weighted_laplacian_every_layer(name_net):
    _, net = name_net
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    S = rng.standard_normal((5, 3, 2))
    W = hq.weighted_laplacian(net, x, S)
    A = np.einsum("nir,njr->nij", S, S)
    assert W.shape == (5, net.out_features)
    assert rel_err(W, _dense(net, x, A=A)) <= RTOL


def test_shared_factor_unchanged_and_equal_to_a_repeated_pointwise_one():
    net = make_network("nested", 3, "tanh", 0)
    x = np.random.default_rng(0).standard_normal((4, 3))
    S = np.random.default_rng(1).standard_normal((3, 2))
    shared = hq.weighted_laplacian(net, x, S)
    assert rel_err(shared, net(x, laplacian=True, directions=S, mode="forward").laplacian) == 0.0
    assert rel_err(hq.weighted_laplacian(net, x, np.broadcast_to(S, (4, 3, 2))), shared) <= 1e-14


def test_every_library(lib):
    net = make_network("resnet", 3, "tanh", 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    S, b, c = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3)), rng.standard_normal(4)
    xs = lib.asarray(x)
    W = hq.weighted_laplacian(net, xs, lib.asarray(S), backend=lib.backend)
    m = net.out_features
    lib.check(W, (4, m), xs)
    A = np.einsum("nir,njr->nij", S, S)
    assert rel_err(lib.to_numpy(W), _dense(net, x, A=A)) <= RTOL
    for kw, ref in (
        (dict(A_factor=S, b=b, c=c), _dense(net, x, A=A, b=b, c=c)),
        (dict(A_diagonal=np.abs(b), b=b), _dense(net, x, Adiag=np.abs(b), b=b)),
        (dict(A=A[0] - 0.3, c=2.0), _dense(net, x, A=A[0] - 0.3, c=2.0)),
    ):
        out = hq.second_order_operator(
            net,
            xs,
            **{k: lib.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()},
            backend=lib.backend,
        )
        lib.check(out, (4, m), xs)
        assert rel_err(lib.to_numpy(out), ref) <= RTOL, sorted(kw)


@pytest.mark.parametrize("shared", [False, True])
def test_second_order_operator_forms_agree(shared):
    net = make_network("quadratic_icnn", 2, "softplus", 4)
    rng = np.random.default_rng(2)
    n, d = 6, 2
    x = rng.standard_normal((n, d))
    S = rng.standard_normal((d, 3) if shared else (n, d, 3))
    A = S @ S.T if shared else np.einsum("nir,njr->nij", S, S)
    b = rng.standard_normal((d,) if shared else (n, d))
    c = rng.standard_normal(n)
    ref = _dense(net, x, A=A, b=b, c=c)
    for kw in (dict(A=A), dict(A_factor=S)):
        assert rel_err(hq.second_order_operator(net, x, b=b, c=c, **kw), ref) <= RTOL
    a = rng.uniform(-1.0, 1.0, (d,) if shared else (n, d))  # diagonal of either sign
    assert rel_err(hq.second_order_operator(net, x, A_diagonal=a, b=b), _dense(net, x, Adiag=a, b=b)) <= RTOL
    # a non-symmetric A acts through its symmetric part
    N = rng.standard_normal((n, d, d))
    assert (
        rel_err(hq.second_order_operator(net, x, A=N), _dense(net, x, A=0.5 * (N + N.transpose(0, 2, 1))))
        <= RTOL
    )
    # nothing given: zero; c alone: c u
    assert np.all(hq.second_order_operator(net, x) == 0.0)
    assert rel_err(hq.second_order_operator(net, x, c=3), 3.0 * net(x).value) <= 1e-15


def test_float32_and_inputs_untouched():
    net = make_network("single", 3, "tanh", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    S, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3))
    S0, b0, x0 = S.copy(), b.copy(), x.copy()
    out64 = hq.second_order_operator(net, x, A_factor=S, b=b)
    out32 = hq.second_order_operator(net, x.astype(np.float32), A_factor=S, b=b)  # float64 S is cast
    assert out32.dtype == np.float32 and rel_err(out32, out64) <= 1e-5
    assert np.array_equal(S, S0) and np.array_equal(b, b0) and np.array_equal(x, x0)


def test_autograd_through_the_pointwise_operator():
    torch = pytest.importorskip("torch")
    from hessquik_core.training import torch_parameters

    net = make_network("resnet", 2, "tanh", 0)
    params = torch_parameters(net, dtype=torch.float64)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((5, 2)))
    S = torch.as_tensor(rng.standard_normal((5, 2, 2)))
    b = torch.as_tensor(rng.standard_normal((5, 2)))
    loss = (hq.second_order_operator(net, x, A_factor=S, b=b, c=1.5) ** 2).sum()
    g = torch.autograd.grad(loss, params)
    r = net(x, gradient=True, hessian=True)  # trains too: the reference
    A = S @ S.transpose(1, 2)
    ref = (
        torch.einsum("nij,nijm->nm", A, r.hessian) + torch.einsum("ni,nim->nm", b, r.gradient) + 1.5 * r.value
    )
    gr = torch.autograd.grad((ref**2).sum(), params)
    for a, e in zip(g, gr):
        assert rel_err(a.numpy(), e.numpy()) <= RTOL


def test_bad_input():
    net = make_network("single", 3, "tanh", 0)
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"S must have shape \(4, 3, 2\), got \(5, 3, 2\)"):
        hq.weighted_laplacian(net, x, np.ones((5, 3, 2)))
    with pytest.raises(ValueError, match=r"A must have shape \(4, 3, 3\) or \(3, 3\), got \(4, 3, 2\)"):
        hq.second_order_operator(net, x, A=np.ones((4, 3, 2)))
    with pytest.raises(ValueError, match=r"A_diagonal must have shape \(4, 3\) or \(3\), got \(4, 4\)"):
        hq.second_order_operator(net, x, A_diagonal=np.ones((4, 4)))
    with pytest.raises(
        ValueError, match=r"A_factor must have shape \(4, 3, 2\) or \(3, 2\), got \(3, 3, 2\)"
    ):
        hq.second_order_operator(net, x, A_factor=np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match=r"b must have shape \(4, 3\) or \(3\), got \(4,\)"):
        hq.second_order_operator(net, x, b=np.ones(4))
    with pytest.raises(ValueError, match=r"c must have shape \(4\) or \(\), got \(4, 1\)"):
        hq.second_order_operator(net, x, c=np.ones((4, 1)))
    with pytest.raises(ValueError, match="one form only, got A and A_factor"):
        hq.second_order_operator(net, x, A=np.ones((3, 3)), A_factor=np.ones((3, 2)))
    with pytest.raises(TypeError, match="real floating dtype"):
        hq.second_order_operator(net, x, b=np.ones((4, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="b must be"):
        hq.second_order_operator(net, x, b=[1.0, 2.0, 3.0])


def test_another_backend_returns_the_callers_library():
    pytest.importorskip("torch")
    net = make_network("resnet", 3, "tanh", 0)
    rng = np.random.default_rng(0)
    x, S, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3, 2)), rng.standard_normal(3)
    for kw in (dict(A_factor=S, b=b, c=1.0), dict(A=S @ S.transpose(0, 2, 1), b=b), dict(A_diagonal=b)):
        out = hq.second_order_operator(net, x, backend="torch", **kw)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
        assert rel_err(out, hq.second_order_operator(net, x, **kw)) <= 1e-14
    W = hq.weighted_laplacian(net, x, S, backend="torch")
    assert isinstance(W, np.ndarray) and rel_err(W, hq.weighted_laplacian(net, x, S)) <= 1e-14

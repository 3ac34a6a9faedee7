"""One parameter-derivative checker for every layer: ``torch.func`` on the layer's own torch twin.

The reference of a network's parameter passes is its torch twin
(``hq.to_torch(net)``) differentiated by ``torch.func`` through
``functional_call`` -- no hand-written interpreter of the layer types. The
twin's parameters are a rearrangement of the network's (``K = weightᵀ``,
slices, concatenations): :func:`twin_layout` finds it by giving every
trainable parameter entry of a copy of the network a distinct value and
reading where each value lands in the twin, so the reference needs to know
nothing about any layer.

``check_parameter_passes(net, x, y)`` compares ``hq.curvature``'s gradient,
per-example gradients, Hessian-, Gauss-Newton- and empirical-Fisher-vector
products of the mean squared error with that reference in float64.
"""

from __future__ import annotations

import copy

import numpy as np

import hessquik_core as hq
from hessquik_core import curvature as cv


def twin_layout(net):
    """``(twin, {twin parameter name: (index array into the flat θ of net, shape)})``.

    ``θ`` is in :func:`hessquik_core.curvature.parameter_layout` order. Fails if a
    trainable parameter entry of ``net`` does not appear in the twin exactly once.
    """
    layout = cv.parameter_layout(net)
    probe = copy.deepcopy(net)
    values = 1000.0 + np.arange(layout.size, dtype=np.float64) * 0.5  # exact, distinct, unlike any weight
    state = dict(probe.state_dict())
    state.update({k: np.asarray(v, dtype=np.float64) for k, v in layout.unflatten(values).items()})
    probe.load_state_dict(state)
    index = {float(v): i for i, v in enumerate(values)}
    twin = hq.to_torch(probe)
    where, seen = {}, []
    for name, p in twin.named_parameters():
        flat = p.detach().double().reshape(-1).numpy()
        idx = np.array([index.get(float(v), -1) for v in flat])
        assert (idx >= 0).all(), f"twin parameter {name!r} holds values that are no parameter of the network"
        where[name] = (idx, tuple(p.shape))
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(layout.size)), "the twin does not hold every parameter exactly once"
    return hq.to_torch(net, dtype=None), where


def twin_function(net):
    """``F(θ, x)``: the twin of ``net`` with flat parameters ``θ`` (torch, float64) at ``x``."""
    from torch.func import functional_call

    twin, where = twin_layout(net)
    twin = twin.double()
    buffers = dict(twin.named_buffers())

    def F(theta, x):
        params = {name: theta[idx].reshape(shape) for name, (idx, shape) in where.items()}
        return functional_call(twin, {**params, **buffers}, (x,))

    return F


def twin_curvature_truth(net, x, y, v):
    """``torch.func`` gradient, per-example gradients, HVP and GGN-vector product of the mean
    of ``0.5 |f(x_n) - y_n|²`` with respect to the flat trainable parameters of ``net``."""
    import torch
    from _reference import torch_jit_script_quiet
    from torch.func import grad, jacrev, vjp

    F = twin_function(net)
    theta = torch.tensor(np.asarray(cv.flatten_parameters(net), dtype=np.float64))
    xt, yt, vt = torch.tensor(x), torch.tensor(y), torch.tensor(v)

    def C(t):
        return (0.5 * ((F(t, xt) - yt) ** 2).sum(-1)).mean()

    def per(t):
        return 0.5 * ((F(t, xt) - yt) ** 2).sum(-1)

    # all reverse mode: on the Fourier + LayerNorm twin, torch.func.hessian (vmap over forward
    # AD) disagreed with both reverse-over-reverse and jvp(grad) in the LayerNorm weight's rows
    # (torch 2.13; not reproduced on F.layer_norm alone), which agree with each other
    with torch_jit_script_quiet():
        _, hvp_of = vjp(grad(C), theta)
        (Hv,) = hvp_of(vt)
        J = jacrev(lambda t: F(t, xt))(theta)  # (n, m, P)
    Gv = torch.einsum("nmp,nm->p", J, torch.einsum("nmp,p->nm", J, vt)) / x.shape[0]
    return {
        "gradient": grad(C)(theta).detach().numpy(),
        "per_example": jacrev(per)(theta).detach().numpy(),
        "hvp": Hv.detach().numpy(),
        "ggn_vp": Gv.detach().numpy(),
    }


def check_parameter_passes(net, x, y, *, seed=0, rtol=1e-12, atol=1e-12):
    """``hq.curvature``'s gradient, per-example gradients, HVP, GGN-VP and empirical-Fisher-VP
    of the mean squared error against :func:`twin_curvature_truth` (float64)."""
    v = np.random.default_rng(seed).standard_normal(cv.parameter_layout(net).size)
    want = twin_curvature_truth(net, x, y, v)
    got = {
        "gradient": cv.gradient(net, x, y, "mse"),
        "per_example": cv.per_example_gradients(net, x, y, "mse"),
        "hvp": cv.hvp(net, x, y, "mse", v),
        "ggn_vp": cv.ggn_vp(net, x, y, "mse", v),
    }
    for name, w in want.items():
        g = np.asarray(got[name])
        assert g.shape == w.shape and g.dtype == np.float64, (name, g.shape, w.shape, g.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)
    A = want["per_example"]  # (N, P): the empirical Fisher is AᵀA / N
    np.testing.assert_allclose(
        cv.empirical_fisher_vp(net, x, y, "mse", v), A.T @ (A @ v) / len(x), rtol=rtol, atol=atol
    )

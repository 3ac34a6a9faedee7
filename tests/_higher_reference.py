"""Nested torch.func AD references for the higher-order tests.

``torch.func.hessian`` is forward-over-reverse: nesting it needs the forward-mode
derivative of every backward kernel, which torch lacks for some activations
(``aten::silu_backward``: "Trying to use forward AD with aten::silu_backward that
does not support it"). The references therefore write those activations out in
elementary operations while they run (:func:`_elementary_acts`).
"""

from __future__ import annotations

import contextlib
import math

import _reference
from _reference import torch_jit_script_quiet, torch_layer


def _elementary(act, z):
    """σ(z) in elementary torch operations for the activations whose fused
    kernels lack forward-over-reverse derivatives; ``None`` for the others."""
    import torch

    name = act.name
    if name == "silu":
        return z * torch.sigmoid(z)
    if name == "gelu":
        if getattr(act, "approximate", "none") == "tanh":
            return 0.5 * z * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
        return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))
    if name == "mish":
        return z * torch.tanh(torch.logaddexp(z, torch.zeros_like(z)))
    return None


@contextlib.contextmanager
def _elementary_acts():
    original = _reference.torch_act

    def act(a, z):
        out = _elementary(a, z)
        return original(a, z) if out is None else out

    _reference.torch_act = act
    try:
        yield
    finally:
        _reference.torch_act = original


def f1_of(net):
    """One example ``(d,) -> (m,)`` of a network, written in torch from its maths."""

    def f1(xi):
        with _elementary_acts():
            return torch_layer(net, xi[None, :])[0]

    return f1


def nested_biharmonic(f1, x):
    """Δ²u = Σ_ij ∂_i²∂_j² u, (n, m): the Hessian of the Laplacian, traced."""
    import torch
    from torch.func import hessian, vmap

    def lap(xi):
        return torch.diagonal(hessian(f1)(xi), dim1=-2, dim2=-1).sum(-1)

    def bih(xi):
        return torch.diagonal(hessian(lap)(xi), dim1=-2, dim2=-1).sum(-1)

    with torch_jit_script_quiet():
        return vmap(bih)(torch.as_tensor(x))


def nested_directional(f1, x, V, j):
    """d^j/dt^j u(x + t v) at t = 0 for each column v, (n, k, m)."""
    import torch
    from torch.func import jacfwd, vmap

    def one(xi, v):
        g = lambda t: f1(xi + t * v)  # noqa: E731
        for _ in range(j):
            g = jacfwd(g)
        return g(torch.zeros((), dtype=xi.dtype))

    Vt = torch.as_tensor(V).T
    with torch_jit_script_quiet():
        return vmap(lambda xi: vmap(lambda v: one(xi, v))(Vt))(torch.as_tensor(x))

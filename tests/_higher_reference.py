"""Nested torch.func AD references for the higher-order tests."""

from __future__ import annotations

from _reference import torch_jit_script_quiet, torch_layer


def f1_of(net):
    """One example ``(d,) -> (m,)`` of a network, written in torch from its maths."""
    return lambda xi: torch_layer(net, xi[None, :])[0]


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

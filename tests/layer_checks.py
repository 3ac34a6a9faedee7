"""Checks every new layer's test file runs (see docs/adding_a_layer.md).

``check_input_derivatives(net, torch_f, x)`` compares a network containing
the layer with ``torch.func`` applied to the same function written in plain
torch: value, gradient, Hessian, Laplacian and Hessian diagonal in both
modes and on several backends, the trace/diagonal-only routes, and
directions in both modes. ``check_save_load`` and ``check_to_torch`` cover
persistence and the torch twin.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from _reference import torch_jit_script_quiet

import hessquik_core as hq


def torch_truth(torch_f, x):
    """``(value (n, m), gradient (n, d, m), Hessian (n, d, d, m))`` of
    ``torch_f : (d,) -> (m,)`` at the rows of ``x``, by ``torch.func``."""
    import torch
    from torch.func import hessian, jacrev, vmap

    xt = torch.from_numpy(np.array(x, dtype=np.float64))
    with torch_jit_script_quiet():
        g = vmap(jacrev(torch_f))(xt).permute(0, 2, 1)
        H = vmap(hessian(torch_f))(xt).permute(0, 2, 3, 1)
    return vmap(torch_f)(xt).detach().numpy(), g.detach().numpy(), H.detach().numpy()


def _close(got, want, rtol, atol, what):
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol, err_msg=what)


def check_input_derivatives(net, torch_f, x, *, backends=(None, "generic", "torch"), rtol=1e-12, atol=1e-12):
    """All input derivatives of ``net`` at ``x`` (NumPy, float64) against ``torch_f``."""
    v, g, H = torch_truth(torch_f, x)
    lap = np.trace(H, axis1=1, axis2=2)
    dg = np.diagonal(H, axis1=1, axis2=2).transpose(0, 2, 1)
    d, m = g.shape[1], g.shape[2]
    rng = np.random.default_rng(0)
    Vf, Vb = rng.standard_normal((d, 2)), rng.standard_normal((m, 2))
    for backend in backends:
        for mode in ("forward", "backward"):
            what = f"mode={mode}, backend={backend}"
            r = net(
                x,
                gradient=True,
                hessian=True,
                laplacian=True,
                hessian_diagonal=True,
                mode=mode,
                backend=backend,
            )
            for name, want in (("value", v), ("gradient", g), ("hessian", H), ("laplacian", lap)):
                _close(getattr(r, name), want, rtol, atol, f"{name}, {what}")
            _close(r.hessian_diagonal, dg, rtol, atol, f"hessian_diagonal, {what}")
            # the routes that never form the Hessian (backward: the first layer's shortcut)
            r2 = net(x, laplacian=True, hessian_diagonal=True, mode=mode, backend=backend)
            _close(r2.laplacian, lap, rtol, atol, f"laplacian only, {what}")
            _close(r2.hessian_diagonal, dg, rtol, atol, f"diagonal only, {what}")
        rf = net(x, gradient=True, hessian=True, directions=Vf, backend=backend)
        _close(rf.gradient, np.einsum("ndm,dk->nkm", g, Vf), rtol, atol, f"forward directions, {backend}")
        _close(
            rf.hessian, np.einsum("ndem,da,eb->nabm", H, Vf, Vf), rtol, atol, f"forward directions, {backend}"
        )
        rb = net(x, gradient=True, hessian=True, directions=Vb, backend=backend)
        _close(rb.gradient, np.einsum("ndm,mk->ndk", g, Vb), rtol, atol, f"backward directions, {backend}")
        _close(rb.hessian, np.einsum("ndem,mk->ndek", H, Vb), rtol, atol, f"backward directions, {backend}")


def check_save_load(net, x):
    """``hq.load(hq.save(net))`` computes the same values and keeps the ``state_dict``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.safetensors")
        hq.save(net, path)
        back = hq.load(path)
    np.testing.assert_array_equal(back(x).value, net(x).value)
    assert list(back.state_dict()) == list(net.state_dict())


def check_to_torch(net, x):
    """``to_torch(net)`` computes ``net``'s values, and ``from_torch`` gives them back."""
    import torch

    tm = hq.to_torch(net)
    out = tm(torch.from_numpy(np.array(x))).detach().numpy()
    np.testing.assert_allclose(out, net(x).value, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(hq.from_torch(tm)(x).value, net(x).value, rtol=1e-13, atol=1e-14)


def on_graph(t, name: str) -> bool:
    """Is an autograd node of type ``name`` on the graph of the torch tensor ``t``?"""
    stack, seen = [t.grad_fn], set()
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if type(f).__name__ == name:
            return True
        stack.extend(g for g, _ in f.next_functions)
    return False


def uses_analytic_sweep(t) -> bool:
    """Is the analytic training-step Function (``backends/_torch_step._Sweep``) on
    the autograd graph of the torch tensor ``t``?"""
    return on_graph(t, "_SweepBackward")

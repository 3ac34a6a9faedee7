"""hessQuik's ``utils``: derivative checks, training loops, timing and test data.

The functions take the same arguments and return the same kinds of values
as hessQuik 0.0.6's ``hessQuik.utils``, and work on the compat layers and
networks (and on anything else called as ``f(x, do_gradient=..., do_Hessian=...,
forward_mode=...)`` returning ``(f, df, d2f)``, hessQuik's own modules
included). Differences, all in the direction of not touching the caller's
objects: :func:`network_derivative_check` computes the weight gradient with
``torch.autograd.grad`` (it neither reads nor accumulates into ``.grad``) and
restores the weights it perturbs; :func:`directional_derivative_laplacian_check`
returns its two flags (hessQuik's returns ``None``).

Importing this module imports torch. It stays one module (over 400 lines)
because it mirrors ``hessQuik.utils`` function for function: users migrate by
replacing one import.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .. import activations as _core_activations
from . import activations as act
from . import layers as lay
from . import networks as net

__all__ = [
    "convert_to_base",
    "directional_derivative_check",
    "directional_derivative_laplacian_check",
    "extract_data",
    "input_derivative_check",
    "input_derivative_check_finite_difference",
    "input_derivative_check_finite_difference_laplacian",
    "insert_data",
    "module_getattr",
    "module_setattr",
    "network_derivative_check",
    "peaks",
    "print_headers",
    "test",
    "timing_test",
    "train_one_epoch",
]


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def module_getattr(obj, names):
    """``obj.a.b.c`` for ``names`` = ``"a"``, ``["a"]`` or ``["a", "b", "c"]``."""
    for name in [names] if isinstance(names, str) else list(names):
        obj = getattr(obj, name)
    return obj


def module_setattr(obj, names, val) -> None:
    """Set ``obj.a.b.c = val`` for ``names`` = ``["a", "b", "c"]`` (or a single name)."""
    names = [names] if isinstance(names, str) else list(names)
    setattr(module_getattr(obj, names[:-1]) if len(names) > 1 else obj, names[-1], val)


def extract_data(net, attr: str = "data") -> torch.Tensor:
    """All parameters' ``attr`` (``"data"`` or ``"grad"``) as one flat tensor, in
    ``named_parameters()`` order; a missing gradient counts as zeros."""
    parts = []
    for _, w in net.named_parameters():
        val = getattr(w, attr)
        parts.append((torch.zeros_like(w) if val is None else val).detach().reshape(-1))
    return torch.cat(parts) if parts else torch.empty(0)


def insert_data(net, theta: torch.Tensor) -> None:
    """Inverse of :func:`extract_data`: write consecutive slices of the flat ``theta``
    into the parameters (in ``named_parameters()`` order)."""
    start = 0
    with torch.no_grad():
        for _, w in net.named_parameters():
            n = w.numel()
            w.copy_(theta[start : start + n].reshape(w.shape))
            start += n


def convert_to_base(a: Sequence[float], b: float = 2.0) -> tuple:
    """``(c0, e0, c1, e1, ...)`` with ``a[i] = c_i * b**e_i``, ``1 <= c_i < b``, for
    printing; a non-positive entry gives ``(-1, 0)``."""
    out: tuple = ()
    for v in a:
        if v <= 0:
            out += (-1, 0)
            continue
        e = math.floor(math.log(v) / math.log(b))
        out += (v / b**e, e)
    return out


def _fmt(values) -> str:
    pairs = convert_to_base(values)
    return "".join(f"{pairs[i]:0.2f} x 2^({pairs[i + 1]:03d})    " for i in range(0, len(pairs), 2))


def _rates_pass(
    E: np.ndarray, base: float, order: int, tol: float, min_count: int, k: int, eps: float
) -> bool:
    """The Taylor test's verdict: the error falls like ``h**order`` for more than
    ``min_count`` consecutive halvings, or it already sits at round-off (the
    ``k``-th smallest error below ``100 eps``, e.g. for a linear function)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = np.log(E[:-1] / E[1:]) / math.log(base)
    fast = int(np.sum(rates > order - tol))
    k = min(max(k, 1), len(E))
    return bool(fast > min_count or np.sort(E)[k - 1] < 100 * eps)


def _norm(t) -> float:
    return float(torch.linalg.vector_norm(t.detach()))


def _is_activation(f) -> bool:
    return isinstance(f, _core_activations.Activation)


# --------------------------------------------------------------------------
# input derivatives
# --------------------------------------------------------------------------


def input_derivative_check(
    f: Callable,
    x: torch.Tensor,
    do_Hessian: bool = False,
    forward_mode: bool = True,
    num_test: int = 15,
    base: float = 2.0,
    tol: float = 0.1,
    verbose: bool = False,
):
    r"""Taylor test of the input gradient (and Hessian) of ``f`` at ``x``.

    With a random unit direction :math:`p` and :math:`h = \mathrm{base}^{-k}`,
    :math:`k = 0, \dots, \mathrm{num\_test}-1`, the errors

    .. math::

        E_1(h) = \|f(x) + h\,\nabla f(x)^\top p - f(x + hp)\|, \qquad
        E_2(h) = \|f(x) + h\,\nabla f^\top p + \tfrac{h^2}{2} p^\top \nabla^2 f\, p - f(x + hp)\|

    fall like :math:`h^2` and :math:`h^3` when the derivatives are right.

    Parameters
    ----------
    f : callable
        ``f(x, do_gradient=True, do_Hessian=..., forward_mode=...)`` returning
        ``(f, df, d2f)``: a compat layer, network or activation (whose
        derivatives are element-wise), or ``NNPytorchAD(net)``.
    x : torch.Tensor (n, d)
    do_Hessian : bool
        Check the Hessian as well.
    forward_mode : bool
        Mode of the derivative call.
    num_test, base, tol : int, float, float
        Number of step sizes, their ratio, slack on the observed rate.
    verbose : bool
        Print the table of errors and the verdicts.

    Returns
    -------
    grad_check : bool
    hess_check : bool or None
        ``None`` unless ``do_Hessian``.
    """
    f0, df0, d2f0 = f(x, do_gradient=True, do_Hessian=do_Hessian, forward_mode=forward_mode)
    p = torch.randn_like(x)
    p = p / torch.linalg.vector_norm(p)
    if _is_activation(f):  # element-wise derivatives, shaped like x
        lin = df0 * p
        curv = None if d2f0 is None else d2f0 * p * p
    else:  # df0 (n, d, m), d2f0 (n, d, d, m)
        lin = torch.einsum("si,sim->sm", p, df0)
        curv = None if d2f0 is None else torch.einsum("si,sijm,sj->sm", p, d2f0, p)
    E0, E1, E2 = [], [], []
    if verbose:
        print("h" + 20 * " " + "E0" + 20 * " " + "E1" + (20 * " " + "E2" if curv is not None else ""))
    for k in range(num_test):
        h = base ** (-k)
        ft = f(x + h * p, do_gradient=False, do_Hessian=False)[0]
        E0.append(_norm(f0 - ft))
        E1.append(_norm(f0 + h * lin - ft))
        row = [E0[-1], E1[-1]]
        if curv is not None:
            E2.append(_norm(f0 + h * lin + 0.5 * h**2 * curv - ft))
            row.append(E2[-1])
        if verbose:
            print(_fmt([h, *row]))
    eps = torch.finfo(x.dtype).eps
    grad_check = _rates_pass(np.array(E1), base, 2, tol, num_test // 3, num_test // 4, eps)
    hess_check = None
    if curv is not None:
        hess_check = _rates_pass(np.array(E2), base, 3, tol, num_test // 3, num_test // 4, eps)
    if verbose:
        print("Gradient " + ("PASSED!" if grad_check else "FAILED."))
        if hess_check is not None:
            print("Hessian " + ("PASSED!" if hess_check else "FAILED."))
    return grad_check, hess_check


def _unit(d: int, i: int, step: float, like: torch.Tensor) -> torch.Tensor:
    e = torch.zeros(1, d, dtype=like.dtype, device=like.device)
    e[0, i] = step
    return e


def _fd_gradient(f, x, eps):
    """Central differences ``(f(x + eps e_i) - f(x - eps e_i)) / 2 eps``, stacked to (n, d, m)."""
    d = x.shape[1]
    cols = []
    for i in range(d):
        e = _unit(d, i, eps, x)
        cols.append((f(x + e)[0] - f(x - e)[0]) / (2 * eps))
    return torch.stack(cols, dim=1)


def _fd_verdict(name, exact, approx, atol, rtol, eps, verbose) -> bool:
    err = _norm(exact - approx)
    rel = err / max(_norm(exact), eps)
    ok = bool(err < atol and rel < rtol)
    if verbose:
        print(f"{name} Finite Difference: Error = {err:0.4e}, Relative Error = {rel:0.4e}")
        print(f"{name} " + ("PASSED!" if ok else "FAILED."))
    return ok


def input_derivative_check_finite_difference(
    f: Callable,
    x: torch.Tensor,
    do_Hessian: bool = False,
    forward_mode: bool = True,
    eps: float = 1e-4,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    verbose: bool = False,
):
    r"""Compare the input gradient (and Hessian) of ``f`` with finite differences.

    The gradient is compared with central differences of step ``eps`` along
    each coordinate, the Hessian with the four-point formula
    :math:`(f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)) / 4\varepsilon^2`.
    A check passes when the error is below ``atol`` and the relative error below
    ``rtol``.

    Returns
    -------
    grad_check : bool
    hess_check : bool or None
        ``None`` unless ``do_Hessian``.
    """
    _, df0, d2f0 = f(x, do_gradient=True, do_Hessian=do_Hessian, forward_mode=forward_mode)
    grad_check = _fd_verdict("Gradient", df0, _fd_gradient(f, x, eps), atol, rtol, eps, verbose)
    hess_check = None
    if do_Hessian:
        d = x.shape[1]
        rows = []
        for i in range(d):
            ei = _unit(d, i, eps, x)
            row = []
            for j in range(d):
                ej = _unit(d, j, eps, x)
                quad = f(x + ei + ej)[0] - f(x + ei - ej)[0] - f(x - ei + ej)[0] + f(x - ei - ej)[0]
                row.append(quad / (4 * eps**2))
            rows.append(torch.stack(row, dim=1))
        hess_check = _fd_verdict("Hessian", d2f0, torch.stack(rows, dim=1), atol, rtol, eps, verbose)
    return grad_check, hess_check


def input_derivative_check_finite_difference_laplacian(
    f: Callable,
    x: torch.Tensor,
    do_Laplacian: bool = False,
    eps: float = 1e-4,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    verbose: bool = False,
):
    r"""Compare the input gradient (and Laplacian) of ``f`` with finite differences.

    The Laplacian ``(n, 1, m)`` is compared with the sum over coordinates of
    the second differences :math:`(f(x + \varepsilon e_i) - 2 f(x) + f(x - \varepsilon e_i)) / \varepsilon^2`.

    Returns
    -------
    grad_check : bool
    lap_check : bool or None
        ``None`` unless ``do_Laplacian``.
    """
    f0, df0, lap0 = f(x, do_gradient=True, do_Laplacian=do_Laplacian)
    grad_check = _fd_verdict("Gradient", df0, _fd_gradient(f, x, eps), atol, rtol, eps, verbose)
    lap_check = None
    if do_Laplacian:
        d = x.shape[1]
        total = torch.zeros_like(f0)
        for i in range(d):
            e = _unit(d, i, eps, x)
            total = total + (f(x + e)[0] - 2 * f0 + f(x - e)[0]) / eps**2
        lap_check = _fd_verdict("Laplacian", lap0, total.unsqueeze(1), atol, rtol, eps, verbose)
    return grad_check, lap_check


# --------------------------------------------------------------------------
# directional derivatives
# --------------------------------------------------------------------------


def _report(mode: str, names, errs, flags, verbose: bool) -> None:
    if verbose:
        print(f"{mode} MODE: " + "\t ".join(f"{n} = {e:0.4e}" for n, e in zip(names, errs)))
        for n, ok in zip(names, flags):
            print(f"\t {n} " + ("PASSED!" if ok else "FAILED."))


def directional_derivative_check(f, x, k: int = 3, tol: float = 1e-8, verbose: bool = False):
    r"""Check the directional derivatives ``v=`` against the full gradient and Hessian.

    Forward mode with ``k`` random directions ``v (k, d)`` must give
    :math:`v\,\nabla f` ``(n, k, m)`` and :math:`v \nabla^2 f v^\top` ``(n, k, k, m)``;
    backward mode with ``v (m, k)`` must give :math:`\nabla f\, v` ``(n, d, k)``
    and :math:`\nabla^2 f\, v` ``(n, d, d, k)``. Each check passes when the
    norm of the difference is below ``tol``.

    Returns
    -------
    forward_grad, forward_hess, backward_grad, backward_hess : bool
    """
    f0, df0, d2f0 = f(x, do_gradient=True, do_Hessian=True)
    d, m = x.shape[1], f0.shape[1]
    V = torch.randn(k, d, dtype=x.dtype, device=x.device)
    _, dfv, d2fv = f(x, do_gradient=True, do_Hessian=True, v=V, forward_mode=True)
    errs = (
        _norm(torch.einsum("ai,sim->sam", V, df0) - dfv),
        _norm(torch.einsum("ai,sijm,bj->sabm", V, d2f0, V) - d2fv),
    )
    fwd = tuple(e < tol for e in errs)
    _report("FORWARD", ("grad", "hess"), errs, fwd, verbose)
    W = torch.randn(m, k, dtype=x.dtype, device=x.device)
    _, dfw, d2fw = f(x, do_gradient=True, do_Hessian=True, v=W, forward_mode=False)
    errs = (_norm(df0 @ W - dfw), _norm(d2f0 @ W - d2fw))
    bwd = tuple(e < tol for e in errs)
    _report("BACKWARD", ("grad", "hess"), errs, bwd, verbose)
    return fwd + bwd


def directional_derivative_laplacian_check(f, x, k: int = 3, tol: float = 1e-8, verbose: bool = False):
    r"""Check ``f(x, do_gradient=True, do_Laplacian=True, v=v)`` for ``k`` random
    directions ``v (k, d)``: the gradient must be :math:`v\,\nabla f` and the
    third output :math:`\sum_a v_a^\top \nabla^2 f\, v_a` ``(n, 1, m)``.

    Returns
    -------
    grad_check, lap_check : bool
        (hessQuik's version prints the verdicts and returns ``None``.)
    """
    _, df0, d2f0 = f(x, do_gradient=True, do_Hessian=True)
    V = torch.randn(k, x.shape[1], dtype=x.dtype, device=x.device)
    _, dfv, lapv = f(x, do_gradient=True, do_Laplacian=True, do_Hessian=False, v=V)
    errs = (
        _norm(torch.einsum("ai,sim->sam", V, df0) - dfv),
        _norm(torch.einsum("ai,sijm,aj->sm", V, d2f0, V).unsqueeze(1) - lapv),
    )
    flags = tuple(e < tol for e in errs)
    _report("FORWARD", ("grad", "lap"), errs, flags, verbose)
    return flags


# --------------------------------------------------------------------------
# weight derivatives
# --------------------------------------------------------------------------


def _derivative_loss(f, x, do_Hessian, forward_mode=None):
    """:math:`\\tfrac12(\\|f\\|^2 + \\|\\nabla f\\|^2 + \\|\\nabla^2 f\\|^2)` of one call."""
    kw = {} if forward_mode is None else {"forward_mode": forward_mode}
    outs = f(x, do_gradient=True, do_Hessian=do_Hessian, **kw)
    return sum(0.5 * torch.sum(t * t) for t in outs if t is not None)


def network_derivative_check(
    f,
    x: torch.Tensor,
    do_Hessian: bool = False,
    forward_mode: bool = True,
    num_test: int = 15,
    base: float = 2.0,
    tol: float = 0.1,
    verbose: bool = False,
):
    r"""Taylor test of the gradient with respect to the weights :math:`\theta` of
    :math:`\Phi(\theta) = \tfrac12(\|f_\theta(x)\|^2 + \|\nabla f_\theta(x)\|^2 + \|\nabla^2 f_\theta(x)\|^2)`.

    :math:`\nabla_\theta\Phi` comes from ``torch.autograd`` through the
    derivative call (mode ``forward_mode``); the error
    :math:`|\Phi(\theta) + h\,\nabla_\theta\Phi^\top p - \Phi(\theta + hp)|` must
    fall like :math:`h^2` along a random unit direction :math:`p`. The weights
    are restored afterwards and ``.grad`` is left untouched.

    Returns
    -------
    grad_check : bool
    """
    params = [w for _, w in f.named_parameters()]
    loss0 = _derivative_loss(f, x, do_Hessian, forward_mode)
    grads = torch.autograd.grad(loss0, params, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(params, grads)]
    dirs = [torch.randn_like(w) for w in params]
    scale = torch.sqrt(sum(torch.sum(p * p) for p in dirs))
    dirs = [p / scale for p in dirs]
    slope = float(sum(torch.sum(g * p) for g, p in zip(grads, dirs)))
    loss0 = float(loss0.detach())
    saved = [w.detach().clone() for w in params]
    E0, E1 = [], []
    if verbose:
        print("h" + 20 * " " + "E0" + 20 * " " + "E1")
    try:
        for k in range(num_test):
            h = base ** (-k)
            with torch.no_grad():
                for w, w0, p in zip(params, saved, dirs):
                    w.copy_(w0 + h * p)
                lt = float(_derivative_loss(f, x, do_Hessian))
            E0.append(abs(loss0 - lt))
            E1.append(abs(loss0 + h * slope - lt))
            if verbose:
                print(_fmt([h, E0[-1], E1[-1]]))
    finally:
        with torch.no_grad():
            for w, w0 in zip(params, saved):
                w.copy_(w0)
    eps = torch.finfo(x.dtype).eps
    grad_check = _rates_pass(np.array(E1), base, 2, tol, 3, num_test // 3, eps)
    if verbose:
        print("Gradient " + ("PASSED!" if grad_check else "FAILED."))
    return grad_check


# --------------------------------------------------------------------------
# test data, training, timing
# --------------------------------------------------------------------------


def _peaks_value(a, b):
    # MATLAB's peaks: 3(1-a)^2 e^{-a^2-(b+1)^2} - 10(a/5 - a^3 - b^5) e^{-a^2-b^2} - e^{-(a+1)^2-b^2}/3
    return (
        3 * (1 - a) ** 2 * torch.exp(-(a**2) - (b + 1) ** 2)
        - 10 * (a / 5 - a**3 - b**5) * torch.exp(-(a**2) - b**2)
        - torch.exp(-((a + 1) ** 2) - b**2) / 3
    )


def peaks(y: torch.Tensor, do_gradient: bool = False, do_Hessian: bool = False):
    """MATLAB's 2-D ``peaks`` function at the rows of ``y (n, 2)`` and its exact derivatives.

    Returns
    -------
    f : torch.Tensor (n, 1)
    df : torch.Tensor (n, 2, 1) or None
    d2f : torch.Tensor (n, 2, 2, 1) or None
    """
    if y.ndim != 2 or y.shape[1] != 2:
        raise ValueError(f"y must have shape (n, 2), got {tuple(y.shape)}")
    want = do_gradient or do_Hessian
    with torch.enable_grad() if want else torch.no_grad():
        z = y.detach().requires_grad_(want)
        f = _peaks_value(z[:, 0], z[:, 1])
        df = d2f = None
        if want:
            # rows are independent, so the gradient of the sum gives every row's gradient
            (g,) = torch.autograd.grad(f.sum(), z, create_graph=do_Hessian)
            df = g.detach().unsqueeze(-1)
            if do_Hessian:
                rows = [torch.autograd.grad(g[:, i].sum(), z, retain_graph=True)[0] for i in range(2)]
                d2f = torch.stack(rows, dim=1).detach().unsqueeze(-1)
    return f.detach().unsqueeze(-1), df, d2f


def _target_losses(f_out, df_out, d2f_out, yb, d, do_gradient, do_Hessian):
    """Halved squared errors of value, gradient and Hessian against the columns of ``yb``
    (value, then the ``d`` gradient entries, then the flattened Hessian), summed over rows."""
    lf = 0.5 * torch.sum((f_out - yb[:, 0].reshape(f_out.shape)) ** 2)
    ldf = ld2f = None
    if do_gradient:
        ldf = 0.5 * torch.sum((df_out - yb[:, 1 : d + 1].reshape(df_out.shape)) ** 2)
    if do_Hessian:
        ld2f = 0.5 * torch.sum((d2f_out - yb[:, d + 1 :].reshape(d2f_out.shape)) ** 2)
    return lf, ldf, ld2f


def _loss_tuple(total, lf, ldf, ld2f, do_gradient, do_Hessian):
    # the same entries hessQuik returns: the Hessian term is listed only with the gradient term
    out = (total, lf)
    if do_gradient:
        out += (ldf,)
        if do_Hessian:
            out += (ld2f,)
    return out


def train_one_epoch(
    f,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer,
    batch_size: int = 5,
    do_gradient: bool = False,
    do_Hessian: bool = False,
    loss_weights=(1.0, 1.0, 1.0),
):
    r"""One epoch of mini-batch training on
    :math:`\frac{1}{2N}(w_0\|f - y_f\|^2 + w_1\|\nabla f - y_{\nabla f}\|^2 + w_2\|\nabla^2 f - y_{\nabla^2 f}\|^2)`.

    ``y`` holds per row the target value, then the ``d`` gradient entries,
    then the flattened Hessian. Rows are shuffled with ``torch.randperm``;
    ``n // batch_size`` full batches are used.

    Returns
    -------
    tuple of float
        ``(loss, loss_f)``, then ``loss_df`` if ``do_gradient``, then ``loss_d2f``
        if both flags are set (hessQuik's layout), averaged over the rows used.
    """
    f.train()
    n, d = x.shape[0], x.shape[1]
    b = int(batch_size)
    order = torch.randperm(n)
    sums = [0.0, 0.0, 0.0, 0.0]
    for i in range(n // b):
        idx = order[i * b : (i + 1) * b]
        xb, yb = x[idx], y[idx]
        optimizer.zero_grad()
        fb, dfb, d2fb = f(xb, do_gradient=do_gradient, do_Hessian=do_Hessian)
        lf, ldf, ld2f = _target_losses(fb, dfb, d2fb, yb, d, do_gradient, do_Hessian)
        lf, ldf, ld2f = (None if t is None else t / b for t in (lf, ldf, ld2f))
        loss = loss_weights[0] * lf
        if ldf is not None:
            loss = loss + loss_weights[1] * ldf
        if ld2f is not None:
            loss = loss + loss_weights[2] * ld2f
        loss.backward()
        optimizer.step()
        for j, t in enumerate((loss, lf, ldf, ld2f)):
            if t is not None:
                sums[j] += b * float(t.detach())
    avg = [s / n for s in sums]  # per row of x, as hessQuik reports it
    return _loss_tuple(avg[0], avg[1], avg[2], avg[3], do_gradient, do_Hessian)


def test(
    f,
    x: torch.Tensor,
    y: torch.Tensor,
    do_gradient: bool = False,
    do_Hessian: bool = False,
    loss_weights=(1.0, 1.0, 1.0),
):
    """The loss of :func:`train_one_epoch` on all of ``x`` at once, in ``eval()`` mode and
    without gradients; same return layout."""
    f.eval()
    n, d = x.shape[0], x.shape[1]
    with torch.no_grad():
        f0, df0, d2f0 = f(x, do_gradient=do_gradient, do_Hessian=do_Hessian)
        lf, ldf, ld2f = (
            None if t is None else float(t) / n
            for t in _target_losses(f0, df0, d2f0, y, d, do_gradient, do_Hessian)
        )
    total = loss_weights[0] * lf
    if ldf is not None:
        total += loss_weights[1] * ldf
    if ld2f is not None:
        total += loss_weights[2] * ld2f
    return _loss_tuple(total, lf, ldf, ld2f, do_gradient, do_Hessian)


def print_headers(
    do_gradient: bool = True, do_Hessian: bool = False, verbose: bool = False, loss_weights=(1.0, 1.0, 1.0)
):
    """Column headers for a training log: ``(headers, printouts, printouts_frmt)``.

    ``printouts_frmt`` formats one row ``(epoch, time, '|', running losses...,
    '|', train losses..., '|', validation losses...)``; ``verbose`` prints the
    three header lines.
    """
    names = ("loss", "loss_f")
    if do_gradient or do_Hessian:
        names += ("loss_df",)
        if do_Hessian:
            names += ("loss_d2f",)
    k = len(names)
    pad = (k - 1) * ("",)
    w = tuple(loss_weights[: k - 1])
    headers = ("", "", "|", "running", *pad, "|", "train", *pad, "|", "valid", *pad)
    weights = ("", "", "|", "weights", *w, "|", "", *w, "|", "", *w)
    printouts = ("epoch", "time", *(("|", *names) * 3))
    frmt = "{:<15d}{:<15.4f}" + 3 * ("{:<2s}" + k * "{:<15.4e}")
    if verbose:
        text = "{:<15s}{:<15s}" + 3 * ("{:<2s}" + k * "{:<15s}")
        print(text.format(*headers))
        print(("{:<15s}{:<15s}" + 3 * ("{:<2s}{:<15s}" + (k - 1) * "{:<15.2e}")).format(*weights))
        print(text.format(*printouts))
    return headers, printouts, frmt


def _timing_network(d: int, m: int, width: int, depth: int, network_type: str):
    if network_type == "resnet":
        return net.NN(
            lay.singleLayer(d, width, act=act.antiTanhActivation()),
            net.resnetNN(width, depth, h=0.5, act=act.tanhActivation()),
            lay.singleLayer(width, m, act=act.identityActivation()),
        )
    if network_type == "fully_connected":
        return net.fullyConnectedNN([d] + depth * [width] + [m], act=act.tanhActivation())
    if network_type == "icnn":
        if m != 1:
            raise ValueError("Must be scalar output for ICNN example")
        return net.NN(
            net.ICNN(d, [None] + depth * [width], act=act.tanhActivation()),
            lay.quadraticICNNLayer(d, width, rank=2),
        )
    raise ValueError('network_type must be "resnet", "fully_connected", or "icnn"')


def timing_test(
    in_feature_range,
    out_feature_range,
    nex: int = 10,
    num_trials: int = 10,
    width: int = 16,
    depth: int = 4,
    network_wrapper: str = "hessQuik",
    network_type: str = "resnet",
    device: str = "cpu",
    clear_memory: bool = True,
) -> dict:
    """Time ``f(x, do_gradient=True, do_Hessian=True)`` for each (input, output) width.

    For every pair, a ``network_type`` network (``'resnet'``, ``'fully_connected'``
    or ``'icnn'``) is built, wrapped by ``network_wrapper`` (``'hessQuik'``: none,
    ``'PytorchAD'``, ``'PytorchHessian'``), moved to ``device``, and timed on
    ``nex`` random inputs ``num_trials`` times after one warm-up call.

    Returns
    -------
    dict
        ``timing_trials`` (in, out, trials), ``timing_trials_mean``,
        ``timing_trials_std`` (in, out) in seconds, and the settings
        ``in_feature_range``, ``out_feature_range``, ``nex``, ``num_trials``.
    """
    wrappers = {"hessQuik": None, "PytorchAD": net.NNPytorchAD, "PytorchHessian": net.NNPytorchHessian}
    if network_wrapper not in wrappers:
        raise ValueError(f"network_wrapper must be one of {sorted(wrappers)}, got {network_wrapper!r}")
    n_in, n_out = len(in_feature_range), len(out_feature_range)
    trials = torch.zeros(n_in, n_out, num_trials)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for j, m in enumerate(out_feature_range):
        for i, d in enumerate(in_feature_range):
            f = _timing_network(int(d), int(m), width, depth, network_type).to(device)
            if wrappers[network_wrapper] is not None:
                f = wrappers[network_wrapper](f)
            x = torch.randn(nex, int(d), device=device)
            for t in range(num_trials + 1):  # trial 0 warms up
                start = time.perf_counter()
                f(x, do_gradient=True, do_Hessian=True)
                sync()
                if t:
                    trials[i, j, t - 1] = time.perf_counter() - start
            if clear_memory:
                del f, x
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    return {
        "timing_trials": trials,
        "timing_trials_mean": trials.mean(dim=2),
        "timing_trials_std": trials.std(dim=2) if num_trials > 1 else torch.zeros(n_in, n_out),
        "in_feature_range": in_feature_range,
        "out_feature_range": out_feature_range,
        "nex": nex,
        "num_trials": num_trials,
    }

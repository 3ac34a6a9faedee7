r"""Small helpers for training with losses built from input derivatives.

The network call is differentiable in its parameters on the autodiff
backends, so a loss that uses ``value``, ``gradient``, ``hessian``,
``laplacian`` or ``hessian_diagonal`` is trained like any other loss:

* **torch** — :func:`torch_parameters` turns the stored parameters into
  leaf tensors (``requires_grad=True``) and returns them for an optimizer;
  ``loss.backward()`` fills their ``.grad``. :func:`fit` is a ten-line loop
  around a torch optimizer, for scripts that do not want to write one.
* **JAX** (generic backend on ``jax.numpy``) — parameters are an explicit
  pytree (:func:`jax_parameters`) and :func:`functional_call` evaluates the
  network with them, so ``jax.grad`` / ``jax.jit`` see a pure function.

Why it works: every derivative the library returns is an explicit formula of
the parameters (products of weight matrices and activation derivatives,
see :mod:`hessquik_core.layers`), computed with ordinary array operations.
Autodiff of the loss with respect to the parameters therefore only ever
differentiates those operations once, in reverse mode: no nested (double)
backward passes through an input-derivative graph are needed.

Examples
--------
>>> import numpy as np, torch, hessquik_core as hq
>>> from hessquik_core.training import torch_parameters
>>> net = hq.FullyConnectedNN([2, 8, 1], act="tanh", seed=0)
>>> params = torch_parameters(net)          # leaf tensors, float64
>>> x = torch.rand(16, 2, dtype=torch.float64)
>>> loss = (net(x, laplacian=True).laplacian ** 2).mean()
>>> loss.backward()
>>> all(p.grad is not None for p in params)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from ._module import Module, _as_home
from .engine.routes.switches import analytic_higher_order_gradient, analytic_weight_gradient, step_workspace

__all__ = [
    "analytic_higher_order_gradient",
    "analytic_weight_gradient",
    "backward_in_chunks",
    "FitHistory",
    "fit",
    "functional_call",
    "jax_parameters",
    "step_workspace",
    "torch_parameters",
]


def _check_module(net) -> None:
    if not isinstance(net, Module):
        raise TypeError(f"net must be a hessquik_core network or layer, got {type(net).__name__}")


def torch_parameters(net: Module, *, dtype=None, device=None) -> list:
    """Make ``net``'s parameters trainable torch leaf tensors and return them.

    Calls ``net.to("torch", dtype=dtype, device=device, requires_grad=True)``
    unless the parameters already are such leaves, so calling it twice
    returns the same tensors (an optimizer built on the first list keeps
    working).

    Parameters
    ----------
    net : Module
        Any network or layer.
    dtype : torch.dtype, optional
        Parameter dtype; default keeps the stored precision.
    device : torch.device or str, optional
        Parameter device; default CPU.

    Returns
    -------
    list of torch.Tensor
        In ``net.named_parameters()`` order, ready for ``torch.optim``.
    """
    _check_module(net)
    import torch

    dev = None if device is None else torch.device(device)
    params = net.parameters()
    ready = all(
        isinstance(p, torch.Tensor)
        and p.is_leaf
        and p.requires_grad
        and (dtype is None or p.dtype == dtype)
        and (dev is None or p.device == dev)
        for p in params
    )
    if not ready:
        net.to("torch", dtype=dtype, device=device, requires_grad=True)
    return net.parameters()


def jax_parameters(net: Module, *, dtype=None) -> dict:
    """The parameters as a JAX pytree ``{hessQuik key: jax.Array}``.

    Pass the dict (or any pytree transform of it) to :func:`functional_call`.
    ``dtype`` defaults to the stored precision (float64 needs
    ``jax.config.update("jax_enable_x64", True)``).
    """
    _check_module(net)
    import jax.numpy as jnp
    import numpy as np

    from .backends._generic import to_numpy

    return {k: jnp.asarray(np.asarray(to_numpy(p)), dtype=dtype) for k, p in net.named_parameters()}


def functional_call(net: Module, params: Mapping[str, Any], x, **kwargs):
    """Evaluate ``net(x, **kwargs)`` with ``params`` in place of its parameters.

    ``params`` maps hessQuik keys (``net.state_dict()`` keys) to arrays of
    any backend, including JAX tracers; keys left out keep their stored
    values. The stored parameters are restored afterwards, even on error, so
    the call is a pure function of ``(params, x)``: this is what ``jax.grad``
    and ``jax.jit`` need (compare ``torch.func.functional_call``).

    Parameters
    ----------
    net : Module
    params : mapping of str to array
    x : array (n, d)
    **kwargs
        Forwarded to the network call (``gradient=True``, ``laplacian=True``, ...).

    Returns
    -------
    Result

    Raises
    ------
    ValueError
        For an unknown key or a wrongly shaped array.

    Examples
    --------
    .. code-block:: python

        import jax, jax.numpy as jnp, hessquik_core as hq
        from hessquik_core.training import functional_call, jax_parameters

        net = hq.FullyConnectedNN([2, 8, 1], act="tanh", seed=0)
        p = jax_parameters(net, dtype=jnp.float32)
        x = jnp.ones((4, 2), dtype=jnp.float32)

        def loss(p):
            return jnp.mean(functional_call(net, p, x, laplacian=True).laplacian ** 2)

        g = jax.jit(jax.grad(loss))(p)   # same keys as p

    Wrap the gradient in ``jax.jit``: un-jitted, JAX dispatches the many
    small operations of the recurrences one by one, which works but is
    slow.
    """
    _check_module(net)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of keys to arrays, got {type(params).__name__}")
    slots = {key: (mod, name) for key, mod, name in net._slots()}
    unknown = sorted(set(params) - set(slots))
    if unknown:
        raise ValueError(
            f"unknown parameter keys {unknown}; expected keys of net.state_dict(): {sorted(slots)}"
        )
    staged = [
        (slots[k][0], slots[k][1], _as_home(v, slots[k][0]._shapes[slots[k][1]], k))
        for k, v in params.items()
    ]
    saved = [(mod, name, mod._params[name]) for mod, name, _ in staged]
    try:
        for mod, name, arr in staged:
            mod._params[name] = arr
            mod._cache.clear()
        return cast(Callable[..., Any], net)(x, **kwargs)  # a network or layer: callable
    finally:
        for mod, name, arr in saved:
            mod._params[name] = arr
            # the cache may now hold conversions of ``params`` (e.g. tracers)
            mod._cache.clear()


def backward_in_chunks(loss_fn: Callable[[slice], Any], n: int, *, chunk: int = 128):
    r"""Backpropagate a loss that is a sum over ``n`` points, ``chunk`` points at a time.

    ``loss_fn(s)`` returns the contribution of the points ``s`` (a slice of
    ``range(n)``) to the total loss, e.g. ``((net(x[s], laplacian=True).laplacian
    + f[s]) ** 2).sum() / n`` for a mean over all ``n``; each contribution is
    backpropagated at once, so the parameters' ``.grad`` accumulate the
    gradient of the total, exactly (up to the order of the floating-point sums)
    the gradient of one call on all points.

    Why: eager torch records a training step's carries on its tape, and at
    ``d ≳ 16`` the ``(n, d, width)`` Jacobian carries of one big call no longer
    fit the CPU caches, so the element-wise passes of the backward sweep run at
    memory bandwidth. A chunk of 64-256 points keeps its tape cache-resident:
    measured on 2 shared cores (tanh MLP, width 64, depth 4, n = 1024,
    float64, one thread), d = 64: 1514 ms in one call, 719 ms in chunks of 64;
    d = 16: 283 ms, 198 ms (chunks of 256); at d = 2 the per-call overhead of
    many small calls costs more than it saves (44 ms, 57 ms with 256).

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(s: slice) -> scalar torch tensor``, the loss of the points ``s``.
    n : int
        Number of points (``n >= 1``).
    chunk : int
        Points per backward pass (``chunk >= 1``).

    Returns
    -------
    torch.Tensor
        The total loss (detached), for logging.

    Raises
    ------
    ValueError
        If ``n`` or ``chunk`` is not a positive integer.
    """
    for name, v in (("n", n), ("chunk", chunk)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    total = None
    for start in range(0, n, chunk):
        part = loss_fn(slice(start, min(start + chunk, n)))
        part.backward()
        part = part.detach()
        total = part if total is None else total + part
    return total


class FitHistory(list):
    """The loss before each step (a ``list`` of float), with how the loop ended.

    Attributes
    ----------
    converged : bool
        Whether it stopped on the tolerance (or because L-BFGS could make no
        further progress) rather than by running out of steps.
    reason : str
        ``"steps"`` (all steps taken), ``"tol"`` (a step changed the loss by
        at most ``tol`` relative), ``"stalled"`` (an L-BFGS step left the loss
        exactly unchanged: every later step would repeat it) or ``"nonfinite"``
        (the loss became NaN or infinite).
    """

    converged: bool = False
    reason: str = "steps"

    def __repr__(self) -> str:
        last = f", final loss {self[-1]:.4e}" if self else ""
        return f"FitHistory({len(self)} steps, reason={self.reason!r}{last})"


def fit(
    loss_fn: Callable[[], Any],
    params: Sequence,
    *,
    steps: int,
    lr: float = 1e-2,
    final_lr: float | None = None,
    optimizer: str = "adam",
    tol: float | None = None,
    log_every: int = 0,
    print_fn: Callable[[str], None] = print,
) -> FitHistory:
    r"""Minimise ``loss_fn()`` over torch ``params``: a plain optimizer loop.

    Parameters
    ----------
    loss_fn : callable
        No arguments, returns a scalar torch tensor that depends on ``params``
        (typically through ``net(x, gradient=True, hessian=True, ...)``).
    params : sequence of torch.Tensor
        Leaf tensors, e.g. from :func:`torch_parameters`.
    steps : int
        Optimizer steps at most (for ``"lbfgs"``: outer steps, each up to 20
        inner iterations).
    lr : float
        Initial learning rate.
    final_lr : float, optional
        If given (Adam only), the rate decays geometrically from ``lr`` to
        ``final_lr``: :math:`\eta_t = \eta_0 (\eta_T/\eta_0)^{t/T}`.
    optimizer : {"adam", "lbfgs"}
        ``torch.optim.Adam`` or ``torch.optim.LBFGS`` (strong-Wolfe line
        search, a good finisher for small smooth problems).
    tol : float, optional
        Stop once a step has changed the loss by at most ``tol`` relative,
        :math:`|\ell_{t} - \ell_{t+1}| \le \mathrm{tol}\,|\ell_t|` (judged
        before the next step, from the losses already computed: no extra
        evaluation). ``None`` (default) runs every step, except that L-BFGS
        stops once a step has left the loss exactly unchanged (it has
        stalled: the next step would repeat the same search from the same
        state). A NaN or infinite loss always stops the loop.
    log_every : int
        Print the loss every ``log_every`` steps (0: never), and how the loop ended.
    print_fn : callable
        Where log lines go.

    Returns
    -------
    FitHistory
        The loss before each step (a list of float), with ``.converged`` and
        ``.reason`` saying why the loop ended.
    """
    import torch

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if final_lr is not None and (optimizer != "adam" or not final_lr > 0):
        raise ValueError(f"final_lr must be a positive number and needs optimizer='adam', got {final_lr!r}")
    if tol is not None and (
        isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (tol >= 0 and math.isfinite(tol))
    ):
        raise ValueError(f"tol must be a non-negative number or None, got {tol!r}")
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise TypeError(
            "params must be a non-empty sequence of torch tensors with requires_grad=True "
            "(see torch_parameters)"
        )

    history = FitHistory()
    label = "step" if optimizer == "adam" else "lbfgs"

    def stop(step: int) -> bool:
        """Whether to stop before ``step``, judged by the change the previous step
        made (``history[-2] -> history[-1]``, the losses before each step)."""
        now = history[-1]
        if not math.isfinite(now):
            history.reason = "nonfinite"
        elif len(history) < 2:
            return False
        elif tol is not None and abs(history[-2] - now) <= tol * abs(history[-2]):
            history.reason, history.converged = "tol", True
        elif tol is None and optimizer == "lbfgs" and history[-2] == now:
            history.reason, history.converged = "stalled", True
        else:
            return False
        if log_every:
            print_fn(f"{label} {step:5d}  stopped ({history.reason}), loss {now:.4e}")
        return True

    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
        decay = 1.0 if final_lr is None or steps == 0 else (final_lr / lr) ** (1.0 / steps)
        for step in range(steps):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            history.append(float(loss.detach()))
            if stop(step):
                return history
            opt.step()
            for group in opt.param_groups:
                group["lr"] *= decay
            if log_every and step % log_every == 0:
                print_fn(f"step {step:5d}  loss {history[-1]:.4e}")
        return history

    lbfgs = torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for step in range(steps):
        # L-BFGS returns the loss before its step: the same entry as Adam's
        history.append(float(lbfgs.step(closure).detach()))
        if log_every and step % log_every == 0:
            print_fn(f"lbfgs {step:4d}  loss {history[-1]:.4e}")
        if stop(step):
            return history
    return history

"""The process-wide switches of the analytic training step
(:mod:`hessquik_core.engine.routes.analytic_step`) and of its workspace, public as
:func:`hessquik_core.training.analytic_weight_gradient` and
:func:`hessquik_core.training.step_workspace`. The settings themselves live in
:data:`hessquik_core.backends.base.SWITCHES`, at the bottom of the import graph,
where both the route and the backend's workspace read them."""

from __future__ import annotations

from ...backends import loaded
from ...backends.base import SWITCHES

__all__ = ["analytic_higher_order_gradient", "analytic_weight_gradient", "step_workspace"]


def _check_enabled(enabled: bool | None) -> None:
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")


def _toggle(name: str, enabled: bool | None) -> bool:
    """Set the switch ``name`` of :data:`SWITCHES` unless ``enabled`` is None; return its old value."""
    _check_enabled(enabled)
    before = getattr(SWITCHES, name)
    if enabled is not None:
        setattr(SWITCHES, name, enabled)
    return before


def analytic_weight_gradient(enabled: bool | None = None) -> bool:
    r"""Whether eager torch training steps use the analytic weight gradient.

    A forward-mode call of the value, gradient and/or Laplacian (or divergence)
    through a chain of layers that declare affine structure (dense and residual
    layers, any layer with :meth:`~hessquik_core.layers.Layer.affine_structure`)
    with activations that supply σ‴ (``act.max_order >= 3``: tanh, sin, sigmoid,
    antiTanh, quadratic, identity, ...), made while autograd records it
    (``x`` or a parameter requires grad), runs as one ``torch.autograd.Function``
    whose backward is the adjoint of the forward recurrences: three GEMMs per
    layer over the stacked carries ``[u; ∂u; Δu]`` and no per-operation tape
    (1.5-1.8x faster steps at d = 16-64 than autograd over the generic sweep,
    same numbers to rounding). A second backward pass (``create_graph=True``:
    a gradient penalty on the weight gradient, Hessian-vector products in the
    weights) is exact too: the Function's backward then re-runs the
    recurrences as taped operations and differentiates them.
    ``torch.compile`` and ``torch.func`` transforms always trace the generic sweep.

    Parameters
    ----------
    enabled : bool or None
        ``True`` / ``False`` set the switch (process-wide); ``None`` only reads it.

    Returns
    -------
    bool
        The setting before the call.

    Raises
    ------
    TypeError
        If ``enabled`` is neither a bool nor None.
    """
    return _toggle("analytic_step", enabled)


def analytic_higher_order_gradient(enabled: bool | None = None) -> bool:
    r"""Whether recorded order-3/4 calls use the AD-free weight gradient (default off).

    A torch call of ``biharmonic=True``, ``third_derivative`` / ``fourth_derivative``,
    :func:`~hessquik_core.higher.biharmonic`, :func:`~hessquik_core.higher.taylor_derivatives` or
    :func:`~hessquik_core.higher.pure_partials` through layers that declare affine structure,
    recorded through the parameters (not ``x``), can run as one
    ``torch.autograd.Function`` whose backward is :math:`J^\top w` of the per-point
    parameter Jacobians (:mod:`hessquik_core.pinn`), exact to rounding, double
    backward included. It is off by default because it is slower: measured
    1.4–2.4× the time of autograd through the sweep (tanh MLPs 64×4 at d = 2, 5 and
    768-768-512-512 at d = 5; session 7). :func:`analytic_weight_gradient` ``(False)``
    turns it off too.

    Parameters
    ----------
    enabled : bool or None
        ``True`` / ``False`` set the switch (process-wide); ``None`` only reads it.

    Returns
    -------
    bool
        The setting before the call.

    Raises
    ------
    TypeError
        If ``enabled`` is neither a bool nor None.
    """
    return _toggle("analytic_higher_order", enabled)


def step_workspace(enabled: bool | None = None, *, release: bool = False) -> dict:
    r"""The workspace that eager torch training steps keep their stacks in, on the CPU.

    A step through the analytic weight gradient (:func:`analytic_weight_gradient`)
    needs three ``(1 + k + 1, n, width)`` stacks per layer (``k`` tangents: d, or
    the number of directions). Allocated afresh, each one above glibc's mmap
    threshold (32 MiB) is new memory from the kernel, page-faulted on every step;
    kept in a workspace it is reused: at d = 64, n = 1024, width 64 the step is
    ~1.4x faster. A buffer is lent again only when no tensor shares its memory
    any more — not while a graph that saved it is alive (``retain_graph=True``),
    not while you hold a result that views it — so the numbers are the same
    bit for bit with and without it. The memory held between steps is one step's
    working set (what the step allocates anyway); buffers not used for two steps
    (a new batch size or width) are released. CUDA tensors are not pooled (the
    caching allocator already reuses memory), nor buffers under 1 MiB.

    Parameters
    ----------
    enabled : bool or None
        ``True`` / ``False`` switch the workspace on or off (process-wide; off
        also releases it); ``None`` only reads the setting.
    release : bool
        Drop every buffer now (those still in use keep their memory until
        their last view is gone).

    Returns
    -------
    dict
        ``{"enabled": setting before the call, "nbytes": bytes held before the call}``.

    Raises
    ------
    TypeError
        If ``enabled`` is neither a bool nor None, or ``release`` is not a bool.
    """
    _check_enabled(enabled)
    if not isinstance(release, bool):
        raise TypeError(f"release must be a bool, got {release!r}")
    # only the backends in use already are asked: this never imports a library
    before = {"enabled": SWITCHES.step_workspace, "nbytes": sum(be.workspace_bytes() for be in loaded())}
    if enabled is not None:
        SWITCHES.step_workspace = enabled
    if release or enabled is False:
        for be in loaded():
            be.release_workspace()
    return before

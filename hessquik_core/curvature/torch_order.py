r"""Flat parameter vectors, ``(P, P)`` matrices and operators in a torch module's own order.

This package orders :math:`\theta` as the converted network's ``state_dict``
(:class:`~hessquik_core.curvature.ParameterLayout`): ``K = Wᵀ`` of a
``Linear`` is stored ``(in, out)`` and flattened row-major, and layers are
counted, not torch modules. torch orders :math:`\theta_t` as
``module.named_parameters()``, each parameter flattened row-major in its
own shape (``weight : (out, in)``). Both hold the same numbers, so
:math:`\theta_t = \theta[\pi]` for one permutation :math:`\pi` of
``0..P-1``, and

.. math::

    g_t = g[\pi],\qquad H_t = H[\pi][:, \pi] = \Pi H \Pi^\top,\qquad
    \mathcal{A}_t v = (\mathcal{A}\,(v[\pi^{-1}]))[\pi],

with :math:`\Pi` the permutation matrix (:math:`\Pi^{-1} = \Pi^\top`).

:math:`\pi` is found, not written per layer type: a copy of the module
whose parameters hold the labels ``1..P`` (float64, in torch's order) is
converted with :func:`hessquik_core.from_torch`, and entry ``i`` of the
converted network's :math:`\theta` is label :math:`\pi^{-1}(i) + 1`. Every
conversion that copies, transposes or concatenates parameters (all of
``from_torch``'s) is a permutation; anything else is refused.
"""

from __future__ import annotations

import copy

import array_api_compat as aac
import numpy as np

from .._array import namespace_of
from ..backends import backend_for
from .operators import LinearOperatorBase

__all__ = ["TorchOrderOperator", "torch_permutation"]


def _check_module(module) -> None:
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch missing
        raise TypeError("module must be a torch.nn.Module, and torch is not installed") from None
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")


def torch_labels(full, module) -> np.ndarray:
    """For the full layout of ``from_torch(module)``: entry ``i`` of :math:`\theta` is torch's
    flat entry ``labels[i]`` (``named_parameters()`` order, 0-based)."""
    import torch

    from ..interop import from_torch
    from .layout import flatten_parameters, parameter_layout

    _check_module(module)
    Pt = int(sum(p.numel() for p in module.parameters()))
    probe = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        off = 0
        for _, p in probe.named_parameters():
            p.copy_(torch.arange(off + 1, off + p.numel() + 1, dtype=torch.float64).reshape(p.shape))
            off += p.numel()
    # activations do not move parameters: ReLU is let through for the probe only
    net = from_torch(probe, allow_relu=True, dtype=np.float64)
    got = parameter_layout(net)
    if (got.keys, got.shapes) != (full.keys, full.shapes):
        raise ValueError(
            f"the layout does not describe from_torch(module): layout keys {list(full.keys)} with shapes "
            f"{list(full.shapes)}, the module converts to {list(got.keys)} with {list(got.shapes)}"
        )
    labels = np.asarray(flatten_parameters(net), dtype=np.float64)
    idx = labels.astype(np.int64) - 1
    if (
        Pt != full.size
        or not np.array_equal(idx + 1, labels)
        or idx.min(initial=0) < 0
        or idx.max(initial=-1) >= Pt
        or np.unique(idx).size != Pt
    ):
        raise ValueError(
            f"from_torch(module) does not copy the torch parameters one to one (the network has "
            f"P = {full.size} parameters, the torch module {Pt}: a parameter shared, computed or taken "
            f"from a buffer), so there is no permutation between the two orders"
        )
    return idx


def torch_permutation(layout, module) -> np.ndarray:
    r""":math:`\pi` with ``theta_torch = theta[pi]`` (see the module docstring).

    ``layout`` may be that of a selection (``params=``, e.g. the trainable
    parameters only): ``theta_torch`` is then the concatenation of the torch
    parameters it holds, in ``named_parameters()`` order.

    Parameters
    ----------
    layout : ParameterLayout
        The layout of ``from_torch(module)`` (checked: same keys and shapes), or of some of its keys.
    module : torch.nn.Module
        The torch model; it is not modified (a copy is labelled).

    Returns
    -------
    numpy.ndarray of shape (P,), int64
    """
    from ..interop import from_torch
    from .layout import parameter_layout

    _check_module(module)
    Pt = int(sum(p.numel() for p in module.parameters()))
    try:
        full = parameter_layout(from_torch(module, allow_relu=True))
    except ValueError as err:
        raise ValueError(f"the torch module cannot be converted: {err}") from err
    if full.size != Pt:
        raise ValueError(
            f"the layout has P = {layout.size} parameters, the torch module {Pt} "
            f"(named_parameters: {[n for n, _ in module.named_parameters()]}); from_torch(module) "
            f"has {full.size}: a parameter shared between modules has no single place in either order"
        )
    sub = [full.keys.index(k) if k in full.keys else -1 for k in layout.keys]
    if -1 in sub or any(full.shapes[j] != s for j, s in zip(sub, layout.shapes)) or sub != sorted(sub):
        raise ValueError(
            f"the layout does not describe from_torch(module) or a selection of it: layout keys "
            f"{list(layout.keys)} with shapes {list(layout.shapes)}, the module converts to "
            f"{list(full.keys)} with {list(full.shapes)}; is the layout that of from_torch(module)?"
        )
    labels = torch_labels(full, module)
    if len(sub) != len(full.keys):
        labels = np.concatenate([labels[full.offsets[j] : full.offsets[j] + full.sizes[j]] for j in sub])
    # torch's order of the entries held is the ascending order of their labels
    return np.argsort(labels, kind="stable").astype(np.int64)


def torch_names(layout, module) -> list[tuple[str, tuple[int, ...]]]:
    """The torch parameters (name, shape) whose entries ``layout`` holds, in ``named_parameters()`` order."""
    from ..interop import from_torch
    from .layout import parameter_layout

    full = parameter_layout(from_torch(module, allow_relu=True))
    labels = torch_labels(full, module)
    held = np.zeros(full.size, dtype=bool)
    for k in layout.keys:
        j = full.keys.index(k)
        held[labels[full.offsets[j] : full.offsets[j] + full.sizes[j]]] = True
    out, off = [], 0
    for name, p in module.named_parameters():
        n = p.numel()
        if held[off : off + n].all():
            out.append((name, tuple(p.shape)))
        elif held[off : off + n].any():  # pragma: no cover - resolve_params refuses such selections
            raise ValueError(f"the layout holds part of torch's {name!r} only")
        off += n
    return out


def _take(a, index: np.ndarray, axis: int):
    """``a`` indexed by the host ``index`` along ``axis``, in ``a``'s library and device."""
    xp = namespace_of(a, "a")
    be = backend_for(xp)
    i = be.convert(index, xp=xp, dtype=xp.int64, device=aac.device(a))
    return xp.take(a, i, axis=axis)


class TorchOrderOperator(LinearOperatorBase):
    r"""An operator :math:`\mathcal{A}` seen in a torch module's parameter order: :math:`\Pi\mathcal{A}\Pi^\top`.

    Built by :meth:`ParameterLayout.to_torch_order` (or, with ``inverse=True``,
    :meth:`ParameterLayout.from_torch_order`); its products take and return
    vectors in the other order.

    Parameters
    ----------
    op : LinearOperatorBase
        ``(P, P)``.
    perm : numpy.ndarray of shape (P,)
        :math:`\pi`: ``(self @ v) = (op @ v[inv])[perm]`` with ``inv`` the inverse of ``perm``.

    Attributes
    ----------
    op : LinearOperatorBase
        The wrapped operator.
    perm : numpy.ndarray of shape (P,)
        The permutation applied to its outputs.
    """

    def __init__(self, op: LinearOperatorBase, perm: np.ndarray) -> None:
        super().__init__(op.size, op.xp, op.array_dtype, op.device)
        self.op, self.perm = op, perm
        self._inv = np.argsort(perm)

    def __repr__(self) -> str:
        return f"TorchOrderOperator({self.op!r})"

    def _matmat(self, V):
        return _take(self.op.matmat(_take(V, self._inv, 0)), self.perm, 0)

r"""A torch model in the curvature functions: its conversion, cached, and views of its weights.

A curvature call on a torch module works on the hessquik-core network equal to it
(:func:`hessquik_core.from_torch`). Converting costs far more than a gradient of a
small model, so the conversion is kept (weakly, per module) in an :class:`_Entry`
while the module's *structure* is unchanged: the modules (type, training flag,
hooks), every parameter and buffer tensor (identity, storage ``data_ptr()``, dtype,
device, shape, ``requires_grad``) and the global hooks.

**Values without reconversion.** Where every parameter of the converted network is
a torch parameter as it is or transposed (a ``Linear``'s :math:`K = W^\top`, found
once by converting a labelled copy, ``torch_order.torch_labels``), the entry also
holds *views* of the module's own tensors (``weight.detach().T``, ``bias.detach()``).
A call in torch with the model's dtype and device reads the weights through them, so
an in-place update (an optimiser step, ``load_state_dict``, ``p.copy_``) is seen
without converting again and nothing is copied. Every other use (another backend,
:func:`~hessquik_core.curvature.flatten_parameters`) asks for a *fresh* network:
converted again when a tensor's version counter moved since the last conversion.
A change of structure (``model.double()``, ``p.data = ...``, a replaced submodule,
``requires_grad_``) makes a new entry.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import model_backend

__all__ = ["converted"]


@dataclass
class _Entry:
    """The conversion of one torch module (see the module docstring)."""

    structure: tuple  # what the conversion depends on besides the values
    versions: tuple  # the tensors' version counters when ``net`` was converted
    net: Any  # from_torch(module) at ``versions``
    views: list | None  # per leaf of ``net``: local name -> view of the module's tensor (or None)
    # what calls derive from the structure alone (the leaves' plan, the trainable selection,
    # the parameters' dtypes): it lives as long as the entry
    memo: dict = field(default_factory=dict)


# torch module -> _Entry; weak, so that a dropped model takes its conversion with it
_CONVERTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _keys(module, be) -> tuple[tuple, tuple]:
    """``(structure, versions)`` of ``module``, read cheaply (no tensor data is touched).

    One walk over the submodules' own dicts (``named_parameters`` and ``named_buffers``
    would each walk the tree again; a module reached twice is listed twice, which keeps
    the key deterministic). A tensor is named by its module's dotted path and its key."""
    tmod = sys.modules["torch.nn.modules.module"]  # imported with the module given
    mods, tensors, versions = [], [], []
    stack = [("", module)]
    while stack:
        name, m = stack.pop()
        mods.append((name, type(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks)))
        for group in (m._parameters, m._buffers):
            for k, t in group.items():
                if t is not None:
                    tensors.append(
                        (name, k, id(t), t.data_ptr(), t.dtype, t.device, t.shape, be.requires_grad(t))
                    )
                    versions.append(t._version)
        if m._modules:
            stack.extend((f"{name}.{k}", c) for k, c in reversed(m._modules.items()) if c is not None)
    hooks = (
        len(getattr(tmod, "_global_forward_hooks", ())),
        len(getattr(tmod, "_global_forward_pre_hooks", ())),
    )
    return (tuple(mods), tuple(tensors), hooks), tuple(versions)


def _convert(module):
    from ..interop import from_torch

    try:
        return from_torch(module)
    except ValueError as err:
        raise ValueError(
            f"net is a torch module: curvature functions convert it with hessquik_core.from_torch, "
            f"which refused it: {err}"
        ) from err


def converted(module, layout_cls, fresh: bool = True, be=None) -> _Entry:
    """The cache entry of ``module`` (converted on a miss); ``layout_cls`` is
    :class:`~hessquik_core.curvature.ParameterLayout` (handed in: its module imports this one);
    ``be``: ``model_backend(module)`` where the caller has it.

    ``fresh=True``: ``entry.net`` holds the module's current values. ``fresh=False``
    (the caller reads the values through ``entry.views``): ``entry.net`` may hold
    older values where ``entry.views`` is not ``None``; it is still fresh otherwise.
    """
    be = model_backend(module) if be is None else be  # the backend of the model's library
    assert be is not None  # a torch module (the caller checked)
    structure, versions = _keys(module, be)
    e = _CONVERTED.get(module)
    if e is not None and e.structure == structure:
        if e.versions != versions and (fresh or e.views is None):
            e.net, e.versions = _convert(module), versions  # same tensors: the views stay
        return e
    net = _convert(module)
    e = _Entry(structure, versions, net, _views(module, net, layout_cls))
    _CONVERTED[module] = e
    return e


def _views(module, net, layout_cls) -> list | None:
    """Per leaf of ``net``: ``{local name: view}`` with each converted parameter a view of
    the torch parameter it copies (as it is, or transposed); ``None`` unless every
    parameter of every leaf is one (then every call converts, see :func:`converted`)."""
    from .torch_order import torch_labels

    try:
        full = layout_cls.from_named(net.named_parameters())
        labels = torch_labels(full, module)  # θ entry i is torch's flat entry labels[i]
    except ValueError:
        return None
    tparams = list(module.parameters())
    starts = np.cumsum([0] + [p.numel() for p in tparams])
    out, j = [], 0
    for leaf in net._leaves():
        if leaf._children or leaf._frozen:
            return None
        d: dict[str, Any] = {}
        for name, home in leaf._params.items():
            if home is None:
                d[name] = None
                continue
            if full.keys[j].rsplit(".", 1)[-1] != name:  # pragma: no cover - structural invariant
                return None
            lab = labels[full.offsets[j] : full.offsets[j] + full.sizes[j]].reshape(full.shapes[j])
            j += 1
            i = int(np.searchsorted(starts, lab.flat[0], side="right")) - 1
            t = tparams[i]
            own = np.arange(starts[i], starts[i + 1]).reshape(tuple(t.shape))
            if lab.shape == own.shape and np.array_equal(lab, own):
                v = t.detach()
            elif own.ndim == 2 and lab.shape == own.T.shape and np.array_equal(lab, own.T):
                v = t.detach().T
            else:
                return None
            # the same numbers as the conversion (guards the mapping)
            if not np.array_equal(np.asarray(v.cpu()), np.asarray(home)):  # pragma: no cover
                return None
            d[name] = v
        out.append(d)
    return out if j == len(full.keys) else None

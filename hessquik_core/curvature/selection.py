r"""Which parameters a curvature computation differentiates: ``params=``.

Every curvature function and operator takes ``params=``: the derivatives are
those with respect to the sub-vector :math:`\theta_S` of the selected
parameters (the others held fixed), e.g. :math:`H_{SS} = S H S^\top` for the
selection matrix :math:`S`. The sub-vector keeps the network's layout order
(:class:`~hessquik_core.curvature.ParameterLayout` of the selected keys),
whatever order the names are given in.

* ``None`` (default): every parameter of a hessquik-core network; for a
  torch model, those with ``requires_grad=True`` (frozen ones excluded, as
  torch's optimisers and autograd see them);
* ``"all"``: every parameter, frozen ones included;
* names: this package's keys (``"0.K"``) or, for a torch model, torch's
  (``"0.weight"``); a torch parameter maps to whole keys of the converted
  network (found by converting a labelled copy, see
  ``hessquik_core/curvature/torch_order.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import model_backend

__all__ = ["resolve_params", "sub_layout"]


def sub_layout(full, keys):
    """The layout of the keys ``keys`` of ``full`` (a ``ParameterLayout``, in its order),
    offsets from 0; built by ``full``'s own class (this module does not import the layout
    module, whose :func:`parameter_layout` calls into this one)."""
    idx = [i for i, k in enumerate(full.keys) if k in set(keys)]
    offsets, off = [], 0
    for i in idx:
        offsets.append(off)
        off += full.sizes[i]
    return type(full)(
        tuple(full.keys[i] for i in idx),
        tuple(full.shapes[i] for i in idx),
        tuple(offsets),
        tuple(full.sizes[i] for i in idx),
    )


def _torch_keys(full, module) -> dict[str, tuple[str, ...]]:
    """torch parameter name -> the keys of the converted network holding it (whole keys only)."""
    from .torch_order import torch_labels

    labels = torch_labels(full, module)  # our θ entry i holds torch's flat entry labels[i]
    key_of = np.repeat(np.arange(len(full.keys)), full.sizes)
    out, off = {}, 0
    for name, p in module.named_parameters():
        n = p.numel()
        inside = (labels >= off) & (labels < off + n)
        keys = tuple(full.keys[i] for i in np.unique(key_of[inside]))
        for k in keys:  # the key must hold only this parameter's entries
            j = full.keys.index(k)
            lab = labels[full.offsets[j] : full.offsets[j] + full.sizes[j]]
            if not np.all((lab >= off) & (lab < off + n)):
                raise ValueError(
                    f"params: torch's {name!r} shares the converted parameter {k!r} with other torch "
                    f"parameters, so it cannot be chosen (or frozen) alone; select by this package's "
                    f"keys {list(full.keys)} or params='all'"
                )
        out[name] = keys
        off += n
    return out


def resolve_params(original, full, params) -> tuple[Any, np.ndarray | None]:
    """The selected layout and the indices of its entries in the full :math:`\\theta` (``None``: all).

    ``original`` is what the caller gave as ``net`` (a torch model is read
    for its names and ``requires_grad``), ``full`` the converted network's layout.
    """
    is_torch = model_backend(original) is not None and not hasattr(original, "_leaves")
    if params is None:
        if not is_torch:
            return full, None
        be = model_backend(original)
        assert be is not None  # is_torch: a model of an imported library
        frozen = [n for n, p in original.named_parameters() if not be.requires_grad(p)]
        if not frozen:
            return full, None
        owners = _torch_keys(full, original)
        drop = {k for n in frozen for k in owners[n]}
        keys = [k for k in full.keys if k not in drop]
        if not keys:
            raise ValueError(
                "params: every parameter of the torch model is frozen (requires_grad=False); "
                "pass params='all' to differentiate them anyway"
            )
    elif isinstance(params, str) and params == "all":
        return full, None
    else:
        if isinstance(params, str) or not hasattr(params, "__iter__"):
            raise TypeError(f"params must be None, 'all' or an iterable of parameter names, got {params!r}")
        names = list(params)
        owners = _torch_keys(full, original) if is_torch else {}
        keys = []
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"params must hold parameter names (str), got {n!r}")
            if n in full.keys:
                keys.append(n)
            elif n in owners:
                keys.extend(owners[n])
            else:
                known = list(full.keys) + [k for k in owners if k not in full.keys]
                raise ValueError(f"params: unknown parameter {n!r}; known: {known}")
        if not keys:
            raise ValueError("params selects no parameter")
    sub = sub_layout(full, keys)
    if sub.keys == full.keys:
        return full, None
    index = np.concatenate(
        [
            np.arange(full.offsets[full.keys.index(k)], full.offsets[full.keys.index(k)] + s)
            for k, s in zip(sub.keys, sub.sizes)
        ]
    )
    return sub, index.astype(np.int64)

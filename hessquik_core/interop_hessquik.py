"""Convert hessQuik (0.0.6) networks into hessquik_core networks.

:func:`from_hessquik` walks a hessQuik module tree and builds the
hessquik_core network with the same structure, the same activations and a
NumPy copy of every parameter (dtype preserved). The ``state_dict`` keys of
both are identical, so weights trained with either library load into the
other.

torch and hessQuik are imported only when the function is called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import activations as _act
from .layers import LAYERS, ICNNLayer, ResnetLayer, SingleLayer
from .networks import ICNN, NN, FullyConnectedNN, ResnetNN

__all__ = ["from_hessquik"]


def _name(module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _unsupported(module, where: str = ""):
    return TypeError(
        f"cannot convert {_name(module)}{where}: supported are hessQuik's NN, fullyConnectedNN, "
        "resnetNN, ICNN, singleLayer, resnetLayer, ICNNLayer, quadraticLayer, quadraticICNNLayer "
        "and the activations antiTanh, identity, quadratic, sigmoid, softplus, tanh"
    )


def _activation(a, where: str) -> _act.Activation:
    """hessQuik activation object -> hessquik_core activation: the registered activation
    naming ``type(a)`` as its ``hessquik_name`` converts it (exact types only)."""
    import hessQuik.activations as hact

    for cls in _act.ACTIVATIONS.values():
        if cls.hessquik_name is not None and type(a) is getattr(hact, cls.hessquik_name, None):
            return cls.from_twin(a)
    raise _unsupported(a, where)


def _numpy(p) -> np.ndarray:
    """Detached host copy of a torch parameter, same dtype."""
    return p.detach().cpu().numpy().copy()


def _dtype(module) -> np.dtype:
    for p in module.parameters():
        return _numpy(p).dtype
    return np.dtype(np.float64)


def _check_nonneg(layer, where: str) -> None:
    import torch.nn.functional as F

    if layer.nonneg is not F.softplus:
        raise TypeError(f"cannot convert {_name(layer)}{where}: its nonneg map is not torch's softplus")


class _Kit:
    """What a layer's ``from_hessquik`` needs (see :meth:`Layer.from_hessquik`)."""

    def __init__(self, mod, where):
        self.where, self.dtype = where, _dtype(mod)

    def act(self, a, suffix: str):
        return _activation(a, self.where + suffix)

    def unsupported(self, module, suffix: str = ""):
        return _unsupported(module, self.where + suffix)

    def check_nonneg(self, layer) -> None:
        _check_nonneg(layer, self.where)

    @staticmethod
    def is_hessquik_layer(module) -> bool:
        import hessQuik.layers as hlay

        return type(module) is getattr(hlay, type(module).__name__, None)


def _layer(mod, where: str):
    """Convert one hessQuik layer (weights are loaded by the caller): the registered
    layer that names its hessQuik class converts it (exact types only)."""
    cls: Any  # a registered layer class
    for cls in LAYERS.values():
        if cls.hessquik_name is not None and cls.hessquik_name == type(mod).__name__:
            if _Kit.is_hessquik_layer(mod):
                return cls.from_hessquik(mod, _Kit(mod, where))
    raise _unsupported(mod, where)


def _same_acts(layers) -> bool:
    acts = [lay.act for lay in layers]
    return all(a == acts[0] for a in acts)


def _network(mod, where: str):
    """Convert a hessQuik ``NN`` (or subclass) into the matching network class."""
    import hessQuik.networks as hnet

    children = list(mod)
    if not children:
        raise ValueError(f"cannot convert an empty hessQuik network{where}")
    blocks = [_convert(c, f"{where}[{i}]") for i, c in enumerate(children)]
    t = type(mod)
    dt = _dtype(mod)
    # keep the specialised class when the blocks are exactly what it would build
    if (
        t is hnet.fullyConnectedNN
        and all(isinstance(b, SingleLayer) and b.bias for b in blocks)
        and _same_acts(blocks)
    ):
        widths = [b.in_features for b in blocks] + [blocks[-1].out_features]
        return FullyConnectedNN(widths, act=blocks[0].act, dtype=dt)
    if (
        t is hnet.resnetNN
        and all(isinstance(b, ResnetLayer) and b.layer.bias for b in blocks)
        and _same_acts(blocks)
        and len({b.h for b in blocks}) == 1
        and len({b.width for b in blocks}) == 1
    ):
        return ResnetNN(blocks[0].width, len(blocks), h=blocks[0].h, act=blocks[0].act, dtype=dt)
    if (
        t is hnet.ICNN
        and all(isinstance(b, ICNNLayer) and b.bias for b in blocks)
        and _same_acts(blocks)
        and len({b.input_dim for b in blocks}) == 1
    ):
        widths = [blocks[0].n_in or None] + [b.out_width for b in blocks]
        return ICNN(blocks[0].input_dim, widths, act=blocks[0].act, dtype=dt)
    return NN(*blocks)


def _convert(mod, where: str):
    import hessQuik.networks as hnet

    if type(mod) in (hnet.NN, hnet.fullyConnectedNN, hnet.resnetNN, hnet.ICNN):
        return _network(mod, where)
    return _layer(mod, where)


def from_hessquik(module):
    """Convert a hessQuik network or layer to the equivalent hessquik_core object.

    Parameters
    ----------
    module : hessQuik.networks.NN, fullyConnectedNN, resnetNN, ICNN, or a hessQuik layer
        Nested ``NN`` blocks are converted recursively. Activations: antiTanh,
        identity, quadratic, sigmoid, softplus (``beta`` and ``threshold``
        kept), tanh.

    Returns
    -------
    NN or Layer
        Same structure and ``state_dict`` keys; parameters are NumPy copies
        (the hessQuik module is not modified and shares no memory with the result).

    Raises
    ------
    TypeError
        For any module or activation outside the list above (subclasses
        included, since they may change the math), naming it.

    Examples
    --------
    >>> import torch, hessQuik.networks as hnet, hessquik_core as hq   # doctest: +SKIP
    >>> net = hq.from_hessquik(hnet.fullyConnectedNN([3, 8, 1]))       # doctest: +SKIP
    """
    import hessQuik.layers  # noqa: F401  (fails early with a clear ImportError)

    out = _convert(module, "")
    state = {k: _numpy(v) for k, v in module.state_dict().items()}
    out.load_state_dict(state, strict=True)
    return out

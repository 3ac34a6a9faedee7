"""hessQuik's layer names, as hessquik-core layers with hessQuik's call.

Constructor arguments and defaults follow hessQuik
(``singleLayer(in_features, out_features, act=identityActivation(), bias=True,
device=None, dtype=None)``); parameters are stored as NumPy arrays
(``dtype=None`` means float64) unless ``device`` names a non-CPU torch device.
Initial values are drawn from hessquik-core's own initialisation, so they
differ from hessQuik's (load weights with ``load_state_dict``; the keys are
the same).

Note: ``ICNNLayer.in_features`` / ``out_features`` are hessquik-core's
*total* widths (``dim_input()`` / ``dim_output()`` in hessQuik), not
hessQuik's attributes of the same names.
"""

from __future__ import annotations

from .. import layers as _L
from ._call import HessQuikCallMixin, place, storage_dtype
from .activations import as_compat

__all__ = ["ICNNLayer", "hessQuikLayer", "quadraticICNNLayer", "quadraticLayer", "resnetLayer", "singleLayer"]

#: hessQuik's base class name for layers.
hessQuikLayer = _L.Layer


class singleLayer(HessQuikCallMixin, _L.SingleLayer):
    r""":math:`\sigma(uK + b)`; hessQuik's ``singleLayer``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        act=None,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        seed=None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            act=as_compat(act, "identity"),
            bias=bias,
            dtype=storage_dtype(dtype),
            seed=seed,
        )
        place(self, device, dtype)


class resnetLayer(HessQuikCallMixin, _L.ResnetLayer):
    r""":math:`u + h\,\sigma(uK + b)`; hessQuik's ``resnetLayer`` (default activation: identity)."""

    def __init__(
        self, width: int, h: float = 1.0, act=None, bias: bool = True, device=None, dtype=None, *, seed=None
    ) -> None:
        super().__init__(
            width, h=h, act=as_compat(act, "identity"), bias=bias, dtype=storage_dtype(dtype), seed=seed
        )
        place(self, device, dtype)


class ICNNLayer(HessQuikCallMixin, _L.ICNNLayer):
    r"""Input-convex layer on :math:`[u, x]`; hessQuik's ``ICNNLayer`` (default: softplus)."""

    def __init__(
        self,
        input_dim: int,
        in_features: int | None,
        out_features: int,
        act=None,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        seed=None,
    ) -> None:
        super().__init__(
            input_dim,
            in_features,
            out_features,
            act=as_compat(act, "softplus"),
            bias=bias,
            dtype=storage_dtype(dtype),
            seed=seed,
        )
        place(self, device, dtype)


class quadraticLayer(HessQuikCallMixin, _L.QuadraticLayer):
    r""":math:`u v + \tfrac12 |uA^\top|^2 + \mu`; hessQuik's ``quadraticLayer``."""

    def __init__(self, in_features: int, rank: int, device=None, dtype=None, *, seed=None) -> None:
        super().__init__(in_features, rank, dtype=storage_dtype(dtype), seed=seed)
        place(self, device, dtype)


class quadraticICNNLayer(HessQuikCallMixin, _L.QuadraticICNNLayer):
    r"""Input-convex quadratic output layer; hessQuik's ``quadraticICNNLayer``."""

    def __init__(
        self, input_dim: int, in_features: int | None, rank: int, device=None, dtype=None, *, seed=None
    ) -> None:
        super().__init__(input_dim, in_features, rank, dtype=storage_dtype(dtype), seed=seed)
        place(self, device, dtype)

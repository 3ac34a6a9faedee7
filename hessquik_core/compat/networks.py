"""hessQuik's network names, as hessquik-core networks with hessQuik's call.

``NN``, ``fullyConnectedNN``, ``resnetNN`` and ``ICNN`` take hessQuik's
arguments and defaults (activation: softplus). ``NNPytorchAD`` and
``NNPytorchHessian`` compute the same derivatives with PyTorch's automatic
differentiation (``torch.func``) of :func:`hessquik_core.to_torch`'s module,
as an independent reference; they import torch when called and, unlike
hessQuik's, do not propagate gradients back to the wrapped network's
parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from .. import networks as _N
from ._call import HessQuikCallMixin, place
from .layers import ICNNLayer, resnetLayer, singleLayer

__all__ = ["ICNN", "NN", "NNPytorchAD", "NNPytorchHessian", "fullyConnectedNN", "resnetNN"]


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class NN(HessQuikCallMixin, _N.NN):
    """Composition of layers and networks; hessQuik's ``NN(*layers)``."""


class fullyConnectedNN(NN):
    """Single layers with widths ``[d, w1, ..., m]``; hessQuik's ``fullyConnectedNN``."""

    def __init__(self, widths: Sequence[int], act=None, device=None, dtype=None, *, seed=None) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries (input and output), got {widths}")
        rng = _rng(seed)
        super().__init__(
            *(
                singleLayer(
                    widths[i],
                    widths[i + 1],
                    act=act if act is not None else "softplus",
                    dtype=dtype,
                    seed=rng,
                )
                for i in range(len(widths) - 1)
            )
        )
        place(self, device, dtype)


class resnetNN(NN):
    """``depth`` residual layers of constant ``width``; hessQuik's ``resnetNN``."""

    def __init__(
        self, width: int, depth: int, h: float = 1.0, act=None, device=None, dtype=None, *, seed=None
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        rng = _rng(seed)
        super().__init__(
            *(
                resnetLayer(width, h=h, act=act if act is not None else "softplus", dtype=dtype, seed=rng)
                for _ in range(int(depth))
            )
        )
        place(self, device, dtype)


class ICNN(NN):
    """Input-convex network, ``widths = [None, w1, ...]``; hessQuik's ``ICNN``."""

    def __init__(
        self, input_dim: int, widths: Sequence, act=None, device=None, dtype=None, *, seed=None
    ) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries, e.g. [None, 16], got {widths}")
        rng = _rng(seed)
        super().__init__(
            *(
                ICNNLayer(
                    input_dim,
                    widths[i],
                    widths[i + 1],
                    act=act if act is not None else "softplus",
                    dtype=dtype,
                    seed=rng,
                )
                for i in range(len(widths) - 1)
            )
        )
        place(self, device, dtype)


class NNPytorchAD:
    """Derivatives of ``net`` by PyTorch automatic differentiation (a reference).

    ``NNPytorchAD(net)(x, do_gradient=True, do_Hessian=True)`` returns
    ``(f (n, m), df (n, d, m), d2f (n, d, d, m))`` computed with
    ``torch.func.jacrev`` / ``torch.func.hessian`` of ``to_torch(net)``, in
    ``x``'s dtype; NumPy inputs give NumPy outputs.
    """

    def __init__(self, net) -> None:
        self.net = net

    def _check(self) -> None:
        pass

    def __call__(self, x, do_gradient: bool = False, do_Hessian: bool = False, **kwargs):
        import torch
        from torch.func import hessian, jacrev, vmap

        from ..interop import to_torch

        self._check()
        is_torch = isinstance(x, torch.Tensor)
        xt = x if is_torch else torch.from_numpy(np.array(x))
        mod = to_torch(self.net, dtype=xt.dtype, device=xt.device)

        def one(xi):
            return mod(xi[None])[0]

        with torch.no_grad():
            f = mod(xt)
        df = d2f = None
        if do_gradient or do_Hessian:
            df = vmap(jacrev(one))(xt).permute(0, 2, 1)
        if do_Hessian:
            with warnings.catch_warnings():
                # torch loads its forward-AD decompositions through the deprecated
                # torch.jit.script the first time jacfwd/hessian runs (a
                # DeprecationWarning up to torch 2.13, a FutureWarning in 2.14)
                for category in (DeprecationWarning, FutureWarning):
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=category)
                d2f = vmap(hessian(one))(xt).permute(0, 2, 3, 1)
        out = (f, df, d2f)
        if is_torch:
            return out
        return tuple(None if t is None else t.detach().cpu().numpy() for t in out)


class NNPytorchHessian(NNPytorchAD):
    """As :class:`NNPytorchAD`, for scalar-output networks only (hessQuik's restriction)."""

    def _check(self) -> None:
        if self.net.out_features != 1:
            raise ValueError(
                f"NNPytorchHessian needs a network with scalar output, got {self.net.out_features} outputs"
            )

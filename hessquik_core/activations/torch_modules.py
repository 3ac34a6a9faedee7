r"""The torch twins of activations that ``torch.nn`` lacks, found through each activation
class (:meth:`~hessquik_core.activations.Activation.torch_twin_class`).

* ``AntiTanh``, ``Quadratic``, ``Sin``, ``Gaussian``: :math:`\log(2\cosh z)`, :math:`z^2/2`,
  :math:`\sin z`, :math:`e^{-z^2}` (also ``hessquik_core.interop.AntiTanh``, ...).
* ``ActivationModule(act)``: any other activation (a :func:`~hessquik_core.activations.custom`
  one, an unregistered subclass): its ``forward`` evaluates the activation's own
  :math:`\sigma` through torch's namespace, so it is differentiable by autograd when the
  activation's functions use the ``xp`` they are handed.

The classes are created on first access (PEP 562), so importing hessquik-core never
imports torch; they say they live here, so ``torch.save`` of a whole module finds them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NAMES", "torch_classes"]

#: the classes defined here, by name
NAMES = ("AntiTanh", "Quadratic", "Sin", "Gaussian", "ActivationModule")
_classes: dict[str, type] = {}


def torch_classes() -> dict[str, type]:
    """The torch twin classes by name (built once; imports torch)."""
    if _classes:
        return _classes
    import torch
    from torch import nn

    class AntiTanh(nn.Module):
        r""":math:`\log(2\cosh z) = |z| + \log(1 + e^{-2|z|})` (hessQuik's antiTanh)."""

        def forward(self, z):
            a = z.abs()
            return a + torch.log1p(torch.exp(-2.0 * a))

    class Quadratic(nn.Module):
        r""":math:`z^2 / 2`."""

        def forward(self, z):
            return 0.5 * z * z

    class Sin(nn.Module):
        r""":math:`\sin z`."""

        def forward(self, z):
            return torch.sin(z)

    class Gaussian(nn.Module):
        r""":math:`e^{-z^2}`."""

        def forward(self, z):
            return torch.exp(-(z * z))

    class ActivationModule(nn.Module):
        r"""A torch module evaluating a hessquik-core activation's own :math:`\sigma`.

        Parameters
        ----------
        act : Activation
            Evaluated as ``act(z, 0)[0]`` on the torch tensor ``z`` (its functions are
            handed torch's array namespace). ``from_torch`` gives ``act`` back.
        """

        def __init__(self, act):
            super().__init__()
            self.hessquik_activation = act

        def forward(self, z):
            return self.hessquik_activation(z, 0)[0]

        def extra_repr(self) -> str:
            return repr(self.hessquik_activation)

    for cls in (AntiTanh, Quadratic, Sin, Gaussian, ActivationModule):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        _classes[cls.__name__] = cls
    return _classes


def __getattr__(name: str) -> Any:
    if name in NAMES:
        return torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

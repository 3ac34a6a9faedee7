"""hessQuik's networks: torch ``nn.Module`` s computing through hessquik-core.

``NN(*blocks)`` (an ``nn.Sequential``), ``fullyConnectedNN``, ``resnetNN``
and ``ICNN`` take hessQuik's arguments and defaults (activation: softplus).
``NNPytorchAD`` and ``NNPytorchHessian`` differentiate a network's value with
``torch.autograd`` as an independent reference; like hessQuik's, they are
``nn.Module`` s and their outputs' gradients reach the wrapped network's
parameters. ``from_core(net)`` turns a hessquik-core network or layer into
the compat module with the same weights (and ``module.to_core()`` goes back).

The classes are created on first access, which imports torch; importing this
module does not.
"""

from __future__ import annotations

from ._torch import NETWORK_NAMES, torch_classes

__all__ = list(NETWORK_NAMES)


def __getattr__(name: str):
    if name in NETWORK_NAMES:
        return torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(NETWORK_NAMES))

"""hessQuik's layers: torch ``nn.Module`` s computing through hessquik-core.

``singleLayer``, ``resnetLayer``, ``ICNNLayer``, ``quadraticLayer`` and
``quadraticICNNLayer`` take hessQuik's constructor arguments and defaults
(``singleLayer(in_features, out_features, act=identityActivation(),
bias=True, device=None, dtype=None)``) and hold their weights as
``nn.Parameter`` s with hessQuik's names and shapes, in torch's default
dtype unless ``dtype=`` says otherwise. Gradients of anything a call returns
(value, gradient, Hessian, Laplacian) reach the parameters through autograd.

Initial values come from hessquik-core's initialiser (seeded from torch's
generator, so ``torch.manual_seed`` makes them reproducible); they differ
from hessQuik's: copy weights with ``load_state_dict`` (same keys).

The classes are created on first access, which imports torch; importing this
module does not.
"""

from __future__ import annotations

from ._torch import LAYER_NAMES, torch_classes

__all__ = list(LAYER_NAMES)


def __getattr__(name: str):
    if name in LAYER_NAMES or name == "_Block":
        return torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(LAYER_NAMES))

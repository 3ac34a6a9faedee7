"""hessQuik's names and calling convention on top of hessquik-core.

Replace the import lines of a hessQuik script,

.. code-block:: python

    import hessquik_core.compat.activations as act   # was: hessQuik.activations
    import hessquik_core.compat.layers as lay        # was: hessQuik.layers
    import hessquik_core.compat.networks as net      # was: hessQuik.networks
    from hessquik_core.compat import utils           # was: hessQuik.utils

and the rest runs as before: ``f(x, do_gradient=True, do_Hessian=True)``
returns the 3-tuple ``(f, df, d2f)`` with hessQuik's shapes, ``forward_mode``
and ``v`` follow hessQuik's conventions, and ``do_Laplacian=True`` puts the
Laplacian, shape ``(n, 1, m)``, in the third slot.

As in hessQuik, the layers and networks are ``torch.nn.Module`` s holding
``nn.Parameter`` s (``NN`` is an ``nn.Sequential``), so optimizers,
``state_dict()``, ``.to(device/dtype)``, ``train()/eval()`` and
``loss.backward()`` through any returned derivative work as they do there;
the derivatives themselves are computed by hessquik-core (torch backend).
``x`` may also be a NumPy, CuPy or any Array-API array (results in ``x``'s
library, without autograd). Calls with hessquik-core's own keywords
(``gradient=``, ``hessian=``, ``directions=`` ...) return a
:class:`~hessquik_core.Result`; ``module.to_core()`` and
``networks.from_core(core)`` convert to and from hessquik-core networks.

Importing this package does not import torch; the layer and network classes
import it when first used (and ``compat.utils`` when imported).
"""

from . import activations, layers, networks

__all__ = ["activations", "layers", "networks"]


def _register_file_names() -> None:
    """Files that name compat's classes (saved when they were hessquik-core modules) load as
    the hessquik-core classes computing the same function; compat's classes themselves are
    torch modules, saved through ``to_core()``."""
    from .. import networks as N  # importing it registers the network classes
    from ..layers import base as L

    for old, new in (
        ("NN", "NN"),
        ("fullyConnectedNN", "FullyConnectedNN"),
        ("resnetNN", "ResnetNN"),
        ("ICNN", "ICNN"),
    ):
        N.register_network_alias(f"compat.{old}", N.NETWORKS[new])
    for old, new in (
        ("singleLayer", "SingleLayer"),
        ("resnetLayer", "ResnetLayer"),
        ("ICNNLayer", "ICNNLayer"),
        ("quadraticLayer", "QuadraticLayer"),
        ("quadraticICNNLayer", "QuadraticICNNLayer"),
    ):
        L.register_layer_alias(f"compat.{old}", L.LAYERS[new])


_register_file_names()

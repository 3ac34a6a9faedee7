"""hessQuik's names and calling convention on top of hessquik-core.

Replace the import lines of a hessQuik script,

.. code-block:: python

    import hessquik_core.compat.activations as act   # was: hessQuik.activations
    import hessquik_core.compat.layers as lay        # was: hessQuik.layers
    import hessquik_core.compat.networks as net      # was: hessQuik.networks

and the rest runs as before: ``f(x, do_gradient=True, do_Hessian=True)``
returns the 3-tuple ``(f, df, d2f)`` with hessQuik's shapes, ``forward_mode``
and ``v`` follow hessQuik's conventions, and ``do_Laplacian=True`` puts the
Laplacian, shape ``(n, 1, m)``, in the third slot. Unlike hessQuik, ``x`` may
be a NumPy, CuPy, torch or any Array-API array; results come back in ``x``'s
library.

Every class here *is* the corresponding hessquik-core class (``compat.layers.
singleLayer`` subclasses :class:`hessquik_core.SingleLayer`, ``compat.networks.NN``
subclasses :class:`hessquik_core.NN`), so calls with hessquik-core's own keywords
(``gradient=``, ``hessian=``, ``directions=`` ...) return a
:class:`~hessquik_core.Result`, and :func:`hessquik_core.save` /
:func:`hessquik_core.load` keep the compat classes.

Importing this package does not import torch.
"""

from . import activations, layers, networks

__all__ = ["activations", "layers", "networks"]

"""The engine's routes: the ways one call can be computed.

Each route module states where it applies (from the request, the declared
structure of the layers and the backend's capabilities, never from a
layer's or a library's name) and runs the call. Today:
:mod:`.analytic_step` (a recorded training step as one custom-gradient
function with an analytic backward); the classic forward and backward
sweeps are :mod:`hessquik_core.engine.forward` and
:mod:`hessquik_core.engine.backward`, the high-dimensional ones
``hessquik_core.engine.highdim``.
"""

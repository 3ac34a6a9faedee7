"""What a network call returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MODES = ("auto", "forward", "backward")

#: the array fields of :class:`Result`, in order
FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal", "divergence")


#: an array of any supported library (NumPy, torch, CuPy, Array-API)
Array = Any


@dataclass
class Result:
    """What a network call returns; entries not requested are ``None``.

    Arrays are of ``x``'s library (NumPy, torch, CuPy, ...), in its dtype
    and on its device.

    Attributes
    ----------
    value : array
        ``(n, m)``, the network's output.
    gradient : array or None
        ``(n, d, m)``. With ``directions`` ``V``: ``(n, k, m)`` in forward
        mode (``V : (d, k)``), ``(n, d, k)`` in backward mode (``V : (m, k)``).
    hessian : array or None
        ``(n, d, d, m)``. With ``V``: ``(n, k, k, m)``, that is ``VᵀHV``, in
        forward mode; ``(n, d, d, k)`` in backward mode.
    laplacian : array or None
        ``(n, m)``.
    hessian_diagonal : array or None
        ``(n, d, m)``; with ``V`` in forward mode ``(n, k, m)``, the
        diagonal of ``VᵀHV``.
    divergence : array or None
        ``(n,)``, the trace of the Jacobian (networks with d = m).
    mode : {"forward", "backward"} or None
        The route actually taken.
    """

    # arrays of the caller's library: no common static type across NumPy,
    # torch, CuPy and the Array-API libraries, hence the alias of Any
    value: Array
    gradient: Array = None
    hessian: Array = None
    laplacian: Array = None
    hessian_diagonal: Array = None
    divergence: Array = None
    mode: Literal["forward", "backward"] | None = None

    def __iter__(self):
        # hessQuik-style unpacking: f, df, d2f = net(x, ...)
        return iter((self.value, self.gradient, self.hessian))

"""What a network call returns."""

from __future__ import annotations

from collections.abc import Iterator
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
    and on its device. For a single point ``x`` of shape ``(d,)`` every
    entry drops its leading batch axis (``value (m,)``, ``gradient (d, m)``,
    ``hessian (d, d, m)``, ..., ``divergence ()``).

    **Unpacking** yields exactly the requested quantities, never a
    ``None``: the value first, then, of those asked for, gradient, hessian,
    laplacian, hessian_diagonal, divergence, in this fixed order (the order
    of the attributes below). So ``f, g = net(x, gradient=True)``,
    ``f, g, L = net(x, gradient=True, laplacian=True)`` and hessQuik's
    ``f, df, d2f = net(x, gradient=True, hessian=True)`` all mean what they
    say; unpacking into more or fewer names than were requested raises
    Python's ``ValueError`` (``not enough values to unpack``) instead of
    handing out ``None`` or the wrong quantity. Attribute access
    (``res.laplacian``) is always unambiguous.

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

    def __iter__(self) -> Iterator[Array]:
        # the requested quantities only, in FIELDS order: a slot never holds
        # None or a quantity other than the one its position stands for
        # among those asked for (entries not requested are None; the value
        # is always computed)
        return iter(tuple(getattr(self, f) for f in FIELDS if f == "value" or getattr(self, f) is not None))

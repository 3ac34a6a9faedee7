"""What a network call returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("auto", "forward", "backward")

#: the array fields of :class:`Result`, in order
FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal", "divergence")


@dataclass
class Result:
    """What a network call returns; entries not requested are ``None``.

    Attributes
    ----------
    value : (n, m)
    gradient : (n, d, m); forward mode with ``V : (d, k)`` gives (n, k, m),
        backward mode with ``V : (m, k)`` gives (n, d, k)
    hessian : (n, d, d, m); (n, k, k, m) = VᵀHV forward; (n, d, d, k) backward
    laplacian : (n, m)
    hessian_diagonal : (n, d, m) (or (n, k, m): the diagonal of VᵀHV)
    divergence : (n,), trace of the Jacobian (d = m)
    mode : ``"forward"`` or ``"backward"``, the route actually taken
    """

    value: Any
    gradient: Any = None
    hessian: Any = None
    laplacian: Any = None
    hessian_diagonal: Any = None
    divergence: Any = None
    mode: str | None = None

    def __iter__(self):
        # hessQuik-style unpacking: f, df, d2f = net(x, ...)
        return iter((self.value, self.gradient, self.hessian))

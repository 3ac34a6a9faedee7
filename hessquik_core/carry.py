r"""Typed state carried between layers by the two sweeps.

Shapes (batch axis ``n`` first; a leading ``1`` where an array is shared by
the whole batch, e.g. the seed of the first layer): a layer maps features
``u : (n, p)`` to ``f : (n, q)``; ``k`` is the number of tangent directions
(forward) or output directions (backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Tangents:
    r"""Forward-mode carry: derivatives of the current features with respect
    to the network input, along ``k`` directions.

    Attributes
    ----------
    jacobian : (n | 1, k, p)
        :math:`\partial u/\partial x` (its rows are tangents).
    hessian : (n, k, k, p), packed (n, k(k+1)/2, p), or None
        :math:`\partial^2 u/\partial x^2`; ``None`` while it is zero (the
        network input) or not requested.
    diagonal : (n, k, p) or None
        The diagonal of ``hessian`` over its two ``k`` axes.
    laplacian : (n, p) or None
        Its trace, the Laplacian of every feature.
    """

    jacobian: Any
    hessian: Any = None
    diagonal: Any = None
    laplacian: Any = None


@dataclass(slots=True)
class Adjoints:
    r"""Backward-mode carry: derivatives of ``k`` output combinations ``g``
    with respect to the current features ``f``.

    Attributes
    ----------
    gradient : (n | 1, k, q)
        :math:`\partial g/\partial f`.
    hessian : (n, k, q, q) or None
        :math:`\partial^2 g/\partial f^2`; ``None`` while it is zero (the
        network output) or not requested.
    """

    gradient: Any
    hessian: Any = None


@dataclass(frozen=True, slots=True)
class Packing:
    """The upper triangle ``i <= j`` of a symmetric ``(k, k)`` block, as index
    arrays in the call's namespace: the forward Hessian is carried as
    ``(n, k(k+1)/2, p)`` with entry ``t`` holding ``(rows[t], cols[t])``."""

    rows: Any
    cols: Any


@dataclass(frozen=True, slots=True)
class Request:
    """Which second-order objects a forward sweep must produce."""

    hessian: bool = False
    diagonal: bool = False
    laplacian: bool = False
    #: the triangle layout of a packed Hessian, or ``None`` for ``(n, k, k, p)``
    packing: Packing | None = None

    @property
    def any(self) -> bool:
        return self.hessian or self.diagonal or self.laplacian


__all__ = ["Adjoints", "Packing", "Request", "Tangents"]

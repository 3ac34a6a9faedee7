"""Array-library backends.

The chain-rule engine is written once against the Python Array API standard.
What the standard lacks is supplied here, one small module per library, all
with the same function names (the opt_einsum / einops pattern):

``mm(a, b, *, xp)``
    Contract the last axis of ``a`` with the first axis of the matrix ``b``,
    as one GEMM over all leading axes.
``addmm(c, a, b, *, xp)``
    ``c + mm(a, b)``; torch fuses the sum into the GEMM (``beta = 1``).
``addcmul(acc, a, b, *, xp)``
    ``acc + a * b``; mutable libraries write into ``acc``, which must be a
    temporary the engine owns (never a caller's array or a parameter).
``sum_squares(a, *, axis, xp)``
    ``Σ a²`` over one axis, without storing the squares where the library
    can (NumPy and torch ``vecdot``).
``einsum(subscripts, a, b, *, xp)``
    Two-operand Einstein summation (NumPy: cached contraction path).
``convert(a, *, xp, dtype, device)``
    Move an array of *any* supported library into this backend.
``to_numpy(a)``
    Host copy as a NumPy array (for persistence and conversions).
``synchronize(device)``
    Block until queued device work is done (for timing).

Modules are imported lazily: asking for the ``"torch"`` backend imports
torch, nothing else ever does.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKEND_NAMES = ("numpy", "torch", "cupy", "generic")

_MODULES = {
    "numpy": "hessquik_core.backends._numpy",
    "torch": "hessquik_core.backends._torch",
    "cupy": "hessquik_core.backends._cupy",
    "generic": "hessquik_core.backends._generic",
}


def get_backend(name: str) -> ModuleType:
    """Return the backend module called ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not one of ``"numpy"``, ``"torch"``, ``"cupy"``,
        ``"generic"``.
    """
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(
            f"unknown backend {name!r}: expected one of {', '.join(map(repr, BACKEND_NAMES))} or None"
        )
    return importlib.import_module(_MODULES[name])


__all__ = ["BACKEND_NAMES", "get_backend"]

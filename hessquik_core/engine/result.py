"""What a network call returns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

MODES = ("auto", "forward", "backward")

#: the array fields of :class:`Result`, in order
FIELDS = (
    "value",
    "gradient",
    "hessian",
    "laplacian",
    "hessian_diagonal",
    "divergence",
    "biharmonic",
    "third_derivative",
    "fourth_derivative",
)


#: an array of any supported library (NumPy, torch, CuPy, Array-API)
Array = Any


@dataclass
class Result:
    r"""What a network call returns; entries not requested are ``None``.

    Arrays are of ``x``'s library (NumPy, torch, CuPy, ...), in its dtype
    and on its device. For a single point ``x`` of shape ``(d,)`` every
    entry drops its leading batch axis (``value (m,)``, ``gradient (d, m)``,
    ``hessian (d, d, m)``, ..., ``divergence ()``). For ``x`` with extra
    leading batch axes ``(n1, ..., nk, d)`` (a grid ``(nx, ny, d)``) every
    entry has them in place of ``n``: ``value (n1, ..., nk, m)``,
    ``gradient (n1, ..., nk, d, m)``, ``hessian (n1, ..., nk, d, d, m)``,
    ``laplacian (n1, ..., nk, m)``, ``hessian_diagonal (n1, ..., nk, d, m)``,
    ``divergence (n1, ..., nk)``.

    **Unpacking** yields exactly the requested quantities, never a
    ``None``: the value first, then, of those asked for, gradient, hessian,
    laplacian, hessian_diagonal, divergence, biharmonic, third_derivative,
    fourth_derivative, in this fixed order
    (the order of the attributes below). So ``f, g = net(x, gradient=True)``,
    ``f, g, L = net(x, gradient=True, laplacian=True)`` and hessQuik's
    ``f, df, d2f = net(x, gradient=True, hessian=True)`` all mean what they
    say; unpacking into more or fewer names than were requested raises
    Python's ``ValueError`` (``not enough values to unpack``) instead of
    handing out ``None`` or the wrong quantity. Attribute access
    (``res.laplacian``) is always unambiguous.

    **Inspecting.** ``print(res)`` lists the requested fields with their
    shapes and dtype, the library and the device (never the arrays);
    ``res[i]``, ``res[a:b]``, ``res[mask]`` or ``res[indices]`` is the result
    at those points (every field indexed on its batch axis, as a call on
    ``x[i]`` would return it) and ``len(res)`` is ``n``.

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
    biharmonic : array or None
        ``(n, m)``, the bi-Laplacian Δ²u = Σᵢⱼ ∂ᵢ²∂ⱼ²u
        (``net(x, biharmonic=True)``).
    third_derivative, fourth_derivative : array or None
        ``(n, k, m)`` with ``directions`` ``V : (d, k)``: column ``c`` holds
        :math:`\partial^3 u[v_c, v_c, v_c]` (resp. :math:`\partial^4 u[v_c, \dots, v_c]`),
        the entries ``2`` and ``3`` of ``hq.taylor_derivatives(net, x, V, 4)``
        (``net(x, third_derivative=True, directions=V)``).
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
    biharmonic: Array = None
    third_derivative: Array = None
    fourth_derivative: Array = None
    mode: Literal["forward", "backward"] | None = None

    def __repr__(self) -> str:
        """One line per requested field: its shape and dtype, then the library and
        device; the arrays themselves are not printed (``res.value`` shows one)."""
        parts = []
        lib = device = None
        for name in FIELDS:
            a = getattr(self, name)
            if a is None:
                continue
            parts.append(f"    {name}: {tuple(a.shape)} {_dtype_name(a.dtype)}")
            if lib is None:
                lib = type(a).__module__.split(".")[0]
                device = _device_name(a)
        where = f", {lib} on {device}" if lib is not None else ""
        head = f"Result(mode={self.mode!r}{where}"
        return head + (")" if not parts else ",\n" + ",\n".join(parts) + "\n)")

    def __getitem__(self, index: Any) -> Result:
        """The result at the points ``index`` selects (an integer, a slice, an
        index or boolean array over the batch axis): every field indexed on its
        first axis, as ``net(x[index], ...)`` would return it (an integer drops the
        batch axis, like a call on a single point ``(d,)``)."""
        if isinstance(index, tuple):
            raise TypeError(
                "a Result is indexed by points only (res[i], res[a:b], res[mask]); "
                f"index the fields for more, e.g. res.gradient[i, j], got the tuple {index!r}"
            )
        if self.value is not None and getattr(self.value, "ndim", 0) < 2:
            raise TypeError("this Result has no batch axis (a call on a single point); index its fields")
        fields = {name: (None if (a := getattr(self, name)) is None else a[index, ...]) for name in FIELDS}
        return Result(**fields, mode=self.mode)

    def __len__(self) -> int:
        """The number of points ``n`` (the batch axis of ``value``)."""
        if self.value is None or getattr(self.value, "ndim", 0) < 2:
            raise TypeError("this Result has no batch axis (a call on a single point)")
        return int(self.value.shape[0])

    def __bool__(self) -> bool:
        # a Result is always truthy (as before __len__ existed): `if res:` never
        # depends on the batch size, nor raises for a single point
        return True

    def __iter__(self) -> Iterator[Array]:
        # the requested quantities only, in FIELDS order: a slot never holds
        # None or a quantity other than the one its position stands for
        # among those asked for (entries not requested are None; the value
        # is always computed)
        return iter(tuple(getattr(self, f) for f in FIELDS if f == "value" or getattr(self, f) is not None))


def _dtype_name(dt: Any) -> str:
    return str(dt).rsplit(".", 1)[-1]


def _device_name(a: Any) -> str:
    device = getattr(a, "device", None)
    return "cpu" if device is None or callable(device) else str(device)

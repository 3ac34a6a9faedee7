r"""Symmetric linear operators on :math:`\mathbb{R}^P` in one array library.

:class:`LinearOperatorBase` (products, quadratic forms, dense assembly in
column blocks, SciPy interop, host round trips for NumPy arguments),
:class:`DenseOperator` and :func:`aslinearoperator`. The curvature matrices
of a training loss are :class:`~hessquik_core.curvature.CurvatureOperator`
instances; the spectral methods (:mod:`hessquik_core.curvature.spectra`) and
the approximations (:mod:`hessquik_core.curvature.approx`) take any operator.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

from .._array import _dtype_name, as_plain_array, namespace_of
from .._progress import progress_bar
from ..backends import backend_for

__all__ = ["DenseOperator", "LinearOperatorBase", "aslinearoperator"]


def _check_batch_size(batch_size, n):
    if batch_size is None:
        return n
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return int(batch_size)


def _same_library(xp_a, xp_b) -> bool:
    # array_namespace gives one namespace object per library (array_api_compat.numpy,
    # array_api_compat.torch, array_api_strict, jax.numpy, ...)
    return getattr(xp_a, "__name__", xp_a) == getattr(xp_b, "__name__", xp_b)


def _lib_name(xp) -> str:
    return str(backend_for(xp).library or getattr(xp, "__name__", xp))


class LinearOperatorBase:
    """A symmetric linear operator on :math:`\\mathbb{R}^P`, applied to arrays of one library.

    Subclasses implement ``_matmat(V : (P, k)) -> (P, k)`` on arrays of the
    operator's library. ``A @ V``, :meth:`matvec` and :meth:`matmat` accept
    those arrays, and NumPy arrays too: an operator of another library
    (torch, CuPy, ...) converts a NumPy argument in and returns a NumPy
    result. So SciPy works with every operator, e.g.
    ``scipy.sparse.linalg.eigsh(op, k)`` or
    ``scipy.sparse.linalg.LinearOperator(op.shape, matvec=op.matvec, dtype=op.dtype)``
    (:meth:`to_scipy` builds that).

    Parameters
    ----------
    size : int
        ``P``.
    xp : module
        Array-API namespace of the arrays the operator works on.
    dtype : dtype
        Their dtype, given in ``xp``'s or NumPy's spelling (``torch.float64``
        or ``numpy.float64``).
    device : device
        Their device.

    Attributes
    ----------
    xp : module
        The operator's array namespace.
    array_dtype : dtype
        The dtype of the arrays it accepts and returns, in ``xp``'s
        spelling (``torch.float64`` for a torch operator).
    device : device
        The device of those arrays.
    """

    def __init__(self, size: int, xp: Any, dtype: Any, device: Any) -> None:
        self.size = int(size)
        self.xp, self.device = xp, device
        self._be = backend_for(xp)
        if isinstance(dtype, np.dtype):
            dtype = self._be.dtype(dtype.name)  # the library's own dtype object, by name
            if isinstance(dtype, type) and issubclass(dtype, np.generic):
                dtype = np.dtype(dtype)
        self.array_dtype = dtype

    @property
    def dtype(self) -> np.dtype:
        """The entries' dtype as a :class:`numpy.dtype` (what SciPy expects); see ``array_dtype``."""
        try:
            return np.dtype(self.array_dtype)
        except TypeError:  # torch.float64 & co.: by name
            return np.dtype(_dtype_name(self.array_dtype))

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``."""
        return (self.size, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.size}, dtype={self.array_dtype})"

    # -- application -------------------------------------------------------
    def _operand(self, v, what: str = "v") -> tuple[Any, bool]:
        """``v`` as an array this operator takes, and whether it came from the host.

        Arrays of the operator's library must have its dtype and device (no silent
        conversion: a float64 ``v`` on a float32 operator would return float64, a float32 one
        on a float64 torch operator fail inside torch). A NumPy array given to an operator of
        another library (SciPy's eigensolvers do this) is converted in, after the same dtype
        check, and the result goes back to NumPy (``host`` is True).
        """
        v = as_plain_array(v, what)
        lib = _lib_name(self.xp)
        alt = "" if self._be.interchange else " or a NumPy array"
        if isinstance(v, (list, tuple)) or not hasattr(v, "shape") or not hasattr(v, "ndim"):
            raise TypeError(
                f"{what} must be an array of the operator's library ({lib}, dtype {self.array_dtype})"
                f"{alt}, got {type(v).__name__}"
            )
        # NumPy (the interchange format) given to an operator of another library
        host = isinstance(v, np.ndarray) and not self._be.interchange
        if host:
            if v.dtype != self.dtype:
                raise TypeError(
                    f"{what} must have the operator's dtype {self.dtype}, got {v.dtype}; convert it "
                    f"first (the operator follows the dtype of x)"
                )
            return self.asarray(v), True
        if not _same_library(namespace_of(v, what), self.xp):
            raise TypeError(
                f"{what} must be an array of the operator's library ({lib}){alt}, got "
                f"{type(v).__module__}.{type(v).__name__}"
            )
        if v.dtype != self.array_dtype:
            raise TypeError(
                f"{what} must have the operator's dtype {self.array_dtype}, got {v.dtype}; convert it "
                f"first (the operator follows the dtype of x)"
            )
        if str(aac.device(v)) != str(self.device):
            raise ValueError(f"{what} is on device {aac.device(v)}, the operator on {self.device}")
        return v, False

    def matmat(self, V: Any) -> Any:
        """``A @ V``.

        Parameters
        ----------
        V : array of shape (P, k)
            In the operator's library, dtype and device, or NumPy (then the result is NumPy);
            ``k = 0`` gives an empty ``(P, 0)`` result.

        Returns
        -------
        array of shape (P, k)
        """
        V, host = self._operand(V, "V")
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(f"V must have shape ({self.size}, k), got {tuple(V.shape)}")
        if V.shape[1] == 0:
            out = self.xp.zeros((self.size, 0), dtype=self.array_dtype, device=self.device)
        else:
            out = self._matmat(V)
        return self.to_numpy(out) if host else out

    def matvec(self, v: Any) -> Any:
        """``A @ v``.

        Parameters
        ----------
        v : array of shape (P,)
            In the operator's library, or NumPy (then the result is NumPy).
            SciPy's ``(P, 1)`` column vectors are accepted too.

        Returns
        -------
        array of shape (P,) (or (P, 1) for a column)
        """
        v, host = self._operand(v)
        if v.ndim == 2 and tuple(v.shape) == (self.size, 1):
            out = self._matmat(v)
        elif v.ndim != 1 or v.shape[0] != self.size:
            raise ValueError(f"v must have shape ({self.size},), got {tuple(v.shape)}")
        else:
            out = self._matmat(v[:, None])[:, 0]
        return self.to_numpy(out) if host else out

    # SciPy's LinearOperator protocol: the operator is symmetric
    rmatvec = matvec
    rmatmat = matmat

    def __matmul__(self, V: Any) -> Any:
        if not hasattr(V, "ndim"):
            self._operand(V)  # raises the TypeError that says what is expected
        return self.matvec(V) if V.ndim == 1 else self.matmat(V)

    def quadratic_form(self, v: Any) -> Any:
        r""":math:`v^\top A v`.

        Parameters
        ----------
        v : array of shape (P,) or (P, k)
            In the operator's library, dtype and device.

        Returns
        -------
        array
            0-d for ``(P,)``; ``(k,)``, one form per column, for ``(P, k)``.
        """
        v, host = self._operand(v)
        one = v.ndim == 1
        V = v[:, None] if one else v
        out = self.xp.sum(V * self.matmat(V), axis=0)
        out = out[0] if one else out
        return self.to_numpy(out) if host else out

    def _matmat(self, V):  # pragma: no cover - abstract
        raise NotImplementedError

    def _default_block(self) -> int:
        return min(self.size, 64)

    def to_dense(self, *, block_size: int | None = None, progress: bool | None = None) -> Any:
        """The ``(P, P)`` matrix, assembled from products with blocks of unit vectors.

        Parameters
        ----------
        block_size : int, optional
            Columns per product (default: the operator's own block size).
        progress : bool, optional
            Progress bar over the blocks (tqdm); default: only when
            interactive, see :func:`hessian`.

        Returns
        -------
        array of shape (P, P)
            In the operator's library.
        """
        xp, P = self.xp, self.size
        bs = self._default_block() if block_size is None else _check_batch_size(block_size, P)
        cols = []
        with progress_bar(progress, total=-(-P // bs), desc="dense matrix", unit="block") as bar:
            for j in range(0, P, bs):
                k = min(bs, P - j)
                E = xp.eye(P, k, k=-j, dtype=self.array_dtype, device=self.device)
                cols.append(self._matmat(E))
                bar.update()
        return cols[0] if len(cols) == 1 else xp.concat(cols, axis=1)

    # -- host helpers (spectra) --------------------------------------------
    def asarray(self, a: Any) -> Any:
        """A NumPy array (or nested list) as an array the operator accepts.

        Parameters
        ----------
        a : array_like
            Host data.

        Returns
        -------
        array
            Same shape, in the operator's library, dtype and device.
        """
        return self._be.convert(np.asarray(a), xp=self.xp, dtype=self.array_dtype, device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        """An array of the operator's library as a NumPy array.

        Parameters
        ----------
        a : array
            In the operator's library.

        Returns
        -------
        numpy.ndarray
            Same shape (a host copy for device arrays).
        """
        return np.asarray(self._be.to_numpy(a))

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` acting on NumPy arrays (host round trips).

        Returns
        -------
        scipy.sparse.linalg.LinearOperator
            Shape ``(P, P)``, :attr:`dtype`; symmetric, so ``rmatvec`` is ``matvec``.
        """
        from scipy.sparse.linalg import LinearOperator

        def mm(V):
            V = np.asarray(V)
            one = V.ndim == 1
            out = self.to_numpy(self._matmat(self.asarray(V[:, None] if one else V)))
            return out[:, 0] if one else out

        return LinearOperator(
            self.shape,
            matvec=mm,
            matmat=mm,
            rmatvec=mm,
            rmatmat=mm,
            dtype=self.dtype,
        )


class DenseOperator(LinearOperatorBase):
    """A dense symmetric matrix as an operator.

    Parameters
    ----------
    A : array of shape (P, P)
        Symmetric (not checked), any array library.
    """

    def __init__(self, A: Any) -> None:
        A = as_plain_array(A, "A")
        xp = namespace_of(A, "A")
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
        super().__init__(A.shape[0], xp, A.dtype, aac.device(A))
        self.A = A

    def _matmat(self, V):
        return self.A @ V

    def to_dense(self, *, block_size: int | None = None, progress: bool | None = None) -> Any:
        return self.A


def aslinearoperator(A: Any) -> LinearOperatorBase:
    """An operator from an operator (returned as is) or a dense symmetric matrix.

    Parameters
    ----------
    A : LinearOperatorBase or array of shape (P, P)

    Returns
    -------
    LinearOperatorBase
        ``A`` itself, or a :class:`DenseOperator` wrapping the matrix.
    """
    if isinstance(A, LinearOperatorBase):
        return A
    return DenseOperator(A)

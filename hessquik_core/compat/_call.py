"""hessQuik's calling convention, translated to hessquik-core calls."""

from __future__ import annotations

import numpy as np

from ..backends import BACKEND_NAMES

_AUTO = object()  # forward_mode not given: hessQuik's rule, forward iff d < m
_FLOAT_NAMES = ("float16", "float32", "float64")


def _flag(name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def storage_dtype(dtype) -> np.dtype:
    """hessQuik's ``dtype=`` (torch, NumPy or a name; ``None`` = float64) as a NumPy dtype."""
    if dtype is None:
        return np.dtype(np.float64)
    name = (
        dtype
        if isinstance(dtype, str)
        else (
            np.dtype(dtype).name if isinstance(dtype, type) and issubclass(dtype, np.generic) else str(dtype)
        )
    )
    name = name.split(".")[-1]
    if name not in _FLOAT_NAMES:
        raise TypeError(f"dtype must be a floating dtype (float16, float32 or float64), got {dtype!r}")
    return np.dtype(name)


def place(module, device, dtype) -> None:
    """hessQuik's ``device=`` argument: a device other than the CPU keeps the
    parameters as torch tensors there (this imports torch)."""
    if device is not None and str(device) != "cpu":
        module.to("torch", device=device, dtype=None if dtype is None else storage_dtype(dtype).name)


class HessQuikCallMixin:
    """``f(x, do_gradient=..., do_Hessian=..., do_Laplacian=..., forward_mode=..., v=...)``.

    Put before the hessquik-core class in the bases; calls that use
    hessquik-core's own keywords are passed through unchanged.
    """

    def dim_input(self) -> int:
        """Number of input features (hessQuik's name)."""
        return self.in_features

    def dim_output(self) -> int:
        """Number of output features (hessQuik's name)."""
        return self.out_features

    def __call__(
        self,
        x,
        do_gradient=False,
        do_Hessian=False,
        do_Laplacian=False,
        dudx=None,
        d2ud2x=None,
        v=None,
        *,
        forward_mode=_AUTO,
        **kwargs,
    ):
        r"""hessQuik convention, returning ``(f, df, d2f)``.

        Parameters
        ----------
        x : array (n, d)
            NumPy, CuPy, torch or any Array-API array.
        do_gradient, do_Hessian, do_Laplacian : bool
            As in hessQuik. ``df`` is returned whenever any derivative is
            requested; the third entry is the Hessian ``(n, d, d, m)`` if
            ``do_Hessian``, else the Laplacian ``(n, 1, m)`` if
            ``do_Laplacian``, else ``None``.
        forward_mode : bool, optional
            ``True`` forward, ``False`` backward; omitted: forward iff
            ``d < m``. A Laplacian without the Hessian is always computed in
            forward mode (as in hessQuik).
        v : array, optional
            Directions. Forward mode: ``(k, d)``, one direction per *row*,
            giving ``df (n, k, m)`` and ``d2f (n, k, k, m)``; backward mode:
            ``(m, k)``, giving ``df (n, d, k)`` and ``d2f (n, d, d, k)``.
        **kwargs
            hessquik-core keywords (``gradient``, ``hessian``, ...): the call
            is then an ordinary hessquik-core call returning a ``Result``.
        """
        core_call = super().__call__  # the hessquik-core class after this mixin
        hq_used = (
            do_gradient is not False
            or do_Hessian is not False
            or do_Laplacian is not False
            or dudx is not None
            or d2ud2x is not None
            or v is not None
            or forward_mode is not _AUTO
        )
        if kwargs:
            if hq_used:
                raise TypeError(
                    f"cannot mix hessQuik keywords (do_gradient, do_Hessian, do_Laplacian, "
                    f"forward_mode, v) with hessquik-core keywords {sorted(kwargs)}"
                )
            return core_call(x, **kwargs)
        do_gradient = _flag("do_gradient", do_gradient)
        do_Hessian = _flag("do_Hessian", do_Hessian)
        do_Laplacian = _flag("do_Laplacian", do_Laplacian)
        if dudx is not None or d2ud2x is not None:
            raise ValueError(
                "dudx / d2ud2x (derivatives of a preceding block, hessQuik's layer-to-layer protocol) are "
                "not supported: compose the blocks with compat.networks.NN(...) instead"
            )
        if forward_mode is None:
            raise ValueError(
                "forward_mode=None (hessQuik's deferred backward pass with a later .backward() "
                "call) is not supported: use forward_mode=False, which returns the derivatives"
            )
        if forward_mode is not _AUTO:
            forward_mode = _flag("forward_mode", forward_mode)
        d, m = self.in_features, self.out_features
        derivs = do_gradient or do_Hessian or do_Laplacian
        if do_Laplacian and not do_Hessian:
            forward = True
        elif forward_mode is _AUTO:
            forward = d < m
        else:
            forward = forward_mode
        V = None
        if v is not None and derivs:
            shape = tuple(getattr(v, "shape", ()))
            if len(shape) != 2:
                raise ValueError(f"v must be a matrix, got shape {shape}")
            if forward:
                if shape[1] != d:
                    raise ValueError(
                        f"in forward mode v must have shape (k, {d}), one direction per row "
                        f"(hessQuik's convention), got {shape}"
                    )
                V = v.T
            else:
                if shape[0] != m:
                    raise ValueError(f"in backward mode v must have shape ({m}, k), got {shape}")
                V = v
        res = core_call(
            x,
            gradient=derivs,
            hessian=do_Hessian,
            laplacian=do_Laplacian and not do_Hessian,
            directions=V,
            mode="forward" if forward or not derivs else "backward",
        )
        third = None
        if do_Hessian:
            third = res.hessian
        elif do_Laplacian:
            from array_api_compat import array_namespace

            third = array_namespace(res.laplacian).expand_dims(res.laplacian, axis=1)
        return res.value, (res.gradient if derivs else None), third

    def to(self, *args, **kwargs):
        """hessquik-core's ``to(backend, device=, dtype=)``; also torch's
        ``to(device)`` / ``to(dtype)`` / ``to(device, dtype)``, which keep
        the parameters as torch tensors."""
        if not args or (isinstance(args[0], str) and args[0] in BACKEND_NAMES):
            return super().to(*args, **kwargs)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        for a in args:
            try:
                dtype = storage_dtype(a).name
            except TypeError:
                device = a
        return super().to("torch", device=device, dtype=dtype, **kwargs)

"""hessQuik's calling convention, translated to one hessquik-core call."""

from __future__ import annotations

import numpy as np

AUTO = object()  # forward_mode not given: the network rule, forward iff d < m


def _flag(name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def hessquik_call(
    core,
    x,
    *,
    d: int,
    m: int,
    do_gradient=False,
    do_Hessian=False,
    do_Laplacian=False,
    dudx=None,
    d2ud2x=None,
    v=None,
    forward_mode=AUTO,
    default_forward: bool | None = None,
    kwargs=None,
):
    r"""``core(x, ...)`` in hessQuik's convention, returning ``(f, df, d2f)``.

    ``df`` is returned whenever a derivative is requested; the third entry is
    the Hessian ``(n, d, d, m)`` if ``do_Hessian``, else the Laplacian
    ``(n, 1, m)`` if ``do_Laplacian``, else ``None``. Directions ``v`` are
    ``(k, d)`` (one per row) in forward mode and ``(m, k)`` in backward mode,
    as in hessQuik. ``forward_mode`` not given means ``default_forward``
    (hessQuik's layers: ``True``), or, if that is ``None``, forward iff
    ``d < m`` (hessQuik's networks). With hessquik-core keywords in ``kwargs``
    the call is an ordinary hessquik-core call returning a
    :class:`~hessquik_core.Result`.
    """
    kwargs = kwargs or {}
    hq_used = (
        do_gradient is not False
        or do_Hessian is not False
        or do_Laplacian is not False
        or dudx is not None
        or d2ud2x is not None
        or v is not None
        or forward_mode is not AUTO
    )
    if kwargs:
        if hq_used:
            raise TypeError(
                f"cannot mix hessQuik keywords (do_gradient, do_Hessian, do_Laplacian, "
                f"forward_mode, v) with hessquik-core keywords {sorted(kwargs)}"
            )
        return core(x, **kwargs)
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
    if forward_mode is not AUTO:
        forward_mode = _flag("forward_mode", forward_mode)
    derivs = do_gradient or do_Hessian or do_Laplacian
    if do_Laplacian and not do_Hessian:
        forward = True  # hessQuik computes a Laplacian alone in forward mode
    elif forward_mode is AUTO:
        forward = d < m if default_forward is None else default_forward
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
            V = v.T  # hessquik-core takes directions as columns, (d, k)
        else:
            if shape[0] != m:
                raise ValueError(f"in backward mode v must have shape ({m}, k), got {shape}")
            V = v
    res = core(
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

"""Generic backend: only functions of the Array API standard.

Works for any conforming library (array-api-strict, JAX, ...), bound to the
call's namespace. There is no ``einsum`` in the standard, so two-operand
contractions are planned once in pure Python (cached) and executed as
permute_dims + reshape + matmul.
"""

from __future__ import annotations

from functools import lru_cache
from math import prod

import array_api_compat as aac
import numpy as np

from .base import Backend


@lru_cache(maxsize=256)
def _plan(subscripts: str, ndim_a: int, ndim_b: int):
    ins, out = subscripts.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    if len(sa) != ndim_a or len(sb) != ndim_b:
        raise ValueError(f"einsum {subscripts!r} does not match operands of ndim {ndim_a}, {ndim_b}")
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb):
        raise ValueError(f"einsum {subscripts!r}: repeated index within one operand is not supported")
    batch = [c for c in out if c in sa and c in sb]
    left = [c for c in out if c in sa and c not in sb]
    right = [c for c in out if c in sb and c not in sa]
    contr = [c for c in sa if c in sb and c not in out]
    sum_a = tuple(i for i, c in enumerate(sa) if c not in sb and c not in out)
    sum_b = tuple(i for i, c in enumerate(sb) if c not in sa and c not in out)
    sa_r = [c for c in sa if c in sb or c in out]
    sb_r = [c for c in sb if c in sa or c in out]
    perm_a = tuple(sa_r.index(c) for c in batch + left + contr)
    perm_b = tuple(sb_r.index(c) for c in batch + contr + right)
    mid = batch + left + right
    perm_out = tuple(mid.index(c) for c in out)
    return sum_a, sum_b, sa_r, sb_r, batch, left, right, contr, perm_a, perm_b, perm_out


class GenericBackend(Backend):
    """Any Array-API namespace, standard functions only; treated as immutable."""

    name = "generic"
    library = None
    mutable = False
    host_storage = True

    @property
    def fuses(self) -> bool:
        # JAX arrays (traced or not) run through XLA, which fuses element-wise chains
        return self.xp is not None and aac.is_jax_namespace(self.xp)

    def available_memory(self, device) -> int:
        # the library's own backend knows its devices (torch on CUDA under backend="generic")
        from . import backend_for

        native = backend_for(self.xp) if self.xp is not None else self
        return native.available_memory(device) if native is not self else super().available_memory(device)

    def host_resident(self, device) -> bool:
        from . import backend_for

        native = backend_for(self.xp) if self.xp is not None else self
        if native is not self:  # torch or CuPy arrays under backend="generic"
            return native.host_resident(device)
        # JAX names its accelerators cuda:0 / gpu:0 / TpuDevice(...)
        dev = str(device).lower()
        return not any(k in dev for k in ("cuda", "gpu", "tpu"))

    def writable(self, a) -> bool:
        # immutable as far as the engine's own temporaries go, but results may be
        # assembled in place in any library except JAX, whose arrays cannot be written
        return not aac.is_jax_array(a)

    def mm(self, a, b, *, xp=None):
        """``a[..., p] @ b[p, q] -> [..., q]`` as a single 2-D matmul."""
        xp = self.xp if xp is None else xp
        lead = tuple(a.shape[:-1])
        out = xp.reshape(a, (prod(lead), a.shape[-1])) @ b
        return xp.reshape(out, (*lead, b.shape[-1]))

    def einsum(self, subscripts, a, b, *, xp=None):
        """Two-operand einsum from standard functions only."""
        xp = self.xp if xp is None else xp
        sum_a, sum_b, sa_r, sb_r, batch, left, right, contr, perm_a, perm_b, perm_out = _plan(
            subscripts, a.ndim, b.ndim
        )
        if sum_a:
            a = xp.sum(a, axis=sum_a)
        if sum_b:
            b = xp.sum(b, axis=sum_b)
        size = {}
        for s, arr in ((sa_r, a), (sb_r, b)):
            for c, n in zip(s, arr.shape):
                # broadcasting: a size-1 axis takes the other operand's size (0 included)
                size[c] = n if size.get(c, 1) == 1 else size[c]
        a = xp.permute_dims(a, perm_a)
        b = xp.permute_dims(b, perm_b)
        nb = len(batch)
        bshape = tuple(size[c] for c in batch)
        a = xp.broadcast_to(a, bshape + tuple(a.shape[nb:]))
        b = xp.broadcast_to(b, bshape + tuple(b.shape[nb:]))
        nl, nr, nc = (prod(size[c] for c in g) for g in (left, right, contr))
        a = xp.reshape(a, (*bshape, nl, nc))
        b = xp.reshape(b, (*bshape, nc, nr))
        out = xp.reshape(a @ b, tuple(size[c] for c in batch + left + right))
        return xp.permute_dims(out, perm_out)

    def erf(self, a, *, xp=None):
        xp = self.xp if xp is None else xp
        if getattr(xp, "__name__", "").startswith("jax"):  # JAX's own kernel (jit-friendly)
            import jax

            return jax.lax.erf(a)
        return super().erf(a, xp=xp)

    def erfc(self, a, *, xp=None):
        xp = self.xp if xp is None else xp
        if getattr(xp, "__name__", "").startswith("jax"):
            import jax

            return jax.lax.erfc(a)
        return super().erfc(a, xp=xp)

    def set_rows(self, buf, start: int, a):
        """In place where the library allows: item assignment (array-api-strict,
        NumPy, torch), or for JAX, whose arrays are immutable, a
        ``dynamic_update_slice`` that donates ``buf`` so XLA writes into its
        memory (under a trace the same update, planned by XLA)."""
        if not aac.is_jax_array(buf):
            return super().set_rows(buf, start, a)
        import jax

        if isinstance(buf, jax.core.Tracer) or isinstance(a, jax.core.Tracer):
            return jax.lax.dynamic_update_slice_in_dim(buf, a, start, axis=0)
        return _jax_set_rows()(buf, a, start)

    def convert(self, a, *, xp=None, dtype, device=None):
        """Convert any supported array to namespace ``xp`` with ``dtype`` on ``device``."""
        xp = self.xp if xp is None else xp
        if (
            not isinstance(a, np.ndarray)
            and getattr(a, "__array_namespace__", None) is not None
            and a.__array_namespace__() is xp
        ):
            # already in the call's library: stay there, so that tracers (jax.grad
            # with respect to parameters) are never forced through the host
            return xp.asarray(a, dtype=dtype, device=device)
        host = to_numpy(a)
        if not host.flags.writeable:
            # read-only home arrays: some libraries (torch) warn when wrapping them
            host = host.copy()
        return xp.asarray(host, dtype=dtype, device=device)

    def to_numpy(self, a):
        try:
            return np.asarray(a)
        except Exception:  # libraries that refuse __array__ but speak DLPack
            return np.from_dlpack(a)


@lru_cache(maxsize=1)
def _jax_set_rows():
    import jax

    # buf (argument 0) donated: the update reuses its buffer instead of copying it
    return jax.jit(
        lambda buf, a, start: jax.lax.dynamic_update_slice_in_dim(buf, a, start, axis=0), donate_argnums=0
    )


def to_numpy(a):
    """Host copy of ``a`` as a NumPy array (kept here for its old import path)."""
    from . import to_numpy as _to_numpy

    return _to_numpy(a)


BACKEND = GenericBackend()

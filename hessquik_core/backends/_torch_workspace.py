r"""Buffers for the stacked carries of torch training steps, kept between steps.

Why: one training step through :mod:`._torch_step` allocates three
``(1 + k + 1, n, p)`` stacks per layer (the GEMM output ``Z`` and the output
stack ``Y`` that the backward pass needs, and one adjoint). On the CPU, glibc
serves an allocation above its mmap threshold (at most 32 MiB) with fresh
pages from the kernel and returns them on free, so every such stack is
page-faulted and zeroed by the kernel again on every step — at d = 64,
n = 1024, width 64 that is a third of the step (367 ms against 244 ms with the
allocator told to keep its memory). XLA avoids it by planning one buffer arena
per compiled step; this module does the same for the eager step, without
changing the allocator of the process.

How a buffer is known to be free: the workspace owns a base tensor and lends
*views* of it. Every tensor that shares the base's storage — the lent view,
the views the sweep slices from it, the tensors autograd saved for the
backward pass, a result the caller keeps — holds a reference to the storage;
when the storage is referenced by the base alone, nobody can read or write
the memory any more and it is lent again. So a buffer is never reused while
a graph that saved it is alive (``retain_graph=True``, a loss not yet
differentiated) or while the caller holds a view of it.

Only CPU tensors are pooled (CUDA's caching allocator already reuses memory,
in stream order), only buffers of at least :data:`MIN_BYTES`, and a free
buffer not lent during the last :data:`KEEP_STEPS` steps is dropped, so a
change of batch size or width releases the old shapes.
:func:`hessquik_core.training.step_workspace` switches the pool off or
empties it (through :data:`~hessquik_core.backends.base.SWITCHES` and the
backend's ``release_workspace``).
"""

from __future__ import annotations

import math
import threading

import torch

from .base import SWITCHES

#: buffers smaller than this are left to the allocator (glibc reuses them without page faults)
MIN_BYTES = 1 << 20
#: a free buffer not lent during this many steps is released
KEEP_STEPS = 2

#: the private count of references to a storage; without it nothing is pooled
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _storage_refs(t: torch.Tensor) -> int:
    return int(_use_count(t.untyped_storage()._cdata))  # type: ignore[misc]


class Workspace:
    """A pool of CPU buffers lent as views (module docstring)."""

    def __init__(self) -> None:
        self.enabled = _use_count is not None
        #: enabled, and switched on by :func:`hessquik_core.training.step_workspace` (read per step)
        self.active = self.enabled
        self._lock = threading.Lock()
        # key (shape, dtype) -> [base, refs of the base alone, step last lent]
        self._bufs: dict[tuple, list[list]] = {}
        self._step = 0

    def new_step(self) -> None:
        """Count a step and release the free buffers that were not lent recently."""
        self.active = self.enabled and SWITCHES.step_workspace
        with self._lock:
            self._step += 1
            for key in list(self._bufs):
                keep = [e for e in self._bufs[key] if self._step - e[2] <= KEEP_STEPS or not self._free(e)]
                if keep:
                    self._bufs[key] = keep
                else:
                    del self._bufs[key]

    @staticmethod
    def _free(entry: list) -> bool:
        return _storage_refs(entry[0]) == entry[1]

    def empty(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device."""
        shape = tuple(int(s) for s in shape)
        if not self.active or like.device.type != "cpu" or math.prod(shape) * like.element_size() < MIN_BYTES:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        key = (shape, like.dtype)
        with self._lock:
            entries = self._bufs.setdefault(key, [])
            for e in entries:
                if self._free(e):
                    e[2] = self._step
                    return e[0].view(shape)
            base = torch.empty(shape, dtype=like.dtype, device=like.device)
            entry = [base, _storage_refs(base), self._step]
            entries.append(entry)
            return base.view(shape)

    def release(self) -> int:
        """Drop every buffer (views still in use keep their memory); returns the bytes held."""
        with self._lock:
            held = self._nbytes_locked()
            self._bufs.clear()
        return held

    def nbytes(self) -> int:
        """Bytes of memory the pool holds (free and lent)."""
        with self._lock:
            return self._nbytes_locked()

    def _nbytes_locked(self) -> int:
        return sum(e[0].numel() * e[0].element_size() for es in self._bufs.values() for e in es)


#: the process-wide pool of :mod:`._torch_step`
WORKSPACE = Workspace()

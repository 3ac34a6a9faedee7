"""PyTorch backend (CPU and CUDA). Imported only when torch is used."""

from __future__ import annotations

import array_api_compat as aac
import numpy as np
import torch

from . import _torch_step, _torch_workspace, to_numpy
from .base import Backend, strided_span

#: ``reduction`` names as the integers of torch's loss kernels (``torch._reduction.get_enum``)
_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}


class TorchBackend(Backend):
    """torch tensors: mutable, eager; CPU and CUDA; autograd flows through ``convert``."""

    name = "torch"
    library = "torch"
    mutable = True
    autograd = True

    def __init__(self, xp=None) -> None:
        super().__init__(aac.array_namespace(torch.empty(0)) if xp is None else xp)

    @classmethod
    def owns_namespace(cls, xp) -> bool:
        return aac.is_torch_namespace(xp)

    def cache_blocking(self, x, arrays) -> bool:
        """CPU tensors only (GPU kernels want big batches), and not while
        autograd records the call (one graph over the whole batch)."""
        if x.device.type != "cpu":
            return False
        if not torch.is_grad_enabled():
            return True
        return not (x.requires_grad or any(getattr(a, "requires_grad", False) for a in arrays))

    def available_memory(self, device) -> int:
        if str(device).startswith("cuda"):
            try:
                return int(torch.cuda.mem_get_info(device)[0])
            except Exception:  # pragma: no cover - driver quirks: fall back to host RAM
                pass
        return super().available_memory(device)

    def memory_span(self, a):
        try:
            start, item = a.data_ptr(), a.element_size()
            strides = [st * item for st in a.stride()]  # torch strides count elements
        except (AttributeError, TypeError, RuntimeError):
            return None
        return strided_span(start, item, a.shape, strides)

    def records_autograd(self, arrays) -> bool:
        return torch.is_grad_enabled() and any(getattr(a, "requires_grad", False) for a in arrays)

    def host_resident(self, device) -> bool:
        return device is None or torch.device(device).type == "cpu"

    def as_device(self, obj):
        if isinstance(obj, torch.device):
            return obj
        if not isinstance(obj, str):
            return None
        try:
            return torch.device(obj)
        except RuntimeError as err:
            raise ValueError(f"invalid device {obj!r}: {err}") from None

    def is_model(self, obj) -> bool:
        return isinstance(obj, torch.nn.Module)

    def autograd_enabled(self) -> bool:
        return torch.is_grad_enabled()

    def is_tracing(self) -> bool:
        """``torch.compile`` traces (Inductor fuses the generic sweep), or a ``torch.func``
        transform (vmap / grad / jacrev) is active."""
        return bool(torch.compiler.is_compiling()) or torch._C._functorch.peek_interpreter_stack() is not None

    stacked_sweep = True

    def stacked_affine_sweep(self, layers, laplacian: bool, x, seed, weights):
        """One ``torch.autograd.Function`` with the analytic backward (:mod:`._torch_step`)."""
        return _torch_step.run(layers, laplacian, x, seed, weights)

    def workspace_bytes(self) -> int:
        return _torch_workspace.WORKSPACE.nbytes()

    def release_workspace(self) -> None:
        _torch_workspace.WORKSPACE.release()

    def mm(self, a, b, *, xp=None):
        """``a[..., p] @ b[p, q]``; torch folds the leading axes into one GEMM."""
        return torch.matmul(a, b)

    def addmm(self, c, a, b, *, xp=None):
        """``c + a @ b`` as one GEMM with accumulation (BLAS ``beta = 1``): the
        sum costs no extra pass over the result."""
        p, q = b.shape
        if c.is_contiguous() and a.is_contiguous() and c.shape == (*a.shape[:-1], q):
            out = torch.addmm(c.reshape(-1, q), a.reshape(-1, p), b)
            return out.reshape(c.shape)
        return torch.matmul(a, b).add_(c)

    def linear(self, u, K, b, *, xp=None):
        """``u @ K + b`` as one ``addmm`` (BLAS ``beta = 1`` on the broadcast bias), as ``nn.Linear``."""
        if b is None or u.ndim != 2:
            return super().linear(u, K, b, xp=xp)
        return torch.addmm(b, u, K)

    def mm_into(self, a, b, out):
        p, q = out.shape
        if 1 < q < 16 and 4 * q <= p:
            # a result with a few columns (a classifier's last weight gradient, uᵀδ): BLAS runs
            # the transposed product (q, p), torch's own layout of that gradient, up to 2x faster
            # (measured on CPU at q = 3, 10); the copy into place costs p·q numbers
            out.copy_(torch.mm(b.mT, a.mT).mT)
        else:
            torch.mm(a, b, out=out)

    def sum_into(self, a, out):
        torch.sum(a, dim=0, out=out)

    def log_softmax(self, F):
        return torch.log_softmax(F, dim=-1)

    def device_of(self, a):
        return a.device  # what array-api-compat's device() returns for a tensor, without its dispatch

    def cross_entropy_labels(self, F, y, weight, ignore_index, reduction):
        """torch's own cross-entropy kernels (``log_softmax``, ``nll_loss`` forward and backward,
        ``_log_softmax_backward_data``: what ``F.cross_entropy(...).backward()`` runs), see
        :meth:`Backend.cross_entropy_labels`."""
        if y.ndim != 1 or F.ndim != 2 or y.device != F.device or y.dtype.is_floating_point or y.is_complex():
            return None
        if y.dtype != torch.int64:  # the kernels' label dtype (int32, uint8, ... labels: a copy)
            if y.dtype == torch.bool:
                return None
            y = y.to(torch.int64)
        red = _REDUCTION_ENUM[reduction]
        w = None if weight is None else torch.as_tensor(weight, dtype=F.dtype, device=F.device)
        if F.device.type != "cpu":  # out of range is a device-side assert there: check first
            bad = ((y < 0) | (y >= F.shape[1])) & (y != ignore_index)
            if bool(bad.any()):
                return None
        logp = torch.log_softmax(F, 1)
        try:
            C, D = torch.ops.aten.nll_loss_forward.default(logp, y, w, red, ignore_index)
        except (IndexError, RuntimeError):  # on the CPU torch checks the labels' range itself
            return None
        seed = torch.ones((), dtype=F.dtype, device=F.device)
        g = torch.ops.aten.nll_loss_backward.default(seed, logp, y, w, red, ignore_index, D)
        return C, torch.ops.aten._log_softmax_backward_data.default(g, logp, 1, F.dtype), D

    def tanh_vjp(self, t, dl, *, xp=None):
        """``(1 - t²) * dl`` in one pass (``aten::tanh_backward``, the kernel of torch's own autograd)."""
        return torch.ops.aten.tanh_backward(dl, t)

    def addcmul(self, acc, a, b, *, xp=None):
        """``acc + a * b``, fused and written into ``acc`` (a temporary the engine owns)."""
        return acc.addcmul_(a, b)

    def sum_squares(self, a, *, axis, xp=None):
        """``Σ a²`` over ``axis`` (``torch.linalg.vecdot``; the array-api-compat
        wrapper of vecdot is ~20x slower here)."""
        return torch.linalg.vecdot(a, a, dim=axis)

    def einsum(self, subscripts, a, b, *, xp=None):
        return torch.einsum(subscripts, a, b)

    def erf(self, a, *, xp=None):
        return torch.special.erf(a)

    def erfc(self, a, *, xp=None):
        return torch.special.erfc(a)

    def convert(self, a, *, xp=None, dtype, device=None):
        """Any supported array -> torch tensor of ``dtype`` on ``device``.

        A torch tensor is moved with ``Tensor.to`` so autograd keeps flowing;
        an array on a GPU crosses by DLPack, anything else through the host.
        """
        if isinstance(a, torch.Tensor):
            return a.to(device=device, dtype=dtype)
        if _on_accelerator(a):
            return torch.from_dlpack(a).to(device=device, dtype=dtype)
        # copy: home arrays are read-only and must never alias a writable tensor
        return torch.tensor(np.asarray(to_numpy(a)), dtype=dtype, device=device)

    def dtype(self, name: str):
        return getattr(torch, name)

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def home(self, a, requires_grad: bool = False):
        return a.detach().clone().requires_grad_(requires_grad)

    def view(self, a, shape):
        return a.view(shape)  # Tensor.view never copies (it raises instead)

    def multiply(self, a, b, *, out):
        torch.mul(a, b, out=out)

    def eye(self, k: int, *, dtype, device):
        # the same aten::eye as array-api-compat's wrapper, without its ~9 µs of
        # argument handling on every call
        return torch.eye(k, dtype=dtype, device=device)

    def synchronize(self, device=None) -> None:
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)


def _on_accelerator(a) -> bool:
    """Does ``a`` live on a device other than the CPU (DLPack device type 1)?"""
    dev = getattr(a, "__dlpack_device__", None)
    return dev is not None and dev()[0] != 1


BACKEND = TorchBackend()

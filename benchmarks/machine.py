r"""What this machine can do at best: the limit every timing is compared with.

The *machine limit* of a point is :math:`t_\text{limit} = \max(\text{flops} / R_\text{GEMM},\
\text{output bytes} / B_\text{copy})`, with :math:`R_\text{GEMM}` the best measured square-GEMM
rate of the peer's own backend and dtype and :math:`B_\text{copy}` the measured copy bandwidth.
``flops`` is the GEMM work of this library's chain rule at that point, counted by instrumenting the
backend's ``mm``/``einsum`` (:func:`count_flops`): the least GEMM work of this algorithm, not of
every algorithm. Two bandwidths are measured, into a touched buffer (STREAM style, the stricter
bound, used for "limit %") and into a fresh array (page faults included); the JSON keeps both.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from math import prod

import numpy as np

#: the variables that set the thread count of OpenMP, OpenBLAS, MKL and Accelerate (read at load)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def threads() -> int:
    """Cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _gemm_call(backend: str, a, b):
    """A zero-argument call computing ``a @ b`` on ``backend`` and waiting for it."""
    if backend == "numpy":
        return lambda: a @ b
    if backend in ("torch", "torch-cuda"):
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        if backend == "torch":
            return lambda: ta @ tb
        ta, tb = ta.cuda(), tb.cuda()
        return lambda: (ta @ tb, torch.cuda.synchronize())
    if backend == "cupy":
        import cupy

        ca, cb = cupy.asarray(a), cupy.asarray(b)
        return lambda: (ca @ cb, cupy.cuda.Device().synchronize())
    if backend in ("jax", "jax-cuda"):
        import jax

        jax.config.update("jax_enable_x64", True)
        dev = jax.devices("gpu" if backend == "jax-cuda" else "cpu")[0]
        ja, jb = jax.device_put(a, dev), jax.device_put(b, dev)
        mm = jax.jit(lambda u, v: u @ v)
        return lambda: mm(ja, jb).block_until_ready()
    raise ValueError(f"no GEMM measurement for backend {backend!r}")


def measure_gemm(backend: str, dtype: str, *, quick: bool = False, tiny: bool = False) -> dict:
    """Best square-GEMM rate (flop/s) of ``backend`` in ``dtype`` over a few sizes."""
    sizes = (64, 128) if tiny else (256, 512, 1024) if quick else (256, 512, 1024, 2048)
    reps = 3 if quick else 7
    rng = np.random.default_rng(0)
    rates = {}
    for N in sizes:
        a, b = (rng.standard_normal((N, N)).astype(dtype) for _ in range(2))
        rates[N] = 2.0 * N**3 / _best(_gemm_call(backend, a, b), reps)
    best_n = max(rates, key=rates.get)
    return {
        "flops_per_s": rates[best_n],
        "best_size": best_n,
        "by_size": {str(k): v for k, v in rates.items()},
    }


def measure_copy(*, quick: bool = False, device: str = "cpu", tiny: bool = False) -> dict:
    """Copy bandwidth in bytes written per second: into a touched buffer and into a new array."""
    nbytes = (4 if tiny else 128 if quick else 512) * 2**20
    reps = 3 if quick else 5
    if device == "cpu":
        src = np.random.default_rng(0).standard_normal(nbytes // 8)
        dst = np.empty_like(src)
        dst.fill(0.0)
        t_touched = _best(lambda: np.copyto(dst, src), reps)
        t_fresh = _best(lambda: src.copy(), reps)
        b = src.nbytes
        return {"touched_Bps": b / t_touched, "fresh_Bps": b / t_fresh, "array_bytes": b}
    import torch

    src = torch.randn(nbytes // 8, dtype=torch.float64, device="cuda")
    dst = torch.empty_like(src)

    t_touched = _best(lambda: (dst.copy_(src), torch.cuda.synchronize()), reps)
    t_fresh = _best(lambda: (src.clone(), torch.cuda.synchronize()), reps)
    b = src.numel() * 8
    return {"touched_Bps": b / t_touched, "fresh_Bps": b / t_fresh, "array_bytes": b}


# --- flop counting ---


def _mm_flops(a, b) -> int:
    return 2 * prod(a.shape[:-1]) * a.shape[-1] * b.shape[-1]


def _einsum_flops(subscripts: str, a, b) -> int:
    ins, _ = subscripts.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    size = {}
    for s, arr in ((sa, a), (sb, b)):
        for c, n in zip(s, arr.shape):
            size[c] = max(size.get(c, 1), n)
    return 2 * prod(size.values())


def count_flops(net, x, **kwargs) -> int:
    """GEMM flops of one call ``net(x, **kwargs)`` on the NumPy backend.

    Every ``mm`` and ``einsum`` the engine sends to the backend is counted
    (``2·M·K·N`` for an ``(M, K) @ (K, N)`` product); the few plain ``@`` of
    the value pass and elementwise work are not.
    """
    from hessquik_core.backends import get_backend

    be = get_backend("numpy")
    total, mm0, es0 = [0], be.mm, be.einsum
    # what the instance itself held (normally nothing: the class's methods): restored as it
    # was, so no bound copy is left on the process-wide backend to shadow the class later
    own = {k: vars(be)[k] for k in ("mm", "einsum") if k in vars(be)}

    def mm(a, b, *, xp=None):
        total[0] += _mm_flops(a, b)
        return mm0(a, b, xp=xp)

    def einsum(sub, a, b, *, xp=None):
        total[0] += _einsum_flops(sub, a, b)
        return es0(sub, a, b, xp=xp)

    be.mm, be.einsum = mm, einsum
    try:
        net(x, **kwargs)
    finally:
        for k in ("mm", "einsum"):
            if k in own:
                setattr(be, k, own[k])
            else:
                delattr(be, k)
    return total[0]


def flops_at(net, d: int, n: int, dtype, **kwargs) -> int:
    """GEMM flops at batch ``n``, from two tiny calls: the count is affine in ``n``."""
    f2, f3 = (count_flops(net, np.zeros((k, d), dtype=dtype), **kwargs) for k in (2, 3))
    return f2 + (f3 - f2) * (n - 2)


# --- description ---


def _proc(path: str, key: str) -> str | None:
    """The value of the first line of ``/proc/<path>`` starting with ``key`` (``None``: none, or not Linux)."""
    try:
        with open(f"/proc/{path}") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith(key)), None)
    except OSError:
        return None


def _cpu_model() -> str:
    return _proc("cpuinfo", "model name") or platform.processor() or "unknown"


def _mem_total() -> int | None:
    kib = _proc("meminfo", "MemTotal")
    return None if kib is None else int(kib.split()[0]) * 1024


def source_fingerprint() -> str:
    """SHA-256 over hessquik_core's source files: which engine version was measured."""
    import hashlib
    from pathlib import Path

    import hessquik_core

    h = hashlib.sha256()
    root = Path(hessquik_core.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes compete for the cores)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def mem_available() -> int | None:
    kib = _proc("meminfo", "MemAvailable")
    return None if kib is None else int(kib.split()[0]) * 1024


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _numpy_blas() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


def _flags() -> str:
    fl = (_proc("cpuinfo", "flags") or "").split()
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_fp16", "amx_tile") if f in fl)


def describe(n_threads: int) -> dict:
    """Machine and software description (JSON-able)."""
    info = {
        "cpu": _cpu_model(),
        "cpu_flags": _flags(),
        "logical_cpus": os.cpu_count(),
        "threads_used": n_threads,
        "memory_total_bytes": _mem_total(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "hessquik_core": _version("hessquik-core"),
        "hessQuik": _version("hessQuik") or _version("hessquik"),
        **{k: _version(k) for k in ("torch", "jax", "jaxlib", "folx")},
        "cupy": _version("cupy-cuda12x") or _version("cupy"),
        "env": {k: os.environ.get(k) for k in (*THREAD_VARS, "XLA_FLAGS") if os.environ.get(k)},
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_blas"] = "MKL" if torch.backends.mkl.is_available() else "other"
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    if "gpu" not in info:
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                info["gpu"] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    info.setdefault("gpu", None)
    return info

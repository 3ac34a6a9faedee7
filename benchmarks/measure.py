"""Timing (interleaved rounds, :func:`time_interleaved`) and the peak memory of one call.

Peak memory: on the CPU the growth of the resident set above its pre-call size, read from
``VmHWM`` after resetting the high-water mark through ``/proc/self/clear_refs`` (Linux); on a GPU
``torch.cuda.max_memory_allocated`` or the CuPy pool's high-water mark.
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Timing:
    min_s: float
    median_s: float
    number: int
    repeat: int
    total_s: float
    samples: list  # per-call time of each repeat


def time_interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    min_round_s: float,
    max_total_s: float,
    rotate: bool = False,
    known_s: dict[str, float] | None = None,
) -> dict[str, Timing]:
    """Time several (already warmed-up) calls against each other, in interleaved rounds.

    Each round runs every call once in turn (``number`` calls in a row, from one calibration call, so
    that its share of a round lasts ``min_round_s``): a burst of load slows every peer of the round
    alike. A call whose ``rounds`` would pass ``max_total_s`` gets fewer (at least two, unless
    ``rounds`` is one); the result is the per-call minimum (and median) over the rounds. ``rotate``:
    round ``i`` starts with the ``i``-th call (the first call after a switch finds the caches cold:
    1.2-2x on 0.2-1 ms calls). ``known_s``: seconds per call already measured, no calibration call.
    Each result is dropped before the next call starts: one output is alive at a time.
    """
    numbers, reps = {}, {}
    for name, call in calls.items():
        if known_s and name in known_s:
            per = max(known_s[name], 1e-7)
        else:
            t0 = time.perf_counter()
            out = call()
            del out
            per = max(time.perf_counter() - t0, 1e-7)
        numbers[name] = max(1, int(min_round_s / per))
        reps[name] = max(min(2, rounds), min(rounds, int(max_total_s / (per * numbers[name]))))
    samples: dict[str, list] = {name: [] for name in calls}
    total = dict.fromkeys(calls, 0.0)
    for i in range(max(reps.values(), default=0)):
        names = [n for n in calls if i < reps[n]]
        if rotate and names:
            j = i % len(names)
            names = names[j:] + names[:j]
        for name in names:
            call = calls[name]
            t0 = time.perf_counter()
            for _ in range(numbers[name]):
                out = call()
                del out
            dt = time.perf_counter() - t0
            total[name] += dt
            samples[name].append(dt / numbers[name])
    return {
        name: Timing(min(s), statistics.median(s), numbers[name], len(s), total[name], s)
        for name, s in samples.items()
    }


# --- memory ---

_STATUS = "/proc/self/status"


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as fh:
            m = re.search(key + r":\s+(\d+)\s+kB", fh.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory(call: Callable[[], Any], *, device: str, kind: str, collect: bool = True):
    """Run ``call`` once; return ``(result, seconds, peak)``, ``peak`` a dict: ``rss`` (bytes above the
    pre-call RSS, CPU) or ``gpu`` (bytes, GPU), and ``method`` naming what was measured."""
    if collect:
        gc.collect()
    peak: dict = {}
    if device == "cuda":
        reset, read = _gpu_counters(kind)
        reset()
        t0 = time.perf_counter()
        out = call()
        dt = time.perf_counter() - t0
        return out, dt, {"gpu": read(), "method": "max allocated (GPU)"}
    base = _status_kib("VmRSS")
    ok = _reset_hwm()
    t0 = time.perf_counter()
    out = call()
    dt = time.perf_counter() - t0
    hwm = _status_kib("VmHWM")
    if ok and base is not None and hwm is not None:
        peak["rss"] = max(0, (hwm - base) * 1024)
        peak["method"] = "RSS high-water mark above the pre-call RSS"
    return out, dt, peak


def _gpu_counters(kind: str):
    """``(reset, read)``: reset the GPU's high-water mark; read the bytes above the reset."""
    if kind == "jax-cuda":
        # XLA preallocates its GPU pool and exposes no high-water mark through torch or CuPy: not measured
        return (lambda: None), (lambda: None)
    base = [0]
    if kind == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()

        # CuPy keeps no high-water mark: the pool's total bytes after the call
        # (blocks are cached, not returned) bounds the call's peak from below
        def reset():
            pool.free_all_blocks()
            base[0] = pool.used_bytes()

        return reset, lambda: pool.total_bytes() - base[0]
    import torch

    def reset_torch():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base[0] = torch.cuda.memory_allocated()

    def read():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base[0]

    return reset_torch, read

"""The benchmark harness: what every workload shares (``benchmarks/README.md``, "The harness").

A workload states its points, its peers and its table layout; here, once: peers and their
registry, the agreement check, :func:`check_then_time` (check, then interleaved timing), the
skip and prediction rules, the profile of a slower call, the thread and environment set-up, the
Markdown/CSV/JSON/PNG writers and the command line. One module on purpose: a workload author
reads one file; its sections follow that order.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import machine
from .measure import peak_memory, time_interleaved

ROOT = Path(__file__).resolve().parent.parent  # the checkout: first on a child's PYTHONPATH
RESULTS = ROOT / "benchmarks" / "results"
QUICK_OUT = Path("build/bench-quick")
#: statuses of a record that carries a time
TIMED = ("ok", "once")
_QUIET = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning)


# --- peers ---


@dataclass
class Runner:
    """A prepared computation: ``call()`` runs it and returns when its result is really
    there (device work synchronised, asynchronous dispatch waited for); ``to_numpy(out)``
    brings the result back for the agreement check (not timed): a dict ``name -> array``
    or a pair ``(first, [arrays])`` (see :func:`compare`)."""

    call: Callable[[], Any]
    to_numpy: Callable[[Any], Any]
    compile_s: float | None = None  # ahead-of-time compilation, not in the timings
    extra: dict = field(default_factory=dict)


def jax_setup():
    """JAX with 64-bit floats enabled (every peer compares float64 results)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def jax_aot(jitted, *args) -> tuple[Any, float]:
    """``jitted`` compiled ahead of time for ``args`` (compilation never lands in a timing),
    and the seconds that took."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def jax_step(loss: Callable, params: list, *args) -> Runner:
    """A training step in JAX: ``jit(value_and_grad(loss))(params, *args)`` compiled ahead of
    time; ``to_numpy`` gives ``(loss, [gradient per parameter])``."""
    import jax

    step, cs = jax_aot(jax.jit(jax.value_and_grad(loss)), params, *args)
    to_numpy = lambda out: (float(out[0]), [np.asarray(g) for g in out[1]])  # noqa: E731
    return Runner(lambda: jax.block_until_ready(step(params, *args)), to_numpy, compile_s=cs)


def _gpu_available(backend: str) -> bool:
    try:
        if backend == "cupy":
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        if backend.startswith("torch"):
            import torch

            return torch.cuda.is_available()
        if backend.startswith("jax"):
            import jax

            return any(dev.platform == "gpu" for dev in jax.devices())
    except Exception:  # noqa: BLE001 - no usable GPU for whatever reason
        return False
    return False


@dataclass(frozen=True)
class Peer:
    """One method on one backend and device: ``build(point, *shared) -> Runner`` makes its version
    of the point's computation from the weights every peer shares; ``family`` is ``"ours"`` for this
    library; ``tasks`` the point tasks it can do (empty: every task); ``backend`` its array library
    (``"numpy"``, ``"torch"``, ``"jax"``, ``"cupy"``, ``"torch-cuda"``, ``"jax-cuda"``)."""

    name: str
    build: Callable[..., Runner]
    requires: tuple[str, ...] = ()
    family: str = "peer"
    tasks: tuple[str, ...] = ()
    backend: str = "numpy"
    device: str = "cpu"
    note: str = ""

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)``: its modules are installed, its device is there."""
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return False, f"{mod} is not installed"
        if self.device == "cuda" and not _gpu_available(self.backend):
            return False, "no CUDA GPU on this machine"
        return True, ""

    def serves(self, task: str) -> bool:
        return not self.tasks or task in self.tasks


class Registry:
    """The peers of a workload, by name, in registration order."""

    def __init__(self, *peers: Peer):
        self._peers: dict[str, Peer] = {}
        for p in peers:
            self.add(p)

    def add(self, peer: Peer) -> Peer:
        if peer.name in self._peers:
            raise ValueError(f"peer {peer.name!r} is registered twice")
        self._peers[peer.name] = peer
        return peer

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def __getitem__(self, name: str) -> Peer:
        return self._peers[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._peers)

    def select(self, spec: str | Sequence[str] | None) -> list[Peer]:
        """The peers named in ``spec`` (names or families, comma-separated; ``None``: all).

        Raises ``ValueError`` naming the unknown ones and the known ones."""
        if spec is None:
            return list(self)
        want = spec.split(",") if isinstance(spec, str) else list(spec)
        known = set(self._peers) | {p.family for p in self}
        bad = [w for w in want if w and w not in known]
        if bad:
            raise ValueError(f"unknown peers {bad}; expected some of {list(self._peers)}")
        return [p for p in self if p.name in want or p.family in want]


# --- agreement ---


def tolerance(dtype: str, float32: float = 5e-3) -> float:
    """Relative tolerance of the check against the float64 reference: ``1e-8`` in float64;
    float32 is held to its precision grown by the derivative recurrences."""
    return 1e-8 if dtype == "float64" else float32


def _named(res: Any) -> list[list[tuple[str, np.ndarray]]]:
    """Groups of named arrays that share one scale: a dict is one group per array; a pair
    ``(first, [arrays])`` is ``first`` alone (``loss`` if a scalar, else ``value``) and the
    arrays together (``gradient i``: a small block, e.g. a bias whose gradient is almost
    zero, is held to the digits of the whole gradient, not to more)."""
    if isinstance(res, dict):
        return [[(k, np.asarray(v))] for k, v in res.items()]
    first, arrays = res
    first = np.asarray(first)
    grads = [(f"gradient {i}", np.asarray(a)) for i, a in enumerate(arrays)]
    return [[("loss" if first.ndim == 0 else "value", first)], grads]


def compare(got: Any, ref: Any, rows: int | None = None) -> tuple[float, str]:
    """Largest relative deviation of ``got`` from ``ref`` and where it is.

    Each array is compared relative to the largest entry of its scale group (see
    :func:`_named`), only its first ``rows`` rows where given. Returns ``(inf, why)``
    when a name is missing, a size differs or a value is not finite."""
    gg, rg = _named(got), _named(ref)
    gdict = {k: v for grp in gg for k, v in grp}
    if sum(map(len, gg)) != sum(map(len, rg)):
        return math.inf, f"{sum(map(len, gg))} arrays, expected {sum(map(len, rg))}"
    worst, where = -1.0, ""
    for grp in rg:
        scale = max((float(np.max(np.abs(r))) for _, r in grp if r.size), default=0.0) or 1e-300
        for name, r in grp:
            if name not in gdict:
                return math.inf, f"{name} missing"
            g = np.asarray(gdict[name], dtype=np.float64)
            if rows is not None and g.ndim:
                g = g[:rows]
            if g.size != r.size:
                return math.inf, f"{name} has shape {g.shape}, expected {r.shape}"
            err = float(np.max(np.abs(g.reshape(r.shape) - r), initial=0.0)) / scale
            if not math.isfinite(err):
                return math.inf, f"{name} not finite"
            if err > worst:
                worst, where = err, name
    return max(worst, 0.0), where


# --- check, then time ---


@dataclass(frozen=True)
class Skip:
    """A peer not run at a point: ``status`` (``not-run``, ``unavailable``, ``skip-time``,
    ``skip-memory``, ``skip-budget``) and why."""

    status: str
    note: str


@dataclass(frozen=True)
class Policy:
    """How the agreeing peers of one point are timed: ``rounds`` interleaved rounds at most (each call's
    share of a round lasting ``min_round_s``), fewer (at least two) where they would pass ``budget_s``
    per peer; a peer whose checked call took longer than ``once_s`` is timed by that call only (status
    ``once``, an upper bound); a checked call longer than ``warm_s`` is its own warm-up."""

    rounds: int = 7
    min_round_s: float = 0.05
    budget_s: float = 2.0
    once_s: float = math.inf
    warm_s: float = 0.5
    tol_float32: float = 5e-3
    rows: int | None = None  # compare only the first rows of the batch
    collect: bool = False  # gc.collect() before each checked call (large outputs)


@contextlib.contextmanager
def _quiet():
    """Peers' own deprecation and user warnings are not results: ignored while they run."""
    with warnings.catch_warnings():
        for cat in _QUIET:
            warnings.simplefilter("ignore", cat)
        yield


def _failure(e: BaseException) -> tuple[str, str]:
    """``(status, note)`` of a peer that raised: ``error-memory`` for an allocation failure."""
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
    low = msg.lower()
    memory = isinstance(e, MemoryError) or "alloc" in low or "out of memory" in low
    return ("error-memory" if memory else "error"), msg


def check_then_time(
    candidates: dict[str, Callable[[], Runner] | Skip],
    reference: Any,
    *,
    dtype: str,
    policy: Policy,
    base: dict | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict], dict[str, Runner]]:
    """Measure every peer of one point: build, check against ``reference``, time interleaved.

    ``candidates``: peer name -> zero-argument builder of its :class:`Runner`, or a :class:`Skip`.
    Returns one record per candidate, in order (``base``'s fields, ``peer``, ``status``, ``note``;
    once run ``setup_s``, ``first_s``, ``first_cpu_s``, ``compile_s``, ``peak_bytes``, ``rel_err``;
    once timed ``min_s``, ``median_s``, ``rounds``, ``number``, ``samples``) and the timed runners."""
    say = log if log is not None else _stderr
    rows: list[dict] = []
    live: dict[str, Runner] = {}
    first: dict[str, float] = {}
    tol = tolerance(dtype, policy.tol_float32)
    for name, make in candidates.items():
        rec = dict(base or {}, peer=name, status="ok", note="")
        rows.append(rec)
        if isinstance(make, Skip):
            rec.update(status=make.status, note=make.note)
            continue
        try:
            with _quiet():
                t0 = time.perf_counter()
                runner = make()
                rec["setup_s"] = time.perf_counter() - t0
                c0 = time.process_time()
                dev, kind = runner.extra.get("device", device), runner.extra.get("kind", "torch")
                out, first_s, peak = peak_memory(runner.call, device=dev, kind=kind, collect=policy.collect)
                rec["first_cpu_s"] = time.process_time() - c0
                got = runner.to_numpy(out)
                del out
        except Exception as e:  # a peer that breaks is reported, never hidden
            status, msg = _failure(e)
            rec.update(status=status, note=msg)
            say(f"  {name}: {msg}")
            continue
        rec.update(first_s=first_s, compile_s=runner.compile_s, peak_bytes=peak.get("gpu", peak.get("rss")))
        rec["peak_method"] = peak.get("method")
        err, where = compare(got, reference, policy.rows)
        del got
        rec["rel_err"] = err
        if not err <= tol:
            note = f"disagrees with hessquik_core: rel. error {err:.2e} in {where}"
            rec.update(status="mismatch", note=note)
            say(f"  {name}: {rec['note']}")
            continue
        if first_s > policy.once_s:
            rec.update(status="once", min_s=first_s, median_s=first_s, rounds=1, number=1)
            rec["note"] = f"one call only: it took {first_s:.1f} s > {policy.once_s:g} s"
            continue
        live[name] = runner
        if first_s >= policy.warm_s:
            first[name] = first_s
    timing = dict(rounds=policy.rounds, min_round_s=policy.min_round_s, max_total_s=policy.budget_s)
    with _quiet():
        try:
            tm = time_interleaved({n: r.call for n, r in live.items()}, known_s=first, rotate=True, **timing)
        except Exception:  # a call that ran once fails when repeated: time them one by one to name it
            tm = {}
            for n in list(live):
                try:
                    tm.update(time_interleaved({n: live[n].call}, known_s=first, rotate=True, **timing))
                except Exception as e:
                    rec = next(r for r in rows if r["peer"] == n)
                    status, msg = _failure(e)
                    rec.update(status=status, note=f"failed while timed: {msg}")
                    say(f"  {n}: {rec['note']}")
                    del live[n]
    for rec in rows:
        if (t := tm.get(rec["peer"])) is not None:
            rec.update(min_s=t.min_s, median_s=t.median_s, rounds=t.repeat, number=t.number)
            rec["samples"] = t.samples
    return rows, live


def candidates(
    peers: Iterable[Peer],
    point: Any,
    *shared: Any,
    task: str | None = None,
    rule: Callable[[Peer], Skip | None] | None = None,
) -> dict[str, Callable[[], Runner] | Skip]:
    """The ``candidates`` of :func:`check_then_time` at ``point``: for each peer a builder
    ``peer.build(point, *shared)``, or why it does not run there — ``not-run`` where it does
    not serve ``task``, ``unavailable`` (with the missing module or device), or the
    workload's own ``rule(peer)`` (e.g. a :func:`predicted_skip`)."""
    out: dict[str, Callable[[], Runner] | Skip] = {}
    for p in peers:
        ok, why = p.available()
        if task is not None and not p.serves(task):
            out[p.name] = Skip("not-run", f"no {p.name} peer for task {task!r}")
        elif not ok:
            out[p.name] = Skip("unavailable", why)
        else:
            out[p.name] = (rule(p) if rule else None) or (lambda p=p: p.build(point, *shared))
    return out


def ratios(rows: list[dict], ours: Sequence[str], key: str = "ratios") -> None:
    """``rec[key][o] = t(o) / t(rec)`` for every timed record and each of ``ours`` timed at
    the same point (below 1: this library is faster); ``rows`` are one point's records."""
    best = {r["peer"]: r["min_s"] for r in rows if r["status"] in TIMED}
    for r in rows:
        if r["status"] in TIMED:
            r[key] = {o: best[o] / r["min_s"] for o in ours if o in best}


# --- skip and prediction rules ---


class Predictor:
    """A peer's time and peak memory at a point, predicted from its measured smaller points.

    Within one series (``series(point)``) both are taken to grow at most in proportion to
    ``units(peer, point)`` beyond the largest point measured so far, times ``safety``."""

    def __init__(self, series: Callable[[Any], Hashable], units: Callable[[str, Any], float], safety=1.25):
        self.series, self.units, self.safety = series, units, safety
        self.seen: dict = {}

    def add(self, peer: str, point: Any, seconds: float, peak: float | None) -> None:
        self.seen.setdefault((peer, self.series(point)), []).append((self.units(peer, point), seconds, peak))

    def predict(self, peer: str, point: Any) -> tuple[float | None, float | None]:
        rows = self.seen.get((peer, self.series(point)))
        if not rows:
            return None, None
        u, t, mem = max(rows, key=lambda r: r[0])
        scale = max(1.0, self.units(peer, point) / u) * self.safety
        return t * scale, (None if mem is None else mem * scale)

    def add_rows(self, rows: Iterable[dict], point: Any) -> None:
        for r in rows:
            if r["status"] in TIMED:
                self.add(r["peer"], point, r["min_s"], r.get("peak_bytes"))


def predicted_skip(
    t_pred: float | None, m_pred: float | None, *, max_call_s: float, mem_budget: float, what: str = "call"
) -> Skip | None:
    """The skip a prediction implies, or ``None``: memory before time."""
    if m_pred is not None and m_pred > mem_budget:
        why = f"predicted peak {m_pred / 2**30:.1f} GiB (from its measured growth) > budget {mem_budget / 2**30:.1f} GiB"
        return Skip("skip-memory", why)
    if t_pred is not None and t_pred > max_call_s:
        return Skip("skip-time", f"predicted {t_pred:.1f} s per {what} > cap {max_call_s:g} s")
    return None


# --- threads and environment ---


def _openblas_threads(n: int) -> int | None:
    """Set and read NumPy's OpenBLAS thread count (``None`` if NumPy does not use OpenBLAS)."""
    try:
        with open("/proc/self/maps") as fh:
            libs = {line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in libs:
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                try:
                    set_ = getattr(lib, f"{prefix}set_num_threads{suffix}")
                    get_ = getattr(lib, f"{prefix}get_num_threads{suffix}")
                except AttributeError:
                    continue
                set_(ctypes.c_int(n))
                return int(get_())
    return None


def set_threads(n: int) -> dict:
    """Use ``n`` threads everywhere: CPU affinity, the OpenMP/OpenBLAS/MKL variables (for
    child processes), OpenBLAS through its C API, torch, and XLA (before JAX loads)."""
    os.environ.update({var: str(n) for var in machine.THREAD_VARS})
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        xla = f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}"
        os.environ["XLA_FLAGS"] = (flags + xla).strip()
    got: dict = {}
    if hasattr(os, "sched_setaffinity"):  # Linux
        cores = sorted(os.sched_getaffinity(0))
        if n < len(cores):
            os.sched_setaffinity(0, cores[:n])
        got["affinity"] = len(os.sched_getaffinity(0))
    got["numpy_blas"] = _openblas_threads(n)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(n)
        got["torch"] = torch.get_num_threads()
    return dict(got, xla=n)


#: OpenBLAS tuning variables: a machine-specific override changes NumPy's GEMM rate
OPENBLAS_TUNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_FOUND = "HQ_BENCH_OPENBLAS_FOUND"  # what the first process found, handed to its re-execution


def _unset_openblas_tuning() -> dict:
    """Record :data:`OPENBLAS_TUNING` as found, and run this benchmark without them: OpenBLAS reads
    them when NumPy loads it, so this process re-executes itself once (``os.execve``) without them,
    passing what it found on in ``HQ_BENCH_OPENBLAS_FOUND``; every other process keeps them.
    ``HQ_BENCH_KEEP_OPENBLAS=1`` keeps them here too."""
    if _FOUND in os.environ:
        return json.loads(os.environ[_FOUND])
    found = {k: os.environ.get(k) for k in OPENBLAS_TUNING}
    argv = getattr(sys, "orig_argv", None)
    if (
        any(found.values())
        and not os.environ.get("HQ_BENCH_KEEP_OPENBLAS")
        and argv
        and any("benchmarks" in a for a in argv[1:3])  # a benchmark's own command line only
    ):
        env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_TUNING}
        env[_FOUND] = json.dumps(found)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    return found


def environment(threads: int | None, *, configure: bool = True) -> dict:
    """Set up this process for timing and describe the machine (JSON-able): with ``configure`` (a
    benchmark's own process) :func:`_unset_openblas_tuning` and :func:`set_threads` (default: every
    core this process may use); without it (a test) only recorded. The load average, versions and
    source fingerprint are recorded; call :func:`finish` at the end."""
    n = threads or machine.threads()
    found = _unset_openblas_tuning() if configure else {k: os.environ.get(k) for k in OPENBLAS_TUNING}
    report = set_threads(n) if configure else {}
    desc = machine.describe(n)
    desc.update(
        threads=report,
        openblas_tuning_found=found,
        openblas_tuning_unset=configure and not any(os.environ.get(k) for k in OPENBLAS_TUNING),
        load_average_start=machine.load_average(),
        hessquik_core_sources_sha256=machine.source_fingerprint(),
    )
    return desc


def finish(desc: dict) -> dict:
    desc["load_average_end"] = machine.load_average()
    return desc


def mem_budget(fraction: float) -> float:
    """``fraction`` of the memory available now (8 GiB where it cannot be read)."""
    return fraction * (machine.mem_available() or 8 * 2**30)


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


_stderr = log  # check_then_time's default (its argument ``log`` hides this function)


# --- writers ---


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "—"
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


def cell(r: dict | None) -> str:
    """A time cell: the best time, ``≤t (1 call)``, ``n/a`` or the status."""
    if r is None:
        return ""
    st = r["status"]
    if st == "ok":
        return fmt_time(r["min_s"])
    if st == "once":
        return f"≤{fmt_time(r['min_s'])} (1 call)"
    return {"not-run": "", "unavailable": "n/a"}.get(st, st)


def md_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in body]
    return lines


def series_tables(
    rows: list[dict], x: str, peers: Sequence[str], ours: Sequence[str], key="ratios"
) -> list[str]:
    """One series' tables: time per ``x`` value and peer, then ``o / peer`` for each ``o`` in
    ``ours`` (from ``rec[key][o]``; ``*`` marks a one-call time)."""
    xs = sorted({r[x] for r in rows})
    idx = {(r[x], r["peer"]): r for r in rows}
    cols = [p for p in peers if any(idx.get((v, p), {}).get("status") not in (None, "not-run") for v in xs)]
    lines = md_table([x, *cols], ([v, *(cell(idx.get((v, p))) for p in cols)] for v in xs))
    for o in ours:
        rcols = [p for p in cols if p not in ours]
        if o not in cols or not rcols:
            continue

        def ratio(r: dict | None, o: str = o) -> str:
            v = (r or {}).get(key, {}).get(o)
            return "" if v is None else f"{v:.2f}" + ("*" if r and r["status"] == "once" else "")

        lines += ["", f"Ratio {o} / peer:", ""]
        lines += md_table([x, *rcols], ([v, *(ratio(idx.get((v, p))) for p in rcols)] for v in xs))
    return lines + [""]


def machine_md(m: dict) -> list[str]:
    """The ``## Machine`` section: CPU, threads, environment, load, fingerprint, versions."""
    libs = ("torch", "jax", "folx", "hessQuik", "cupy")
    return [
        "## Machine",
        "",
        f"- CPU: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs), threads used "
        f"{m.get('threads_used')} ({m.get('threads')})",
        f"- environment: {m.get('env')}; OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as found: "
        f"{m.get('openblas_tuning_found')}"
        + (", unset for the run" if m.get("openblas_tuning_unset") else ""),
        f"- load average (1/5/15 min) at start {m.get('load_average_start')}, at end {m.get('load_average_end')}",
        f"- hessquik_core source fingerprint `{m.get('hessquik_core_sources_sha256')}`",
        "- "
        + ", ".join(f"{k} {m.get(k)}" for k in libs if m.get(k))
        + f", numpy {m.get('numpy')} ({m.get('numpy_blas')}), Python {m.get('python')}",
        "",
    ]


def notes_md(rows: list[dict], label: Callable[[dict], str]) -> list[str]:
    """Every record that was skipped, failed, disagreed or carries a note."""
    notes = [r for r in rows if r["status"] != "not-run" and (r["status"] != "ok" or r.get("note"))]
    if not notes:
        return []
    items = [f"- {r['peer']} at {label(r)}: {r['status']} — {r.get('note', '')}" for r in notes]
    return ["## Skipped, failed or disagreeing", "", *items, ""]


def agreement_md(rows: list[dict], keys: Sequence[str], what: str) -> list[str]:
    """The largest relative deviation from this library per ``keys`` (e.g. peer, dtype)."""
    worst: dict = {}
    for r in rows:
        if r.get("rel_err") is not None:
            k = tuple(r[c] for c in keys)
            worst[k] = max(worst.get(k, 0.0), r["rel_err"])
    if not worst:
        return []
    head = [f"## Agreement with this library (largest relative deviation of {what})", ""]
    return head + md_table([*keys, "deviation"], ([*k, f"{e:.1e}"] for k, e in sorted(worst.items()))) + [""]


def pyplot():
    """matplotlib's pyplot on the Agg backend, or ``None`` where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_series(
    path: Path,
    rows: list[dict],
    panels: Sequence[tuple[str, Callable[[dict], bool]]],
    *,
    x: str,
    peers: Sequence[str],
    style: dict,
    ylabel: str,
    title: str,
    ncols: int = 1,
    xlabel: str = "input dimension d",
) -> Path | None:
    """Time against ``x`` (log-log), one line per peer, one panel per ``(title, selector)``."""
    plt = pyplot()
    rows = [r for r in rows if r["status"] in TIMED]
    if plt is None or not rows or not panels:
        return None
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols + 0.6, 3.6 * nrows + 0.6), squeeze=False)
    for ax, (ptitle, sel) in zip(axes.flat, panels):
        for p in peers:
            pts = sorted((r[x], r["min_s"]) for r in rows if r["peer"] == p and sel(r))
            if pts:
                ax.plot(*zip(*pts), label=p, **style.get(p, {}))
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
        ax.set_xscale("log", base=2)
        ax.set_title(ptitle, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, int(16 * (4.8 * ncols + 0.6)))), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    out: Path,
    stem: str,
    data: dict,
    *,
    markdown: Callable[[dict], str],
    csv_fields: Sequence[str] | None = None,
    csv_row: Callable[[dict], dict] | None = None,
    plot: Callable[[Path, dict], Path | None] | None = None,
    plots: bool = True,
    image_alt: str = "time against d",
) -> None:
    """``<stem>.json`` (everything), ``<stem>.csv`` (``csv_fields`` of each row), the plot and
    ``<stem>.md`` (``markdown(data)`` with the plot linked) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    if csv_fields is not None:
        with open(out / f"{stem}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(csv_fields), extrasaction="ignore")
            w.writeheader()
            for r in data["rows"]:
                w.writerow(csv_row(r) if csv_row else r)
    md = markdown(data)
    if plots and plot is not None:
        p = plot(out, data)
        if p is not None:
            md += f"\n![{image_alt}]({p.name})\n"
    (out / f"{stem}.md").write_text(md)


# --- command line ---


def int_list(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def add_common_args(p: argparse.ArgumentParser, *, threads: int | None = None, replot: bool = True) -> None:
    """``--quick``, ``--smoke``, ``--out``, ``--threads``, ``--label``, ``--no-plots`` (and ``--replot``)."""
    add = p.add_argument
    add("--quick", action="store_true", help="a small grid, about a minute")
    add("--smoke", action="store_true", help="a tiny grid for the test suite (implies --quick)")
    add("--out", type=Path, help=f"folder (default benchmarks/results; quick: {QUICK_OUT})")
    add("--threads", type=int, default=threads, help=f"threads for every library ({threads or 'all cores'})")
    add("--label", default="", help="a line printed at the top of the table (e.g. 'loaded machine')")
    add("--no-plots", action="store_true", help="write tables only")
    if replot:
        add("--replot", type=Path, help="only rebuild the table and plot from DIR's JSON")


RunFn = Callable[[argparse.Namespace, dict], dict]  # run(args, machine) -> data
WriteFn = Callable[[Path, dict, bool], None]  # write(out, data, plots)


def main(args: argparse.Namespace, stem: str, run: RunFn, write: WriteFn, *, configure_threads=True) -> int:
    """The common ``main``: ``--replot``, then :func:`environment`, ``run(args, machine)``,
    ``write(out, data, plots)``."""
    if getattr(args, "replot", None) is not None:
        write(args.replot, json.loads((args.replot / f"{stem}.json").read_text()), not args.no_plots)
        print(f"rebuilt {args.replot / (stem + '.md')}")
        return 0
    t0, desc = time.perf_counter(), environment(args.threads, configure=configure_threads)
    data = run(args, desc)
    finish(desc)
    data.setdefault("machine", desc)
    data.setdefault("label", getattr(args, "label", ""))
    data["wall_s"] = time.perf_counter() - t0
    out = args.out or (QUICK_OUT if args.quick else RESULTS)
    write(out, data, not args.no_plots)
    print(f"wrote {out / (stem + '.md')} ({data['wall_s']:.0f} s)")
    return 0

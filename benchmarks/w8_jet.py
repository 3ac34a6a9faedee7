r"""W8's jet peer: ``jet-for-pytorch`` (collapsed Taylor mode), in this process or in a child.

jet-for-pytorch 1.0 needs Python ≥ 3.12. Where the benchmark's own interpreter has it
(``import jet`` works), :func:`build` makes the peer in the benchmark's process like every
other peer. Otherwise :mod:`benchmarks.w8` runs this module as a script in another
interpreter that has jet (``--jet-python``, default ``$HQ_JET_PYTHON`` or
``.venv312/bin/python``)::

    <python3.12> benchmarks/w8_jet.py IN.npz OUT.npz

``IN.npz`` holds the very weights and inputs the other peers get (float64, the layer
matrices ``K`` as :mod:`hessquik_core` stores them, ``u ↦ tanh(u K + b)``) and the point
(``op``, ``task``, ``dtype``) and timing policy as JSON; the child builds jet's operator
on a ``torch.nn.Sequential`` with those weights, calls it once under
:func:`benchmarks.measure.peak_memory` (its result comes back in ``OUT.npz`` for the
parent's agreement check against this library), then times it with
:func:`benchmarks.measure.time_interleaved` — the same timing function and policy the
parent uses, but alone in its process: the one W8 peer not timed interleaved with the
others. The child needs torch, numpy and jet only (not hessquik_core).

How jet is run (as its own benchmark, ``jet/exp/exp01_benchmark_laplacian``, runs it):
the per-example operator — ``Laplacian`` / ``Bilaplacian`` module, or the Taylor jet
``jet(f, 3)`` along the unit vector :math:`e_0` for :math:`u_{xxx}` — is traced by
``torch.fx``, simplified with ``simplify(..., pull_sum_vmapped=True)`` (the *collapsed*,
graph-simplified form), and mapped over the batch with ``torch.vmap``. A training step
differentiates :math:`\mathrm{mean}(q^2)` with respect to the ``Sequential``'s weights
by ``torch.autograd.grad``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build", "child_main", "jet_version", "sequential"]


def jet_version() -> str | None:
    """The installed jet-for-pytorch version, or ``None``."""
    try:
        from importlib.metadata import version

        return version("jet-for-pytorch")
    except Exception:  # noqa: BLE001 - not installed under that name
        return None


def sequential(weights: list[tuple[np.ndarray, np.ndarray]], dtype, device: str = "cpu"):
    """``Linear, Tanh, …, Linear`` with ``weight = Kᵀ``, ``bias = b`` (tanh after all but the
    last layer): the function every W8 peer evaluates."""
    import torch

    mods: list = []
    for i, (K, b) in enumerate(weights):
        lin = torch.nn.Linear(K.shape[0], K.shape[1], dtype=dtype, device=device)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(K.T, dtype=dtype))
            lin.bias.copy_(torch.as_tensor(b.reshape(-1), dtype=dtype))
        mods.append(lin)
        if i < len(weights) - 1:
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods)


def _collapse(fn, dummy):
    """``fn`` captured as an FX graph with common subexpressions eliminated (jet 1.0's
    ``jet_simplified`` strategy); older jet: ``simplify(…, pull_sum_vmapped=True)``."""
    try:
        from jet import common_subexpression_elimination
        from jet.tracing import capture_graph
    except ImportError:  # jet < 1.0
        from jet.simplify import simplify

        return simplify(fn, pull_sum_vmapped=True)
    mod, _ = capture_graph(fn, (dummy,))
    common_subexpression_elimination(mod.graph)
    mod.recompile()
    return mod


def _operator(op: str, f, dummy):
    """The per-example, collapsed operator ``x: (d,) -> (1,)`` (jet ≥ 1.0)."""
    import jet
    import torch

    if op == "laplacian":
        return _collapse(jet.laplacian(f, (dummy,), collapsed=True), dummy)
    if op == "biharmonic":
        return _collapse(jet.bilaplacian(f, (dummy,), collapsed=True), dummy)
    if op == "uxxx":
        e0 = torch.zeros_like(dummy)
        e0[0] = 1.0
        zero = torch.zeros_like(dummy)
        jf = jet.jet(f, (dummy,))

        def uxxx(x):
            # f(x + t e0) to third order: the third coefficient is ∂³f[e0, e0, e0] = u_xxx
            return jf((x, e0, zero, zero))[3]

        return _collapse(uxxx, dummy)
    raise ValueError(f"unknown W8 operator {op!r}: expected laplacian, biharmonic or uxxx")


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def build(op: str, task: str, weights: list, x: np.ndarray, dtype: str, device: str = "cpu"):
    """``(call, to_numpy)`` of jet's version of the point (``task``: ``eval`` or ``step``)."""
    import torch

    dt = getattr(torch, dtype)
    seq = sequential(weights, dt, device)
    xt = torch.as_tensor(x, dtype=dt, device=device)
    per_x = _operator(op, seq, xt[0].clone())
    batched = torch.vmap(per_x)
    if task == "eval":
        for p in seq.parameters():
            p.requires_grad_(False)

        def call():
            with torch.no_grad():
                out = batched(xt)
            _sync(device)
            return out

        return call, lambda out: {op: out.reshape(-1).detach().cpu().numpy()}

    params = list(seq.parameters())
    # hessquik_core's order: K, b of each layer (K = weightᵀ)

    def step():
        q = batched(xt).reshape(-1)
        loss = (q**2).mean()
        grads = torch.autograd.grad(loss, params, materialize_grads=True)
        _sync(device)
        return loss.detach(), grads

    def to_numpy(out):
        loss, grads = out
        gs = []
        for i in range(0, len(grads), 2):
            gs += [grads[i].detach().cpu().numpy().T, grads[i + 1].detach().cpu().numpy()]
        return float(loss), gs

    return step, to_numpy


# --------------------------------------------------------------------------
# the child process
# --------------------------------------------------------------------------


def _save_result(path: Path, res: Any, meta: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    if isinstance(res, dict):
        meta["kind"] = "dict"
        meta["names"] = list(res)
        arrays.update({f"r_{i}": np.asarray(v) for i, v in enumerate(res.values())})
    else:
        meta["kind"] = "pair"
        arrays["first"] = np.asarray(res[0])
        arrays.update({f"g_{i}": np.asarray(g) for i, g in enumerate(res[1])})
        meta["count"] = len(res[1])
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def load_result(path: Path) -> tuple[dict, Any]:
    """``(meta, result)`` written by the child (``result`` as :func:`build`'s ``to_numpy``)."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("kind") == "dict":
            res: Any = {n: z[f"r_{i}"] for i, n in enumerate(meta["names"])}
        elif meta.get("kind") == "pair":
            res = (float(z["first"]), [z[f"g_{i}"] for i in range(meta["count"])])
        else:
            res = None
    return meta, res


def save_input(path: Path, weights: list, x: np.ndarray, cfg: dict) -> None:
    """The child's input: the shared weights and points, and the point and policy."""
    arrays = {"x": np.asarray(x, dtype=np.float64)}
    for i, (K, b) in enumerate(weights):
        arrays[f"K_{i}"] = np.asarray(K, dtype=np.float64)
        arrays[f"b_{i}"] = np.asarray(b, dtype=np.float64).reshape(-1)
    np.savez(path, cfg=np.array(json.dumps(dict(cfg, layers=len(weights)))), **arrays)


def child_main(argv: list[str]) -> int:
    """Entry point of the child: measure jet on ``argv[0]``'s point, write ``argv[1]``."""
    import time

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from benchmarks.measure import peak_memory, time_interleaved  # stdlib only

    src, dst = Path(argv[0]), Path(argv[1])
    with np.load(src) as z:
        cfg = json.loads(str(z["cfg"]))
        x = z["x"]
        weights = [(z[f"K_{i}"], z[f"b_{i}"]) for i in range(cfg["layers"])]
    meta: dict = {"jet": jet_version(), "python": sys.version.split()[0], "status": "ok", "note": ""}
    try:
        import torch

        torch.set_num_threads(int(cfg.get("threads") or torch.get_num_threads()))
        meta["torch"] = torch.__version__
        t0 = time.perf_counter()
        dev = cfg.get("device", "cpu")
        call, to_numpy = build(cfg["op"], cfg["task"], weights, x, cfg["dtype"], dev)
        meta["setup_s"] = time.perf_counter() - t0
        c0 = time.process_time()
        out, first_s, peak = peak_memory(call, device=dev, kind="torch")
        meta["first_cpu_s"] = time.process_time() - c0
        meta.update(
            first_s=first_s, peak_bytes=peak.get("gpu", peak.get("rss")), peak_method=peak.get("method")
        )
        res = to_numpy(out)
        del out
        if first_s > cfg["once_s"]:
            meta.update(status="once", min_s=first_s, median_s=first_s, rounds=1, number=1)
        else:
            tm = time_interleaved(
                {"jet": call},
                known_s={"jet": first_s} if first_s >= cfg["warm_s"] else {},
                rounds=cfg["rounds"],
                min_round_s=cfg["min_round_s"],
                max_total_s=cfg["budget_s"],
                rotate=True,
            )["jet"]
            meta.update(min_s=tm.min_s, median_s=tm.median_s, rounds=tm.repeat, number=tm.number)
    except Exception as e:  # noqa: BLE001 - reported to the parent, never hidden
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
        low = msg.lower()
        meta.update(status="error-memory" if "alloc" in low or "out of memory" in low else "error", note=msg)
        res = None
    if res is None:
        np.savez(dst, meta=np.array(json.dumps(dict(meta, kind="none"))))
    else:
        _save_result(dst, res, meta)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))

r"""Where the time of a small-d W6 step goes, against JAX + folx.

``python -m benchmarks.studies.step_breakdown [--d 1,2,3] [--losses ...] [--threads 2]``
times W6 steps (tanh MLP width 64, depth 4, n = 1024, float64, eager torch,
``mode="auto"``: for the Laplacian loss the forward sweep with the analytic
weight gradient, for the gradient loss the taped backward sweep, for the
Hessian diagonal the taped forward sweep) and splits each:

* ``gemm``: every ``aten::mm`` / ``aten::addmm`` of one step (recorded with
  their shapes by the torch profiler) replayed alone on fresh operands of the
  same shapes and layout, best of 30 each, summed: what the step's GEMMs
  cost at torch's (MKL's) rate; ``gemm@numpy``: the same products through
  NumPy (OpenBLAS), the rate XLA gets in the same process;
* ``fixed``: the same step at n = 8 (Python, dispatch and autograd per call,
  independent of n);
* ``rest``: the step minus both — the element-wise passes (tanh, σ', the
  products with the tangents, the slab sums), each a separate sweep over an
  ``(n, width)`` slab;
* ``ops``: top-level aten calls per step.

Next to it the JAX step of the same loss on the same weights (JAX + folx for
the Laplacian; interleaved with ours, best of ``--repeat``). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/studies/step_breakdown.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.studies"

import numpy as np


def _best(f, k: int) -> float:
    f()
    ts = []
    for _ in range(k):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def _gemms(call):
    """(name, shapes, strides) of every mm / addmm in one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        call()
    out, ops = [], 0
    for e in p.events():
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        if parent is not None and parent.name.startswith("aten::"):
            continue  # inside another aten op: not a dispatch of its own
        ops += 1
        if e.name in ("aten::mm", "aten::addmm"):
            out.append((e.name, [tuple(s) for s in e.input_shapes if s]))
    return out, ops


def _replay(gemms, dt) -> tuple[float, float]:
    import torch

    t_torch = t_np = 0.0
    for name, shapes in gemms:
        a_shape, b_shape = (shapes[1], shapes[2]) if name == "aten::addmm" else (shapes[0], shapes[1])
        a = torch.randn(*a_shape, dtype=dt)
        b = torch.randn(*b_shape, dtype=dt)
        t_torch += _best(lambda a=a, b=b: torch.mm(a, b), 30)
        an, bn = a.numpy(), b.numpy()
        t_np += _best(lambda an=an, bn=bn: an @ bn, 30)
    return t_torch, t_np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", default="1,2,3")
    p.add_argument("--losses", default="laplacian")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    from .. import nets
    from .. import training_step as ts
    from ..harness import set_threads

    set_threads(args.threads)
    import torch

    rows = []
    points = [(loss, int(s)) for loss in args.losses.split(",") for s in args.d.split(",")]
    for loss, d in points:
        pt = ts.StepPoint(d=d, width=64, n=1024, dtype="float64", loss=loss)
        rec = nets.spec_of(nets.build(pt.spec))
        model = ts.mlp_model(pt, rec)
        ours = ts.REGISTRY["ours-auto"].build(pt, model, ts.problem(pt))
        folx = ts.REGISTRY["jax+folx" if loss == "laplacian" else "jax"].build(pt, model, ts.problem(pt))
        small = ts.StepPoint(d=d, width=64, n=8, dtype="float64", loss=loss)
        ours8 = ts.REGISTRY["ours-auto"].build(small, model, ts.problem(small))
        best = {"ours": 1e9, "folx": 1e9, "ours8": 1e9}
        for _ in range(args.repeat):  # interleaved
            for key, r in (("ours", ours), ("folx", folx), ("ours8", ours8)):
                best[key] = min(best[key], _best(r.call, 1))
        gemms, ops = _gemms(ours.call)
        t_mm, t_np = _replay(gemms, torch.float64)
        flops = sum(
            2 * np.prod(s[0 if n == "aten::mm" else 1]) * s[1 if n == "aten::mm" else 2][-1] for n, s in gemms
        )
        rows.append((loss, d, best, t_mm, t_np, ops, flops, len(gemms)))
    print(
        "| loss | d | ours step | GEMMs (count, GFLOP) | gemm (torch) | gemm@numpy | fixed (n = 8) | rest "
        "| aten ops | JAX step (folx for the Laplacian) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for loss, d, b, t_mm, t_np, ops, flops, k in rows:
        rest = b["ours"] - t_mm - b["ours8"]
        print(
            f"| {loss} | {d} | {b['ours'] * 1e3:.1f} ms | {k}, {flops / 1e9:.3f} | {t_mm * 1e3:.1f} ms "
            f"| {t_np * 1e3:.1f} ms | {b['ours8'] * 1e3:.2f} ms | {rest * 1e3:.1f} ms | {ops} "
            f"| {b['folx'] * 1e3:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

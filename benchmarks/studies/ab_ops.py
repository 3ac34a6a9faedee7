"""Before/after *operation* comparison of the engine, public API only (issue 11).

Timings on this shared 2-core VM swing by 30 % with the load; the sequence of array operations an engine issues
does not. This script records, for the torch backend, every top-level ``aten::`` operation with its input shapes
(torch.profiler, ``record_shapes=True``) of one ``net(x, ...)`` call per point, and the number of Python function
calls of the same call on NumPy and torch (cProfile). Run it once per tree, then compare::

    PYTHONPATH=<tree-before> python benchmarks/studies/ab_ops.py before.json
    PYTHONPATH=<tree-after>  python benchmarks/studies/ab_ops.py after.json
    python benchmarks/studies/ab_ops.py --compare before.json after.json
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys


def _points():
    import numpy as np

    import hessquik_core as hq

    def resnet(d, m, w=16, depth=4, seed=2022):
        rng = np.random.default_rng(seed)
        return hq.NN(
            hq.SingleLayer(d, w, act="antitanh", seed=rng),
            hq.ResnetNN(w, depth, h=0.5, act="tanh", seed=rng),
            hq.SingleLayer(w, m, act="identity", seed=rng),
        )

    def mlp(d, w, depth=4, seed=2022):
        rng = np.random.default_rng(seed)
        layers = [hq.SingleLayer(d, w, act="tanh", seed=rng)]
        layers += [hq.SingleLayer(w, w, act="tanh", seed=rng) for _ in range(depth - 1)]
        layers.append(hq.SingleLayer(w, 1, act="identity", seed=rng))
        return hq.NN(*layers)

    hess = dict(gradient=True, hessian=True)
    lap = dict(laplacian=True)
    for d in (1, 8, 64, 256):
        yield f"W1 resnet d={d} m=1 n=1000", resnet(d, 1), d, 1000, hess
    for d, m in ((2, 2), (16, 16), (32, 8), (8, 32)):
        yield f"W2 resnet d={d} m={m} n=1000", resnet(d, m), d, 1000, hess
    for n in (256, 1000):
        for w in (64, 256):
            for d in (16, 64, 256, 1024):
                yield f"W3 mlp w={w} d={d} n={n}", mlp(d, w), d, n, lap


def record(path: str) -> None:
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    out = {}
    for name, net, d, n, kw in _points():
        x_np = rng.standard_normal((n, d))
        entry = {}
        for lib, x in (("numpy", x_np), ("torch", torch.from_numpy(x_np))):
            net(x, **kw)  # warm the parameter caches
            prof = cProfile.Profile()
            prof.enable()
            net(x, **kw)
            prof.disable()
            entry[f"{lib}_python_calls"] = pstats.Stats(prof).total_calls
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
            net(torch.from_numpy(x_np), **kw)
        # top-level aten ops: those not called from inside another aten op
        entry["torch_ops"] = [
            [e.name, str(e.input_shapes)]
            for e in p.events()
            if e.name.startswith("aten::")
            and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        ]
        out[name] = entry
        print(name, len(entry["torch_ops"]), "ops", flush=True)
    with open(path, "w") as f:
        json.dump(out, f)


def compare(before: str, after: str) -> None:
    a, b = (json.load(open(p)) for p in (before, after))
    print(
        "| point | torch ops before / after | same ops and shapes, same order | Python calls numpy | Python calls torch |"
    )
    print("|---|---|---|---|---|")
    for k in a:
        A, B = a[k]["torch_ops"], b[k]["torch_ops"]
        print(
            f"| {k} | {len(A)} / {len(B)} | {'yes' if A == B else 'NO'} | "
            f"{a[k]['numpy_python_calls']} / {b[k]['numpy_python_calls']} | "
            f"{a[k]['torch_python_calls']} / {b[k]['torch_python_calls']} |"
        )


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        record(sys.argv[1])

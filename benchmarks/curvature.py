"""Benchmark: parameter curvature of an MLP classifier, hessquik_core vs torch autograd.

    python -m benchmarks.curvature [--quick] [--out DIR]   (writes DIR/curvature.md, .json)

Workloads (softmax cross-entropy, tanh MLP, linear last layer):

* top-10 Hessian eigenvalues: hessquik_core Hessian-vector products (NumPy and
  torch backends) with SciPy ``eigsh`` or the native thick-restart Lanczos,
  against PyHessian-style torch autograd HVPs (``create_graph=True`` gradient,
  retained graph, one double-backward per product) with the same ``eigsh``;
* one Hessian-vector product, and a block of 10;
* per-example gradients ``(N, P)``: hessquik_core (one batched pass) against
  ``torch.func.vmap(torch.func.grad(...))``.

Every measurement runs in a fresh subprocess: one warm-up call, then the peak
resident memory is reset (``/proc/self/clear_refs``) and the timed calls run;
"peak MiB" is the high-water mark of resident memory above the resident size
just before the timed calls (CPU host memory: everything here runs on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/curvature.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np

from . import harness
from .measure import reset_rss_peak, rss_bytes, rss_peak_bytes

CONFIGS = {
    "full": {"widths": [64, 256, 256, 10], "n_eig": 1000, "n_pex": 256, "repeats": 5},
    "quick": {"widths": [32, 96, 64, 10], "n_eig": 256, "n_pex": 128, "repeats": 3},
    "smoke": {"widths": [4, 8, 6, 3], "n_eig": 16, "n_pex": 8, "repeats": 2},
}
K_EIG = 10
EIG_TOL = 1e-8


# --------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------


def _problem(cfg, n, dtype):
    import hessquik_core as hq

    w = cfg["widths"]
    blocks = [hq.SingleLayer(w[i], w[i + 1], act="tanh", seed=10 + i) for i in range(len(w) - 2)]
    blocks.append(hq.SingleLayer(w[-2], w[-1], act="identity", seed=99))
    net = hq.NN(*blocks)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, w[0])).astype(dtype)
    y = rng.integers(0, w[-1], n)
    return net, x, y


def _torch_model(net, dtype):
    import torch

    layers = []
    for i, leaf in enumerate(net.blocks):
        lin = torch.nn.Linear(leaf.in_features, leaf.out_features, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.asarray(leaf.K).T))
            lin.bias.copy_(torch.tensor(np.asarray(leaf.b)))
        layers.append(lin)
        if i < len(net.blocks) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def _autograd_hvp(model, x, y):
    """PyHessian's HVP: gradient with create_graph once, then one double-backward per product."""
    import torch

    params = [p for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def hvp(v):
        vs = [c.reshape(s) for c, s in zip(torch.split(v, sizes), shapes)]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])

    return hvp, sum(sizes)


def _torch_param_order(model):
    """Map torch's Linear (weight (out, in), bias) order to state_dict order (K (in, out), b)."""
    import torch

    perm = []
    off = 0
    for p in model.parameters():
        if p.ndim == 2:
            o, i = p.shape
            perm.append(torch.arange(o * i).reshape(o, i).T.reshape(-1) + off)
        else:
            perm.append(torch.arange(p.numel()) + off)
        off += p.numel()
    return torch.cat(perm)


def run_case(case: str, cfg: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from scipy.sparse.linalg import LinearOperator, eigsh

    from hessquik_core import curvature as cv

    task, impl = case.split(":")
    f64 = task in ("eig", "hvp", "hvp10")
    dtype = np.float64 if f64 else np.float32
    tdtype = torch.float64 if f64 else torch.float32
    n = cfg["n_eig"] if f64 else cfg["n_pex"]
    net, x, y = _problem(cfg, n, dtype)
    P = cv.parameter_layout(net).size
    v0 = np.random.default_rng(1).standard_normal(P)
    out = {"case": case, "P": P, "N": n, "dtype": np.dtype(dtype).name}
    count = {"matvecs": 0}

    if impl.startswith("autograd") or impl == "vmap":
        model = _torch_model(net, tdtype)
        xt, yt = torch.tensor(x), torch.tensor(y)
    if impl.startswith("ours"):
        backend = impl.split("_")[1]
        xa, ya = (torch.tensor(x), torch.tensor(y)) if backend == "torch" else (x, y)

    # -- build the callables ----------------------------------------------
    if task in ("eig", "hvp", "hvp10"):
        if impl.startswith("ours"):

            def setup():
                return cv.hessian_operator(net, xa, ya, "cross_entropy")

            op = setup()
            to_np = (lambda a: a.numpy()) if backend == "torch" else np.asarray
            asx = (lambda a: torch.tensor(a)) if backend == "torch" else (lambda a: a)
            mv = op.matvec
        else:
            hvp, _ = _autograd_hvp(model, xt, yt)
            perm = _torch_param_order(model)
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(perm.numel())
            to_np, asx = (lambda a: a.numpy()), (lambda a: torch.tensor(a))

            def mv(v):  # state_dict order in and out, like ours
                return hvp(v[inv])[perm]

        if task == "eig":
            method = impl.split("_")[2] if impl.startswith("ours") else "scipy"

            def run():
                count["matvecs"] = 0
                if method == "lanczos":
                    wrapped = _Counting(op, count)
                    vals, _ = cv.top_eigenpairs(wrapped, K_EIG, method="lanczos", tol=EIG_TOL, seed=1)
                    return np.sort(to_np(vals))[::-1]

                def f(v):
                    count["matvecs"] += 1 if v.ndim == 1 else v.shape[1]
                    if v.ndim == 2:
                        return np.stack([to_np(mv(asx(np.ascontiguousarray(c)))) for c in v.T], axis=1)
                    return to_np(mv(asx(np.ascontiguousarray(v))))

                A = LinearOperator((P, P), matvec=f, dtype=np.float64)
                vals = eigsh(A, k=K_EIG, which="LA", tol=EIG_TOL, v0=v0, return_eigenvectors=False)
                return np.sort(vals)[::-1]

            warm = lambda: mv(asx(v0))  # noqa: E731
        elif task == "hvp":
            vv = asx(v0)

            def run():
                return to_np(mv(vv))[:5]

            warm = run
        else:  # hvp10: ten products, as one block (ours) or a loop (autograd)
            V = np.random.default_rng(2).standard_normal((P, 10))
            if impl.startswith("ours"):
                Va = asx(V)

                def run():
                    return to_np(op.matmat(Va))[:3, 0]
            else:
                cols = [asx(np.ascontiguousarray(c)) for c in V.T]

                def run():
                    return to_np(torch.stack([mv(c) for c in cols], 1))[:3, 0]

            warm = run
    else:  # per-example gradients
        if impl.startswith("ours"):

            def run():
                A = cv.per_example_gradients(net, xa, ya, "cross_entropy")
                return float((A[3, :] ** 2).sum()), int(A.shape[1])  # order-free checksum of one row
        else:
            from torch.func import functional_call, grad, vmap

            params = {k: p.detach() for k, p in model.named_parameters()}

            def single(p, xi, yi):
                return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

            def run():
                g = vmap(grad(single), in_dims=(None, 0, 0))(params, xt, yt)
                return float(sum((a[3] ** 2).sum() for a in g.values())), int(
                    sum(a[0].numel() for a in g.values())
                )

        warm = run

    # -- measure ------------------------------------------------------------
    warm()
    base = rss_bytes() or 0
    ok = reset_rss_peak()
    reps = 2 if task == "eig" else cfg["repeats"]
    times, walls = [], []
    res = None
    for _ in range(reps):
        # single-threaded work: process CPU time is immune to time-sharing with other jobs
        t0, w0 = time.process_time(), time.perf_counter()
        res = run()
        times.append(time.process_time() - t0)
        walls.append(time.perf_counter() - w0)
    peak = rss_peak_bytes() or 0
    out.update(
        seconds=float(np.min(times)),
        wall=float(np.min(walls)),
        peak_mib=max(peak - base, 0) / 2**20,
        peak_reset=ok,
        matvecs=count["matvecs"],
        result=np.asarray(res, dtype=float).tolist() if task != "pex" else res,
    )
    return out


def _Counting(op, count):
    """``op`` wrapped to count the vectors it is applied to (for the native Lanczos)."""
    from hessquik_core.curvature import LinearOperatorBase

    class Counting(LinearOperatorBase):
        def _matmat(self, V):
            count["matvecs"] += V.shape[1]
            return op._matmat(V)

    return Counting(op.size, op.xp, op.dtype, op.device)


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

CASES = [
    "eig:ours_numpy_scipy",
    "eig:ours_numpy_lanczos",
    "eig:ours_torch_scipy",
    "eig:ours_torch_lanczos",
    "eig:autograd",
    "hvp:ours_numpy",
    "hvp:ours_torch",
    "hvp:autograd",
    "hvp10:ours_numpy",
    "hvp10:ours_torch",
    "hvp10:autograd",
    "pex:ours_numpy",
    "pex:ours_torch",
    "pex:vmap",
]


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _spawn(case, cfg_name):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.curvature",
        "--worker",
        case,
        "--config",
        cfg_name,
        "--threads",
        "1",
    ]
    env = dict(os.environ, **{k: "1" for k in _THREAD_VARS})
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ratio(ref, r):
    return f"{ref / r:.2f}x" if r > 0 else "n/a"


def _report(data: dict) -> str:
    rows, cfg_name = data["rows"], data["config"]
    cfg = CONFIGS[cfg_name]
    by = {r["case"]: r for r in rows}
    w = cfg["widths"]
    P = rows[0]["P"]
    flag = " --quick" if cfg_name == "quick" else ""
    lines = [
        f"# Parameter curvature benchmark (`python -m benchmarks.curvature{flag}`)",
        "",
        *harness.machine_md(data["machine"]),
        f"MLP classifier `{w}` (tanh, linear last layer), P = {P} parameters, softmax cross-entropy "
        f"(mean over examples). Hessian work in float64 on N = {cfg['n_eig']} examples; per-example "
        f"gradients in float32 on N = {cfg['n_pex']}.",
        "",
        "Method: every row is a fresh process; one warm-up call, then the fastest of "
        f"{cfg['repeats']} timed calls (eigensolves: of 2). Times are process CPU seconds of "
        "single-threaded runs (immune to time-sharing with other jobs on this shared machine; wall "
        "seconds alongside). Peak MiB: resident-memory high-water mark above the resident size just "
        "before the timed calls (host memory: CPU only, no GPU was available). Ratio = reference "
        "time / this time (> 1: faster than the reference).",
        "",
        f"## Top-{K_EIG} Hessian eigenvalues (which='LA', tol={EIG_TOL:g}, same start vector)",
        "",
        "| implementation | CPU s | wall s | products | CPU s / product | peak MiB | ratio vs autograd |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ref = by["eig:autograd"]
    names = {
        "eig:ours_numpy_scipy": "hessquik_core NumPy + scipy eigsh",
        "eig:ours_numpy_lanczos": "hessquik_core NumPy + native Lanczos",
        "eig:ours_torch_scipy": "hessquik_core torch + scipy eigsh",
        "eig:ours_torch_lanczos": "hessquik_core torch + native Lanczos",
        "eig:autograd": "torch autograd HVP + scipy eigsh (PyHessian style)",
    }
    for case, label in names.items():
        r = by[case]
        per = r["seconds"] / max(r["matvecs"], 1)
        lines.append(
            f"| {label} | {r['seconds']:.3f} | {r['wall']:.3f} | {r['matvecs']} | {per:.2e} "
            f"| {r['peak_mib']:.1f} | {_ratio(ref['seconds'], r['seconds'])} |"
        )
    top = np.array(ref["result"])
    dev = max(np.max(np.abs(np.array(by[c]["result"]) - top)) for c in names)
    lines += [
        "",
        f"Top eigenvalues (autograd): {np.array2string(top[:4], precision=6)} ...; the largest deviation "
        f"of any implementation from them is {dev:.1e}.",
        "",
        "## Hessian-vector products",
        "",
        "| implementation | 1 product CPU s | ratio | 10 products CPU s | ratio | peak MiB (10) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for impl, label in (
        ("ours_numpy", "hessquik_core NumPy (10 = one block)"),
        ("ours_torch", "hessquik_core torch (10 = one block)"),
        ("autograd", "torch autograd, retained graph (10 = loop)"),
    ):
        a, b = by[f"hvp:{impl}"], by[f"hvp10:{impl}"]
        lines.append(
            f"| {label} | {a['seconds']:.4f} | {_ratio(by['hvp:autograd']['seconds'], a['seconds'])} "
            f"| {b['seconds']:.4f} | {_ratio(by['hvp10:autograd']['seconds'], b['seconds'])} "
            f"| {b['peak_mib']:.1f} |"
        )
    lines += [
        "",
        "## Per-example gradients (N, P)",
        "",
        "| implementation | CPU s | wall s | peak MiB | ratio vs vmap(grad) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for impl, label in (
        ("ours_numpy", "hessquik_core NumPy"),
        ("ours_torch", "hessquik_core torch"),
        ("vmap", "torch.func.vmap(grad)"),
    ):
        r = by[f"pex:{impl}"]
        lines.append(
            f"| {label} | {r['seconds']:.4f} | {r['wall']:.4f} | {r['peak_mib']:.1f} "
            f"| {_ratio(by['pex:vmap']['seconds'], r['seconds'])} |"
        )
    out_mib = cfg["n_pex"] * P * 4 / 2**20
    bad = {c: e for c, e in data.get("agreement", {}).items() if e > (1e-4 if c.startswith("pex") else 1e-6)}
    lines += [
        "",
        f"The (N, P) float32 result itself is {out_mib:.1f} MiB.",
        "",
        "Agreement with the torch reference of each task (largest relative deviation): "
        + ", ".join(f"{c} {e:.1e}" for c, e in data.get("agreement", {}).items())
        + (f". **Disagreeing: {sorted(bad)}**" if bad else "."),
        "",
        "## Lanczos route",
        "",
        "`top_eigenpairs(method='auto')` takes SciPy's ARPACK for host arrays (NumPy; torch on CPU) and the "
        "native thick-restart Lanczos for device arrays (CUDA torch, CuPy). The CPU rows above are the "
        "measurement behind the host choice. The device choice (Krylov basis kept on the GPU, no "
        "per-product transfer and synchronisation) is by reasoning only: no GPU was available here.",
        "",
    ]
    return "\n".join(lines)


def run(args, desc: dict) -> dict:
    cfg_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    rows = []
    for case in CASES:
        r = _spawn(case, cfg_name)
        harness.log(
            f"{case:28s} {r['seconds']:9.4f} s  peak {r['peak_mib']:8.1f} MiB  products {r['matvecs']}"
        )
        rows.append(r)
    return {"config": cfg_name, "rows": rows, "agreement": agreement(rows)}


#: the reference of each task: the torch autograd (or vmap) row
_REF = {"eig": "eig:autograd", "hvp": "hvp:autograd", "hvp10": "hvp10:autograd", "pex": "pex:vmap"}


def agreement(rows: list[dict]) -> dict:
    """Each row's result against its task's torch reference (relative to the reference's
    largest entry; per-example gradients by an order-free checksum of one row). Every case
    runs in its own process, so the check follows the timing instead of preceding it; a
    deviation above 1e-6 (float32 per-example gradients: 1e-4) is marked in the report."""
    by = {r["case"]: r for r in rows}
    out = {}
    for r in rows:
        ref = by.get(_REF[r["case"].split(":")[0]])
        if ref is not None:
            out[r["case"]] = harness.compare(
                {"r": np.asarray(r["result"], float)}, {"r": np.asarray(ref["result"], float)}
            )[0]
    return out


def write_all(out: Path, data: dict, plots: bool = True) -> None:
    harness.write_outputs(out, "curvature", data, markdown=_report)


def main(argv=None, *, configure_threads: bool = True) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.curvature", description=__doc__.splitlines()[0])
    harness.add_common_args(ap, threads=1)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        harness.set_threads(1)
        print(json.dumps(run_case(args.worker, CONFIGS[args.config])))
        return 0
    args.quick = args.quick or args.smoke
    return harness.main(args, "curvature", run, write_all, configure_threads=configure_threads)


if __name__ == "__main__":
    sys.exit(main())

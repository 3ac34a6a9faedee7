r"""W7 (b): time to accuracy of the PINN optimizers of :mod:`hessquik_core.pinn` (run through ``benchmarks.w7``).

Four problems of the Kronecker-factored-curvature-for-PINNs study, float64, tanh MLPs
with a linear read-out, the **same initial weights and points for every optimizer**:

========== ====================== ==================================================== ===================
problem    network                solution and equation on :math:`[0,1]^d`              points
========== ====================== ==================================================== ===================
poisson2d  2-64-1                 :math:`u^*=\sin\pi x\,\sin\pi y`, :math:`-\Delta u=f`   900 + 120 boundary
poisson5d  5-64-1                 :math:`u^*=\sum_i\cos\pi x_i`                          3000 + 500 boundary
heat1d     2-64-1 (x, t)          :math:`\partial_t u=\tfrac14\partial_{xx}u`,
                                  :math:`u^*=e^{-\pi^2t/4}\sin\pi x`                     900 + 120 + 120
poisson10d 10-256-256-128-128-1   harmonic :math:`u^*=\sum_{i\le5}x_{2i-1}x_{2i}`        1000 + 200 boundary
========== ====================== ==================================================== ===================

Optimizers (``--optimizers``): ``Adam`` (lr 1e-3), ``L-BFGS``, ``GN`` (Levenberg–Marquardt
Gauss–Newton, ``solver="dense"`` where :math:`P \le N`, else ``"kernel"``), ``KFAC``
(automatic learning rate and momentum), and the peer ``GN (torch.func J)``: the same
``GaussNewton`` optimizer on the same torch problem whose residual Jacobian :math:`J`
(and only :math:`J`: residuals, their derivative with respect to the quantities, the
solver and the line search are this library's) is built by ``torch.func`` — ``vmap`` over
the points of ``jacrev`` over the parameters of the nested-AD quantities. Its :math:`J` is
checked against this library's at the initial weights before it runs.

Each optimizer runs until the largest budget (``--budgets``, default 10,60,300 s of its own
step time; evaluating the error is not counted), convergence, or a relative L2 error
below ``--stop-below``. The error :math:`\|u_\theta-u^*\|_2/\|u^*\|_2` on 2000 random
points is evaluated after every step; reported: the error at each budget (the last step
completed within it), the time to reach 1e-4, 1e-6, 1e-7, the figure of error against
wall time and against step, and the targets of issue 22.

The timed unit is a whole optimisation run, one per optimizer and problem (its own step
times are the measurement), so this part does not go through
:func:`benchmarks.harness.check_then_time`; what is checked before a run is that every
optimizer starts from the same loss and that the peer's :math:`J` agrees with this library's.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import harness, nets

STEM = "w7_accuracy"
PI = math.pi
THRESHOLDS = (1e-4, 1e-6, 1e-7)
OURS_GN, TF_GN = "GN", "GN (torch.func J)"
OURS_ENGD, TF_ENGD = "ENGD", "ENGD (torch.func J)"
#: problem -> (error target, within seconds), the issue's targets
TARGETS = {
    "poisson2d": (1e-10, 10.0),
    "poisson5d": (1e-8, 60.0),
    "heat1d": (1e-8, 60.0),
    "poisson10d": (1e-5, None),
}


@dataclass(frozen=True)
class Spec:
    name: str
    widths: tuple[int, ...]
    n_int: int
    n_bnd: int


SPECS = {
    "poisson2d": Spec("Poisson 2-D", (2, 64), 900, 120),
    "poisson5d": Spec("Poisson 5-D", (5, 64), 3000, 500),
    "heat1d": Spec("heat 1-D", (2, 64), 900, 120),
    "poisson10d": Spec("Poisson 10-D", (10, 256, 256, 128, 128), 1000, 200),
}
#: tiny versions for the test suite (``--smoke``)
SMOKE = {
    k: Spec(s.name, (s.widths[0], 8) + ((8,) if k == "poisson10d" else ()), 40, 16) for k, s in SPECS.items()
}


def _exact(key: str, x, xp):
    if key == "poisson2d":
        return xp.sin(PI * x[:, 0]) * xp.sin(PI * x[:, 1])
    if key == "poisson5d":
        return xp.sum(xp.cos(PI * x), axis=1)
    if key == "heat1d":
        return xp.exp(-(PI**2) * x[:, 1] / 4) * xp.sin(PI * x[:, 0])
    return sum(x[:, 2 * i] * x[:, 2 * i + 1] for i in range(x.shape[1] // 2))


def _ns(a):
    import array_api_compat

    return array_api_compat.array_namespace(a)


def _boundary(n: int, d: int, rng) -> np.ndarray:
    """Uniform points on the faces of the unit cube (one coordinate set to 0 or 1)."""
    x = rng.uniform(0.0, 1.0, (n, d))
    x[np.arange(n), rng.integers(0, d, n)] = rng.integers(0, 2, n)
    return x


def terms_of(key: str, spec: Spec, rng) -> list:
    """The residual terms (NumPy float64 points; converted per backend by :func:`problem_of`)."""
    from hessquik_core import pinn

    d = spec.widths[0]
    ex = lambda q, x: _exact(key, x, _ns(x))  # noqa: E731
    xi = rng.uniform(0.0, 1.0, (spec.n_int, d))
    if key == "heat1d":
        xb = rng.uniform(0.0, 1.0, (spec.n_bnd, 2))
        xb[:, 0] = rng.integers(0, 2, spec.n_bnd)
        x0 = rng.uniform(0.0, 1.0, (spec.n_bnd, 2))
        x0[:, 1] = 0.0
        return [
            pinn.Residual(
                xi,
                lambda q, z: q.gradient[:, 1] - 0.25 * q.hessian_diagonal[:, 0],
                needs=("gradient", "hessian_diagonal"),
                name="interior",
            ),
            pinn.Residual(xb, lambda q, z: q.value, needs=("value",), name="boundary"),
            pinn.Residual(x0, lambda q, z: q.value - ex(q, z), needs=("value",), name="initial"),
        ]
    # -Δu* = f: 2π² u* (2-D), π² Σ cos(π x_i) = π² u* (5-D), 0 (10-D, harmonic)
    c = {"poisson2d": 2 * PI**2, "poisson5d": PI**2, "poisson10d": 0.0}[key]
    return [
        pinn.Residual(xi, lambda q, x: -q.laplacian - c * ex(q, x), needs=("laplacian",), name="interior"),
        pinn.Residual(
            _boundary(spec.n_bnd, d, rng), lambda q, x: q.value - ex(q, x), needs=("value",), name="boundary"
        ),
    ]


def problem_of(key: str, spec: Spec, backend: str, seed: int, jacobian: str = "ours"):
    """A fresh network (the same initial weights for every call with ``seed``) and its Problem."""
    import hessquik_core as hq
    from hessquik_core import pinn

    rng = np.random.default_rng(seed)
    net = hq.FullyConnectedNN([*spec.widths, 1], act="tanh", output_act=None, seed=rng)
    terms = terms_of(key, spec, rng)
    if backend == "torch":
        import torch

        net.to("torch", dtype=torch.float64)
        terms = [pinn.Residual(torch.tensor(t.points), t.fn, needs=t.needs, name=t.name) for t in terms]
    cls = _torch_func_problem() if jacobian == "torch.func" else pinn.Problem
    return cls(net, terms)


def _torch_func_problem():
    from hessquik_core import pinn

    class _TorchFuncProblem(pinn.Problem):
        r"""The peer: :math:`J` built by ``torch.func`` (nested AD over the network), the rest as :class:`Problem`.

        :math:`J_t = s_t \sum_q c_q\,\partial q/\partial\theta`, with this library's coefficients
        :math:`c_q = \partial r/\partial q` (derivatives of the small residual function, not of the
        network) and :math:`\partial q/\partial\theta` from ``vmap(jacrev)`` of the quantity."""

        def jacobian(self):
            import torch
            from torch.func import hessian, jacrev, vmap

            lin = self._linearization()
            if self._jac is None:
                f = nets.param_function(nets.spec_of(self.net), "torch")
                theta = self.parameters()
                ps = [
                    theta[o : o + s].reshape(sh)
                    for o, s, sh in zip(self.layout.offsets, self.layout.sizes, self.layout.shapes)
                ]
                u = lambda ps, z: f(ps, z)[0]  # noqa: E731
                qf = {
                    "value": u,
                    "gradient": lambda ps, z: jacrev(u, argnums=1)(ps, z),
                    "laplacian": lambda ps, z: torch.diagonal(hessian(u, argnums=1)(ps, z)).sum(),
                    "hessian_diagonal": lambda ps, z: torch.diagonal(hessian(u, argnums=1)(ps, z)),
                }
                rows = []
                for t, li in zip(self.terms, lin):
                    Jt = 0.0
                    for q in t.needs:
                        blocks = vmap(jacrev(qf[q]), in_dims=(None, 0))(ps, t.points)
                        K = li.coef[q].shape[1]  # components: 1, or d (gradient, diagonal)
                        Jq = torch.cat([b.reshape(t.n, K, -1) for b in blocks], dim=2)
                        Jt = Jt + torch.einsum("nk,nkp->np", li.coef[q], Jq)
                    rows.append(li.scale * Jt)
                self._jac = torch.cat(rows, dim=0)
            return self._jac

    return _TorchFuncProblem


# --------------------------------------------------------------------------
# optimizers and the runs
# --------------------------------------------------------------------------


def _gn(pr):
    from hessquik_core import pinn

    return pinn.GaussNewton(pr, solver="dense" if pr.P <= pr.N else "kernel")


def _engd(pr):
    from hessquik_core import pinn

    return pinn.ENGD(pr, solver="dense" if pr.P <= pr.N else "kernel")


def _make(name: str):
    from hessquik_core import pinn

    return {
        "Adam": lambda pr: pinn.Adam(pr, lr=1e-3),
        "L-BFGS": lambda pr: pinn.LBFGS(pr),
        OURS_GN: _gn,
        "KFAC": lambda pr: pinn.KFAC(pr),
        TF_GN: _gn,
        OURS_ENGD: _engd,
        TF_ENGD: _engd,
    }[name]


OPTIMIZERS = ("Adam", "L-BFGS", OURS_GN, OURS_ENGD, "KFAC", TF_GN, TF_ENGD)


def train(key: str, spec: Spec, opt_name: str, args) -> dict:
    """One optimizer from the shared initial weights: its error curve ``[(seconds, step, error)]``."""
    tf = opt_name in (TF_GN, TF_ENGD)
    backend = "torch" if tf else args.backend
    rec: dict = {"problem": key, "optimizer": opt_name, "backend": backend, "status": "ok", "note": ""}
    try:
        pr = problem_of(key, spec, backend, args.seed, "torch.func" if tf else "ours")
        rec.update(P=pr.P, N=pr.N, loss0=pr.loss())
        if tf:  # check the peer's J against this library's at the initial weights, before it runs
            ref = problem_of(key, spec, "torch", args.seed).jacobian().numpy()
            err, where = harness.compare({"J": pr.jacobian().numpy()}, {"J": ref})
            rec["rel_err"] = err
            if not err <= harness.tolerance("float64"):
                rec.update(status="mismatch", note=f"J disagrees with hessquik_core: rel. error {err:.2e}")
                return rec
        # one untimed step on a throwaway copy: imports and first-call set-up are not the method's cost
        _make(opt_name)(problem_of(key, spec, backend, args.seed, "torch.func" if tf else "ours")).step()
        opt = _make(opt_name)(pr)
    except Exception as e:  # e.g. MemoryBudgetError: a result with its reason
        rec.update(status="error", note=f"{type(e).__name__}: {e}"[:300])
        return rec
    rng = np.random.default_rng(args.seed + 1)
    xt = rng.uniform(0.0, 1.0, (2000 if not args.smoke else 200, spec.widths[0]))
    xt = pr.xp.asarray(xt) if backend == "numpy" else __import__("torch").tensor(xt)
    ut = np.asarray(_exact(key, xt, pr.xp), dtype=np.float64)

    def error() -> float:
        u = np.asarray(pr.net(xt).value[:, 0], dtype=np.float64)
        return float(np.linalg.norm(u - ut) / np.linalg.norm(ut))

    curve, seconds, t_end = [(0.0, 0, error())], 0.0, max(args.budgets)
    wall0 = time.perf_counter()
    try:
        while seconds < t_end and opt.converged is None:
            step = opt.step()
            seconds += step.seconds
            curve.append((seconds, step.step + 1, error()))
            if not math.isfinite(curve[-1][2]) or curve[-1][2] <= args.stop_below:
                break
    except Exception as e:
        rec.update(status="error", note=f"failed at step {len(curve)}: {type(e).__name__}: {e}"[:300])
    rec["stopped"] = opt.converged or (
        "error below --stop-below" if curve[-1][2] <= args.stop_below else "budget"
    )
    rec["wall_s"] = time.perf_counter() - wall0
    rec.update(loss=pr.loss(), solver=getattr(opt, "solver", None))
    c = np.array(curve)
    rec.update(steps=int(c[-1, 1]), seconds=float(c[-1, 0]), final_error=float(c[-1, 2]))
    for b in args.budgets:
        rec[f"error_at_{b:g}s"] = _err_at(c, b)
    for th in THRESHOLDS + (args.stop_below,):
        hit = np.nonzero(c[:, 2] <= th)[0]
        rec[f"time_to_{th:g}"] = float(c[hit[0], 0]) if hit.size else None
    keep = np.unique(np.geomspace(1, len(c), min(len(c), 400)).astype(int) - 1)  # log-spaced, for JSON
    rec["curve"] = c[keep].tolist()
    rec["_full"] = c
    return rec


def _time_to(c: np.ndarray, e: float) -> float | None:
    hit = np.nonzero(c[:, 2] <= e)[0]
    return float(c[hit[0], 0]) if hit.size else None


def targets(rows: list[dict], budgets: list[float]) -> list[dict]:
    """The issue's targets per problem, met or missed, with the numbers."""
    out = []
    for key in dict.fromkeys(r["problem"] for r in rows):
        by = {r["optimizer"]: r for r in rows if r["problem"] == key and r["status"] == "ok"}
        ours = {k: v for k, v in by.items() if k in (OURS_GN, OURS_ENGD, "KFAC")}
        err, within = TARGETS[key]
        if ours:
            b = within if within is not None else max(budgets)
            best = min(ours, key=lambda k: _err_at(ours[k]["_full"], b))
            e = _err_at(ours[best]["_full"], b)
            out.append(
                dict(
                    problem=key,
                    target=f"rel. L2 ≤ {err:g} within {b:g} s",
                    got=f"{e:.2e} ({best})"
                    + (f"; runs of {max(budgets):g} s only" if b > max(budgets) else ""),
                    met=e <= err,
                )
            )
        if key == "poisson10d" and OURS_GN in by:
            first = [by[k] for k in ("Adam", "L-BFGS") if k in by]
            below = all(_at(by[OURS_GN], b) < _at(f, b) for f in first for b in budgets)
            out.append(
                dict(
                    problem=key,
                    target="GN below Adam and L-BFGS at every budget",
                    got=", ".join(f"{b:g} s: {_at(by[OURS_GN], b):.1e}" for b in budgets),
                    met=below,
                )
            )
        for mine, peer in ((OURS_GN, TF_GN), (OURS_ENGD, TF_ENGD)):
            if mine not in by or peer not in by:
                continue
            a, t = by[mine], by[peer]
            e = max(a["final_error"], t["final_error"])  # the error both reached
            ta, tt = _time_to(a["_full"], e), _time_to(t["_full"], e)
            ratio = None if not (ta and tt) else tt / ta
            out.append(
                dict(
                    problem=key,
                    target=f"{mine} ≥ 5× faster than {peer} to the same error ({e:.1e})",
                    got=("—" if ratio is None else f"{ratio:.1f}× ({ta:.2f} s vs {tt:.2f} s)")
                    + (
                        "" if a["backend"] == t["backend"] else f"; ours on {a['backend']}, the peer on torch"
                    ),
                    met=ratio is not None and ratio >= 5,
                )
            )
    return out


def _err_at(c: np.ndarray, b: float) -> float:
    """The error of the last step completed within ``b`` seconds (``c``: ``[(seconds, step, error)]``)."""
    return float(c[c[:, 0] <= b, 2][-1])


def _at(r: dict, b: float) -> float:
    return r.get(f"error_at_{b:g}s", math.inf)


def run(args, machine: dict) -> dict:
    keys = args.problems or (["poisson2d"] if args.quick else list(SPECS))
    specs = SMOKE if args.smoke else SPECS
    if args.quick and args.budgets == DEFAULT_BUDGETS:
        args.budgets = [0.5] if args.smoke else [1.0, 2.0]
    names = args.optimizers.split(",") if args.optimizers else list(OPTIMIZERS)
    if bad := [n for n in names if n not in OPTIMIZERS]:
        raise SystemExit(f"unknown optimizers {bad}; expected some of {list(OPTIMIZERS)}")
    rows = []
    for key in keys:
        for name in names:
            harness.log(f"{SPECS[key].name}: {name} ({max(args.budgets):g} s at most)")
            if name in (TF_GN, TF_ENGD) and importlib.util.find_spec("torch") is None:
                rows.append(
                    dict(problem=key, optimizer=name, status="unavailable", note="torch is not installed")
                )
                continue
            r = train(key, specs[key], name, args)
            harness.log(
                f"  {r['status']}: error {r.get('final_error', math.nan):.2e} after "
                f"{r.get('steps', 0)} steps, {r.get('seconds', 0):.1f} s {r['note']}"
            )
            rows.append(r)
    met = targets(rows, args.budgets)  # from the full curves, which are not kept
    for r in rows:
        r.pop("_full", None)
    return {
        "title": "W7 (b): time to accuracy of the PINN optimizers",
        "argv": sys.argv[1:],
        "budgets": args.budgets,
        "stop_below": args.stop_below,
        "rows": rows,
        "targets": met,
    }


# --------------------------------------------------------------------------
# table, figure, command line
# --------------------------------------------------------------------------


def markdown(data: dict) -> str:
    rows, budgets = data["rows"], data["budgets"]
    out = [f"# {data['title']}", ""] + ([f"*{data['label']}*", ""] if data.get("label") else [])
    out += harness.machine_md(data["machine"])
    out += [
        "Relative L2 error on random points; time: the optimizer's own step time (error evaluation",
        "excluded); the same initial weights and points for every optimizer. `—`: not reached.",
        "",
    ]
    ths = [*THRESHOLDS, data["stop_below"]]
    body = []
    for r in rows:
        if r["status"] != "ok":
            continue
        body.append(
            [
                SPECS[r["problem"]].name,
                r["optimizer"] + (f" ({r['solver']})" if r.get("solver") else ""),
                r["backend"],
                r["P"],
                r["N"],
                r["steps"],
                *(f"{_at(r, b):.1e}" for b in budgets),
                *(
                    "—" if r.get(f"time_to_{t:g}") is None else harness.fmt_time(r[f"time_to_{t:g}"])
                    for t in ths
                ),
                r["stopped"],
            ]
        )
    out += harness.md_table(
        [
            "problem",
            "optimizer",
            "backend",
            "P",
            "N",
            "steps",
            *(f"error at {b:g} s" for b in budgets),
            *(f"time to {t:g}" for t in ths),
            "stopped by",
        ],
        body,
    )
    out += ["", "## Targets (issue 22)", ""]
    out += harness.md_table(
        ["problem", "target", "measured", ""],
        (
            [SPECS[t["problem"]].name, t["target"], t["got"], "met" if t["met"] else "**missed**"]
            for t in data["targets"]
        ),
    )
    out += [""] + harness.notes_md(rows, lambda r: SPECS[r["problem"]].name)
    return "\n".join(out + harness.agreement_md(rows, ("problem", "optimizer"), "J at the initial weights"))


def plot(out: Path, data: dict) -> Path | None:
    plt = harness.pyplot()
    rows = [r for r in data["rows"] if r.get("curve")]
    probs = list(dict.fromkeys(r["problem"] for r in rows))
    if plt is None or not probs:
        return None
    fig, ax = plt.subplots(
        len(probs), 2, figsize=(11, 3.8 * len(probs)), squeeze=False, constrained_layout=True
    )
    for i, key in enumerate(probs):
        for r in (r for r in rows if r["problem"] == key):
            c = np.array(r["curve"])
            c = c[c[:, 1] >= 1]  # from the first step on (log axes; the initial error is the same for all)
            ax[i, 0].loglog(c[:, 0], c[:, 2], label=r["optimizer"])
            ax[i, 1].loglog(c[:, 1], c[:, 2], label=r["optimizer"])
        ax[i, 0].set(xlabel="optimizer wall time [s]")
        ax[i, 1].set(xlabel="step")
        for a in ax[i]:
            a.set(ylabel="relative L2 error", title=SPECS[key].name)
            a.grid(True, which="both", alpha=0.3)
        ax[i, 0].legend(fontsize=7)
    fig.suptitle(data["title"], fontsize=10)
    path = out / f"{STEM}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


DEFAULT_BUDGETS = [10.0, 60.0, 300.0]


def add_args(g) -> None:
    g.add_argument(
        "--problems",
        type=lambda s: s.split(","),
        default=None,
        help=f"default all; --quick: poisson2d; of {', '.join(SPECS)}",
    )
    g.add_argument("--optimizers", default=None, help=f"comma-separated, of {', '.join(OPTIMIZERS)}")
    g.add_argument(
        "--budgets",
        type=lambda s: [float(v) for v in s.split(",")],
        default=DEFAULT_BUDGETS,
        help="wall-clock budgets in seconds (default 10,60,300; --quick: 1,2)",
    )
    g.add_argument(
        "--backend",
        choices=("torch", "numpy"),
        default="torch",
        help=f"this library's optimizers (default torch, as {TF_GN})",
    )
    g.add_argument("--stop-below", type=float, default=1e-12, help="stop a run at this relative L2 error")
    g.add_argument("--seed", type=int, default=0, help="initial weights and points")


def write(out: Path, data: dict, plots: bool) -> None:
    fields = [
        "problem",
        "optimizer",
        "backend",
        "solver",
        "status",
        "P",
        "N",
        "steps",
        "seconds",
        "final_error",
        *(f"error_at_{b:g}s" for b in data["budgets"]),
        *(f"time_to_{t:g}" for t in (*THRESHOLDS, data["stop_below"])),
        "stopped",
        "rel_err",
        "note",
    ]
    harness.write_outputs(
        out,
        STEM,
        data,
        markdown=markdown,
        csv_fields=fields,
        plot=plot,
        plots=plots,
        image_alt="error against time and step",
    )

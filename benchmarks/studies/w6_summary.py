r"""The W6 targets across every committed W6 run: one table and one figure.

``python -m benchmarks.studies.w6_summary [--results DIR]`` reads every
``w6*.json`` written by :mod:`benchmarks.training_step` in ``DIR`` (default
``benchmarks/results``) and writes ``w6_summary.md`` and
``w6_summary.png`` there. Issue 13's targets for the eager torch step are

* not slower than JAX + folx at any d (ratio ours / folx ≤ 1), and
* at least 3x faster than ``torch.func`` (ratio ours / torch.func ≤ 1/3),

so the table gives, for every (loss, width, dtype, d), the ratio
``ours-auto / peer`` (below 1: this library's step is faster), and marks
each target met or missed; the figure plots both ratios against d with the
two target lines. ``ours-compiled`` (``torch.compile`` of the same loss) is
shown next to it where it was run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/studies/w6_summary.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "benchmarks.studies"

#: (peer, target ratio ours / peer, label); the JAX peer of a loss other than the
#: Laplacian is plain ``jax`` (folx computes Laplacians only)
TARGETS = (("jax+folx", 1.0, "≤ 1 vs JAX + folx"), ("torch.func", 1.0 / 3.0, "≤ 1/3 vs torch.func"))


def _peer(peer: str, loss: str) -> str:
    return "jax" if peer == "jax+folx" and loss != "laplacian" else peer


_OK = ("ok", "once")


def load(results: Path) -> list[dict]:
    """Every timed row of every ``w6*.json`` in ``results`` (the newest file wins a point)."""
    rows: dict[tuple, dict] = {}
    files = sorted(results.glob("w6*.json"), key=lambda p: p.stat().st_mtime)
    for f in files:
        data = json.loads(f.read_text())
        for r in data.get("rows", []):
            key = (r["loss"], r["width"], r["dtype"], r["d"], r["peer"])
            rows[key] = dict(r, source=f.name)
    return list(rows.values())


def _time(rows, loss, w, dt, d, peer):
    for r in rows:
        if (r["loss"], r["width"], r["dtype"], r["d"], r["peer"]) == (loss, w, dt, d, peer):
            return r["min_s"] if r["status"] in _OK else None
    return None


def table(rows: list[dict]) -> str:
    combos = sorted({(r["loss"], r["width"], r["dtype"]) for r in rows}, key=lambda c: (c[0], c[1], c[2]))
    head = [
        "# W6 targets: every configuration run so far",
        "",
        "Ratio = step time of `ours-auto` (eager torch) / peer: **below 1 this library is faster**. "
        "Targets (issue 13): ≤ 1 against JAX + folx, ≤ 0.33 against `torch.func`. "
        "`compiled` is `torch.compile(loss, fullgraph=True)` of the same loss, "
        "ratio to JAX + folx. ✓ met, ✗ missed, – peer not run (over the time or memory cap, or folx "
        "for a loss other than the Laplacian). Produced by `python -m benchmarks.studies.w6_summary` from the "
        "`w6*.json` files listed in the last column; their `.md` files hold the times, machine and load. "
        "For the `gradient` and `hessian_diagonal` losses the JAX peer is `jax` (`jit(value_and_grad)` "
        "over `vmap(jax.grad)` / `vmap(jax.hessian)`; folx computes Laplacians only).",
        "",
    ]
    out: list[str] = []
    met = missed = 0
    for loss, w, dt in combos:
        ds = sorted({r["d"] for r in rows if (r["loss"], r["width"], r["dtype"]) == (loss, w, dt)})
        out += [
            f"## `{loss}` loss, width {w}, {dt}",
            "",
            f"| d | ours-auto | / {_peer('jax+folx', loss)} | / torch.func | compiled / {_peer('jax+folx', loss)} | file |",
            "|---|---|---|---|---|---|",
        ]
        for d in ds:
            t = _time(rows, loss, w, dt, d, "ours-auto")
            cells = []
            for peer, target, _ in TARGETS:
                tp = _time(rows, loss, w, dt, d, _peer(peer, loss))
                if t is None or tp is None:
                    cells.append("–")
                    continue
                ratio = t / tp
                ok = ratio <= target
                met += ok
                missed += not ok
                cells.append(f"{ratio:.2f} {'✓' if ok else '✗'}")
            tc = _time(rows, loss, w, dt, d, "ours-compiled")
            tf = _time(rows, loss, w, dt, d, _peer("jax+folx", loss))
            comp = f"{tc / tf:.2f}" if tc is not None and tf is not None else ""
            src = next(
                (
                    r["source"]
                    for r in rows
                    if (r["loss"], r["width"], r["dtype"], r["d"]) == (loss, w, dt, d)
                ),
                "",
            )
            tt = "–" if t is None else (f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s")
            out.append(f"| {d} | {tt} | {cells[0]} | {cells[1]} | {comp} | {src} |")
        out.append("")
    head.append(
        f"Over all points where both were timed: **{met} targets met, {missed} missed** "
        "(the misses and the operations that cost their time: `benchmarks/analysis.md`, W6).\n"
    )
    return "\n".join(head + out) + "\n"


def figure(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    combos = sorted({(r["width"], r["dtype"]) for r in rows if r["loss"] == "laplacian"})
    if not combos:
        return None
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(11, 4.2), squeeze=False)
    for ax, (peer, target, label) in zip(axes[0], TARGETS):
        for j, (w, dt) in enumerate(combos):
            ds = sorted({r["d"] for r in rows if (r["loss"], r["width"], r["dtype"]) == ("laplacian", w, dt)})
            pts = []
            for d in ds:
                t, tp = (
                    _time(rows, "laplacian", w, dt, d, "ours-auto"),
                    _time(rows, "laplacian", w, dt, d, peer),
                )
                if t is not None and tp is not None:
                    pts.append((d, t / tp))
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{j}", label=f"width {w}, {dt}")
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {label}")
        ax.axhline(1.0, color="0.6", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input dimension d")
        ax.set_ylabel(f"step time ours / {peer}")
        ax.set_title(f"Laplacian-loss step: ours-auto / {peer} (below the line: met)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = p.parse_args(argv)
    rows = load(args.results)
    if not rows:
        print(f"no w6*.json in {args.results}", file=sys.stderr)
        return 1
    md = table(rows)
    png = figure(rows, args.results / "w6_summary.png")
    if png is not None:
        md += f"\n![W6 ratios against the targets]({png.name})\n"
    (args.results / "w6_summary.md").write_text(md)
    print(f"wrote {args.results / 'w6_summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""W1–W5 Markdown tables, target checks, CSV/JSON and figures (mirroring the hessQuik paper's) from a run's records."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

from . import harness
from .harness import agreement_md, fmt_bytes, fmt_time, machine_md, md_table, write_outputs

#: this library's CPU runs the targets compare with: eager NumPy/torch, and
#: those plus the same engine traced by jax.jit
OURS_EAGER = ("ours-numpy", "ours-torch")
OURS_ALL = ("ours-numpy", "ours-torch", "ours-jax-jit")


_STATUS_CELL = {"skip-memory": "skip (memory)", "skip-time": "skip (time)"}
_STATUS_CELL.update({"skip-budget": "skip (run budget)", "error-memory": "FAILED (memory)"})


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    st = r.get("status")
    if st == "ok":
        ratio = [f"{r['ratio']:.2f}×"] if "ratio" in r else []
        return " · ".join([fmt_time(r["min_s"]), *ratio, f"{100 * r['frac']:.0f}%"])
    if st == "mismatch":
        return f"MISMATCH {r.get('rel_err', float('nan')):.1e}"
    return _STATUS_CELL.get(st, "FAILED")


def _peers_in(rows):
    return _point_keys(rows, lambda r: r["peer"])


def _table(header: list[str], body: list[list[str]]) -> str:
    return "\n".join(md_table(header, body))


# --- targets ---


def point_key(r: dict) -> tuple:
    """A record's point: (workload, kind, d, m, width, n, dtype, task)."""
    return (r["workload"], r["kind"], r["d"], r["m"], r["width"], r["n"], r["dtype"], r["task"])


def _group(rows):
    """{point tuple: {peer: row}} over all rows."""
    g: dict = {}
    for r in rows:
        g.setdefault(point_key(r), {})[r["peer"]] = r
    return g


def _best_ours(peers: dict, ours=OURS_ALL):
    ok = [peers[p] for p in ours if p in peers and peers[p].get("status") == "ok"]
    return min(ok, key=lambda r: r["min_s"]) if ok else None


def evaluate_targets(data: dict, ours=OURS_ALL) -> list[dict]:
    """Each target of the issue: met / missed / not measured, with the deciding numbers."""
    rows = data["rows"]
    g = _group(rows)
    ram = data["machine"].get("memory_total_bytes") or 0
    out = []

    def vs(peer_family_name, pred, ratio_needed, label):
        worst, bad, count = None, [], 0
        for k, peers in g.items():
            b, p = _best_ours(peers, ours), peers.get(peer_family_name)
            if not pred(k) or p is None or b is None or p.get("status") != "ok":
                continue
            count += 1
            ratio = p["min_s"] / b["min_s"]
            if worst is None or ratio < worst[0]:
                worst = (ratio, k)
            if ratio < ratio_needed:
                bad.append((k, ratio))
        st = "not measured" if count == 0 else ("met" if not bad else "missed")
        w_ratio, w_at = (None, None) if worst is None else (worst[0], _pt(worst[1]))
        misses = [(_pt(k), r) for k, r in bad]
        return dict(target=label, points=count, worst_ratio=w_ratio, worst_at=w_at, misses=misses, status=st)

    w12 = lambda k: k[0] in ("W1", "W2") and k[5] == 1000 and k[6] == "float64"  # noqa: E731
    out.append(vs("hessQuik-0.0.6", w12, 3.0, "W1/W2, n=1000, float64: ≥ 3× faster than hessQuik 0.0.6"))
    out.append(vs("torch.func", w12, 3.0, "W1/W2, n=1000, float64: ≥ 3× faster than torch.func"))
    w1_10 = lambda k: k[0] == "W1" and k[5] == 10 and k[6] == "float64"  # noqa: E731
    w3 = lambda k: k[0] == "W3"  # noqa: E731
    w16 = lambda k: w12(k) and k[2] >= 16  # noqa: E731
    out.append(vs("jax", w16, 1.0, "W1/W2, n=1000, float64, d ≥ 16: not slower than JAX-jit"))
    out.append(vs("jax", w1_10, 1 / 1.5, "W1, n=10: within 1.5× of JAX-jit (JAX time / ours ≥ 0.67)"))
    out.append(vs("folx", w3, 1.0, "W3: not slower than folx"))
    big3 = lambda k: w3(k) and k[2] >= 256  # noqa: E731
    out.append(vs("torch.func", big3, 2.0, "W3, d ≥ 256: ≥ 2× faster than the trace of torch.func's Hessian"))

    # machine limit at large d
    large = [(k, b) for k, peers in g.items() if w12(k) and k[2] >= 256 and (b := _best_ours(peers, ours))]
    fr, cnt = [(b["frac"], b.get("frac_fresh"), _pt(k)) for k, b in large], len(large)
    miss = [(_pt(k), b["frac"]) for k, b in large if b["frac"] < 0.5]
    status = "not measured" if cnt == 0 else ("met" if not miss else "missed")
    target = "W1/W2, n=1000, d ≥ 256: ≥ 50% of the machine limit"
    out.append(dict(target=target, points=cnt, fractions=fr, misses=miss, status=status))

    # no memory failure where the output fits in half the RAM
    fits = [r for r in rows if r["family"] == "ours" and r["out_bytes"] <= ram / 2]
    memory = ("skip-memory", "error-memory")
    failed = [r for r in fits if r["device"] == "cpu" and r.get("status") in memory]
    bad = [(_pt(point_key(r)), r["peer"], r.get("status")) for r in failed]
    target = "no point whose output fits in half the RAM fails for memory (this library)"
    out.append(dict(target=target, points=len(fits), misses=bad, status="met" if not bad else "missed"))
    return out


def _pt(k) -> str:
    w, kind, d, m, width, n, dt, task = k
    s = f"{w} d={d}"
    if kind == "resnet":
        s += f" m={m}"
    else:
        s += f" w={width}"
    return s + f" n={n}" + ("" if dt == "float64" else f" {dt}")


def _targets_md(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        mark = {"met": "✅ met", "missed": "❌ missed", "not measured": "⚪ not measured"}[t["status"]]
        line = f"- **{t['target']}** — {mark}"
        if "worst_ratio" in t and t["worst_ratio"] is not None:
            worst = f"{t['worst_ratio']:.2f} at {t['worst_at']}, {t['points']} points"
            line += f" (worst ratio peer/ours = {worst})"
        if "fractions" in t and t["fractions"]:
            fs = [
                f"{p}: {100 * f:.0f}% (fresh-alloc bound {100 * (ff or 0):.0f}%)"
                for f, ff, p in t["fractions"]
            ]
            line += " — " + ", ".join(fs)
        lines.append(line)
        misses = t.get("misses") or []
        if misses and "worst_ratio" in t:
            shown = ", ".join(f"{p} ({r:.2f})" for p, r in misses[:12])
            more = f" … and {len(misses) - 12} more" if len(misses) > 12 else ""
            lines.append(f"  - misses: {shown}{more}")
        elif misses and "fractions" not in t:
            lines.append("  - misses: " + ", ".join(f"{p} {peer} {st}" for p, peer, st in misses))
    return "\n".join(lines)


# --- workload tables ---


def _wl_rows(data, name):
    return [r for r in data["rows"] if r["workload"] == name]


def _point_keys(rows, keyfun):
    return list(dict.fromkeys(map(keyfun, rows)))


def _grid(rows, keyfun, labelfun, cell, first=lambda r: []) -> tuple[list, list]:
    """One row per point (``labelfun``, ``first(any record)``, then ``cell(record or None)`` per peer)."""
    peers = _peers_in(rows)
    byk: dict = {}
    for r in rows:
        byk.setdefault(keyfun(r), {})[r["peer"]] = r
    body = []
    for k in _point_keys(rows, keyfun):
        any_r = next(iter(byk[k].values()))
        body.append(labelfun(any_r) + first(any_r) + [cell(byk[k].get(p)) for p in peers])
    return peers, body


def _mem_cell(r: dict | None) -> str:
    if r is not None and r.get("peak_bytes") is not None:
        return fmt_bytes(r["peak_bytes"])
    return _cell(r) if r is not None and r["status"] != "ok" else "—"


def _section(data, name, keyfun, labelfun, label_hdr) -> str:
    rows = _wl_rows(data, name)
    if not rows:
        return ""
    peers, body = _grid(rows, keyfun, labelfun, _cell)
    s = _table(label_hdr + peers, body)
    mpeers, mbody = _grid(rows, keyfun, labelfun, _mem_cell, lambda r: [fmt_bytes(r["out_bytes"])])
    summary = "\n\n<details><summary>Peak memory (output size, then each peer's peak)</summary>\n\n"
    s += summary + _table(label_hdr + ["output"] + mpeers, mbody) + "\n\n</details>"
    return s


def _w4_extra(data) -> str:
    rows = [r for r in _wl_rows(data, "W4") if r.get("status") == "ok"]
    by = {(r["kind"], r["d"], r["width"], r["n"], r["peer"], r["dtype"]): r["min_s"] for r in rows}
    peers = _peers_in(rows)
    keys = _point_keys(rows, lambda r: (r["kind"], r["d"], r["width"], r["n"]))
    body = []
    for kind, d, w, n in keys:
        row = [f"{kind} d={d}" + (f" w={w}" if kind == "mlp" else ""), str(n)]
        for p in peers:
            a, b = by.get((kind, d, w, n, p, "float64")), by.get((kind, d, w, n, p, "float32"))
            row.append(f"{a / b:.2f}" if a and b else "—")
        body.append(row)
    head = "Speed-up of float32 over float64 (time f64 / time f32):\n\n"
    return head + _table(["point", "n"] + peers, body)


def _w5_extra(data) -> str:
    rows = [r for r in _wl_rows(data, "W5") if r.get("status") == "ok"]
    peers = _peers_in(rows)
    by = {(r["n"], r["peer"]): r["min_s"] for r in rows}
    ns = sorted({r["n"] for r in rows})
    body = [[str(n)] + [f"{by[(n, p)] / n * 1e6:.3g}" if (n, p) in by else "—" for p in peers] for n in ns]
    out = "Time per example (µs):\n\n" + _table(["n"] + peers, body)
    # overhead (smallest n) and asymptotic rate (largest n)
    lines = []
    for p in peers:
        have = [n for n in ns if (n, p) in by]
        if len(have) >= 2:
            lo, hi = have[0], have[-1]
            rate = f"asymptotic {by[(hi, p)] / hi * 1e6:.3g} µs per example (n = {hi})"
            lines.append(f"- `{p}`: per-call overhead ≈ {fmt_time(by[(lo, p)])} (n = {lo}); {rate}")
    return out + "\n\n" + "\n".join(lines)


def _machine_md(data) -> str:
    """The harness's machine lines, then this run's memory budget, GPU, GEMM peak and copy bandwidth."""
    m = data["machine"]
    gem = ", ".join(f"{k}: {v['flops_per_s'] / 1e9:.0f} GFLOP/s" for k, v in data["gemm"].items())
    c = data["copy"]["cpu"]
    mem = f"{fmt_bytes(m.get('memory_total_bytes'))} total; budget for one call {fmt_bytes(data['memory_budget_bytes'])}"
    bw = f"{c['touched_Bps'] / 1e9:.1f} GB/s into a touched buffer, {c['fresh_Bps'] / 1e9:.1f} GB/s into a new array"
    extra = [
        f"- memory: {mem}; GPU: {m.get('gpu') or 'none'}",
        f"- measured GEMM peak (best square size): {gem}",
    ]
    return "\n".join(machine_md(m)[2:-1] + extra + [f"- measured copy bandwidth: {bw}"])


def _w4_label(r) -> list[str]:
    return [
        r["kind"] + (f" w={r['width']}" if r["kind"] == "mlp" else ""),
        str(r["d"]),
        str(r["n"]),
        r["dtype"],
    ]


# per workload: row key, row label cells, label header
_LAYOUT = {
    "W1": (lambda r: (r["n"], r["d"]), lambda r: [str(r["n"]), str(r["d"])], ["n", "d"]),
    "W5": (lambda r: (r["n"], r["d"]), lambda r: [str(r["n"]), str(r["d"])], ["n", "d"]),
    "W2": (lambda r: (r["d"], r["m"]), lambda r: [str(r["d"]), str(r["m"])], ["d", "m"]),
    "W3": (lambda r: (r["width"], r["d"]), lambda r: [str(r["width"]), str(r["d"])], ["width", "d"]),
    "W4": (lambda r: (r["kind"], r["width"], r["d"], r["dtype"]), _w4_label, ["network", "d", "n", "dtype"]),
}


def markdown(data: dict, analysis: str | None = None) -> str:
    mode = "quick" if data["quick"] else "full"
    when = data.get("date") or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    s = [
        f"# Benchmark results ({mode} run)",
        "",
        f"Produced by `python -m benchmarks{' --quick' if data['quick'] else ''}` on {when} in "
        f"{data['wall_s'] / 60:.1f} min. Every peer runs in the same process, with the same weights, "
        "the same inputs, the same dtype and the same thread count.",
        "",
        "## Machine",
        "",
        _machine_md(data),
        "",
        "## How to read the tables",
        "",
        "Each cell is `min time · ratio · limit%`:",
        "",
        (
            "- *min time*: the best of up to "
            f"{data['timing']['rounds']} interleaved rounds (each round calls every agreeing peer of the "
            "point in turn, the order rotating from round to round, so a burst of load from other processes "
            "slows all of them alike; the median is in `results.csv`);"
            if data.get("timing", {}).get("interleaved")
            else "- *min time*: the fastest of the timeit-style repeats (the median is in `results.csv`); "
            "calls under 0.5 s are timed in a second pass minutes later and the best of both passes is "
            "kept, which removes most slow-downs caused by other processes on a shared machine;"
        ),
        "- *ratio*: that time over this library's best CPU time at the same point "
        "(the fastest of `ours-numpy`, `ours-torch` and `ours-jax-jit`, the last being this library's "
        "engine on JAX arrays traced by `jax.jit`); above 1 means this library is that much faster;",
        "- *limit%*: the machine limit over the time, where the limit is the larger of "
        "GEMM-flops / measured GEMM rate of the peer's backend and output bytes / measured copy "
        "bandwidth (see `benchmarks/machine.py`).",
        "",
        "Before a peer is timed its result is compared, on the first rows of the batch, with this "
        "library's float64 NumPy result (max deviation relative to the largest entry: ≤ 1e-8 in "
        "float64, ≤ 2e-3 in float32); a peer that disagrees is shown as MISMATCH and not timed. "
        "`skip (memory)` / `skip (time)` mean the run predicted, from the peer's own measured growth "
        "over smaller points, that the call would not fit in the memory budget or the per-call "
        f"time cap ({data['max_call_s']:.0f} s); the reasons are listed under *Skipped points*.",
        "",
        "## Targets",
        "",
        "With this library's best CPU time over NumPy, torch and its jax.jit-traced run:",
        "",
        _targets_md(evaluate_targets(data, OURS_ALL)),
        "",
        "With the eager NumPy and torch backends only:",
        "",
        _targets_md(evaluate_targets(data, OURS_EAGER)),
        "",
    ]
    plots = {"W1": ["w1_time_vs_d.png"], "W2": ["w2_heatmaps.png", "w2_ratio_heatmaps.png"]}
    plots.update(W3=["w3_time_vs_d.png"], W5=["w5_batch_scaling.png"])
    for w in data["workloads"]:
        name = w["name"]
        s += [f"## {w['title']}", ""]
        key, lab, hdr = _LAYOUT.get(name, _LAYOUT["W4"])
        s.append(_section(data, name, key, lab, hdr))
        if (extra := {"W4": _w4_extra, "W5": _w5_extra}.get(name)) is not None:
            s += ["", extra(data)]
        if not data.get("no_plots"):
            s += [line for png in plots.get(name, []) for line in ("", f"![{name}]({png})")]
        s.append("")
    s += agreement_md(data["rows"], ("peer", "dtype"), "each peer from this library's float64 NumPy result")
    s.append(f"{sum(r.get('status') == 'mismatch' for r in data['rows'])} mismatches.\n")
    skipped = [r for r in data["rows"] if r.get("status") not in ("ok", None)]
    s += ["## Skipped points, failures and notes", ""]
    s += [f"- {n}" for n in data["notes"]]
    seen = set()
    for r in skipped:
        k = (r["peer"], r["kind"], r["d"], r["m"], r["width"], r["n"], r["dtype"], r["status"])
        if k not in seen:
            seen.add(k)
            at = f"{r['kind']} d={r['d']} m={r['m']} w={r['width']} n={r['n']} {r['dtype']}"
            s.append(f"- {r['peer']} at {at}: {r['status']} — {r.get('note', '')}")
    if not data["notes"] and not skipped:
        s.append("- none")
    peers_notes = [p for p in data["peers"] if p.get("note")]
    if peers_notes:
        s += ["", "Peer notes:", ""] + [f"- `{p['name']}`: {p['note']}" for p in peers_notes]
    if analysis:
        s += ["", analysis.strip(), ""]
    return "\n".join(s) + "\n"


# --- figures ---

_STYLE = {
    "ours-numpy": dict(color="C0", marker="o", lw=2.2),
    "ours-torch": dict(color="C1", marker="s", lw=2.2),
    "ours-jax-jit": dict(color="C7", marker="*", lw=2.2),
    "ours-numpy-bwd": dict(color="C0", marker="o", ls="--"),
    "ours-torch-bwd": dict(color="C1", marker="s", ls="--"),
    "ours-cupy": dict(color="C8", marker="o", lw=2.2),
    "ours-torch-cuda": dict(color="C9", marker="s", lw=2.2),
    "hessQuik-0.0.6": dict(color="C2", marker="^"),
    "torch.func": dict(color="C3", marker="v"),
    "jax": dict(color="C4", marker="D"),
    "folx": dict(color="C5", marker="P"),
}


def _ok(rows):
    return [r for r in rows if r.get("status") == "ok"]


def _peers(rows):
    return list(dict.fromkeys(r["peer"] for r in rows))


def _panels(out: Path, rows, key: str, title, name: str, label: str) -> None:
    """Time against d, one panel per value of ``key`` (W1: n, W3: width)."""
    vals = sorted({r[key] for r in rows})
    panels = [(title(v), lambda r, v=v: r[key] == v) for v in vals]
    kw = dict(x="d", peers=_peers(rows), style=_STYLE, ylabel="time per call (s)", title=label)
    kw["ncols"] = len(vals)
    harness.plot_series(out / name, rows, panels, **kw)


def _heat(ax, fig, ds, ms, val, title, *, cmap, center=None, fmt="{:.2g}"):
    import numpy as np

    Z = np.full((len(ds), len(ms)), np.nan)
    for (d, m), v in val.items():
        Z[ds.index(d), ms.index(m)] = v
    if center is None:
        im = ax.imshow(np.log10(Z), origin="lower", cmap=cmap, aspect="auto")
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("log10 time (s)")
    else:
        lim = np.nanmax(np.abs(np.log2(Z))) if np.isfinite(Z).any() else 1.0
        im = ax.imshow(np.log2(Z), origin="lower", cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("log2(peer time / ours-best time)")
    for i in range(len(ds)):
        for j in range(len(ms)):
            if math.isfinite(Z[i, j]):
                ax.text(j, i, fmt.format(Z[i, j]), ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(ms)), [str(m) for m in ms])
    ax.set_yticks(range(len(ds)), [str(d) for d in ds])
    ax.set(xlabel="output dimension m", ylabel="input dimension d")
    ax.set_title(title, fontsize=9)


def _heat_grid(path: Path, rows, peers, key: str, title, **heat) -> None:
    """One heat map of ``key`` over (d, m) per peer, three to a row."""
    plt = harness.pyplot()
    ds, ms = sorted({r["d"] for r in rows}), sorted({r["m"] for r in rows})
    cols = min(3, len(peers))
    nr = math.ceil(len(peers) / cols)
    fig, axes = plt.subplots(nr, cols, figsize=(5.2 * cols, 4.2 * nr), squeeze=False)
    for ax, p in zip(axes.flat, peers):
        val = {(r["d"], r["m"]): r[key] for r in _ok(rows) if r["peer"] == p and key in r}
        _heat(ax, fig, ds, ms, val, title(p), **heat)
    for ax in list(axes.flat)[len(peers) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _w2(out: Path, rows):
    peers = _peers(rows)
    _heat_grid(out / "w2_heatmaps.png", rows, peers, "min_s", lambda p: f"W2 time: {p}", cmap="viridis")
    others = [p for p in peers if "ratio" in next((r for r in _ok(rows) if r["peer"] == p), {})]
    if others:
        title = lambda p: f"W2 ratio {p} / ours-best (>1: ours faster)"  # noqa: E731
        _heat_grid(out / "w2_ratio_heatmaps.png", rows, others, "ratio", title, cmap="RdBu", center=1.0)


def _w5(out: Path, rows):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for p in _peers(rows):
        pts = sorted((r["n"], r["min_s"]) for r in _ok(rows) if r["peer"] == p)
        if pts:
            axes[0].plot(*zip(*pts), label=p, **_STYLE.get(p, {}))
            axes[1].plot([a for a, _ in pts], [t / a for a, t in pts], label=p, **_STYLE.get(p, {}))
    for ax, yl in zip(axes, ("time per call (s)", "time per example (s)")):
        ax.set(xscale="log", yscale="log", xlabel="batch size n", ylabel=yl)
        ax.grid(True, which="both", alpha=0.3)
    d = rows[0]["d"] if rows else "?"
    axes[0].set_title(f"W5: batch scaling, d = {d}, m = 1")
    axes[1].set_title("per-example cost: overhead (left) to asymptotic rate (right)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "w5_batch_scaling.png", dpi=110)
    plt.close(fig)


def make_all(out: Path, data: dict) -> None:
    """The W1, W2, W3 and W5 figures (mirroring the hessQuik paper's)."""
    out, by = Path(out), {}
    for r in data["rows"]:
        by.setdefault(r["workload"], []).append(r)
    if by.get("W1"):
        title = lambda n: f"W1: m = 1, n = {n}"  # noqa: E731
        _panels(out, by["W1"], "n", title, "w1_time_vs_d.png", "W1: value, gradient, Hessian")
    if by.get("W2"):
        _w2(out, by["W2"])
    if by.get("W3"):
        title = lambda w: f"W3: Laplacian, tanh MLP width {w}, n = 256"  # noqa: E731
        _panels(out, by["W3"], "width", title, "w3_time_vs_d.png", "W3: Laplacian")
    if by.get("W5"):
        _w5(out, by["W5"])


CSV_FIELDS = (
    "workload kind d m width depth n dtype task peer status min_s median_s number repeat first_s compile_s "
    "ratio ours_best_s flops out_bytes limit_s frac limit_fresh_s frac_fresh peak_bytes peak_method rel_err "
    "predicted_s predicted_peak note"
).split()


def write_all(out: Path, data: dict, plots: bool = True) -> None:
    """machine.json/txt, the PNGs (optionally), results.json, results.csv and results.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data.setdefault("date", _dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    data["no_plots"] = not plots or harness.pyplot() is None
    if plots and data["no_plots"]:
        data["notes"].append("plots not drawn: matplotlib is not installed.")
    mach = dict(data["machine"], gemm=data["gemm"], copy=data["copy"])
    (out / "machine.json").write_text(json.dumps(mach, indent=1, default=str))
    (out / "machine.txt").write_text(_machine_md(data).replace("- ", "") + "\n")
    if not data["no_plots"]:
        make_all(out, data)
    analysis_file = Path(__file__).parent / "analysis.md"
    analysis = analysis_file.read_text() if (analysis_file.exists() and not data["quick"]) else None
    write_outputs(out, "results", data, markdown=lambda d: markdown(d, analysis), csv_fields=CSV_FIELDS)

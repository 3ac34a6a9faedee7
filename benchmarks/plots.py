"""PNG figures mirroring the hessQuik paper's (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

from . import harness

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
    kw = dict(
        x="d", peers=_peers(rows), style=_STYLE, ylabel="time per call (s)", title=label, ncols=len(vals)
    )
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
    out = Path(out)
    by = {}
    for r in data["rows"]:
        by.setdefault(r["workload"], []).append(r)
    if by.get("W1"):
        _panels(
            out,
            by["W1"],
            "n",
            lambda n: f"W1: m = 1, n = {n}",
            "w1_time_vs_d.png",
            "W1: value, gradient, Hessian",
        )
    if by.get("W2"):
        _w2(out, by["W2"])
    if by.get("W3"):
        title = lambda w: f"W3: Laplacian, tanh MLP width {w}, n = 256"  # noqa: E731
        _panels(out, by["W3"], "width", title, "w3_time_vs_d.png", "W3: Laplacian")
    if by.get("W5"):
        _w5(out, by["W5"])

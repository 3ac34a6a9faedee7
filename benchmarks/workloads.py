"""Benchmark workloads W1–W5, in a quick (CI smoke) and a full size.

W1  the hessQuik paper's scalar-output experiment: ResNet of width 16, depth 4 (antiTanh opening
    layer, tanh residual layers with h = 0.5, identity output), m = 1, d = 2^0..2^10, n = 10 and
    n = 1000; value + gradient + Hessian.
W2  the paper's vector-output heatmap: the same ResNet with d and m over 2^0..2^6 (2^7 too in the
    full run where the output fits), n = 1000.
W3  Laplacian of an MLP (tanh, width 64 and 256, depth 4, scalar output), d in {16, 64, 256, 1024},
    n = 256.
W4  float32 against float64 (W1 at n = 1000 and W3 points).
W5  batch scaling n = 1..10^5 at d = 16 (W1's network): the per-call overhead and the asymptotic rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .nets import NetSpec


@dataclass(frozen=True)
class Point:
    """One measured configuration (network, batch, dtype, task)."""

    workload: str
    spec: NetSpec
    n: int
    dtype: str
    task: str  # "hessian" or "laplacian"

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == "float64" else 4

    @property
    def out_bytes(self) -> int:
        """Bytes of the requested outputs (value + gradient + Hessian, or value + Laplacian)."""
        n, d, m = self.n, self.spec.d, self.spec.m
        per = m * (1 + d + d * d) if self.task == "hessian" else 2 * m
        return n * per * self.itemsize

    @property
    def key(self) -> tuple:
        """Identity of the computation (the workload label is not part of it)."""
        return (self.spec, self.n, self.dtype, self.task)

    @property
    def size_units(self) -> float:
        """A size measure that time and memory grow (at most) proportionally to at large
        sizes: the Hessian output plus the first layer's ``n·d²·width`` intermediate."""
        d, m, w = self.spec.d, self.spec.m, self.spec.width
        return float(self.n) * (d * d * (m + w) + d * (m + w) + 64)


@dataclass
class Workload:
    name: str
    title: str
    points: list = field(default_factory=list)
    task: str = "hessian"
    #: points whose output exceeds this are skipped to keep the run's wall time
    #: bounded (recorded as ``skip-budget``; ``None``: no cap)
    max_out_bytes: int | None = None


def _resnet(d: int, m: int) -> NetSpec:
    return NetSpec("resnet", d, m, width=16, depth=4, h=0.5)


def _mlp(d: int, w: int) -> NetSpec:
    return NetSpec("mlp", d, 1, width=w, depth=4)


def workloads(quick: bool, smoke: bool = False) -> list[Workload]:
    """The workload list of the quick or the full run (points in increasing size).

    ``smoke`` is a two-point W1 for the test suite."""
    if smoke:
        title = "W1 (smoke): scalar-output ResNet, value + gradient + Hessian, float64"
        return [Workload("W1", title, [Point("W1", _resnet(d, 1), 10, "float64", "hessian") for d in (1, 4)])]
    if quick:
        w1_d, w1_n = [1, 8, 64], [10, 1000]
        w2_dm, w2_n = [2, 16], 1000
        w3_d, w3_w = [16, 64], [64]
        w4 = ([16], [])
        w5_n, w5_d = [1, 1000], 16
    else:
        w1_d, w1_n = [2**k for k in range(11)], [10, 1000]
        w2_dm, w2_n = [2**k for k in range(8)], 1000
        w3_d, w3_w = [16, 64, 256, 1024], [64, 256]
        w4 = ([4, 32, 256], [(64, 64), (256, 64), (1024, 64), (256, 256)])
        w5_n, w5_d = [1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000], 16

    W1 = Workload("W1", "W1: scalar-output ResNet (w=16, depth 4), value + gradient + Hessian, float64")
    W1.points = [Point("W1", _resnet(d, 1), n, "float64", "hessian") for n in w1_n for d in w1_d]

    W2 = Workload("W2", f"W2: vector-output ResNet heatmap over (d, m), n = {w2_n}, float64")
    if not quick:
        # the 2^0..2^6 grid is complete (largest output 2.1 GB at d = m = 64); of the
        # 2^7 row and column only the points up to that size fit the run's wall time
        W2.max_out_bytes = int(2.2e9)
    pts = [Point("W2", _resnet(d, m), w2_n, "float64", "hessian") for d in w2_dm for m in w2_dm]
    W2.points = sorted(pts, key=lambda p: (p.size_units, p.spec.d, p.spec.m))

    W3 = Workload("W3", "W3: Laplacian of a tanh MLP (depth 4, scalar output), n = 256, float64")
    W3.task = "laplacian"
    W3.points = [Point("W3", _mlp(d, w), 256, "float64", "laplacian") for w in w3_w for d in w3_d]

    W4 = Workload("W4", "W4: float32 against float64 (W1 network at n = 1000; W3 MLP Laplacians)")
    dts = ("float64", "float32")
    W4.points = [Point("W4", _resnet(d, 1), 1000, dt, "hessian") for d in w4[0] for dt in dts]
    W4.points += [Point("W4", _mlp(d, w), 256, dt, "laplacian") for d, w in w4[1] for dt in dts]

    W5 = Workload("W5", f"W5: batch scaling at d = {w5_d} (W1 network), value + gradient + Hessian, float64")
    W5.points = [Point("W5", _resnet(w5_d, 1), n, "float64", "hessian") for n in w5_n]

    return [W1, W2, W3, W4, W5]

r"""Derivative checks by Taylor expansion: does the measured error decay at
the rate the derivatives promise?

For a perturbation :math:`p` (one random unit vector per example) and a
geometric sequence of steps :math:`h`, Taylor's theorem gives

.. math::
    E_0(h) &= |f(x+hp) - f(x)| = O(h),\\
    E_1(h) &= |f(x+hp) - f(x) - h\,\nabla f\cdot p| = O(h^2),\\
    E_2(h) &= |f(x+hp) - f(x) - h\,\nabla f\cdot p - \tfrac12 h^2\, p^\top \nabla^2 f\, p| = O(h^3),

each reduced per output by the 2-norm over the batch. A wrong gradient
leaves :math:`E_1 = O(h)`, a wrong Hessian leaves :math:`E_2 = O(h^2)`, so
the check compares the *measured convergence order*
:math:`\log(E(h_i)/E(h_{i+1})) / \log(h_i/h_{i+1})` with 2 and 3, never an
absolute tolerance.

Round-off puts a floor under every :math:`E`: at about
:math:`\varepsilon\,(|f(x+hp)| + |f(x)| + \dots)` the error stops
decreasing and its measured order is meaningless. Only steps whose errors
lie well above that floor are judged, and the verdict uses the orders at the
smallest such steps, where the expansion is asymptotic. An error at
round-off level for every step means the Taylor model is exact (e.g. a
linear network has :math:`E_1 \approx 0`), which passes. Below float64 the
floor is *measured* against a float64 evaluation of the same network (in
float32 only a few steps remain above it, so float64 is the recommended
check; an output with fewer than three usable step pairs is reported as
inconclusive rather than failed).

The Laplacian is checked the same way against central second differences,

.. math::
    \Delta_h f(x) = \sum_{j} \frac{f(x + h u_j) - 2 f(x) + f(x - h u_j)}{h^2}
    = \Delta f(x) + O(h^2),

over the coordinate axes :math:`u_j = e_j` (or the columns of forward-mode
``directions``), and against the trace of the Hessian.

>>> import numpy as np, hessquik_core as hq
>>> net = hq.FullyConnectedNN([3, 8, 2], act="tanh", seed=0)
>>> report = hq.checks.taylor_check(net, np.random.default_rng(0).normal(size=(5, 3)), seed=1)
>>> report.passed
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import array_api_compat as aac
import numpy as np

from ._activation_check import ActivationReport, check_activation
from ._taylor import _SAFETY, _SAFETY_MEASURED, _check_hs, _fmt_order, _judge, _orders
from .activations import require_order
from .backends._generic import to_numpy

__all__ = [
    "ActivationReport",
    "LaplacianReport",
    "TaylorReport",
    "check_activation",
    "require_order",
    "taylor_check",
]


@dataclass
class LaplacianReport:
    r"""Laplacian against central second differences and the Hessian trace.

    Attributes
    ----------
    hs : (H,) steps.
    error : (H, m) :math:`\|\Delta_h f - \Delta f\|` per output (2-norm over the batch).
    floor : (H, m) estimated round-off level of ``error`` (grows like :math:`1/h^2`).
    orders : (H-1, m) measured orders (expected 2).
    order : (m,) judged order per output (NaN unless ``status`` is ``"measured"``).
    status : (m,) ``"measured"``, ``"exact"``, ``"inconclusive"`` or ``"non-finite"``.
    trace_error : float
        :math:`\max|\Delta f - \mathrm{tr}\,\nabla^2 f| / \max(1, \max|\mathrm{tr}\,\nabla^2 f|)`.
    trace_ok : bool
        ``trace_error <= sqrt(eps)``: catches a wrong Laplacian, not round-off.
    rate_ok : (m,) bool
    mode : route taken by the Laplacian-only call.
    """

    hs: np.ndarray
    error: np.ndarray
    floor: np.ndarray
    orders: np.ndarray
    order: np.ndarray
    status: np.ndarray
    rate_ok: np.ndarray
    trace_error: float
    trace_ok: bool
    mode: str

    @property
    def passed(self) -> bool:
        return bool(np.all(self.rate_ok)) and bool(self.trace_ok)


@dataclass
class TaylorReport:
    r"""Result of :func:`taylor_check`.

    Attributes
    ----------
    hs : (H,) step lengths (the perturbation has unit norm per example).
    E0, E1, E2 : (H, m) zeroth-, first- and second-order Taylor remainders per
        output ``m`` (2-norm over the batch); ``m`` is the number of outputs,
        or of backward-mode direction columns.
    floor : (H, m) estimated round-off level of ``E1`` and ``E2``.
    orders0, orders1, orders2 : (H-1, m) measured orders between consecutive steps.
    order1, order2 : (m,) judged orders (the larger of the last two orders above round-off,
        i.e. at the smallest usable steps); NaN unless the status is ``"measured"``.
    status1, status2 : (m,) ``"measured"``, ``"exact"`` (remainder at round-off for every
        step: the Taylor model is exact), ``"inconclusive"`` (above round-off for fewer than
        three step pairs; float32 often, float64 rarely) or ``"non-finite"`` (fails).
    first_order_ok, second_order_ok : (m,) bool, ``order1 >= 1.5``, ``order2 >= 2.5``
        (nearer the correct order than the one a wrong derivative leaves).
    laplacian : LaplacianReport or None
    mode : route taken by the gradient/Hessian call (``"forward"``/``"backward"``).
    dtype : str
    shape : (n, d, m) batch size, input width and number of checked outputs.
    passed : bool
        All of the above passed.
    """

    hs: np.ndarray
    E0: np.ndarray
    E1: np.ndarray
    E2: np.ndarray
    floor: np.ndarray
    orders0: np.ndarray
    orders1: np.ndarray
    orders2: np.ndarray
    order1: np.ndarray
    order2: np.ndarray
    status1: np.ndarray
    status2: np.ndarray
    first_order_ok: np.ndarray
    second_order_ok: np.ndarray
    mode: str
    dtype: str
    shape: tuple
    laplacian: LaplacianReport | None = None
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        ok = bool(np.all(self.first_order_ok)) and bool(np.all(self.second_order_ok))
        if self.laplacian is not None:
            ok = ok and self.laplacian.passed
        self.passed = ok

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        n, d, m = self.shape
        # the table aggregates outputs (2-norm); the verdict is per output
        agg = [np.sqrt(np.sum(E * E, axis=1)) for E in (self.E0, self.E1, self.E2)]
        ords = [_orders(a[:, None], self.hs)[:, 0] for a in agg]
        lines = [
            f"Taylor check: mode={self.mode}, dtype={self.dtype}, n={n}, d={d}, outputs={m}",
            f"{'h':>10} {'E0':>10} {'E1':>10} {'E2':>10} {'order0':>7} {'order1':>7} {'order2':>7}",
        ]
        for i, h in enumerate(self.hs):
            row = f"{h:10.3e} {agg[0][i]:10.3e} {agg[1][i]:10.3e} {agg[2][i]:10.3e}"
            if i > 0:
                row += " " + " ".join(f"{o[i - 1]:7.2f}" for o in ords)
            lines.append(row)
        verdict = {True: "ok", False: "FAILED"}
        lines.append(
            f"first order  (expect 2): {_fmt_order(self.order1, self.status1):>5}  "
            f"{verdict[bool(np.all(self.first_order_ok))]}"
        )
        lines.append(
            f"second order (expect 3): {_fmt_order(self.order2, self.status2):>5}  "
            f"{verdict[bool(np.all(self.second_order_ok))]}"
        )
        if self.laplacian is not None:
            lap = self.laplacian
            lines.append(
                f"Laplacian    (expect 2): {_fmt_order(lap.order, lap.status):>5}  "
                f"{verdict[bool(np.all(lap.rate_ok))]}"
                f"  (mode={lap.mode}; |lap - tr H| = {lap.trace_error:.1e} {verdict[lap.trace_ok]})"
            )
        lines.append(f"passed: {self.passed}")
        return "\n".join(lines)


def _norm_rows(xp, a):
    """2-norm over the batch axis 0 of ``a : (n, m)`` -> (m,)."""
    return xp.sqrt(xp.sum(a * a, axis=0))


def _host(a) -> np.ndarray:
    return np.asarray(to_numpy(a), dtype=np.float64)


def taylor_check(
    net,
    x,
    *,
    mode: str = "auto",
    directions=None,
    hs=None,
    seed=None,
    backend: str | None = None,
    laplacian: bool = True,
) -> TaylorReport:
    r"""Check a network's gradient, Hessian and Laplacian by Taylor convergence rates.

    Parameters
    ----------
    net : NN or Layer
        Any hessquik_core network (or layer).
    x : array of shape (n, d), n >= 1
        Expansion points, of any supported library; float64 recommended
        (float32 leaves only a few steps above round-off).
    mode, directions, backend
        Passed to the network call. Forward-mode ``directions`` ``V : (d, k)``
        restrict the perturbation to :math:`p = Vc`; backward-mode ``V : (m, k)``
        check the contracted outputs :math:`f V`.
    hs : sequence of float, optional
        Strictly decreasing steps; default :math:`2^{-1}, \dots, 2^{-12}`.
    seed : int or numpy.random.Generator, optional
        Seed of the random perturbation.
    laplacian : bool, default True
        Also check the Laplacian (central second differences: ``2 k`` extra
        value evaluations per step, ``k`` = d or the number of forward directions,
        plus a trace comparison with the Hessian).

    Returns
    -------
    TaylorReport
        ``report.passed`` is the verdict; ``print(report)`` shows the table.
    """
    hs = _check_hs(hs)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    res = net(x, gradient=True, hessian=True, directions=directions, mode=mode, backend=backend)
    xp = aac.array_namespace(x)
    dev = aac.device(x)
    dt = x.dtype
    n, d = x.shape
    if n == 0:
        raise ValueError("x must hold at least one example, got shape (0, d)")
    eps = float(np.finfo(np.dtype(str(dt).split(".")[-1])).eps)

    # --- the perturbation p (n, d) and its coordinates c in the derivative basis
    fwd_dirs = directions is not None and res.mode == "forward"
    bwd_dirs = directions is not None and res.mode == "backward"
    Vn = None if directions is None else np.array(to_numpy(directions), dtype=np.float64)
    if fwd_dirs:
        c = rng.standard_normal((n, Vn.shape[1]))
        p = c @ Vn.T
    else:
        p = rng.standard_normal((n, d))
        c = p
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    p, c = p / norm, c / norm
    P = xp.asarray(p, dtype=dt, device=dev)
    C = xp.asarray(c, dtype=dt, device=dev)
    Vx = xp.asarray(Vn, dtype=dt, device=dev) if bwd_dirs else None

    def out(y):
        v = net(y, mode=mode, backend=backend).value
        return v @ Vx if Vx is not None else v

    f0 = out(x)
    # first- and second-order terms along p, per output: (n, m)
    g = res.gradient  # (n, k|d, m|k)
    gp = xp.sum(g * C[:, :, None], axis=1)
    pHp = xp.sum(xp.sum(res.hessian * C[:, :, None, None] * C[:, None, :, None], axis=1), axis=1)

    # Below float64 the round-off of evaluating f is measured, not guessed: cancellation
    # inside the network can make it far larger than eps |f|. The same network evaluated
    # in float64 at the exact points x + h p is the reference.
    noise = None
    if eps > float(np.finfo(np.float64).eps):
        f64 = xp.float64
        x64, P64 = xp.astype(x, f64), xp.astype(P, f64)
        V64 = None if Vx is None else xp.astype(Vx, f64)

        def out64(y):
            v = net(y, mode=mode, backend=backend).value
            return v @ V64 if V64 is not None else v

        noise = [_host(_norm_rows(xp, xp.astype(f0, f64) - out64(x64)))]

    E0, E1, E2, floor = [], [], [], []
    for h in hs.tolist():  # Python floats: strict namespaces refuse NumPy scalars
        ft = out(x + h * P)
        if noise is not None:
            noise.append(_host(_norm_rows(xp, xp.astype(ft, f64) - out64(x64 + h * P64))))
        t1, t2 = h * gp, 0.5 * h * h * pHp
        r0 = ft - f0
        r1 = r0 - t1
        r2 = r1 - t2
        E0.append(_host(_norm_rows(xp, r0)))
        E1.append(_host(_norm_rows(xp, r1)))
        E2.append(_host(_norm_rows(xp, r2)))
        # round-off of the sums above: eps times the magnitudes that enter them
        mag = xp.abs(ft) + xp.abs(f0) + xp.abs(t1) + xp.abs(t2)
        floor.append(eps * _host(_norm_rows(xp, mag)))
    E0, E1, E2, floor = (np.stack(a) for a in (E0, E1, E2, floor))
    # per output: the largest measured evaluation error (a remainder subtracts two values)
    noise_f = None if noise is None else np.max(np.stack(noise), axis=0)
    if noise_f is not None:
        floor = np.maximum(floor, 2.0 * noise_f[None, :])
    safety = _SAFETY if noise_f is None else _SAFETY_MEASURED
    ok1, order1, status1 = _judge(E1, floor, hs, 2.0, safety)
    ok2, order2, status2 = _judge(E2, floor, hs, 3.0, safety)

    lap = None
    if laplacian:
        lap = _laplacian_check(
            net, x, xp, dev, dt, eps, hs, res, mode, backend, directions, Vn, fwd_dirs, out, f0, noise_f
        )
    return TaylorReport(
        hs=hs,
        E0=E0,
        E1=E1,
        E2=E2,
        floor=floor,
        orders0=_orders(E0, hs),
        orders1=_orders(E1, hs),
        orders2=_orders(E2, hs),
        order1=order1,
        order2=order2,
        status1=status1,
        status2=status2,
        first_order_ok=ok1,
        second_order_ok=ok2,
        mode=res.mode,
        dtype=str(dt).split(".")[-1],
        shape=(n, d, int(E0.shape[1])),
        laplacian=lap,
    )


def _laplacian_check(
    net, x, xp, dev, dt, eps, hs, res, mode, backend, directions, Vn, fwd_dirs, out, f0, noise_f
) -> LaplacianReport:
    n, d = x.shape
    lr = net(x, laplacian=True, directions=directions, mode=mode, backend=backend)
    L = lr.laplacian  # (n, m|k)
    # trace of the Hessian already computed: (n, k, k, m) forward, (n, d, d, k) backward
    H = res.hessian
    kk = H.shape[1]
    eye = xp.eye(kk, dtype=dt, device=dev)
    trH = xp.sum(xp.sum(H * eye[None, :, :, None], axis=1), axis=1)
    Lh, Th = _host(L), _host(trH)
    trace_error = float(
        np.max(np.abs(Lh - Th), initial=0.0) / max(1.0, float(np.max(np.abs(Th), initial=0.0)))
    )
    trace_ok = bool(np.isfinite(trace_error)) and trace_error <= math.sqrt(eps)

    U = Vn.T if fwd_dirs else np.eye(d)  # (k, d): the second-difference directions
    k = U.shape[0]
    Ux = xp.asarray(U, dtype=dt, device=dev)
    errs, floors = [], []
    for h in hs.tolist():  # Python floats: strict namespaces refuse NumPy scalars
        # all 2k shifted copies of the batch in one call: (2k n, d)
        shifts = xp.concat([h * Ux, -h * Ux], axis=0)  # (2k, d)
        Y = xp.reshape(x[None, :, :] + shifts[:, None, :], (2 * k * n, d))
        FY = xp.reshape(out(Y), (2 * k, n, f0.shape[1]))
        fd = (xp.sum(FY, axis=0) - (2.0 * k) * f0) / (h * h)
        errs.append(_host(_norm_rows(xp, fd - L)))
        mag = (xp.sum(xp.abs(FY), axis=0) + (2.0 * k) * xp.abs(f0)) / (h * h) + xp.abs(L)
        fl = eps * _host(_norm_rows(xp, mag))
        if noise_f is not None:  # 4k measured evaluation errors, divided by h²
            fl = np.maximum(fl, 4.0 * k * noise_f / (h * h))
        floors.append(fl)
    errs, floors = np.stack(errs), np.stack(floors)
    rate_ok, order, status = _judge(errs, floors, hs, 2.0, _SAFETY if noise_f is None else _SAFETY_MEASURED)
    return LaplacianReport(
        hs=hs,
        error=errs,
        floor=floors,
        orders=_orders(errs, hs),
        order=order,
        status=status,
        rate_ok=rate_ok,
        trace_error=trace_error,
        trace_ok=trace_ok,
        mode=str(lr.mode),
    )

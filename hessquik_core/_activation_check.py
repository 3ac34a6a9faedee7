r"""Taylor checks of an activation's :math:`\sigma'` and :math:`\sigma''` on a grid
(:func:`hessquik_core.checks.check_activation`, re-exported there)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._taylor import _check_hs, _fmt_order, _judge
from .backends._generic import to_numpy

__all__ = ["ActivationReport", "check_activation"]


@dataclass
class ActivationReport:
    r"""Result of :func:`check_activation`.

    Attributes
    ----------
    name : str
        The activation's name.
    z : ndarray of shape (N,)
        Grid points (float64 copy).
    hs : ndarray of shape (H,)
        Steps.
    E1, E2 : ndarray of shape (H, N)
        Taylor remainders of :math:`\sigma` per grid point,
        :math:`|\sigma(z+h) - \sigma(z) - h\sigma'(z)|` (expected :math:`O(h^2)`) and
        :math:`|\,\cdots - \tfrac12 h^2\sigma''(z)|` (expected :math:`O(h^3)`).
    Ed : ndarray of shape (H, N)
        :math:`|\sigma'(z+h) - \sigma'(z) - h\sigma''(z)|`, expected :math:`O(h^2)`:
        :math:`\sigma''` against :math:`\sigma'` directly.
    order1, order2, order_d : ndarray of shape (N,)
        Judged orders (NaN unless measured).
    status1, status2, status_d : ndarray of shape (N,)
        As in :class:`TaylorReport`.
    first_order_ok, second_order_ok : bool
        Over all grid points.
    fd_error1, fd_error2 : float
        Largest relative error of central differences of :math:`\sigma` (of
        :math:`\sigma'`) at :math:`h = \varepsilon^{1/3}` against :math:`\sigma'`
        (:math:`\sigma''`), relative to :math:`\max(1, |\cdot|)`; for reading, not judged.
    consistent : bool
        ``order=0`` and ``order=1`` calls return the same arrays as ``order=2``,
        of the input's shape and dtype.
    tails_ok : bool or None
        Finite :math:`\sigma, \sigma', \sigma''` at :math:`|z| \in \{10^2, 10^3, 10^4\}`
        in float32 and float64, without floating-point warnings (``None``: not checked).
    passed : bool
    """

    name: str
    z: np.ndarray
    hs: np.ndarray
    E1: np.ndarray
    E2: np.ndarray
    Ed: np.ndarray
    order1: np.ndarray
    order2: np.ndarray
    order_d: np.ndarray
    status1: np.ndarray
    status2: np.ndarray
    status_d: np.ndarray
    first_order_ok: bool
    second_order_ok: bool
    fd_error1: float
    fd_error2: float
    consistent: bool
    tails_ok: bool | None
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = (
            self.first_order_ok and self.second_order_ok and self.consistent and self.tails_ok is not False
        )

    def __bool__(self) -> bool:
        return self.passed

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` (with this report) unless the check passed."""
        if not self.passed:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        verdict = {True: "ok", False: "FAILED", None: "not checked"}
        return "\n".join(
            [
                f"Activation check: {self.name}, {self.z.size} points in [{self.z.min():g}, {self.z.max():g}]",
                f"sigma'  by Taylor (expect 2): {_fmt_order(self.order1, self.status1):>5}  "
                f"{verdict[self.first_order_ok]}",
                f"sigma'' by Taylor (expect 3): {_fmt_order(self.order2, self.status2):>5}, "
                f"against sigma' (expect 2): {_fmt_order(self.order_d, self.status_d):>5}  "
                f"{verdict[self.second_order_ok]}",
                f"central differences: |d sigma - sigma'| = {self.fd_error1:.1e}, "
                f"|d sigma' - sigma''| = {self.fd_error2:.1e}",
                f"orders 0/1/2 consistent: {verdict[self.consistent]}; tails |z| <= 1e4: {verdict[self.tails_ok]}",
                f"passed: {self.passed}",
            ]
        )


def check_activation(act, z=None, *, hs=None, tails: bool = True) -> ActivationReport:
    r"""Check an activation's :math:`\sigma'` and :math:`\sigma''` by Taylor rates.

    At every grid point the remainders of the first- and second-order Taylor
    models of :math:`\sigma`, and of the first-order model of
    :math:`\sigma'`, must decay at rates 2, 3 and 2 (judged as in
    :func:`taylor_check`, against the round-off floor), which a wrong
    :math:`\sigma'` or :math:`\sigma''` cannot fake. Use it on activations
    from :func:`hessquik_core.activations.custom` or your own subclass of
    :class:`~hessquik_core.activations.Activation`.

    Parameters
    ----------
    act : Activation or str
    z : array-like (N,), optional
        Grid (float64; any library's array is accepted and copied to the
        host, the activation runs on NumPy). Default: 121 points in
        :math:`[-6, 6]`, offset by :math:`10^{-3}` off the integers.
    hs : sequence of float, optional
        Strictly decreasing steps, default :math:`2^{-1}, \dots, 2^{-12}`.
    tails : bool
        Also require finite values at :math:`|z| \in \{10^2, 10^3, 10^4\}` in
        float32 and float64 (the overflow-safety every built-in activation
        has).

    Returns
    -------
    ActivationReport
        Truthy when passed (``assert check_activation(act)``), or call
        :meth:`~ActivationReport.assert_passed` for a message with the numbers.

    Raises
    ------
    TypeError, ValueError
        For an ``act`` that is no activation, or a bad grid or steps.
    """
    from .activations import get_activation

    act = get_activation(act)
    hs_arr = _check_hs(hs)
    if z is None:
        zg = np.linspace(-6.0, 6.0, 121) + 1e-3
    else:
        zg = np.asarray(to_numpy(z) if not isinstance(z, (list, tuple)) else z, dtype=np.float64)
        if zg.ndim != 1 or zg.size < 1 or not np.all(np.isfinite(zg)):
            raise ValueError(f"z must be a non-empty 1-D array of finite points, got shape {zg.shape}")
    eps = float(np.finfo(np.float64).eps)

    def ev(x, order=2):
        return [
            None if a is None else np.asarray(to_numpy(a), dtype=np.float64) for a in act(x, order, xp=np)
        ]

    s, s1, s2 = ev(zg)
    H = hs_arr.size
    E1, E2, Ed, F1, F2 = (np.empty((H, zg.size)) for _ in range(5))
    for i, h in enumerate(hs_arr):
        sh, s1h, _ = ev(zg + h, 1)
        E1[i] = np.abs(sh - s - h * s1)
        E2[i] = np.abs(sh - s - h * s1 - 0.5 * h * h * s2)
        Ed[i] = np.abs(s1h - s1 - h * s2)
        F1[i] = eps * (np.abs(sh) + np.abs(s) + h * np.abs(s1) + 0.5 * h * h * np.abs(s2))
        F2[i] = eps * (np.abs(s1h) + np.abs(s1) + h * np.abs(s2))
    ok1, order1, st1 = _judge(E1, F1, hs_arr, 2.0)
    ok2, order2, st2 = _judge(E2, F1, hs_arr, 3.0)
    okd, order_d, std = _judge(Ed, F2, hs_arr, 2.0)

    # central differences at the step balancing truncation and round-off
    hc = eps ** (1.0 / 3.0)
    sp, s1p, _ = ev(zg + hc, 1)
    sm, s1m, _ = ev(zg - hc, 1)
    fd1 = float(np.max(np.abs((sp - sm) / (2 * hc) - s1) / np.maximum(1.0, np.abs(s1))))
    fd2 = float(np.max(np.abs((s1p - s1m) / (2 * hc) - s2) / np.maximum(1.0, np.abs(s2))))

    consistent = True
    for dtype in (np.float32, np.float64):
        zz = zg.astype(dtype)
        full = act(zz, 2, xp=np)
        for order in (0, 1):
            part = act(zz, order, xp=np)
            for k in range(3):
                if k <= order:
                    consistent &= part[k] is not None and np.array_equal(
                        np.asarray(part[k]), np.asarray(full[k]), equal_nan=True
                    )
                else:
                    consistent &= part[k] is None
        consistent &= all(
            getattr(a, "shape", None) == zz.shape and getattr(a, "dtype", None) == dtype for a in full
        )

    tails_ok = None
    if tails:
        tails_ok = True
        for dtype in (np.float32, np.float64):
            zt = np.array([-1e4, -1e3, -1e2, 1e2, 1e3, 1e4], dtype=dtype)
            try:
                with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
                    out = act(zt, 2, xp=np)
                tails_ok &= all(bool(np.all(np.isfinite(np.asarray(a)))) for a in out)
            except FloatingPointError:
                tails_ok = False

    return ActivationReport(
        name=getattr(act, "name", type(act).__name__),
        z=zg,
        hs=hs_arr,
        E1=E1,
        E2=E2,
        Ed=Ed,
        order1=order1,
        order2=order2,
        order_d=order_d,
        status1=st1,
        status2=st2,
        status_d=std,
        first_order_ok=bool(np.all(ok1)),
        second_order_ok=bool(np.all(ok2)) and bool(np.all(okd)),
        fd_error1=fd1,
        fd_error2=fd2,
        consistent=bool(consistent),
        tails_ok=tails_ok,
    )

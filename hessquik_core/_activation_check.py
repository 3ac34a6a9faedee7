r"""Taylor checks of an activation's derivatives :math:`\sigma', \dots, \sigma^{(K)}` on a
grid, :math:`K` its ``max_order`` (:func:`hessquik_core.checks.check_activation`,
re-exported there)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._taylor import _check_hs, _fmt_order, _judge
from .backends._generic import to_numpy

__all__ = ["ActivationReport", "check_activation"]

_NAMES = {1: "sigma'", 2: "sigma''", 3: "sigma'''", 4: "sigma''''"}


@dataclass
class ActivationReport:
    r"""Result of :func:`check_activation`.

    Attributes
    ----------
    name : str
        The activation's name.
    max_order : int
        :math:`K`, the highest derivative checked (the activation's ``max_order``).
    z : ndarray of shape (N,)
        Grid points (float64 copy).
    hs : ndarray of shape (H,)
        Steps.
    remainders : dict of int to ndarray of shape (H, N)
        ``remainders[k]`` is the Taylor remainder of order :math:`k` per grid point,
        :math:`|\sigma(z+h) - \sum_{j \le k} h^j \sigma^{(j)}(z)/j!|`, expected
        :math:`O(h^{k+1})`, for :math:`k = 1, \dots, K`.
    against_lower : dict of int to ndarray of shape (H, N)
        ``against_lower[k]`` is :math:`|\sigma^{(k-1)}(z+h) - \sigma^{(k-1)}(z) - h\sigma^{(k)}(z)|`,
        expected :math:`O(h^2)`: :math:`\sigma^{(k)}` against :math:`\sigma^{(k-1)}` directly,
        for :math:`k = 2, \dots, K` (the high-order remainders reach round-off after few steps;
        this one does not).
    orders, orders_lower : dict of int to ndarray of shape (N,)
        Judged orders of the two (NaN unless measured), per grid point; ``orders[k]``
        for :math:`k \ge 3` has shape (1,): the order of the largest remainder over the
        grid (pointwise, these remainders reach round-off within a few steps and change
        sign near the zeros of :math:`\sigma^{(k+1)}`).
    statuses, statuses_lower : dict of int to ndarray of shape (N,)
        As in :class:`TaylorReport`.
    order_ok : dict of int to bool
        Whether :math:`\sigma^{(k)}` passed both of its checks, over all grid points.
    E1, E2, Ed, order1, order2, order_d, status1, status2, status_d
        ``remainders[1]``, ``remainders[2]``, ``against_lower[2]`` and their orders and
        statuses (the names of the first- and second-order check).
    first_order_ok, second_order_ok : bool
        ``order_ok[1]``, ``order_ok[2]``.
    fd_error1, fd_error2 : float
        Largest relative error of central differences of :math:`\sigma` (of
        :math:`\sigma'`) at :math:`h = \varepsilon^{1/3}` against :math:`\sigma'`
        (:math:`\sigma''`), relative to :math:`\max(1, |\cdot|)`; for reading, not judged.
    consistent : bool
        ``order=0`` and ``order=1`` calls return the same arrays as ``order=2``, and
        ``derivatives(z, K)`` the same first three (to 1e-12 relative) and :math:`K + 1`
        arrays in all, each of the input's shape and dtype.
    tails_ok : bool or None
        Finite :math:`\sigma, \dots, \sigma^{(K)}` at :math:`|z| \in \{10^2, 10^3, 10^4\}`
        in float32 and float64, without floating-point warnings (``None``: not checked).
    passed : bool
    """

    name: str
    max_order: int
    z: np.ndarray
    hs: np.ndarray
    remainders: dict[int, np.ndarray]
    against_lower: dict[int, np.ndarray]
    orders: dict[int, np.ndarray]
    orders_lower: dict[int, np.ndarray]
    statuses: dict[int, np.ndarray]
    statuses_lower: dict[int, np.ndarray]
    order_ok: dict[int, bool]
    fd_error1: float
    fd_error2: float
    consistent: bool
    tails_ok: bool | None
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = all(self.order_ok.values()) and self.consistent and self.tails_ok is not False

    # the names of the first- and second-order check
    E1 = property(lambda self: self.remainders[1])
    E2 = property(lambda self: self.remainders[2])
    Ed = property(lambda self: self.against_lower[2])
    order1 = property(lambda self: self.orders[1])
    order2 = property(lambda self: self.orders[2])
    order_d = property(lambda self: self.orders_lower[2])
    status1 = property(lambda self: self.statuses[1])
    status2 = property(lambda self: self.statuses[2])
    status_d = property(lambda self: self.statuses_lower[2])
    first_order_ok = property(lambda self: self.order_ok[1])
    second_order_ok = property(lambda self: self.order_ok[2])

    def __bool__(self) -> bool:
        return self.passed

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` (with this report) unless the check passed."""
        if not self.passed:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        verdict = {True: "ok", False: "FAILED", None: "not checked"}
        lines = [
            f"Activation check: {self.name}, {self.z.size} points in [{self.z.min():g}, {self.z.max():g}]"
        ]
        for k in range(1, self.max_order + 1):
            line = f"{_NAMES[k]:<10} by Taylor (expect {k + 1}): {_fmt_order(self.orders[k], self.statuses[k]):>5}"
            if k >= 2:
                line += (
                    f", against {_NAMES[k - 1]} (expect 2): "
                    f"{_fmt_order(self.orders_lower[k], self.statuses_lower[k]):>5}"
                )
            lines.append(f"{line}  {verdict[self.order_ok[k]]}")
        lines += [
            f"central differences: |d sigma - sigma'| = {self.fd_error1:.1e}, "
            f"|d sigma' - sigma''| = {self.fd_error2:.1e}",
            f"orders 0..{self.max_order} consistent: {verdict[self.consistent]}; "
            f"tails |z| <= 1e4: {verdict[self.tails_ok]}",
            f"passed: {self.passed}",
        ]
        return "\n".join(lines)


def _all_orders(act, z, K):
    """``(σ, …, σ⁽ᴷ⁾)`` at ``z`` on NumPy (``act(z, 2)`` below order 3)."""
    return act.derivatives(z, K, xp=np) if K > 2 else act(z, 2, xp=np)


def check_activation(act, z=None, *, hs=None, tails: bool = True) -> ActivationReport:
    r"""Check an activation's derivatives :math:`\sigma', \dots, \sigma^{(K)}` by Taylor rates.

    :math:`K` is the activation's ``max_order`` (2 for :math:`\sigma', \sigma''`
    only, 4 for every built-in activation and for :func:`~hessquik_core.activations.custom`
    given ``d3f`` and ``d4f``). At every grid point, for :math:`k = 1, \dots, K`,

    .. math::
        \Bigl|\sigma(z+h) - \sum_{j=0}^{k} \frac{h^j}{j!}\sigma^{(j)}(z)\Bigr| = O(h^{k+1})
        \quad\text{and}\quad
        |\sigma^{(k-1)}(z+h) - \sigma^{(k-1)}(z) - h\sigma^{(k)}(z)| = O(h^2)

    must hold, the rates judged as in :func:`taylor_check` against the round-off
    floor: a wrong :math:`\sigma^{(k)}` leaves rates :math:`k` and 1 behind, which
    no tolerance can hide. Use it on activations from
    :func:`hessquik_core.activations.custom` or your own subclass of
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
        Also require finite values of every order at :math:`|z| \in \{10^2, 10^3, 10^4\}`
        in float32 and float64 (the overflow-safety every built-in activation has).

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
    K = int(act.max_order)
    hs_arr = _check_hs(hs)
    if z is None:
        zg = np.linspace(-6.0, 6.0, 121) + 1e-3
    else:
        zg = np.asarray(to_numpy(z) if not isinstance(z, (list, tuple)) else z, dtype=np.float64)
        if zg.ndim != 1 or zg.size < 1 or not np.all(np.isfinite(zg)):
            raise ValueError(f"z must be a non-empty 1-D array of finite points, got shape {zg.shape}")
    eps = float(np.finfo(np.float64).eps)

    def ev(x):
        return [np.asarray(to_numpy(a), dtype=np.float64) for a in _all_orders(act, x, K)]

    d = ev(zg)
    H, N = hs_arr.size, zg.size
    E = {k: np.empty((H, N)) for k in range(1, K + 1)}
    D = {k: np.empty((H, N)) for k in range(2, K + 1)}
    FE, FD = np.empty((H, N)), {k: np.empty((H, N)) for k in range(2, K + 1)}
    for i, h in enumerate(hs_arr):
        dh = ev(zg + h)
        terms = [h**j / math.factorial(j) * d[j] for j in range(K + 1)]
        partial = np.zeros(N)
        for k in range(K + 1):
            partial = partial + terms[k]
            if k >= 1:
                E[k][i] = np.abs(dh[0] - partial)
        FE[i] = eps * (np.abs(dh[0]) + sum(np.abs(t) for t in terms))
        for k in range(2, K + 1):
            D[k][i] = np.abs(dh[k - 1] - d[k - 1] - h * d[k])
            FD[k][i] = eps * (np.abs(dh[k - 1]) + np.abs(d[k - 1]) + h * np.abs(d[k]))
    orders, statuses, orders_lower, statuses_lower, order_ok = {}, {}, {}, {}, {}
    for k in range(1, K + 1):
        if k <= 2:
            ok, orders[k], statuses[k] = _judge(E[k], FE, hs_arr, float(k + 1))
        else:
            # pointwise, a remainder of order >= 3 reaches round-off within a few steps
            # and changes sign near the zeros of σ⁽ᵏ⁺¹⁾ (a dip that reads as a low order):
            # judged on its largest value over the grid, whose rate is k + 1 exactly
            # when σ⁽ᵏ⁾ is right at every point (a wrong one leaves h^k |δ| / k! behind)
            worst = np.max(E[k], axis=1, keepdims=True)
            ok, orders[k], statuses[k] = _judge(
                worst, np.max(FE, axis=1, keepdims=True), hs_arr, float(k + 1)
            )
        order_ok[k] = bool(np.all(ok))
        if k >= 2:
            okd, orders_lower[k], statuses_lower[k] = _judge(D[k], FD[k], hs_arr, 2.0)
            order_ok[k] = order_ok[k] and bool(np.all(okd))

    # central differences at the step balancing truncation and round-off
    hc = eps ** (1.0 / 3.0)
    dp, dm = ev(zg + hc), ev(zg - hc)
    fd1 = float(np.max(np.abs((dp[0] - dm[0]) / (2 * hc) - d[1]) / np.maximum(1.0, np.abs(d[1]))))
    fd2 = float(np.max(np.abs((dp[1] - dm[1]) / (2 * hc) - d[2]) / np.maximum(1.0, np.abs(d[2]))))

    return ActivationReport(
        name=getattr(act, "name", type(act).__name__),
        max_order=K,
        z=zg,
        hs=hs_arr,
        remainders=E,
        against_lower=D,
        orders=orders,
        orders_lower=orders_lower,
        statuses=statuses,
        statuses_lower=statuses_lower,
        order_ok=order_ok,
        fd_error1=fd1,
        fd_error2=fd2,
        consistent=_consistent(act, zg, K),
        tails_ok=_tails_ok(act, K) if tails else None,
    )


def _consistent(act, zg, K) -> bool:
    ok = True
    for dtype in (np.float32, np.float64):
        zz = zg.astype(dtype)
        full = act(zz, 2, xp=np)
        for order in (0, 1):
            part = act(zz, order, xp=np)
            for k in range(3):
                if k <= order:
                    ok &= part[k] is not None and np.array_equal(
                        np.asarray(part[k]), np.asarray(full[k]), equal_nan=True
                    )
                else:
                    ok &= part[k] is None
        ok &= all(getattr(a, "shape", None) == zz.shape and getattr(a, "dtype", None) == dtype for a in full)
        if K > 2:
            high = act.derivatives(zz, K, xp=np)
            ok &= len(high) == K + 1 and all(
                getattr(a, "shape", None) == zz.shape and getattr(a, "dtype", None) == dtype for a in high
            )
            if ok:
                tol = 1e-12 if dtype == np.float64 else 1e-5
                ok &= all(
                    np.allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=0.0, equal_nan=True)
                    for a, b in zip(high[:3], full)
                )
    return bool(ok)


def _tails_ok(act, K) -> bool:
    ok = True
    for dtype in (np.float32, np.float64):
        zt = np.array([-1e4, -1e3, -1e2, 1e2, 1e3, 1e4], dtype=dtype)
        try:
            with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
                out = _all_orders(act, zt, K)
            ok &= all(bool(np.all(np.isfinite(np.asarray(a)))) for a in out)
        except FloatingPointError:
            ok = False
    return bool(ok)

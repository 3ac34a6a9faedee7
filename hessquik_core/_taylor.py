r"""The verdict of a Taylor check: measured convergence orders judged against round-off.

Shared by :func:`hessquik_core.checks.taylor_check` (networks) and
:func:`hessquik_core.checks.check_activation` (activations); the method is
described in :mod:`hessquik_core.checks`.
"""

from __future__ import annotations

import numpy as np

#: an error is judged only when it exceeds this multiple of its round-off floor
#: (estimated as eps times the magnitudes involved, float64) ...
_SAFETY = 100.0
#: ... or of its *measured* round-off (below float64, against a float64 evaluation)
_SAFETY_MEASURED = 16.0
#: a measured order below 1/2 this close to the floor means round-off has taken over
_PLATEAU = 1.0e4
#: a measured order passes when it is nearer the expected order p than the order
#: p - 1 that a wrong derivative leaves behind
_MARGIN = 0.5
#: fewest consecutive step pairs above round-off that a measured order needs
_MIN_PAIRS = 3


def _default_hs() -> np.ndarray:
    return 2.0 ** -np.arange(1, 13, dtype=np.float64)


def _orders(E: np.ndarray, hs: np.ndarray) -> np.ndarray:
    """Measured orders between consecutive steps, ``(len(hs) - 1, m)``."""
    logh = np.log(hs)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(E[:-1] / E[1:]) / (logh[:-1] - logh[1:])[:, None]


def _judge(E: np.ndarray, floor: np.ndarray, hs: np.ndarray, expected: float, safety: float = _SAFETY):
    r"""Per output: (passed, measured order or NaN, status).

    ``status`` is ``"measured"``, ``"exact"`` (at round-off for every step),
    ``"inconclusive"`` (above round-off for too few steps) or ``"non-finite"``.

    The judged pairs are the contiguous run of steps, from the first one
    above ``safety`` times the round-off floor, that ends where the error
    leaves that band or flattens out (order < 1/2) near the floor. The
    measured order is the larger of the run's last two orders (smallest
    steps, where the expansion is asymptotic); it passes if it is at least
    ``expected - 0.5`` (nearer ``expected`` than the ``expected - 1`` of a
    wrong derivative). Fewer than three judged pairs cannot tell an order
    from the pre-asymptotic range: inconclusive, which does not fail (a
    wrong derivative leaves an error far above round-off over many steps).
    Non-finite errors fail.
    """
    H, m = E.shape
    rates = _orders(E, hs)
    passed = np.zeros(m, dtype=bool)
    measured = np.full(m, np.nan)
    status = np.full(m, "measured", dtype=object)
    for j in range(m):
        e, fl = E[:, j], floor[:, j]
        if not np.all(np.isfinite(e)):
            status[j] = "non-finite"
            continue
        above = e > safety * fl
        if not above.any():
            passed[j], status[j] = True, "exact"  # at round-off for every step
            continue
        start = int(np.argmax(above))
        kept = []
        for i in range(start, H - 1):
            if not (above[i] and above[i + 1]):
                break
            if rates[i, j] < 0.5 and e[i + 1] < _PLATEAU * fl[i + 1]:
                break  # flattened out at round-off level
            kept.append(i)
        if len(kept) < _MIN_PAIRS:
            # above round-off for too few steps: no order can be told apart
            passed[j], status[j] = True, "inconclusive"
            continue
        r = rates[kept, j]
        # the asymptotic end of the run: its last two orders (one may sit on a
        # pre-asymptotic wiggle; a wrong derivative drags both to expected - 1)
        measured[j] = float(np.max(r[-2:]))
        passed[j] = measured[j] >= expected - _MARGIN
    return passed, measured, status


def _fmt_order(order: np.ndarray, status: np.ndarray) -> str:
    """Smallest measured order, and how many outputs were exact / inconclusive."""
    a = order[np.isfinite(order)]
    text = f"{float(np.min(a)):.2f}" if a.size else ""
    notes = [
        f"{int(np.sum(status == s))} of {status.size} outputs {s}"
        for s in ("exact", "inconclusive", "non-finite")
        if np.any(status == s)
    ]
    if not a.size and len(notes) == 1:
        return notes[0].split(" outputs ")[-1] if np.all(status == status[0]) else notes[0]
    return " ".join([text] + (["(" + ", ".join(notes) + ")"] if notes else [])).strip()


def _check_hs(hs) -> np.ndarray:
    arr = _default_hs() if hs is None else np.asarray(hs, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"hs must be at least two positive finite step lengths, got {hs!r}")
    if not np.all(np.diff(arr) < 0):
        raise ValueError(f"hs must be strictly decreasing, got {hs!r}")
    return arr

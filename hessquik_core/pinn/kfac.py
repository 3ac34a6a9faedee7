r"""KFAC for PINN losses: Kronecker-factored Gauss–Newton from the sweep's own streams.

For each affine block :math:`Z = Y\tilde M` (:math:`\tilde M = [M; b]`, ``(p+1, q)``)
:func:`~hessquik_core.pinn.kfac_factors` ("expand" variant) gives, for the
linearised residual of a term, :math:`r_i \approx \sum_q \langle c_{q,i}, q(x_i;\theta)\rangle`
with :math:`c_q = \partial f_t/\partial q` (all its quantities swept together),
the factors of :math:`\frac1n\sum_i J_i^\top J_i \approx A_t\otimes B_t`.
The Gauss–Newton block of the loss is a sum over the terms,
:math:`G_\ell \approx \sum_t w_t\,A_t\otimes B_t`; it is replaced by one
Kronecker product,

.. math::
    G_\ell \approx A_\ell\otimes B_\ell,\qquad
    B_\ell = \sum_t w_t B_t,\qquad
    A_\ell = \frac{\sum_t w_t\operatorname{tr}(B_t)\,A_t}{\sum_t w_t\operatorname{tr}(B_t)},

exact when one term contributes or all :math:`A_t` agree, and kept
as an exponential moving average over steps (``ema``). With factored
Tikhonov damping (Martens & Grosse 2015, §6.3),
:math:`\pi = \sqrt{(\operatorname{tr}A/\dim A)/(\operatorname{tr}B/\dim B)}`,
the block of the preconditioned gradient is

.. math::
    \Delta_\ell = (A_\ell + \pi\sqrt\lambda I)^{-1}\,\nabla_{\tilde M_\ell}L\,(B_\ell + \tfrac{\sqrt\lambda}{\pi} I)^{-1}.

**Automatic learning rate and momentum** (``auto=True``, Martens & Grosse §7):
the update :math:`\delta = \alpha(-\Delta) + \mu\delta_0` (:math:`\delta_0` the previous
update) minimises the exact damped Gauss–Newton model
:math:`M(\delta) = \tfrac12\delta^\top(G + \lambda I)\delta + g^\top\delta` over
:math:`(\alpha, \mu)`: a 2×2 linear system whose entries need :math:`J\Delta`
and :math:`J\delta_0` (two matrix-free products). The damping follows the
Levenberg–Marquardt rule on :math:`\varrho = (L(\theta + \delta) - L(\theta))/M(\delta)`:
:math:`\lambda \leftarrow \omega\lambda` if :math:`\varrho > 3/4`, :math:`\lambda/\omega`
if :math:`\varrho < 1/4` (:math:`\omega = 0.77 \approx (19/20)^5`, adjusted every step);
a step that raises the loss is rejected and :math:`\lambda \leftarrow 10\lambda`.
``auto=False``: :math:`\delta = -\eta\Delta + \mu\delta_0`
with fixed ``lr``, ``momentum`` and ``damping``, every step taken (as in stochastic training).

Cost per step: one forward and one backward sweep per quantity and term for
the factors (one sweep per term; :math:`O(nR(p^2 + q^2))` per layer, :math:`R` streams per point),
:math:`O(p^3 + q^3)` per layer for the two solves, the gradient, two
:math:`Jv` products (``auto``) and one loss evaluation. Memory: the factors,
:math:`O(\sum_\ell p_\ell^2 + q_\ell^2)`; :math:`J` is never formed.
"""

from __future__ import annotations

import math
from typing import Any

from ._base import Optimizer, StepRecord
from ._problem_higher import HIGHER
from .jacobian import kfac_factors
from .problem import Problem

__all__ = ["KFAC"]

_OMEGA = (19 / 20) ** 5


def _blocks(problem: Problem) -> list[tuple[str, str | None]]:
    """``(weight key, bias key or None)`` per affine block, in layout order."""
    keys = problem.layout.keys
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(keys):
        prefix, _, name = keys[i].rpartition(".")
        if name != "K":
            raise ValueError(
                f"KFAC supports networks of dense and residual layers (parameters K, b); got parameter "
                f"{keys[i]!r}"
            )
        bias = f"{prefix}.b" if prefix else "b"
        if i + 1 < len(keys) and keys[i + 1] == bias:
            out.append((keys[i], bias))
            i += 2
        else:
            out.append((keys[i], None))
            i += 1
    return out


class KFAC(Optimizer):
    r"""Kronecker-factored Gauss–Newton (KFAC-expand) with automatic learning rate and momentum.

    Parameters
    ----------
    problem : Problem
        Its network must consist of dense and residual layers (what
        :func:`~hessquik_core.pinn.kfac_factors` supports).
    damping : float
        Initial :math:`\lambda > 0` (default 1e-3).
    auto : bool
        Martens & Grosse's quadratic-model choice of :math:`(\alpha, \mu)` and
        the adaptive damping (module docstring); ``False`` uses ``lr`` and ``momentum``.
    lr, momentum : float
        For ``auto=False`` (defaults 1e-2 and 0.0).
    ema : float
        Moving-average factor of the Kronecker factors, in ``[0, 1)`` (default 0.95; 0 keeps only the newest).
    damping_min : float
        Floor of the adapted damping.
    """

    def __init__(
        self,
        problem: Problem,
        *,
        damping: float = 1e-3,
        auto: bool = True,
        lr: float = 1e-2,
        momentum: float = 0.0,
        ema: float = 0.95,
        damping_min: float = 1e-12,
    ) -> None:
        super().__init__(problem)
        higher = [(name, q) for name, t in zip(problem.names, problem.terms) for q in t.needs if q in HIGHER]
        if higher:  # no Kronecker factors for the order-3/4 streams (yet): refused before any work
            name, q = higher[0]
            raise ValueError(
                f"KFAC has no Kronecker factors for {q!r} (residual {name!r}); use GaussNewton or ENGD, "
                "which take the exact Jacobian of the order-3/4 quantities"
            )
        for name, val in (("damping", damping), ("lr", lr)):
            if (
                isinstance(val, bool)
                or not isinstance(val, (int, float))
                or not (val > 0 and math.isfinite(val))
            ):
                raise ValueError(f"{name} must be a positive finite number, got {val!r}")
        if not (0 <= momentum < 1 and 0 <= ema < 1):
            raise ValueError(f"momentum and ema must lie in [0, 1), got momentum={momentum}, ema={ema}")
        self.damping, self.auto, self.lr, self.momentum = (
            float(damping),
            bool(auto),
            float(lr),
            float(momentum),
        )
        self.ema, self.damping_min = float(ema), float(damping_min)
        self.blocks = _blocks(problem)
        self._factors: list[tuple[Any, Any]] | None = None
        self._prev: Any = None  # the previous update δ₀

    # -- curvature -----------------------------------------------------------
    def _new_factors(self) -> list[tuple[Any, Any]]:
        p, xp = self.problem, self.problem.xp
        acc: list[list[Any]] | None = None
        for t, lin in zip(p.terms, p._linearization()):
            ones = xp.ones((t.n,), dtype=p.dtype, device=p.device)
            # the linearised residual of the term, all its quantities in one sweep
            pairs = kfac_factors(p.net, t.points, p._coefficients(t, lin, ones), weights=t.weights)
            if len(pairs) != len(self.blocks):
                raise ValueError(  # pragma: no cover - the layout and the sweep disagree
                    f"kfac_factors returned {len(pairs)} blocks for {len(self.blocks)} parameter blocks"
                )
            if acc is None:
                acc = [[0.0, 0.0, 0.0] for _ in pairs]
            for a, (A, B) in zip(acc, pairs):
                wB = t.weight * B
                tr = float(xp.linalg.trace(wB))
                a[0] = a[0] + tr * A
                a[1] = a[1] + wB
                a[2] += tr
        assert acc is not None
        return [(A / tr if tr > 0 else A, B) for A, B, tr in acc]

    def _update_factors(self) -> None:
        new = self._new_factors()
        if self._factors is None or self.ema == 0.0:
            self._factors = new
        else:
            e = self.ema
            self._factors = [
                (e * A0 + (1 - e) * A, e * B0 + (1 - e) * B) for (A0, B0), (A, B) in zip(self._factors, new)
            ]

    def precondition(self, g: Any) -> Any:
        r"""The preconditioned gradient, ``(P,)``: per block
        :math:`\Delta_\ell = (A_\ell + \pi\sqrt\lambda I)^{-1} G_\ell (B_\ell + \sqrt\lambda/\pi\, I)^{-1}`.

        Uses the current factors (after at least one ``step()``).
        """
        if self._factors is None:
            raise RuntimeError("no Kronecker factors yet: call step() first")
        p, xp = self.problem, self.problem.xp
        parts = p.layout.unflatten(g)
        out = dict(parts)
        root = math.sqrt(self.damping)
        for (kw, kb), (A, B) in zip(self.blocks, self._factors):
            G = parts[kw] if kb is None else xp.concat([parts[kw], parts[kb][None, :]], axis=0)
            a, b = A.shape[0], B.shape[0]
            pi = math.sqrt(
                max(float(xp.linalg.trace(A)) / a, 1e-300) / max(float(xp.linalg.trace(B)) / b, 1e-300)
            )
            eye_a = xp.eye(a, dtype=p.dtype, device=p.device)
            eye_b = xp.eye(b, dtype=p.dtype, device=p.device)
            X = xp.linalg.solve(A + (pi * root) * eye_a, G)
            X = xp.linalg.solve(B + (root / pi) * eye_b, X.T).T  # (B + ·)⁻¹ symmetric
            if kb is None:
                out[kw] = X
            else:
                out[kw], out[kb] = X[:-1, :], X[-1, :]
        return p.layout.flatten(out)

    # -- the step ------------------------------------------------------------
    def _step(self) -> StepRecord:
        p, xp = self.problem, self.problem.xp
        theta = p.parameters()
        rho = p.residual_vector()
        loss0 = 0.5 * float(xp.sum(rho * rho))
        g = p.vjp(rho)
        self._update_factors()
        lam = self.damping
        step_dir = -self.precondition(g)  # Δ' = -Δ
        if self.auto:
            delta, model, alpha, mu = self._quadratic_model(g, step_dir)
        else:
            alpha, mu = self.lr, self.momentum
            delta = alpha * step_dir + (mu * self._prev if self._prev is not None and mu else 0.0)
            model = -math.inf
        loss1 = p.loss_at(theta + delta)
        accepted = loss1 < loss0 or not self.auto
        if accepted:
            p.set_parameters(theta + delta)
            self._prev = delta
        else:
            loss1 = loss0
            self._prev = None
        if self.auto:
            ratio = (loss1 - loss0) / model if model < 0 and accepted else 0.0
            if not accepted:  # the model is far off: the Levenberg-Marquardt jump
                self.damping = self.damping * 10.0
            elif ratio > 0.75:
                self.damping = max(self.damping * _OMEGA, self.damping_min)
            elif ratio < 0.25:
                self.damping = self.damping / _OMEGA
        return StepRecord(
            step=0,
            loss=loss1,
            loss_before=loss0,
            step_size=alpha if accepted else 0.0,
            damping=lam,
            accepted=accepted,
            extra={"momentum": mu},
        )

    def _quadratic_model(self, g: Any, step_dir: Any) -> tuple[Any, float, float, float]:
        r""":math:`(\delta, M(\delta), \alpha, \mu)` minimising :math:`M(\alpha\Delta' + \mu\delta_0)`."""
        p, xp, lam = self.problem, self.problem.xp, self.damping
        Jd = p.jvp(step_dir)
        a11 = float(xp.sum(Jd * Jd)) + lam * float(xp.sum(step_dir * step_dir))
        b1 = float(xp.sum(g * step_dir))
        if self._prev is None:
            alpha = -b1 / a11 if a11 > 0 else 0.0
            return alpha * step_dir, 0.5 * alpha * b1, alpha, 0.0
        d0 = self._prev
        J0 = p.jvp(d0)
        a12 = float(xp.sum(Jd * J0)) + lam * float(xp.sum(step_dir * d0))
        a22 = float(xp.sum(J0 * J0)) + lam * float(xp.sum(d0 * d0))
        b2 = float(xp.sum(g * d0))
        det = a11 * a22 - a12 * a12
        if not det > 1e-14 * a11 * a22:  # (nearly) parallel directions: no momentum
            alpha = -b1 / a11 if a11 > 0 else 0.0
            return alpha * step_dir, 0.5 * alpha * b1, alpha, 0.0
        alpha = (-b1 * a22 + b2 * a12) / det
        mu = (-b2 * a11 + b1 * a12) / det
        # at the minimiser, M = ½ (α b1 + μ b2)
        return alpha * step_dir + mu * d0, 0.5 * (alpha * b1 + mu * b2), alpha, mu

r"""Training losses and their derivatives with respect to the network output.

Conventions (pinned by tests against dense brute-force matrices)
----------------------------------------------------------------
The network maps example :math:`x_n` to :math:`f_n = f(x_n;\theta) \in \mathbb{R}^m`,
stacked as ``F : (N, m)``. A loss is a per-example loss :math:`\ell(f_n, y_n)`
reduced over the ``N`` examples of the call:

.. math::
    C(\theta) = w \sum_{n=1}^{N} \ell(f_n, y_n), \qquad
    w = 1/N \ (\texttt{reduction="mean"}, \text{default}),\quad w = 1 \ (\texttt{"sum"}).

* :class:`MSELoss`: :math:`\ell(f, y) = \tfrac12 \lVert f - y\rVert^2` (the ½ is
  included; summed over the ``m`` outputs, *not* averaged over them), so
  :math:`\nabla_f \ell = f - y` and :math:`\nabla_f^2 \ell = I_m`. This differs
  from ``torch.nn.MSELoss()`` (mean over all ``N·m`` entries, no ½) by the
  factor :math:`m/2`.
* :class:`CrossEntropyLoss`: softmax cross-entropy on logits ``F``.
  With target probabilities :math:`t` (one-hot from integer labels, or soft
  labels given as rows of an ``(N, m)`` array) and :math:`s = \sum_j t_j`
  (1 for one-hot),

  .. math::
      \ell(f, t) = s\,\mathrm{lse}(f) - t\cdot f,\quad
      \nabla_f \ell = s\,p - t,\quad
      \nabla_f^2 \ell = s\,(\mathrm{diag}(p) - p p^\top),\quad p = \mathrm{softmax}(f),

  with :math:`\mathrm{lse}(f) = \max_j f_j + \log\sum_j e^{f_j - \max f}` (no
  overflow). With ``reduction="mean"`` this equals
  ``torch.nn.functional.cross_entropy``.

The derivatives returned by :meth:`Loss.gradient`, :meth:`Loss.hessian` and
:meth:`Loss.hvp` are those of the *reduced* loss :math:`C` with respect to
each row :math:`f_n` (they include the factor :math:`w`); since :math:`C` is a
sum over examples its Hessian with respect to ``F`` is block diagonal, and
only the ``N`` blocks ``(m, m)`` are returned.

This module is over 400 lines because each loss keeps, next to its formulas,
every option of its torch twin that it honours (ignore_index, class weights,
label smoothing, reductions) with the derivation of its exact gradient and
Hessian blocks; the classes share only the base class.

torch loss objects are accepted wherever a loss is (:func:`get_loss`):
``torch.nn.CrossEntropyLoss(reduction=, weight=, ignore_index=, label_smoothing=)``
becomes :class:`CrossEntropyLoss` with the same options (``"mean"`` divides by
the summed weights of the counted labels, as torch); ``torch.nn.MSELoss(reduction=...)`` keeps torch's
scaling (mean over all ``N·m`` entries, no ½), so values, gradients and
curvature equal torch's.

(Longer than this package's ~400-line guide: the loss contract and both
losses with every torch option, most of it the docstrings that pin the
conventions; splitting the two losses apart would split one contract.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array import namespace_of

__all__ = ["CrossEntropyLoss", "Loss", "MSELoss", "get_loss"]

_REDUCTIONS = ("mean", "sum")


class Loss:
    """Base class of the losses: per-example loss and its ``f``-derivatives.

    Subclasses implement the per-example quantities on prepared targets
    ``T`` (``_targets`` builds them): ``_value -> (N,)``,
    ``_d1 -> (N, m)`` (:math:`\\nabla_f \\ell`), ``_hvp(F, T, R)`` for
    ``R : (N, k, m)`` (:math:`\\nabla_f^2 \\ell\\, R`) and ``_d2 -> (N, m, m)``.

    Parameters
    ----------
    reduction : {"mean", "sum"}
        :math:`w = 1/N` or :math:`w = 1` in :math:`C = w\\sum_n \\ell_n`.
    """

    name = "loss"

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def weight(self, n: int) -> float:
        """:math:`w`: ``1/n`` for ``"mean"``, ``1`` for ``"sum"``.

        Parameters
        ----------
        n : int
            Number of examples.

        Returns
        -------
        float
        """
        return 1.0 / n if self.reduction == "mean" else 1.0

    def weight_for(self, y: Any) -> float:
        """:math:`w` for the targets ``y`` of a call: :meth:`weight` of ``len(y)`` unless the
        loss's mean depends on the targets (:class:`CrossEntropyLoss` with ``ignore_index`` hit
        or class weights: one over the summed weights of the counted targets, as torch).

        Parameters
        ----------
        y : array
            All targets of the call (``(N, ...)``).

        Returns
        -------
        float
        """
        return self.weight(int(y.shape[0]))

    # -- validation ---------------------------------------------------------
    def _check_output(self, F):
        xp = namespace_of(F, "F")
        if F.ndim != 2:
            raise ValueError(f"network output F must have shape (N, m), got shape {tuple(F.shape)}")
        if not xp.isdtype(F.dtype, "real floating"):
            raise TypeError(f"F must have a real floating dtype, got {F.dtype}")
        return xp

    def _targets(self, n, m, dtype, y, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _value(self, F, T, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _d1(self, F, T, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _value_and_d1(self, F, T, xp, ops=None):
        """``(_value, _d1)`` in one go: a loss whose two share work (the cross-entropy's
        log-softmax) overrides it; the gradient pass calls this (``ops``: the call's backend)."""
        return self._value(F, T, xp), self._d1(F, T, xp)

    def _direct(self, y, n, m, dtype, ops):
        r"""The reduced loss of a whole call straight from its raw targets, where that is cheaper
        than preparing them (``_targets``) for a mini-batch loop: a function ``F -> (C, ∂C/∂F)``
        (0-d, ``(n, m)``, the weight :math:`w` included) of the outputs ``F : (n, m)`` of
        dtype ``dtype``, or ``None`` (the default) when this loss has none for ``y``. The
        function itself returns ``None`` only for targets the general route refuses (it then
        raises the error). ``ops``: the call's backend; ``y``: the user's targets, same library
        and device as ``F``, ``n`` rows (checked by the caller,
        ``hessquik_core/curvature/_lean.py``).
        """
        return None

    def _hvp(self, F, T, R, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _d2(self, F, T, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public: derivatives of the reduced loss C w.r.t. the output ---------
    def per_example(self, F: Any, y: Any) -> Any:
        r""":math:`\ell(f_n, y_n)` for every example (no reduction).

        Parameters
        ----------
        F : array of shape (N, m)
            Network outputs (logits for cross-entropy).
        y : array
            Targets, as for the loss (``(N, m)``, or labels ``(N,)``).

        Returns
        -------
        array of shape (N,)
        """
        xp = self._check_output(F)
        return self._value(F, self._targets(F.shape[0], F.shape[1], F.dtype, y, xp), xp)

    def value(self, F: Any, y: Any) -> Any:
        r""":math:`C = w \sum_n \ell(f_n, y_n)`.

        Parameters
        ----------
        F : array of shape (N, m)
            Network outputs (logits for cross-entropy).
        y : array
            Targets, as for the loss (``(N, m)``, or labels ``(N,)``).

        Returns
        -------
        0-d array
        """
        return self.weight_for(y) * self._sum(self.per_example(F, y))

    def gradient(self, F: Any, y: Any) -> Any:
        r""":math:`\partial C/\partial f_n = w\,\nabla_f \ell(f_n, y_n)`.

        Parameters
        ----------
        F : array of shape (N, m)
            Network outputs (logits for cross-entropy).
        y : array
            Targets, as for the loss (``(N, m)``, or labels ``(N,)``).

        Returns
        -------
        array of shape (N, m)
        """
        xp = self._check_output(F)
        return self.weight_for(y) * self._d1(F, self._targets(F.shape[0], F.shape[1], F.dtype, y, xp), xp)

    def hessian(self, F: Any, y: Any) -> Any:
        r"""Diagonal blocks :math:`\partial^2 C/\partial f_n^2 = w\,\nabla_f^2 \ell`.

        Parameters
        ----------
        F : array of shape (N, m)
            Network outputs (logits for cross-entropy).
        y : array
            Targets, as for the loss (``(N, m)``, or labels ``(N,)``).

        Returns
        -------
        array of shape (N, m, m)
        """
        xp = self._check_output(F)
        return self.weight_for(y) * self._d2(F, self._targets(F.shape[0], F.shape[1], F.dtype, y, xp), xp)

    def hvp(self, F: Any, y: Any, R: Any) -> Any:
        r""":math:`w\,\nabla_f^2 \ell(f_n)\, r_n`, one vector per example.

        Parameters
        ----------
        F : array of shape (N, m)
            Network outputs (logits for cross-entropy).
        y : array
            Targets, as for the loss (``(N, m)``, or labels ``(N,)``).
        R : array of shape (N, m)

        Returns
        -------
        array of shape (N, m)
        """
        xp = self._check_output(F)
        if tuple(R.shape) != tuple(F.shape):
            raise ValueError(f"R must have the shape of F {tuple(F.shape)}, got {tuple(R.shape)}")
        T = self._targets(F.shape[0], F.shape[1], F.dtype, y, xp)
        return self.weight_for(y) * self._hvp(F, T, R[:, None, :], xp)[:, 0, :]

    @staticmethod
    def _sum(a):
        return namespace_of(a).sum(a)


class MSELoss(Loss):
    r"""Half squared error :math:`\ell(f, y) = \tfrac12 \lVert f - y \rVert^2`, reduced by ``reduction``.

    ``y : (N, m)`` floating, same library as the network output. This is
    *not* ``torch.nn.MSELoss`` (mean over ``N·m`` entries, no ½), which
    :func:`get_loss` accepts too, with torch's scaling.

    Parameters
    ----------
    reduction : {"mean", "sum"}
    """

    name = "mse"

    def _targets(self, n, m, dtype, y, xp):
        namespace_of(y, "y")
        if tuple(y.shape) != (n, m):
            raise ValueError(f"MSE targets y must have shape ({n}, {m}) (N, m), got {tuple(y.shape)}")
        if not xp.isdtype(y.dtype, "real floating"):
            raise TypeError(f"MSE targets y must be floating, got dtype {y.dtype}")
        return xp.astype(y, dtype)

    def _value(self, F, T, xp):
        r = F - T
        return 0.5 * xp.sum(r * r, axis=-1)

    def _c(self, m: int) -> float:
        r"""The scale :math:`c` of :math:`\ell = c\cdot\tfrac12\lVert f - y\rVert^2` (1 here; torch's
        MSE: see :class:`_TorchMSELoss`)."""
        return 1.0

    def _d1(self, F, T, xp):
        return F - T

    def _direct(self, y, n, m, dtype, ops):
        # C = w c ½ Σ r², ∂C/∂F = w c r, r = F - y: a subtraction, a dot product, two scalings
        if y.dtype != dtype or tuple(y.shape) != (n, m):
            return None  # the general route casts or refuses
        y = ops.detached(y)
        k = self._c(m) * self.weight(n)

        def total(F):
            r = F - y
            return (0.5 * k) * ops.sum_squares(ops.view(r, (n * m,)), axis=0), k * r

        return total

    def _hvp(self, F, T, R, xp):
        return R

    def _d2(self, F, T, xp):
        n, m = F.shape
        eye = xp.eye(m, dtype=F.dtype, device=_dev(F))
        return xp.broadcast_to(eye[None, :, :], (n, m, m))


class CrossEntropyLoss(Loss):
    r"""Softmax cross-entropy on logits, reduced by ``reduction``, with torch's options.

    ``y`` is either integer class labels ``(N,)`` in ``[0, m)`` (or equal to
    ``ignore_index``) or target probabilities ``(N, m)`` (one-hot or soft;
    rows are used as given, their sum :math:`s` scales the log-sum-exp term).
    Every option is that of ``torch.nn.CrossEntropyLoss`` and gives torch's
    value: the per-example loss is
    :math:`\ell_n = \sum_c t_{nc}\,(\mathrm{lse}(f_n) - f_{nc})` with target weights

    * labels: :math:`t_{nc} = a_n\big((1-\varepsilon)\,\omega_{y_n}\delta_{c y_n}
      + \tfrac{\varepsilon}{m}\,\omega_c\big)`, :math:`a_n = [y_n \ne \text{ignore\_index}]`,
      and ``"mean"`` divides by :math:`D = \sum_n a_n\,\omega_{y_n}` (the
      number of counted labels without class weights);
    * probabilities :math:`\pi_n`: :math:`t_{nc} = \omega_c\big((1-\varepsilon)\pi_{nc}
      + \tfrac{\varepsilon}{m}\big)`, and ``"mean"`` divides by :math:`N`

    (:math:`\omega` the class weights, 1 without; :math:`\varepsilon` the label
    smoothing). Since :math:`\ell_n` keeps the form :math:`s\,\mathrm{lse}(f) - t\cdot f`,
    its derivatives are :math:`\nabla_f\ell = s\,p - t` and
    :math:`\nabla_f^2\ell = s(\mathrm{diag}\,p - pp^\top)` with these :math:`t`.

    Parameters
    ----------
    reduction : {"mean", "sum"}
        ``"none"`` is refused: curvature needs one scalar loss.
    weight : array of shape (m,), optional
        Class weights :math:`\omega` (any library; kept as float64 on the host).
    ignore_index : int, default -100
        Labels equal to it contribute nothing (and are not counted by ``"mean"``).
    label_smoothing : float, default 0.0
        :math:`\varepsilon \in [0, 1]`.
    """

    name = "cross_entropy"

    def __init__(
        self,
        reduction: str = "mean",
        *,
        weight: Any = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(reduction)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        eps = float(label_smoothing)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = eps
        self.class_weight = None if weight is None else _host_vector(weight, "weight")

    def __repr__(self) -> str:
        opts = [f"reduction={self.reduction!r}"]
        if self.class_weight is not None:
            opts.append(f"weight={self.class_weight.tolist()}")
        if self.ignore_index != -100:
            opts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            opts.append(f"label_smoothing={self.label_smoothing}")
        return f"CrossEntropyLoss({', '.join(opts)})"

    def _omega(self, m, dtype, xp, device):
        """Class weights ``(m,)`` in the call's namespace (ones without)."""
        if self.class_weight is None:
            return xp.ones(m, dtype=dtype, device=device)
        if self.class_weight.shape != (m,):
            raise ValueError(
                f"class weights must have shape ({m},) (one per output), got {self.class_weight.shape}"
            )
        return xp.asarray(self.class_weight, dtype=dtype, device=device)

    def _labels(self, y, n, m, xp):
        """Integer labels checked; returns (counted mask ``(n,)`` bool, labels with ignored ones set to 0)."""
        if tuple(y.shape) != (n,):
            raise ValueError(f"integer labels y must have shape ({n},), got {tuple(y.shape)}")
        keep = y != self.ignore_index
        yk = xp.where(keep, y, xp.zeros_like(y))
        if n and (int(xp.min(yk)) < 0 or int(xp.max(yk)) >= m):
            bad = y[(keep & ((y < 0) | (y >= m)))]
            raise ValueError(
                f"integer labels must lie in [0, {m}) or equal ignore_index={self.ignore_index}, "
                f"got {int(bad[0])}"
            )
        return keep, yk

    def weight(self, n: int) -> float:
        """:math:`w` from the number of examples alone: ``1/n`` (``"mean"``) or ``1``.

        That is torch's normaliser only when no label equals ``ignore_index``
        and there are no class weights; :meth:`weight_for` reads the targets
        (every curvature function in memory uses it). With class weights and
        ``"mean"`` this refuses, since ``n`` alone cannot give it.

        Parameters
        ----------
        n : int
            Number of examples.

        Returns
        -------
        float
        """
        if self.class_weight is not None and self.reduction == "mean":
            raise ValueError(
                "the mean of a class-weighted cross-entropy divides by the summed weights of the "
                "targets, which the number of examples alone does not give: use weight_for(y) "
                "(dask data: use reduction='sum' and divide by that sum yourself)"
            )
        return super().weight(n)

    def weight_for(self, y: Any) -> float:
        if self.reduction == "sum":
            return 1.0
        xp = namespace_of(y, "y")
        n = int(y.shape[0])
        if not xp.isdtype(y.dtype, "integral") or y.ndim != 1:
            return 1.0 / n  # probabilities: torch's mean is over the N examples
        if self.class_weight is None:
            D = float(xp.sum(xp.astype(y != self.ignore_index, xp.float64)))
        else:
            keep = _host(y) != self.ignore_index
            labels = _host(y)[keep]
            if labels.size and (labels.min() < 0 or labels.max() >= self.class_weight.size):
                return 1.0 / n  # the label check in _targets names the bad label
            D = float(np.sum(self.class_weight[labels]))
        if D == 0.0:
            raise ValueError(
                "every target is ignored (ignore_index) or has class weight 0: the mean over the "
                "counted targets is undefined (torch returns nan); use reduction='sum' or other targets"
            )
        return 1.0 / D

    def _targets(self, n, m, dtype, y, xp):
        namespace_of(y, "y")
        dev = _dev(y)
        eps = self.label_smoothing
        if xp.isdtype(y.dtype, "integral"):
            keep, yk = self._labels(y, n, m, xp)
            classes = xp.arange(m, dtype=y.dtype, device=dev)
            onehot = xp.astype(yk[:, None] == classes[None, :], dtype)
            if self.class_weight is None and eps == 0.0 and self.ignore_index not in range(0, m):
                T = onehot
            else:
                om = self._omega(m, dtype, xp, dev)
                T = (1.0 - eps) * onehot * om[None, :] + (eps / m) * om[None, :]
            return T * xp.astype(keep, dtype)[:, None]
        if not xp.isdtype(y.dtype, "real floating"):
            raise TypeError(
                f"labels y must be integers (N,) or floating probabilities (N, m), got dtype {y.dtype}"
            )
        if tuple(y.shape) != (n, m):
            raise ValueError(f"probability targets y must have shape ({n}, {m}), got {tuple(y.shape)}")
        T = xp.astype(y, dtype)
        if eps:
            T = (1.0 - eps) * T + eps / m
        if self.class_weight is not None:
            T = T * self._omega(m, dtype, xp, dev)[None, :]
        return T

    @staticmethod
    def _lse(F, xp):
        mx = xp.max(F, axis=-1, keepdims=True)
        return mx[:, 0] + xp.log(xp.sum(xp.exp(F - mx), axis=-1))

    def _softmax(self, F, xp):
        return xp.exp(F - self._lse(F, xp)[:, None])

    def _value(self, F, T, xp):
        return xp.sum(T, axis=-1) * self._lse(F, xp) - xp.sum(T * F, axis=-1)

    def _d1(self, F, T, xp):
        return xp.sum(T, axis=-1, keepdims=True) * self._softmax(F, xp) - T

    def _value_and_d1(self, F, T, xp, ops=None):
        # through the log-softmax, as torch: log p = (F - max) - log Σ exp(F - max)
        # (one kernel where the backend has it), ℓ = -Σ_j T_j log p_j (= s·lse - T·F),
        # ∂ℓ/∂F = s·p - T with s = Σ_j T_j
        if ops is not None:
            logp = ops.log_softmax(F)
        else:
            Fs = F - xp.max(F, axis=-1, keepdims=True)
            logp = Fs - xp.log(xp.sum(xp.exp(Fs), axis=-1, keepdims=True))
        s = xp.sum(T, axis=-1, keepdims=True)
        return -xp.sum(T * logp, axis=-1), s * xp.exp(logp) - T

    def _direct(self, y, n, m, dtype, ops):
        # integer labels without label smoothing: the library's cross-entropy kernels (torch: those
        # of its autograd), no one-hot targets, no label checks unless a kernel refuses a label
        if self.label_smoothing or y.ndim != 1 or not ops.xp.isdtype(y.dtype, "integral"):
            return None
        cw = self.class_weight
        if cw is not None and cw.shape != (m,):
            return None  # the general route names the shapes

        def total(F):
            r = ops.cross_entropy_labels(F, y, cw, self.ignore_index, self.reduction)
            if r is None:
                return None
            C, dF, D = r
            if self.reduction == "mean" and not float(D):
                return None  # every label ignored or of weight 0: the general route refuses (torch: nan)
            return C, dF

        return total

    def _hvp(self, F, T, R, xp):
        # s (diag(p) - p pᵀ) r = s p ⊙ (r - p·r), for R : (N, k, m)
        p = self._softmax(F, xp)[:, None, :]
        s = xp.sum(T, axis=-1)[:, None, None]
        return s * p * (R - xp.sum(p * R, axis=-1, keepdims=True))

    def _d2(self, F, T, xp):
        p = self._softmax(F, xp)
        m = F.shape[1]
        eye = xp.eye(m, dtype=F.dtype, device=_dev(F))
        s = xp.sum(T, axis=-1)[:, None, None]
        return s * (p[:, :, None] * eye[None, :, :] - p[:, :, None] * p[:, None, :])


class _TorchMSELoss(MSELoss):
    r"""``torch.nn.MSELoss``: :math:`C = \frac{1}{Nm}\sum_{n}\lVert f_n - y_n\rVert^2` (``"mean"``) or
    :math:`\sum_n \lVert f_n - y_n\rVert^2` (``"sum"``).

    As a per-example loss times :math:`w` (1/N or 1):
    :math:`\ell_n = c\cdot\tfrac12\lVert f_n - y_n\rVert^2` with :math:`c = 2/m` for
    ``"mean"`` (torch's loss of example ``n`` alone) and :math:`c = 2` for ``"sum"``.
    """

    name = "torch_mse"

    def __repr__(self) -> str:
        return f"get_loss(torch.nn.MSELoss(reduction={self.reduction!r}))"

    def _c(self, m: int) -> float:
        return 2.0 / m if self.reduction == "mean" else 2.0

    def _value(self, F, T, xp):
        return self._c(F.shape[-1]) * super()._value(F, T, xp)

    def _d1(self, F, T, xp):
        return self._c(F.shape[-1]) * (F - T)

    def _hvp(self, F, T, R, xp):
        return self._c(F.shape[-1]) * R

    def _d2(self, F, T, xp):
        return self._c(F.shape[-1]) * super()._d2(F, T, xp)


def _from_torch_loss(spec) -> Loss | None:
    """The :class:`Loss` equal to a torch loss module, or None if ``spec`` is none."""
    mod = type(spec).__module__
    if not mod.startswith("torch.nn"):
        return None
    name = type(spec).__name__
    reduction = getattr(spec, "reduction", None)
    if name not in ("MSELoss", "CrossEntropyLoss"):
        raise ValueError(
            f"loss: torch's {name} is not supported; use torch.nn.MSELoss, torch.nn.CrossEntropyLoss, "
            f"'mse', 'cross_entropy' or a hessquik_core.curvature Loss"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"loss: torch.nn.{name}(reduction={reduction!r}) is not supported: curvature needs a scalar "
            f"loss, reduction 'mean' or 'sum' (for per-example values use "
            f"hessquik_core.curvature.per_example_gradients or Loss.per_example)"
        )
    if name == "MSELoss":
        return _TorchMSELoss(reduction)
    w = getattr(spec, "weight", None)
    return CrossEntropyLoss(
        reduction,
        weight=None if w is None else w.detach().cpu().double().numpy(),
        ignore_index=int(getattr(spec, "ignore_index", -100)),
        label_smoothing=float(getattr(spec, "label_smoothing", 0.0)),
    )


_LOSSES = {
    "mse": MSELoss,
    "cross_entropy": CrossEntropyLoss,
    "crossentropy": CrossEntropyLoss,
    "ce": CrossEntropyLoss,
}


def get_loss(spec: Any) -> Loss:
    """A :class:`Loss` from an instance, a name or a torch loss object.

    Parameters
    ----------
    spec : Loss or str or torch.nn.MSELoss or torch.nn.CrossEntropyLoss
        A :class:`Loss` is returned as is. Names (``"mse"``,
        ``"cross_entropy"``, ``"ce"``) give reduction ``"mean"``. torch
        objects keep their ``reduction`` (``"mean"`` or ``"sum"``) and
        torch's scaling: ``torch.nn.MSELoss()`` is the mean of the squared
        errors over all ``N·m`` entries (:class:`MSELoss` is half the sum
        over the outputs); ``torch.nn.CrossEntropyLoss(weight=, ignore_index=,
        label_smoothing=)`` becomes :class:`CrossEntropyLoss` with the same
        options (the same value, gradient and curvature as torch);
        ``reduction="none"`` is refused.

    Returns
    -------
    Loss
    """
    if isinstance(spec, Loss):
        return spec
    torch_loss = _from_torch_loss(spec)
    if torch_loss is not None:
        return torch_loss
    if isinstance(spec, str) and spec.lower() in _LOSSES:
        return _LOSSES[spec.lower()]()
    raise ValueError(
        f"loss must be a Loss instance, torch.nn.MSELoss / CrossEntropyLoss or one of {sorted(_LOSSES)}, "
        f"got {spec!r}"
    )


def _host(a) -> np.ndarray:
    """A small array (labels, class weights) as NumPy, from any library or device."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if type(a).__module__.startswith("cupy"):  # pragma: no cover - needs a GPU
        return a.get()
    try:
        return np.asarray(a)
    except (TypeError, ValueError, RuntimeError):  # e.g. array-api-strict, JAX on a device
        return np.from_dlpack(a)


def _host_vector(v, name) -> np.ndarray:
    out = np.asarray(_host(v) if hasattr(v, "shape") else v, dtype=np.float64)
    if out.ndim != 1 or not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be a finite vector (m,), got {out!r}")
    return out


def _dev(a):
    from array_api_compat import device

    return device(a)

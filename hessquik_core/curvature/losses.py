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

torch loss objects are accepted wherever a loss is (:func:`get_loss`):
``torch.nn.CrossEntropyLoss(reduction=...)`` becomes :class:`CrossEntropyLoss`
with the same reduction; ``torch.nn.MSELoss(reduction=...)`` keeps torch's
scaling (mean over all ``N·m`` entries, no ½), so values, gradients and
curvature equal torch's.
"""

from __future__ import annotations

from typing import Any

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
        return self.weight(F.shape[0]) * self._sum(self.per_example(F, y))

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
        return self.weight(F.shape[0]) * self._d1(
            F, self._targets(F.shape[0], F.shape[1], F.dtype, y, xp), xp
        )

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
        return self.weight(F.shape[0]) * self._d2(
            F, self._targets(F.shape[0], F.shape[1], F.dtype, y, xp), xp
        )

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
        return self.weight(F.shape[0]) * self._hvp(F, T, R[:, None, :], xp)[:, 0, :]

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

    def _d1(self, F, T, xp):
        return F - T

    def _hvp(self, F, T, R, xp):
        return R

    def _d2(self, F, T, xp):
        n, m = F.shape
        eye = xp.eye(m, dtype=F.dtype, device=_dev(F))
        return xp.broadcast_to(eye[None, :, :], (n, m, m))


class CrossEntropyLoss(Loss):
    r"""Softmax cross-entropy on logits, reduced by ``reduction``.

    ``y`` is either integer class labels ``(N,)`` in ``[0, m)`` or target
    probabilities ``(N, m)`` (one-hot or soft; rows are used as given, their
    sum :math:`s` scales the log-sum-exp term). With ``reduction="mean"``
    it equals ``torch.nn.CrossEntropyLoss()``.

    Parameters
    ----------
    reduction : {"mean", "sum"}
    """

    name = "cross_entropy"

    def _targets(self, n, m, dtype, y, xp):
        namespace_of(y, "y")
        if xp.isdtype(y.dtype, "integral"):
            if tuple(y.shape) != (n,):
                raise ValueError(f"integer labels y must have shape ({n},), got {tuple(y.shape)}")
            if n and (int(xp.min(y)) < 0 or int(xp.max(y)) >= m):
                raise ValueError(
                    f"integer labels must lie in [0, {m}), got range [{int(xp.min(y))}, {int(xp.max(y))}]"
                )
            classes = xp.arange(m, dtype=y.dtype, device=_dev(y))
            return xp.astype(y[:, None] == classes[None, :], dtype)
        if not xp.isdtype(y.dtype, "real floating"):
            raise TypeError(
                f"labels y must be integers (N,) or floating probabilities (N, m), got dtype {y.dtype}"
            )
        if tuple(y.shape) != (n, m):
            raise ValueError(f"probability targets y must have shape ({n}, {m}), got {tuple(y.shape)}")
        return xp.astype(y, dtype)

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
            f"loss, reduction 'mean' or 'sum'"
        )
    if name == "MSELoss":
        return _TorchMSELoss(reduction)
    if getattr(spec, "weight", None) is not None:
        raise ValueError(
            "loss: torch.nn.CrossEntropyLoss with class weights is not supported (weight=None only)"
        )
    if float(getattr(spec, "label_smoothing", 0.0)) != 0.0:
        raise ValueError(
            "loss: torch.nn.CrossEntropyLoss with label_smoothing is not supported; pass smoothed "
            "target probabilities (N, m) as y instead"
        )
    return CrossEntropyLoss(reduction)


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
        over the outputs); ``torch.nn.CrossEntropyLoss()`` equals
        :class:`CrossEntropyLoss` (class weights and label smoothing are
        refused).

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


def _dev(a):
    from array_api_compat import device

    return device(a)

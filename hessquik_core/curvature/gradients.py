r"""The gradient and the per-example gradients of a training loss with respect to the parameters.

For the training loss :math:`C(\theta) = w\sum_n \ell(f(x_n;\theta), y_n)`
(:math:`w = 1/N` for ``reduction="mean"``, 1 for ``"sum"``): one backward
pass of the layers' ``param_vjp`` per mini-batch.
"""

from __future__ import annotations

from typing import Any

from ._lean import lean_value_and_gradient
from .sources import curvature_problem

__all__ = ["gradient", "per_example_gradients", "value_and_gradient"]


def value_and_gradient(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    backend: str | None = None,
    params: Any = None,
) -> tuple[Any, Any]:
    r"""Training loss :math:`C` (0-d) and its gradient :math:`\nabla_\theta C` ``(P,)``.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, the others held fixed: ``None`` (default)
        all of a hessquik-core network and the trainable (``requires_grad``)
        ones of a torch model, ``"all"``, or names (``"0.K"``, or torch's
        ``"0.weight"``). Results are over the selected entries in layout order
        (``parameter_layout(net, params)`` describes them).

    Returns
    -------
    value : 0-d array
        :math:`C`.
    gradient : array of shape (P,)
        :math:`\\nabla_\\theta C` in :class:`ParameterLayout` order.
    """
    # a torch model's common call (one mini-batch, its own dtype and device): no set-up per call
    lean = lean_value_and_gradient(net, x, y, loss, batch_size, backend, params)
    if lean is not None:
        return lean
    return curvature_problem(net, x, y, loss, batch_size, backend, params=params).value_and_gradient()


def gradient(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    backend: str | None = None,
    params: Any = None,
) -> Any:
    r""":math:`\nabla_\theta C`, the gradient of the training loss.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, the others held fixed: ``None`` (default)
        all of a hessquik-core network and the trainable (``requires_grad``)
        ones of a torch model, ``"all"``, or names (``"0.K"``, or torch's
        ``"0.weight"``). Results are over the selected entries in layout order
        (``parameter_layout(net, params)`` describes them).

    Returns
    -------
    array of shape (P,)
        The second output of :func:`value_and_gradient`.
    """
    return value_and_gradient(net, x, y, loss, batch_size=batch_size, backend=backend, params=params)[1]


def per_example_gradients(
    net: Any, x: Any, y: Any, loss: Any, *, backend: str | None = None, params: Any = None
) -> Any:
    r"""Per-example gradients :math:`g_n = \nabla_\theta \ell(f(x_n;\theta), y_n)`, shape ``(N, P)``.

    One batched pass (no loop over examples). Rows are gradients of the
    *unreduced* per-example loss: :math:`\nabla C = w \sum_n g_n` (the mean of
    the rows for ``reduction="mean"``, their sum for ``"sum"``).

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, the others held fixed: ``None`` (default)
        all of a hessquik-core network and the trainable (``requires_grad``)
        ones of a torch model, ``"all"``, or names (``"0.K"``, or torch's
        ``"0.weight"``). Results are over the selected entries in layout order
        (``parameter_layout(net, params)`` describes them).

    Returns
    -------
    array of shape (N, P)
        Row ``n`` is :math:`g_n` in :class:`ParameterLayout` order.
    """
    return curvature_problem(net, x, y, loss, None, backend, params=params).per_example_gradients()

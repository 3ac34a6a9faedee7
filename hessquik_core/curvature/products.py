r"""Products with the exact Hessian, the Gauss–Newton matrix and the empirical Fisher.

:func:`hessian_operator`, :func:`ggn_operator`, :func:`empirical_fisher_operator`
build a :class:`~hessquik_core.curvature.CurvatureOperator` (the
forward pass kept between products); :func:`hvp`, :func:`ggn_vp`,
:func:`empirical_fisher_vp` apply one once. The exact Hessian's products are
Pearlmutter's R-operator, worked out per layer (``param_rop_forward`` /
``param_rop_backward``).

(Longer than this package's ~400-line guide: six thin entry points whose
full docstrings repeat their shared parameters on purpose, each page of the
API reference being read on its own.)
"""

from __future__ import annotations

from typing import Any

from .._dask_hook import dask_dispatch
from .problem import CurvatureOperator, _Problem

__all__ = [
    "empirical_fisher_operator",
    "empirical_fisher_vp",
    "ggn_operator",
    "ggn_vp",
    "hessian_operator",
    "hvp",
]


@dask_dispatch
def hessian_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    params: Any = None,
    cache_forward: bool | None = None,
) -> CurvatureOperator:
    r"""The exact Hessian :math:`H = \nabla_\theta^2 C` as an operator (Hessian-vector products).

    Each product is one forward R-pass and one backward R-pass over the
    data, for ``block_size`` directions at a time, after one forward pass.
    ``cache_forward`` (default: True without mini-batches, False with
    them) keeps each mini-batch's forward pass between products.
    The operator is a snapshot: it holds the parameters and data of its
    construction.

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
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, the others held fixed: ``None`` (default)
        all of a hessquik-core network and the trainable (``requires_grad``)
        ones of a torch model, ``"all"``, or names (``"0.K"``, or torch's
        ``"0.weight"``). Results are over the selected entries in layout order
        (``parameter_layout(net, params)`` describes them).
    cache_forward : bool, optional
        Keep each mini-batch's forward pass between products (default:
        True without mini-batches, False with them).

    Returns
    -------
    CurvatureOperator
        ``(P, P)``; ``op @ v`` for ``v : (P,)`` or ``(P, k)``.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward, params),
        "hessian",
        block_size,
        memory_budget,
    )


@dask_dispatch
def ggn_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    params: Any = None,
    cache_forward: bool | None = None,
) -> CurvatureOperator:
    r"""The generalised Gauss–Newton matrix :math:`w \sum_n J_n^\top \nabla_f^2 \ell_n J_n` as an operator.

    For softmax cross-entropy this is the Fisher information of the model's
    predictive distribution (the "true" Fisher); for half-MSE it is
    :math:`w\sum_n J_n^\top J_n`.

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
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, the others held fixed: ``None`` (default)
        all of a hessquik-core network and the trainable (``requires_grad``)
        ones of a torch model, ``"all"``, or names (``"0.K"``, or torch's
        ``"0.weight"``). Results are over the selected entries in layout order
        (``parameter_layout(net, params)`` describes them).
    cache_forward : bool, optional
        Keep each mini-batch's forward pass between products (default:
        True without mini-batches, False with them).

    Returns
    -------
    CurvatureOperator
        ``(P, P)``; ``op @ v`` for ``v : (P,)`` or ``(P, k)``.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward, params),
        "ggn",
        block_size,
        memory_budget,
    )


@dask_dispatch
def empirical_fisher_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    params: Any = None,
    cache_forward: bool | None = None,
) -> CurvatureOperator:
    r"""The outer-product (empirical Fisher) matrix :math:`G = \frac1N \sum_n g_n g_n^\top`.

    Applied without forming ``(N, P)``: :math:`Gv = \frac1N\sum_n (g_n\cdot v)\, g_n`
    where :math:`g_n\cdot v = \nabla_f\ell_n \cdot J_n v` comes from a forward
    R-pass and the weighted sum of gradients from one backward pass.
    Always :math:`1/N`, whatever the loss's reduction.

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
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    params : None, "all" or iterable of str, optional
        The parameters differentiated, the others held fixed: ``None`` (default)
        all of a hessquik-core network and the trainable (``requires_grad``)
        ones of a torch model, ``"all"``, or names (``"0.K"``, or torch's
        ``"0.weight"``). Results are over the selected entries in layout order
        (``parameter_layout(net, params)`` describes them).
    cache_forward : bool, optional
        Keep each mini-batch's forward pass between products (default:
        True without mini-batches, False with them).

    Returns
    -------
    CurvatureOperator
        ``(P, P)``; ``op @ v`` for ``v : (P,)`` or ``(P, k)``.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward, params),
        "fisher",
        block_size,
        memory_budget,
    )


@dask_dispatch
def hvp(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    v: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    params: Any = None,
) -> Any:
    r""":math:`Hv`, products with the exact Hessian of the training loss.

    Builds :func:`hessian_operator` and applies it once; keep the operator
    for repeated products.

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
    v : array of shape (P,) or (P, k)
        Directions, in ``x``'s library (or NumPy).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
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
    array of shape (P,) or (P, k)
        Like ``v``.
    """
    return (
        hessian_operator(
            net,
            x,
            y,
            loss,
            batch_size=batch_size,
            block_size=block_size,
            memory_budget=memory_budget,
            backend=backend,
            params=params,
        )
        @ v
    )


@dask_dispatch
def ggn_vp(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    v: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    params: Any = None,
) -> Any:
    r"""Products with the generalised Gauss–Newton matrix (see :func:`ggn_operator`).

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
    v : array of shape (P,) or (P, k)
        Directions, in ``x``'s library (or NumPy).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
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
    array of shape (P,) or (P, k)
        Like ``v``.
    """
    return (
        ggn_operator(
            net,
            x,
            y,
            loss,
            batch_size=batch_size,
            block_size=block_size,
            memory_budget=memory_budget,
            backend=backend,
            params=params,
        )
        @ v
    )


@dask_dispatch
def empirical_fisher_vp(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    v: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    params: Any = None,
) -> Any:
    r""":math:`Gv` with :math:`G = \frac1N\sum_n g_n g_n^\top` (see :func:`empirical_fisher_operator`).

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
    v : array of shape (P,) or (P, k)
        Directions, in ``x``'s library (or NumPy).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
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
    array of shape (P,) or (P, k)
        Like ``v``.
    """
    return (
        empirical_fisher_operator(
            net,
            x,
            y,
            loss,
            batch_size=batch_size,
            block_size=block_size,
            memory_budget=memory_budget,
            backend=backend,
            params=params,
        )
        @ v
    )

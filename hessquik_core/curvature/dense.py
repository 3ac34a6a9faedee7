r"""The dense ``(P, P)`` Hessian, Gauss–Newton matrix and empirical Fisher of a training loss.

Assembled from blocks of exact products (:mod:`hessquik_core.curvature.products`),
or, for the empirical Fisher, from the per-example gradients in one pass.
"""

from __future__ import annotations

from typing import Any

from .._dask_hook import dask_dispatch
from .problem import _Problem
from .products import ggn_operator, hessian_operator

__all__ = ["empirical_fisher", "ggn", "hessian"]


@dask_dispatch
def hessian(
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
    progress: bool | None = None,
    symmetric: bool = True,
) -> Any:
    r"""The dense ``(P, P)`` Hessian of the training loss, from blocks of exact Hessian-vector products.

    Columns are computed ``block_size`` at a time (default: as many as fit
    ``memory_budget`` bytes of work arrays, 256 MiB unless given, by the
    estimate ``itemsize·(4·batch·Σ_layers(p + 2q) + 4P)`` per column), and
    the data in mini-batches of ``batch_size`` examples whose contributions
    are summed (with the global factor :math:`w`, so the result is the
    Hessian of the full-data loss).

    By default (``symmetric=True``) only the layer blocks :math:`H_{ij}`
    with :math:`i \ge j` are computed: the columns of layer ``j`` go
    through layers ``j..L`` only (the forward R-pass starts at layer ``j``,
    the backward one stops there), and :math:`H_{ji} = H_{ij}^\top`. Every
    entry is an exact product, not an average of two, and the result is
    exactly symmetric (see
    :meth:`~hessquik_core.curvature.CurvatureOperator.to_dense`).
    ``symmetric=False`` pushes every column through every layer.

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
    progress : bool, optional
        Progress bar over the column blocks (tqdm): ``None`` (default)
        shows one only when tqdm is installed and the session is
        interactive, ``True`` always, ``False`` never.
    symmetric : bool, default True
        Compute the blocks on and below the layer diagonal only and mirror them.

    Returns
    -------
    array of shape (P, P)
        In ``x``'s library, :class:`ParameterLayout` order.
    """
    return hessian_operator(
        net,
        x,
        y,
        loss,
        batch_size=batch_size,
        block_size=block_size,
        memory_budget=memory_budget,
        backend=backend,
        params=params,
    ).to_dense(progress=progress, symmetric=symmetric)


@dask_dispatch
def ggn(
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
    progress: bool | None = None,
    symmetric: bool = True,
) -> Any:
    """The dense generalised Gauss–Newton matrix, assembled like :func:`hessian`.

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
    progress : bool, optional
        Progress bar over the column blocks (tqdm): ``None`` (default)
        shows one only when tqdm is installed and the session is
        interactive, ``True`` always, ``False`` never.
    symmetric : bool, default True
        Compute the blocks on and below the layer diagonal only and mirror them.

    Returns
    -------
    array of shape (P, P)
        In ``x``'s library, :class:`ParameterLayout` order.
    """
    return ggn_operator(
        net,
        x,
        y,
        loss,
        batch_size=batch_size,
        block_size=block_size,
        memory_budget=memory_budget,
        backend=backend,
        params=params,
    ).to_dense(progress=progress, symmetric=symmetric)


@dask_dispatch
def empirical_fisher(
    net: Any, x: Any, y: Any, loss: Any, *, backend: str | None = None, params: Any = None
) -> Any:
    r"""Dense :math:`G = \frac1N \sum_n g_n g_n^\top = \frac1N A^\top A`, ``A`` the per-example gradients.

    Forms ``A : (N, P)`` in one pass; for large ``N·P`` use
    :func:`empirical_fisher_operator` or
    :func:`~hessquik_core.curvature.empirical_fisher_eigenpairs`.

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
    array of shape (P, P)
        In ``x``'s library, :class:`ParameterLayout` order.
    """
    pb = _Problem(net, x, y, loss, None, backend, params=params)
    A = pb.per_example(0)
    xp = pb.B.xp
    return pb.B.to_user((xp.matrix_transpose(A) @ A) / pb.N)

r"""The parameter vector :math:`\theta \in \mathbb{R}^P` of a network: layout, flattening, resolution.

:class:`ParameterLayout` says where each ``state_dict`` entry lives in
:math:`\theta` (``state_dict`` order, each parameter flattened row-major);
:func:`parameter_layout` and :func:`flatten_parameters` build it and the
vector for a network, layer or torch model (converted once with
:func:`hessquik_core.from_torch`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac
import numpy as np

from .._array import namespace_of
from ..backends import backend_for, model_backend

__all__ = ["ParameterLayout", "flatten_parameters", "parameter_layout"]


@dataclass(frozen=True)
class ParameterLayout:
    """Where each parameter lives in the flat vector :math:`\\theta \\in \\mathbb{R}^P`.

    ``theta = concat([ravel(p) for p in state_dict().values()])``: parameters
    in ``state_dict`` order (``'0.K', '0.b', '1.K', ...``; switched-off ones
    absent), each flattened row-major. Flat arrays carry the parameter axis
    last, so per-example gradients ``(N, P)`` unflatten to ``(N, *shape)``.

    **torch's order.** A ``Linear`` layer's weight ``K`` is stored
    ``(in, out)``, the transpose of torch's ``weight`` ``(out, in)`` (so a
    layer computes ``u @ K + b``). To read an eigenvector (or any flat
    vector) in the order of a torch model converted by
    :func:`hessquik_core.from_torch`, unflatten it and transpose the
    ``K`` blocks: ``layout.unflatten(v)["0.K"].T`` is the direction of
    torch's ``0.weight``, ``layout.unflatten(v)["0.b"]`` that of ``0.bias``.

    Attributes
    ----------
    keys : tuple of str
        Parameter keys in ``state_dict`` order.
    shapes : tuple of tuple of int
        Shape of each parameter.
    offsets : tuple of int
        Start of each parameter in ``theta``.
    sizes : tuple of int
        Number of entries of each parameter.
    """

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @classmethod
    def from_named(cls, named) -> ParameterLayout:
        """The layout of ``(key, array)`` pairs in their order, each flattened row-major.

        Parameters
        ----------
        named : iterable of (str, array)
            E.g. ``net.named_parameters()``.

        Returns
        -------
        ParameterLayout
            ``ValueError`` when there are no pairs.
        """
        keys, shapes, offsets, sizes = [], [], [], []
        off = 0
        for k, a in named:
            shape = tuple(int(s) for s in a.shape)
            size = math.prod(shape)
            keys.append(k)
            shapes.append(shape)
            offsets.append(off)
            sizes.append(size)
            off += size
        if not keys:
            raise ValueError("the network has no parameters")
        return cls(tuple(keys), tuple(shapes), tuple(offsets), tuple(sizes))

    @property
    def size(self) -> int:
        """:math:`P`, the number of scalar parameters."""
        return int(sum(self.sizes))

    def __len__(self) -> int:
        return self.size

    def slice(self, key: str) -> slice:
        """Slice of ``theta`` holding parameter ``key`` (``KeyError`` for an unknown key).

        Parameters
        ----------
        key : str
            A ``state_dict`` key, e.g. ``"0.K"``.

        Returns
        -------
        slice
            ``theta[layout.slice(key)]`` is the flattened parameter.
        """
        i = self._index(key)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def _index(self, key):
        try:
            return self.keys.index(key)
        except ValueError:
            raise KeyError(f"unknown parameter {key!r}; known: {list(self.keys)}") from None

    def flatten(self, params: Mapping[str, Any]) -> Any:
        """Concatenate a mapping of parameters into flat vectors.

        Parameters
        ----------
        params : mapping of str to array
            Every key of the layout, each ``(*lead, *shape)`` (same leading
            shape, one array library).

        Returns
        -------
        array of shape (*lead, P)
        """
        if not hasattr(params, "items"):
            raise TypeError(
                f"params must be a mapping of parameter keys to arrays, got {type(params).__name__}"
            )
        missing = [k for k in self.keys if k not in params]
        extra = sorted(set(params) - set(self.keys))
        if missing or extra:
            raise ValueError(f"parameter keys mismatch: missing {missing}, unexpected {extra}")
        first = params[self.keys[0]]
        xp = namespace_of(first, f"params[{self.keys[0]!r}]")
        lead = tuple(first.shape[: first.ndim - len(self.shapes[0])])
        parts = []
        for key, shape, size in zip(self.keys, self.shapes, self.sizes):
            a = params[key]
            if tuple(a.shape) != (*lead, *shape):
                raise ValueError(f"params[{key!r}] must have shape {(*lead, *shape)}, got {tuple(a.shape)}")
            parts.append(xp.reshape(a, (*lead, size)))
        return xp.concat(parts, axis=-1)

    def unflatten(self, theta: Any) -> dict[str, Any]:
        """Split flat vectors into parameters (the inverse of :meth:`flatten`).

        Parameters
        ----------
        theta : array of shape (..., P)

        Returns
        -------
        dict of str to array
            ``key -> (*lead, *shape)`` views of ``theta``; with no leading
            axes, ``net.load_state_dict`` accepts it.
        """
        xp = namespace_of(theta, "theta")
        if theta.ndim < 1 or theta.shape[-1] != self.size:
            raise ValueError(f"theta must have shape (..., {self.size}), got {tuple(theta.shape)}")
        lead = tuple(theta.shape[:-1])
        return {
            k: xp.reshape(theta[..., o : o + s], (*lead, *shape))
            for k, shape, o, s in zip(self.keys, self.shapes, self.offsets, self.sizes)
        }

    # -- torch's named_parameters() order -------------------------------------
    def permutation_to(self, module: Any) -> np.ndarray:
        r"""The permutation :math:`\pi` to a torch module's order: ``theta_torch = theta[pi]``.

        ``theta_torch`` concatenates ``module.named_parameters()``, each
        flattened row-major in torch's shape (``Linear.weight`` ``(out, in)``,
        the transpose of this layout's ``K``). Found by converting a labelled
        copy of ``module`` (``hessquik_core/curvature/torch_order.py``).

        Parameters
        ----------
        module : torch.nn.Module
            The model this layout's network was converted from (or that
            :func:`hessquik_core.to_torch` made of it).

        Returns
        -------
        numpy.ndarray of shape (P,), int64
        """
        from .torch_order import torch_permutation

        return torch_permutation(self, module)

    def to_torch_order(self, a: Any, module: Any, *, matrix: bool = False) -> Any:
        r"""Flat vectors, a ``(P, P)`` matrix or an operator in ``module.named_parameters()`` order.

        :math:`v_t = v[\pi]` along the last axis of ``a : (..., P)``;
        with ``matrix=True``, :math:`H_t = H[\pi][:, \pi]` for ``a : (P, P)``;
        an operator :math:`\mathcal{A}` becomes :math:`\Pi\mathcal{A}\Pi^\top` (a
        :class:`~hessquik_core.curvature.TorchOrderOperator` taking
        and returning torch-ordered vectors).

        Parameters
        ----------
        a : array of shape (..., P) or (P, P), or LinearOperatorBase
            In this layout's order (any array library; it stays there).
        module : torch.nn.Module
        matrix : bool, default False
            Permute both axes of a ``(P, P)`` array.

        Returns
        -------
        array or TorchOrderOperator
            Same shape, library, dtype and device; a new array (``a`` is not modified).
        """
        return self._permute(a, module, matrix, inverse=False)

    def from_torch_order(self, a: Any, module: Any, *, matrix: bool = False) -> Any:
        r"""The inverse of :meth:`to_torch_order`: :math:`v = v_t[\pi^{-1}]`.

        E.g. a gradient from torch autograd, concatenated in
        ``named_parameters()`` order, in this layout's order.

        Parameters
        ----------
        a : array of shape (..., P) or (P, P), or LinearOperatorBase
            In ``module.named_parameters()`` order.
        module : torch.nn.Module
        matrix : bool, default False
            Permute both axes of a ``(P, P)`` array.

        Returns
        -------
        array or TorchOrderOperator
            Same shape, library, dtype and device.
        """
        return self._permute(a, module, matrix, inverse=True)

    def to_torch_parameters(self, a: Any, module: Any) -> dict[str, Any]:
        """Flat vectors ``(..., P)`` split into ``module``'s parameters, in torch's names and shapes.

        Parameters
        ----------
        a : array of shape (..., P)
            In this layout's order.
        module : torch.nn.Module

        Returns
        -------
        dict of str to array
            ``name -> (..., *param.shape)`` for ``name, param in module.named_parameters()``
            (``Linear.weight`` ``(out, in)``), in ``a``'s library.
        """
        from .torch_order import torch_names

        t = self.to_torch_order(a, module)
        xp = namespace_of(t, "a")
        lead = tuple(t.shape[:-1])
        out, off = {}, 0
        for name, shape in torch_names(self, module):
            n = int(np.prod(shape, dtype=np.int64))
            out[name] = xp.reshape(t[..., off : off + n], (*lead, *shape))
            off += n
        return out

    def _permute(self, a, module, matrix, inverse):
        from .operators import LinearOperatorBase
        from .torch_order import TorchOrderOperator, _take

        pi = self.permutation_to(module)
        idx = np.argsort(pi) if inverse else pi
        if isinstance(a, LinearOperatorBase):
            if a.size != self.size:
                raise ValueError(f"the operator must be ({self.size}, {self.size}), got {a.shape}")
            return TorchOrderOperator(a, idx)
        namespace_of(a, "a")
        if matrix:
            if tuple(a.shape) != (self.size, self.size):
                raise ValueError(f"a must have shape ({self.size}, {self.size}), got {tuple(a.shape)}")
            return _take(_take(a, idx, 0), idx, 1)
        if a.ndim < 1 or a.shape[-1] != self.size:
            raise ValueError(f"a must have shape (..., {self.size}), got {tuple(a.shape)}")
        return _take(a, idx, a.ndim - 1)


def _network(net):
    """``net`` itself, or the hessquik-core network equal to a torch module (``from_torch``,
    cached while the module is unchanged, see :mod:`hessquik_core.curvature._torch_cache`)."""
    if hasattr(net, "named_parameters") and hasattr(net, "_leaves"):
        return net
    if model_backend(net) is not None:  # a torch model (the only library with one)
        from ._torch_cache import converted

        return converted(net, ParameterLayout).net
    raise TypeError(
        "net must be a hessquik_core network or layer, or a torch nn.Sequential "
        f"(converted with hessquik_core.from_torch), got {type(net).__name__}"
    )


def _network_views(net):
    """``(network, views, memo)``: :func:`_network`, except that for a torch module whose
    weights can be read through views of its own tensors (``views``, one dict per
    leaf) the network may hold older values; ``views`` is ``None`` otherwise. ``memo``:
    the cache entry's dict of what depends on the module's structure alone (``None``
    for a hessquik-core network)."""
    be = None if hasattr(net, "_leaves") else model_backend(net)
    if be is not None:
        from ._torch_cache import converted

        e = converted(net, ParameterLayout, fresh=False, be=be)
        return e.net, e.views, e.memo
    return _network(net), None, None


def _check_torch_dtype(model, x, memo=None):
    """A torch model's floating parameters and ``x`` must share a dtype, as torch itself requires:
    computing a float32 model in float64 (or back) silently would differ from what the model does.
    ``memo``: the torch model's cache entry memo (:func:`_network_views`), which keeps the dtypes."""
    if (memo is None and model is _net_like(model)) or not hasattr(x, "dtype"):
        return
    xd = str(x.dtype).split(".")[-1]
    dtypes = None if memo is None else memo.get("dtypes")
    if dtypes is None:
        dtypes = [
            (name, str(p.dtype).split(".")[-1])
            for name, p in model.named_parameters()
            if p.is_floating_point()
        ]
        if memo is not None:
            memo["dtypes"] = dtypes
    for name, pd in dtypes:
        if pd != xd:
            raise TypeError(
                f"the torch model's parameters are {pd} ({name!r}) and x is {xd}: torch refuses this "
                f"mix, and curvature does too rather than compute in another precision than the model; "
                f"convert one, e.g. model.to(torch.{xd}) or x.to(torch.{pd})"
            )


def _net_like(model):
    """``model`` if it is a hessquik-core network or layer, else ``None`` (a torch module)."""
    return model if hasattr(model, "_leaves") or model_backend(model) is None else None


def parameter_layout(net: Any, params: Any = None) -> ParameterLayout:
    """The :class:`ParameterLayout` of a network or layer (``state_dict`` order, row-major).

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        A torch model is described as converted by :func:`hessquik_core.from_torch`.
    params : None, "all" or iterable of str, optional
        The selection of the curvature functions' ``params=``: the layout of
        the vectors they return (a torch model's frozen parameters are left
        out by default, as there). Without a selection, every parameter.

    Returns
    -------
    ParameterLayout
    """
    original, net = net, _network(net)
    full = _full_layout(net)
    if params is None and model_backend(original) is None:
        return full
    from .selection import resolve_params

    return resolve_params(original, full, params)[0]


def _full_layout(net) -> ParameterLayout:
    return ParameterLayout.from_named(net.named_parameters())


def flatten_parameters(net: Any, like: Any = None, params: Any = None) -> Any:
    """:math:`\\theta` as one vector ``(P,)``.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
    like : array, optional
        Without it the vector is in the library of the stored parameters;
        with it, in ``like``'s library, dtype and device.
    params : None, "all" or iterable of str, optional
        The selected parameters only, as in :func:`parameter_layout`.

    Returns
    -------
    array of shape (P,)
        Parameters in :class:`ParameterLayout` order.
    """
    original, net = net, _network(net)
    layout = (
        parameter_layout(original, params) if params is not None or original is not net else _full_layout(net)
    )
    state = {k: a for k, a in net.named_parameters() if k in layout.keys}
    if like is not None:
        xp = namespace_of(like, "like")
        be = backend_for(xp)
        state = {k: be.convert(a, xp=xp, dtype=like.dtype, device=aac.device(like)) for k, a in state.items()}
    return layout.flatten(state)

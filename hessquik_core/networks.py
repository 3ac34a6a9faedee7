r"""Networks: compositions of layers, and the chain-rule engine.

``net(x, gradient=True, hessian=True)`` evaluates the network and, without
automatic differentiation, its input derivatives. See :meth:`NN.__call__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._array import CallContext, resolve_call
from ._module import Module
from .layers import ICNNLayer, Layer, ResnetLayer, SingleLayer, Want, _check_int

__all__ = ["ICNN", "NN", "FullyConnectedNN", "ResnetNN", "Result", "MODES"]

MODES = ("auto", "forward", "backward")


@dataclass
class Result:
    """What a network call returns; entries not requested are ``None``.

    Attributes
    ----------
    value : (n, m)
    gradient : (n, d, m); forward mode with ``V : (d, k)`` gives (n, k, m),
        backward mode with ``V : (m, k)`` gives (n, d, k)
    hessian : (n, d, d, m); (n, k, k, m) = VᵀHV forward; (n, d, d, k) backward
    laplacian : (n, m)
    hessian_diagonal : (n, d, m) (or (n, k, m): the diagonal of VᵀHV)
    mode : ``"forward"`` or ``"backward"``, the route actually taken
    """

    value: Any
    gradient: Any = None
    hessian: Any = None
    laplacian: Any = None
    hessian_diagonal: Any = None
    mode: str | None = None

    def __iter__(self):
        # hessQuik-style unpacking: f, df, d2f = net(x, ...)
        return iter((self.value, self.gradient, self.hessian))


class NN(Module):
    """Composition of layers (and of other ``NN`` blocks): ``NN(layer1, layer2, ...)``.

    Blocks are applied in order; the output width of each must equal the
    input width of the next.
    """

    def __init__(self, *blocks) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("NN needs at least one layer")
        for i, blk in enumerate(blocks):
            if not isinstance(blk, (Layer, NN)):
                raise TypeError(f"block {i} must be a Layer or NN, got {type(blk).__name__}")
        for i in range(len(blocks) - 1):
            a, b = blocks[i], blocks[i + 1]
            if a.out_features != b.in_features:
                raise ValueError(
                    f"dimension mismatch between block {i} ({a!r}, {a.out_features} outputs) and "
                    f"block {i + 1} ({b!r}, {b.in_features} inputs)"
                )
        for i, blk in enumerate(blocks):
            self._children[str(i)] = blk

    # -- structure --------------------------------------------------------
    @property
    def blocks(self) -> list:
        return list(self._children.values())

    def __len__(self) -> int:
        return len(self._children)

    def __getitem__(self, i: int):
        return self.blocks[i]

    def __iter__(self):
        return iter(self.blocks)

    @property
    def in_features(self) -> int:
        return self.blocks[0].in_features

    @property
    def out_features(self) -> int:
        return self.blocks[-1].out_features

    def _leaves(self):
        for blk in self.blocks:
            yield from blk._leaves()

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(b).replace("\n", "\n  ") for b in self.blocks)
        return f"{type(self).__name__}(\n  {inner}\n)"

    # -- evaluation -------------------------------------------------------
    def __call__(self, x, gradient: bool = False, hessian: bool = False, laplacian: bool = False,
                 directions=None, mode: str = "auto", backend: str | None = None, *,
                 hessian_diagonal: bool = False) -> Result:
        r"""Evaluate the network and the requested input derivatives.

        Parameters
        ----------
        x : array of shape (n, d)
            NumPy, CuPy, torch or any Array-API array, floating dtype. The
            computation runs in ``x``'s dtype and on its device; parameters
            are converted (and cached) to match.
        gradient, hessian, laplacian, hessian_diagonal : bool
            What to compute besides the value.
        directions : array, optional
            ``V``. Forward mode: shape (d, k), derivatives along the columns
            (gradient ``Vᵀ∇f``, Hessian ``VᵀHV``). Backward mode: shape (m, k),
            the output is contracted with ``V``. Same library as ``x`` (a
            NumPy array or nested list is also accepted and converted).
        mode : {"auto", "forward", "backward"}
            ``"auto"`` picks forward iff ``d < m`` (hessQuik's rule); a
            Laplacian or Hessian-diagonal request without the Hessian uses
            forward mode unless ``"backward"`` is given.
        backend : {None, "numpy", "torch", "cupy", "generic"}
            ``None`` infers the backend from ``x``. Forcing another backend
            converts ``x`` to it and the results back to ``x``'s library.

        Returns
        -------
        Result
            ``value (n, m)``, ``gradient (n, d, m)``, ``hessian (n, d, d, m)``,
            ``laplacian (n, m)``, ``hessian_diagonal (n, d, m)``; ``None``
            where not requested.
        """
        ctx = resolve_call(self, x, directions=directions, mode=mode, backend=backend,
                           gradient=gradient, hessian=hessian, laplacian=laplacian,
                           hessian_diagonal=hessian_diagonal)
        out = _run(self, ctx)
        return ctx.finish(out)


def _run(net: NN, ctx: CallContext) -> Result:
    xp, be = ctx.xp, ctx.be
    leaves = list(net._leaves())
    params = [leaf._eval_params(ctx.cache_key, be, xp, ctx.dtype, ctx.device) for leaf in leaves]
    u = ctx.x
    if not ctx.derivatives:
        for leaf, P in zip(leaves, params):
            u, _ = leaf._forward(u, P, 0, be, xp)
        return Result(value=u)
    order = 2 if ctx.second_order else 1
    if ctx.mode == "forward":
        want = Want(hessian=ctx.hessian, diagonal=ctx.hessian_diagonal,
                    laplacian=ctx.laplacian and not ctx.hessian)
        G = ctx.seed_forward()  # (1, k, d): identity or Vᵀ
        H = D = L = None
        for leaf, P in zip(leaves, params):
            u, cache = leaf._forward(u, P, order, be, xp)
            G, H, D, L = leaf._fwd(cache, P, G, H, D, L, want, be, xp)
        if ctx.laplacian and ctx.hessian:
            L = _trace(H, xp)
        return Result(value=u, gradient=G, hessian=H, laplacian=L, hessian_diagonal=D)

    # backward: evaluate, keeping each layer's local derivatives, then sweep back
    caches = []
    for leaf, P in zip(leaves, params):
        u, cache = leaf._forward(u, P, order, be, xp)
        caches.append(cache)
    dl = ctx.seed_backward()  # (1, m, m): identity or Vᵀ
    Dl = None
    lap = diag = None
    last = len(leaves) - 1
    for i in range(last, -1, -1):
        leaf, P, cache = leaves[i], params[i], caches[i]
        if i == 0 and ctx.second_order and not ctx.hessian:
            # only the trace / diagonal of the input Hessian is wanted:
            # never form the (n, m, d, d) array
            if ctx.laplacian:
                lap = leaf._bwd_first(cache, P, dl, Dl, "trace", be, xp)
            if ctx.hessian_diagonal:
                diag = leaf._bwd_first(cache, P, dl, Dl, "diag", be, xp)
            dl, _ = leaf._bwd(cache, P, dl, None, False, be, xp)
            Dl = None
            break
        dl, Dl = leaf._bwd(cache, P, dl, Dl, ctx.second_order, be, xp)
    n = ctx.x.shape[0]
    grad = xp.permute_dims(xp.broadcast_to(dl, (n, *dl.shape[1:])), (0, 2, 1))
    hess = None
    if ctx.hessian:
        hess = xp.permute_dims(Dl, (0, 2, 3, 1))
        eye = xp.eye(hess.shape[1], dtype=hess.dtype, device=ctx.device)
        if ctx.laplacian:
            lap = xp.sum(xp.sum(Dl * eye, axis=-1), axis=-1)
        if ctx.hessian_diagonal:
            diag = xp.permute_dims(xp.sum(Dl * eye, axis=-1), (0, 2, 1))
    elif diag is not None:
        diag = xp.permute_dims(diag, (0, 2, 1))
    return Result(value=u, gradient=grad if ctx.gradient else None, hessian=hess,
                  laplacian=lap, hessian_diagonal=diag)


def _trace(H, xp):
    k = H.shape[1]
    eye = xp.eye(k, dtype=H.dtype, device=None if not hasattr(H, "device") else H.device)
    return xp.sum(xp.sum(H * eye[None, :, :, None], axis=1), axis=1)


class FullyConnectedNN(NN):
    """Stack of :class:`SingleLayer` s: ``widths = [d, w1, ..., m]``, one activation.

    Examples
    --------
    >>> import numpy as np, hessquik_core as hq
    >>> net = hq.FullyConnectedNN([3, 8, 2], act="tanh", seed=0)
    >>> net(np.zeros((5, 3)), gradient=True).gradient.shape
    (5, 3, 2)
    """

    def __init__(self, widths: Sequence[int], act="softplus", *, dtype=np.float64, seed=None) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries (input and output), got {widths}")
        rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
        super().__init__(*(SingleLayer(widths[i], widths[i + 1], act=act, dtype=dtype, seed=rng)
                           for i in range(len(widths) - 1)))


class ResnetNN(NN):
    """``depth`` residual layers :math:`u + h\\sigma(uK+b)` of constant ``width``."""

    def __init__(self, width: int, depth: int, h: float = 1.0, act="softplus", *,
                 dtype=np.float64, seed=None) -> None:
        depth = _check_int("depth", depth)
        rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
        super().__init__(*(ResnetLayer(width, h=h, act=act, dtype=dtype, seed=rng) for _ in range(depth)))


class ICNN(NN):
    """Input-convex network: ``widths = [None, w1, w2, ...]`` as in hessQuik.

    Layer ``i`` is ``ICNNLayer(input_dim, widths[i], widths[i+1])``; the
    output width is ``widths[-1] + input_dim``. Convexity in ``x`` holds
    for convex non-decreasing activations (softplus, quadratic on z ≥ 0, ...).
    """

    def __init__(self, input_dim: int, widths: Sequence, act="softplus", *,
                 dtype=np.float64, seed=None) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries, e.g. [None, 16], got {widths}")
        rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
        super().__init__(*(ICNNLayer(input_dim, widths[i], widths[i + 1], act=act, dtype=dtype, seed=rng)
                           for i in range(len(widths) - 1)))

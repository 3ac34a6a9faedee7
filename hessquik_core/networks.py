r"""Networks: compositions of layers; :mod:`hessquik_core.engine` runs their calls.

``net(x, gradient=True, hessian=True)`` evaluates the network and, without
automatic differentiation, its input derivatives. See :meth:`NN.__call__`.

This module is over 400 lines because :meth:`NN.__call__`, :meth:`NN.empty_result`
and :meth:`NN.cost` each document every keyword of a call with its shapes (what
``help(net)`` shows); the code itself is short, and the three factories are
``NN`` subclasses that only choose their layers.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ._array import resolve_call
from ._dask_hook import chunked_plugin, is_dask
from ._inputs import admission, batch_input, unbatch
from ._module import Module
from .engine import MODES, MemoryBudgetError, Result, call, empty_result, estimate_call
from .engine.explain import explain
from .layers import ICNNLayer, Layer, ResnetLayer, SingleLayer
from .layers.base import check_int, rng_of, set_engine
from .registry import NETWORK_ALIASES, NETWORKS, register_network, register_network_alias

__all__ = [
    "ICNN",
    "NN",
    "NETWORKS",
    "FullyConnectedNN",
    "MemoryBudgetError",
    "ResnetNN",
    "Result",
    "MODES",
    "NETWORK_ALIASES",
    "register_network",
    "register_network_alias",
]


@register_network
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

    @classmethod
    def from_blocks(cls, *blocks):
        """An instance of ``cls`` holding ``blocks`` (as ``NN(*blocks)`` would), without
        calling ``cls``'s own constructor: how ``hq.load`` rebuilds a saved network."""
        obj = cls.__new__(cls)
        NN.__init__(obj, *blocks)
        return obj

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
    def _resolve(self, x, *flags, admit=None, out_what: str | None = None):
        """The resolved context of ``self(x, *flags)`` on a batch ``(N, d)`` and ``x``'s leading
        shape for the results (:func:`~hessquik_core._inputs.batch_input`); ``flags`` may end
        with ``biharmonic``; ``admit``: see :func:`~hessquik_core._array.resolve_call`;
        ``out_what``: names an ``out=`` use."""
        directions, mode, backend, gradient, hessian, laplacian, hessian_diagonal, divergence, *more = flags
        more += [False] * (3 - len(more))  # biharmonic, third_derivative, fourth_derivative
        x, lead = batch_input(x, self.in_features, out_what)
        ctx = resolve_call(
            self,
            x,
            directions=directions,
            mode=mode,
            backend=backend,
            gradient=gradient,
            hessian=hessian,
            laplacian=laplacian,
            hessian_diagonal=hessian_diagonal,
            divergence=divergence,
            biharmonic=more[0],
            third_derivative=more[1],
            fourth_derivative=more[2],
            admit=admit,
        )
        return ctx, lead

    def __call__(
        self,
        x,
        gradient: bool = False,
        hessian: bool = False,
        laplacian: bool = False,
        directions=None,
        mode: str = "auto",
        backend: str | None = None,
        *,
        hessian_diagonal: bool = False,
        divergence: bool = False,
        biharmonic: bool = False,
        third_derivative: bool = False,
        fourth_derivative: bool = False,
        max_memory: float | None = None,
        progress: bool | None = None,
        out: Result | None = None,
    ) -> Result:
        r"""Evaluate the network and the requested input derivatives.

        Parameters
        ----------
        x : array of shape (n, d), (d,) or (..., d)
            NumPy, CuPy, torch or any Array-API array, floating dtype, or a
            nested list of numbers (a NumPy ``float64`` array). The
            computation runs in ``x``'s dtype and on its device; parameters
            are converted (and cached) to match. A single point ``(d,)``
            gives results without the batch axis (``value (m,)``,
            ``gradient (d, m)``, ...; ``directions`` keep their meaning);
            extra leading axes ``(n1, ..., nk, d)`` run as the batch
            ``x.reshape(-1, d)`` and every result gets them back (see
            :class:`Result`; not with ``out=``).
        gradient, hessian, laplacian, hessian_diagonal : bool
            What to compute besides the value. The Laplacian and the
            diagonal alone never form the full Hessian.
        directions : array, optional
            ``V``. Forward mode: shape (d, k), derivatives along the columns
            (gradient ``Vᵀ∇f``, Hessian ``VᵀHV``, diagonal of ``VᵀHV``,
            Laplacian ``tr(VᵀHV) = tr(VVᵀH)``). Backward mode: shape (m, k),
            the outputs are contracted with ``V``. Same library as ``x`` (a
            NumPy array or nested list is also accepted and converted);
            another library raises ``TypeError``.
        mode : {"auto", "forward", "backward"}
            ``"auto"`` takes the route the cost model (:meth:`cost`) finds
            cheaper; with ``directions`` their first axis decides.
        backend : {None, "numpy", "torch", "cupy", "generic"}
            ``None`` infers the backend from ``x``. Forcing another library
            converts ``x`` to it and the results back (torch autograd does not
            cross such a conversion); ``"generic"`` keeps ``x``'s library but
            uses only Array-API standard functions.
        divergence : bool
            Trace of the Jacobian, shape (n,), for networks with d = m.
        biharmonic : bool
            :math:`\Delta^2 u`, shape (n, m), exact: one forward sweep of
            :math:`d(d+1)/2 + 2d + 3` numbers per feature (:func:`~hessquik_core.higher.biharmonic`'s;
            ``gradient``, ``laplacian`` from the same sweep). Refused up front: ``directions``,
            ``mode="backward"``, ``hessian``, ``hessian_diagonal``, ``divergence``, ``out=``,
            Dask arrays, activations without σ⁗, layer types without an order-4 rule.
        third_derivative, fourth_derivative : bool
            :math:`\partial^3 u[v, v, v]` / :math:`\partial^4 u[v, v, v, v]` along every column
            ``v`` of ``directions`` ``V : (d, k)`` (required), shape (n, k, m) each, exact: one
            forward Taylor sweep of ``3k + 1`` / ``4k + 1`` numbers per feature (the entries of
            :func:`~hessquik_core.higher.taylor_derivatives`). Refused up front: no ``directions``,
            ``mode="backward"``, any other derivative flag in the same call, ``out=``, Dask
            arrays, activations without σ‴ / σ⁗, layer types without an order-3/4 rule.
        max_memory : float, optional
            Byte budget for the call's working memory (the temporaries of
            the chain rule). Default: half the memory available on ``x``'s
            device. A call whose estimated peak exceeds it runs in batch
            chunks (results are identical); if one example alone exceeds
            it, :class:`MemoryBudgetError` is raised before anything is
            allocated (with ``backend=`` another library's: before ``x``
            is converted, so a broadcast view is never materialised). The result is not counted against ``max_memory``: it
            is allocated once, whole, and must fit in the memory available
            on the device next to one chunk's work, otherwise
            :class:`MemoryBudgetError` (stating its size) is raised before
            any layer runs. Allocator failures during the call (NumPy's
            ``MemoryError``, torch's out-of-memory errors) are raised as
            :class:`MemoryBudgetError` too.
        progress : bool, optional
            A progress bar (tqdm) over the batch chunks of a call that the
            memory budget splits. ``None``: only when standard error is a
            terminal and tqdm is installed; ``True``: always (needs tqdm);
            ``False``: never. An unchunked call shows no bar.
        out : Result, optional
            Preallocated buffers to write the results into, from
            :meth:`empty_result` (same arguments) or a previous call with
            the same request: the call fills them in place and returns
            ``out`` itself, so repeated calls reuse one allocation. It must
            hold exactly the requested quantities, each of the shape this
            call returns (``(d, ...)`` entries for a single point), in
            ``x``'s library, dtype and device, writable and sharing no
            memory with ``x``, ``directions`` or each other (``ValueError``
            / ``TypeError`` saying what was expected otherwise, before any
            work). Chunked calls write each chunk into its rows of ``out``;
            the result is then not counted against the free memory, so
            ``out`` may be larger than memory (e.g. ``numpy.memmap``). JAX
            arrays are immutable and raise ``TypeError``; so do Dask arrays
            (their results are lazy). Not while torch autograd records the
            call (``ValueError``: run under ``torch.no_grad()``).

        Returns
        -------
        Result
            ``value (n, m)``, ``gradient (n, d, m)``, ``hessian (n, d, d, m)``,
            ``laplacian (n, m)``, ``hessian_diagonal (n, d, m)``,
            ``divergence (n,)``; ``None`` where not requested. Unpacking
            it yields only the requested quantities, in this order (see
            :class:`Result`).
        """
        if biharmonic is True and out is not None:
            raise ValueError("biharmonic=True does not take out= buffers: call without out=")
        if (third_derivative is True or fourth_derivative is True) and out is not None:
            raise ValueError(
                "third_derivative / fourth_derivative do not take out= buffers: call without out="
            )
        plugin = chunked_plugin(x)
        if plugin is not None:  # one task per batch chunk, lazy results: hessquik_core/dask/_network.py
            if biharmonic is not False:
                raise TypeError("biharmonic=True is not supported for Dask arrays: call on a computed array")
            if third_derivative is not False or fourth_derivative is not False:
                raise TypeError(
                    "third_derivative / fourth_derivative are not supported for Dask arrays: call on a computed array"
                )
            if out is not None:
                raise TypeError("out= is not supported for Dask arrays: their results are lazy Dask arrays")
            kw = {
                k: v
                for k, v in locals().items()
                if k
                not in ("self", "x", "out", "plugin", "biharmonic", "third_derivative", "fourth_derivative")
            }
            return plugin.call(self, x, **kw)
        leaves = list(self._leaves())
        ctx, lead = self._resolve(  # the memory plan refuses before x is converted (admission)
            x, directions, mode, backend, gradient, hessian, laplacian, hessian_diagonal, divergence, biharmonic,
            third_derivative, fourth_derivative,
            admit=admission(leaves, max_memory, out is not None), out_what=None if out is None else "out=",
        )  # fmt: skip
        single = lead == ()
        res = call(leaves, ctx, max_memory, progress, out, single)
        if out is not None:  # out's own arrays, already of the caller's shapes
            return res
        return res if lead is None else unbatch(res, lead)

    def empty_result(
        self,
        x,
        gradient: bool = False,
        hessian: bool = False,
        laplacian: bool = False,
        directions=None,
        mode: str = "auto",
        backend: str | None = None,
        *,
        hessian_diagonal: bool = False,
        divergence: bool = False,
    ) -> Result:
        """Uninitialised result buffers for ``self(x, ..., out=...)``.

        Takes the arguments of :meth:`__call__` (without ``max_memory``,
        ``progress``, ``out``) and returns a :class:`Result` holding, for
        exactly the requested quantities, arrays of the shapes that call
        returns, in ``x``'s library, dtype and device and in the memory
        layout the chosen route produces (so each chunk is a straight
        copy). Their contents are undefined until a call fills them.

        >>> import numpy as np, hessquik_core as hq
        >>> net = hq.FullyConnectedNN([3, 8, 1], act="tanh", seed=0)
        >>> x = np.zeros((5, 3))
        >>> out = net.empty_result(x, gradient=True, hessian=True)
        >>> res = net(x, gradient=True, hessian=True, out=out)
        >>> res is out, out.hessian.shape
        (True, (5, 3, 3, 1))
        """
        if is_dask(x):
            raise TypeError("empty_result does not take Dask arrays: their results are lazy Dask arrays")
        ctx, lead = self._resolve(
            x, directions, mode, backend, gradient, hessian, laplacian, hessian_diagonal, divergence,
            out_what="empty_result",
        )  # fmt: skip
        return empty_result(list(self._leaves()), ctx, lead == ())

    def cost(
        self,
        n: int,
        *,
        gradient: bool | None = None,
        hessian: bool = False,
        laplacian: bool = False,
        hessian_diagonal: bool = False,
        divergence: bool = False,
        num_directions: int | None = None,
        itemsize: int = 8,
        fused: bool = False,
        mode: str = "auto",
        max_memory: float | None = None,
        training: bool = False,
        biharmonic: bool = False,
        third_derivative: bool = False,
        fourth_derivative: bool = False,
    ):
        """Estimated cost of a call on ``n`` examples, and what the planner does with it.

        The returned :class:`~hessquik_core.engine.cost.CostReport` prices forward
        and backward mode (``routes``; ``chosen`` is the cheaper) and states the
        planner's decisions for this request, made by the planner itself on an
        input of the call's shape: ``route``, the route the call runs (``"forward"``,
        ``"backward"``, ``"value"``, ``"forward/gram-laplacian"``,
        ``"forward/divergence"``), its estimate ``planned``, the ``chunk`` size and
        number of ``chunks`` (memory budget or cache blocking), the result's size
        and whether the call ``fits`` (else ``refusal``, the message of the
        :class:`MemoryBudgetError` the call would raise). Printing it shows a table.

        Parameters
        ----------
        n : int
            Number of examples.
        gradient, hessian, laplacian, hessian_diagonal, divergence : bool
            The request, as for :meth:`__call__` (``gradient`` defaults to True
            here, False with ``third_derivative`` / ``fourth_derivative``: pass
            ``gradient=False`` to price a value-only call, a Laplacian,
            divergence or diagonal alone).
        num_directions : int, optional
            ``k`` columns of ``directions`` instead of ``d`` tangents / ``m``
            outputs (the plan is made for the cheaper side unless ``mode`` says).
        itemsize : {8, 4}
            Bytes per entry (float64 or float32).
        fused : bool
            Score the routes as for JAX arrays, whose element-wise chains XLA
            fuses (memory traffic weighs less, which favours forward mode for
            the full Hessian).
        mode : {"auto", "forward", "backward"}
            As for :meth:`__call__` (explicit modes run the classic sweeps).
        max_memory : float, optional
            As for :meth:`__call__`: default half the free host memory.
        biharmonic : bool
            Price ``net(x, biharmonic=True, ...)``: the route ``"forward/biharmonic"``
            (:math:`d(d+1)/2 + 2d + 3` streams per feature through each weight matrix).
        third_derivative, fourth_derivative : bool
            Price ``net(x, third_derivative=True, fourth_derivative=True, directions=V)``
            with ``V : (d, k)``, ``k = num_directions`` (required): the route
            ``"forward/taylor"`` (:math:`Kk + 1` streams per feature, ``K`` = 4 with
            ``fourth_derivative``, else 3).
        training : bool
            Price a torch training step (the call recorded by autograd, then
            its backward pass), as a call on tensors that require grad would be.

        The plan is a CPU call's (NumPy, or torch for ``training``): GPUs are
        not cache-blocked and have their own free memory.

        >>> import hessquik_core as hq
        >>> print(hq.FullyConnectedNN([64, 32, 1], act="tanh", seed=0).cost(100, hessian=True).chosen)
        backward
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            what = f"an array of shape {tuple(n.shape)}" if hasattr(n, "shape") else repr(n)
            err = ValueError if isinstance(n, numbers.Integral) and not isinstance(n, bool) else TypeError
            raise err(f"n must be the number of examples, a positive int (x.shape[0]); got {what}")
        return explain(
            list(self._leaves()),
            int(n),
            d=self.in_features,
            m=self.out_features,
            gradient=not (third_derivative or fourth_derivative) if gradient is None else bool(gradient),
            hessian=bool(hessian),
            laplacian=bool(laplacian),
            hessian_diagonal=bool(hessian_diagonal),
            divergence=bool(divergence),
            num_directions=num_directions,
            itemsize=itemsize,
            fused=bool(fused),
            mode=mode,
            max_memory=max_memory,
            training=bool(training),
            biharmonic=bool(biharmonic),
            third_derivative=bool(third_derivative),
            fourth_derivative=bool(fourth_derivative),
        )

    def _cost(self, ctx, leaves, n, modes=("forward", "backward")):
        return estimate_call(ctx, leaves, n, modes)


# a layer called directly, ``layer(x, ...)``, is evaluated as a one-layer network
set_engine(lambda layer, x, **kwargs: NN(layer)(x, **kwargs))


@register_network
class FullyConnectedNN(NN):
    """Stack of :class:`SingleLayer` s: ``widths = [d, w1, ..., m]``.

    .. note::
       By default the activation is applied to **every** layer, the output
       layer included (hessQuik's ``fullyConnectedNN``): ``act="tanh"``
       gives outputs in (-1, 1). For the linear read-out usual in torch
       (``nn.Sequential(..., nn.Linear)``) pass ``output_act=None``.

    Parameters
    ----------
    widths : sequence of int
        ``[d, w1, ..., m]``, at least two entries.
    act : str or Activation
        The activation of the hidden layers.
    output_act : "same", None, str or Activation
        The activation of the last layer. ``"same"`` (default): ``act``,
        hessQuik's convention, kept as the default so that existing code
        and saved files compute what they always did. ``None`` (or
        ``"identity"``): a linear read-out. Saved files store each layer's
        activation, so :func:`~hessquik_core.save` / ``load`` round-trip
        any choice, and files written before this option load unchanged.
    dtype, seed
        Parameter dtype and initialisation seed (as for the layers).

    Examples
    --------
    >>> import numpy as np, hessquik_core as hq
    >>> net = hq.FullyConnectedNN([3, 8, 2], act="tanh", seed=0)
    >>> net(np.zeros((5, 3)), gradient=True).gradient.shape
    (5, 3, 2)
    >>> hq.FullyConnectedNN([3, 8, 2], act="tanh", output_act=None, seed=0)[-1].act.name
    'identity'
    """

    def __init__(
        self, widths: Sequence[int], act="softplus", *, output_act="same", dtype=np.float64, seed=None
    ) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries (input and output), got {widths}")
        if isinstance(output_act, str) and output_act == "same":
            last = act
        elif output_act is None:
            last = "identity"
        else:
            last = output_act
        rng = rng_of(seed)
        n = len(widths) - 1
        super().__init__(
            *(
                SingleLayer(widths[i], widths[i + 1], act=act if i < n - 1 else last, dtype=dtype, seed=rng)
                for i in range(n)
            )
        )


@register_network
class ResnetNN(NN):
    """``depth`` residual layers :math:`u + h\\sigma(uK+b)` of constant ``width``."""

    def __init__(
        self, width: int, depth: int, h: float = 1.0, act="softplus", *, dtype=np.float64, seed=None
    ) -> None:
        depth = check_int("depth", depth)
        rng = rng_of(seed)
        super().__init__(*(ResnetLayer(width, h=h, act=act, dtype=dtype, seed=rng) for _ in range(depth)))


@register_network
class ICNN(NN):
    """Input-convex network: ``widths = [None, w1, w2, ...]`` as in hessQuik.

    Layer ``i`` is ``ICNNLayer(input_dim, widths[i], widths[i+1])``; the
    output width is ``widths[-1] + input_dim``. Convexity in ``x`` holds
    for convex non-decreasing activations (softplus, quadratic on z ≥ 0, ...).
    """

    def __init__(
        self, input_dim: int, widths: Sequence, act="softplus", *, dtype=np.float64, seed=None
    ) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries, e.g. [None, 16], got {widths}")
        rng = rng_of(seed)
        super().__init__(
            *(
                ICNNLayer(input_dim, widths[i], widths[i + 1], act=act, dtype=dtype, seed=rng)
                for i in range(len(widths) - 1)
            )
        )

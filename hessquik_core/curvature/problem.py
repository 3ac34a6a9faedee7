r"""One curvature computation: the network bound to the call, the data, the loss, the passes.

:class:`_Bound` holds the network's leaves and their parameters in the
call's namespace, dtype and device (resolved by
:func:`hessquik_core._array.resolve_input`, the path network calls use too)
and composes the layers' parameter derivatives (``param_vjp``,
``param_rop_forward``, ``param_rop_backward``, see ``docs/adding_a_layer.md``)
into gradient and product passes. :class:`_Problem` adds targets, loss and
mini-batches; :class:`CurvatureOperator` is the operator that
:func:`~hessquik_core.curvature.hessian_operator` & co. return.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

from .._array import as_plain_array, check_max_memory, namespace_of, resolve_input
from ..backends import backend_for, owner_of
from ..rules.directions import fill_rows
from .layout import _check_torch_dtype, _network, parameter_layout
from .losses import Loss, get_loss
from .operators import LinearOperatorBase, _check_batch_size, _lib_name, _same_library
from .selection import resolve_params

__all__ = ["CurvatureOperator"]

DEFAULT_MEMORY_BUDGET = 2**28  # bytes of work arrays per block of Hessian-vector products


def _convert(a, be, xp, device):
    """``a`` into namespace ``xp`` of backend ``be``, keeping its dtype by name."""
    dt = getattr(xp, str(a.dtype).split(".")[-1])
    return be.convert(a, xp=xp, dtype=dt, device=device)


def _detached(a):
    """Curvature is computed without autodiff: drop a torch tensor's graph (``requires_grad``)."""
    return owner_of(a).detached(a)


class _Bound:
    """Network leaves and their parameters in the call's namespace, dtype and device."""

    def __init__(self, net, x, backend):
        self.layout = parameter_layout(net)
        # the one call-resolution path, shared with network calls
        inp = resolve_input(net, x, backend)
        if x.shape[0] < 1:
            raise ValueError("x must hold at least one example")
        self.user_xp, self.user_device = inp.user_be.xp, aac.device(x)
        self.user_be = inp.user_be
        self.converted = inp.converted
        be, xp, x = inp.be, inp.xp, inp.x
        self.be, self.xp, self.x = be, xp, x
        self.dtype, self.device = x.dtype, aac.device(x)
        key = inp.cache_key
        self.leaves = list(net._leaves())
        self.params = [
            {k: _detached(v) for k, v in leaf._eval_params(key, be, xp, self.dtype, self.device).items()}
            for leaf in self.leaves
        ]
        self.x = x = _detached(x)
        # per leaf: (local parameter name, index in the layout)
        self.slots = []
        j = 0
        for leaf in self.leaves:
            slots = []
            for k, _ in leaf.named_parameters():
                if j >= len(self.layout.keys) or not self.layout.keys[j].endswith(k):
                    raise RuntimeError("leaf parameters do not follow state_dict order")  # pragma: no cover
                slots.append((leaf.local_param_name(k), j))
                j += 1
            self.slots.append(slots)
        if j != len(self.layout.keys):  # pragma: no cover - structural invariant
            raise RuntimeError("leaf parameters do not cover state_dict")
        for leaf in self.leaves:
            if not hasattr(leaf, "param_vjp"):
                raise TypeError(f"layer {leaf!r} has no parameter derivatives")

    # -- conversions between the user's library and the call's ---------------
    def to_call(self, a):
        if not self.converted:
            return a
        return _convert(a, self.be, self.xp, self.device)

    def to_user(self, a):
        if not self.converted:
            return a
        return _convert(a, self.user_be, self.user_xp, self.user_device)

    # -- passes -----------------------------------------------------------------
    def forward(self, x, order):
        inputs, caches = [], []
        u = x
        for leaf, P in zip(self.leaves, self.params):
            inputs.append(u)
            u, cache = leaf.evaluate(u, P, order, self.be)
            caches.append(cache)
        return u, inputs, caches

    def split(self, V):
        """``V : (k, P)`` to one dict per leaf ``local name -> (k, *shape)``."""
        lay, xp = self.layout, self.xp
        k = V.shape[0]
        return [
            {
                name: xp.reshape(V[:, lay.offsets[j] : lay.offsets[j] + lay.sizes[j]], (k, *lay.shapes[j]))
                for name, j in slots
            }
            for slots in self.slots
        ]

    def join(self, grads, lead, start=0):
        """Per-leaf dicts of ``(*lead, *shape)`` to ``(*lead, P)`` in layout order
        (leaves ``start`` on only: ``(*lead, P - offset of leaf start)``)."""
        parts = [
            self.xp.reshape(g[name], (*lead, self.layout.sizes[j]))
            for slots, g in zip(self.slots[start:], grads[start:])
            for name, j in slots
        ]
        return self.xp.concat(parts, axis=-1)

    def leaf_offset(self, i):
        """Where leaf ``i``'s parameters start in θ (``P`` past the last leaf)."""
        for slots in self.slots[i:]:
            if slots:
                return self.layout.offsets[slots[0][1]]
        return self.layout.size

    def grad_pass(self, x, T, loss, w, per_example):
        """Loss values ``(n,)`` and ``∇θ`` of ``w Σ ℓ_n``: ``(P,)``, or per example ``(n, P)``."""
        xp, be = self.xp, self.be
        F, inputs, caches = self.forward(x, 1)
        dl = w * loss._d1(F, T, xp)
        grads = [None] * len(self.leaves)
        for i in range(len(self.leaves) - 1, -1, -1):
            dl, grads[i] = self.leaves[i].param_vjp(caches[i], self.params[i], inputs[i], dl, per_example, be)
        if not per_example:
            return loss._value(F, T, xp), self.join(grads, ())
        lay = self.layout
        parts = [
            (lay.offsets[j], lay.sizes[j], g[name])
            for slots, g in zip(self.slots, grads)
            for name, j in slots
        ]
        A = fill_rows(parts, x.shape[0], lay.size, self.dtype, self.device, be)
        return loss._value(F, T, xp), A

    def prepare(self, x, T, loss, w, kind):
        """Everything of a product pass that does not depend on the directions.

        The forward pass (order 2 for the exact Hessian) and, for the exact
        Hessian, the first-order adjoints ``dls[i] = ∂C/∂(output of leaf i)``.
        """
        xp, be = self.xp, self.be
        F, inputs, caches = self.forward(x, 2 if kind == "hessian" else 1)
        dls = None
        if kind == "hessian":
            dls = [None] * len(self.leaves)
            dl = w * loss._d1(F, T, xp)
            for i in range(len(self.leaves) - 1, -1, -1):
                dls[i] = dl
                if i:
                    dl, _ = self.leaves[i].param_vjp(caches[i], self.params[i], inputs[i], dl, False, be)
        return F, inputs, caches, dls

    def rop_pass(self, x, T, loss, w, V, kind, prep=None, start=0):
        """Curvature-matrix products for the directions ``V : (k, P)``; returns ``(k, P)``.

        ``kind``: ``"hessian"`` (exact, with every layer's curvature terms),
        ``"ggn"`` (output curvature :math:`w\\nabla_f^2\\ell` only) or
        ``"fisher"`` (output curvature :math:`w\\nabla_f\\ell\\nabla_f\\ell^\\top`).
        ``prep``: the result of :meth:`prepare` (independent of ``V``).

        ``start``: the directions are zero on the parameters of leaves before
        ``start`` and only the rows of leaves ``start`` on are wanted
        (``(k, P - leaf_offset(start))``): the forward R-pass begins at leaf
        ``start`` (its input does not depend on the directions, ``Ru = None``)
        and the backward R-pass ends there. The dense symmetric build uses it.
        """
        xp, be = self.xp, self.be
        F, inputs, caches, dls = self.prepare(x, T, loss, w, kind) if prep is None else prep
        Vs = self.split(V)
        n_leaves = len(self.leaves)
        Ru, Rins, rcaches = None, [None] * n_leaves, [None] * n_leaves
        for i in range(start, n_leaves):
            Rins[i] = Ru
            Ru, rcaches[i] = self.leaves[i].param_rop_forward(
                caches[i], self.params[i], inputs[i], Ru, Vs[i], be
            )
        # Ru : (n, k, m) = J_n v, the output tangent of every direction
        if kind == "fisher":
            g1 = loss._d1(F, T, xp)
            Rdl = w * xp.sum(g1[:, None, :] * Ru, axis=-1)[:, :, None] * g1[:, None, :]
        else:
            Rdl = w * loss._hvp(F, T, Ru, xp)
        out = [None] * n_leaves
        for i in range(n_leaves - 1, start - 1, -1):
            _, Rdl, out[i] = self.leaves[i].param_rop_backward(
                caches[i],
                rcaches[i],
                self.params[i],
                inputs[i],
                Rins[i],
                Vs[i],
                None if dls is None else dls[i],
                Rdl,
                be,
                need_dlu=False,
                need_Rdlu=i > start,
            )
        return self.join(out, (V.shape[0],), start)


def _user_targets(y, B):
    """Targets ``y`` in the library of ``x`` (``B.user_xp``).

    A NumPy ``y`` with ``x`` of another library (e.g. NumPy labels for torch
    data) is converted to that library, keeping its dtype (integer labels
    stay integers) and moving it to ``x``'s device; any other mismatch is a
    ``TypeError``.
    """
    y = as_plain_array(y, "y")
    xpy = namespace_of(y, "y")
    if _same_library(xpy, B.user_xp):
        return y
    if backend_for(xpy).interchange and not backend_for(B.user_xp).interchange:
        if y.dtype.kind not in "biuf":
            raise TypeError(
                f"y must hold integer class labels or floating targets, got a NumPy array of dtype {y.dtype}"
            )
        return _convert(y, B.user_be, B.user_xp, B.user_device)
    raise TypeError(
        f"y must be an array of the same library as x ({_lib_name(B.user_xp)}) "
        f"or a NumPy array, got {type(y).__module__}.{type(y).__name__}"
    )


class _Problem:
    """Network, data, loss and mini-batches of one curvature computation."""

    def __init__(self, net, x, y, loss, batch_size=None, backend=None, cache_forward=None, params=None):
        original, net = net, _network(net)
        _check_torch_dtype(original, x)
        self.loss: Loss = get_loss(loss)
        self.B = B = _Bound(net, x, backend)
        # the differentiated parameters (params=): their layout, and where they sit in the full θ
        self.layout, index = resolve_params(original, B.layout, params)
        self.index = self.position = None
        if index is not None:
            P = B.layout.size
            pos = np.full(
                P, index.size, dtype=np.int64
            )  # full θ entry -> selected entry (or the zero column)
            pos[index] = np.arange(index.size, dtype=np.int64)
            self.index = B.be.convert(index, xp=B.xp, dtype=B.xp.int64, device=B.device)
            self.position = B.be.convert(pos, xp=B.xp, dtype=B.xp.int64, device=B.device)
        y = _user_targets(y, B)
        N = x.shape[0]
        if y.ndim < 1 or y.shape[0] != N:
            raise ValueError(f"y must have {N} rows (one per example), got shape {tuple(y.shape)}")
        self.N = N
        self.m = net.out_features
        self.w = self.loss.weight_for(y)
        bs = _check_batch_size(batch_size, N)
        yc = B.to_call(y)
        self.chunks = []
        for i in range(0, N, bs):
            xb = B.x[i : min(i + bs, N), ...]
            Tb = self.loss._targets(xb.shape[0], self.m, B.dtype, yc[i : min(i + bs, N), ...], B.xp)
            self.chunks.append((xb, Tb))
        self.batch_size = bs
        # the forward pass does not depend on the directions: keep it between
        # products (like autograd's retained graph) unless mini-batches ask to save memory
        self.cache_forward = len(self.chunks) == 1 if cache_forward is None else bool(cache_forward)
        self._fwd = {}

    @property
    def size(self) -> int:
        return self.layout.size

    def select(self, a):
        """The selected parameters' entries of ``a : (..., P_full)`` (call namespace)."""
        return a if self.index is None else self.B.xp.take(a, self.index, axis=a.ndim - 1)

    def embed(self, Vt):
        """Directions ``(k, P_selected)`` as ``(k, P_full)``, zero on the parameters not selected."""
        if self.index is None:
            return Vt
        xp = self.B.xp
        zero = xp.zeros((Vt.shape[0], 1), dtype=Vt.dtype, device=self.B.device)
        return xp.take(xp.concat([Vt, zero], axis=1), self.position, axis=1)

    def per_example(self, chunk):
        """``(n_b, P)`` rows :math:`\\nabla_\\theta\\ell_n` of one mini-batch, call namespace."""
        xb, Tb = self.chunks[chunk]
        return self.select(self.B.grad_pass(xb, Tb, self.loss, 1.0, True)[1])

    def apply(self, Vt, kind, start=0):
        """Sum over mini-batches of the products with ``Vt : (k, P)`` (call namespace);
        ``start``: see :meth:`_Bound.rop_pass`."""
        w = 1.0 / self.N if kind == "fisher" else self.w
        Vt = self.embed(Vt)
        out = None
        for c, (xb, Tb) in enumerate(self.chunks):
            prep = self._fwd.get((c, kind))
            if prep is None and self.cache_forward:
                prep = self._fwd[(c, kind)] = self.B.prepare(xb, Tb, self.loss, w, kind)
            r = self.B.rop_pass(xb, Tb, self.loss, w, Vt, kind, prep, start)
            out = r if out is None else out + r
        return self.select(out) if start == 0 else out


class CurvatureOperator(LinearOperatorBase):
    """Exact Hessian, Gauss–Newton or empirical Fisher of a training loss, as an operator.

    Built by :func:`hessian_operator`, :func:`ggn_operator`,
    :func:`empirical_fisher_operator` (not by hand). Products are exact (no
    sampling): mini-batches only bound memory, the sum over them is the
    full-data matrix. ``block_size`` directions are pushed through the
    network per pass (default from ``memory_budget`` bytes, see
    :func:`hessian`). Accepts and returns arrays of ``x``'s library (or
    NumPy, see :class:`LinearOperatorBase`).

    Parameters
    ----------
    problem : object
        Network, data, loss and mini-batches (private; built by the functions above).
    kind : {"hessian", "ggn", "fisher"}
    block_size : int, optional
    memory_budget : float, optional

    Attributes
    ----------
    kind : str
        ``"hessian"``, ``"ggn"`` or ``"fisher"``.
    block_size : int
        Directions per pass.
    """

    def __init__(self, problem: _Problem, kind: str, block_size=None, memory_budget=None) -> None:
        B = problem.B
        super().__init__(problem.size, B.user_xp, _user_dtype(B), B.user_device)
        self.problem, self.kind = problem, kind
        self.block_size = _block_size(problem, block_size, memory_budget)

    def __repr__(self) -> str:
        return (
            f"CurvatureOperator(kind={self.kind!r}, P={self.size}, N={self.problem.N}, "
            f"batch_size={self.problem.batch_size}, block_size={self.block_size})"
        )

    def _default_block(self) -> int:
        return self.block_size

    def to_dense(
        self, *, block_size: int | None = None, progress: bool | None = None, symmetric: bool = True
    ) -> Any:
        r"""The ``(P, P)`` matrix; by default only its blocks on and below the layer diagonal.

        With ``symmetric=True`` (default) the columns of leaf (layer) ``j`` are
        pushed through leaves ``j..L`` only: the forward R-pass starts at leaf
        ``j`` (earlier leaves see zero directions) and the backward R-pass
        stops there, giving the rows :math:`H_{ij}`, :math:`i \ge j` (of a
        diagonal block :math:`H_{jj}` the lower triangle is kept); the blocks
        above the diagonal are their transposes, :math:`H_{ji} = H_{ij}^\top`.
        Every entry is an exact product (not symmetrised); the result is
        exactly symmetric. The per-column work falls from all ``L`` leaves to
        leaves ``j..L``, so the saving grows with depth (none for one layer).
        ``symmetric=False`` is the plain column-by-column build.

        Parameters
        ----------
        block_size : int, optional
            Columns per product (default: the operator's own block size).
        progress : bool, optional
            Progress bar over the column blocks; see :func:`hessian`.
        symmetric : bool, default True

        Returns
        -------
        array of shape (P, P)
            In the operator's library.
        """
        if not symmetric or self.problem.index is not None:  # a selection (params=): the column build
            return super().to_dense(block_size=block_size, progress=progress)
        from .triangle import symmetric_dense

        return symmetric_dense(self, block_size, progress)

    def _matmat(self, V):
        B, xp = self.problem.B, self.problem.B.xp
        Vt = xp.matrix_transpose(B.to_call(V))  # (k, P)
        outs = []
        for j in range(0, Vt.shape[0], self.block_size):
            outs.append(self.problem.apply(Vt[j : min(j + self.block_size, Vt.shape[0]), :], self.kind))
        out = outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)
        return B.to_user(xp.matrix_transpose(out))


def _user_dtype(B):
    if not B.converted:
        return B.dtype
    return getattr(B.user_xp, str(B.dtype).split(".")[-1])


def _block_size(problem: _Problem, block_size, memory_budget) -> int:
    r"""Directions per pass: ``block_size``, or the most that fit ``memory_budget`` bytes.

    Estimate per direction: the R-images of every layer's input, output and
    pre-activation for every example of a mini-batch (4 arrays per layer
    width, counted generously) plus four ``P``-vectors.
    """
    P = problem.size
    if block_size is not None:
        return min(_check_batch_size(block_size, P), P)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    budget = check_max_memory(budget, "memory_budget")  # any real number; NaN, bool refused
    itemsize = np.dtype(str(problem.B.dtype).split(".")[-1]).itemsize
    feat = sum(leaf.in_features + 2 * leaf.out_features for leaf in problem.B.leaves)
    per_dir = itemsize * (4 * problem.batch_size * feat + 4 * P)
    return int(max(1, min(P, budget // per_dir)))

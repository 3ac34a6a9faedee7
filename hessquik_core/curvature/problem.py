r"""One curvature computation: the network bound to the call, the data, the loss, the passes.

:class:`_Bound` holds the network's leaves and their parameters in the
call's namespace, dtype and device (resolved by
:func:`hessquik_core._array.resolve_input`, the path network calls use too)
and composes the layers' parameter derivatives (``param_vjp``,
``param_rop_forward``, ``param_rop_backward``, see ``docs/adding_a_layer.md``)
into gradient and product passes; :class:`CurvatureOperator` is the operator that
:func:`~hessquik_core.curvature.hessian_operator` & co. return. The data loop
(targets, loss, mini-batches or Dask chunks) is ``hessquik_core.curvature.sources``.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

from .._array import check_max_memory, resolve_input
from ..backends import owner_of
from ..rules.directions import fill_rows
from ._fused import fused_pass
from .layout import parameter_layout
from .operators import LinearOperatorBase, _check_batch_size

__all__ = ["CurvatureOperator"]

DEFAULT_MEMORY_BUDGET = 2**28  # bytes of work arrays per block of Hessian-vector products


def _convert(a, be, xp, device):
    """``a`` into namespace ``xp`` of backend ``be``, keeping its dtype by name."""
    dt = getattr(xp, str(a.dtype).split(".")[-1])
    return be.convert(a, xp=xp, dtype=dt, device=device)


def _detached(a):
    """Curvature is computed without autodiff: drop a torch tensor's graph (``requires_grad``)."""
    return owner_of(a).detached(a)


def _views_serve(views, inp, dtype, device, memo) -> bool:
    """Whether a torch model's weight views can be this call's parameters: the call runs
    in their library (not converted), dtype and device (remembered in ``memo``)."""
    if inp.converted:
        return False
    lib = inp.be.library
    key = ("serves", lib, dtype, device)
    ok = memo.get(key)
    if ok is None:
        ok = memo[key] = all(
            v is None or (owner_of(v).library == lib and v.dtype == dtype and aac.device(v) == device)
            for d in views
            for v in d.values()
        )
    return ok


def _plan(net):
    """What a call needs of the network's structure alone: ``(layout, leaves, slots, fused)``
    (a cached plan's ``leaves`` may belong to an older conversion: calls take their own).

    ``slots[i]``: leaf ``i``'s ``(local parameter name, index in the layout)``;
    ``fused[i]``: whether leaf ``i`` has the fused gradient steps (:meth:`_Bound.fused_grad_pass`).
    """
    layout = parameter_layout(net)
    leaves = list(net._leaves())
    all_slots = []
    j = 0
    for leaf in leaves:
        slots = []
        for k, _ in leaf.named_parameters():
            if j >= len(layout.keys) or not layout.keys[j].endswith(k):
                raise RuntimeError("leaf parameters do not follow state_dict order")  # pragma: no cover
            slots.append((leaf.local_param_name(k), j))
            j += 1
        all_slots.append(slots)
    if j != len(layout.keys):  # pragma: no cover - structural invariant
        raise RuntimeError("leaf parameters do not cover state_dict")
    for leaf in leaves:
        if not hasattr(leaf, "param_vjp"):
            raise TypeError(f"layer {leaf!r} has no parameter derivatives")
    return layout, leaves, all_slots, [hasattr(leaf, "param_grad_forward") for leaf in leaves]


class _Bound:
    """Network leaves and their parameters in the call's namespace, dtype and device.

    ``views`` / ``memo``: a torch model's weight views and the memo of its cache entry
    (``hessquik_core/curvature/_torch_cache.py``), where the network is one's conversion;
    ``fresh()``: that conversion with current values, for a call the views cannot serve.
    """

    def __init__(self, net, x, backend, views=None, memo=None, fresh=None):
        plan = None if memo is None else memo.get("plan")
        if plan is None:
            plan = _plan(net)
            if memo is not None:
                memo["plan"] = plan
        self.layout, _, self.slots, self.fused = plan
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
        if views is not None and _views_serve(views, inp, self.dtype, self.device, memo):
            # a torch model's own weights, read in place (hessquik_core/curvature/_torch_cache.py);
            # the network (structure only here) may hold older values
            self.leaves = list(net._leaves())
            self.params = views
            self.live = True  # the weights follow in-place updates of the model (see snapshot)
        else:
            self.live = False
            if views is not None and fresh is not None:
                net = fresh()  # the values are read from the network: its current conversion
            self.leaves = list(net._leaves())
            self.params = [
                {
                    k: _detached(v)
                    for k, v in leaf._eval_params(inp.cache_key, be, xp, self.dtype, self.device).items()
                }
                for leaf in self.leaves
            ]
        self.x = x = _detached(x)

    def snapshot(self) -> None:
        """Copy the parameters where they are views of a torch model's tensors, so that a
        lasting object (an operator, with its kept forward passes) keeps the weights it was
        built with instead of following the model's later in-place updates."""
        if self.live:
            copy = self.xp.asarray
            self.params = [
                {k: None if v is None else copy(v, copy=True) for k, v in d.items()} for d in self.params
            ]
            self.live = False

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

    def fused_grad_pass(self, x, T, loss, w):
        """Loss values ``(n,)`` and ``∇θ`` ``(P,)`` of ``w Σ ℓ_n``: :meth:`grad_pass`'s numbers
        (the same operations, up to the rounding of a fused kernel), with less work
        (:func:`fused_pass`)."""
        xp, be = self.xp, self.be

        def head(F):
            value, dl = loss._value_and_d1(F, T, xp, be)
            return value, w * dl

        out = fused_pass(
            self.leaves, self.params, self.fused, self.slots, self.layout, be, x, self.device, head, self.join
        )
        assert out is not None  # head never declines
        return out

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

    def __init__(self, problem: Any, kind: str, block_size=None, memory_budget=None) -> None:
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


def _block_size(problem: Any, block_size, memory_budget) -> int:
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

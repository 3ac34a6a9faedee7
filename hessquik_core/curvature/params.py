r"""Derivatives of a training loss with respect to the network parameters, without AD.

For data :math:`(x_n, y_n)_{n=1}^N` and a :class:`~hessquik_core.curvature.losses.Loss`
the training loss is :math:`C(\theta) = w\sum_n \ell(f(x_n;\theta), y_n)` with
:math:`w = 1/N` (``reduction="mean"``) or 1 (``"sum"``). This module gives

* the gradient :math:`\nabla C` and the per-example gradients
  :math:`\nabla_\theta \ell_n` (rows of an ``(N, P)`` array, *without* the
  factor :math:`w`),
* products with the exact Hessian :math:`H = \nabla^2 C` (Pearlmutter's
  R-operator, worked out per layer), with the generalised Gauss–Newton
  matrix :math:`G_{GN} = w \sum_n J_n^\top \nabla_f^2\ell_n\, J_n`
  (:math:`J_n = \partial f_n/\partial\theta`), and with the empirical Fisher
  / outer-product matrix :math:`G = \frac1N \sum_n \nabla\ell_n \nabla\ell_n^\top`
  (always :math:`1/N`, whatever the reduction; :math:`G \ne \nabla C\,\nabla C^\top`),
* those matrices as operators (matvec, dense assembly in column blocks of
  products under a memory budget, mini-batch accumulation).

Every layer owns its parameter derivatives (``param_vjp``, ``param_rop_forward``,
``param_rop_backward`` in :mod:`hessquik_core.layers`); this module only composes
them. Parameter order is ``net.state_dict()`` order; each parameter is
flattened row-major (C order), see :class:`ParameterLayout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat as aac
import numpy as np

from .._array import namespace_of, resolve_input
from ..backends import backend_for
from ..rules.directions import fill_rows
from .losses import Loss, get_loss

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "LinearOperatorBase",
    "ParameterLayout",
    "aslinearoperator",
    "empirical_fisher",
    "empirical_fisher_operator",
    "empirical_fisher_vp",
    "flatten_parameters",
    "ggn",
    "ggn_operator",
    "ggn_vp",
    "gradient",
    "hessian",
    "hessian_operator",
    "hvp",
    "parameter_layout",
    "per_example_gradients",
    "value_and_gradient",
]

DEFAULT_MEMORY_BUDGET = 2**28  # bytes of work arrays per block of Hessian-vector products


# --------------------------------------------------------------------------
# parameter layout: per-layer parameters <-> one vector of length P
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterLayout:
    """Where each parameter lives in the flat vector :math:`\\theta \\in \\mathbb{R}^P`.

    ``theta = concat([ravel(p) for p in state_dict().values()])``: parameters
    in ``state_dict`` order (``'0.K', '0.b', '1.K', ...``; switched-off ones
    absent), each flattened row-major. Flat arrays carry the parameter axis
    last, so per-example gradients ``(N, P)`` unflatten to ``(N, *shape)``.

    Attributes
    ----------
    keys : tuple of str
    shapes : tuple of tuple of int
    offsets, sizes : tuple of int
    """

    keys: tuple
    shapes: tuple
    offsets: tuple
    sizes: tuple

    @property
    def size(self) -> int:
        """:math:`P`, the number of scalar parameters."""
        return int(sum(self.sizes))

    def __len__(self) -> int:
        return self.size

    def slice(self, key: str) -> slice:
        """Slice of ``theta`` holding parameter ``key``."""
        i = self._index(key)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def _index(self, key):
        try:
            return self.keys.index(key)
        except ValueError:
            raise KeyError(f"unknown parameter {key!r}; known: {list(self.keys)}") from None

    def flatten(self, params) -> Any:
        """Mapping ``key -> array (*lead, *shape)`` (all keys, one library) to ``(*lead, P)``."""
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

    def unflatten(self, theta) -> dict:
        """``(*lead, P)`` to a dict ``key -> (*lead, *shape)`` (load it with ``net.load_state_dict``)."""
        xp = namespace_of(theta, "theta")
        if theta.ndim < 1 or theta.shape[-1] != self.size:
            raise ValueError(f"theta must have shape (..., {self.size}), got {tuple(theta.shape)}")
        lead = tuple(theta.shape[:-1])
        return {
            k: xp.reshape(theta[..., o : o + s], (*lead, *shape))
            for k, shape, o, s in zip(self.keys, self.shapes, self.offsets, self.sizes)
        }


def parameter_layout(net) -> ParameterLayout:
    """The :class:`ParameterLayout` of a network or layer (``state_dict`` order, row-major)."""
    if not hasattr(net, "named_parameters") or not hasattr(net, "_leaves"):
        raise TypeError(f"net must be a hessquik_core network or layer, got {type(net).__name__}")
    keys, shapes, offsets, sizes = [], [], [], []
    off = 0
    for k, a in net.named_parameters():
        shape = tuple(int(s) for s in a.shape)
        size = int(np.prod(shape, dtype=np.int64))
        keys.append(k)
        shapes.append(shape)
        offsets.append(off)
        sizes.append(size)
        off += size
    if not keys:
        raise ValueError("the network has no parameters")
    return ParameterLayout(tuple(keys), tuple(shapes), tuple(offsets), tuple(sizes))


def flatten_parameters(net, like=None):
    """:math:`\\theta` as one vector ``(P,)``.

    Without ``like``: in the library of the stored parameters. With an
    array ``like``: in its library, dtype and device.
    """
    layout = parameter_layout(net)
    state = dict(net.named_parameters())
    if like is not None:
        xp = namespace_of(like, "like")
        be = backend_for(xp)
        state = {k: be.convert(a, xp=xp, dtype=like.dtype, device=aac.device(like)) for k, a in state.items()}
    return layout.flatten(state)


# --------------------------------------------------------------------------
# a network bound to one call's namespace / dtype / device
# --------------------------------------------------------------------------


def _convert(a, be, xp, device):
    """``a`` into namespace ``xp`` of backend ``be``, keeping its dtype by name."""
    dt = getattr(xp, str(a.dtype).split(".")[-1])
    return be.convert(a, xp=xp, dtype=dt, device=device)


def _detached(a):
    """Curvature is computed without autodiff: drop a torch tensor's graph (``requires_grad``)."""
    return a.detach() if getattr(a, "requires_grad", False) else a


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

    def join(self, grads, lead):
        """Per-leaf dicts of ``(*lead, *shape)`` to ``(*lead, P)`` in layout order."""
        parts = [None] * len(self.layout.keys)
        for slots, g in zip(self.slots, grads):
            for name, j in slots:
                parts[j] = self.xp.reshape(g[name], (*lead, self.layout.sizes[j]))
        return self.xp.concat(parts, axis=-1)

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

    def rop_pass(self, x, T, loss, w, V, kind, prep=None):
        """Curvature-matrix products for the directions ``V : (k, P)``; returns ``(k, P)``.

        ``kind``: ``"hessian"`` (exact, with every layer's curvature terms),
        ``"ggn"`` (output curvature :math:`w\\nabla_f^2\\ell` only) or
        ``"fisher"`` (output curvature :math:`w\\nabla_f\\ell\\nabla_f\\ell^\\top`).
        ``prep``: the result of :meth:`prepare` (independent of ``V``).
        """
        xp, be = self.xp, self.be
        F, inputs, caches, dls = self.prepare(x, T, loss, w, kind) if prep is None else prep
        Vs = self.split(V)
        Ru, Rins, rcaches = None, [], []
        for leaf, P, u, cache, Vl in zip(self.leaves, self.params, inputs, caches, Vs):
            Rins.append(Ru)
            Ru, rc = leaf.param_rop_forward(cache, P, u, Ru, Vl, be)
            rcaches.append(rc)
        # Ru : (n, k, m) = J_n v, the output tangent of every direction
        if kind == "fisher":
            g1 = loss._d1(F, T, xp)
            Rdl = w * xp.sum(g1[:, None, :] * Ru, axis=-1)[:, :, None] * g1[:, None, :]
        else:
            Rdl = w * loss._hvp(F, T, Ru, xp)
        out = [None] * len(self.leaves)
        for i in range(len(self.leaves) - 1, -1, -1):
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
                need_Rdlu=i > 0,
            )
        return self.join(out, (V.shape[0],))


def _check_batch_size(batch_size, n):
    if batch_size is None:
        return n
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return int(batch_size)


class _Problem:
    """Network, data, loss and mini-batches of one curvature computation."""

    def __init__(self, net, x, y, loss, batch_size=None, backend=None, cache_forward=None):
        self.loss: Loss = get_loss(loss)
        self.B = B = _Bound(net, x, backend)
        namespace_of(y, "y")
        N = x.shape[0]
        if y.ndim < 1 or y.shape[0] != N:
            raise ValueError(f"y must have {N} rows (one per example), got shape {tuple(y.shape)}")
        self.N = N
        self.m = net.out_features
        self.w = self.loss.weight(N)
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
        return self.B.layout.size

    def per_example(self, chunk):
        """``(n_b, P)`` rows :math:`\\nabla_\\theta\\ell_n` of one mini-batch, call namespace."""
        xb, Tb = self.chunks[chunk]
        return self.B.grad_pass(xb, Tb, self.loss, 1.0, True)[1]

    def apply(self, Vt, kind):
        """Sum over mini-batches of the products with ``Vt : (k, P)`` (call namespace)."""
        w = 1.0 / self.N if kind == "fisher" else self.w
        out = None
        for c, (xb, Tb) in enumerate(self.chunks):
            prep = self._fwd.get((c, kind))
            if prep is None and self.cache_forward:
                prep = self._fwd[(c, kind)] = self.B.prepare(xb, Tb, self.loss, w, kind)
            r = self.B.rop_pass(xb, Tb, self.loss, w, Vt, kind, prep)
            out = r if out is None else out + r
        return out


# --------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------


class LinearOperatorBase:
    """A symmetric linear operator on :math:`\\mathbb{R}^P`, applied to arrays of one library.

    Subclasses implement ``_matmat(V : (P, k)) -> (P, k)``. Attributes
    ``xp`` (namespace), ``dtype`` and ``device`` are those of the arrays
    the operator accepts and returns.
    """

    def __init__(self, size: int, xp, dtype, device) -> None:
        self.size = int(size)
        self.xp, self.dtype, self.device = xp, dtype, device
        self._be = backend_for(xp)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.size}, dtype={self.dtype})"

    # -- application -------------------------------------------------------
    def matmat(self, V):
        """``A @ V`` for ``V : (P, k)``."""
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(f"V must have shape ({self.size}, k), got {tuple(V.shape)}")
        return self._matmat(V)

    def matvec(self, v):
        """``A @ v`` for ``v : (P,)``."""
        if v.ndim != 1 or v.shape[0] != self.size:
            raise ValueError(f"v must have shape ({self.size},), got {tuple(v.shape)}")
        return self._matmat(v[:, None])[:, 0]

    def __matmul__(self, V):
        return self.matvec(V) if V.ndim == 1 else self.matmat(V)

    def quadratic_form(self, v):
        r""":math:`v^\top A v` for ``v : (P,)`` (0-d array) or ``(P, k)`` (one per column, ``(k,)``)."""
        one = v.ndim == 1
        V = v[:, None] if one else v
        out = self.xp.sum(V * self.matmat(V), axis=0)
        return out[0] if one else out

    def _matmat(self, V):  # pragma: no cover - abstract
        raise NotImplementedError

    def _default_block(self) -> int:
        return min(self.size, 64)

    def to_dense(self, *, block_size: int | None = None):
        """The ``(P, P)`` matrix, assembled from products with blocks of unit vectors."""
        xp, P = self.xp, self.size
        bs = self._default_block() if block_size is None else _check_batch_size(block_size, P)
        cols = []
        for j in range(0, P, bs):
            k = min(bs, P - j)
            E = xp.eye(P, k, k=-j, dtype=self.dtype, device=self.device)
            cols.append(self._matmat(E))
        return cols[0] if len(cols) == 1 else xp.concat(cols, axis=1)

    # -- host helpers (spectra) --------------------------------------------
    def asarray(self, a):
        """A NumPy array as an array the operator accepts."""
        return self._be.convert(np.asarray(a), xp=self.xp, dtype=self.dtype, device=self.device)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(self._be.to_numpy(a))

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` acting on NumPy arrays (host round trips)."""
        from scipy.sparse.linalg import LinearOperator

        def mm(V):
            V = np.asarray(V)
            one = V.ndim == 1
            out = self.to_numpy(self._matmat(self.asarray(V[:, None] if one else V)))
            return out[:, 0] if one else out

        return LinearOperator(
            self.shape,
            matvec=mm,
            matmat=mm,
            rmatvec=mm,
            rmatmat=mm,
            dtype=np.dtype(str(self.dtype).split(".")[-1]),
        )


class DenseOperator(LinearOperatorBase):
    """A dense symmetric matrix ``(P, P)`` as an operator."""

    def __init__(self, A) -> None:
        xp = namespace_of(A, "A")
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
        super().__init__(A.shape[0], xp, A.dtype, aac.device(A))
        self.A = A

    def _matmat(self, V):
        return self.A @ V

    def to_dense(self, *, block_size=None):
        return self.A


def aslinearoperator(A) -> LinearOperatorBase:
    """An operator from an operator (returned as is) or a dense symmetric matrix."""
    if isinstance(A, LinearOperatorBase):
        return A
    return DenseOperator(A)


class CurvatureOperator(LinearOperatorBase):
    """Exact Hessian, Gauss–Newton or empirical Fisher of a training loss, as an operator.

    Built by :func:`hessian_operator`, :func:`ggn_operator`,
    :func:`empirical_fisher_operator`. Products are exact (no sampling):
    mini-batches only bound memory, the sum over them is the full-data
    matrix. ``block_size`` directions are pushed through the network per
    pass (default from ``memory_budget`` bytes, see :func:`hessian`).
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
    if (
        not isinstance(budget, (int, float, np.integer, np.floating))
        or isinstance(budget, bool)
        or budget <= 0
    ):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    itemsize = np.dtype(str(problem.B.dtype).split(".")[-1]).itemsize
    feat = sum(leaf.in_features + 2 * leaf.out_features for leaf in problem.B.leaves)
    per_dir = itemsize * (4 * problem.batch_size * feat + 4 * P)
    return int(max(1, min(P, budget // per_dir)))


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------


def value_and_gradient(net, x, y, loss, *, batch_size: int | None = None, backend: str | None = None):
    r"""Training loss :math:`C` (0-d) and its gradient :math:`\nabla_\theta C` ``(P,)``.

    Parameters
    ----------
    net : NN or Layer
    x : array (N, d)
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str
        ``"mse"``, ``"cross_entropy"`` or a :class:`Loss` instance.
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    backend : str, optional
        Force a backend (results return in ``x``'s library).
    """
    pb = _Problem(net, x, y, loss, batch_size, backend)
    B, xp = pb.B, pb.B.xp
    val = grad = None
    for xb, Tb in pb.chunks:
        v, g = B.grad_pass(xb, Tb, pb.loss, pb.w, False)
        v = xp.sum(v)
        val, grad = (v, g) if val is None else (val + v, grad + g)
    return B.to_user(pb.w * val), B.to_user(grad)


def gradient(net, x, y, loss, *, batch_size: int | None = None, backend: str | None = None):
    r""":math:`\nabla_\theta C`, shape ``(P,)``; see :func:`value_and_gradient`."""
    return value_and_gradient(net, x, y, loss, batch_size=batch_size, backend=backend)[1]


def per_example_gradients(net, x, y, loss, *, backend: str | None = None):
    r"""Per-example gradients :math:`g_n = \nabla_\theta \ell(f(x_n;\theta), y_n)`, shape ``(N, P)``.

    One batched pass (no loop over examples). Rows are gradients of the
    *unreduced* per-example loss: :math:`\nabla C = w \sum_n g_n` (the mean of
    the rows for ``reduction="mean"``, their sum for ``"sum"``).
    """
    pb = _Problem(net, x, y, loss, None, backend)
    return pb.B.to_user(pb.per_example(0))


def hessian_operator(
    net,
    x,
    y,
    loss,
    *,
    batch_size=None,
    block_size=None,
    memory_budget=None,
    backend=None,
    cache_forward=None,
) -> CurvatureOperator:
    r"""The exact Hessian :math:`H = \nabla_\theta^2 C` as an operator (Hessian-vector products).

    Each product is one forward R-pass and one backward R-pass over the
    data, for ``block_size`` directions at a time, after one forward pass.
    ``cache_forward`` (default: True without mini-batches, False with
    them) keeps each mini-batch's forward pass between products.
    The operator is a snapshot: it holds the parameters and data of its
    construction.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward), "hessian", block_size, memory_budget
    )


def ggn_operator(
    net,
    x,
    y,
    loss,
    *,
    batch_size=None,
    block_size=None,
    memory_budget=None,
    backend=None,
    cache_forward=None,
) -> CurvatureOperator:
    r"""The generalised Gauss–Newton matrix :math:`w \sum_n J_n^\top \nabla_f^2 \ell_n J_n` as an operator.

    For softmax cross-entropy this is the Fisher information of the model's
    predictive distribution (the "true" Fisher); for half-MSE it is
    :math:`w\sum_n J_n^\top J_n`.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward), "ggn", block_size, memory_budget
    )


def empirical_fisher_operator(
    net,
    x,
    y,
    loss,
    *,
    batch_size=None,
    block_size=None,
    memory_budget=None,
    backend=None,
    cache_forward=None,
) -> CurvatureOperator:
    r"""The outer-product (empirical Fisher) matrix :math:`G = \frac1N \sum_n g_n g_n^\top`.

    Applied without forming ``(N, P)``: :math:`Gv = \frac1N\sum_n (g_n\cdot v)\, g_n`
    where :math:`g_n\cdot v = \nabla_f\ell_n \cdot J_n v` comes from a forward
    R-pass and the weighted sum of gradients from one backward pass.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward), "fisher", block_size, memory_budget
    )


def hvp(net, x, y, loss, v, *, batch_size=None, block_size=None, memory_budget=None, backend=None):
    r""":math:`Hv` for ``v : (P,)`` or ``(P, k)`` (exact Hessian of the training loss)."""
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
        )
        @ v
    )


def ggn_vp(net, x, y, loss, v, *, batch_size=None, block_size=None, memory_budget=None, backend=None):
    r"""Generalised Gauss–Newton product for ``v : (P,)`` or ``(P, k)``."""
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
        )
        @ v
    )


def empirical_fisher_vp(
    net, x, y, loss, v, *, batch_size=None, block_size=None, memory_budget=None, backend=None
):
    r""":math:`Gv` with :math:`G = \frac1N\sum_n g_n g_n^\top`, for ``v : (P,)`` or ``(P, k)``."""
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
        )
        @ v
    )


def hessian(net, x, y, loss, *, batch_size=None, block_size=None, memory_budget=None, backend=None):
    r"""The dense ``(P, P)`` Hessian of the training loss, from blocks of exact Hessian-vector products.

    Columns are computed ``block_size`` at a time (default: as many as fit
    ``memory_budget`` bytes of work arrays, 256 MiB unless given, by the
    estimate ``itemsize·(4·batch·Σ_layers(p + 2q) + 4P)`` per column), and
    the data in mini-batches of ``batch_size`` examples whose contributions
    are summed (with the global factor :math:`w`, so the result is the
    Hessian of the full-data loss). Not symmetrised: it is symmetric to
    rounding because every column is exact.
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
    ).to_dense()


def ggn(net, x, y, loss, *, batch_size=None, block_size=None, memory_budget=None, backend=None):
    """The dense generalised Gauss–Newton matrix ``(P, P)``; see :func:`hessian`."""
    return ggn_operator(
        net,
        x,
        y,
        loss,
        batch_size=batch_size,
        block_size=block_size,
        memory_budget=memory_budget,
        backend=backend,
    ).to_dense()


def empirical_fisher(net, x, y, loss, *, backend=None):
    r"""Dense :math:`G = \frac1N \sum_n g_n g_n^\top = \frac1N A^\top A`, ``A`` the per-example gradients."""
    pb = _Problem(net, x, y, loss, None, backend)
    A = pb.per_example(0)
    xp = pb.B.xp
    return pb.B.to_user((xp.matrix_transpose(A) @ A) / pb.N)

r"""Collocation points held by Dask: a PINN problem's sums over points as tree reductions.

Every quantity of a :class:`~hessquik_core.pinn.Problem` is a sum over its
points or a stack of per-point rows. With the points of term :math:`t` in
chunks :math:`c` (rows :math:`\rho_c`, Jacobian rows :math:`J_c`),

.. math::
    L = \tfrac12\sum_c\|\rho_c\|^2,\quad
    \nabla L = \sum_c J_c^\top\rho_c,\quad
    G = J^\top J = \sum_c J_c^\top J_c,\quad
    J^\top w = \sum_c J_c^\top w_c,\quad
    Gv = \sum_c J_c^\top(J_c v),

while :math:`\rho`, :math:`Jv` and :math:`J` stack the chunks' rows and the
kernel :math:`JJ^\top` has the blocks :math:`J_aJ_b^\top`. Each chunk's term is
one task running the in-memory :class:`~hessquik_core.pinn.Problem` on the
chunk, with the term's weight set to :math:`w_t n_c/N_t` so that its scale
:math:`\sqrt{w_t/N_t}` is the whole term's; the terms are added with the
tree of :mod:`hessquik_core.dask` (``_graph.tree_sum``, fan-in 8) that the
curvature functions use on Dask data; ``solver="dense"`` reduces the chunks'
QR R-factors of :math:`[J_c\ \rho_c]` in the same tree (TSQR). The network travels
as one snapshot of its parameters per computation (one graph key).

What comes back: sums of :math:`P` entries or :math:`P\times P` (the
gradient, :math:`J^\top w`, the Gramian, Gauss–Newton products) are computed
and returned as NumPy arrays; rows (:math:`\rho`, :math:`Jv`) are persisted
Dask arrays chunked like the points (computed, kept where the scheduler keeps
them); :math:`J` and the kernel are lazy Dask arrays.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat as aac
import numpy as np

from .._dask_hook import is_dask
from ..curvature.layout import flatten_parameters, parameter_layout
from ..curvature.operators import LinearOperatorBase
from ..pinn import _problem_higher as hi
from ..pinn.problem import Problem, Residual
from ._graph import Shared, da, graph, meta_like, snapshot, to_numpy, token, tree_sum
from ._pinn_chunks import Term, chunk, chunk_bytes, probe, stack_r, tsqr_step

__all__ = ["DaskGaussNewtonOperator", "DaskProblem"]

_XP = aac.array_namespace(np.empty(0))

#: the optimizers that run on a DaskProblem: they need only the loss, the gradient and J v / Jᵀ w
SUPPORTED = "GaussNewton / ENGD with solver='dense' (TSQR) or 'cg', Adam, LBFGS"


class DaskProblem(Problem):
    r"""A :class:`~hessquik_core.pinn.Problem` whose collocation points are Dask arrays.

    Built by ``hq.pinn.Problem(net, residuals)`` itself when a term's points are
    a Dask array (``(n, d)``, chunked along the points only, NumPy chunks);
    in-memory terms of the same problem (e.g. a few boundary points) become
    one-chunk Dask arrays. The results equal the in-memory problem's to rounding:

    * ``loss()``, ``loss_at(theta)``: floats, one tree reduction of
      :math:`\frac12\|\rho_c\|^2`;
    * ``gradient()``, ``vjp(w)`` (``w`` NumPy or Dask ``(N,)``), ``gramian()``:
      NumPy ``(P,)`` / ``(P, P)``, tree reductions of the chunks'
      :math:`J_c^\top\rho_c`, :math:`J_c^\top w_c`, :math:`J_c^\top J_c`;
    * ``residual_vector()``, ``jvp(v)``: ``(N,)`` Dask arrays chunked like the
      points, persisted (computed once, kept by the scheduler), so an iterative
      solver does not recompute them; ``residuals()``: lazy ``(n_t,)`` by name;
    * ``jacobian()``: lazy ``(N, P)``, rows chunked like the points;
      ``kernel()``: lazy ``(N, N)`` with blocks :math:`J_aJ_b^\top` (dask's
      blockwise product of ``jacobian()`` with its transpose; :math:`N^2`
      numbers when computed: use ``gramian()`` (:math:`P^2`) when :math:`N \gg P`);
    * ``ggn_operator()``: :class:`DaskGaussNewtonOperator`, one tree reduction per product.

    Optimizers: ``GaussNewton`` and ``ENGD`` with ``solver="dense"`` (the thin
    SVD of :math:`J` through the TSQR factor of :meth:`tsqr_factor`: the same
    least-squares step as in memory, never :math:`J^\top J`; memory checked up
    front by :meth:`tsqr_bytes`) or ``solver="cg"`` (CGLS through ``jvp`` /
    ``vjp``), ``Adam``, ``LBFGS``. ``solver="kernel"`` (the QR of the
    :math:`P\times N` matrix :math:`J^\top`, every row of :math:`J` in one process) and
    ``KFAC`` (each term's Kronecker factors from its in-memory sweep) are refused
    with a ``ValueError`` naming these.
    """

    #: the GaussNewton solvers that run on distributed points (see pinn.optim)
    solvers = ("dense", "cg")

    def __init__(self, net: Any, residuals: Any) -> None:
        if not (hasattr(net, "named_parameters") and hasattr(net, "in_features")):
            raise TypeError(f"net must be a hessquik_core network or layer, got {type(net).__name__}")
        if isinstance(residuals, Residual):
            residuals = [residuals]
        residuals = list(residuals)
        if not residuals or not all(isinstance(t, Residual) for t in residuals):
            raise TypeError("residuals must be a non-empty sequence of hessquik_core.pinn.Residual")
        d = int(net.in_features)
        first = next(t.points for t in residuals if is_dask(t.points))
        self.dtype = np.dtype(first.dtype)
        names: list[str] = []
        self._arrays: list[tuple[Any, Any]] = []  # (points, data) as dask arrays, per term
        for i, t in enumerate(residuals):
            p, data = t.points, t.data
            if not is_dask(p):
                if not isinstance(p, np.ndarray):
                    raise TypeError(
                        f"residual {i} has points of {type(p).__module__}; with dask points elsewhere in the "
                        f"problem every term's points must be dask or NumPy arrays"
                    )
                p = da.from_array(p, chunks=p.shape)
                if data is not None:
                    data = da.from_array(np.asarray(data), chunks=np.shape(data))
            if np.dtype(p.dtype) != self.dtype:
                raise TypeError(
                    f"residual {i} has points of dtype {p.dtype}, the first dask term {self.dtype}"
                )
            if p.shape[1] != d:
                raise ValueError(
                    f"residual {t.name or i!r} has points of shape {tuple(p.shape)}, expected (n, {d}) "
                    f"(the network's input dimension)"
                )
            names.append(t.name if t.name is not None else f"term{i}")
            self._arrays.append((p, data))
        if len(set(names)) != len(names):
            raise ValueError(f"residual names must be unique, got {names}")
        for t in residuals:  # a higher-order quantity's Jacobian rule, refused here by layer name
            hi.check_supported(net, t.needs, t.taylor)
        self.xp, self.device = _XP, "cpu"
        self.net, self.terms, self.names = net, residuals, tuple(names)
        self.layout = parameter_layout(net)
        self.P, self.N = self.layout.size, sum(t.n for t in residuals)
        self.m = int(net.out_features)
        self._specs = [Term(t, name) for t, name in zip(residuals, names)]
        self._chunks = tuple(c for p, _ in self._arrays for c in p.chunks[0])
        self._theta: Any = None
        self._shared: Shared | None = None
        self._rho: Any = None
        self._R: Any = None
        # one example per term on the client: bad residual functions fail here, before the cluster works
        self._probe()

    def __repr__(self) -> str:
        return f"DaskProblem(P={self.P}, N={self.N}, terms={list(self.names)}, chunks={len(self._chunks)})"

    def check_optimizer(self, optimizer: Any, max_memory: float | None) -> None:
        """Refuse an optimizer or solver that needs all of :math:`J` in one process (``ValueError``),
        and ``solver="dense"`` over ``max_memory`` (:class:`~hessquik_core.MemoryBudgetError`)."""
        from ..pinn import LBFGS, Adam, GaussNewton

        if isinstance(optimizer, GaussNewton):
            solver = getattr(optimizer, "solver", None)  # None: called before the solver is set
            if solver == "dense":
                self._check_tsqr_memory(max_memory)
            if solver is None or solver in self.solvers:
                return
            what = f"{type(optimizer).__name__}(solver={solver!r})"
        elif isinstance(optimizer, (Adam, LBFGS)):
            return
        else:
            what = type(optimizer).__name__
        raise ValueError(
            f"{what} does not run on collocation points held by Dask (it needs all of J, or each "
            f"term's Kronecker factors, in one process; the kernel form factors the N x N JJᵀ); "
            f"what does: {SUPPORTED}"
        )

    def tsqr_bytes(self) -> float:
        r"""Peak bytes of ``solver="dense"``: the largest chunk task (its quantities' Jacobians,
        :math:`J_c`, :math:`[J_c\ \rho_c]` and its R) and the client's R and SVD (:math:`\approx 4(P+1)^2`)."""
        P = self.P
        task = max(chunk_bytes(t.needs, c, int(self.net.in_features), self.m, P) for t, c in self._sizes())
        return float(self.dtype.itemsize * (task + 4 * (P + 1) ** 2))

    def _sizes(self) -> Any:
        return ((t, c) for t, (p, _) in zip(self.terms, self._arrays) for c in p.chunks[0])

    def _check_tsqr_memory(self, max_memory: float | None) -> None:
        from ..backends import backend_for
        from ..engine.plan import MemoryBudgetError

        need = self.tsqr_bytes()
        budget = 0.5 * float(backend_for(_XP).available_memory("cpu")) if max_memory is None else max_memory
        if need > budget:
            raise MemoryBudgetError(
                f"solver='dense' on dask points needs about {need / 2**20:.1f} MiB (the largest chunk's "
                f"[J_c rho_c] and the (P+1) x (P+1) R with P = {self.P}), over the budget of "
                f"{budget / 2**20:.1f} MiB; use solver='cg' (matrix-free, O(N + P) memory) or smaller chunks"
            )

    def tsqr_factor(self) -> Any:
        r""":math:`R` of :math:`[J\ \rho] = Q R` ``(k, P + 1)``, :math:`k = \min(N, P + 1)`, by TSQR (cached per θ).

        Each chunk task returns the R-factor of its rows :math:`[J_c\ \rho_c]`; the tree
        stacks up to 8 of them and keeps the R of their QR, which is the R of all their rows
        (:math:`[A; B] = \mathrm{diag}(Q_A, Q_B)[R_A; R_B]`). So :math:`R_{:, :P}` is the R of :math:`J`
        and :math:`c = R_{:, P} = Q^\top\rho` — the least-squares data without :math:`J` in one
        process and without :math:`J^\top J`.
        """
        self._fresh()
        if self._R is None:
            k = min(self.N, self.P + 1)
            self._R = self._sum("tsqr", "tsqr", (), (k, self.P + 1), combine=stack_r)
        return self._R

    def tsqr_direction(self, damping: float, rcond: float) -> Any:
        r"""The Gauss–Newton step of ``solver="dense"`` from :meth:`tsqr_factor`.

        With :math:`[J\ \rho] = Q[R\ c]` and the SVD :math:`R = \tilde U\Sigma V^\top`,
        :math:`J = (Q\tilde U)\Sigma V^\top` is the thin SVD of :math:`J`, so the in-memory
        step is :math:`d = V\,\mathrm{diag}(f(\sigma))\,\tilde U^\top c`, and
        :math:`\rho^\top Jd = c^\top Rd`, :math:`\|Jd\|^2 = \|Rd\|^2` (:math:`Q` has orthonormal columns).
        """
        return tsqr_step(self.tsqr_factor(), self.P, damping, rcond)

    def _probe(self) -> None:
        for spec, (p, data) in zip(self._specs, self._arrays):
            probe(self.net, spec, p, data)

    # -- parameters and the snapshot every computation ships -------------------------
    def parameters(self) -> Any:
        """:math:`\\theta`, a new ``(P,)`` NumPy array of the points' dtype."""
        return flatten_parameters(self.net, like=np.empty(0, dtype=self.dtype))

    def _fresh(self) -> None:
        theta = self.parameters()
        if self._theta is None or not bool(np.all(theta == self._theta)):
            self._theta, self._rho, self._R = theta, None, None
            self._shared = Shared(snapshot(self.net), "numpy", str(self.dtype), {"terms": self._specs})

    def _net(self) -> Shared:
        self._fresh()
        assert self._shared is not None
        return self._shared

    # -- the graph ----------------------------------------------------------------------
    def _tasks(self, name: str, method: str, args: tuple, w: Any, shared: Any) -> tuple[dict, list, list]:
        """One task per chunk of every term: ``_chunk(x_c, data_c, net, term, method, *args[, w_c])``.

        ``shared``: the network snapshot to ship (default: the current parameters').
        """
        skey = name + "-net"
        layer: dict[Any, Any] = {skey: self._net() if shared is None else shared}
        keys: list[Any] = []
        deps: list[Any] = []
        for ti, (p, data) in enumerate(self._arrays):
            deps += [p] + ([] if data is None else [data])
            for c in range(len(p.chunks[0])):
                k = (name + "-chunk", len(keys))
                dref = None if data is None else (data.name, c, *((0,) * (data.ndim - 1)))
                extra = () if w is None else ((w.name, len(keys)),)
                layer[k] = (chunk, (p.name, c, 0), dref, skey, ti, c, method, *args, *extra)
                keys.append(k)
        if w is not None:
            deps.append(w)
        return layer, keys, deps

    def _sum(
        self,
        prefix: str,
        method: str,
        args: tuple,
        shape: tuple,
        w: Any = None,
        shared: Any = None,
        combine: Any = None,
    ) -> Any:
        """``Σ_c chunk_c.<method>(*args)`` computed (a tree of fan-in 8), NumPy of ``shape``.

        ``combine``: another associative reduction than the sum (:func:`_stack_r`).
        """
        name = token("pinn-" + prefix)
        layer, keys, deps = self._tasks(name, method, args, w, shared)
        root = tree_sum(layer, keys, name, combine)
        out = f"{name}-total"
        key = (out, *((0,) * len(shape)))
        hlg = graph(out, {key: root}, deps, extra_layers={name: (layer, {c.name for c in deps})})
        total = da.Array(
            hlg, out, chunks=tuple((s,) for s in shape), meta=np.empty((0,) * len(shape), self.dtype)
        )
        return np.asarray(total.compute())

    def _rows(self, prefix: str, method: str, args: tuple, trailing: tuple = ()) -> Any:
        """The chunks' row blocks ``(n_c, *trailing)`` stacked: a lazy ``(N, *trailing)`` dask array."""
        name = token("pinn-" + prefix)
        layer, keys, deps = self._tasks(name, method, args, None, None)
        out = name + "-rows"
        own = {(out, j, *((0,) * len(trailing))): k for j, k in enumerate(keys)}
        hlg = graph(out, own, deps, extra_layers={name: (layer, {c.name for c in deps})})
        chunks = (self._chunks, *((s,) for s in trailing))
        return da.Array(hlg, out, chunks=chunks, meta=meta_like("numpy", 1 + len(trailing), self.dtype))

    def _vector(self, v: Any, size: int, what: str) -> Any:
        if is_dask(v):
            if tuple(v.shape) != (size,):
                raise ValueError(f"{what} must have shape ({size},), got {tuple(v.shape)}")
            if np.dtype(v.dtype) != self.dtype:
                raise TypeError(f"{what} must have the points' dtype {self.dtype}, got {v.dtype}")
            return v
        return super()._vector(v, size, what)

    # -- the problem's quantities -----------------------------------------------------
    def residuals(self) -> dict[str, Any]:
        """The raw residuals :math:`r^{(t)}` by term name: lazy ``(n_t,)`` dask arrays."""
        r = self._rows("residuals", "r", ())
        out, start = {}, 0
        for name, t in zip(self.names, self.terms):
            out[name] = r[start : start + t.n]
            start += t.n
        return out

    def residual_vector(self) -> Any:
        """:math:`\\rho` ``(N,)``: a persisted dask array chunked like the points (kept per parameters)."""
        self._fresh()
        if self._rho is None:
            self._rho = self._rows("rho", "rho", ()).persist()
        return self._rho

    def loss(self) -> float:
        r""":math:`L = \frac12\sum_c\|\rho_c\|^2` (one tree reduction; non-finite residuals raise)."""
        return float(self._sum("loss", "loss", (), ()))

    def loss_at(self, theta: Any, *, restore: bool = True) -> float:
        """:math:`L(\\theta)` at other parameters (``inf`` if not finite), one tree reduction."""
        old = self.parameters() if restore else None
        self.set_parameters(theta)
        try:
            total = float(self._sum("loss-at", "loss_unchecked", (), ()))
        finally:
            if old is not None:
                self.set_parameters(old)
        return total if math.isfinite(total) else math.inf

    def gradient(self) -> Any:
        """:math:`\\nabla L = \\sum_c J_c^\\top\\rho_c`, NumPy ``(P,)``."""
        return self._sum("gradient", "gradient", (), (self.P,))

    def jacobian(self) -> Any:
        """:math:`J` ``(N, P)``: a lazy dask array, rows chunked like the points."""
        return self._rows("jacobian", "jacobian", (), (self.P,))

    def jvp(self, v: Any) -> Any:
        """:math:`Jv` ``(N,)`` (``v`` NumPy ``(P,)``): a persisted dask array chunked like the points."""
        v = np.asarray(self._vector(v, self.P, "v"))
        return self._rows("jvp", "jvp", (v,)).persist()

    def vjp(self, w: Any) -> Any:
        """:math:`J^\\top w = \\sum_c J_c^\\top w_c`, NumPy ``(P,)`` (``w`` NumPy or dask ``(N,)``)."""
        w = self._vector(w, self.N, "w")
        w = w.rechunk((self._chunks,)) if is_dask(w) else da.from_array(w, chunks=(self._chunks,))
        return self._sum("vjp", "vjp", (), (self.P,), w=w)

    def gramian(self) -> Any:
        r""":math:`G = \sum_c J_c^\top J_c`, NumPy ``(P, P)`` (one tree reduction; :math:`J` is never gathered)."""
        return self._sum("gramian", "gramian", (), (self.P, self.P))

    def kernel(self) -> Any:
        """:math:`K = JJ^\\top` ``(N, N)``: lazy, blocks :math:`J_aJ_b^\\top` chunked like the points on both axes.

        Computing it holds :math:`N^2` numbers; the Gramian (``P × P``) is the small one when :math:`N > P`.
        """
        J = self.jacobian()
        return J @ J.T

    def ggn_operator(self, *, matrix_free: bool = True) -> Any:
        """:math:`G = J^\\top J` as a :class:`DaskGaussNewtonOperator` (one tree reduction per product)."""
        return DaskGaussNewtonOperator(self, matrix_free=matrix_free)

    def hessian_operator(self, *, exact: bool | None = None, eps: float | None = None) -> Any:
        r"""The loss Hessian :math:`\nabla^2 L = \sum_c \nabla^2 L_c` as a :class:`DaskHessianOperator`.

        The loss is a sum over chunks (each chunk's rows carry its term's scale), so its
        Hessian is the sum of the chunks' in-memory Hessians: each task applies
        ``Problem.hessian_operator(exact=exact, eps=eps)`` of its chunk, the tree adds them.
        ``exact`` as in memory: exact where every layer and quantity has its rule (else refused,
        checked here on the client), central differences of each chunk's gradient with ``False``.
        """
        return DaskHessianOperator(self, exact=exact, eps=eps)


class DaskGaussNewtonOperator(LinearOperatorBase):
    r"""The Gauss–Newton matrix :math:`G = \sum_c J_c^\top J_c` of a :class:`DaskProblem`, as an operator.

    ``op @ V`` (NumPy ``(P, k)``) is one distributed computation: each chunk's
    task applies :math:`J_c^\top(J_cV)` (``matrix_free=True``: a forward and a
    backward sweep per column; ``False``: from the chunk's dense :math:`J_c`),
    the chunks' results are added in a tree. The operator is taken at the
    parameters it was built at (their snapshot is shipped with every product),
    so the spectral tools of :mod:`hessquik_core.curvature` apply.
    """

    def __init__(self, problem: DaskProblem, *, matrix_free: bool = True) -> None:
        super().__init__(problem.P, problem.xp, problem.dtype, problem.device)
        self.problem, self.matrix_free = problem, bool(matrix_free)
        self.theta = problem.parameters()
        self._shared = problem._net()

    def _matmat(self, V: Any) -> Any:
        V = np.asarray(to_numpy(V), dtype=self.problem.dtype)
        shape = (self.problem.P, int(V.shape[1]))
        return self.problem._sum("ggn", "ggn", (V, self.matrix_free), shape, shared=self._shared)


class DaskHessianOperator(DaskGaussNewtonOperator):
    r"""The loss Hessian :math:`\sum_c \nabla^2 L_c` of a :class:`DaskProblem`, as an operator.

    ``op @ V`` is one distributed computation: each chunk's task applies its in-memory
    :class:`~hessquik_core.pinn.operators.LossHessianOperator` (exact, AD-free, or
    central differences with ``exact=False``) and the tree adds the results; taken at
    the parameters it was built at. ``method`` says which, as in memory.
    """

    def __init__(self, problem: DaskProblem, *, exact: bool | None = None, eps: float | None = None) -> None:
        from ..pinn.operators import LossHessianOperator

        super().__init__(problem)
        # the in-memory rules and refusals, decided once on the client (a probe chunk of each term)
        probe_op = LossHessianOperator(
            Problem(problem.net, [_probe_term(t) for t in problem.terms]), exact=exact, eps=eps
        )
        self.method, self.eps = probe_op.method, eps
        self.exact = probe_op.method == "exact"

    def _matmat(self, V: Any) -> Any:
        V = np.asarray(to_numpy(V), dtype=self.problem.dtype)
        shape = (self.problem.P, int(V.shape[1]))
        return self.problem._sum("hessian", "hessian", (V, self.exact, self.eps), shape, shared=self._shared)


def _probe_term(t: Residual) -> Residual:
    """A one-point, in-memory copy of residual term ``t`` (for client-side checks)."""
    x = np.asarray(t.points[:1])
    data = None if t.data is None else np.asarray(t.data[:1])
    return Residual(x, t.point_fn, t.needs, name=t.name, weights=t.weights, data=data, **dict(t.taylor))

r"""Sweeps for high-dimensional inputs: the Laplacian and the divergence at a cost
independent of ``d`` beyond the first (and last) layer's products.

Both start from a first layer :math:`u_1 = \sigma_1(x M_1 + b_1)`,
``M_1 : (d, q)``, ``d > q``: a layer that declares this plain affine structure
(:meth:`~hessquik_core.layers.Layer.affine_structure`, ``h = 1``, no identity
path); the divergence also needs a plain affine last layer.

**Laplacian.** A forward Laplacian sweep only sees its tangents ``t_i`` (``i =
1..d``, the rows of :math:`\partial u_1/\partial x = M_1 D_1`) through
:math:`\sum_i t_i^\top t_i` at every layer, and a linear map preserves that:
any ``R`` with :math:`R^\top R = M_1^\top M_1` gives the same Laplacians with
``q`` tangents (the rows of :math:`R D_1`) instead of ``d``. With the
batch-independent Gram matrix :math:`G = M_1^\top M_1` (``d·q²`` flops once,
memoised for read-only weights) and its root :math:`R = \Lambda^{1/2} U^\top`
(:math:`G = U \Lambda U^\top`, ``q³``), the sweep costs the forward pass
plus ``2 n q \sum_{\ell > 1} p_\ell q_\ell`` — nothing of size ``d`` per example.

**Divergence** of :math:`f: \mathbb{R}^d \to \mathbb{R}^d` whose last layer is
:math:`\sigma_L(u M_L + b_L)`: with :math:`T = D_1 J_{\text{mid}}` (``q × w``
per example, the Jacobian of the interior layers pushed forward from the
``q`` pre-activation coordinates of the first layer),

.. math::
    \mathrm{tr}\,\frac{\partial f}{\partial x} = \mathrm{tr}(M_1 T M_L D_L)
    = \sum_a (D_L)_{aa} \sum_{j,k} (M_1)_{aj} T_{jk} (M_L)_{ka}.

A linear last layer (:math:`D_L = I`) makes it :math:`\langle T, (M_L M_1)^\top\rangle`,
with the batch-independent ``w × q`` product :math:`M_L M_1`; otherwise
``T M_L`` is contracted with :math:`M_1^\top` in column blocks of ``d``
(``2 n q w d`` flops, never the ``(n, d, d)`` Jacobian).
"""

from __future__ import annotations

from ..backends.base import Ops
from ..carry import Request, Tangents
from ..rules.affine import BLOCK_BYTES, evaluate, gram, memo
from ..rules.contractions import device
from .cost import RouteCost, _fwd_cost, _value_cost
from .result import Result

#: the routes, as ``CallContext.route``
LAPLACIAN = "gram-laplacian"
DIVERGENCE = "divergence"


def plain_affine(leaf) -> bool:
    r"""Does ``leaf`` declare the plain affine structure :math:`\sigma(uM + b)`?"""
    st = leaf.affine_structure()
    return st is not None and st.plain


def _affine_eval(leaf, u, P, order, ops: Ops):
    """``(σ(z), σ'(z), σ''(z), M, linear)`` of a plain affine leaf at ``z = uM + b``, from
    its declared structure (the rule :func:`~hessquik_core.rules.affine.evaluate`)."""
    st = leaf.affine_structure(P)
    s0, s1, s2 = evaluate(u, st.M, st.b, st.act, order, ops.xp)
    return s0, s1, s2, st.M, st.linear


def first_narrows(ctx, leaves) -> bool:
    """Does a high-dimensional route fit the request's shape: ``mode="auto"`` (explicit
    modes run the classic sweeps), no directions, and a plain affine first layer
    narrower than the input (``d > q``)?"""
    if ctx.mode != "auto" or ctx.V is not None or not leaves or not plain_affine(leaves[0]):
        return False
    d, q = leaves[0].cost_shapes[0]
    return d > q


def _dims(leaves):
    return tuple(s for leaf in leaves for s in leaf.cost_shapes)


def laplacian_cost(ctx, leaves, n: int, training=None) -> RouteCost:
    """Estimate of the Gram-root Laplacian for ``n`` examples. ``training``
    (:func:`~hessquik_core.engine.routes.analytic_step.training_kind`): the call is a
    recorded training step, whose backward pass over this route's taped operations
    is priced as the generic sweep's (``TRAINING_FACTOR["taped"]``)."""
    dims = _dims(leaves)
    n1 = max(n, 1)
    rc = _route_cost(dims, n1, dims[0][1], ctx.itemsize, ctx.be.fuses, lap=True, last_d=0)
    if training is not None:
        from .cost import TRAINING_FACTOR

        rc.step_factor = TRAINING_FACTOR["taped"]
    return _scaled(rc, n, n1)


def divergence_cost(ctx, leaves, n: int) -> RouteCost:
    """Estimate of the cyclic-trace divergence for ``n`` examples."""
    dims = _dims(leaves)
    d, q = dims[0]
    n1 = max(n, 1)
    return _scaled(_route_cost(dims, n1, q, ctx.itemsize, ctx.be.fuses, lap=False, last_d=d), n, n1)


def _route_cost(dims, n, q, itemsize, fused, *, lap: bool, last_d: int) -> RouteCost:
    """Cost of either route for ``n`` examples: the first layer's evaluation and
    the Gram matrix, then a forward sweep with ``q`` tangents over the rest
    (for the divergence: over the interior, plus the last layer's contraction)."""
    from .cost import FLOPS_PER_BYTE, FUSED_FLOPS_PER_BYTE

    f0, pk0, ops0, mv0 = _value_cost(dims[:1], n, itemsize)
    rest = dims[1:-1] if last_d else dims[1:]
    f, pk, ops, mv = (0.0, 0.0, 0, 0.0)
    if rest:
        f, pk, ops, mv = _fwd_cost(rest, n, q, False, False, lap, itemsize, False)
    # the Gram matrix (d·q², batch-independent, memoised) is not charged: the
    # backward route's first-layer trace needs it as well
    f += f0
    ops += ops0 + 6
    mv += mv0
    pk = max(pk0, pk + n * q * q * itemsize)
    if last_d:
        w = dims[-1][0]
        f += 2.0 * n * w * last_d  # evaluation of the last layer
        # linear last layer: w·q per example; otherwise T M_L in column blocks
        f += 2.0 * n * q * w * last_d
        pk = max(pk, n * (w + last_d) * itemsize + BLOCK_BYTES)
        ops += 4 + 4 * max(1, int(n * q * last_d * itemsize // BLOCK_BYTES))
    return RouteCost("forward", f, pk, pk / n, ops, mv, FUSED_FLOPS_PER_BYTE if fused else FLOPS_PER_BYTE)


def _scaled(rc: RouteCost, n: int, n1: int) -> RouteCost:
    return RouteCost(
        rc.mode,
        rc.flops * n / n1,
        rc.peak_bytes * n / n1,
        rc.per_example_bytes,
        rc.ops,
        rc.bytes_moved * n / n1,
        rc.flops_per_byte,
        rc.step_factor,
    )


def gram_root(M, ops: Ops):
    r"""``(G, R)``: :math:`G = M^\top M` and ``R`` with :math:`R^\top R = G`
    (:math:`R = \Lambda^{1/2} U^\top` from :math:`G = U \Lambda U^\top`; rounding
    negatives of a singular ``G`` are clipped to zero)."""
    xp = ops.xp
    G = gram(M, ops)
    if ops.requires_grad(M):
        # trainable weights: the backward pass of an eigendecomposition divides
        # by eigenvalue gaps (unstable where they nearly coincide); Cholesky's
        # (G = L Lᵀ, R = Lᵀ) is smooth wherever G is positive definite, which
        # M of full column rank (d > q) gives
        try:
            return G, xp.matrix_transpose(xp.linalg.cholesky(G))
        except Exception as err:  # singular G: the eigendecomposition below
            if "singular" not in str(err).lower() and "positive" not in str(err).lower():
                raise

    def root():
        lam, U = xp.linalg.eigh(G)
        lam = xp.where(lam > 0, lam, xp.zeros_like(lam))
        return xp.sqrt(lam)[:, None] * xp.matrix_transpose(U)

    return G, memo(M, "root", root)


def run_laplacian(leaves, params, ctx) -> Result:
    """Value and Laplacian ``(n, m)`` by the Gram-root forward sweep (module docstring)."""
    xp, ops = ctx.xp, ctx.be
    u, s1, s2, M, _ = _affine_eval(leaves[0], ctx.x, params[0], 2, ops)
    G, R = gram_root(M, ops)
    q = G.shape[0]
    eye = xp.eye(q, dtype=G.dtype, device=device(G))
    # ∂u_1 along the q tangents R: σ' ⊙ R; Δu_1 = σ'' ⊙ Σ_i (M_1)_i² = σ'' ⊙ diag(G)
    tangents = Tangents(s1[:, None, :] * R[None, :, :], laplacian=s2 * xp.sum(G * eye, axis=-1))
    request = Request(laplacian=True)
    for leaf, P in zip(leaves[1:], params[1:]):
        u, cache = leaf.evaluate(u, P, 2, ops)
        tangents = leaf.forward_step(cache, P, tangents, request, ops)
    return Result(value=u, laplacian=tangents.laplacian)


def run_divergence(leaves, params, ctx) -> Result:
    """Value and divergence ``(n,)`` without the Jacobian (module docstring)."""
    xp, ops = ctx.xp, ctx.be
    u, s1, _, M1, _ = _affine_eval(leaves[0], ctx.x, params[0], 1, ops)
    q = M1.shape[1]
    eye = xp.eye(q, dtype=s1.dtype, device=device(s1))
    # tangents along the q pre-activation coordinates of the first layer: D_1
    tangents = Tangents(s1[:, :, None] * eye[None, :, :])
    request = Request()
    for leaf, P in zip(leaves[1:-1], params[1:-1]):
        u, cache = leaf.evaluate(u, P, 1, ops)
        tangents = leaf.forward_step(cache, P, tangents, request, ops)
    T = tangents.jacobian  # (n | 1, q, w)
    u, sL, _, ML, linear = _affine_eval(leaves[-1], u, params[-1], 1, ops)
    n = u.shape[0]
    w = ML.shape[0]
    if T.shape[0] != n:
        T = xp.broadcast_to(T, (n, *T.shape[1:]))
    if linear:
        # tr(T M_L M_1) = ⟨T, (M_L M_1)ᵀ⟩, with M_L M_1 (w, q) batch-independent
        P = memo((ML, M1), "product", lambda: ML @ M1)
        div = ops.mm(xp.reshape(T, (n, q * w)), xp.reshape(xp.matrix_transpose(P), (q * w, 1)))[:, 0]
        return Result(value=u, divergence=div)
    d = ML.shape[1]
    itemsize = ctx.itemsize
    step = max(64, BLOCK_BYTES // max(1, n * q * itemsize))
    div = None
    for a0 in range(0, d, step):
        a1 = min(a0 + step, d)
        # Σ_{a in block} σ'_a Σ_j (T M_L)_{ja} (M_1)_{aj}
        Y = ops.mm(T, ML[:, a0:a1]) * sL[:, None, a0:a1]  # (n, q, B)
        part = xp.sum(xp.vecdot(Y, xp.matrix_transpose(M1[a0:a1, :])[None, :, :], axis=-1), axis=-1)
        div = part if div is None else div + part
    return Result(value=u, divergence=div)


__all__ = [
    "DIVERGENCE",
    "LAPLACIAN",
    "divergence_cost",
    "first_narrows",
    "gram_root",
    "laplacian_cost",
    "plain_affine",
    "run_divergence",
    "run_laplacian",
]

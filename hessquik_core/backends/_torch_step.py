r"""A forward-mode sweep with an analytic weight gradient, for torch training steps.

When autograd records a forward-mode call of value, gradient and Laplacian
through a chain of dense layers ``u -> σ(uK + b)`` (the MLPs that
physics-informed training uses), the generic sweep puts ~17 operations per
layer on the autograd tape and saves their temporaries. Here the sweep runs
as one :class:`torch.autograd.Function`:

* the carries are stacked tangent-major as ``Y = [u; ∂u; Δu] : (1 + k + 1, n, p)``,
  so one GEMM per layer, ``Z = Y K``, pushes value, tangents and Laplacian at once;
* its backward is the adjoint of the forward recurrences
  :math:`u' = \sigma(z)`, :math:`G' = \sigma' \odot A`,
  :math:`L' = \sigma'' \odot \sum_i A_i^2 + \sigma' \odot B` (``z, A, B``
  the rows of ``Z``): with the output adjoints :math:`\bar u', \bar G', \bar L'`,

  .. math::
      \bar\sigma_1 = \sum_i \bar G'_i A_i + \bar L' B,\quad
      \bar z = \sigma' \bar u' + \sigma'' \bar\sigma_1 + \sigma''' \bar L' \sum_i A_i^2,

      \bar A = \sigma' \bar G' + 2\sigma'' \bar L' A,\quad \bar B = \sigma' \bar L',

  and then :math:`\bar K = Y^\top [\bar z; \bar A; \bar B]` and
  :math:`\bar Y = [\bar z; \bar A; \bar B] K^\top` — two more GEMMs over the
  same stacked layout, three per layer in all.

It saves each layer's GEMM output ``Z`` and output stack ``Y`` (the next
layer's input) and no activation temporaries: the three derivatives of
``σ`` are recomputed from ``σ(z)`` (tanh: polynomials of ``t``) or ``z``.
The backward writes the GEMM operand ``[z̄; Ā; B̄]`` into the adjoint it
came from and sums over the tangent axis slab by slab, so no ``(k, n, q)``
temporary is allocated besides the GEMM outputs.

A residual layer :math:`f(u) = u + h\,\sigma(uK + b)` adds its input's stack
to its output's (the identity path) and scales the activation's rows by
``h``; its adjoint is the same recurrence with :math:`h\sigma^{(j)}` in place of
:math:`\sigma^{(j)}`, plus the incoming adjoint (the identity path again).

This module is the kernel of the route
:mod:`hessquik_core.engine.routes.analytic_step`, which decides where it
applies (layers that declare affine structure, activations with σ‴, forward
mode, no Hessian, eager torch) and hands it plain data: the weights, the
activation objects and :class:`~hessquik_core.backends.base.SweepLayer`
flags. It imports nothing of the layers or the engine. A second
backward pass (``create_graph=True``: a gradient penalty on the weight
gradient, a Hessian-vector product in the weights) is exact too: there the
backward re-runs the same recurrences as ordinary taped torch operations and
differentiates them (:func:`_taped`), which costs what the generic sweep
costs; :func:`hessquik_core.training.analytic_weight_gradient` ``(False)``
switches the Function off altogether.
"""

from __future__ import annotations

import torch

from . import _torch_gemm as gemm
from ._torch_workspace import WORKSPACE

#: entries per layer in the saved tensors: ``K, Z, z, S, Y_out, σ(z)``
_PER_LAYER = 6


def _plain(layer) -> bool:
    """``f = σ(uM + b)`` itself: no identity path, ``h = 1``."""
    return layer.scale == 1.0 and not layer.residual


def _derivs(layer, z, s0):
    r"""``(σ', σ'', σ''')`` at ``z`` (times ``h``), given ``s0 = σ(z)``: the activation's
    own ``derivatives`` (which reuses ``s0`` where they are polynomials of it)."""
    out = layer.act.derivatives(z, 3, value=s0)[1:]
    h = layer.scale
    return out if h == 1.0 else tuple(h * s for s in out)


def _vdot0(a, b):
    r""":math:`\sum_i a_i b_i` over the leading (tangent) axis, slab by slab: each
    ``(n, q)`` product is accumulated in place, so no ``(k, n, q)`` temporary is
    written (``torch.linalg.vecdot`` forms the whole product first)."""
    acc = a[0] * b[0]
    for i in range(1, a.shape[0]):
        acc.addcmul_(a[i], b[i])
    return acc


def run(layers, lap: bool, x, seed, flat):
    """The output stack ``[u; ∂u; Δu] : (1 + k [+ 1], n, m)`` of the chain
    (:meth:`~hessquik_core.backends.Backend.stacked_affine_sweep`)."""
    return _Sweep.apply(tuple(layers), bool(lap), x, seed, *flat)


def _fresh(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _taped(layers, lap, x, seed, flat):
    """The forward recurrences of :class:`_Sweep` as ordinary (recorded) torch
    operations: ``Y = [u; ∂u; Δu] : (rows, n, m)``, for the double-backward path."""
    k = seed.shape[1]
    u, G, L = x, seed[0][:, None, :], None  # G: (k, 1, d), shared by the batch
    for i, layer in enumerate(layers):
        K, b = flat[2 * i], flat[2 * i + 1]
        z = u @ K if b is None else torch.addmm(b, u, K)
        A = G @ K
        B = None if (L is None or not lap) else L @ K
        if layer.linear and _plain(layer):
            u, G, L = z, A, B
            continue
        s0, s1, s2 = layer.act(z, 2, xp=None)
        Lf = None
        if _plain(layer):
            uf, Gf = s0, s1 * A
            if lap:
                Lf = s2 * torch.sum(A * A, dim=0)
                if B is not None:
                    Lf = Lf + s1 * B
        else:
            h = layer.scale
            uf, Gf = h * s0, h * (s1 * A)
            if lap:
                Lf = s2 * torch.sum(A * A, dim=0)
                if B is not None:
                    Lf = Lf + s1 * B
                Lf = h * Lf
            if layer.residual:
                uf, Gf = uf + u, Gf + G
                if lap and L is not None:
                    Lf = Lf + L
        u, G, L = uf, Gf, Lf
    n = x.shape[0]
    G = torch.broadcast_to(G, (k, n, G.shape[-1]))
    if lap:
        L = torch.zeros_like(u) if L is None else torch.broadcast_to(L, u.shape)  # all-linear chain
    rows = [u[None], G] + ([L[None]] if lap else [])
    return torch.cat(rows, dim=0)


class _Sweep(torch.autograd.Function):
    """``Y_out = [u; ∂u; Δu] : (rows, n, m)`` of the network output (module docstring)."""

    @staticmethod
    def forward(ctx, layers, lap, x, seed, *flat):
        n, k = x.shape[0], seed.shape[1]
        rows = 1 + k + (1 if lap else 0)
        saved = [x, seed]
        Y = None
        WORKSPACE.new_step()
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            K, b = flat[2 * i], flat[2 * i + 1]
            q = K.shape[1]
            plain = _plain(layer)
            # the stacks the backward pass reads come from the step workspace (no fresh,
            # page-faulting memory per step); the returned stack is the caller's: fresh
            stack = WORKSPACE.empty if i < last else _fresh
            if i == 0:
                # the input's tangents are the seed, shared by the batch: A = seed K is (k, 1, q)
                z = gemm.mm(x, K) if b is None else gemm.addmm(b, x, K)
                A, Z = (seed[0] @ K)[:, None, :], None
            else:
                Z = stack((rows, n, q), x)
                gemm.mm(Y.view(rows * n, Y.shape[-1]), K, out=Z.view(rows * n, q))
                z = Z[0]
                if b is not None:
                    z.add_(b)  # the value row of Z becomes z itself
                A = Z[1 : k + 1]
            if layer.linear and plain and Z is not None:
                # σ' = 1, σ'' = 0: the stack is the GEMM output
                saved += [K, None, None, None, Z, None]
                Y = Z
                continue
            Yn = stack((rows, n, q), x)
            s0, s1, s2 = layer.act(z, 2, xp=None)
            if plain:
                Yn[0] = s0
                s0 = None  # the backward pass reads σ(z) from the stack
            else:
                h = layer.scale
                if h != 1.0:
                    s1, s2 = h * s1, h * s2
                    torch.mul(s0, h, out=Yn[0])
                else:
                    Yn[0] = s0
                if layer.residual:
                    Yn[0].add_(x if i == 0 else Y[0])
            torch.mul(s1, A, out=Yn[1 : k + 1])
            if layer.residual:
                # the identity path: the input's tangents (at the first layer the seed)
                Yn[1 : k + 1].add_(seed[0][:, None, :] if i == 0 else Y[1 : k + 1])
            S = None
            if lap:
                S = _vdot0(A, A)  # Σ_i A_i²: (1, q) at the first layer, (n, q) after
                if Z is None:
                    torch.mul(s2, S, out=Yn[k + 1])
                else:
                    torch.addcmul(s2 * S, s1, Z[k + 1], out=Yn[k + 1])
                if layer.residual and i > 0:
                    Yn[k + 1].add_(Y[k + 1])
            saved += [K, Z, z, S, Yn, s0]
            Y = Yn
        ctx.layers, ctx.lap = layers, lap
        ctx.has_b = tuple(flat[2 * i + 1] is not None for i in range(len(layers)))
        saved += [flat[2 * i + 1] for i in range(len(layers))]  # the biases (double backward)
        ctx.save_for_backward(*saved)
        return Y

    @staticmethod
    def backward(ctx, Yb):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _Sweep._backward_taped(ctx, Yb)
        return _Sweep._backward_analytic(ctx, Yb)

    @staticmethod
    def _backward_taped(ctx, Yb):
        """The vector-Jacobian product of :func:`_taped`, recorded, so that autograd
        can differentiate the weight gradient once more."""
        saved = ctx.saved_tensors
        nl = len(ctx.layers)
        x, seed = saved[0], saved[1]
        flat = []
        for i in range(nl):
            flat += [saved[2 + _PER_LAYER * i], saved[2 + _PER_LAYER * nl + i]]
        needs = (ctx.needs_input_grad[2], *ctx.needs_input_grad[4:])
        inputs = [x, *flat]
        wrt = [j for j, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
        Y = _taped(ctx.layers, ctx.lap, x, seed, flat)
        got = torch.autograd.grad(Y, [inputs[j] for j in wrt], Yb, create_graph=True, allow_unused=True)
        out = [None] * len(inputs)
        for j, g in zip(wrt, got):
            out[j] = g
        return (None, None, out[0], None, *out[1:])

    @staticmethod
    def _backward_analytic(ctx, Yb):
        layers, lap = ctx.layers, ctx.lap
        saved = ctx.saved_tensors
        x, seed = saved[0], saved[1]
        # per layer (K, Z, z, S, Y_out, σ(z) or None)
        per = [saved[2 + _PER_LAYER * i : 2 + _PER_LAYER * (i + 1)] for i in range(len(layers))]
        need = ctx.needs_input_grad[4:]
        k = seed.shape[1]
        grads = [None] * (2 * len(layers))
        # the incoming adjoint is autograd's (copied); every later one is this sweep's
        # own GEMM output and becomes the next GEMM operand [z̄; Ā; B̄] in place
        Yb = WORKSPACE.empty(Yb.shape, Yb).copy_(Yb)
        xb = Asum = ub = None
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            K, Z, z, S, Yn, s0 = per[i]
            zb, Gb = Yb[0], Yb[1 : k + 1]
            through = None  # the identity path's adjoint: the incoming one, before it is overwritten
            if layer.residual:
                if i > 0:
                    through = WORKSPACE.empty(Yb.shape, Yb).copy_(Yb)
                elif ctx.needs_input_grad[2]:
                    ub = zb.clone()
            if layer.linear and _plain(layer):
                if i == 0 and need[0]:
                    Asum = Gb.sum(1)
            else:
                s1, s2, s3 = _derivs(layer, z, Yn[0] if s0 is None else s0)
                A = (seed[0] @ K)[:, None, :] if Z is None else Z[1 : k + 1]
                # z̄ = σ' ū' + σ'' σ̄' + σ''' L̄' Σ_i A_i², with σ̄' = Σ_i Ḡ'_i A_i + L̄' B
                s1b = _vdot0(Gb, A)
                if lap:
                    Lb = Yb[k + 1]
                    if Z is not None:
                        s1b.addcmul_(Lb, Z[k + 1])
                    c3 = S * Lb
                    c2 = 2.0 * s2 * Lb
                zb.mul_(s1).addcmul_(s1b, s2)
                if lap:
                    zb.addcmul_(c3, s3)
                if i > 0:
                    # Ā = σ' Ḡ' + 2σ'' L̄' A, B̄ = σ' L̄'
                    Gb.mul_(s1)
                    if lap:
                        Gb.addcmul_(c2, A)
                        Lb.mul_(s1)
                elif need[0]:
                    # the first layer's tangent rows are the seed: K̄ gets seedᵀ Σ_n Ā
                    # A is shared by the batch: Σ_n c2 A = A Σ_n c2; the rest slab by slab
                    Asum = torch.stack([(Gb[j] * s1).sum(0) for j in range(k)])
                    if lap:
                        Asum.addcmul_(A[:, 0, :], c2.sum(0))
            if ctx.has_b[i] and need[2 * i + 1]:
                grads[2 * i + 1] = zb.sum(0)
            if i > 0:
                Yin = per[i - 1][4]
                Zb = Yb.view(-1, Yb.shape[-1])
                if need[2 * i]:
                    grads[2 * i] = gemm.mm(Yin.view(-1, Yin.shape[-1]).T, Zb)
                if through is not None:
                    # Ȳ = [z̄; Ā; B̄] Kᵀ + Ȳ' (the identity path), accumulated in the GEMM
                    Yb = gemm.addmm_(through.view(Zb.shape[0], K.shape[0]), Zb, K.T).view(Yin.shape)
                    continue
                # the adjoint of the layer input, into a workspace buffer: the one of two
                # layers up is dead by now and is lent again (no fresh, page-faulting memory)
                out = WORKSPACE.empty(Yin.shape, Zb)
                Yb = gemm.mm(Zb, K.T, out=out.view(Zb.shape[0], K.shape[0])).view(Yin.shape)
                continue
            if need[0]:
                grads[0] = torch.addmm(gemm.mm(x.T, zb), seed[0].T, Asum)
            if ctx.needs_input_grad[2]:
                xb = gemm.mm(zb, K.T)
                if ub is not None:
                    xb = xb + ub
        return (None, None, xb, None, *grads)

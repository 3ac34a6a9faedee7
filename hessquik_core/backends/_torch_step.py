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

Used only where it is exact (:func:`usable`): dense layers with activations
whose third derivative is known here, forward mode, no Hessian or Hessian
diagonal requested, eager torch (``torch.compile`` traces the generic
sweep, which Inductor fuses), no ``torch.func`` transform active. A second
backward pass (``create_graph=True``: a gradient penalty on the weight
gradient, a Hessian-vector product in the weights) is exact too: there the
backward re-runs the same recurrences as ordinary taped torch operations and
differentiates them (:func:`_taped`), which costs what the generic sweep
costs; :func:`hessquik_core.training.analytic_weight_gradient` ``(False)``
switches the Function off altogether.
"""

from __future__ import annotations

import torch

from ..activations import Identity, Tanh
from ._torch_workspace import WORKSPACE


def _derivs(act, z, s0):
    r"""``(σ', σ'', σ''')`` at ``z``, given ``s0 = σ(z)``: the activation's own
    :meth:`~hessquik_core.activations.Activation.derivatives` (which reuses ``s0``
    where the derivatives are polynomials of it)."""
    return act.derivatives(z, 3, value=s0)[1:]


def _vdot0(a, b):
    r""":math:`\sum_i a_i b_i` over the leading (tangent) axis, slab by slab: each
    ``(n, q)`` product is accumulated in place, so no ``(k, n, q)`` temporary is
    written (``torch.linalg.vecdot`` forms the whole product first)."""
    acc = a[0] * b[0]
    for i in range(1, a.shape[0]):
        acc.addcmul_(a[i], b[i])
    return acc


def usable(leaves, ctx, mode=None) -> bool:
    """May this call (in ``mode``, default its own) use :class:`_Sweep`? Exactly the
    case it is exact and faster for; whether autograd records it is the caller's test."""
    from ..layers.dense import SingleLayer

    if (ctx.mode if mode is None else mode) != "forward":
        return False
    if ctx.hessian or ctx.hessian_diagonal or not (ctx.laplacian or ctx.gradient or ctx.divergence):
        return False
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:  # vmap / grad / jacrev active
        return False
    from .. import training

    if not training._ANALYTIC:
        return False
    for leaf in leaves:
        if type(leaf) is not SingleLayer or leaf.act.max_order < 3:
            return False
    return True


def run(leaves, params, ctx, x, seed, laplacian: bool):
    """``(value (n, m), jacobian (n, k, m), laplacian (n, m) or None)`` of the chain."""
    acts = tuple(leaf.act for leaf in leaves)
    flat = []
    for P in params:
        flat.append(P["K"])
        flat.append(P["b"])
    Y = _Sweep.apply(acts, bool(laplacian), x, seed, *flat)
    k = seed.shape[1]
    return Y[0], torch.permute(Y[1 : k + 1], (1, 0, 2)), (Y[k + 1] if laplacian else None)


def _fresh(shape, like):
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _taped(acts, lap, x, seed, flat):
    """The forward recurrences of :class:`_Sweep` as ordinary (recorded) torch
    operations: ``Y = [u; ∂u; Δu] : (rows, n, m)``, for the double-backward path."""
    k = seed.shape[1]
    u, G, L = x, seed[0][:, None, :], None  # G: (k, 1, d), shared by the batch
    for i, act in enumerate(acts):
        K, b = flat[2 * i], flat[2 * i + 1]
        z = u @ K if b is None else torch.addmm(b, u, K)
        A = G @ K
        B = None if (L is None or not lap) else L @ K
        if isinstance(act, Identity):
            u, G, L = z, A, B
            continue
        s0, s1, s2 = act(z, 2, xp=None)
        u, G = s0, s1 * A
        if lap:
            L = s2 * torch.sum(A * A, dim=0)
            if B is not None:
                L = L + s1 * B
    n = x.shape[0]
    G = torch.broadcast_to(G, (k, n, G.shape[-1]))
    if lap:
        L = torch.zeros_like(u) if L is None else torch.broadcast_to(L, u.shape)  # all-linear chain
    rows = [u[None], G] + ([L[None]] if lap else [])
    return torch.cat(rows, dim=0)


class _Sweep(torch.autograd.Function):
    """``Y_out = [u; ∂u; Δu] : (rows, n, m)`` of the network output (module docstring)."""

    @staticmethod
    def forward(ctx, acts, lap, x, seed, *flat):
        n, k = x.shape[0], seed.shape[1]
        rows = 1 + k + (1 if lap else 0)
        saved = [x, seed]
        Y = None
        WORKSPACE.new_step()
        last = len(acts) - 1
        for i, act in enumerate(acts):
            K, b = flat[2 * i], flat[2 * i + 1]
            q = K.shape[1]
            # the stacks the backward pass reads come from the step workspace (no fresh,
            # page-faulting memory per step); the returned stack is the caller's: fresh
            stack = WORKSPACE.empty if i < last else _fresh
            if i == 0:
                # the input's tangents are the seed, shared by the batch: A = seed K is (k, 1, q)
                z = x @ K if b is None else torch.addmm(b, x, K)
                A, Z = (seed[0] @ K)[:, None, :], None
            else:
                Z = stack((rows, n, q), x)
                torch.mm(Y.view(rows * n, Y.shape[-1]), K, out=Z.view(rows * n, q))
                z = Z[0]
                if b is not None:
                    z.add_(b)  # the value row of Z becomes z itself
                A = Z[1 : k + 1]
            if isinstance(act, Identity) and Z is not None:
                # σ' = 1, σ'' = 0: the stack is the GEMM output
                saved += [K, None, None, None, Z]
                Y = Z
                continue
            Yn = stack((rows, n, q), x)
            if isinstance(act, Tanh):
                t = torch.tanh(z, out=Yn[0])
                s1 = 1.0 - t * t
                s2 = -2.0 * t * s1
            else:
                s0, s1, s2 = act(z, 2, xp=None)
                Yn[0] = s0
            torch.mul(s1, A, out=Yn[1 : k + 1])
            S = None
            if lap:
                S = _vdot0(A, A)  # Σ_i A_i²: (1, q) at the first layer, (n, q) after
                if Z is None:
                    torch.mul(s2, S, out=Yn[k + 1])
                else:
                    torch.addcmul(s2 * S, s1, Z[k + 1], out=Yn[k + 1])
            saved += [K, Z, z, S, Yn]
            Y = Yn
        ctx.acts, ctx.lap = acts, lap
        ctx.has_b = tuple(flat[2 * i + 1] is not None for i in range(len(acts)))
        saved += [flat[2 * i + 1] for i in range(len(acts))]  # the biases (double backward)
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
        nl = len(ctx.acts)
        x, seed = saved[0], saved[1]
        flat = []
        for i in range(nl):
            flat += [saved[2 + 5 * i], saved[2 + 5 * nl + i]]
        needs = (ctx.needs_input_grad[2], *ctx.needs_input_grad[4:])
        inputs = [x, *flat]
        wrt = [j for j, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
        Y = _taped(ctx.acts, ctx.lap, x, seed, flat)
        got = torch.autograd.grad(Y, [inputs[j] for j in wrt], Yb, create_graph=True, allow_unused=True)
        out = [None] * len(inputs)
        for j, g in zip(wrt, got):
            out[j] = g
        return (None, None, out[0], None, *out[1:])

    @staticmethod
    def _backward_analytic(ctx, Yb):
        acts, lap = ctx.acts, ctx.lap
        saved = ctx.saved_tensors
        x, seed = saved[0], saved[1]
        layers = [saved[2 + 5 * i : 7 + 5 * i] for i in range(len(acts))]  # (K, Z, z, S, Y_out)
        need = ctx.needs_input_grad[4:]
        k = seed.shape[1]
        grads = [None] * (2 * len(acts))
        # the incoming adjoint is autograd's (copied); every later one is this sweep's
        # own GEMM output and becomes the next GEMM operand [z̄; Ā; B̄] in place
        Yb = WORKSPACE.empty(Yb.shape, Yb).copy_(Yb)
        xb = Asum = None
        for i in range(len(acts) - 1, -1, -1):
            act = acts[i]
            K, Z, z, S, Yn = layers[i]
            zb, Gb = Yb[0], Yb[1 : k + 1]
            if isinstance(act, Identity):
                if i == 0 and need[0]:
                    Asum = Gb.sum(1)
            else:
                s1, s2, s3 = _derivs(act, z, Yn[0])
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
                Yin = layers[i - 1][4]
                Zb = Yb.view(-1, Yb.shape[-1])
                if need[2 * i]:
                    grads[2 * i] = Yin.view(-1, Yin.shape[-1]).T @ Zb
                # the adjoint of the layer input, into a workspace buffer: the one of two
                # layers up is dead by now and is lent again (no fresh, page-faulting memory)
                out = WORKSPACE.empty(Yin.shape, Zb)
                Yb = torch.mm(Zb, K.T, out=out.view(Zb.shape[0], K.shape[0])).view(Yin.shape)
                continue
            if need[0]:
                grads[0] = torch.addmm(x.T @ zb, seed[0].T, Asum)
            if ctx.needs_input_grad[2]:
                xb = zb @ K.T
        return (None, None, xb, None, *grads)

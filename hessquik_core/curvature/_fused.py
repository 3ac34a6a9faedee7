r"""The fused gradient pass: the loss and :math:`\nabla_\theta C` of one mini-batch with the
work torch autograd does on the same model (used by ``problem._Bound.fused_grad_pass``, the
general route, and by ``_lean``, the lean route of a torch model's common call)."""

from __future__ import annotations

__all__ = ["fused_pass"]


def _slot(be, flat, offset, size, shape):
    """``flat[offset : offset + size]`` as an array of ``shape`` (a view: no copy)."""
    s = flat[offset : offset + size]
    return s if len(shape) == 1 else be.view(s, shape)


def fused_pass(leaves, params, fused, slots, layout, be, x, device, head, join):
    """``head(F)`` and ``∇θ`` ``(P,)`` by the fused gradient pass; ``None`` where ``head``
    returns ``None``.

    ``head(F) -> (value, dC/dF)`` or ``None``: the loss at the network's output
    ``F : (n, m)`` (its adjoint ``dC/dF`` with the weight ``w`` applied); the pass
    returns ``(value, ∇θ)``. A leaf with ``param_grad_forward`` /
    ``param_grad_backward`` (the dense layer; ``fused[i]``) keeps only ``z`` and
    ``σ(z)`` forward and forms ``δ = σ'(z) ⊙ dl`` in its backward step (tanh: one fused
    kernel from the value, as torch's autograd), its pre-activation is one ``addmm``,
    and the first leaf skips ``∂C/∂x``; any other leaf runs its ``evaluate`` /
    ``param_vjp``. ``slots``, ``layout``: see ``problem._plan``; ``device``: ``x``'s; ``join``:
    ``problem._Bound.join`` (used where the gradient is not written in place).
    """
    xp = be.xp
    inputs, caches = [], []
    u = x
    for leaf, P, f in zip(leaves, params, fused):
        inputs.append(u)
        u, cache = leaf.param_grad_forward(u, P, be) if f else leaf.evaluate(u, P, 1, be)
        caches.append(cache)
    top = head(u)
    if top is None:
        return None
    value, dl = top
    # a mutable library with every leaf fused: the GEMMs write straight into θ's slots
    # (no concatenation of P entries afterwards)
    flat = outs = None
    if be.mutable and all(fused):
        flat = xp.empty((layout.size,), dtype=x.dtype, device=device)
        outs = [
            {
                name: _slot(be, flat, layout.offsets[j], layout.sizes[j], layout.shapes[j])
                for name, j in leaf_slots
            }
            for leaf_slots in slots
        ]
    grads = [None] * len(leaves)
    for i in range(len(leaves) - 1, -1, -1):
        P = params[i]
        if outs is not None:
            dl, _ = leaves[i].param_grad_backward(caches[i], P, inputs[i], dl, i > 0, be, outs[i])
        elif fused[i]:
            dl, grads[i] = leaves[i].param_grad_backward(caches[i], P, inputs[i], dl, i > 0, be)
        else:
            dl, grads[i] = leaves[i].param_vjp(caches[i], P, inputs[i], dl, False, be)
    return value, (flat if flat is not None else join(grads, ()))

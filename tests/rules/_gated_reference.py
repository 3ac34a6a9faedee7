"""Reference rules of ``hessquik_core.rules.gated`` used only by the tests.

Moved here from the package: the same recurrences written as functions of
separate arrays (instead of the carries and ``ops`` the package's rules
take), kept as independent references that the tests compare with the
engine's steps and with torch.func. The module also re-exports the package functions the tests call, so
``import _gated_reference as R`` serves both.
"""

from __future__ import annotations

from array_api_compat import array_namespace

from hessquik_core.rules import gated as _G
from hessquik_core.rules.gated import gated_step  # noqa: F401 - re-exported for the tests


# The package's step rules take the step's GateCache (U, V, Z, σ', σ'') and are private to
# the engine's carries-and-ops steps (gated_state_forward_step / gated_state_backward_step);
# the tests call them with the arrays of gated_step, through these adapters.
def _cache(U, V, Z, s1, s2):
    return _G.GateCache(U, V, None, Z, s1, s2)


def gated_step_forward_tangents(GU, GV, GH, HU, HV, HH, U, V, W, Z, s1, s2, *, xp=None):
    """Tangents (and second tangents) of one gated step's output (module docstring of rules.gated)."""
    return _G._forward_pairs(_cache(U, V, Z, s1, s2), W, GU, GV, GH, HU, HV, HH)


def gated_step_forward_laplacian(GU, GV, GH, LU, LV, LH, U, V, W, Z, s1, s2, *, xp=None):
    """Laplacian shortcut of one gated step: ``(G (n, k, w), L (n, w))``."""
    xp = xp if xp is not None else array_namespace(GU, W)
    return _G._forward_laplacian(_cache(U, V, Z, s1, s2), W, GU, GV, GH, LU, LV, LH, xp)


def gated_step_forward_diagonal(GU, GV, GH, DU, DV, DH, U, V, W, Z, s1, s2, *, xp=None):
    """Hessian-diagonal shortcut of one gated step: ``(G, Dg)``, both (n, k, w)."""
    return _G._forward_diagonal(_cache(U, V, Z, s1, s2), W, GU, GV, GH, DU, DV, DH)


def gated_step_state_forward_tangents(G, Hs, U, V, W, Z, s1, s2, *, xp=None):
    """Forward rule of one gated step on the state ``S = [U, V, H]``."""
    xp = xp if xp is not None else array_namespace(G, W)
    return _G._state_forward(_cache(U, V, Z, s1, s2), W, G, Hs, xp)


def gated_step_backward(A, B, U, V, W, Z, s1, s2, *, xp=None):
    """Backward rule of one gated step on the state ``S = [U, V, H]``: ``(A_in, B_in)``."""
    xp = xp if xp is not None else array_namespace(A, W)
    return _G._state_backward(_cache(U, V, Z, s1, s2), W, A, B, xp)


def _dense(x, G, H, W, b, act, xp):
    """σ(xW + b) with its tangents, for tangents G (n, k, p), H (n, k, k, p) or None of x."""
    from hessquik_core.activations import get_activation

    pre = x @ W
    if b is not None:
        pre = pre + b
    s0, s1, s2 = get_activation(act)(pre, 2, xp=xp)
    T = G @ W
    Gy = s1[:, None, :] * T
    Hy = s2[:, None, None, :] * (T[:, :, None, :] * T[:, None, :, :])
    if H is not None:
        Hy = Hy + s1[:, None, None, :] * (H @ W)
    return s0, Gy, Hy


def gated_mlp_forward(x, encoders, first, gates, readout, act, *, xp=None):
    r"""Value, gradient and Hessian of a whole gated MLP at its input (reference composition).

    Parameters
    ----------
    x : (n, d)
    encoders : ((W_u, b_u), (W_v, b_v)), each ``W`` (d, w)
    first : (W_1, b_1), first hidden state :math:`H_1 = \sigma(xW_1 + b_1)`
    gates : sequence of (W, b), ``W`` (w, w), one per gated step
    readout : (W_o, b_o), ``W_o`` (w, m), linear
    act : activation of the encoders, first layer and gates

    Returns
    -------
    value (n, m), gradient (n, d, m), hessian (n, d, d, m)
    """
    xp = xp if xp is not None else array_namespace(x)
    n, d = x.shape
    eye = xp.eye(d, dtype=x.dtype, device=getattr(x, "device", None))
    G0 = xp.broadcast_to(xp.reshape(eye, (1, d, d)), (n, d, d))
    (Wu, bu), (Wv, bv) = encoders
    U, GU, HU = _dense(x, G0, None, Wu, bu, act, xp)
    V, GV, HV = _dense(x, G0, None, Wv, bv, act, xp)
    H, GH, HH = _dense(x, G0, None, *first, act, xp)
    for W, b in gates:
        H, Z, s1, s2 = gated_step(U, V, H, W, b, act, xp=xp)
        GH, HH = gated_step_forward_tangents(GU, GV, GH, HU, HV, HH, U, V, W, Z, s1, s2)
    Wo, bo = readout
    out = H @ Wo
    if bo is not None:
        out = out + bo
    return out, GH @ Wo, HH @ Wo

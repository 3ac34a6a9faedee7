"""Reference rules of ``hessquik_core.rules.layer_norm`` used only by the tests.

Moved here from the package: the same recurrences written as functions of
separate arrays (instead of the carries and ``ops`` the package's rules
take), kept as independent references that the tests compare with the
engine's steps and with torch.func. The module also re-exports the package functions the tests call, so
``import _layer_norm_reference as R`` serves both.
"""

from __future__ import annotations

from hessquik_core.rules.layer_norm import (  # noqa: F401 - re-exported: the package's rules next to the references  # the package's private helpers
    _dot,
    _lift,
    _ns,
    backward_first,
    backward_step,
    forward_step,
    layer_norm_forward,
    layer_norm_jacobian_apply,
)


def layer_norm_jacobian(xhat, inv_std, gamma=None, *, xp=None):
    r"""The dense Jacobian :math:`\partial y / \partial z`, ``(n, w, w)``,
    entry ``[e, i, j]`` = :math:`\partial y_j / \partial z_i` (rows: inputs,
    as the engine's row-vector convention :math:`J = \partial f / \partial u`).

    :math:`J_{ij} = r(\delta_{ij} - \tfrac1w - \tfrac1w \hat x_i \hat x_j)\,\gamma_j`.
    For tests and explicit per-example Jacobians; the tangent rules never form it.
    """
    xp = _ns(xp, xhat)
    n, w = xhat.shape
    eye = xp.eye(w, dtype=xhat.dtype, device=getattr(xhat, "device", None))
    J = inv_std[:, :, None] * (eye - 1.0 / w - xhat[:, :, None] * xhat[:, None, :] / w)
    return J if gamma is None else J * gamma


def layer_norm_pair_curvature(S, T, xhat, inv_std, *, JS=None, JT=None, xp=None):
    r""":math:`D^2\hat x[s, t]` for the pairs ``(S[..., p, :], T[..., p, :])``.

    Parameters
    ----------
    S, T : (n, P, w) tangents of ``z``, paired along axis 1 (e.g. the
        packed pairs :math:`i \le j` of a forward sweep).
    xhat : (n, w), inv_std : (n, 1).
    JS, JT : (n, P, w), optional
        :func:`layer_norm_jacobian_apply` of ``S`` and ``T`` if already known.

    Returns
    -------
    (n, P, w) :math:`-r\,(a_s\,Jt + a_t\,Js + \tfrac1w (Js\cdot t)\,\hat x)`,
    :math:`Js\cdot t = r(s\cdot t - w\bar s\bar t - w a_s a_t)`.
    """
    xp = _ns(xp, S, xhat)
    w = xhat.shape[-1]
    if JS is None:
        JS = layer_norm_jacobian_apply(S, xhat, inv_std, xp=xp)
    if JT is None:
        JT = layer_norm_jacobian_apply(T, xhat, inv_std, xp=xp)
    xh = _lift(xhat, S.ndim, xp)
    r = _lift(inv_std, S.ndim, xp)
    a_s = _dot(S, xh, xp)[..., None] / w
    a_t = _dot(T, xh, xp)[..., None] / w
    # Js·t, using the closed form (no second pass over Js): symmetric in s, t
    m_s = xp.mean(S, axis=-1, keepdims=True)
    m_t = xp.mean(T, axis=-1, keepdims=True)
    jst = r * (_dot(S, T, xp)[..., None] - w * (m_s * m_t) - w * (a_s * a_t))
    return -r * (a_s * JT + a_t * JS + (jst / w) * xh)


def _tangent_parts(G, xhat, inv_std, xp):
    """Ĝ = J G (n, d, w), a = x̂·G / w (n, d), mean over features (n, d)."""
    w = xhat.shape[-1]
    JG = layer_norm_jacobian_apply(G, xhat, inv_std, xp=xp)
    a = _dot(G, xhat[:, None, :], xp) / w
    mean = xp.mean(G, axis=-1)
    return JG, a, mean


def _scale(a, gamma):
    return a if gamma is None else a * gamma


def layer_norm_forward_tangents(G, H, xhat, inv_std, gamma=None, *, xp=None):
    r"""Forward-mode rule: tangents and second tangents of ``y`` from those of ``z``.

    Parameters
    ----------
    G : (n, d, w) :math:`\partial z / \partial x` (row ``i``: tangent along direction ``i``).
    H : (n, d, d, w) or None, :math:`\partial^2 z / \partial x^2`.
    xhat : (n, w), inv_std : (n, 1) from :func:`layer_norm_forward`.
    gamma : (w,) or None.

    Returns
    -------
    Gy : (n, d, w) :math:`\gamma \odot J G_i`.
    Hy : (n, d, d, w) or None,
        :math:`\gamma \odot (J H_{ij} + D^2\hat x[G_i, G_j])` with
        :math:`D^2\hat x[G_i, G_j] = -r\,(a_i \hat G_j + a_j \hat G_i + \tfrac1w M_{ij} \hat x)`,
        :math:`\hat G = JG`, :math:`a_i = \hat x\cdot G_i / w`,
        :math:`M_{ij} = \hat G_i \cdot G_j = r(G_i\cdot G_j - w\bar G_i \bar G_j - w a_i a_j)`.
        Cost :math:`O(d^2 w)`, as for a pointwise layer.
    """
    xp = _ns(xp, G, xhat)
    JG, a, mean = _tangent_parts(G, xhat, inv_std, xp)
    Gy = _scale(JG, gamma)
    if H is None:
        return Gy, None
    w = xhat.shape[-1]
    r = inv_std[:, :, None]  # (n, 1, 1)
    gram = xp.matmul(G, xp.matrix_transpose(G))  # (n, d, d): G_i·G_j
    M = r * (gram - w * (mean[:, :, None] * mean[:, None, :]) - w * (a[:, :, None] * a[:, None, :]))
    D2 = -r[..., None] * (
        a[:, :, None, None] * JG[:, None, :, :]
        + a[:, None, :, None] * JG[:, :, None, :]
        + (M / w)[..., None] * xhat[:, None, None, :]
    )
    Hy = layer_norm_jacobian_apply(H, xhat, inv_std, xp=xp) + D2
    return Gy, _scale(Hy, gamma)


def _diag_curvature(JG, a, mean, G, xhat, inv_std, xp):
    """D²x̂[G_i, G_i] (n, d, w) = -r (2 a_i Ĝ_i + M_ii x̂ / w)."""
    w = xhat.shape[-1]
    r = inv_std[:, :, None]
    Mii = r * (_dot(G, G, xp) - w * mean * mean - w * a * a)[..., None]
    return -r * (2.0 * a[..., None] * JG + (Mii / w) * xhat[:, None, :])


def layer_norm_forward_laplacian(G, L, xhat, inv_std, gamma=None, *, xp=None):
    r"""Forward-mode Laplacian shortcut: never forms the Hessian.

    Parameters
    ----------
    G : (n, d, w) tangents of ``z``.
    L : (n, w) :math:`\sum_i H_{ii}`, the Laplacian (trace over the tangents) of ``z``.
    xhat, inv_std, gamma : as in :func:`layer_norm_forward_tangents`.

    Returns
    -------
    Gy : (n, d, w).
    Ly : (n, w) :math:`\gamma \odot \bigl(J L - r\,(2\sum_i a_i \hat G_i + \tfrac1w \hat x \sum_i M_{ii})\bigr)`,
        cost :math:`O(d w)`.
    """
    xp = _ns(xp, G, xhat)
    JG, a, mean = _tangent_parts(G, xhat, inv_std, xp)
    D2 = _diag_curvature(JG, a, mean, G, xhat, inv_std, xp)
    Ly = layer_norm_jacobian_apply(L, xhat, inv_std, xp=xp) + xp.sum(D2, axis=1)
    return _scale(JG, gamma), _scale(Ly, gamma)


def layer_norm_forward_diagonal(G, Hdiag, xhat, inv_std, gamma=None, *, xp=None):
    r"""Forward-mode Hessian-diagonal shortcut.

    Parameters
    ----------
    G : (n, d, w) tangents of ``z``.
    Hdiag : (n, d, w) :math:`H_{ii}`, the second tangents of ``z`` along each direction.
    xhat, inv_std, gamma : as in :func:`layer_norm_forward_tangents`.

    Returns
    -------
    Gy : (n, d, w).
    Dy : (n, d, w) :math:`\gamma \odot (J H_{ii} - r\,(2 a_i \hat G_i + \tfrac1w M_{ii}\hat x))`.
    """
    xp = _ns(xp, G, xhat)
    JG, a, mean = _tangent_parts(G, xhat, inv_std, xp)
    D2 = _diag_curvature(JG, a, mean, G, xhat, inv_std, xp)
    Dy = layer_norm_jacobian_apply(Hdiag, xhat, inv_std, xp=xp) + D2
    return _scale(JG, gamma), _scale(Dy, gamma)


def layer_norm_backward(A, B, xhat, inv_std, gamma=None, *, xp=None):
    r"""Backward-mode rule: adjoints of ``z`` from those of ``y``.

    For the rest of the network :math:`g(y)`, ``A`` holds :math:`\partial g_c / \partial y`
    and ``B`` :math:`\partial^2 g_c / \partial y^2` for each output direction ``c``.

    Parameters
    ----------
    A : (n, w, m) adjoint of the output, ``A[e, j, c]`` = :math:`\partial g_c / \partial y_j`
        (the transpose of the engine's ``dl``).
    B : (n, w, w, m) or None, second-order term :math:`\partial^2 g_c / \partial y_i \partial y_j`.
    xhat : (n, w), inv_std : (n, 1), gamma : (w,) or None.

    Returns
    -------
    Az : (n, w, m) :math:`\hat\lambda_c = J\lambda_c`, :math:`\lambda_c = \gamma \odot A_{:,c}`.
    Bz : (n, w, w, m) or None,
        :math:`J\,\Gamma B_c \Gamma\,J - \tfrac{r}{w}\bigl(\hat x \hat\lambda_c^\top
        + \hat\lambda_c \hat x^\top + (\lambda_c\cdot\hat x)\,J\bigr)`,
        :math:`\Gamma = \mathrm{diag}(\gamma)`. :math:`J` is the identity minus a
        rank-2 term (times :math:`r`), so each sandwich costs :math:`O(w^2)`.
    """
    xp = _ns(xp, A, xhat)
    n, w, m = A.shape
    lam = A if gamma is None else A * gamma[:, None]
    lam_t = xp.permute_dims(lam, (0, 2, 1))  # (n, m, w)
    Jlam_t = layer_norm_jacobian_apply(lam_t, xhat, inv_std, xp=xp)  # (n, m, w)
    Az = xp.permute_dims(Jlam_t, (0, 2, 1))
    if B is None:
        return Az, None
    C = xp.permute_dims(B, (0, 3, 1, 2))  # (n, m, w, w)
    if gamma is not None:
        C = C * gamma[:, None] * gamma
    # J C J: J on the last axis, then (C symmetric or not) on the other one
    C = layer_norm_jacobian_apply(C, xhat, inv_std, xp=xp)
    C = xp.matrix_transpose(layer_norm_jacobian_apply(xp.matrix_transpose(C), xhat, inv_std, xp=xp))
    r = inv_std[:, :, None, None]  # (n, 1, 1, 1)
    xh = xhat[:, None, :]  # (n, 1, w)
    lx = _dot(lam_t, xh, xp)  # (n, m): λ_c·x̂
    Jmat = layer_norm_jacobian(xhat, inv_std, xp=xp)[:, None, :, :]  # (n, 1, w, w)
    Q = (
        xh[:, :, :, None] * Jlam_t[:, :, None, :]
        + Jlam_t[:, :, :, None] * xh[:, :, None, :]
        + lx[:, :, None, None] * Jmat
    )
    Bz = C - (r / w) * Q
    return Az, xp.permute_dims(Bz, (0, 2, 3, 1))


def layer_norm_param_adjoint(A, xhat, *, xp=None):
    r"""Per-example adjoints of the affine parameters.

    :math:`\partial y/\partial\gamma = \mathrm{diag}(\hat x)` and
    :math:`\partial y/\partial\beta = I`, so for an output adjoint ``A``
    (n, w, m) (:math:`\partial g_c/\partial y`):

    Returns
    -------
    dgamma : (n, w, m) :math:`\hat x \odot A_{:,c}`, :math:`\partial g_c/\partial\gamma` per example.
    dbeta : (n, w, m) :math:`A`, :math:`\partial g_c/\partial\beta` per example.
    """
    return xhat[:, :, None] * A, A

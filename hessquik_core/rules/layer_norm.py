r"""Exact first and second derivatives of layer normalisation, as pure
functions of arrays (the math of ``torch.nn.LayerNorm(w)`` over the last axis).

For one example :math:`z \in \mathbb{R}^w`,

.. math::
    \mu = \tfrac1w \textstyle\sum_j z_j,\quad c = z - \mu,\quad
    v = \tfrac1w \|c\|^2,\quad r = (v + \varepsilon)^{-1/2},\quad
    \hat x = r\,c,\quad y = \gamma \odot \hat x + \beta .

With :math:`a_s = \hat x\cdot s / w` and :math:`\bar s = \tfrac1w\sum_j s_j`
for a tangent :math:`s` of :math:`z`, the Jacobian of :math:`\hat x` is
symmetric,

.. math::
    J s = r\,(s - \bar s\,\mathbf 1 - a_s \hat x),\qquad
    J = r\,\bigl(I - \tfrac1w \mathbf 1\mathbf 1^\top - \tfrac1w \hat x\hat x^\top\bigr),

and its second derivative along tangents :math:`s, t` is

.. math::
    D^2\hat x[s, t] = -r\,\bigl(a_s\,Jt + a_t\,Js + \tfrac1w (Js\cdot t)\,\hat x\bigr),
    \qquad Js \cdot t = r\,(s\cdot t - w\,\bar s\,\bar t - w\,a_s a_t).

Every product is :math:`O(w)` per pair of tangents: the normalisation
couples all features, yet no :math:`w \times w` matrix is needed in forward
mode. The derivation, and the backward-mode formulas, are in
``docs/derivations.md`` (section "Layer normalisation").

Shapes: ``n`` examples, ``w`` features, ``d`` (or ``k``) forward tangents,
``m`` backward output directions. ``xp`` is the array namespace (inferred
from the arrays when omitted). Nothing here modifies its arguments.

Why over 400 lines: the reference rules (per-example Jacobian and Hessian, used
by the tests) and the engine's structured steps (forward, backward, first-layer
trace/diagonal) are derived from the same low-rank form J = r(I - UUᵀ) stated
above; they stay next to that derivation.
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace

__all__ = [
    "layer_norm_backward",
    "layer_norm_forward",
    "layer_norm_forward_diagonal",
    "layer_norm_forward_laplacian",
    "layer_norm_forward_tangents",
    "layer_norm_jacobian",
    "layer_norm_jacobian_apply",
    "layer_norm_pair_curvature",
]


def _ns(xp, *arrays):
    return xp if xp is not None else array_namespace(*[a for a in arrays if a is not None])


def _lift(a, ndim: int, xp):
    """(n, w) or (n, 1) -> (n, 1, ..., 1, w) with ``ndim`` axes (per-example
    quantities broadcast against the tangent axes)."""
    if a.ndim == ndim:
        return a
    return xp.reshape(a, (a.shape[0],) + (1,) * (ndim - a.ndim) + (a.shape[-1],))


def _dot(a, b, xp):
    """Sum of ``a * b`` over the last axis."""
    return xp.sum(a * b, axis=-1)


def layer_norm_forward(z, eps: float = 1e-5, gamma=None, beta=None, *, xp=None):
    r"""Normalise ``z`` over its last axis.

    Parameters
    ----------
    z : (n, w) pre-normalisation features.
    eps : float, added to the (biased) variance, as torch.
    gamma, beta : (w,) or None
        Elementwise affine weight and bias (``None``: 1 and 0).

    Returns
    -------
    y : (n, w) ``gamma * xhat + beta``.
    xhat : (n, w) normalised features :math:`(z - \mu) r`.
    inv_std : (n, 1) :math:`r = (v + \varepsilon)^{-1/2}`.
    """
    xp = _ns(xp, z)
    mean = xp.mean(z, axis=-1, keepdims=True)
    c = z - mean
    var = xp.mean(c * c, axis=-1, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = c * inv_std
    y = xhat if gamma is None else xhat * gamma
    if beta is not None:
        y = y + beta
    return y, xhat, inv_std


def layer_norm_jacobian_apply(T, xhat, inv_std, *, xp=None):
    r""":math:`J\,t` for every tangent ``t`` in the last axis of ``T``.

    Parameters
    ----------
    T : (n, ..., w) tangents of ``z`` (any number of tangent axes).
    xhat : (n, w), inv_std : (n, 1) from :func:`layer_norm_forward`.

    Returns
    -------
    (n, ..., w) :math:`r\,(t - \bar t - a_t \hat x)`, the tangents of
    :math:`\hat x` (multiply by ``gamma`` for those of ``y``). As :math:`J`
    is symmetric this is also the adjoint :math:`J^\top t`.
    """
    xp = _ns(xp, T, xhat)
    w = xhat.shape[-1]
    xh = _lift(xhat, T.ndim, xp)
    r = _lift(inv_std, T.ndim, xp)
    a = _dot(T, xh, xp)[..., None] / w
    return r * (T - xp.mean(T, axis=-1, keepdims=True) - a * xh)


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


__all__ += ["layer_norm_param_adjoint"]


# --------------------------------------------------------------------------
# the engine's steps (carry layout of hessquik_core.carry), O(k·w) per tangent
# --------------------------------------------------------------------------


def _gamma_col(a, gamma):
    """``a`` scaled by γ on its last (feature) axis; ``None`` stays ``None``."""
    return a if (gamma is None or a is None) else a * gamma


def forward_step(xhat, inv_std, gamma, tangents, request, ops):
    r"""Tangents of ``z`` -> tangents of ``y`` (:class:`~hessquik_core.carry.Tangents`).

    ``tangents.jacobian`` is ``(n or 1, k, w)`` (the seed of a first layer is
    shared by the batch); the Hessian may be full ``(n, k, k, w)`` or packed
    ``(n, T, w)`` (``request.packing``). With :math:`\hat G_i = J G_i`,
    :math:`a_i = \hat x\cdot G_i/w`, :math:`\bar G_i` the feature mean and
    :math:`M_{ij} = r(G_i\cdot G_j - w\bar G_i\bar G_j - w a_i a_j)`:

    * :math:`\partial y_i = \gamma\odot\hat G_i`,
    * :math:`\partial^2 y_{ij} = \gamma\odot\bigl(J\,\partial^2 z_{ij}
      - r(a_i\hat G_j + a_j\hat G_i + \tfrac1w M_{ij}\hat x)\bigr)`,
    * the diagonal (:math:`i = j`) and the Laplacian (its sum over ``i``)
      from the same formula without forming the pairs.

    Every term is :math:`O(w)` per tangent or pair: the cost of a pointwise
    layer (no :math:`w\times w` block). Nothing it receives is modified.
    """
    xp = ops.xp
    w = xhat.shape[-1]
    r3 = inv_std[:, :, None]  # (n, 1, 1)
    G = tangents.jacobian  # (n|1, k, w)
    JG = layer_norm_jacobian_apply(G, xhat, inv_std, xp=xp)  # (n, k, w)
    a = _dot(G, xhat[:, None, :], xp) / w  # (n, k)
    mean = xp.mean(G, axis=-1)  # (n|1, k)
    Hf = Df = Lf = None
    if request.hessian:
        if request.packing is None:
            gram = xp.matmul(G, xp.matrix_transpose(G))  # (n|1, k, k)
            M = r3 * (gram - w * (mean[:, :, None] * mean[:, None, :]) - w * (a[:, :, None] * a[:, None, :]))
            Hf = -r3[..., None] * (
                a[:, :, None, None] * JG[:, None, :, :]
                + a[:, None, :, None] * JG[:, :, None, :]
                + (M / w)[..., None] * xhat[:, None, None, :]
            )
        else:
            rows, cols = request.packing.rows, request.packing.cols
            Gs, Gt = xp.take(G, rows, axis=1), xp.take(G, cols, axis=1)  # (n|1, T, w)
            a_s, a_t = xp.take(a, rows, axis=1), xp.take(a, cols, axis=1)  # (n, T)
            m_s, m_t = xp.take(mean, rows, axis=1), xp.take(mean, cols, axis=1)
            M = r3[..., 0] * (_dot(Gs, Gt, xp) - w * (m_s * m_t) - w * (a_s * a_t))  # (n, T)
            Hf = -r3 * (
                a_s[..., None] * xp.take(JG, cols, axis=1)
                + a_t[..., None] * xp.take(JG, rows, axis=1)
                + (M / w)[..., None] * xhat[:, None, :]
            )
        if tangents.hessian is not None:
            Hf = Hf + layer_norm_jacobian_apply(tangents.hessian, xhat, inv_std, xp=xp)
        Hf = _gamma_col(Hf, gamma)
    if request.diagonal or request.laplacian:
        Mii = r3[..., 0] * (_dot(G, G, xp) - w * (mean * mean) - w * (a * a))  # (n, k)
        D2 = -r3 * (2.0 * a[..., None] * JG + (Mii / w)[..., None] * xhat[:, None, :])  # (n, k, w)
        if request.diagonal:
            Df = D2
            if tangents.diagonal is not None:
                Df = Df + layer_norm_jacobian_apply(tangents.diagonal, xhat, inv_std, xp=xp)
            Df = _gamma_col(Df, gamma)
        if request.laplacian:
            Lf = xp.sum(D2, axis=1)
            if tangents.laplacian is not None:
                Lf = Lf + layer_norm_jacobian_apply(tangents.laplacian, xhat, inv_std, xp=xp)
            Lf = _gamma_col(Lf, gamma)
    return type(tangents)(_gamma_col(JG, gamma), Hf, Df, Lf)


def _add_diagonal(out, delta, ops):
    """``out + delta[..., None, None] * I`` for ``out : (n, k, w, w)`` (a fresh array);
    written in place through a strided view where the library allows it."""
    xp = ops.xp
    n, k, w = out.shape[0], out.shape[1], out.shape[-1]
    if ops.mutable and not ops.requires_grad(out):
        flat = ops.view(out, (n, k, w * w))
        if flat is not None:
            flat[..., :: w + 1] += delta[..., None]
            return out
    eye = xp.eye(w, dtype=out.dtype, device=_device_of(out))
    return out + delta[..., None, None] * eye


def backward_step(xhat, inv_std, gamma, adjoints, second, ops):
    r"""Adjoints of ``y`` -> adjoints of ``z`` (:class:`~hessquik_core.carry.Adjoints`).

    With :math:`\lambda = \gamma\odot dl` (``(n or 1, k, w)``) and
    :math:`C = \Gamma\,Dl\,\Gamma`:

    * :math:`dl_z = J\lambda`,
    * :math:`Dl_z = J C J - \tfrac rw\bigl(\hat x (J\lambda)^\top + (J\lambda)\hat x^\top
      + (\lambda\cdot\hat x)\,J\bigr)`.

    :math:`J = r(I - UU^\top)` with the two columns :math:`U = [\mathbf 1, \hat x]/\sqrt w`,
    so with :math:`C' = r^2 C`, :math:`A = C'U`, :math:`B = U^\top C'`,
    :math:`S = U^\top C' U`:
    :math:`JCJ = C' + U(S U^\top - B) - A U^\top`, and the own-curvature term is
    :math:`-\tfrac{r}{\sqrt w}(v t^\top + t v^\top) + \tfrac{r^2 (\lambda\cdot\hat x)}{w}(e e^\top - I)`
    (:math:`e, v` the columns of :math:`U`, :math:`t = J\lambda - \tfrac{r(\lambda\cdot\hat x)}{2w}\hat x`).
    All low-rank parts are one batched ``(w, 5) @ (5, w)`` product, so the
    step reads :math:`Dl` twice (two thin products) and writes the result
    once or twice: :math:`O(k w^2)` per example, against :math:`O(k w^3)`
    for the dense generic rule.
    """
    xp = ops.xp
    n, w = xhat.shape
    lam = _gamma_col(adjoints.gradient, gamma)  # (n|1, k, w)
    dlz = layer_norm_jacobian_apply(lam, xhat, inv_std, xp=xp)  # (n, k, w)
    if not second:
        return type(adjoints)(dlz)
    k = dlz.shape[1]
    sw = math.sqrt(w)
    r = inv_std[:, :, None]  # (n, 1, 1)
    lx = _dot(lam, xhat[:, None, :], xp)  # (n, k): λ·x̂
    e = xp.ones((n, 1, w), dtype=xhat.dtype, device=_device_of(xhat)) / sw
    v = xhat[:, None, :] / sw  # (n, 1, w)
    t = dlz - (r * lx[..., None] / (2.0 * w)) * xhat[:, None, :]  # (n, k, w)
    c_e = (r * r)[..., 0] * lx / w  # (n, k): coefficient of e eᵀ (and -I)
    ek, vk = xp.broadcast_to(e, (n, k, w)), xp.broadcast_to(v, (n, k, w))
    rows_e = c_e[..., None] * ek  # row of R paired with column e
    rows_v = -(r / sw) * t  # row paired with column v
    cols = [ek, vk, t]
    rows = [None, None, -(r / sw) * vk]  # the e and v rows are completed below
    Dl = adjoints.hessian
    base = None
    if Dl is not None:
        F = (inv_std * inv_std)[:, :, None, None]  # (n, 1, 1, 1): r²
        if gamma is not None:
            F = F * (gamma[:, None] * gamma)
        Cp = Dl * F  # C' = r² Γ Dl Γ, fresh
        U = xp.stack([e[:, 0, :], v[:, 0, :]], axis=-1)[:, None, :, :]  # (n, 1, w, 2)
        A = xp.matmul(Cp, U)  # (n, k, w, 2)
        B = xp.matmul(xp.matrix_transpose(U), Cp)  # (n, k, 2, w)
        S = xp.matmul(xp.matrix_transpose(U), A)  # (n, k, 2, 2)
        SUt = xp.matmul(S, xp.matrix_transpose(U))  # (n, k, 2, w)
        rows_e = rows_e + SUt[:, :, 0, :] - B[:, :, 0, :]
        rows_v = rows_v + SUt[:, :, 1, :] - B[:, :, 1, :]
        cols += [A[..., 0], A[..., 1]]
        rows += [-ek, -vk]
        base = Cp
    rows[0], rows[1] = rows_e, rows_v
    L = xp.stack(cols, axis=-1)  # (n, k, w, r)
    R = xp.stack(rows, axis=-2)  # (n, k, r, w)
    out = xp.matmul(L, R)
    if base is not None:
        out = base + out
    return type(adjoints)(dlz, _add_diagonal(out, -c_e, ops))


def backward_first(xhat, inv_std, gamma, adjoints, what, ops):
    r"""The trace (``what="trace"``, ``(n, k)``) or the diagonal (``"diagonal"``,
    ``(n, k, w)``) of :func:`backward_step`'s :math:`Dl_z`, without forming it.

    Row :math:`a` of :math:`J/r` is :math:`q_a = e_a - u - \hat x_a v`,
    :math:`u = \mathbf 1/w`, :math:`v = \hat x/w`, so with
    :math:`C = \Gamma Dl\Gamma`

    .. math::
        (JCJ)_{aa} = r^2\bigl(C_{aa} - (Cu + C^\top u)_a - \hat x_a (Cv + C^\top v)_a
        + u^\top C u + \hat x_a (u^\top C v + v^\top C u) + \hat x_a^2\, v^\top C v\bigr):

    four matrix-vector products with :math:`Dl` (:math:`O(k w^2)`, no
    ``(n, k, w, w)`` temporary). The own-curvature term contributes
    :math:`-\tfrac rw(2\hat x_a (J\lambda)_a + (\lambda\cdot\hat x) J_{aa})`,
    :math:`J_{aa} = r(1 - \tfrac1w - \hat x_a^2/w)`.
    """
    xp = ops.xp
    w = xhat.shape[-1]
    r = inv_std  # (n, 1)
    lam = _gamma_col(adjoints.gradient, gamma)
    dlz = layer_norm_jacobian_apply(lam, xhat, inv_std, xp=xp)  # (n, k, w)
    lx = _dot(lam, xhat[:, None, :], xp)  # (n, k)
    Jaa = r * (1.0 - 1.0 / w - xhat * xhat / w)  # (n, w)
    diag = -(r[:, :, None] / w) * (2.0 * xhat[:, None, :] * dlz + lx[:, :, None] * Jaa[:, None, :])
    Dl = adjoints.hessian
    if Dl is not None:
        n = xhat.shape[0]
        one = xp.ones((n, w), dtype=xhat.dtype, device=_device_of(xhat))
        g = one if gamma is None else one * gamma
        gu, gv = g / w, g * xhat / w  # γ ⊙ u, γ ⊙ v: (n, w)
        V = xp.stack([gu, gv], axis=-1)[:, None, :, :]  # (n, 1, w, 2)
        DV = xp.matmul(Dl, V)  # (n, k, w, 2): Dl (γu), Dl (γv)
        DtV = xp.matmul(xp.matrix_transpose(Dl), V)
        S = xp.matmul(xp.matrix_transpose(V), DV)  # (n, k, 2, 2): (γu)ᵀ Dl (γu), ...
        both = DV + DtV  # (n, k, w, 2)
        # diag of Dl (n, k, w): every (w+1)-th entry of the flattened block (no (w, w) mask)
        idx = xp.arange(0, w * w, w + 1, device=_device_of(Dl))
        dC = xp.take(xp.reshape(Dl, (*Dl.shape[:2], w * w)), idx, axis=-1)
        xa = xhat[:, None, :]
        core = (
            dC * (g * g)[:, None, :]
            - g[:, None, :] * (both[..., 0] + xa * both[..., 1])
            + S[:, :, 0, 0][..., None]
            + xa * (S[:, :, 0, 1] + S[:, :, 1, 0])[..., None]
            + xa * xa * S[:, :, 1, 1][..., None]
        )
        diag = diag + (r * r)[:, :, None] * core
    return xp.sum(diag, axis=-1) if what == "trace" else diag


def _device_of(a):
    from array_api_compat import device

    return device(a)


__all__ += ["backward_first", "backward_step", "forward_step"]

"""Reference rules of ``hessquik_core.rules.fourier`` used only by the tests.

Moved here from the package: the same recurrences written as functions of
separate arrays (instead of the carries and ``ops`` the package's rules
take), kept as independent references that the tests compare with the
engine's steps and with torch.func. The module also re-exports the package functions the tests call, so
``import _fourier_reference as R`` serves both.
"""

from __future__ import annotations

from array_api_compat import array_namespace

from hessquik_core.rules.fourier import (  # noqa: F401 - re-exported: the package's rules next to the references
    fourier_features_eval,
    fourier_features_matrix,
    periodic_embedding_eval,
    periodic_embedding_matrix,
)


def pointwise_linear_forward_tangents(G, H, K, s1, s2, *, xp=None):
    r"""Forward rule of :math:`y = \phi(uK)` per column.

    Parameters
    ----------
    G : (n, k, p) tangents of the input ``u`` (the identity ``(1, d, d)``
        broadcast, for an embedding applied to ``x`` itself).
    H : (n, k, k, p) or None, second tangents of ``u`` (``None`` or zeros at ``x``).
    K : (p, q); s1, s2 : (n, q) per-column :math:`\phi'`, :math:`\phi''`.

    Returns
    -------
    Gy : (n, k, q) :math:`s_1 \odot (GK)`.
    Hy : (n, k, k, q) :math:`s_2 \odot (GK)_i \odot (GK)_j + s_1 \odot (H_{ij} K)`
        (``H=None`` drops the second term but still returns the first).
    """
    xp = xp if xp is not None else array_namespace(G, K)
    T = G @ K
    Gy = s1[:, None, :] * T
    if s2 is None:
        return Gy, None
    Hy = s2[:, None, None, :] * (T[:, :, None, :] * T[:, None, :, :])
    if H is not None:
        Hy = Hy + s1[:, None, None, :] * (H @ K)
    return Gy, Hy


def pointwise_linear_forward_laplacian(G, L, K, s1, s2, *, xp=None):
    r"""Laplacian shortcut: ``L`` (n, p) the Laplacian of ``u`` (``None`` for
    ``u = x``) -> ``(Gy (n, k, q), Ly (n, q))``,
    :math:`L^y = s_2 \odot \sum_i (GK)_i^2 + s_1 \odot (LK)`."""
    xp = xp if xp is not None else array_namespace(G, K)
    T = G @ K
    Ly = s2 * xp.sum(T * T, axis=1)
    if L is not None:
        Ly = Ly + s1 * (L @ K)
    return s1[:, None, :] * T, Ly


def pointwise_linear_forward_diagonal(G, D, K, s1, s2, *, xp=None):
    r"""Hessian-diagonal shortcut: ``D`` (n, k, p) the second tangents
    :math:`H_{ii}` of ``u`` (``None`` for ``u = x``) -> ``(Gy, Dy)`` (n, k, q),
    :math:`D^y_i = s_2 \odot (GK)_i^2 + s_1 \odot (D_i K)`."""
    xp = xp if xp is not None else array_namespace(G, K)
    T = G @ K
    Dy = s2[:, None, :] * (T * T)
    if D is not None:
        Dy = Dy + s1[:, None, :] * (D @ K)
    return s1[:, None, :] * T, Dy


def pointwise_linear_backward(A, B, K, s1, s2, *, xp=None):
    r"""Backward rule of :math:`y = \phi(uK)` per column.

    Parameters
    ----------
    A : (n, q, m) :math:`\partial g_c/\partial y` of the rest of the network.
    B : (n, q, q, m) or None, :math:`\partial^2 g_c/\partial y^2`.
    K : (p, q); s1, s2 : (n, q).

    Returns
    -------
    Au : (n, p, m) :math:`K (s_1 \odot A)`.
    Bu : (n, p, p, m) or None,
        :math:`K\,[\,s_1 s_1^\top \odot B_c + \mathrm{diag}(s_2 \odot A_{:,c})\,]\,K^\top`.
    """
    xp = xp if xp is not None else array_namespace(A, K)
    SA = s1[:, :, None] * A  # (n, q, m)
    Au = K @ SA
    if B is None:
        return Au, None
    C = xp.permute_dims(B, (0, 3, 1, 2)) * (s1[:, None, :, None] * s1[:, None, None, :])  # (n, m, q, q)
    KT = xp.matrix_transpose(K)
    first = K @ C @ KT  # (n, m, p, p)
    W = xp.permute_dims(s2[:, :, None] * A, (0, 2, 1))  # (n, m, q)
    second = (K * W[:, :, None, :]) @ KT  # K diag(w) Kᵀ
    return Au, xp.permute_dims(first + second, (0, 2, 3, 1))

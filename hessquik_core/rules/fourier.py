r"""Fourier-feature and periodic input embeddings as pure array functions.

Both embeddings are a linear map followed by a *per-column* pointwise
function, :math:`y_j = \phi_j(z_j)`, :math:`z = xK` (no bias):

* **Random Fourier features** :math:`x \mapsto [\sin(2\pi xB), \cos(2\pi xB)]`,
  :math:`B \in \mathbb{R}^{d\times F}`, :math:`B_{ij} \sim N(0, \text{scale}^2)`:
  :math:`K = 2\pi[B, B]`, :math:`\phi = \sin` on the first :math:`F` columns and
  :math:`\cos` on the last :math:`F`.
* **Periodic embedding** of the coordinates :math:`S` (``axes``), periods
  :math:`P_i`, :math:`\omega_i = 2\pi/P_i`:
  :math:`x \mapsto [\cos(\omega_S \odot x_S), \sin(\omega_S \odot x_S), x_R]`, the
  other coordinates :math:`R` passed through in their order: :math:`K` has
  columns :math:`\omega_i e_i` (twice) and :math:`e_j`, :math:`\phi` is
  :math:`\cos`, :math:`\sin` and the identity. Every output is exactly
  :math:`P_i`-periodic in :math:`x_i`, which imposes periodic boundary
  conditions on any network that follows.

The derivatives of such a layer are those of ``SingleLayer`` with the
activation derivatives :math:`\phi'_j(z_j)`, :math:`\phi''_j(z_j)` taken per
column (``s1``, ``s2`` below); the ``pointwise_linear_*`` functions apply
them in forward mode (tangents, Hessian, Laplacian and diagonal shortcuts)
and backward mode. Shapes: ``n`` examples, ``d`` input features, ``q``
output features, ``k`` forward tangents, ``m`` backward directions.
Nothing here modifies its arguments.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace

__all__ = [
    "fourier_features_eval",
    "fourier_features_matrix",
    "periodic_embedding_eval",
    "periodic_embedding_matrix",
    "pointwise_linear_backward",
    "pointwise_linear_forward_diagonal",
    "pointwise_linear_forward_laplacian",
    "pointwise_linear_forward_tangents",
]

_TWO_PI = 2.0 * math.pi


def fourier_features_matrix(in_features: int, num_features: int, scale: float = 1.0, seed=None) -> np.ndarray:
    r"""The random matrix :math:`B` ``(in_features, num_features)``, entries
    :math:`N(0, \text{scale}^2)`, float64, from ``numpy.random.default_rng(seed)``
    (``seed`` may also be a ``Generator``)."""
    for key, v in (("in_features", in_features), ("num_features", num_features)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return scale * rng.standard_normal((int(in_features), int(num_features)))


def fourier_features_eval(x, B, order: int = 2, *, xp=None):
    r"""Value and per-column derivatives of :math:`[\sin(2\pi xB), \cos(2\pi xB)]`.

    Parameters
    ----------
    x : (n, d)
    B : (d, F), in ``x``'s namespace
    order : 0, 1 or 2

    Returns
    -------
    y : (n, 2F) :math:`[\sin z, \cos z]`, :math:`z = 2\pi xB`.
    s1 : (n, 2F) or None, :math:`[\cos z, -\sin z]`.
    s2 : (n, 2F) or None, :math:`-y`.
    K : (d, 2F) :math:`2\pi[B, B]`, so that :math:`\partial y/\partial x = K\,\mathrm{diag}(s_1)`.
    """
    xp = xp if xp is not None else array_namespace(x, B)
    K1 = _TWO_PI * B
    z = x @ K1
    sz, cz = xp.sin(z), xp.cos(z)
    K = xp.concat([K1, K1], axis=1)
    y = xp.concat([sz, cz], axis=1)
    s1 = xp.concat([cz, -sz], axis=1) if order >= 1 else None
    s2 = -y if order == 2 else None
    return y, s1, s2, K


def _axes(in_features: int, periods, axes) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) or in_features < 1:
        raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
    axes = tuple(range(in_features)) if axes is None else tuple(axes)
    if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
        raise TypeError(f"axes must be integers, got {axes!r}")
    if not axes or len(set(axes)) != len(axes) or not all(0 <= a < in_features for a in axes):
        raise ValueError(f"axes must be distinct indices in [0, {in_features}), got {axes!r}")
    periods = (periods,) * len(axes) if isinstance(periods, (int, float)) else tuple(periods)
    if len(periods) != len(axes) or not all(
        isinstance(p, (int, float)) and math.isfinite(p) and p > 0 for p in periods
    ):
        raise ValueError(
            f"periods must be {len(axes)} positive finite numbers (one per axis), got {periods!r}"
        )
    return tuple(int(a) for a in axes), tuple(float(p) for p in periods)


def periodic_embedding_matrix(in_features: int, periods, axes=None) -> np.ndarray:
    r"""The matrix :math:`K` ``(d, q)``, :math:`q = 2|S| + (d - |S|)`, of the
    periodic embedding: columns :math:`\omega_i e_i` for :math:`i \in S`
    (cos block, then the same for the sin block), then :math:`e_j` for
    :math:`j \notin S`. ``periods``: one positive number per axis, or one for all.
    """
    axes, periods = _axes(in_features, periods, axes)
    rest = [j for j in range(in_features) if j not in axes]
    s = len(axes)
    K = np.zeros((in_features, 2 * s + len(rest)))
    for c, (a, p) in enumerate(zip(axes, periods)):
        K[a, c] = K[a, s + c] = _TWO_PI / p
    for c, j in enumerate(rest):
        K[j, 2 * s + c] = 1.0
    return K


def periodic_embedding_eval(x, K, num_periodic: int, order: int = 2, *, xp=None):
    r"""Value and per-column derivatives of the periodic embedding.

    Parameters
    ----------
    x : (n, d)
    K : (d, q) from :func:`periodic_embedding_matrix`, in ``x``'s namespace
    num_periodic : int, :math:`|S|`
    order : 0, 1 or 2

    Returns
    -------
    y : (n, q) :math:`[\cos z_S, \sin z_S, x_R]`, :math:`z = xK`.
    s1 : (n, q) or None, :math:`[-\sin z_S, \cos z_S, 1]`.
    s2 : (n, q) or None, :math:`[-\cos z_S, -\sin z_S, 0]`.
    K : (d, q), returned for symmetry with :func:`fourier_features_eval`.
    """
    xp = xp if xp is not None else array_namespace(x, K)
    s = int(num_periodic)
    z = x @ K
    zs = z[:, :s]
    c, sn = xp.cos(zs), xp.sin(zs)
    rest = z[:, 2 * s :]
    y = xp.concat([c, xp.sin(z[:, s : 2 * s]), rest], axis=1)
    s1 = s2 = None
    if order >= 1:
        s1 = xp.concat([-sn, c, xp.ones_like(rest)], axis=1)
    if order == 2:
        s2 = xp.concat([-c, -sn, xp.zeros_like(rest)], axis=1)
    return y, s1, s2, K


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

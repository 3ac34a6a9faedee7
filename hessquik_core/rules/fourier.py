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
column (``s1``, ``s2`` below): the layers
(``hessquik_core.layers.fourier``) apply :mod:`hessquik_core.rules.affine`
with them (the reference ``pointwise_linear_*`` recurrences on separate arrays
are in ``tests/rules/_fourier_reference.py``). Shapes: ``n`` examples, ``d`` input features, ``q``
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

r"""The sweeps of :mod:`hessquik_core.curvature.kfac`: targets, output seeds, the two stacks per block.

:class:`Sweep` runs one forward sweep and backward sweeps (groups of directions) of value streams
(:mod:`hessquik_core.rules.streams`, as :mod:`hessquik_core.pinn` does) over
in-memory data and returns, per affine block, the layer inputs with the
column of ones :math:`\tilde a_n` ``(n, r)`` and the output adjoints
:math:`g_{nc}` ``(c, n, q)`` seeded with the columns of the ``fisher_type``
(:func:`_seeds`); :func:`grams` and :func:`corrections` reduce them.
Shared by the in-memory path and the Dask one (``_kfac_dask``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._array import as_plain_array, namespace_of
from ..backends import backend_for
from ..rules.streams import StreamSpec
from .kfac_ops import KroneckerBlock
from .losses import Loss, MSELoss
from .operators import _lib_name, _same_library

__all__ = ["Sweep", "corrections", "grams", "noise"]


def _targets(B, y):
    """``y`` in the call's library (labels stay integers, targets take x's dtype)."""
    y = as_plain_array(y, "y")
    xpy = namespace_of(y, "y")
    user_xp = B.inp.user_be.xp
    if not _same_library(xpy, user_xp) and not (
        backend_for(xpy).interchange and not backend_for(user_xp).interchange
    ):
        raise TypeError(
            f"y must be an array of the same library as x ({_lib_name(user_xp)}) or a NumPy array, "
            f"got {type(y).__module__}.{type(y).__name__}"
        )
    if xpy.isdtype(y.dtype, "integral"):
        dt = B.xp.int64
    elif xpy.isdtype(y.dtype, "real floating"):
        dt = B.dtype
    else:
        raise TypeError(f"y must hold integer class labels or floating targets, got dtype {y.dtype}")
    if _same_library(xpy, B.xp) and y.dtype == dt and not B.inp.converted:
        return y
    return B.be.convert(y, xp=B.xp, dtype=dt, device=B.device)


def _mse_scale(loss: Loss, m: int) -> float:
    """``h`` of :math:`H_n = hI` (1 for :class:`MSELoss`, torch's ``2/m`` or 2)."""
    c = getattr(loss, "_c", None)
    return float(c(m)) if c is not None else 1.0


def noise(loss: Loss, fisher_type: str, M: int, N: int, m: int, seed) -> np.ndarray | None:
    """The host draws of ``"mc"`` for all ``N`` examples: ``ε (M, N, m)`` (MSE) or uniforms ``(M, N, 1)``."""
    if fisher_type != "mc":
        return None
    rng = np.random.default_rng(seed)
    return rng.standard_normal((M, N, m)) if isinstance(loss, MSELoss) else rng.random((M, N, 1))


def directions(fisher_type: str, m: int, noise) -> int:
    """``c``: output directions per example (``m`` for type-2, ``M`` for MC, 1 for empirical)."""
    return m if fisher_type == "type-2" else 1 if fisher_type == "empirical" else noise.shape[0]


def _seeds(loss: Any, F, T, w: float, fisher_type: str, noise, xp, device, c0: int, c1: int):
    """Directions ``c0:c1`` ``(c1 - c0, N, m)`` of the output seeds whose backward sweeps give
    :math:`g_{nc}` (module docstring of ``hessquik_core.curvature.kfac``)."""
    N, m = F.shape
    dt = F.dtype
    if fisher_type == "empirical":
        # torch.nn.MSELoss("mean") also averages over the m outputs: its examples' likelihood is
        # exp(-‖f - y‖²) with weight w/m (curvlinops' convention), so κ = m multiplies w ∇ℓ∇ℓᵀ
        kappa = m if getattr(loss, "name", "") == "torch_mse" and loss.reduction == "mean" else 1
        return (math.sqrt(w * kappa) * loss._d1(F, T, xp))[None, ...]
    mse = isinstance(loss, MSELoss)
    if fisher_type == "type-2":
        rows = xp.eye(m, dtype=dt, device=device)[c0:c1, :]  # e_j for the columns j of this group
        if mse:
            return math.sqrt(w * _mse_scale(loss, m)) * xp.broadcast_to(rows[:, None, :], (c1 - c0, N, m))
        p, s = loss._softmax(F, xp), xp.sum(T, axis=-1)
        # column j of S_n = √p_j (e_j − p): S_n S_nᵀ = diag(p) − ppᵀ since Σ p = 1
        sq = xp.matrix_transpose(xp.sqrt(p)[:, c0:c1])  # (g, N)
        return sq[:, :, None] * (rows[:, None, :] - p[None, ...]) * xp.sqrt(w * s)[None, :, None]
    M = noise.shape[0]
    draws = noise[c0:c1, ...]
    if mse:  # ∇ℓ(f, f + ε/√h) = -√h ε
        return math.sqrt(w * _mse_scale(loss, m) / M) * xp.asarray(draws, dtype=dt, device=device)
    p, s = loss._softmax(F, xp), xp.sum(T, axis=-1)
    u = xp.asarray(draws, dtype=dt, device=device)
    cum = xp.cumulative_sum(p, axis=-1)  # (N, m)
    label = xp.sum(xp.astype(cum[None, ...] < u, xp.int64), axis=-1)  # (g, N): P(label = j) = p_j
    label = xp.minimum(label, xp.asarray(m - 1, dtype=xp.int64, device=device))
    hot = xp.astype(label[..., None] == xp.arange(m, dtype=xp.int64, device=device)[None, None, :], dt)
    return (p[None, ...] - hot) * xp.sqrt(w * s / M)[None, :, None]


#: bytes of seeds and backward stacks per group of output directions (the c directions of
#: type-2 with many classes, or of many MC samples, are swept in groups under it)
GROUP_BUDGET = 2**28


class Sweep:
    """One forward sweep over in-memory ``x, y`` and backward sweeps over groups of directions.

    ``w``: the loss's factor over the whole data (``None``: from these ``y``); ``noise``: the
    ``"mc"`` draws of these examples; ``keys``: the selected parameter keys, in layout order.

    Attributes: ``B`` (the bound network), ``blocks``, ``inputs`` (per block
    :math:`\tilde a` ``(n, r)``); :meth:`groups` yields per block :math:`g` ``(c_g, n, q)``.
    """

    def __init__(self, net, x, y, loss, w, fisher_type, noise, keys, backend) -> None:
        from ..pinn._streams import Bound  # the stream sweeps of hq.pinn (value streams only)

        B = self.B = Bound(net, x, backend)
        spec = StreamSpec(0, False)
        B.check_supported(spec)
        xp = B.xp
        Y = B.x[None, ...]
        self.caches = []
        for leaf, P in zip(B.leaves, B.params):
            Y, cache = leaf.stream_forward(Y, P, spec, B.be)
            self.caches.append(cache)
        F = Y[0, ...]
        N, m = F.shape
        yc = _targets(B, y)
        if yc.ndim < 1 or yc.shape[0] != N:
            raise ValueError(f"y must have {N} rows (one per example), got shape {tuple(yc.shape)}")
        T = loss._targets(N, m, B.dtype, yc, xp)
        w = float(loss.weight_for(yc)) if w is None else w
        self._seed_args = (loss, F, T, w, fisher_type, noise, xp, B.device)
        self.c = directions(fisher_type, m, noise)
        width = max([m] + [leaf.out_features for leaf in B.leaves])
        item = 4 if "32" in str(B.dtype) else 8
        self.group = max(1, min(self.c, GROUP_BUDGET // max(1, N * (m + 2 * width) * item)))
        selected = dict.fromkeys(keys)
        offsets, off = {}, 0
        for k, size in zip(B.layout.keys, B.layout.sizes):
            if k in selected:
                offsets[k] = off
                off += size
        self.blocks, self.inputs, self._which = [], [], []
        first = self._backward(0, self.group)
        for i, (slots, out) in enumerate(zip(B.slots, first)):
            Ys, Zbar = out["K"]
            names = {name: B.layout.keys[j] for name, j in slots}
            take = [(k, k in selected) for k in (names["K"], names.get("b"))]
            bkeys = tuple(k for k, t in take if t and k is not None)
            if not bkeys:
                continue
            cols = [Ys[0, ...]] if take[0][1] else []
            if take[1][1]:  # the bias: the weight of a constant input 1
                cols.append(xp.ones((N, 1), dtype=B.dtype, device=B.device))
            a = cols[0] if len(cols) == 1 else xp.concat(cols, axis=1)
            self.blocks.append(KroneckerBlock(i, bkeys, offsets[bkeys[0]], a.shape[1], Zbar.shape[-1]))
            self.inputs.append(a)
            self._which.append(i)
        self._first: Any = first

    def _backward(self, c0: int, c1: int):
        from ..pinn._streams import backward

        seeds = _seeds(*self._seed_args, c0, c1)
        return backward(self.B, self.caches, seeds[:, None, ...], "stacks")

    def groups(self):
        """Per group of directions, the list of :math:`g` ``(c_g, n, q)`` of the blocks."""
        for c0 in range(0, self.c, self.group):
            outs = (
                self._first
                if c0 == 0 and self._first is not None
                else self._backward(c0, min(c0 + self.group, self.c))
            )
            yield [outs[i]["K"][1][:, 0, ...] for i in self._which]
        if self.group < self.c:  # several groups: keep none, a second pass recomputes them all
            self._first = None


def grams(sw: Sweep):
    """Per block the unnormalised :math:`(\\sum_n\\tilde a_n\\tilde a_n^\\top, \\sum_{nc}g_{nc}g_{nc}^\\top)`."""
    xp = sw.B.xp
    Bs: list[Any] = [None] * len(sw.blocks)
    for Gs in sw.groups():
        for j, G in enumerate(Gs):
            c, n, q = G.shape
            Gf = xp.reshape(G, (c * n, q))
            S = xp.matrix_transpose(Gf) @ Gf
            Bs[j] = S if Bs[j] is None else Bs[j] + S
    return [(xp.matrix_transpose(a) @ a, S) for a, S in zip(sw.inputs, Bs)]


def corrections(sw: Sweep, vectors):
    """Per block :math:`\\sum_{n,c}(u_i^\\top\\tilde a_n)^2(v_j^\\top g_{nc})^2` ``(r, q)``."""
    xp = sw.B.xp
    pg: list[Any] = [None] * len(sw.blocks)
    for Gs in sw.groups():
        for j, (G, (_, Ub)) in enumerate(zip(Gs, vectors)):
            t = xp.sum((G @ Ub) ** 2, axis=0)  # (n, q): Σ_c (v_jᵀ g_nc)²
            pg[j] = t if pg[j] is None else pg[j] + t
    return [xp.matrix_transpose((a @ Ua) ** 2) @ t for a, (Ua, _), t in zip(sw.inputs, vectors, pg)]

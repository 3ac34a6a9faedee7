r"""Block-diagonal Kronecker operators: KFAC, EKFAC and their damped inverses.

Each affine block of :math:`\theta` is :math:`\mathrm{vec}(\tilde M)` with
:math:`\tilde M = [K; b]` ``(r, q)`` flattened row-major (``r = p + 1`` with a
bias, ``p`` without), so that a Kronecker product :math:`A\otimes B`
(``A : (r, r)``, ``B : (q, q)``) acts on the block as
:math:`X \mapsto A X B` (``X`` the block reshaped to ``(r, q)``, :math:`B`
symmetric). With the eigendecompositions :math:`A = U_A\Lambda_A U_A^\top`,
:math:`B = U_B\Lambda_B U_B^\top` every operator here is, per block,

.. math::
    X \mapsto U_A\big[(U_A^\top X U_B)\odot D\big]U_B^\top,\qquad D \in \mathbb{R}^{r\times q},

with :math:`D = \lambda_A\lambda_B^\top` (KFAC), the corrected eigenvalues
(EKFAC), or the reciprocal of a damped version of either (the inverses):
:class:`KroneckerEigenOperator`. Cost per block and column:
:math:`O(r^2q + rq^2)`; memory: the factors, never a ``(P, P)`` array.

(Over this package's ~400-line guide: three operator classes and the blocks they
share, most of it the docstrings that state each operator's maths and damping
convention; splitting them would separate KFAC from the inverses it builds.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .operators import LinearOperatorBase

__all__ = ["EKFACOperator", "KFACOperator", "KroneckerBlock", "KroneckerEigen", "KroneckerEigenOperator"]


@dataclass(frozen=True)
class KroneckerBlock:
    """Where one affine block lives in :math:`\\theta` (the operator's parameter order).

    Attributes
    ----------
    layer : int
        Index of the layer in the network's leaves.
    keys : tuple of str
        Its parameter keys in the operator's layout (``("0.K", "0.b")``, or one of them).
    offset : int
        Start of the block in :math:`\\theta`.
    rows : int
        ``r``: rows of :math:`\\tilde M` (``p + 1`` with the bias, ``p`` without, 1 for a bias alone).
    cols : int
        ``q``: the layer's width.
    """

    layer: int
    keys: tuple[str, ...]
    offset: int
    rows: int
    cols: int

    @property
    def size(self) -> int:
        """``r·q``, the entries of the block."""
        return self.rows * self.cols


@dataclass(frozen=True)
class KroneckerEigen:
    r"""The eigendecomposition of one block: :math:`\sum_{ij} D_{ij}\,(u_i\otimes v_j)(u_i\otimes v_j)^\top`.

    Attributes
    ----------
    values : array of shape (r, q)
        The eigenvalue of the eigenvector :math:`u_i\otimes v_j` is ``values[i, j]``.
    a_vectors : array of shape (r, r)
        :math:`U_A` (columns :math:`u_i`).
    b_vectors : array of shape (q, q)
        :math:`U_B` (columns :math:`v_j`).
    a_values, b_values : array of shape (r,) and (q,), or None
        :math:`\lambda_A`, :math:`\lambda_B` for KFAC (``values`` is their outer product);
        ``None`` for EKFAC, whose ``values`` are the corrected ones.
    """

    values: Any
    a_vectors: Any
    b_vectors: Any
    a_values: Any = None
    b_values: Any = None


def _as_blocks(xp, V, blocks):
    """``V : (P, k)`` as one ``(k, r, q)`` array per block."""
    out = []
    for b in blocks:
        X = xp.reshape(V[b.offset : b.offset + b.size, :], (b.rows, b.cols, V.shape[1]))
        out.append(xp.permute_dims(X, (2, 0, 1)))
    return out


def _from_blocks(xp, Ys):
    """Per-block ``(k, r, q)`` back to ``(P, k)`` (blocks in order, covering θ)."""
    parts = [xp.reshape(xp.permute_dims(Y, (1, 2, 0)), (Y.shape[1] * Y.shape[2], Y.shape[0])) for Y in Ys]
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def _kron(xp, A, B):
    """:math:`A\\otimes B` ``(r q, r q)`` (row-major ``vec``)."""
    r, q = A.shape[0], B.shape[0]
    return xp.reshape(A[:, None, :, None] * B[None, :, None, :], (r * q, r * q))


def _block_diag(xp, mats, P, dtype, device):
    out = xp.zeros((P, P), dtype=dtype, device=device)
    rows = []
    off = 0
    for M in mats:
        s = M.shape[0]
        left = xp.zeros((s, off), dtype=dtype, device=device)
        right = xp.zeros((s, P - off - s), dtype=dtype, device=device)
        rows.append(xp.concat([left, M, right], axis=1))
        off += s
    return xp.concat(rows, axis=0) if rows else out


class _KroneckerBase(LinearOperatorBase):
    """Blocks and the fisher type shared by the Kronecker operators."""

    def __init__(self, blocks: list[KroneckerBlock], xp: Any, dtype: Any, device: Any, info: dict) -> None:
        super().__init__(sum(b.size for b in blocks), xp, dtype, device)
        self.blocks = list(blocks)
        #: how the factors were made: fisher_type, loss, number of examples, mc_samples, seed
        self.info = dict(info)

    def _default_block(self) -> int:
        return self.size  # products are cheap: the dense matrix in one product


class KroneckerEigenOperator(_KroneckerBase):
    r"""Per block :math:`X \mapsto U_A[(U_A^\top X U_B)\odot D]U_B^\top` (module docstring).

    EKFAC (:class:`EKFACOperator`) and every damped inverse of
    :meth:`KFACOperator.inverse` and :meth:`EKFACOperator.inverse` are of this form.

    Parameters
    ----------
    blocks : list of KroneckerBlock
        Covering :math:`\theta` in order.
    eigen : list of KroneckerEigen
        One per block: ``values`` is :math:`D` ``(r, q)``.
    xp, dtype, device
        The arrays' library, dtype and device.
    info : dict
        Provenance (fisher type, loss, damping, ...).
    """

    def __init__(
        self,
        blocks: list[KroneckerBlock],
        eigen: list[KroneckerEigen],
        xp: Any,
        dtype: Any,
        device: Any,
        info: dict,
    ) -> None:
        super().__init__(blocks, xp, dtype, device, info)
        self.eigen = list(eigen)

    def _matmat(self, V):
        xp = self.xp
        Ys = []
        for X, e in zip(_as_blocks(xp, V, self.blocks), self.eigen):
            Ua, Ub = e.a_vectors, e.b_vectors
            Z = xp.matrix_transpose(Ua) @ X @ Ub
            Ys.append(Ua @ (Z * e.values[None, ...]) @ xp.matrix_transpose(Ub))
        return _from_blocks(xp, Ys)

    def trace(self) -> Any:
        r""":math:`\sum_{\text{blocks}}\sum_{ij} D_{ij}`.

        Returns
        -------
        0-d array
        """
        return sum((self.xp.sum(e.values) for e in self.eigen[1:]), self.xp.sum(self.eigen[0].values))

    def eigendecomposition(self, *, dense: bool = False) -> Any:
        r"""The eigenpairs, per block or as dense arrays.

        Parameters
        ----------
        dense : bool, default False
            ``True``: ``(values (P,), vectors (P, P))`` in layout order, the eigenvector
            of ``values[o + i q + j]`` being :math:`u_i\otimes v_j` (not sorted); forms
            a ``(P, P)`` array.

        Returns
        -------
        list of KroneckerEigen, or tuple of arrays
        """
        if not dense:
            return list(self.eigen)
        xp = self.xp
        vals = xp.concat([xp.reshape(e.values, (-1,)) for e in self.eigen])
        vecs = [_kron(xp, e.a_vectors, e.b_vectors) for e in self.eigen]
        return vals, _block_diag(xp, vecs, self.size, self.array_dtype, self.device)

    def to_dense(self, *, block_size: int | None = None, progress: bool | None = None) -> Any:
        """The ``(P, P)`` block-diagonal matrix :math:`Q\\,\\mathrm{diag}(D)\\,Q^\\top`.

        Parameters
        ----------
        block_size, progress
            Accepted for the common interface; unused (formed from the factors).

        Returns
        -------
        array of shape (P, P)
        """
        xp = self.xp
        mats = []
        for e in self.eigen:
            Q = _kron(xp, e.a_vectors, e.b_vectors)
            mats.append((Q * xp.reshape(e.values, (-1,))[None, :]) @ xp.matrix_transpose(Q))
        return _block_diag(xp, mats, self.size, self.array_dtype, self.device)


def _check_damping(damping: Any, allow_pair: bool) -> tuple[float, float]:
    pair = isinstance(damping, tuple)
    vals = damping if pair else (damping, damping)
    if pair and (not allow_pair or len(vals) != 2):
        raise ValueError(f"damping may be a pair (δ_A, δ_B) only with heuristic=None, got {damping!r}")
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise ValueError(f"damping must be a finite number >= 0 (or a pair of them), got {damping!r}")
        out.append(float(v))
    return out[0], out[1]


def _reciprocal(xp, den, what: str):
    """``1/den`` after refusing a (numerically) singular damped block."""
    lo, hi = float(xp.min(den)), float(xp.max(den))
    eps = 1.2e-7 if "32" in str(den.dtype) else 2.3e-16
    if not (lo > den.shape[0] * den.shape[1] * eps * max(hi, 0.0)):
        raise ValueError(
            f"{what}: the damped block is singular (smallest damped eigenvalue {lo:.3g}, largest {hi:.3g}); "
            f"pass damping > 0"
        )
    return 1.0 / den


class KFACOperator(_KroneckerBase):
    r"""KFAC: per block :math:`A\otimes B`, applied as :math:`X \mapsto AXB` (:func:`kfac_operator`).

    Parameters
    ----------
    blocks : list of KroneckerBlock
    factors : list of (A, B)
        ``A : (r, r)``, ``B : (q, q)`` per block, symmetric positive semi-definite.
    xp, dtype, device
        The arrays' library, dtype and device.
    info : dict
        Provenance.
    """

    def __init__(
        self,
        blocks: list[KroneckerBlock],
        factors: list[tuple[Any, Any]],
        xp: Any,
        dtype: Any,
        device: Any,
        info: dict,
    ) -> None:
        super().__init__(blocks, xp, dtype, device, info)
        self.factors = list(factors)
        self._eig: list[KroneckerEigen] | None = None

    def _matmat(self, V):
        xp = self.xp
        Ys = [A @ X @ B for X, (A, B) in zip(_as_blocks(xp, V, self.blocks), self.factors)]
        return _from_blocks(xp, Ys)

    def trace(self) -> Any:
        r""":math:`\sum_\ell \operatorname{tr}A_\ell\,\operatorname{tr}B_\ell`.

        Returns
        -------
        0-d array
        """
        lin = self.xp.linalg
        return sum(
            (lin.trace(A) * lin.trace(B) for A, B in self.factors[1:]),
            lin.trace(self.factors[0][0]) * lin.trace(self.factors[0][1]),
        )

    def eigendecomposition(self, *, dense: bool = False) -> Any:
        r"""Eigenpairs from those of the factors.

        :math:`(A\otimes B)(u_i\otimes v_j) = \lambda_{A,i}\lambda_{B,j}\,u_i\otimes v_j`.

        Parameters
        ----------
        dense : bool, default False
            As for :meth:`KroneckerEigenOperator.eigendecomposition`.

        Returns
        -------
        list of KroneckerEigen, or tuple of arrays
        """
        return KroneckerEigenOperator(
            self.blocks, self._eigen(), self.xp, self.array_dtype, self.device, self.info
        ).eigendecomposition(dense=dense)

    def _eigen(self) -> list[KroneckerEigen]:
        if self._eig is None:
            lin = self.xp.linalg
            out = []
            for A, B in self.factors:
                la, Ua = lin.eigh(A)
                lb, Ub = lin.eigh(B)
                out.append(KroneckerEigen(la[:, None] * lb[None, :], Ua, Ub, la, lb))
            self._eig = out
        return self._eig

    def to_dense(self, *, block_size: int | None = None, progress: bool | None = None) -> Any:
        """The ``(P, P)`` block-diagonal matrix of the :math:`A_\\ell\\otimes B_\\ell`.

        Parameters
        ----------
        block_size, progress
            Accepted for the common interface; unused (formed from the factors).

        Returns
        -------
        array of shape (P, P)
        """
        xp = self.xp
        mats = [_kron(xp, A, B) for A, B in self.factors]
        return _block_diag(xp, mats, self.size, self.array_dtype, self.device)

    def inverse(
        self, damping: Any = 0.0, *, heuristic: str | None = "exact", min_damping: float = 1e-8
    ) -> KroneckerEigenOperator:
        r"""The damped inverse, matrix-free, from the factors' eigendecompositions.

        * ``heuristic="exact"``: :math:`(A\otimes B + \delta I)^{-1}`, per block
          :math:`D = 1/(\lambda_A\lambda_B^\top + \delta)`;
        * ``"pi"`` (Martens & Grosse 2015, §6.3):
          :math:`(A + \pi\sqrt\delta I)^{-1}\otimes(B + \sqrt\delta/\pi\, I)^{-1}`,
          :math:`\pi = \sqrt{(\operatorname{tr}A/r)/(\operatorname{tr}B/q)}`, each
          factor's damping at least ``min_damping`` (curvlinops' convention);
        * ``None``: :math:`(A + \delta_A I)^{-1}\otimes(B + \delta_B I)^{-1}`,
          ``damping`` a number (both) or a pair ``(δ_A, δ_B)``.

        Parameters
        ----------
        damping : float or tuple of float, default 0.0
            :math:`\delta \ge 0`; a singular damped block raises ``ValueError``.
        heuristic : {"exact", "pi", None}
        min_damping : float, default 1e-8
            Floor of each factor's damping for ``"pi"``.

        Returns
        -------
        KroneckerEigenOperator
            Same blocks, library, dtype and device; ``@``, ``to_dense``, ``trace``, ...
        """
        if heuristic not in ("exact", "pi", None):
            raise ValueError(f"heuristic must be 'exact', 'pi' or None, got {heuristic!r}")
        da, db = _check_damping(damping, heuristic is None)
        xp = self.xp
        out = []
        for (A, B), e in zip(self.factors, self._eigen()):
            if heuristic == "exact":
                den = e.values + da
            else:
                if heuristic == "pi":
                    ta = float(xp.linalg.trace(A)) / A.shape[0]
                    tb = float(xp.linalg.trace(B)) / B.shape[0]
                    if ta >= 0.0 and tb > 0.0:
                        pi, root = math.sqrt(ta / tb), math.sqrt(da)
                        da_, db_ = max(root * pi, min_damping), max(root / pi, min_damping)
                    else:
                        da_, db_ = da, db
                else:
                    da_, db_ = da, db
                den = (e.a_values + da_)[:, None] * (e.b_values + db_)[None, :]
            out.append(replace(e, values=_reciprocal(xp, den, "KFACOperator.inverse")))
        info = {**self.info, "damping": damping, "heuristic": heuristic}
        return KroneckerEigenOperator(self.blocks, out, xp, self.array_dtype, self.device, info)


class EKFACOperator(KroneckerEigenOperator):
    r"""EKFAC: KFAC's eigenbasis with corrected eigenvalues (:func:`ekfac_operator`).

    Parameters
    ----------
    blocks : list of KroneckerBlock
    eigen : list of KroneckerEigen
        ``values`` the corrected eigenvalues :math:`\Lambda` ``(r, q)``.
    factors : list of (A, B)
        KFAC's factors, whose eigenvectors are the basis.
    xp, dtype, device, info
        As for :class:`KroneckerEigenOperator`.
    """

    def __init__(
        self,
        blocks: list[KroneckerBlock],
        eigen: list[KroneckerEigen],
        factors: list[tuple[Any, Any]],
        xp: Any,
        dtype: Any,
        device: Any,
        info: dict,
    ) -> None:
        super().__init__(blocks, eigen, xp, dtype, device, info)
        self.factors = list(factors)

    def inverse(
        self, damping: Any = 0.0, *, heuristic: str | None = "exact", min_damping: float = 1e-8
    ) -> KroneckerEigenOperator:
        r""":math:`(\mathrm{EKFAC} + \delta I)^{-1}`: per block :math:`D = 1/(\Lambda + \delta)`.

        Parameters
        ----------
        damping : float, default 0.0
            :math:`\delta \ge 0`.
        heuristic : {"exact"}
            The only damping EKFAC has (its eigenvalues do not factor).
        min_damping : float
            Unused (the common signature).

        Returns
        -------
        KroneckerEigenOperator
        """
        if heuristic != "exact":
            raise ValueError(
                f"EKFAC damps its eigenvalues: heuristic must be 'exact', got {heuristic!r} "
                "(factored damping needs KFAC's factors: kfac_operator(...).inverse(heuristic='pi'))"
            )
        d, _ = _check_damping(damping, False)
        out = [
            replace(e, values=_reciprocal(self.xp, e.values + d, "EKFACOperator.inverse")) for e in self.eigen
        ]
        info = {**self.info, "damping": damping, "heuristic": heuristic}
        return KroneckerEigenOperator(self.blocks, out, self.xp, self.array_dtype, self.device, info)

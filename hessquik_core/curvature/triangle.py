r"""The dense ``(P, P)`` curvature matrix from the layer blocks on and below the diagonal.

A unit direction :math:`e_c` in the parameters of layer (leaf) ``j`` is zero
on the layers before it, so its R-pass needs no work there: the forward
R-pass starts at layer ``j`` (:math:`Ru = 0` at its input) and, since only
the rows of layers :math:`i \ge j` are kept, the backward R-pass stops at
layer ``j``. The row blocks :math:`H_{j,\ge j}` of all layers give the whole
matrix by :math:`H_{ij} = H_{ji}^\top`; of a diagonal block :math:`H_{jj}`
one triangle is kept and mirrored, so every entry is one exact product and
the result is exactly symmetric.
"""

from __future__ import annotations

from .._progress import progress_bar
from .operators import _check_batch_size

__all__ = ["symmetric_dense"]


def symmetric_dense(op, block_size, progress):
    """:meth:`CurvatureOperator.to_dense` with ``symmetric=True``: row blocks
    ``H[a_j:b_j, a_j:]`` per leaf ``j``, the rest of each row block from the transposes."""
    pb, B = op.problem, op.problem.B
    xp, P = B.xp, pb.size
    bs = op.block_size if block_size is None else _check_batch_size(block_size, P)
    ranges = []  # (leaf, a, b): the leaves that own parameters and their range in θ
    for j, slots in enumerate(B.slots):
        if slots:
            ranges.append(
                (j, B.leaf_offset(j), B.layout.offsets[slots[-1][1]] + B.layout.sizes[slots[-1][1]])
            )
    total = sum(-(-(b - a) // bs) for _, a, b in ranges)
    rows = []  # rows[t] = H[a_t:b_t, a_t:]
    with progress_bar(progress, total=total, desc="dense matrix", unit="block") as bar:
        for j, a, b in ranges:
            blocks = []
            for c in range(a, b, bs):
                k = min(bs, b - c)
                # directions e_c .. e_{c+k-1} as rows (k, P), zero outside leaf j
                E = xp.eye(k, P, k=c, dtype=B.dtype, device=B.device)
                blocks.append(pb.apply(E, op.kind, start=j))  # (k, P - a) = H[c:c+k, a:]
                bar.update()
            R = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
            # the diagonal block: keep one triangle (each entry an exact product), mirror it
            D = xp.tril(R[:, : b - a])
            D = D + xp.matrix_transpose(xp.tril(D, k=-1))
            rows.append(xp.concat([D, R[:, b - a :]], axis=1) if b < P else D)
    out = []
    for t, (_, a, b) in enumerate(ranges):
        # H[a:b, :a] = (H[:a, a:b])ᵀ, read from the row blocks of the earlier leaves
        left = [
            xp.matrix_transpose(rows[s][:, a - a_s : b - a_s]) for s, (_, a_s, _) in enumerate(ranges[:t])
        ]
        out.append(xp.concat([*left, rows[t]], axis=1) if left else rows[t])
    return B.to_user(out[0] if len(out) == 1 else xp.concat(out, axis=0))

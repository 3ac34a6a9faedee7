r"""KFAC and EKFAC of an output loss (MSE, cross-entropy), AD-free.

For :math:`C = w\sum_n\ell(f(x_n;\theta), y_n)` and an affine block
:math:`z = u K + b` of a dense or residual layer (``K : (p, q)``), the block of the
generalised Gauss–Newton matrix is, with :math:`\tilde a_n = [u_n; 1]` ``(p+1,)``
(the bias is the weight of a constant input 1, so :math:`[K; b]` is one
``(p+1, q)`` matrix, flattened row-major: ``K`` then ``b``, the layout's order) and
:math:`J_n = \partial f_n/\partial z_n` ``(m, q)``,

.. math::
    G_\ell = w\sum_n (\tilde a_n\tilde a_n^\top)\otimes(J_n^\top H_n J_n),
    \qquad H_n = \nabla_f^2\ell_n = S_nS_n^\top.

KFAC ("expand"; one output per example, so "reduce" is the same) replaces the
mean of the Kronecker products by the Kronecker product of the means:

.. math::
    G_\ell \approx A\otimes B,\qquad A = \frac1N\sum_n\tilde a_n\tilde a_n^\top,\qquad
    B = w\sum_n\sum_c g_{nc}g_{nc}^\top,\quad g_{nc} = J_n^\top s_{nc},

with the columns :math:`s_{nc}` of, per ``fisher_type``:

* ``"type-2"``: :math:`S_n`, an exact square root of :math:`H_n` (MSE:
  :math:`\sqrt h\,I` for :math:`H_n = hI`; cross-entropy:
  :math:`\sqrt{s_n}(\mathrm{diag}\sqrt{p_n} - p_n\sqrt{p_n}^\top)`), ``m`` backward directions (one sweep, or groups);
* ``"mc"``: :math:`\nabla_f\ell(f_n,\hat y_{nk})/\sqrt M` for ``M = mc_samples`` labels drawn
  from the model (MSE: :math:`\hat y = f + \varepsilon/\sqrt h`; cross-entropy:
  :math:`\hat y\sim\mathrm{softmax}(f_n)`, weighted by :math:`s_n`), whose expectation is the type-2 :math:`B`;
* ``"empirical"``: :math:`\nabla_f\ell(f_n, y_n)` (the true labels), times :math:`\sqrt m`
  for ``torch.nn.MSELoss(reduction="mean")``, whose mean runs over the ``N·m`` entries (so
  an example's likelihood is :math:`e^{-\lVert f - y\rVert^2}` with weight :math:`w/m`, as curvlinops has it).

``w`` (``1/N`` for ``"mean"``) sits in :math:`B`, as in curvlinops, whose
``KFACLinearOperator(..., separate_weight_and_bias=False)`` gives the same matrix.
EKFAC (George et al. 2018) keeps the eigenbasis
:math:`U_A\otimes U_B` of KFAC and replaces its eigenvalues by the diagonal
of the per-example second moment in that basis,

.. math::
    \Lambda_{ij} = \sum_{n,c}\big(u_i^\top\tilde a_n\big)^2\big(v_j^\top g_{nc}\big)^2,

which for ``"type-2"`` is exactly :math:`\mathrm{diag}(Q^\top G_\ell Q)`, :math:`Q = U_A\otimes U_B`.

Cost: one forward sweep, backward sweeps with ``c`` directions in all (``m`` for
type-2, ``M`` for MC, 1 for empirical), :math:`O(N(p^2 + cq^2))` per layer for the factors and
:math:`O(p^3 + q^3)` for their eigendecompositions (EKFAC, inverses). Memory: the
directions are swept in groups whose seeds and stacks, :math:`O(N c_g (m + q))`, fit
``_kfac_sweep.GROUP_BUDGET`` (256 MiB; one group unless ``c`` is large), and
:math:`O(p^2 + q^2)` per layer. EKFAC sweeps the groups a second time when there are several.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

from .._array import namespace_of
from .._dask_hook import chunked_plugin
from ..layers.dense import SingleLayer
from ..layers.resnet import ResnetLayer
from ._kfac_sweep import Sweep, corrections, grams, noise
from .kfac_ops import EKFACOperator, KFACOperator, KroneckerEigen
from .layout import _check_torch_dtype, _network, parameter_layout
from .losses import CrossEntropyLoss, MSELoss, get_loss
from .selection import resolve_params

__all__ = ["ekfac_operator", "kfac_operator"]

FISHER_TYPES = ("type-2", "mc", "empirical")


def _check_args(fisher_type, mc_samples, seed):
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
    if fisher_type != "mc" and mc_samples != 1:
        raise ValueError(
            f"mc_samples={mc_samples} is only for fisher_type='mc', got fisher_type={fisher_type!r}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")


def _check_layers(net) -> None:
    for i, leaf in enumerate(net._leaves()):
        if not isinstance(leaf, (SingleLayer, ResnetLayer)):
            raise ValueError(
                f"KFAC is defined here for dense (SingleLayer) and residual (ResnetLayer) layers; layer {i} "
                f"is {type(leaf).__name__}: use hq.curvature.ggn_operator (exact Gauss–Newton products) instead"
            )


def _build(net, x, y, loss, fisher_type, mc_samples, seed, params, backend, ekfac):
    """The blocks, factors (and EKFAC's eigenbasis and corrections) in ``x``'s library."""
    _check_args(fisher_type, mc_samples, seed)
    original, net = net, _network(net)
    _check_torch_dtype(original, x)
    loss = get_loss(loss)
    if not isinstance(loss, (MSELoss, CrossEntropyLoss)):  # pragma: no cover - get_loss returns these
        raise TypeError(f"loss must be MSE or cross-entropy, got {loss!r}")
    _check_layers(net)  # before any work
    layout, _ = resolve_params(original, parameter_layout(net), params)
    M = int(mc_samples)
    info = {"fisher_type": fisher_type, "loss": repr(loss), "mc_samples": M, "seed": seed}
    if chunked_plugin(x, y) is not None:
        from ._kfac_dask import build_chunked

        return build_chunked(net, x, y, loss, fisher_type, M, seed, layout.keys, backend, ekfac, info)
    N = int(x.shape[0]) if getattr(x, "ndim", 0) == 2 else 0
    draws = noise(loss, fisher_type, M, N, net.out_features, seed)
    sw = Sweep(net, x, y, loss, None, fisher_type, draws, layout.keys, backend)
    B, xp = sw.B, sw.B.xp
    factors = [(Sa / N, Sg) for Sa, Sg in grams(sw)]
    out = {"blocks": sw.blocks, "info": {**info, "N": N}, "x": B.inp.orig_x}
    if ekfac:
        vectors = [(xp.linalg.eigh(A)[1], xp.linalg.eigh(G)[1]) for A, G in factors]
        out["eigen"] = [
            KroneckerEigen(B.to_user(v), B.to_user(Ua), B.to_user(Ub))
            for v, (Ua, Ub) in zip(corrections(sw, vectors), vectors)
        ]
    out["factors"] = [(B.to_user(A), B.to_user(G)) for A, G in factors]
    return out


def kfac_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    fisher_type: str = "type-2",
    mc_samples: int = 1,
    seed: int | None = None,
    params: Any = None,
    backend: str | None = None,
) -> KFACOperator:
    r"""KFAC of the Gauss–Newton / Fisher matrix of an output loss, as an operator over :math:`\theta`.

    Block diagonal over the affine blocks of the dense and residual layers, each
    block :math:`A\otimes B` with :math:`A = \frac1N\sum_n\tilde a_n\tilde a_n^\top`
    (``(p+1, p+1)``, the bias folded in as an input of ones) and
    :math:`B = w\sum_{n,c} g_{nc}g_{nc}^\top` ``(q, q)`` (the module docstring of
    ``hessquik_core.curvature.kfac``). Equal to curvlinops'
    ``KFACLinearOperator(..., separate_weight_and_bias=False)`` for the same
    ``fisher_type`` (``"mc"`` in distribution: the random labels differ).

    Parameters
    ----------
    net : NN or Layer, or a torch ``nn.Sequential`` (converted by ``from_torch``)
        Of dense (``SingleLayer``) and residual (``ResnetLayer``) layers; another layer
        raises ``ValueError`` naming it (use :func:`ggn_operator`).
    x : array of shape (N, d)
        The operator is in ``x``'s library, dtype and device.
    y : array
        Targets, as for the loss (labels ``(N,)`` or ``(N, m)``); NumPy with torch ``x`` is converted.
    loss : str or Loss or torch loss
        MSE or cross-entropy (:func:`get_loss`), with its reduction and options.
    fisher_type : {"type-2", "mc", "empirical"}, default "type-2"
        Exact loss-Hessian square root, ``mc_samples`` sampled labels, or the true labels.
    mc_samples : int, default 1
        For ``"mc"`` only.
    seed : int, optional
        Of the NumPy generator drawing the ``"mc"`` labels.
    params : iterable of str or "all", optional
        Parameters to keep (as for :func:`ggn_operator`); a block keeps the rows of
        ``[K; b]`` selected (``K`` alone: ``A`` without the row of ones).
    backend : str, optional
        Backend that runs the sweeps.

    Returns
    -------
    KFACOperator
        ``@`` on ``(P,)`` and ``(P, k)``, ``.factors``, ``.inverse(damping, heuristic=)``,
        ``.eigendecomposition()``, ``.trace()``, ``.to_dense()``, ``.to_scipy()``.
    """
    r = _build(net, x, y, loss, fisher_type, mc_samples, seed, params, backend, False)
    ux = r["x"]
    return KFACOperator(r["blocks"], r["factors"], namespace_of(ux), ux.dtype, aac.device(ux), r["info"])


def ekfac_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    fisher_type: str = "type-2",
    mc_samples: int = 1,
    seed: int | None = None,
    params: Any = None,
    backend: str | None = None,
) -> EKFACOperator:
    r"""EKFAC: KFAC's eigenbasis :math:`U_A\otimes U_B` with eigenvalues corrected per example.

    :math:`\Lambda_{ij} = \sum_{n,c}(u_i^\top\tilde a_n)^2(v_j^\top g_{nc})^2` per block
    (the module docstring of ``hessquik_core.curvature.kfac``); for ``"type-2"`` the
    diagonal of the exact Gauss–Newton block in that basis. Equal to curvlinops'
    ``EKFACLinearOperator(..., separate_weight_and_bias=False)``.

    Parameters
    ----------
    net, x, y, loss, fisher_type, mc_samples, seed, params, backend
        As for :func:`kfac_operator`.

    Returns
    -------
    EKFACOperator
        ``@``, ``.factors`` (KFAC's), ``.eigendecomposition()``, ``.inverse(damping)``
        (damping added to the eigenvalues), ``.trace()``, ``.to_dense()``, ``.to_scipy()``.
    """
    r = _build(net, x, y, loss, fisher_type, mc_samples, seed, params, backend, True)
    ux = r["x"]
    return EKFACOperator(
        r["blocks"], r["eigen"], r["factors"], namespace_of(ux), ux.dtype, aac.device(ux), r["info"]
    )

"""docs/curvature.md: every ```python block runs, in order, in one namespace, and the
OPG example's numbers (G's eigenpairs, trace and both approximations) match the dense
reference to 1e-12."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from _doc_blocks import python_blocks, run_page_blocks, skip_if_any

pytest.importorskip("scipy")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "curvature.md"


def _blocks():
    return python_blocks("curvature.md")


def test_curvature_page_code_runs_and_the_opg_example_is_exact(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 4
    # no placeholder such as the old `trace=...` outside comments
    code = [line.split("#")[0] for b in blocks for line in b.splitlines()]
    assert not [c for c in code if "..." in c], "a block holds a literal '...'"
    ns: dict = {}
    # the torch blocks (a torch model and loss) are skipped without torch; the OPG example is NumPy
    torch = importlib.import_module("torch") if importlib.util.find_spec("torch") else None
    threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        skipped = run_page_blocks("curvature.md", ns)
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
    errors = ns["errors"]
    assert set(errors) >= {"eigenvalues", "trace", "low rank QΛQᵀ", "full rank QΛQᵀ + λ̃(I − QQᵀ)"}
    assert max(errors.values()) <= 1e-12
    # the numbers the page states
    assert ns["info"]["method"] == "gram" and (ns["P"], ns["K"]) == (131, 10)
    np.testing.assert_allclose(
        ns["G_vals"], [1.172, 0.988, 0.810, 0.692, 0.564, 0.441, 0.407, 0.333, 0.299, 0.221], atol=6e-4
    )
    assert float(ns["trG"]) == pytest.approx(6.0339, abs=1e-4)
    assert ns["full"].lam_tilde == pytest.approx(8.67e-4, abs=1e-6)
    assert ns["full"].slogdet()[1] == pytest.approx(-859.61, abs=1e-2)
    assert ns["quality"]["low rank"] == pytest.approx(0.017, abs=1e-3)
    assert ns["quality"]["full rank"] == pytest.approx(0.017, abs=1e-3)
    assert np.linalg.matrix_rank(ns["G"]) == 100
    skip_if_any("curvature.md", skipped, len(blocks))


def test_the_stated_cost_of_the_incremental_approximation():
    """The page says the old default (incremental) drops 1.4 % of λ₁ there, top 10 up to 1e-5 off."""
    import hessquik_core as hq
    from hessquik_core import curvature as cv

    net = hq.FullyConnectedNN([4, 16, 3], act="tanh", seed=0)
    x, y = np.random.default_rng(0).standard_normal((100, 4)), np.arange(100) % 3
    exact = cv.empirical_fisher_eigenpairs(net, x, y, "cross_entropy", 10)[0]
    with pytest.warns(cv.ApproximationWarning):
        vals, _, info = cv.empirical_fisher_eigenpairs(
            net, x, y, "cross_entropy", 10, method="approx_incremental"
        )
    assert info["discarded"] / exact[0] == pytest.approx(0.014, abs=1e-3)
    assert 1e-6 < np.max(np.abs(vals - exact) / exact) < 2e-5

"""The documentation: docstring coverage of the public API, and the built site.

The Sphinx build (nitpicky, warnings as errors) runs when the docs extra
is installed (``pip install -e ".[docs]"``) and is skipped otherwise;
``.ci/run`` builds the site the same way in every case.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _doc_blocks import missing_for, python_blocks, run_blocks, run_page_blocks, skip_if_any

import hessquik_core as hq
from hessquik_core import curvature as cv

ROOT = Path(__file__).resolve().parents[1]


def _documented_parameters(doc: str) -> set[str]:
    """Names listed in a NumPy-style Parameters section (``a, b : type`` lines)."""
    m = re.search(r"Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, re.S)
    names: set[str] = set()
    for line in (m.group(1) if m else "").splitlines():
        head = re.match(r"^([\w*][\w, *]*?)(?: :|$)", line)
        if head and not line.startswith(" "):
            names |= {n.strip().lstrip("*") for n in head.group(1).split(",")}
    return names


def test_nn_call_documents_every_parameter():
    doc = inspect.getdoc(hq.NN.__call__)
    params = set(inspect.signature(hq.NN.__call__).parameters) - {"self"}
    assert params <= _documented_parameters(doc), params - _documented_parameters(doc)
    for name in ("mode", "directions", "backend", "max_memory", "divergence", "hessian_diagonal"):
        assert name in params


def _public_callables():
    for name in cv.__all__:
        obj = getattr(cv, name)
        if inspect.ismodule(obj):
            continue
        yield name, obj
        if inspect.isclass(obj):
            for m, f in vars(obj).items():
                if isinstance(f, classmethod):
                    f = f.__func__
                if inspect.isfunction(f) and not m.startswith("_"):
                    yield f"{name}.{m}", f


@pytest.mark.parametrize(
    "name, obj", list(_public_callables()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_curvature_callables_have_parameters_and_returns(name, obj):
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
        init = vars(obj).get("__init__")
        params = set(inspect.signature(init).parameters) - {"self"} if init else set()
        if params and not issubclass(obj, Exception):
            section = "Attributes" if "__dataclass_fields__" in vars(obj) else "Parameters"
            assert section in doc, f"{name}: no {section} section"
            if section == "Parameters":
                assert params <= _documented_parameters(doc), params - _documented_parameters(doc)
        return
    params = set(inspect.signature(obj).parameters) - {"self", "cls"}
    if params:
        assert "Parameters" in doc, f"{name}: no Parameters section"
        documented = _documented_parameters(doc)
        assert params <= documented, f"{name}: undocumented {params - documented}"
    assert "Returns" in doc, f"{name}: no Returns section"


def test_curvature_page_in_toctree_is_not_orphan():
    text = (ROOT / "docs" / "curvature.md").read_text(encoding="utf-8")
    assert "orphan" not in text.split("\n# ", 1)[0]
    assert "\ncurvature\n" in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")


def _have(*mods: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in mods)


@pytest.mark.skipif(
    not _have("sphinx", "myst_parser", "furo", "sphinx-mathjax-offline"),
    reason='the docs extra is not installed (pip install -e ".[docs]")',
)
def test_nitpicky_build_renders_api_and_serves_mathjax(tmp_path):
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-q", "-n", "-W", "--keep-going", "-b", "html", "docs", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    api = (out / "api.html").read_text(encoding="utf-8")
    assert 'id="hessquik_core.NN.__call__"' in api
    call = api[api.index('id="hessquik_core.NN.__call__"') :]
    call = call[: call.index('id="hessquik_core.NN.blocks"')]
    for name in ("x", "gradient", "hessian", "laplacian", "directions", "mode", "backend"):
        assert f"<strong>{name}</strong>" in call, name
    for name in ("hessian_diagonal", "divergence", "max_memory"):
        assert f"<strong>{name}</strong>" in call, name
    for anchor in (
        "hessquik_core.NN.blocks",
        "hessquik_core.NN.in_features",
        "hessquik_core.NN.out_features",
        "hessquik_core._module.Module.modules",
        "hessquik_core.from_hessquik",
        "hessquik_core.interop.ResidualBlock",
        "hessquik_core.Result.gradient",
    ):
        assert f'id="{anchor}"' in api, anchor
    # math is typeset by a local MathJax, not a CDN
    curv = (out / "curvature.html").read_text(encoding="utf-8")
    assert 'src="_static/mathjax/tex-chtml.js"' in curv
    assert "cdn.jsdelivr" not in curv
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (out / "_static" / "custom.css").is_file()


@pytest.mark.parametrize(
    "page",
    [
        "getting_started.md",
        "training.md",
        "backends.md",
        "derivations.md",
        "activations.md",
        "higher_order.md",
        "pinn.md",
    ],
)
def test_docs_code_runs(page, monkeypatch, tmp_path):
    """Every ```python block of the page runs, in order, in one namespace; a block that needs a
    library which is not installed (torch, JAX) is skipped with what depends on it, and the page
    then reports as skipped, naming those blocks (the rest still ran)."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    torch = importlib.import_module("torch") if importlib.util.find_spec("torch") else None
    threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    ns: dict = {}
    try:
        skipped = run_page_blocks(page, ns)
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
    if page == "getting_started.md" and "r" in ns:
        # the tutorial's stated result: a few-second run gives roughly 5 % / 10 % / 20 %
        r, rel = ns["r"], ns["rel"]
        assert rel(r.value, ns["f"]) < 0.15
        assert rel(r.gradient, ns["g"]) < 0.25
        assert rel(r.hessian, ns["H"]) < 0.35
        assert isinstance(r.hessian, np.ndarray)
    skip_if_any(page, skipped, len(python_blocks(page)))


def test_doc_blocks_skip_what_needs_a_missing_library_and_what_depends_on_it():
    """The per-block rule of the docs tests, with torch and JAX taken as not installed: a block
    that names torch outside a comment or imports a missing library is skipped, so is a block
    reading a name only a skipped block binds; every other block runs, in order."""

    def installed(mod: str) -> bool:
        return mod not in ("torch", "jax")

    assert missing_for("import torch\nx = torch.ones(2)", installed) == ["torch"]
    assert missing_for("params = hq.training.torch_parameters(net)", installed) == ["torch"]
    assert missing_for("import jax.numpy as jnp", installed) == ["jax"]
    assert missing_for("w = parts['0.K'].T  # same order as torch's 0.weight", installed) == []
    blocks = [
        "a = 1",
        "import torch\nt = torch.ones(2)",
        "b = a + 1  # not torch",
        "c = t * 2",  # reads t, bound only by the skipped torch block
        "t = 5\nd = t + b",  # binds t itself: runs
        "e = t + d",
    ]
    ns: dict = {}
    skipped = run_blocks(blocks, "page", ns, installed)
    assert skipped == ["block 1 needs torch", "block 3 reads t from a skipped block"]
    assert (ns["a"], ns["b"], ns["d"], ns["e"]) == (1, 2, 7, 12) and "c" not in ns
    with pytest.raises(ZeroDivisionError):  # an error in a block that runs still fails
        run_blocks(["import torch", "z = 1 / 0"], "page", {}, installed)

"""The documentation: docstring coverage of the public API, and the built site.

The Sphinx build (nitpicky, warnings as errors) runs when the docs extra
is installed (``pip install -e ".[docs]"``) and is skipped otherwise;
``.ci/run`` builds the site the same way in every case.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

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

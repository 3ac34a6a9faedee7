"""The package ships its annotations (PEP 561) and annotates its public curvature API.

``mypy hessquik_core`` itself runs in ``.ci/run`` and ``nox -s lint``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from hessquik_core import curvature as cv
from hessquik_core import estimators

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_is_shipped():
    assert (ROOT / "hessquik_core" / "py.typed").is_file()
    if sys.version_info >= (3, 11):
        import tomllib

        conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        assert "py.typed" in conf["tool"]["setuptools"]["package-data"]["hessquik_core"]
        assert "mypy" in conf["tool"]


def _functions():
    for mod in (cv, estimators):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj


@pytest.mark.parametrize("name, fn", list(_functions()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_functions_are_annotated(name, fn):
    sig = inspect.signature(fn)
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"
    for p in sig.parameters.values():
        assert p.annotation is not inspect.Parameter.empty, f"{name}: parameter {p.name} not annotated"

"""torch is optional: the package imports and works without it, and CI proves the suite does.

Each check runs in a subprocess where ``sys.modules["torch"] = None`` (and the same for
hessQuik, which needs torch): there ``import torch`` raises ImportError and
``importlib.util.find_spec("torch")`` returns None, exactly as when torch is not
installed, so these tests mean the same in a venv with torch as in one without.
``.ci/run``'s second stage runs the whole quick suite in a venv without torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['hessQuik'] = None\n"

# modules that *are* the torch (or CuPy) side, documented as importing it
_NEEDS_THEIR_LIBRARY = re.compile(r"^hessquik_core\.(backends\._(torch\w*|cupy)|compat\.utils)$")


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with torch and hessQuik made unimportable; warnings are errors."""
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", _BLOCK + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def test_every_module_imports_without_torch():
    """Every module of the package but the torch/CuPy backends and ``compat.utils`` imports."""
    run = _run_without_torch(
        "import importlib, pkgutil, re, hessquik_core\n"
        f"skip = re.compile({_NEEDS_THEIR_LIBRARY.pattern!r})\n"
        "names = [m.name for m in pkgutil.walk_packages(hessquik_core.__path__, 'hessquik_core.')]\n"
        "for name in names:\n"
        "    if not skip.match(name):\n"
        "        importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    assert int(run.stdout.split()[-1]) > 50  # the walk saw the package, not an empty path


def test_demo_and_a_numpy_workflow_without_torch(tmp_path):
    """The demo's NumPy part, curvature, cost, save/load: all without torch."""
    run = _run_without_torch(
        "import numpy as np, hessquik_core as hq\n"
        "from hessquik_core import curvature as cv\n"
        "from hessquik_core import demo\n"
        "assert demo.main(['--n', '40', '--d', '3']) == 0\n"
        "net = hq.FullyConnectedNN([3, 8, 2], act='tanh', seed=0)\n"
        "x = np.random.default_rng(0).standard_normal((5, 3))\n"
        "r = net(x, gradient=True, hessian=True, laplacian=True)\n"
        "assert r.hessian.shape == (5, 3, 3, 2) and isinstance(r.laplacian, np.ndarray)\n"
        "C, g = cv.value_and_gradient(net, x, np.arange(5) % 2, 'cross_entropy')\n"
        "assert g.shape == (sum(p.size for p in net.parameters()),)\n"
        "print(net.cost(5, gradient=True, hessian=True))\n"
        f"hq.save(net, {str(tmp_path / 'net.safetensors')!r})\n"
        f"back = hq.load({str(tmp_path / 'net.safetensors')!r})\n"
        "np.testing.assert_array_equal(back(x).value, r.value)\n"
    )
    assert "[torch]   not installed: skipped" in run.stdout
    assert "passed: True" in run.stdout  # the demo's Taylor check


def test_ci_runs_the_readme_command_and_the_suite_without_torch():
    """pyproject's test-core extra is the test extra minus torch and hessQuik (test includes it);
    .ci/run runs the README's test command literally, then the quick suite on test-core alone."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    core = extras["test-core"]
    assert not [r for r in core if re.match(r"(torch|hessquik)\b", r, re.I)], core
    assert "hessquik-core[test-core]" in extras["test"]
    assert {re.match(r"[\w-]+", r).group(0) for r in extras["test"]} >= {"torch", "hessquik"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines() if line.endswith("&& python -m pytest"))
    assert command in ci.splitlines()
    stage = ci[ci.index('-e ".[test-core]"') :]
    assert 'python -m pytest -q -m "not slow"' in stage
    assert "find_spec('torch')" in stage  # the stage checks torch really is absent


def test_a_blocked_torch_counts_as_not_imported(monkeypatch):
    """``sys.modules["torch"] = None`` blocks the import; the backend registry must not read
    the key's presence as "torch is loaded" and import the torch backend for a NumPy call."""
    import numpy as np

    import hessquik_core as hq
    from hessquik_core import backends

    monkeypatch.setitem(sys.modules, "torch", None)
    net = hq.FullyConnectedNN([2, 3, 1], act="tanh", seed=0)
    assert backends.model_backend(net) is None
    assert backends.backend_for(np).name == "numpy"

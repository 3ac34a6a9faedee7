"""torch for the test modules that have torch-free tests too.

A module whose every test needs torch says ``pytest.importorskip("torch")`` at the top. A module
with some tests that do not imports ``torch`` from here (``None`` when it is not installed) and
marks each test that needs it ``@needs_torch``: without torch those skip, saying so, and the
others still run (``.ci/run``'s torch-free stage).
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None
torch = importlib.import_module("torch") if HAS_TORCH else None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch (not installed)")

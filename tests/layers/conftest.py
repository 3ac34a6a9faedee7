"""tests/layers: the rule references in tests/rules (``_layer_norm_reference``, ...) are
importable by name here too, as tests/ (``layer_checks``, ``_reference``) is by the root conftest."""

from __future__ import annotations

import pathlib
import sys

_RULES = str(pathlib.Path(__file__).resolve().parents[1] / "rules")
if _RULES not in sys.path:
    sys.path.insert(0, _RULES)

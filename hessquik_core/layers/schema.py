r"""The config schema: the types a layer's ``config()`` entries may have in a file.

A layer states how ``hq.save`` writes and ``hq.load`` checks its
constructor arguments as ``config_schema = {"in_features": "int", ...}``;
each type name is a key of :data:`CONFIG_TYPES`, which says what a value of
that type is and checks one read from a file *before* the layer is built
(a hostile file cannot make ``load`` allocate or run anything):

===========  ============================================  ==================================
type         JSON value                                    used by (built-in layers)
===========  ============================================  ==================================
``int``      integer >= 1 (``true`` is not an integer)     ``in_features``, ``width``, ...
``int?``     integer >= 1 or ``null``                      ``ICNNLayer.in_features``
``bool``     ``true`` or ``false``                         ``bias``, ``trainable``
``float``    finite number (an integer is read as float)   ``h``, ``eps``, ``scale``, ``w0``
``floats``   non-empty list of finite numbers              ``PeriodicEmbedding.periods``
``ints?``    non-empty list of integers >= 0, or ``null``  ``PeriodicEmbedding.axes``
===========  ============================================  ==================================

The table is extensible: a layer file that needs another type registers it
next to the layer, e.g.

.. code-block:: python

    from hessquik_core.layers.schema import ConfigError, register_config_type

    def _positive_float(value, key):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{key!r} must be a positive number, got {quote(value)}")
        return float(value)

    register_config_type("float+", _positive_float)

A checker receives the value read from the file and the key, returns the
value the constructor receives, and raises :class:`ConfigError` with a
message naming the key otherwise; ``load`` reports it as a
``FileFormatError`` naming where in the architecture it happened.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from typing import Any

__all__ = ["CONFIG_TYPES", "ConfigError", "check_config_value", "quote", "register_config_type"]


class ConfigError(ValueError):
    """A config value of the wrong type or range (the message names the key)."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 6
_REPR.maxlevel = 3


def quote(value: Any) -> str:
    """A short repr of a value read from a file (long strings, lists and integers abbreviated)."""
    return _REPR.repr(value)


#: a checker: ``(value read from the file, key) -> value for the constructor``
Checker = Callable[[Any, str], Any]


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key!r} must be a positive integer, got {quote(value)}")
    return value


def _int_or_none(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key!r} must be a positive integer or null, got {quote(value)}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key!r} must be true or false, got {quote(value)}")
    return value


def _float(value: Any, key: str) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    out = math.nan
    if ok:
        try:
            out = float(value)  # an integer such as 10**400 has no float: OverflowError
        except OverflowError:
            ok = False
    if not ok or not math.isfinite(out):
        raise ConfigError(f"{key!r} must be a finite number, got {quote(value)}")
    return out


def _list(value: Any, key: str) -> list:
    if not isinstance(value, list) or not value or len(value) > 10**6:
        raise ConfigError(f"{key!r} must be a non-empty list, got {quote(value)}")
    return value


def _floats(value: Any, key: str) -> list:
    for e in _list(value, key):
        _float(e, key)
    return value


def _ints_or_none(value: Any, key: str) -> list | None:
    if value is None:
        return None
    for i, e in enumerate(_list(value, key)):
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ConfigError(f"{key!r}[{i}] must be an integer >= 0, got {quote(e)}")
    return value


#: type name -> checker (see the module docstring's table); extend with :func:`register_config_type`
CONFIG_TYPES: dict[str, Checker] = {
    "int": _int,
    "int?": _int_or_none,
    "bool": _bool,
    "float": _float,
    "floats": _floats,
    "ints?": _ints_or_none,
}


def register_config_type(name: str, checker: Checker) -> None:
    """Add a config type ``name`` (checked by ``checker(value, key)``, see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a config type name must be a non-empty string, got {name!r}")
    if CONFIG_TYPES.get(name, checker) is not checker:
        raise ValueError(f"config type {name!r} is already registered")
    CONFIG_TYPES[name] = checker


def check_config_value(kind: str, value: Any, key: str) -> Any:
    """``value`` (of config entry ``key``) checked as type ``kind``; :class:`ConfigError` otherwise."""
    checker = CONFIG_TYPES.get(kind)
    if checker is None:  # a layer's own mistake, not the file's
        raise TypeError(
            f"config entry {key!r} has unknown schema type {kind!r}; known: {sorted(CONFIG_TYPES)}"
        )
    return checker(value, key)

r"""Saving and loading networks: one safetensors file, never pickle.

File format
-----------
A network is written as a single `safetensors <https://huggingface.co/docs/safetensors>`_
file, produced and parsed here with NumPy alone (no dependency beyond the
core's):

.. code-block:: text

    [8 bytes]  N, little-endian uint64
    [N bytes]  JSON header: {"<key>": {"dtype", "shape", "data_offsets"}, ...,
                             "__metadata__": {"format": "hessquik-core",
                                              "format_version": "1",
                                              "architecture": "<JSON>",
                                              "sha256": "<hex>"}}
    [rest]     raw little-endian tensor bytes, one tensor after another

Tensor keys are the state-dict keys (``'0.K'``, ``'1.layer.b'``), so the
weights can also be read by any safetensors reader
(``safetensors.numpy.load_file``). The architecture is a JSON tree of
allow-listed class names and constructor arguments (a layer holding a
network, such as ``GatedResidual``, nests that network's node under the
argument's name, its tensors under ``'<name>.<key>'``); loading never
imports or executes anything named by the file. The allowed names are those
of the registries, read at each call: networks
(:func:`~hessquik_core.networks.register_network`), layers
(:func:`~hessquik_core.layers.register_layer`, whose ``config_schema`` types are
checked by :mod:`hessquik_core.layers.schema`) and activations, plus the
aliases older files use (``"compat.NN"``, ...); this module has no class table.

Why this format: safetensors is data-only by design (unlike pickle, which
runs code on load), a single file keeps architecture and weights from
drifting apart, and the format is simple enough to implement strictly in a
few lines, which keeps ``safetensors`` an optional dependency.

Integrity: ``sha256`` covers the architecture, the tensor table and every
data byte, so a flipped bit anywhere that matters is reported instead of
loaded. Writes go to a temporary file in the target directory that is
renamed over the destination only when complete, so a crash never leaves a
half-written file behind.

Limits (the writer refuses what the reader would refuse): the JSON header is
at most ``hessquik_core.io.MAX_HEADER_BYTES`` (16 MiB, some 60 000 layers), networks nest
at most ``hessquik_core.io.MAX_DEPTH`` (64) levels, a tensor has at most 16 axes, and
JSON objects may not repeat a key. :func:`load` reads and checks the
8-byte length and the header before any tensor byte, reads only regular
files (a FIFO or a device such as ``/dev/zero`` is refused without reading
from it), checks the tensor table and the architecture against each other
and against the file size, and only then reads exactly the data size they
announce: a garbage or hostile file of any size is refused after reading at
most its header (16 MiB), unless that header validly describes a network
whose tensors the file really holds. Every malformed file
raises :class:`FileFormatError` (a ``ValueError``) naming the field, with
quoted values and key lists abbreviated (messages stay below
``FileFormatError.MAX_LENGTH`` characters).

This module is over 400 lines on purpose: it is the file format, writer,
reader and validation side by side, so every field the writer emits is
checked by the reader next to it (most lines refuse hostile input).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import stat
import struct
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple, NoReturn

import numpy as np

from ._module import Module
from .layers.schema import ConfigError, check_config_value
from .layers.schema import quote as _q

__all__ = ["FORMAT_VERSION", "MAX_DEPTH", "MAX_HEADER_BYTES", "load", "save"]

#: Version of the file layout written by :func:`save`; :func:`load` reads 1..FORMAT_VERSION.
FORMAT_VERSION = 1
_FORMAT = "hessquik-core"
#: Largest JSON header :func:`save` writes and :func:`load` reads. Our headers hold about 250
#: bytes per layer; the cap bounds what a hostile file can make the JSON parser allocate
#: (the safetensors reference implementation allows 100 MB, which no network here needs).
MAX_HEADER_BYTES = 16 * 2**20
#: Deepest nesting of ``NN`` blocks in an architecture (both :func:`save` and :func:`load`).
MAX_DEPTH = 64
_MAX_HEADER = MAX_HEADER_BYTES
_MAX_DEPTH = MAX_DEPTH
_MAX_NDIM = 16  # axes of a stored tensor (ours have at most 2)
_MAX_DIM = 2**63  # safetensors sizes are u64; keeps every product we print short
_VERSION_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only ("²".isdigit() is True)
_DTYPES: dict[str, np.dtype] = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_CODES = {v.name: k for k, v in _DTYPES.items()}
_CODES_SET = frozenset(_DTYPES)


class FileFormatError(ValueError):
    """A file that is not a valid, intact hessquik-core network file.

    The message names the offending field; values quoted from the file are
    abbreviated and the whole message is cut to at most ``MAX_LENGTH``
    characters, so a hostile file cannot produce a huge error.
    """

    MAX_LENGTH = 2000

    def __init__(self, message: str) -> None:
        message = str(message)
        if len(message) > self.MAX_LENGTH:
            tail = f" ... [message cut, {len(message)} characters]"
            message = message[: self.MAX_LENGTH - len(tail)] + tail
        super().__init__(message)


def _names(keys, limit: int = 8) -> str:
    """At most ``limit`` (abbreviated) names of a list, and how many there are."""
    keys = list(keys)
    shown = ", ".join(_q(k) for k in keys[:limit])
    return f"[{shown}]" if len(keys) <= limit else f"[{shown}, ... ({len(keys)} in all)]"


def _no_duplicates(pairs):
    """``object_pairs_hook`` for ``json.loads``: strict safetensors readers refuse repeated keys."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise FileFormatError(f"duplicate key {_q(k)} in a JSON object")
            seen.add(k)
    return out


def _json(text):
    """``json.loads`` refusing duplicate keys; FileFormatError or ValueError/RecursionError."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


# --------------------------------------------------------------------------
# allow-lists: the only classes a file can name (the registries, read at call time)
# --------------------------------------------------------------------------


class _Tables(NamedTuple):
    """File-format name -> class, from the registries: networks
    (:func:`~hessquik_core.networks.register_network`), layers
    (:func:`~hessquik_core.layers.register_layer`, with the aliases older
    files use) and activations (:func:`~hessquik_core.activations.register_activation`)."""

    networks: dict[str, type]
    layers: dict[str, type]
    activations: dict[str, type]


def _class_tables() -> _Tables:
    from .activations import ACTIVATIONS
    from .layers.base import LAYER_ALIASES, LAYERS
    from .registry import NETWORK_ALIASES, NETWORKS

    return _Tables({**NETWORKS, **NETWORK_ALIASES}, {**LAYERS, **LAYER_ALIASES}, dict(ACTIVATIONS))


def _name_of(obj, table: dict, what: str) -> str:
    """The file-format name of ``obj``'s exact class (a subclass may change the maths)."""
    for name, cls in table.items():
        if type(obj) is cls:
            return name
    raise TypeError(
        f"cannot save {what} of type {type(obj).__module__}.{type(obj).__qualname__}: only hessquik-core's "
        f"own classes can be saved ({', '.join(sorted(table))})"
    )


# --------------------------------------------------------------------------
# architecture <-> JSON
# --------------------------------------------------------------------------


def _encode(mod, tables: _Tables, depth: int = 0) -> dict:
    nets, layers, acts = tables
    from .layers.base import Layer
    from .networks import NN

    if depth > _MAX_DEPTH:  # the same limit as the reader's (_plan)
        raise ValueError(
            f"cannot save a network nested deeper than {_MAX_DEPTH} levels: the file format "
            f"(and load) allows at most {_MAX_DEPTH}"
        )
    if isinstance(mod, NN):
        blocks = [_encode(b, tables, depth + 1) for b in mod.blocks]
        return {"network": _name_of(mod, _own(nets), "network"), "blocks": blocks}
    if isinstance(mod, Layer):
        node: dict[str, Any] = {"layer": _name_of(mod, _own(layers), "layer"), "config": mod.config()}
        act = getattr(mod, "act", None)
        if act is not None:
            from .activations import registered_class

            if registered_class(act) is None:  # unregistered, or a subclass that could change the math
                raise TypeError(
                    f"cannot save activation {act!r}: not one of hessquik-core's activations "
                    f"({', '.join(sorted(acts))})"
                )
            node["act"] = {"name": act.name, "config": act.config()}
        for name in type(mod).nested:  # a block holding a network (GatedResidual's g)
            node[name] = _encode(getattr(mod, name), tables, depth + 1)
        return node
    raise TypeError(f"save expects a hessquik-core network or layer, got {type(mod).__name__}")


def _own(table: dict[str, type]) -> dict[str, type]:
    """The names ``save`` writes: each class's own (registered) name, not an alias."""
    return {name: cls for name, cls in table.items() if name == cls.__name__}


def _fail(where: str, msg: str) -> NoReturn:
    raise FileFormatError(f"invalid architecture at {where}: {msg}")


def _float(where, cfg, key) -> float:
    try:
        return check_config_value("float", cfg[key], key)
    except ConfigError as err:
        _fail(where, str(err))


def _keys(where, obj, required: AbstractSet[str], optional: AbstractSet[str] = frozenset()):
    if not isinstance(obj, dict):
        _fail(where, f"expected a JSON object, got {type(obj).__name__}")
    missing = required - set(obj)
    extra = set(obj) - required - set(optional)
    if missing or extra:
        _fail(
            where,
            f"expected keys {sorted(required)}; missing {sorted(missing)}, unexpected {_names(sorted(extra))}",
        )


def _class_name(where, node, key, table, what):
    """``node[key]``, a class name from ``table`` (a hostile list or dict is not hashable)."""
    name = node[key]
    if not isinstance(name, str) or name not in table:
        _fail(where, f"unknown {what} {_q(name)}; expected one of {sorted(table)}")
    return name


def _layer_spec(cls, where, cfg):
    """Check a layer node's config against its class's ``config_schema`` (the types of
    :mod:`hessquik_core.layers.schema`); return the parameter shapes it implies. Shapes are
    checked against the stored tensors *before* a layer is built, so a malicious config
    such as ``in_features = 10**12`` is rejected without allocating anything."""
    schema = cls.config_schema
    _keys(where + ".config", cfg, set(schema))
    for key, kind in schema.items():
        try:
            check_config_value(kind, cfg[key], key)
        except ConfigError as err:
            _fail(where, str(err))
    return cls.parameter_shapes(cfg), cls.has_activation


def _plan(node, tables, where="architecture", prefix="", depth=0, out=None):
    """Validate the JSON tree and collect the expected parameter shapes by key."""
    nets, layers, acts = tables
    out = {} if out is None else out
    if depth > _MAX_DEPTH:
        _fail(where, f"networks nested deeper than {_MAX_DEPTH} levels")
    if isinstance(node, dict) and "network" in node:
        _keys(where, node, {"network", "blocks"})
        _class_name(where, node, "network", nets, "network class")
        blocks = node["blocks"]
        if not isinstance(blocks, list) or not blocks:
            _fail(where, "'blocks' must be a non-empty list")
        for i, blk in enumerate(blocks):
            _plan(blk, tables, f"{where}.blocks[{i}]", f"{prefix}{i}.", depth + 1, out)
        return out
    if isinstance(node, dict) and "layer" in node:
        cls = layers[_class_name(where, node, "layer", layers, "layer class")]
        has_act = "act" in node
        _keys(where, node, {"layer", "config", *cls.nested}, {"act"})
        shapes, needs_act = _layer_spec(cls, where, node["config"])
        if needs_act != has_act:
            _fail(where, f"layer {node['layer']!r} {'needs' if needs_act else 'takes no'} 'act'")
        if has_act:
            _act_from(node["act"], acts, where + ".act")
        for k, s in shapes.items():
            out[prefix + k] = s
        for name in cls.nested:  # nested networks: their tensors are "<name>.<key>"
            _plan(node[name], tables, f"{where}.{name}", f"{prefix}{name}.", depth + 1, out)
        return out
    _fail(where, "expected an object with a 'network' or a 'layer' entry")


def _act_from(node, acts, where):
    _keys(where, node, {"name", "config"})
    cls = acts[_class_name(where, node, "name", acts, "activation")]
    cfg = node["config"]
    if not isinstance(cfg, dict):
        _fail(where, "'config' must be an object")
    defaults = cls().config()
    _keys(where + ".config", cfg, set(defaults))
    # numbers, except string options (GELU's approximate), which the class validates;
    # converted outside the try: no doubled prefix
    str_ok = {k for k in cfg if isinstance(defaults[k], str) and isinstance(cfg[k], str)}
    kwargs = {k: cfg[k] if k in str_ok else _float(where, cfg, k) for k in cfg}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ArithmeticError) as err:
        _fail(where, str(err))


def _build(node, tables, where="architecture"):
    """Construct the (already validated) tree; the caller loads the parameters."""
    nets, layers, acts = tables
    if "network" in node:
        blocks = [_build(b, tables, f"{where}.blocks[{i}]") for i, b in enumerate(node["blocks"])]
        try:
            return nets[node["network"]].from_blocks(*blocks)
        except (TypeError, ValueError, ArithmeticError) as err:
            _fail(where, str(err))
    cls = layers[node["layer"]]
    kwargs = dict(node["config"])
    if "act" in node:
        kwargs["act"] = _act_from(node["act"], acts, where + ".act")
    for name in cls.nested:
        kwargs[name] = _build(node[name], tables, f"{where}.{name}")
    try:
        # throw-away initialisation, no larger than the tensors already in the file
        return cls(**kwargs, dtype=np.float64, seed=0)
    except (TypeError, ValueError, ArithmeticError) as err:
        _fail(where, str(err))


# --------------------------------------------------------------------------
# the file itself
# --------------------------------------------------------------------------


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _digest(architecture: str, table: dict, data) -> str:
    h = hashlib.sha256()
    h.update(_canonical({"architecture": architecture, "tensors": table}))
    h.update(b"\0")
    h.update(data)
    return h.hexdigest()


def save(net: Module, path: str | os.PathLike) -> None:
    """Write ``net`` (architecture and weights) to ``path``.

    Parameters
    ----------
    net : NN, Layer or a hessquik_core.compat module
        Any hessquik-core network or layer, with parameters on any backend
        (they are copied to the host). A :mod:`hessquik_core.compat` module
        (hessQuik's classes, torch modules) is saved as the hessquik-core
        network its ``to_core()`` returns: :func:`load` gives that network
        back (``compat.networks.from_core`` turns it into the compat module). Each parameter keeps its dtype
        (float16, float32 or float64), so :func:`load` returns bitwise
        identical weights.
    path : str or os.PathLike
        Destination; ``.safetensors`` is the conventional suffix. The write
        is atomic: the file appears complete or not at all.

    Raises
    ------
    TypeError
        If ``net`` contains a class or activation that is not part of
        hessquik-core (only allow-listed classes are ever recorded).
    ValueError
        If the file would be one that :func:`load` refuses: networks nested
        deeper than ``hessquik_core.io.MAX_DEPTH`` levels, a header beyond
        ``hessquik_core.io.MAX_HEADER_BYTES``, or a configuration the reader's validation
        rejects (nothing is written then).

    Examples
    --------
    >>> import tempfile, os, numpy as np, hessquik_core as hq
    >>> net = hq.ResnetNN(width=3, depth=2, h=0.5, act="tanh", seed=0)
    >>> p = os.path.join(tempfile.mkdtemp(), "net.safetensors")
    >>> hq.save(net, p)
    >>> x = np.ones((2, 3))
    >>> bool((hq.load(p)(x).value == net(x).value).all())
    True
    """
    from .backends._generic import to_numpy

    if not isinstance(net, Module) and callable(getattr(net, "to_core", None)):
        # a hessquik_core.compat module (a torch module computing through hessquik-core):
        # save the hessquik-core network it computes, with a NumPy copy of its weights
        net = net.to_core()
    tables = _class_tables()
    architecture = json.dumps(_encode(net, tables), sort_keys=True, allow_nan=False)
    try:  # the reader's own validation: save never writes a file that load refuses
        _plan(_json(architecture), tables)
    except FileFormatError as err:
        raise ValueError(f"cannot save this network: load would refuse the file ({err})") from None
    table: dict[str, dict] = {}
    chunks = []
    offset = 0
    for key, p in net.state_dict().items():
        arr = np.asarray(to_numpy(p))
        code = _CODES.get(arr.dtype.name)
        if code is None:
            raise TypeError(f"parameter {key!r} has dtype {p.dtype}; only float16/32/64 can be saved")
        raw = np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
        table[key] = {
            "dtype": code,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    meta = {
        "format": _FORMAT,
        "format_version": str(FORMAT_VERSION),
        "architecture": architecture,
        "sha256": _digest(architecture, table, data),
    }
    header = json.dumps({"__metadata__": meta, **table}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # align the data to 8 bytes, as safetensors does
    if len(header) > _MAX_HEADER:
        raise ValueError(
            f"cannot save this network: its header would take {len(header)} bytes, more than the "
            f"{_MAX_HEADER} that load accepts (MAX_HEADER_BYTES)"
        )
    _atomic_write(os.fspath(path), [struct.pack("<Q", len(header)), header, data])


def _atomic_write(path: str, parts) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never follow or reuse an existing name; mode 0o666 lets the umask decide the
    # permissions, as for any ordinary new file (tempfile.mkstemp would force 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible on every platform
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _sniff(raw: bytes) -> str:
    if raw[:4] == b"PK\x03\x04":
        return (
            " It is a zip archive (e.g. torch.save or numpy.savez output); torch.save files "
            "contain pickles, which hessquik-core never loads."
        )
    if raw[:1] == b"\x80":
        return " It looks like a Python pickle, which hessquik-core never loads (pickles can run code)."
    return ""


def _open_regular(path: str):
    """A binary file object for ``path``, refusing anything but a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once (a plain ``open``
    waits for a writer forever); ``fstat`` on the opened descriptor then
    tells what it is, with no window for the name to be swapped.
    """
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{path!r} is a directory")
        if not stat.S_ISREG(mode):
            kinds = [
                (stat.S_ISFIFO, "a FIFO"),
                (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"),
            ]
            kind = next((k for test, k in kinds if test(mode)), "not a regular file")
            raise FileFormatError(
                f"{path!r} is {kind}: hessquik-core reads networks only from regular files "
                f"(nothing was read from it)"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read(fh, n: int) -> bytes:
    """``n`` bytes (fewer only at the end of the file)."""
    parts, got = [], 0
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _check_table(path, header):
    """Validate the tensor table (JSON only, no data read); return the data size it needs."""
    spans = []
    fields = {"dtype", "shape", "data_offsets"}
    for key, info in header.items():
        if (
            type(info) is dict
            and info.keys() == fields
            and type(info["dtype"]) is str  # a list would not even hash
            and info["dtype"] in _CODES_SET
        ):
            shape, offs = info["shape"], info["data_offsets"]
            if (  # the common, valid entry: checked without building any message
                type(shape) is list
                and type(offs) is list
                and len(shape) <= _MAX_NDIM
                and len(offs) == 2
                and all(type(v) is int and 0 <= v < _MAX_DIM for v in (*shape, *offs))
                and offs[1] - offs[0] == math.prod(shape) * _DTYPES[info["dtype"]].itemsize
            ):
                spans.append((offs[0], offs[1], key))
                continue
        name = f"{path!r}: tensor {_q(key)}"
        if not isinstance(info, dict) or set(info) != fields:
            got = sorted(info) if isinstance(info, dict) else type(info).__name__
            raise FileFormatError(
                f"{name} is malformed: expected an object with keys ['data_offsets', 'dtype', 'shape'], "
                f"got {_q(got)}"
            )
        code = info["dtype"]
        if not isinstance(code, str) or code not in _DTYPES:
            raise FileFormatError(f"{name} has dtype {_q(code)}; hessquik-core stores only {sorted(_DTYPES)}")
        dt = _DTYPES[code]
        shape, offs = info["shape"], info["data_offsets"]
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(type(s) is int and 0 <= s < _MAX_DIM for s in shape)
        ):
            raise FileFormatError(
                f"{name} has an invalid 'shape' {_q(shape)}: expected a list of at most {_MAX_NDIM} "
                f"non-negative integers below 2**63"
            )
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(type(o) is int and 0 <= o < _MAX_DIM for o in offs)
            or offs[0] > offs[1]
        ):
            raise FileFormatError(
                f"{name} has invalid 'data_offsets' {_q(offs)}: expected [begin, end], "
                f"0 <= begin <= end < 2**63"
            )
        nbytes = math.prod(shape) * dt.itemsize
        if offs[1] - offs[0] != nbytes:
            raise FileFormatError(
                f"{name} of shape {tuple(shape)} and dtype {code} needs {nbytes} bytes, its "
                f"data_offsets span {offs[1] - offs[0]}"
            )
        spans.append((offs[0], offs[1], key))
    end = 0
    for b, e, key in sorted(spans):
        if b != end:
            raise FileFormatError(f"{path!r}: tensor data is not contiguous at tensor {_q(key)}")
        end = e
    return end


def load(path: str | os.PathLike, *, backend: str | None = None, device=None):
    """Read a network written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        A regular file. Its 8-byte length field and JSON header are read and
        validated first (header at most ``hessquik_core.io.MAX_HEADER_BYTES``), then
        exactly the tensor bytes the header announces: a garbage or hostile
        file is refused after reading at most its header. FIFOs and devices
        are refused without reading.
    backend, device : optional
        If given, the loaded parameters are moved with
        ``net.to(backend, device=device)`` (``device`` alone names a torch
        device, e.g. ``"cuda"``); by default they are read-only
        NumPy arrays of the stored dtypes.

    Returns
    -------
    NN or Layer
        Same classes, structure, activations and (bitwise) weights as saved.

    Raises
    ------
    FileFormatError (a ValueError)
        If the file is not a hessquik-core safetensors file, is not a regular
        file, is truncated or corrupted (checksum), was written by a newer
        format version, names an unknown class or activation, repeats a
        JSON key, or its tensors do not match its architecture. The message
        says which field. Nothing in the file is ever executed or unpickled.
        This is the only exception a malformed file raises (``OSError`` is
        left for files that cannot be opened or read).
    """
    path = os.fspath(path)
    with _open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        head = _read(fh, 8)
        if len(head) < 8:
            raise FileFormatError(
                f"{path!r} is truncated or not a hessquik-core file: {len(head)} bytes, "
                f"expected at least the 8-byte safetensors header length.{_sniff(head)}"
            )
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise FileFormatError(
                f"{path!r} is not a hessquik-core file: header length {n} exceeds {_MAX_HEADER} bytes "
                f"(MAX_HEADER_BYTES).{_sniff(head)}"
            )
        if 8 + n > size:
            raise FileFormatError(
                f"{path!r} is truncated: the header needs {n} bytes but only {size - 8} "
                f"follow the length field.{_sniff(head)}"
            )
        raw_header = _read(fh, n)
        if len(raw_header) < n:  # the file shrank since fstat
            raise FileFormatError(f"{path!r} is truncated: the header ends after {len(raw_header)} bytes")
        try:
            header = _json(raw_header.decode("utf-8"))
        except FileFormatError as err:
            raise FileFormatError(f"{path!r}: invalid header: {err}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise FileFormatError(
                f"{path!r} is not a safetensors file: its header is not valid JSON ({err}).{_sniff(head)}"
            ) from None
        if not isinstance(header, dict):
            raise FileFormatError(f"{path!r} is not a safetensors file: the header is not a JSON object")
        meta = header.pop("__metadata__", None)
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise FileFormatError(
                f"{path!r} is a safetensors file but not a hessquik-core network (no "
                f"'format': '{_FORMAT}' metadata). For bare weights use "
                f"net.load_state_dict(safetensors.numpy.load_file(path))."
            )
        version = meta.get("format_version")
        if not isinstance(version, str) or not _VERSION_RE.fullmatch(version) or int(version) < 1:
            raise FileFormatError(
                f"{path!r}: invalid format_version {_q(version)} in the metadata: expected a string of "
                f"decimal digits such as '1'"
            )
        if int(version) > FORMAT_VERSION:
            raise FileFormatError(
                f"{path!r} was written in format version {version}; this hessquik-core "
                f"reads versions up to {FORMAT_VERSION}. Upgrade hessquik-core."
            )
        for key in ("architecture", "sha256"):
            if not isinstance(meta.get(key), str):
                raise FileFormatError(
                    f"{path!r}: metadata entry {key!r} is missing or not a string (got {_q(meta.get(key))})"
                )

        # tensor table: dtypes, shapes, and offsets that tile the data exactly
        end = _check_table(path, header)
        have = size - 8 - n
        if end > have:
            raise FileFormatError(
                f"{path!r} is truncated: the tensors need {end} bytes of data, the file holds {have}"
            )
        if end < have:
            raise FileFormatError(f"{path!r}: {have - end} unexpected bytes after the tensor data")

        # architecture: validate completely and compare with the tensor table, still
        # without reading tensor data (a hostile table costs no memory)
        try:
            arch = _json(meta["architecture"])
        except FileFormatError as err:
            raise FileFormatError(f"{path!r}: invalid architecture: {err}") from None
        except (ValueError, RecursionError) as err:
            raise FileFormatError(f"{path!r}: the architecture is not valid JSON ({err})") from None
        tables = _class_tables()
        expected = _plan(arch, tables)
        unknown = sorted(set(header) - set(expected))
        missing = sorted(set(expected) - set(header))
        # save never writes such a file: it was damaged or made by hand
        hint = "the file is corrupted or was not written by hessquik-core"
        if unknown or missing:
            raise FileFormatError(
                f"{path!r}: tensors do not match the architecture: unexpected {_names(unknown)}, "
                f"missing {_names(missing)} ({hint})"
            )
        for key, shape in expected.items():
            if tuple(header[key]["shape"]) != shape:
                raise FileFormatError(
                    f"{path!r}: tensor {key!r} has shape {tuple(header[key]['shape'])}, "
                    f"the architecture needs {shape} ({hint})"
                )
        # only now, with a valid header whose sizes match the file, read the data
        data = _read(fh, end)
    if len(data) < end:  # the file shrank since fstat
        raise FileFormatError(
            f"{path!r} is truncated: the tensors need {end} bytes of data, the file holds {len(data)}"
        )
    if _digest(meta["architecture"], header, data) != meta["sha256"]:
        raise FileFormatError(f"{path!r} is corrupted: its SHA-256 checksum does not match the contents")
    net = _build(arch, tables)
    view = memoryview(data)
    state = {}
    for key, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(view[b:e], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        state[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    net.load_state_dict(state, strict=True)
    if backend is not None or device is not None:  # device alone: a torch device (Module.to)
        net.to(backend, device=device)
    return net

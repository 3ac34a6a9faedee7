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
allow-listed class names and constructor arguments; loading never imports
or executes anything named by the file.

Why this format: safetensors is data-only by design (unlike pickle, which
runs code on load), a single file keeps architecture and weights from
drifting apart, and the format is simple enough to implement strictly in a
few lines, which keeps ``safetensors`` an optional dependency.

Integrity: ``sha256`` covers the architecture, the tensor table and every
data byte, so a flipped bit anywhere that matters is reported instead of
loaded. Writes go to a temporary file in the target directory that is
renamed over the destination only when complete, so a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
from typing import Any

import numpy as np

from ._module import Module

__all__ = ["FORMAT_VERSION", "load", "save"]

#: Version of the file layout written by :func:`save`; :func:`load` reads 1..FORMAT_VERSION.
FORMAT_VERSION = 1
_FORMAT = "hessquik-core"
_MAX_HEADER = 100 * 2**20  # the safetensors reference implementation's limit
_MAX_DEPTH = 64  # nesting of NN blocks in an architecture
_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_CODES = {np.dtype(v).name: k for k, v in _DTYPES.items()}


class FileFormatError(ValueError):
    """A file that is not a valid, intact hessquik-core network file."""


# --------------------------------------------------------------------------
# allow-lists: the only classes a file can name
# --------------------------------------------------------------------------


def _class_tables():
    from . import compat, interop
    from . import networks as N
    from .activations import _REGISTRY
    from .layers import LAYERS

    nets = {
        "NN": N.NN,
        "FullyConnectedNN": N.FullyConnectedNN,
        "ResnetNN": N.ResnetNN,
        "ICNN": N.ICNN,
        "compat.NN": compat.networks.NN,
        "compat.fullyConnectedNN": compat.networks.fullyConnectedNN,
        "compat.resnetNN": compat.networks.resnetNN,
        "compat.ICNN": compat.networks.ICNN,
    }
    layers = {
        **LAYERS,  # every registered layer class, by class name
        "compat.singleLayer": compat.layers.singleLayer,
        "compat.resnetLayer": compat.layers.resnetLayer,
        "compat.ICNNLayer": compat.layers.ICNNLayer,
        "compat.quadraticLayer": compat.layers.quadraticLayer,
        "compat.quadraticICNNLayer": compat.layers.quadraticICNNLayer,
    }
    acts = dict(_REGISTRY)
    acts["relu"] = interop.ReLU
    return nets, layers, acts


def _name_of(obj, table: dict, what: str) -> str:
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


def _encode(mod, tables) -> dict:
    nets, layers, acts = tables
    from .layers import Layer
    from .networks import NN

    if isinstance(mod, NN):
        return {"network": _name_of(mod, nets, "network"), "blocks": [_encode(b, tables) for b in mod.blocks]}
    if isinstance(mod, Layer):
        node: dict[str, Any] = {"layer": _name_of(mod, layers, "layer"), "config": mod.config()}
        act = getattr(mod, "act", None)
        if act is not None:
            from .compat import activations as cact

            compat_acts = {getattr(cact, n) for n in cact.__all__} - {cact.hessQuikActivationFunction}
            exact = type(act) in set(acts.values()) | compat_acts  # subclasses could change the math
            if not exact or not isinstance(act, acts.get(act.name, ())):
                raise TypeError(
                    f"cannot save activation {act!r}: not one of hessquik-core's activations "
                    f"({', '.join(sorted(acts))})"
                )
            node["act"] = {"name": act.name, "config": act.config()}
        return node
    raise TypeError(f"save expects a hessquik-core network or layer, got {type(mod).__name__}")


def _fail(where: str, msg: str):
    raise FileFormatError(f"invalid architecture at {where}: {msg}")


def _int(where, cfg, key, *, optional=False):
    v = cfg[key]
    if optional and v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        _fail(where, f"{key!r} must be a positive integer{' or null' if optional else ''}, got {v!r}")
    return v


def _bool(where, cfg, key):
    if not isinstance(cfg[key], bool):
        _fail(where, f"{key!r} must be true or false, got {cfg[key]!r}")
    return cfg[key]


def _float(where, cfg, key):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        _fail(where, f"{key!r} must be a finite number, got {v!r}")
    return float(v)


def _keys(where, obj, required: set, optional: set = frozenset()):
    if not isinstance(obj, dict):
        _fail(where, f"expected a JSON object, got {type(obj).__name__}")
    missing = required - set(obj)
    extra = set(obj) - required - set(optional)
    if missing or extra:
        _fail(
            where, f"expected keys {sorted(required)}; missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


# per layer class: its config schema and parameter shapes (asked of the class).
# Shapes are checked against the stored tensors *before* a layer is built, so a
# malicious config such as in_features = 10**12 is rejected without allocating anything.
_CHECKS = {
    "int": lambda where, cfg, key: _int(where, cfg, key),
    "int?": lambda where, cfg, key: _int(where, cfg, key, optional=True),
    "bool": lambda where, cfg, key: _bool(where, cfg, key),
    "float": lambda where, cfg, key: _float(where, cfg, key),
}


def _layer_spec(cls, where, cfg):
    schema = cls.config_schema
    _keys(where + ".config", cfg, set(schema))
    for key, kind in schema.items():
        _CHECKS[kind](where, cfg, key)
    return cls.parameter_shapes(cfg), cls.has_activation


def _plan(node, tables, where="architecture", prefix="", depth=0, out=None):
    """Validate the JSON tree and collect the expected parameter shapes by key."""
    nets, layers, acts = tables
    out = {} if out is None else out
    if depth > _MAX_DEPTH:
        _fail(where, f"networks nested deeper than {_MAX_DEPTH} levels")
    if isinstance(node, dict) and "network" in node:
        _keys(where, node, {"network", "blocks"})
        if node["network"] not in nets:
            _fail(where, f"unknown network class {node['network']!r}; expected one of {sorted(nets)}")
        blocks = node["blocks"]
        if not isinstance(blocks, list) or not blocks:
            _fail(where, "'blocks' must be a non-empty list")
        for i, blk in enumerate(blocks):
            _plan(blk, tables, f"{where}.blocks[{i}]", f"{prefix}{i}.", depth + 1, out)
        return out
    if isinstance(node, dict) and "layer" in node:
        if node["layer"] not in layers:
            _fail(where, f"unknown layer class {node['layer']!r}; expected one of {sorted(layers)}")
        cls = layers[node["layer"]]
        has_act = "act" in node
        _keys(where, node, {"layer", "config"}, {"act"})
        shapes, needs_act = _layer_spec(cls, where, node["config"])
        if needs_act != has_act:
            _fail(where, f"layer {node['layer']!r} {'needs' if needs_act else 'takes no'} 'act'")
        if has_act:
            _act_from(node["act"], acts, where + ".act")
        for k, s in shapes.items():
            out[prefix + k] = s
        return out
    _fail(where, "expected an object with a 'network' or a 'layer' entry")


def _act_from(node, acts, where):
    _keys(where, node, {"name", "config"})
    if node["name"] not in acts:
        _fail(where, f"unknown activation {node['name']!r}; expected one of {sorted(acts)}")
    cls = acts[node["name"]]
    cfg = node["config"]
    if not isinstance(cfg, dict):
        _fail(where, "'config' must be an object")
    expected = set(cls().config())
    _keys(where + ".config", cfg, expected)
    try:
        return cls(**{k: _float(where, cfg, k) for k in cfg})
    except (TypeError, ValueError) as err:
        _fail(where, str(err))


def _build(node, tables, where="architecture"):
    """Construct the (already validated) tree; the caller loads the parameters."""
    nets, layers, acts = tables
    from .networks import NN

    if "network" in node:
        blocks = [_build(b, tables, f"{where}.blocks[{i}]") for i, b in enumerate(node["blocks"])]
        cls = nets[node["network"]]
        obj = cls.__new__(cls)  # the NN subclasses only differ in their constructor arguments
        try:
            NN.__init__(obj, *blocks)
        except (TypeError, ValueError) as err:
            _fail(where, str(err))
        return obj
    cls = layers[node["layer"]]
    kwargs = dict(node["config"])
    if "act" in node:
        kwargs["act"] = _act_from(node["act"], acts, where + ".act")
    try:
        # throw-away initialisation, no larger than the tensors already in the file
        return cls(**kwargs, dtype=np.float64, seed=0)
    except (TypeError, ValueError) as err:
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
    net : NN or Layer
        Any hessquik-core network or layer, with parameters on any backend
        (they are copied to the host). Each parameter keeps its dtype
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

    tables = _class_tables()
    architecture = json.dumps(_encode(net, tables), sort_keys=True, allow_nan=False)
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


def load(path: str | os.PathLike, *, backend: str | None = None, device=None):
    """Read a network written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    backend, device : optional
        If given, the loaded parameters are moved with
        ``net.to(backend, device=device)``; by default they are read-only
        NumPy arrays of the stored dtypes.

    Returns
    -------
    NN or Layer
        Same classes, structure, activations and (bitwise) weights as saved.

    Raises
    ------
    FileFormatError (a ValueError)
        If the file is not a hessquik-core safetensors file, is truncated or
        corrupted (checksum), was written by a newer format version, names
        an unknown class or activation, or its tensors do not match its
        architecture. The message says which. Nothing in the file is ever
        executed or unpickled.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    size = len(raw)
    if size < 8:
        raise FileFormatError(
            f"{path!r} is truncated or not a hessquik-core file: {size} bytes, "
            f"expected at least the 8-byte safetensors header length.{_sniff(raw)}"
        )
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER:
        raise FileFormatError(
            f"{path!r} is not a safetensors file: header length {n} exceeds {_MAX_HEADER} bytes.{_sniff(raw)}"
        )
    if 8 + n > size:
        raise FileFormatError(
            f"{path!r} is truncated: the header needs {n} bytes but only {size - 8} "
            f"follow the length field.{_sniff(raw)}"
        )
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FileFormatError(
            f"{path!r} is not a safetensors file: its header is not valid JSON ({err}).{_sniff(raw)}"
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
    if not isinstance(version, str) or not version.isdigit() or int(version) < 1:
        raise FileFormatError(f"{path!r}: invalid format_version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise FileFormatError(
            f"{path!r} was written in format version {version}; this hessquik-core "
            f"reads versions up to {FORMAT_VERSION}. Upgrade hessquik-core."
        )
    for key in ("architecture", "sha256"):
        if not isinstance(meta.get(key), str):
            raise FileFormatError(f"{path!r}: metadata entry {key!r} is missing")

    # tensor table: dtypes, shapes, and offsets that tile the data exactly
    data = memoryview(raw)[8 + n :]
    spans = []
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FileFormatError(f"{path!r}: tensor entry {key!r} is malformed")
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise FileFormatError(
                f"{path!r}: tensor {key!r} has dtype {info['dtype']!r}; hessquik-core "
                f"stores only {sorted(_DTYPES)}"
            )
        shape, offs = info["shape"], info["data_offsets"]
        if (
            not isinstance(shape, list)
            or not all(type(s) is int and s >= 0 for s in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(type(o) is int and o >= 0 for o in offs)
            or offs[0] > offs[1]
        ):
            raise FileFormatError(f"{path!r}: tensor {key!r} has an invalid shape or data_offsets")
        if offs[1] - offs[0] != math.prod(shape) * dt.itemsize:
            raise FileFormatError(
                f"{path!r}: tensor {key!r} of shape {tuple(shape)} and dtype "
                f"{info['dtype']} needs {math.prod(shape) * dt.itemsize} bytes, its "
                f"data_offsets span {offs[1] - offs[0]}"
            )
        spans.append((offs[0], offs[1], key))
    end = 0
    for b, e, key in sorted(spans):
        if b != end:
            raise FileFormatError(f"{path!r}: tensor data is not contiguous at tensor {key!r}")
        end = e
    if end > len(data):
        raise FileFormatError(
            f"{path!r} is truncated: the tensors need {end} bytes of data, the file holds {len(data)}"
        )
    if end < len(data):
        raise FileFormatError(f"{path!r}: {len(data) - end} unexpected bytes after the tensor data")
    if _digest(meta["architecture"], header, data) != meta["sha256"]:
        raise FileFormatError(f"{path!r} is corrupted: its SHA-256 checksum does not match the contents")

    # architecture: validate completely, compare with the tensors, then build
    try:
        arch = json.loads(meta["architecture"])
    except (ValueError, RecursionError) as err:
        raise FileFormatError(f"{path!r}: the architecture is not valid JSON ({err})") from None
    tables = _class_tables()
    expected = _plan(arch, tables)
    unknown = sorted(set(header) - set(expected))
    missing = sorted(set(expected) - set(header))
    if unknown or missing:
        raise FileFormatError(
            f"{path!r}: tensors do not match the architecture: unexpected {unknown}, missing {missing}"
        )
    for key, shape in expected.items():
        if tuple(header[key]["shape"]) != shape:
            raise FileFormatError(
                f"{path!r}: tensor {key!r} has shape {tuple(header[key]['shape'])}, "
                f"the architecture needs {shape}"
            )
    net = _build(arch, tables)
    state = {}
    for key, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        state[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    net.load_state_dict(state, strict=True)
    if backend is not None:
        net.to(backend, device=device)
    return net

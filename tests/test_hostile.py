"""Hostile and careless input (issue 16): the file loader, odd array types, the curvature API
and ``from_torch``.

Every case of the issue is one test here (named in its docstring). The loader cases that a
regression could turn into a hang or an unbounded allocation (a FIFO, ``/dev/zero``, large
garbage files) run in a forked child under a wall-clock alarm and an address-space limit, so
they fail instead of blocking or exhausting memory; big files are made sparse with
``truncate`` (no bytes written).
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import sys
import tempfile
import time
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hessquik_core as hq
from hessquik_core import io as hio
from hessquik_core.io import FileFormatError

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _vm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _bounded(fn, *, seconds: float = 5.0, memory: int = 256 * 2**20):
    """Run ``fn()`` in a forked child with a wall-clock alarm of ``seconds`` and at most
    ``memory`` bytes of address space beyond the parent's; return ``(exception type name or
    'ok', message, seconds fn() took)``. A child that hangs anyway is killed."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    import resource

    vm = _vm_bytes()
    r, w = os.pipe()
    t0 = time.monotonic()
    with warnings.catch_warnings():
        # forking a threaded process: Python 3.12+ and JAX (once initialised) warn of deadlocks;
        # the child only runs hq.load (NumPy, json, hashlib) and never touches those threads
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        out = "0:BaseException:child failed"
        try:
            os.close(r)
            if vm is not None:
                soft, hard = resource.getrlimit(resource.RLIMIT_AS)
                lim = vm + memory
                if hard != resource.RLIM_INFINITY:
                    lim = min(lim, hard)
                resource.setrlimit(resource.RLIMIT_AS, (lim, hard))

            def alarm(signum, frame):
                raise TimeoutError(f"still running after {seconds} s")

            signal.signal(signal.SIGALRM, alarm)
            signal.setitimer(signal.ITIMER_REAL, seconds)
            start = time.perf_counter()
            try:
                fn()
                out = "ok:"
            except BaseException as err:  # noqa: BLE001 - everything is reported to the parent
                out = f"{type(err).__qualname__}:{err}"
            signal.setitimer(signal.ITIMER_REAL, 0)
            out = f"{time.perf_counter() - start:.6f}:{out}"
            os.write(w, out.encode("utf-8", "replace")[:8192])
        finally:
            os._exit(0)
    os.close(w)
    try:
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - t0 > seconds + 10:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"child still running after {seconds + 10} s")
            time.sleep(0.005)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
    wall, _, rest = b"".join(chunks).decode().partition(":")
    kind, _, msg = rest.partition(":")
    return kind, msg, float(wall)  # wall: seconds fn() itself took in the child


def _load_in_child(path, **kw):
    return _bounded(lambda: hq.load(path, **kw))


def _valid_file(tmp_path, net=None, name="ok.safetensors"):
    net = (
        hq.FullyConnectedNN([3, 4, 2], act=hq.Softplus(beta=2.0, threshold=7.0), seed=0)
        if net is None
        else net
    )
    p = tmp_path / name
    hq.save(net, p)
    return p


def _split(raw: bytes):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header, data: bytes, *, rehash: bool) -> bytes:
    """Re-serialise a (possibly mutated) header; with ``rehash``, recompute the checksum
    the way an attacker would (the checks must not rely on it)."""
    meta = header.get("__metadata__")
    if rehash and isinstance(meta, dict):
        table = {k: v for k, v in header.items() if k != "__metadata__"}
        try:
            meta["sha256"] = hio._digest(meta.get("architecture"), table, data)
        except (TypeError, ValueError):  # e.g. NaN in the table: no canonical JSON
            pass
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _rewrite(tmp_path, p, *, header_fn=None, arch_fn=None, rehash=True, name="bad.safetensors"):
    """Copy of the file at ``p`` with ``arch_fn(architecture tree)`` (its return value, if not
    None, replaces the tree) and then ``header_fn(header)`` applied in place."""
    header, data = _split(p.read_bytes())
    if arch_fn is not None:
        arch = json.loads(header["__metadata__"]["architecture"])
        out = arch_fn(arch)
        header["__metadata__"]["architecture"] = json.dumps(arch if out is None else out)
    if header_fn is not None:
        header_fn(header)
    q = tmp_path / name
    q.write_bytes(_join(header, data, rehash=rehash))
    return q


# --------------------------------------------------------------------------
# 1. the loader reads nothing unbounded (FIFO, /dev/zero, large garbage files)
# --------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_case01_fifo_is_refused_without_blocking(tmp_path):
    """Issue 16.1: a FIFO with no writer made ``load`` block forever."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    kind, msg, wall = _load_in_child(fifo)
    assert kind == "FileFormatError", (kind, msg)
    assert "FIFO" in msg and "regular file" in msg
    assert wall < 2.0


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_case01_dev_zero_is_refused_without_reading():
    """Issue 16.1: ``/dev/zero`` was read until MemoryError."""
    kind, msg, wall = _load_in_child("/dev/zero")
    assert kind == "FileFormatError", (kind, msg)
    assert "character device" in msg
    assert wall < 2.0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo and symlinks")
def test_case01_symlinks_to_special_files_are_refused(tmp_path):
    """The check is on the opened file, not on the name: a symlink named like a network file
    that points to /dev/zero or to a FIFO is refused the same way."""
    os.mkfifo(tmp_path / "fifo")
    for target, what in (("/dev/zero", "character device"), (tmp_path / "fifo", "FIFO")):
        link = tmp_path / f"link{len(what)}.safetensors"
        os.symlink(target, link)
        kind, msg, wall = _load_in_child(link)
        assert kind == "FileFormatError" and what in msg, (kind, msg)
        assert wall < 2.0


def _sparse(path, size: int, head: bytes) -> None:
    """A file of ``size`` bytes starting with ``head``; the rest is a hole (no bytes written)."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)


@pytest.mark.parametrize(
    "size, head, match",
    [
        # header length field of garbage: 2**64 - 1
        (2**30, b"\xff" * 8 + b"garbage", "header length"),
        # a header length within the file but beyond the cap (a 2 GiB "header")
        (3 * 2**30, struct.pack("<Q", 2**31), "header length .* exceeds"),
        # a small header of garbage, then a gigabyte
        (2**30, struct.pack("<Q", 64) + b"\x00garbage" * 8, "not valid JSON"),
        # a header length just at the cap, all zero bytes (16 MiB are read, no more)
        (2**30, struct.pack("<Q", hio.MAX_HEADER_BYTES), "not valid JSON"),
    ],
)
def test_case01_large_garbage_files_cost_only_their_header(tmp_path, size, head, match):
    """Issue 16.1: a 1 GiB garbage file cost 1 GB and 2 s; a 3 GiB one raised MemoryError."""
    p = tmp_path / "garbage.safetensors"
    _sparse(p, size, head)
    kind, msg, wall = _load_in_child(p)
    assert kind == "FileFormatError", (kind, msg)
    assert re.search(match, msg), msg
    assert wall < 2.0


def test_case01_valid_header_then_gigabytes_is_refused_before_the_data(tmp_path):
    """A valid header followed by 3 GiB (sparse) is refused from the sizes alone."""
    raw = _valid_file(tmp_path).read_bytes()
    p = tmp_path / "padded.safetensors"
    _sparse(p, 3 * 2**30, raw)
    kind, msg, wall = _load_in_child(p)
    assert kind == "FileFormatError", (kind, msg)
    assert "unexpected bytes after the tensor data" in msg
    assert wall < 2.0


def test_case01_table_claiming_gigabytes_is_checked_against_the_architecture_first(tmp_path):
    """A table that announces a 1 GiB tensor (and a file that big) is refused from the
    architecture before any data byte is read: memory stays bounded."""
    p = _valid_file(tmp_path, hq.NN(hq.SingleLayer(2, 2, bias=False, seed=0)))
    header, _ = _split(p.read_bytes())
    header["0.K"] = {"dtype": "F64", "shape": [2**14, 2**13], "data_offsets": [0, 2**30]}
    text = json.dumps(header).encode()
    q = tmp_path / "claims.safetensors"
    _sparse(q, 8 + len(text) + 2**30, struct.pack("<Q", len(text)) + text)
    kind, msg, wall = _load_in_child(q)
    assert kind == "FileFormatError", (kind, msg)
    assert "architecture needs (2, 2)" in msg
    assert wall < 2.0


def test_case01_directory_and_missing_file_stay_os_errors(tmp_path):
    with pytest.raises(IsADirectoryError):
        hq.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        hq.load(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------
# 2. hostile header values raise FileFormatError naming the field
# --------------------------------------------------------------------------


def _set_dtype(h):
    h["0.K"]["dtype"] = ["F64"]


def _meta(key, value):
    def f(h):
        h["__metadata__"][key] = value

    return f


def _first_layer(key, value):
    def f(a):
        a["blocks"][0][key] = value

    return f


def _act_cfg(key, value):
    def f(a):
        a["blocks"][0]["act"]["config"][key] = value

    return f


def _act_name(value):
    def f(a):
        a["blocks"][0]["act"]["name"] = value

    return f


@pytest.mark.parametrize(
    "header_fn, arch_fn, rehash, match",
    [
        # dtypes are checked before the checksum: no forgery needed
        (_set_dtype, None, False, r"tensor '0\.K' has dtype \['F64'\]"),
        (None, _first_layer("layer", ["SingleLayer"]), True, r"unknown layer class \['SingleLayer'\]"),
        (None, _first_layer("layer", {"a": 1}), True, "unknown layer class {'a': 1}"),
        (None, lambda a: a.update(network=["NN"]), True, r"unknown network class \['NN'\]"),
        (None, _act_name(["softplus"]), True, r"unknown activation \['softplus'\]"),
        (None, _act_name({"softplus": 1}), True, "unknown activation"),
        (None, _act_cfg("threshold", 10**400), True, "'threshold' must be a finite number, got 1000"),
        (None, _act_cfg("beta", "2"), True, "'beta' must be a finite number"),
        (_meta("format_version", "\u00b2"), None, False, "invalid format_version '\u00b2'"),
        (_meta("format_version", "9" * 5000), None, False, "invalid format_version"),
        (_meta("format_version", 1), None, False, "invalid format_version 1"),
        (_meta("architecture", ["x"]), None, False, "metadata entry 'architecture'"),
        (_meta("sha256", None), None, False, "metadata entry 'sha256'"),
        (lambda h: h["0.K"].update(shape=[3, "4"]), None, False, r"tensor '0\.K' has an invalid 'shape'"),
        (lambda h: h["0.K"].update(shape=[2**70, 0]), None, False, "invalid 'shape'"),
        (lambda h: h["0.K"].update(shape=[1] * 40), None, False, "invalid 'shape'"),
        (lambda h: h["0.K"].update(data_offsets=[0, 1.5]), None, False, "invalid 'data_offsets'"),
        (lambda h: h["0.K"].update(data_offsets={"0": 1}), None, False, "invalid 'data_offsets'"),
        (lambda h: h.update({"0.K": [1, 2]}), None, False, r"tensor '0\.K' is malformed"),
        (lambda h: h.update({"__metadata__": "x"}), None, False, "not a hessquik-core network"),
    ],
)
def test_case02_hostile_header_values_raise_file_format_error(tmp_path, header_fn, arch_fn, rehash, match):
    """Issue 16.2: a list as dtype gave TypeError (unhashable), a list/dict as class or
    activation name TypeError, a threshold of 10**400 OverflowError, format_version '²' a bare
    int() ValueError, 5000 digits Python's int-digits error."""
    p = _valid_file(tmp_path)
    q = _rewrite(tmp_path, p, header_fn=header_fn, arch_fn=arch_fn, rehash=rehash)
    with pytest.raises(FileFormatError, match=match) as info:
        hq.load(q)
    assert type(info.value) is FileFormatError
    assert len(str(info.value)) <= FileFormatError.MAX_LENGTH


# --------------------------------------------------------------------------
# 3. the writer and the reader accept the same set
# --------------------------------------------------------------------------


def _nested(levels: int):
    net = hq.NN(hq.SingleLayer(2, 2, act="tanh", seed=0))
    for _ in range(levels - 1):
        net = hq.NN(net)
    return net


def test_case03_save_refuses_what_load_refuses(tmp_path):
    """Issue 16.3: a network nested 70 levels deep saved, then failed to load."""
    deepest_ok = hio.MAX_DEPTH  # NN levels whose innermost layer is at depth MAX_DEPTH
    ok = _nested(deepest_ok)
    hq.save(ok, tmp_path / "ok.safetensors")
    back = hq.load(tmp_path / "ok.safetensors")
    x = np.ones((1, 2))
    np.testing.assert_array_equal(back(x).value, ok(x).value)
    for levels in (deepest_ok + 1, 70, 500):
        with pytest.raises(ValueError, match=f"nested deeper than {hio.MAX_DEPTH}"):
            hq.save(_nested(levels), tmp_path / "deep.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["ok.safetensors"]  # nothing written


def test_case03_save_refuses_headers_beyond_the_cap(tmp_path, monkeypatch):
    net = hq.FullyConnectedNN([3, 4, 2], act="tanh", seed=0)
    monkeypatch.setattr(hio, "_MAX_HEADER", 512)
    with pytest.raises(ValueError, match="more than the 512 that load accepts"):
        hq.save(net, tmp_path / "n.safetensors")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# 4. messages are short, duplicate keys refused, no doubled prefixes
# --------------------------------------------------------------------------


def test_case04_error_messages_are_capped(tmp_path):
    """Issue 16.4: 200 000 zero-size extra tensors gave a 2 MB message (20 000 here, whose
    uncapped message would be 200 kB, keep the test fast)."""
    p = _valid_file(tmp_path)
    header, data = _split(p.read_bytes())
    end = len(data)
    for i in range(20_000):
        header[f"evil.{i}"] = {"dtype": "F64", "shape": [0], "data_offsets": [end, end]}
    q = tmp_path / "many.safetensors"
    q.write_bytes(_join(header, data, rehash=False))  # refused before the checksum
    with pytest.raises(FileFormatError, match=r"unexpected \['evil\.0', .* \(20000 in all\)\]") as info:
        hq.load(q)
    assert len(str(info.value)) <= FileFormatError.MAX_LENGTH
    # a huge value quoted from the file is abbreviated, and any message is cut
    q = _rewrite(tmp_path, p, arch_fn=_first_layer("layer", "L" * 10**6))
    with pytest.raises(FileFormatError, match="unknown layer class 'LLL") as info:
        hq.load(q)
    # the hostile name is capped; the list of known classes that follows grows with the
    # registered layers and is bounded by the message cap
    msg = str(info.value)
    assert "; expected one of" in msg and len(msg.split("; expected one of")[0]) < 400
    assert len(msg) <= FileFormatError.MAX_LENGTH
    assert len(str(FileFormatError("x" * 10**6))) <= FileFormatError.MAX_LENGTH


def _dup(obj: dict, key: str) -> str:
    """JSON text of ``obj`` with member ``key`` written twice (json.dumps cannot)."""
    return "{" + json.dumps(key) + ": " + json.dumps(obj[key]) + ", " + json.dumps(obj)[1:]


def _header_text(raw_text: str, data: bytes) -> bytes:
    text = raw_text.encode()
    return struct.pack("<Q", len(text)) + text + data


def test_case04_duplicate_keys_are_refused(tmp_path):
    """Issue 16.4: duplicate header keys were accepted silently (last wins)."""
    p = _valid_file(tmp_path)
    header, data = _split(p.read_bytes())
    q = tmp_path / "dup.safetensors"
    q.write_bytes(_header_text(_dup(header, "0.K"), data))  # a tensor entry
    with pytest.raises(FileFormatError, match=r"duplicate key '0\.K'"):
        hq.load(q)
    meta = header["__metadata__"]
    rest = json.dumps({k: v for k, v in header.items() if k != "__metadata__"})
    q.write_bytes(_header_text('{"__metadata__": ' + _dup(meta, "format") + ", " + rest[1:], data))
    with pytest.raises(FileFormatError, match="duplicate key 'format'"):
        hq.load(q)
    # inside the architecture JSON (with a valid checksum)
    meta["architecture"] = _dup(json.loads(meta["architecture"]), "network")
    q.write_bytes(_join(header, data, rehash=True))
    with pytest.raises(FileFormatError, match="invalid architecture: duplicate key 'network'"):
        hq.load(q)


def test_case04_no_repeated_prefixes(tmp_path):
    """Issue 16.4: "invalid architecture at …: invalid architecture at …"."""
    p = _valid_file(tmp_path)
    for fn in (_act_cfg("beta", "2"), _act_cfg("beta", -1.0), _act_cfg("threshold", float("nan"))):
        q = _rewrite(tmp_path, p, arch_fn=fn)
        with pytest.raises(FileFormatError) as info:
            hq.load(q)
        assert str(info.value).count("invalid architecture at") == 1, str(info.value)


# --------------------------------------------------------------------------
# property: random mutations of valid files raise FileFormatError and run nothing
# --------------------------------------------------------------------------

# events that loading must never cause (it may only open the file it was given)
_FORBIDDEN_EVENTS = (
    "exec",
    "compile",
    "import",
    "pickle.",
    "marshal.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.kill",
    "subprocess.",
    "ctypes.",
    "socket.",
    "urllib.",
    "shutil.",
    "os.remove",
    "os.unlink",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.truncate",
    "builtins.input",
    "webbrowser.",
)
_AUDIT: dict = {"target": None, "events": []}


def _audit_hook(event, args):
    target = _AUDIT["target"]
    if target is None:
        return
    if event == "open":
        name, mode = args[0], args[1]
        if not (isinstance(name, int) or os.fspath(name) == target) or (mode not in (None, "r", "rb")):
            _AUDIT["events"].append((event, repr(args)[:200]))
    elif event.startswith(_FORBIDDEN_EVENTS):
        _AUDIT["events"].append((event, repr(args)[:200]))


sys.addaudithook(_audit_hook)  # audit hooks cannot be removed: it is idle unless a target is set


def _paths(obj, prefix=()):
    """Every path (tuple of keys / indices) into a JSON tree, the root excluded."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _replace(obj, path, value):
    if len(path) == 1:
        obj[path[0]] = value
        return
    _replace(obj[path[0]], path[1:], value)


def _delete(obj, path):
    if len(path) == 1:
        del obj[path[0]]
        return
    _delete(obj[path[0]], path[1:])


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**400, 10**4000, -(10**30)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "\u00b2",
            "",
            "F64",
            "F16",
            "I64",
            "NN",
            "SingleLayer",
            "softplus",
            "os.system",
            "__import__('os').system('touch pwned')",
            "__metadata__",
            "0.K",
            "hessquik-core",
            "9" * 5000,
        ]
    )
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

_NETS = {
    "fc": lambda: hq.FullyConnectedNN([2, 3, 2], act=hq.Softplus(beta=2.0, threshold=7.0), seed=0),
    "resnet": lambda: hq.ResnetNN(2, 2, h=0.5, act="tanh", seed=1),
    "icnn": lambda: hq.ICNN(2, [None, 3, 1], act="softplus", seed=2),
    "nested": lambda: hq.NN(hq.NN(hq.SingleLayer(2, 3, act="sin", seed=3)), hq.QuadraticLayer(3, 2, seed=4)),
}
_TEMPLATES: dict = {}


def _template(name):
    if name not in _TEMPLATES:
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "t.safetensors")
            hq.save(_NETS[name](), p)
            with open(p, "rb") as fh:
                _TEMPLATES[name] = fh.read()
    return _TEMPLATES[name]


@st.composite
def _mutated_files(draw):
    """A valid file with one JSON value of its header or of its architecture replaced by
    random JSON of any type (or deleted), the checksum recomputed or not."""
    raw = _template(draw(st.sampled_from(sorted(_NETS))))
    header, data = _split(raw)
    arch = json.loads(header["__metadata__"]["architecture"])
    in_arch = draw(st.booleans())
    tree = arch if in_arch else header
    path = draw(st.sampled_from(list(_paths(tree))))
    if draw(st.integers(0, 5)) == 0:
        _delete(tree, path)
    else:
        _replace(tree, path, draw(_json_values))
    if in_arch:
        header["__metadata__"]["architecture"] = json.dumps(arch)
    return _join(header, data, rehash=draw(st.booleans()))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=_mutated_files())
def test_property_mutated_files_raise_only_file_format_error(tmp_path, raw):
    """Whatever replaces a header or architecture value, ``load`` either returns a network or
    raises FileFormatError (never TypeError, OverflowError, RecursionError, ...), and it
    executes, imports, unpickles, spawns or writes nothing."""
    p = tmp_path / "mut.safetensors"
    p.write_bytes(raw)
    _AUDIT["events"] = []
    _AUDIT["target"] = os.fspath(p)
    try:
        net = hq.load(p)
    except FileFormatError as err:
        assert type(err) is FileFormatError
        assert len(str(err)) <= FileFormatError.MAX_LENGTH
    else:
        assert isinstance(net, (hq.NN, hq.SingleLayer, hq.QuadraticLayer))
    finally:
        _AUDIT["target"] = None
    assert _AUDIT["events"] == []
    assert not os.path.exists("pwned")


# --------------------------------------------------------------------------
# 5. non-native byte order: converted once, on every path
# --------------------------------------------------------------------------

_BIG = ">" if sys.byteorder == "little" else "<"  # the non-native byte order of this machine


def _net_d3():
    return hq.FullyConnectedNN([3, 4, 2], act="tanh", seed=0)


@pytest.mark.parametrize("backend", [None, "numpy", "torch", "generic"])
def test_case05_non_native_byte_order_is_converted_on_every_path(backend):
    """Issue 16.5: ``np.ones((5, 3), '>f8')`` with backend='torch' gave AttributeError
    (no torch.'>f8'); native directions with such x gave a dtype TypeError."""
    if backend == "torch":
        pytest.importorskip("torch")
    net = _net_d3()
    x = np.random.default_rng(0).standard_normal((5, 3))
    xb = x.astype(_BIG + "f8")
    keep = xb.copy()
    V = np.random.default_rng(1).standard_normal((3, 2))
    want = net(x, gradient=True, hessian=True, backend=backend)
    got = net(xb, gradient=True, hessian=True, backend=backend)
    for name in ("value", "gradient", "hessian"):
        a = getattr(got, name)
        assert isinstance(a, np.ndarray) and a.dtype == np.float64 and a.dtype.isnative
        np.testing.assert_array_equal(a, getattr(want, name))
    ref = net(x, gradient=True, directions=V, backend=backend)
    for xx, vv in ((xb, V), (x, V.astype(_BIG + "f8")), (xb, V.astype(_BIG + "f8"))):
        got = net(xx, gradient=True, directions=vv, backend=backend)
        np.testing.assert_array_equal(got.gradient, ref.gradient)
    np.testing.assert_array_equal(xb, keep)  # the caller's array is not modified
    assert xb.dtype.byteorder == _BIG


def test_case05_non_native_byte_order_in_curvature():
    torch = pytest.importorskip("torch")
    from hessquik_core import curvature as cv

    net = _net_d3()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3))
    y = rng.integers(0, 2, 6)
    P = cv.parameter_layout(net).size
    v = rng.standard_normal(P)
    want = cv.hvp(net, x, y, "cross_entropy", v)
    xb, yb, vb = x.astype(_BIG + "f8"), y.astype(_BIG + "i8"), v.astype(_BIG + "f8")
    for backend in (None, "torch"):
        got = cv.hvp(net, xb, yb, "cross_entropy", vb, backend=backend)
        assert isinstance(got, np.ndarray) and got.dtype.isnative
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # torch data with big-endian NumPy labels
    got = cv.hvp(net, torch.from_numpy(x), yb, "cross_entropy", torch.from_numpy(v))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)
    # a dense big-endian matrix as an operator
    A = np.diag([3.0, 2.0, 1.0, 0.5]).astype(_BIG + "f8")
    vals, _ = cv.top_eigenpairs(A, 2)
    np.testing.assert_allclose(vals, [3.0, 2.0], rtol=1e-12)


# --------------------------------------------------------------------------
# 6. max_memory: any real number type
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget",
    [10**9, 1e9, np.int64(10**9), np.uint64(10**9), np.int32(10**9), np.float32(1e9), np.float64(1e9)]
    + [Fraction(10**9), float("inf")],
)
def test_case06_max_memory_accepts_any_real_number(budget):
    """Issue 16.6: ``max_memory=np.int64(10**9)`` was refused while np.float64 was accepted."""
    net = _net_d3()
    x = np.random.default_rng(0).standard_normal((7, 3))
    want = net(x, gradient=True, hessian=True)
    got = net(x, gradient=True, hessian=True, max_memory=budget)
    np.testing.assert_array_equal(got.hessian, want.hessian)


def test_case06_small_integer_budget_chunks_and_tiny_one_is_refused():
    net = _net_d3()
    x = np.random.default_rng(0).standard_normal((7, 3))
    want = net(x, gradient=True, hessian=True)
    one = net.cost(1, hessian=True).routes["backward"].peak_bytes
    got = net(x, gradient=True, hessian=True, mode="backward", max_memory=np.int64(int(2.5 * one)))
    np.testing.assert_allclose(got.hessian, want.hessian, rtol=1e-14, atol=1e-15)
    with pytest.raises(hq.MemoryBudgetError):
        net(x, gradient=True, hessian=True, max_memory=np.int64(1))


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (True, TypeError, "positive number of bytes"),
        (np.bool_(True), TypeError, "positive number of bytes"),
        ("1e9", TypeError, "got str"),
        ([10**9], TypeError, "got list"),
        (float("nan"), ValueError, "positive number"),
        (np.float64("nan"), ValueError, "positive number"),
        (-1, ValueError, "positive number"),
        (0, ValueError, "positive number"),
        (np.int64(-5), ValueError, "positive number"),
    ],
)
def test_case06_max_memory_refuses_bool_nan_and_negative(bad, exc, match):
    net = _net_d3()
    with pytest.raises(exc, match=match):
        net(np.ones((2, 3)), gradient=True, max_memory=bad)


def test_case06_curvature_memory_budget_same_rules():
    from hessquik_core import curvature as cv

    net = _net_d3()
    x, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    a = cv.hessian_operator(net, x, y, "cross_entropy", memory_budget=np.int64(4096))
    b = cv.hessian_operator(net, x, y, "cross_entropy", memory_budget=4096)
    assert a.block_size == b.block_size
    for bad, exc in ((float("nan"), ValueError), (-1.0, ValueError), (True, TypeError), ("1", TypeError)):
        with pytest.raises(exc, match="memory_budget must be a positive number of bytes"):
            cv.hessian_operator(net, x, y, "cross_entropy", memory_budget=bad)


# --------------------------------------------------------------------------
# 7. np.matrix converted, masked arrays refused, at the door
# --------------------------------------------------------------------------


def _matrix(a):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # NumPy discourages np.matrix
        return np.asmatrix(a)


def test_case07_matrix_is_converted_and_masked_array_refused():
    """Issue 16.7: np.matrix and np.ma.MaskedArray failed deep inside with NumPy's messages
    ("shapes (5,8) and (5,8) not aligned")."""
    net = _net_d3()
    x = np.random.default_rng(0).standard_normal((5, 3))
    V = np.random.default_rng(1).standard_normal((3, 2))
    want = net(x, gradient=True, hessian=True)
    got = net(_matrix(x), gradient=True, hessian=True)
    for name in ("value", "gradient", "hessian"):
        a = getattr(got, name)
        assert type(a) is np.ndarray
        np.testing.assert_array_equal(a, getattr(want, name))
    got = net(x, gradient=True, directions=_matrix(V))
    np.testing.assert_array_equal(got.gradient, net(x, gradient=True, directions=V).gradient)
    masked = np.ma.masked_array(x, mask=np.zeros_like(x, dtype=bool))
    with pytest.raises(TypeError, match=r"x is a numpy\.ma\.MaskedArray.*mask"):
        net(masked, gradient=True)
    with pytest.raises(TypeError, match=r"directions is a numpy\.ma\.MaskedArray"):
        net(x, gradient=True, directions=np.ma.masked_array(V))


def test_case07_matrix_and_masked_in_curvature():
    from hessquik_core import curvature as cv

    net = _net_d3()
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    P = cv.parameter_layout(net).size
    v = rng.standard_normal((P, 2))
    want = cv.hvp(net, x, y, "mse", v)
    got = cv.hvp(net, _matrix(x), _matrix(y), "mse", _matrix(v))
    assert type(got) is np.ndarray
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    for args in ((np.ma.masked_array(x), y), (x, np.ma.masked_array(y))):
        with pytest.raises(TypeError, match="MaskedArray"):
            cv.gradient(net, *args, "mse")
    with pytest.raises(TypeError, match="V is a numpy.ma.MaskedArray"):
        cv.hessian_operator(net, x, y, "mse").matmat(np.ma.masked_array(v))
    A = np.diag([3.0, 2.0, 1.0])
    vals, vecs = cv.top_eigenpairs(_matrix(A), 1)
    assert type(vecs) is np.ndarray and vecs.shape == (3, 1)
    np.testing.assert_allclose(vals, [3.0])
    with pytest.raises(TypeError, match="A is a numpy.ma.MaskedArray"):
        cv.top_eigenpairs(np.ma.masked_array(A), 1)


# --------------------------------------------------------------------------
# 8. exactly zero operator: exact zero eigenpairs on the default eigensolver
# --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["LA", "LM", "SA"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_case08_zero_operator_gives_exact_zero_eigenpairs(which, dtype):
    """Issue 16.8: ``top_eigenpairs(np.zeros((10, 10)), 3)`` raised ARPACK's "Starting vector
    is zero" (-9) on the default CPU method."""
    from hessquik_core import curvature as cv

    vals, vecs = cv.top_eigenpairs(np.zeros((10, 10), dtype=dtype), 3, which=which)
    assert vals.shape == (3,) and vecs.shape == (10, 3)
    np.testing.assert_array_equal(vals, 0.0)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=tol)


def test_case08_empirical_fisher_of_a_network_with_zero_last_layer():
    """The practical case: a zero last layer and zero targets make every per-example gradient,
    hence the empirical Fisher, exactly zero."""
    from hessquik_core import curvature as cv

    net = hq.FullyConnectedNN([3, 4, 2], act="tanh", seed=0)
    state = net.state_dict()
    net.load_state_dict({**state, "1.K": np.zeros((4, 2)), "1.b": np.zeros(2)})
    x, y = np.random.default_rng(0).standard_normal((6, 3)), np.zeros((6, 2))
    op = cv.empirical_fisher_operator(net, x, y, "mse")
    vals, vecs = cv.top_eigenpairs(op, 3)
    np.testing.assert_array_equal(vals, 0.0)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(op @ vecs, 0.0)


# --------------------------------------------------------------------------
# 9. curvature argument mistakes: a TypeError/ValueError saying what was expected
# --------------------------------------------------------------------------


def test_case09_numpy_labels_with_torch_data_are_converted():
    """Issue 16.9: torch x with NumPy labels gave AttributeError ('Int64DType' object has no
    attribute 'is_floating_point'). Documented conversion: a NumPy y goes to x's library."""
    torch = pytest.importorskip("torch")
    from hessquik_core import curvature as cv

    net = _net_d3()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3))
    labels, targets = rng.integers(0, 2, 6), rng.standard_normal((6, 2))
    xt = torch.from_numpy(x)
    for y, loss in ((labels, "cross_entropy"), (targets, "mse")):
        want = cv.gradient(net, xt, torch.from_numpy(y), loss)
        got = cv.gradient(net, xt, y, loss)
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(TypeError, match="y must be an array of the same library as x"):
        cv.gradient(net, x, torch.from_numpy(labels), "cross_entropy")
    with pytest.raises(TypeError, match="integer class labels or floating targets"):
        cv.gradient(net, xt, np.array(["a"] * 6), "cross_entropy")


def test_case09_operand_mistakes():
    """Issue 16.9: a list v, a float32 v on a float64 torch operator, a float64 v on a float32
    NumPy operator (silently float64), a (P, 0) block, a NumPy v on a torch operator."""
    torch = pytest.importorskip("torch")
    from hessquik_core import curvature as cv

    net = _net_d3()
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    P = cv.parameter_layout(net).size
    with pytest.raises(TypeError, match=r"v must be an array of the operator's library \(numpy"):
        cv.hvp(net, x, y, "cross_entropy", [0.0] * P)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with pytest.raises(TypeError, match="v must have the operator's dtype torch.float64, got torch.float32"):
        cv.hvp(net, xt, yt, "cross_entropy", torch.zeros(P, dtype=torch.float32))
    # a NumPy v on a torch operator is the documented host round trip (SciPy's eigensolvers
    # hand NumPy vectors): converted in, the product comes back as NumPy
    v = rng.standard_normal(P)
    host = cv.hvp(net, xt, yt, "cross_entropy", v)
    assert isinstance(host, np.ndarray) and host.dtype == np.float64
    np.testing.assert_allclose(
        host, cv.hvp(net, xt, yt, "cross_entropy", torch.from_numpy(v)).numpy(), rtol=1e-14
    )
    with pytest.raises(TypeError, match="v must have the operator's dtype float64, got float32"):
        cv.hvp(net, xt, yt, "cross_entropy", np.zeros(P, dtype=np.float32))
    with pytest.raises(TypeError, match="v must have the operator's dtype float32, got float64"):
        cv.hvp(net, x.astype(np.float32), y, "cross_entropy", np.zeros(P))
    op32 = cv.hessian_operator(net, x.astype(np.float32), y, "cross_entropy")
    assert (op32 @ np.ones(P, dtype=np.float32)).dtype == np.float32
    for op in (cv.hessian_operator(net, x, y, "cross_entropy"), cv.aslinearoperator(np.eye(P))):
        empty = op @ np.zeros((P, 0))
        assert isinstance(empty, np.ndarray) and empty.shape == (P, 0)
        assert op.matmat(np.zeros((P, 0))).shape == (P, 0)
        assert op.quadratic_form(np.zeros((P, 0))).shape == (0,)
    assert cv.hvp(net, x, y, "cross_entropy", np.zeros((P, 0))).shape == (P, 0)
    with pytest.raises(TypeError, match="V must be an array"):
        op.matmat([[1.0]] * P)


@pytest.mark.parametrize("tol", [float("nan"), float("inf"), -1.0, True, "0", None])
def test_case09_bad_tol_is_refused(tol):
    """Issue 16.9: ``tol=NaN`` was accepted, then reported non-convergence with residuals 0."""
    from hessquik_core import curvature as cv

    A = np.diag(np.arange(1.0, 7.0))
    for method in ("scipy", "lanczos"):
        with pytest.raises(ValueError, match="tol must be a finite non-negative number"):
            cv.top_eigenpairs(A, 2, tol=tol, method=method)


def test_case09_numpy_scalar_tol_is_accepted():
    from hessquik_core import curvature as cv

    A = np.diag(np.arange(1.0, 7.0))
    for tol in (np.float64(1e-10), np.float32(1e-6), 0, np.int64(0)):
        vals, _ = cv.top_eigenpairs(A, 2, tol=tol)
        np.testing.assert_allclose(vals, [6.0, 5.0], rtol=1e-6)


# --------------------------------------------------------------------------
# 10. from_torch refuses hooks and parametrizations, naming the module
# --------------------------------------------------------------------------


def _torch_model():
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 2))).double()


def test_case10_from_torch_refuses_hooks_and_parametrizations():
    """Issue 16.10: a Linear with a forward hook (pre-hook, parametrization) was converted
    without a word, and the converted network computed something else."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.nn.utils import parametrize

    x = np.random.default_rng(0).standard_normal((4, 3))

    m = _torch_model()
    h = m[2][0].register_forward_hook(lambda mod, inp, out: 2 * out)
    with pytest.raises(ValueError, match=r"submodule '2\.0' \(Linear\) has a forward hook"):
        hq.from_torch(m)
    h.remove()
    net = hq.from_torch(m)  # without the hook: converted, and equal
    np.testing.assert_allclose(net(x).value, m(torch.from_numpy(x)).detach().numpy(), rtol=1e-12)

    m = _torch_model()
    m[0].register_forward_pre_hook(lambda mod, inp: (inp[0] + 1,))
    with pytest.raises(ValueError, match=r"submodule '0' \(Linear\) has a forward pre-hook"):
        hq.from_torch(m)

    m = _torch_model()
    m.register_forward_hook(lambda mod, inp, out: out + 1)  # on the root Sequential
    with pytest.raises(ValueError, match=r"submodule '<root>' \(Sequential\) has a forward hook"):
        hq.from_torch(m)

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    m = _torch_model()
    parametrize.register_parametrization(m[0], "weight", Doubled())
    with pytest.raises(ValueError, match=r"submodule '0' .* carries a parametrization .*parametrize"):
        hq.from_torch(m)
    with torch.no_grad():
        parametrize.remove_parametrizations(m[0], "weight", leave_parametrized=True)
    net = hq.from_torch(m)
    np.testing.assert_allclose(net(x).value, m(torch.from_numpy(x)).detach().numpy(), rtol=1e-12)

    # inside a block: the Linear of a ResidualBlock
    from hessquik_core.interop import ResidualBlock

    block = ResidualBlock(3, h=0.5, act=nn.Tanh()).double()
    block.linear.register_forward_hook(lambda mod, inp, out: out * 0)
    with pytest.raises(ValueError, match=r"submodule '0\.linear' \(Linear\) has a forward hook"):
        hq.from_torch(nn.Sequential(block))


def test_case10_from_torch_refuses_global_hooks():
    pytest.importorskip("torch")
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    for register, kind in (
        (register_module_forward_hook, "hook"),
        (register_module_forward_pre_hook, "pre-hook"),
    ):
        handle = register(lambda *args: None)
        try:
            with pytest.raises(ValueError, match=f"a global forward {kind} is registered"):
                hq.from_torch(_torch_model())
        finally:
            handle.remove()
    hq.from_torch(_torch_model())

"""save / load (safetensors + JSON architecture, never pickle) and Module.to moves."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
from _reference import LAYER_KINDS, make_network

import hessquik_core as hq
from hessquik_core import io as hio
from hessquik_core.io import FileFormatError


def _nets():
    rng = np.random.default_rng(0)
    yield (
        "FullyConnectedNN",
        hq.FullyConnectedNN([3, 5, 2], act=hq.Softplus(beta=2.0, threshold=7.0), seed=rng),
    )
    yield "ResnetNN", hq.ResnetNN(3, 2, h=0.37, act="sin", seed=rng)
    yield "ICNN", hq.ICNN(3, [None, 4, 2], act="softplus", seed=rng)
    for kind in LAYER_KINDS:
        yield kind, make_network(kind, 3, "tanh", seed=1)
    yield (
        "nobias",
        hq.NN(
            hq.SingleLayer(3, 4, act="silu", bias=False, seed=rng),
            hq.ResnetLayer(4, h=2.0, act="antitanh", bias=False, seed=rng),
            hq.ICNNLayer(4, None, 3, act="quadratic", bias=False, seed=rng),
        ),
    )
    yield (
        "deeply_nested",
        hq.NN(
            hq.NN(hq.NN(hq.SingleLayer(3, 3, act="sigmoid", seed=rng))), hq.NN(hq.SingleLayer(3, 2, seed=rng))
        ),
    )
    yield "layer", hq.SingleLayer(3, 2, act="tanh", seed=rng)


def _net(name):
    """A fresh network (tests move parameters around)."""
    return dict(_nets())[name]


NET_NAMES = sorted(dict(_nets()))


def _same_structure(a, b):
    assert type(a) is type(b)
    # loading bypasses the NN subclasses' constructors: no attribute may be missing
    assert set(vars(a)) == set(vars(b))
    if isinstance(a, hq.NN):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_structure(x, y)
    else:
        assert a.config() == b.config()
        assert getattr(a, "act", None) == getattr(b, "act", None)


@pytest.mark.parametrize("name", NET_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bitwise(tmp_path, name, dtype):
    net = _net(name)
    net.to("numpy", dtype=dtype)
    p = tmp_path / "net.safetensors"
    hq.save(net, p)
    back = hq.load(p)
    _same_structure(net, back)
    sa, sb = net.state_dict(), back.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sb[k].dtype == dtype
        assert sb[k].tobytes() == np.asarray(sa[k]).tobytes(), k
    assert sorted(os.listdir(tmp_path)) == ["net.safetensors"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask  # permissions of an ordinary new file


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_evaluates_identically_on_every_backend(tmp_path, lib, dtype):
    net = make_network("nested", 3, "tanh", seed=2)
    net.to("numpy", dtype=dtype)
    p = tmp_path / "n.safetensors"
    hq.save(net, p)
    back = hq.load(p)
    x = lib.asarray(np.random.default_rng(3).standard_normal((4, 3)).astype(dtype))
    a = net(x, gradient=True, hessian=True, mode="backward", backend=lib.backend)
    b = back(x, gradient=True, hessian=True, mode="backward", backend=lib.backend)
    for name in ("value", "gradient", "hessian"):
        lib.check(getattr(b, name), getattr(a, name).shape, like=x)
        np.testing.assert_array_equal(lib.to_numpy(getattr(b, name)), lib.to_numpy(getattr(a, name)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_from_torch_parameters(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    net = make_network("icnn", 3, "softplus", seed=4)
    net.to("torch", dtype=getattr(torch, dtype), requires_grad=True)
    hq.save(net, tmp_path / "t.safetensors")
    back = hq.load(tmp_path / "t.safetensors", backend="torch")
    for (k, a), (k2, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert k == k2 and isinstance(b, torch.Tensor) and b.dtype == a.dtype
        assert torch.equal(a.detach(), b)


def test_file_is_plain_safetensors(tmp_path):
    """Any safetensors reader gets the weights; the metadata says what the file is."""
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    net = _net("ResnetNN")
    p = str(tmp_path / "r.safetensors")
    hq.save(net, p)
    tensors = st.load_file(p)
    assert set(tensors) == set(net.state_dict())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(tensors[k], v)
    with safe_open(p, framework="numpy") as fh:
        meta = fh.metadata()
    assert meta["format"] == "hessquik-core" and meta["format_version"] == str(hio.FORMAT_VERSION)
    arch = json.loads(meta["architecture"])
    assert arch["network"] == "ResnetNN" and arch["blocks"][0]["config"]["h"] == 0.37


def test_save_overwrites_atomically(tmp_path, monkeypatch):
    p = tmp_path / "a.safetensors"
    hq.save(_net("FullyConnectedNN"), p)
    original = p.read_bytes()

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(hio.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        hq.save(_net("ResnetNN"), p)
    monkeypatch.undo()
    assert p.read_bytes() == original  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]  # and the temporary file is gone
    hq.save(_net("ResnetNN"), p)
    assert type(hq.load(p)) is hq.ResnetNN


def test_save_refuses_unknown_classes(tmp_path):
    class MyLayer(hq.SingleLayer):
        pass

    class MyAct(hq.Tanh):
        pass

    with pytest.raises(TypeError, match="only hessquik-core's own classes"):
        hq.save(hq.NN(MyLayer(2, 2)), tmp_path / "x")
    with pytest.raises(TypeError, match="activation"):
        hq.save(hq.NN(hq.SingleLayer(2, 2, act=MyAct())), tmp_path / "x")
    with pytest.raises(TypeError, match="network or layer"):
        hq.save({"0.K": np.zeros((2, 2))}, tmp_path / "x")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# malicious and corrupt files
# --------------------------------------------------------------------------


def _write_raw(path, arch, tensors: dict, *, meta_extra=None, digest=True, dtype_codes=None):
    """Write a hand-made file, with a *valid* checksum unless digest=False (an attacker
    can compute checksums too: the checks below must not rely on it)."""
    table, chunks, off = {}, [], 0
    for k, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        code = (dtype_codes or {}).get(k, {"float32": "F32", "float64": "F64"}[a.dtype.name])
        table[k] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    data = b"".join(chunks)
    arch_s = arch if isinstance(arch, str) else json.dumps(arch)
    meta = {
        "format": "hessquik-core",
        "format_version": "1",
        "architecture": arch_s,
        "sha256": hio._digest(arch_s, table, data) if digest else "0" * 64,
    }
    meta.update(meta_extra or {})
    header = json.dumps({"__metadata__": meta, **table}).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header + data)


def _single(in_f=2, out_f=3, **over):
    node = {
        "layer": "SingleLayer",
        "config": {"in_features": in_f, "out_features": out_f, "bias": True},
        "act": {"name": "tanh", "config": {}},
    }
    node.update(over)
    return {"network": "NN", "blocks": [node]}


def _weights(in_f=2, out_f=3):
    return {"0.K": np.ones((in_f, out_f)), "0.b": np.zeros(out_f)}


def test_hand_made_valid_file_loads(tmp_path):
    p = tmp_path / "ok.safetensors"
    _write_raw(p, _single(), _weights())
    net = hq.load(p)
    np.testing.assert_array_equal(net(np.ones((1, 2))).value, np.tanh(2.0) * np.ones((1, 3)))


def test_truncated_file_at_every_length(tmp_path):
    p = tmp_path / "t.safetensors"
    hq.save(_net("ResnetNN"), p)
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cuts = sorted({0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(raw) - 8, len(raw) - 1})
    for cut in cuts:
        q = tmp_path / f"cut{cut}"
        q.write_bytes(raw[:cut])
        with pytest.raises(FileFormatError, match="truncated"):
            hq.load(q)


def test_flipped_bits_are_detected(tmp_path):
    p = tmp_path / "f.safetensors"
    hq.save(_net("FullyConnectedNN"), p)
    raw = bytearray(p.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    # a bit in the last weight
    bad = bytearray(raw)
    bad[-3] ^= 0x01
    (tmp_path / "w").write_bytes(bytes(bad))
    with pytest.raises(FileFormatError, match="corrupted"):
        hq.load(tmp_path / "w")
    # the architecture: same length, different (valid) softplus beta
    text = raw[8 : 8 + n].decode()
    assert '\\"beta\\": 2.0' in text
    bad = raw[:8] + text.replace('\\"beta\\": 2.0', '\\"beta\\": 3.0').encode() + raw[8 + n :]
    (tmp_path / "a").write_bytes(bytes(bad))
    with pytest.raises(FileFormatError, match="corrupted"):
        hq.load(tmp_path / "a")
    # a shape in the tensor table, swapped to another valid factorisation
    net = hq.NN(hq.SingleLayer(2, 3, seed=0))
    hq.save(net, p)
    raw = p.read_bytes()
    bad = raw.replace(b'"shape":[2,3]', b'"shape":[3,2]')
    assert bad != raw
    (tmp_path / "s").write_bytes(bad)
    with pytest.raises(FileFormatError, match="corrupted"):
        hq.load(tmp_path / "s")


def test_wrong_shapes(tmp_path):
    p = tmp_path / "s.safetensors"
    w = _weights()
    w["0.K"] = np.ones((3, 2))
    _write_raw(p, _single(), w)
    with pytest.raises(
        FileFormatError, match=r"tensor '0.K' has shape \(3, 2\), the architecture needs \(2, 3\)"
    ):
        hq.load(p)


def test_huge_config_is_rejected_without_allocating(tmp_path):
    p = tmp_path / "h.safetensors"
    _write_raw(p, _single(in_f=10**12, out_f=10**12), _weights())
    with pytest.raises(FileFormatError, match="architecture needs"):
        hq.load(p)


def test_missing_and_unexpected_tensors(tmp_path):
    p = tmp_path / "m.safetensors"
    w = _weights()
    del w["0.b"]
    w["0.evil"] = np.zeros(1)
    _write_raw(p, _single(), w)
    with pytest.raises(FileFormatError, match=r"unexpected \['0.evil'\], missing \['0.b'\]"):
        hq.load(p)


@pytest.mark.parametrize(
    "arch, match",
    [
        (_single(layer="EvilLayer"), "unknown layer class 'EvilLayer'"),
        (_single(layer="os.system"), "unknown layer class 'os.system'"),
        ({"network": "subprocess.Popen", "blocks": []}, "unknown network class"),
        (_single(act={"name": "relu6", "config": {}}), "unknown activation 'relu6'"),
        (
            _single(act={"name": "softplus", "config": {"beta": -1.0, "threshold": 20.0}}),
            "beta must be positive",
        ),
        (_single(act={"name": "tanh", "config": {"x": 1}}), "unexpected"),
        (
            _single(act={"name": "gelu", "config": {"approximate": "erf"}}),
            "approximate must be 'none' or 'tanh'",
        ),
        (
            _single(act={"name": "softplus", "config": {"beta": "2", "threshold": 20.0}}),
            "must be a finite number",
        ),
        (_single(config={"in_features": 2, "out_features": 3, "bias": True, "__class__": "x"}), "unexpected"),
        (_single(config={"in_features": "2", "out_features": 3, "bias": True}), "positive integer"),
        (_single(config={"in_features": 2, "out_features": 3, "bias": 1}), "true or false"),
        ({"network": "NN", "blocks": []}, "non-empty list"),
        ([1, 2, 3], "expected an object"),
        ("__import__('os')", "not valid JSON"),
        (
            {
                "network": "NN",
                "blocks": [
                    {
                        "layer": "QuadraticLayer",
                        "config": {"in_features": 2, "rank": 1},
                        "act": {"name": "tanh", "config": {}},
                    }
                ],
            },
            "takes no 'act'",
        ),
    ],
)
def test_invalid_architectures(tmp_path, arch, match):
    p = tmp_path / "a.safetensors"
    _write_raw(p, arch, _weights())
    with pytest.raises(FileFormatError, match=match):
        hq.load(p)


def test_dimension_mismatch_between_blocks(tmp_path):
    arch = {
        "network": "NN",
        "blocks": _single(2, 3)["blocks"]
        + [
            {
                "layer": "SingleLayer",
                "config": {"in_features": 4, "out_features": 1, "bias": False},
                "act": {"name": "identity", "config": {}},
            }
        ],
    }
    w = {**_weights(2, 3), "1.K": np.ones((4, 1))}
    _write_raw(tmp_path / "d", arch, w)
    with pytest.raises(FileFormatError, match="dimension mismatch"):
        hq.load(tmp_path / "d")


def test_deep_nesting_is_rejected(tmp_path):
    node = _single()
    for _ in range(200):
        node = {"network": "NN", "blocks": [node]}
    _write_raw(tmp_path / "n", node, {})
    with pytest.raises(FileFormatError, match="nested deeper"):
        hq.load(tmp_path / "n")
    _write_raw(tmp_path / "j", "[" * 100000 + "]" * 100000, {})
    with pytest.raises(FileFormatError, match="not valid JSON"):
        hq.load(tmp_path / "j")


def test_newer_version_and_foreign_files(tmp_path):
    _write_raw(tmp_path / "v", _single(), _weights(), meta_extra={"format_version": "2"})
    with pytest.raises(FileFormatError, match="format version 2.*Upgrade"):
        hq.load(tmp_path / "v")
    _write_raw(tmp_path / "v0", _single(), _weights(), meta_extra={"format_version": "one"})
    with pytest.raises(FileFormatError, match="invalid format_version"):
        hq.load(tmp_path / "v0")
    st = pytest.importorskip("safetensors.numpy")
    st.save_file({"0.K": np.ones((2, 3))}, str(tmp_path / "plain"))
    with pytest.raises(FileFormatError, match="not a hessquik-core network"):
        hq.load(tmp_path / "plain")
    (tmp_path / "json").write_bytes(struct.pack("<Q", 4) + b"[1] ")
    with pytest.raises(FileFormatError, match="not a JSON object"):
        hq.load(tmp_path / "json")
    (tmp_path / "big").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(FileFormatError, match="header length"):
        hq.load(tmp_path / "big")


def test_bad_tensor_table(tmp_path):
    _write_raw(tmp_path / "i", _single(), _weights(), dtype_codes={"0.b": "I64"})
    with pytest.raises(FileFormatError, match="dtype 'I64'"):
        hq.load(tmp_path / "i")
    _write_raw(tmp_path / "c", _single(), _weights(), digest=False)
    with pytest.raises(FileFormatError, match="corrupted"):
        hq.load(tmp_path / "c")
    p = tmp_path / "t"
    _write_raw(p, _single(), _weights())
    p.write_bytes(p.read_bytes() + b"\0" * 8)
    with pytest.raises(FileFormatError, match="unexpected bytes"):
        hq.load(p)


class _Trap:
    """Unpickling this would create a file: proof that load never unpickles."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_are_never_loaded(tmp_path):
    sentinel = tmp_path / "pwned"
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(_Trap(str(sentinel)), protocol=4))
    with pytest.raises(FileFormatError, match="pickle"):
        hq.load(tmp_path / "p.pkl")
    (tmp_path / "p0.pkl").write_bytes(pickle.dumps(_Trap(str(sentinel)), protocol=0))
    with pytest.raises(FileFormatError):
        hq.load(tmp_path / "p0.pkl")
    assert not sentinel.exists()
    torch = pytest.importorskip("torch")
    torch.save({"0.K": torch.ones(2, 3)}, tmp_path / "t.pt")
    with pytest.raises(FileFormatError, match="zip archive.*pickles"):
        hq.load(tmp_path / "t.pt")
    np.savez(tmp_path / "w.npz", K=np.ones(3))
    with pytest.raises(FileFormatError, match="zip archive"):
        hq.load(tmp_path / "w.npz")


# --------------------------------------------------------------------------
# Module.to: backend, device and dtype moves
# --------------------------------------------------------------------------


def _params(net):
    from hessquik_core.backends._generic import to_numpy

    return {k: np.array(to_numpy(v)) for k, v in net.state_dict().items()}


def test_to_float32_and_back():
    net = make_network("quadratic_icnn", 3, "softplus", seed=5)
    p64 = _params(net)
    net.to(dtype=np.float32)
    p32 = _params(net)
    for k in p64:
        assert p32[k].dtype == np.float32
        np.testing.assert_array_equal(p32[k], p64[k].astype(np.float32))
    net.to(dtype="float64")
    for k in p64:
        assert net.state_dict()[k].dtype == np.float64
        np.testing.assert_array_equal(net.state_dict()[k], p64[k].astype(np.float32).astype(np.float64))


def test_torch_numpy_round_trip_is_bitwise():
    torch = pytest.importorskip("torch")
    net = make_network("nested", 3, "tanh", seed=6)
    p0 = _params(net)
    net.to("torch")
    assert all(isinstance(p, torch.Tensor) and p.dtype == torch.float64 for p in net.parameters())
    net.to("numpy")
    assert all(isinstance(p, np.ndarray) and not p.flags.writeable for p in net.parameters())
    for k, v in _params(net).items():
        assert v.tobytes() == p0[k].tobytes()
    # dtype in any library's spelling
    for dt in (np.float32, "float32", torch.float32):
        net.to("torch", dtype=dt)
        assert all(p.dtype == torch.float32 for p in net.parameters())
        net.to("numpy", dtype=torch.float64)
        assert all(p.dtype == np.float64 for p in net.parameters())


def test_conversion_cache_is_correct_after_moves():
    """Each call caches converted parameters; a move must never leave a stale entry."""
    torch = pytest.importorskip("torch")
    net = make_network("resnet", 3, "tanh", seed=7)
    x = np.random.default_rng(8).standard_normal((4, 3))
    xt = torch.from_numpy(x)
    before = net(x, gradient=True, hessian=True)
    net(xt, gradient=True)  # fill the torch cache entries too
    p = _params(net)
    net.to("numpy", dtype=np.float32)
    # reference: a fresh network holding the float32-rounded weights
    ref = make_network("resnet", 3, "tanh", seed=7)
    ref.load_state_dict({k: v.astype(np.float32) for k, v in p.items()})
    for inp in (x, xt):
        got = net(inp, gradient=True, hessian=True)
        exp = ref(inp, gradient=True, hessian=True)
        for name in ("value", "gradient", "hessian"):
            a, b = getattr(got, name), getattr(exp, name)
            a = a.numpy() if isinstance(a, torch.Tensor) else a
            b = b.numpy() if isinstance(b, torch.Tensor) else b
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(net(x).value, before.value)  # the float32 rounding is visible
    # torch home arrays edited in place are seen by the next call (version counter)
    net.to("torch")
    y0 = net(xt).value.clone()
    with torch.no_grad():
        net.parameters()[0].mul_(2.0)
    assert not torch.equal(net(xt).value, y0)
    net.to("numpy")
    assert not np.array_equal(net(x).value, y0.numpy())


def test_to_rejects_bad_requests_and_leaves_module_untouched():
    net = make_network("single", 3, "tanh", seed=9)
    p0 = _params(net)
    with pytest.raises(TypeError, match="floating dtype"):
        net.to("numpy", dtype="int32")
    with pytest.raises(ValueError, match="CPU"):
        net.to("numpy", device="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        net.to("tensorflow")
    for k, v in _params(net).items():
        assert v.tobytes() == p0[k].tobytes()

"""Parameters: hessQuik-compatible state_dict keys, load_state_dict from any
library (atomic on error), seeded initialisation, and ``from_hessquik``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from _reference import HQ_ACTIVATIONS, HQ_NETWORKS, build, hessquik_network

import hessquik_core as hq

torch = pytest.importorskip("torch")
hessQuik = pytest.importorskip("hessQuik")
import hessQuik.activations as ha  # noqa: E402
import hessQuik.layers as hl  # noqa: E402
import hessQuik.networks as hn  # noqa: E402

ALL = dict(gradient=True, hessian=True, laplacian=True)


def _state_np(net):
    return {k: np.array(hq.backends._generic.to_numpy(v)) for k, v in net.state_dict().items()}


def _assert_same_state(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------


def native_pairs():
    """(hessquik_core network, hessQuik network of the same architecture)."""
    torch.manual_seed(0)
    return {
        "fullyConnectedNN": (hq.FullyConnectedNN([3, 5, 2]), hn.fullyConnectedNN([3, 5, 2])),
        "resnetNN": (hq.ResnetNN(4, 3), hn.resnetNN(4, 3)),
        "ICNN": (hq.ICNN(3, [None, 4, 5]), hn.ICNN(3, [None, 4, 5])),
        "mixed": (
            hq.NN(hq.SingleLayer(3, 4), hq.ResnetNN(4, 2), hq.QuadraticLayer(4, 2)),
            hn.NN(hl.singleLayer(3, 4), hn.resnetNN(4, 2), hl.quadraticLayer(4, 2)),
        ),
        "icnn-quadratic": (
            hq.NN(hq.ICNN(3, [None, 4]), hq.QuadraticICNNLayer(3, 4, 2)),
            hn.NN(hn.ICNN(3, [None, 4]), hl.quadraticICNNLayer(3, 4, 2)),
        ),
        "first-quadratic-icnn": (hq.QuadraticICNNLayer(3, None, 2), hl.quadraticICNNLayer(3, None, 2)),
        "no-bias": (
            hq.NN(
                hq.ICNNLayer(3, None, 4, bias=False),
                hq.SingleLayer(7, 4, bias=False),
                hq.ResnetLayer(4, bias=False),
            ),
            hn.NN(
                hl.ICNNLayer(3, None, 4, bias=False),
                hl.singleLayer(7, 4, bias=False),
                hl.resnetLayer(4, bias=False),
            ),
        ),
    }


@pytest.mark.parametrize("name", list(native_pairs()))
def test_keys_and_shapes_equal_hessquik(name):
    ours, theirs = native_pairs()[name]
    sd, ref = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert tuple(sd[k].shape) == tuple(ref[k].shape), k
    # hessQuik weights load directly, and the two compute the same function
    ours.load_state_dict({k: v.double() for k, v in ref.items()})
    x = np.random.default_rng(0).normal(size=(4, ours.in_features))
    fx, dfx, d2fx = theirs.double()(torch.from_numpy(x), do_gradient=True, do_Hessian=True)
    r = ours(x, gradient=True, hessian=True)
    np.testing.assert_allclose(r.value, fx.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(r.hessian, d2fx.detach().numpy(), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------
# round trips and load_state_dict
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nested-NN", "ICNN-chain", "QuadraticICNNLayer", "ResnetLayer"])
def test_round_trip(kind, rng):
    a, d = build(kind, "tanh", seed=1)
    b, _ = build(kind, "tanh", seed=2)
    x = rng.normal(size=(3, d))
    assert not np.allclose(a(x).value, b(x).value)
    b(x, **ALL)  # fill b's conversion cache before loading
    b.load_state_dict(a.state_dict())
    _assert_same_state(_state_np(a), _state_np(b))
    ra, rb = a(x, **ALL), b(x, **ALL)
    for name in ("value", "gradient", "hessian", "laplacian"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name))
    # the loaded arrays are copies: changing the source dict later changes nothing
    sd = {k: np.array(v) for k, v in a.state_dict().items()}
    b.load_state_dict(sd)
    for v in sd.values():
        v += 1.0
    _assert_same_state(_state_np(a), _state_np(b))


def test_home_arrays_read_only():
    net = hq.SingleLayer(3, 2, seed=0)
    with pytest.raises(ValueError, match="read-only"):
        net.K[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        net.state_dict()["K"][0, 0] = 1.0


LIBS = {
    "numpy": lambda a: np.array(a),
    "numpy-float32": lambda a: np.array(a, dtype=np.float32),
    "torch": lambda a: torch.tensor(a),
    "array_api_strict": lambda a: pytest.importorskip("array_api_strict").asarray(np.array(a)),
}


@pytest.mark.parametrize("lib_name", list(LIBS))
def test_load_state_dict_from_any_library(lib_name, rng):
    src, d = build("QuadraticICNNLayer", "softplus", seed=3)
    dst, _ = build("QuadraticICNNLayer", "softplus", seed=4)
    conv = LIBS[lib_name]
    dst.load_state_dict({k: conv(v) for k, v in src.state_dict().items()})
    x = rng.normal(size=(3, d))
    tol = 1e-6 if lib_name == "numpy-float32" else 0.0
    np.testing.assert_allclose(dst(x, **ALL).hessian, src(x, **ALL).hessian, rtol=tol, atol=tol)
    for k, v in dst.state_dict().items():
        np.testing.assert_allclose(hq.backends._generic.to_numpy(v), src.state_dict()[k], rtol=tol)
    if lib_name == "numpy-float32":
        assert all(v.dtype == np.float32 for v in dst.state_dict().values())
        assert dst(x).value.dtype == np.float64  # computation follows x's dtype
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(dst(xt, **ALL).hessian.numpy(), src(x, **ALL).hessian, rtol=max(tol, 1e-13))


@pytest.mark.parametrize(
    "edit, err, match",
    [
        (
            lambda sd: sd.update({"0.0.K": np.zeros((2, 2))}),
            ValueError,
            r"'0\.0\.K' must have shape \(3, 4\), got \(2, 2\)",
        ),
        (lambda sd: sd.update({"bogus.K": np.zeros(3)}), ValueError, r"unexpected keys \['bogus\.K'\]"),
        (lambda sd: sd.pop("1.1.b"), ValueError, r"missing keys \['1\.1\.b'\]"),
        (lambda sd: sd.update({"1.1.b": np.zeros(3, dtype=np.int64)}), TypeError, "must be a floating array"),
        (lambda sd: sd.update({"1.1.b": "abc"}), TypeError, "'1.1.b' must be an array, got str"),
    ],
)
def test_bad_load_leaves_network_unchanged(edit, err, match, rng):
    net, d = build("nested-NN", "tanh", seed=1)
    x = rng.normal(size=(2, d))
    before_state, before_out = _state_np(net), net(x, **ALL)
    other, _ = build("nested-NN", "tanh", seed=2)
    sd = {k: np.array(v) for k, v in other.state_dict().items()}  # valid values first in order ...
    edit(sd)  # ... then one bad entry
    with pytest.raises(err, match=match):
        net.load_state_dict(sd)
    _assert_same_state(_state_np(net), before_state)
    after = net(x, **ALL)
    np.testing.assert_array_equal(after.hessian, before_out.hessian)


def test_load_state_dict_not_a_mapping():
    net = hq.SingleLayer(3, 2, seed=0)
    with pytest.raises(TypeError, match="mapping of keys to arrays, got list"):
        net.load_state_dict([("K", np.zeros((3, 2)))])


def test_non_strict_load_ignores_unknown_and_missing(rng):
    net, d = build("nested-NN", "tanh", seed=1)
    other, _ = build("nested-NN", "tanh", seed=2)
    before = _state_np(net)
    net.load_state_dict({"0.0.K": np.array(other.state_dict()["0.0.K"]), "extra": np.zeros(2)}, strict=False)
    after = _state_np(net)
    np.testing.assert_array_equal(after["0.0.K"], other.state_dict()["0.0.K"])
    for k in before:
        if k != "0.0.K":
            np.testing.assert_array_equal(after[k], before[k])


def test_to_torch_and_back(rng):
    net, d = build("ICNN-chain", "softplus", seed=1)
    x = rng.normal(size=(3, d))
    ref = net(x, **ALL)
    net.to("torch")
    assert all(isinstance(v, torch.Tensor) for v in net.state_dict().values())
    np.testing.assert_allclose(net(x, **ALL).hessian, ref.hessian, rtol=1e-14)
    net.to("numpy")
    assert all(isinstance(v, np.ndarray) for v in net.state_dict().values())
    np.testing.assert_array_equal(net(x, **ALL).hessian, ref.hessian)
    net.to("numpy", dtype=np.float32)
    assert all(v.dtype == np.float32 for v in net.state_dict().values())


# --------------------------------------------------------------------------
# seeded initialisation
# --------------------------------------------------------------------------

CONSTRUCTORS = {
    "SingleLayer": lambda s: hq.SingleLayer(3, 4, act="tanh", seed=s),
    "ResnetLayer": lambda s: hq.ResnetLayer(3, seed=s),
    "ICNNLayer": lambda s: hq.ICNNLayer(3, 2, 4, seed=s),
    "QuadraticLayer": lambda s: hq.QuadraticLayer(3, 2, seed=s),
    "QuadraticICNNLayer": lambda s: hq.QuadraticICNNLayer(3, 2, 2, seed=s),
    "FullyConnectedNN": lambda s: hq.FullyConnectedNN([3, 4, 2], seed=s),
    "ResnetNN": lambda s: hq.ResnetNN(3, 2, seed=s),
    "ICNN": lambda s: hq.ICNN(3, [None, 4, 2], seed=s),
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_seeded_init_reproducible(name):
    make = CONSTRUCTORS[name]
    _assert_same_state(_state_np(make(7)), _state_np(make(7)))
    _assert_same_state(_state_np(make(np.random.default_rng(7))), _state_np(make(np.random.default_rng(7))))
    a, b = _state_np(make(7)), _state_np(make(8))
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    # every layer of a network gets its own draws
    if name in ("FullyConnectedNN", "ResnetNN"):
        ks = [v for k, v in make(7).state_dict().items() if k.endswith("K")]
        assert not np.array_equal(ks[0].ravel()[:4], ks[1].ravel()[:4])


def test_default_activations_match_hessquik():
    """Porting ``resnetLayer(w)`` as ``ResnetLayer(w)`` must give the same function."""
    pairs = [
        (hq.SingleLayer(3, 2), hl.singleLayer(3, 2)),
        (hq.ResnetLayer(3).layer, hl.resnetLayer(3).layer),
        (hq.ICNNLayer(3, None, 2), hl.ICNNLayer(3, None, 2)),
        (hq.FullyConnectedNN([3, 2])[0], hn.fullyConnectedNN([3, 2])[0]),
        (hq.ResnetNN(3, 1)[0].layer, hn.resnetNN(3, 1)[0].layer),
        (hq.ICNN(3, [None, 2])[0], hn.ICNN(3, [None, 2])[0]),
    ]
    for ours, theirs in pairs:
        assert ours.act == hq.from_hessquik(hn.NN(theirs))[0].act, (ours, theirs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_dtype(dtype):
    net = hq.FullyConnectedNN([3, 4, 2], seed=0, dtype=dtype)
    assert all(v.dtype == dtype for v in net.state_dict().values())


# --------------------------------------------------------------------------
# from_hessquik
# --------------------------------------------------------------------------


@pytest.mark.parametrize("act", HQ_ACTIVATIONS)
@pytest.mark.parametrize("kind", HQ_NETWORKS)
def test_from_hessquik_keys_and_values(kind, act, rng):
    f = hessquik_network(kind, 3, act, seed=5)
    net = hq.from_hessquik(f)
    ref = f.state_dict()
    assert list(net.state_dict()) == list(ref)
    for k, v in net.state_dict().items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float64
        np.testing.assert_array_equal(v, ref[k].numpy())
    x = rng.normal(size=(2, 3))
    fx, _, _ = f(torch.from_numpy(x))
    np.testing.assert_allclose(net(x).value, fx.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_from_hessquik_classes_and_activations():
    torch.manual_seed(0)
    sp = ha.softplusActivation(beta=3.0, threshold=9.0)
    assert isinstance(hq.from_hessquik(hn.fullyConnectedNN([3, 4, 2], act=sp)), hq.FullyConnectedNN)
    assert isinstance(hq.from_hessquik(hn.resnetNN(3, 2, h=0.25)), hq.ResnetNN)
    assert isinstance(hq.from_hessquik(hn.ICNN(3, [None, 4, 2])), hq.ICNN)
    assert type(hq.from_hessquik(hn.NN(hl.singleLayer(3, 2)))) is hq.NN
    net = hq.from_hessquik(hn.fullyConnectedNN([3, 4, 2], act=sp))
    assert all(layer.act == hq.Softplus(beta=3.0, threshold=9.0) for layer in net)
    res = hq.from_hessquik(hn.resnetNN(3, 2, h=0.25, act=ha.tanhActivation()))
    assert all(layer.h == 0.25 and layer.act == hq.Tanh() for layer in res)
    for hact, ours in [
        (ha.antiTanhActivation(), hq.AntiTanh()),
        (ha.identityActivation(), hq.Identity()),
        (ha.quadraticActivation(), hq.Quadratic()),
        (ha.sigmoidActivation(), hq.Sigmoid()),
        (ha.tanhActivation(), hq.Tanh()),
        (ha.softplusActivation(), hq.Softplus()),
    ]:
        assert hq.from_hessquik(hl.singleLayer(2, 2, act=hact)).act == ours
    # single layers of each type convert to the matching class
    for layer, cls in [
        (hl.singleLayer(3, 2), hq.SingleLayer),
        (hl.resnetLayer(3), hq.ResnetLayer),
        (hl.ICNNLayer(3, None, 2), hq.ICNNLayer),
        (hl.ICNNLayer(3, 2, 2), hq.ICNNLayer),
        (hl.quadraticLayer(3, 2), hq.QuadraticLayer),
        (hl.quadraticICNNLayer(3, 2, 1), hq.QuadraticICNNLayer),
        (hl.quadraticICNNLayer(3, None, 1), hq.QuadraticICNNLayer),
    ]:
        conv = hq.from_hessquik(layer)
        assert type(conv) is cls
        assert list(conv.state_dict()) == list(layer.state_dict())
    # mixed activations fall back to a plain NN
    mixed = hn.fullyConnectedNN([3, 4, 2])
    mixed[1].act = ha.tanhActivation()
    conv = hq.from_hessquik(mixed)
    assert type(conv) is hq.NN and conv[1].act == hq.Tanh() and conv[0].act == hq.Softplus()


def test_from_hessquik_copies_and_keeps_dtype(rng):
    torch.manual_seed(1)
    f = hn.NN(hn.ICNN(3, [None, 4], act=ha.softplusActivation()), hl.quadraticICNNLayer(3, 4, 2))
    net = hq.from_hessquik(f)  # float32, torch's default
    assert all(v.dtype == np.float32 for v in net.state_dict().values())
    before = _state_np(net)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(1.0)
    _assert_same_state(_state_np(net), before)  # no shared memory
    x = rng.normal(size=(2, 3)).astype(np.float32)
    assert net(x, **ALL).hessian.dtype == np.float32
    # and back: our weights load into hessQuik
    f2 = copy.deepcopy(f)
    f2.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()})
    fx, _, _ = f2(torch.from_numpy(x))
    np.testing.assert_allclose(net(x).value, fx.detach().numpy(), rtol=1e-6)


class _SubLayer(hl.singleLayer):
    pass


class _MyAct(ha.hessQuikActivationFunction):
    def forward(self, x, do_gradient=False, do_Hessian=False, forward_mode=True):
        return x, None, None


def _with_child(net, child):
    net.add_module(str(len(net)), child)
    return net


def _icnn_custom_nonneg():
    layer = hl.ICNNLayer(3, 2, 2)
    layer.nonneg = torch.relu
    return layer


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: torch.nn.Linear(3, 2), "torch.nn.modules.linear.Linear"),
        (lambda: torch.nn.Sequential(hl.singleLayer(3, 2)), "Sequential"),
        (lambda: hn.NNPytorchAD(hn.fullyConnectedNN([3, 2])), "NNPytorchAD"),
        (lambda: _SubLayer(3, 2), "_SubLayer"),
        (lambda: hl.singleLayer(3, 2, act=_MyAct()), "_MyAct"),
        (lambda: _with_child(hn.NN(hl.singleLayer(3, 2)), torch.nn.Tanh()), "Tanh"),
        (lambda: _icnn_custom_nonneg(), "nonneg"),
        (lambda: object(), "object"),
        (lambda: "fullyConnectedNN", "str"),
    ],
)
def test_from_hessquik_unsupported(make, name):
    with pytest.raises(TypeError, match=name):
        hq.from_hessquik(make())


def test_from_hessquik_error_says_where():
    bad = hn.NN(hn.NN(hl.singleLayer(3, 3), hl.singleLayer(3, 2, act=_MyAct())))
    with pytest.raises(TypeError, match=r"_MyAct.*\[0\]\[1\]\.act"):
        hq.from_hessquik(bad)


def test_state_dict_copy_is_writable_and_detached_from_the_module():
    net = hq.FullyConnectedNN([2, 4, 1], act="tanh", seed=0)
    own = net.state_dict()
    assert not own["0.K"].flags.writeable  # the stored arrays stay read-only (conversion cache)
    copies = net.state_dict(copy=True)
    assert copies.keys() == own.keys()
    for key, a in copies.items():
        assert a.flags.writeable and a is not own[key]
        np.testing.assert_array_equal(a, own[key])
    copies["0.K"][...] = 0.0
    assert np.any(net.state_dict()["0.K"] != 0.0)
    with pytest.raises(TypeError, match="copy must be True or False"):
        net.state_dict(copy=1)


def test_state_dict_copy_feeds_torch_from_numpy_without_warning():
    torch = pytest.importorskip("torch")
    net = hq.FullyConnectedNN([2, 4, 1], act="tanh", seed=0)
    t = torch.from_numpy(net.state_dict(copy=True)["0.K"])  # warnings are errors here
    assert t.shape == (2, 4)
    tn = hq.FullyConnectedNN([2, 4, 1], act="tanh", seed=0)
    tn.to("torch", requires_grad=True)
    c = tn.state_dict(copy=True)["0.K"]
    assert not c.requires_grad and c.data_ptr() != tn.state_dict()["0.K"].data_ptr()


def test_moving_to_an_unavailable_device_says_so():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the move succeeds")
    net = hq.FullyConnectedNN([2, 4, 1], act="tanh", seed=0)
    before = {k: np.array(v) for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"device 'cuda' .*not available here"):
        net.to("cuda")
    # a failed move leaves the module untouched
    for key, value in net.state_dict().items():
        assert isinstance(value, np.ndarray)
        np.testing.assert_array_equal(value, before[key])


def test_seed_none_follows_torch_manual_seed():
    torch = pytest.importorskip("torch")
    torch.manual_seed(123)
    a = hq.FullyConnectedNN([3, 8, 8, 1], act="tanh")
    torch.manual_seed(123)
    b = hq.FullyConnectedNN([3, 8, 8, 1], act="tanh")
    c = hq.FullyConnectedNN([3, 8, 8, 1], act="tanh")  # the generator moved on
    for key in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[key], b.state_dict()[key])
    assert any(np.any(a.state_dict()[k] != c.state_dict()[k]) for k in a.state_dict())


def test_seed_none_follows_numpy_seed_without_torch(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch had never been imported
    np.random.seed(7)  # noqa: NPY002 - the global seeding users do
    a = hq.ResnetNN(width=4, depth=2, h=0.5, act="tanh")
    np.random.seed(7)  # noqa: NPY002 - the global seeding users do
    b = hq.ResnetNN(width=4, depth=2, h=0.5, act="tanh")
    for key in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[key], b.state_dict()[key])

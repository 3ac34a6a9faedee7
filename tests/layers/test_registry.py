"""Each layer owns its torch twin, config schema and save/load; networks register like layers.

The seams are checked from both sides: the modules that use the registries
(``interop.py``, ``io.py``) name no layer class and keep no class table, and a
layer defined *here*, outside the package, with its own twin and its own config
type, saves, loads and converts to and from torch without any package edit.
"""

from __future__ import annotations

import ast
import io as _io
import pathlib

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.layers import base
from hessquik_core.layers.schema import CONFIG_TYPES, ConfigError, quote, register_config_type

PKG = pathlib.Path(hq.__file__).parent


def _names_in(path: pathlib.Path) -> set[str]:
    """Every identifier a module uses (names, attributes, imported names), imports inside functions included."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.alias):
            out.add(node.name.split(".")[-1])
    return out


def _imports_of(path: pathlib.Path) -> set[str]:
    """Modules a file imports (relative ones resolved to their last component), anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            out.add(mod.split(".")[-1])
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[-1] for a in node.names)
    return out


@pytest.mark.parametrize("module", ["interop.py", "io.py"])
def test_converters_name_no_layer_class(module):
    used = _names_in(PKG / module)
    named = sorted(used & set(base.LAYERS))
    assert not named, f"{module} names layer classes {named}: it must ask the registry"
    network_classes = {"FullyConnectedNN", "ResnetNN", "ICNN"}
    assert not (used & network_classes), f"{module} names network classes {used & network_classes}"


def test_io_has_no_class_table():
    strings = {
        n.value for n in ast.walk(ast.parse((PKG / "io.py").read_text())) if isinstance(n, ast.Constant)
    }
    names = {"compat.NN", "compat.singleLayer", "NN", "FullyConnectedNN", *base.LAYERS}
    assert not strings & names, strings & names


def test_gated_residual_imports_neither_interop_nor_networks():
    imports = _imports_of(PKG / "layers" / "gated_residual.py")
    assert not imports & {"interop", "networks", "engine"}, imports


def test_every_twin_is_found_through_its_layer():
    pytest.importorskip("torch")
    from hessquik_core import interop

    for name in ("ResidualBlock", "ICNNBlock", "QuadraticBlock", "QuadraticICNNBlock", "GatedMLPBlock"):
        assert name in interop._TORCH_NAMES
        cls = getattr(interop, name)
        owner = [c for c in base.LAYERS.values() if c.torch_twin == name]
        assert len(owner) == 1 and owner[0].torch_twin_class() is cls
        assert cls.__module__ == "hessquik_core.interop" and cls.__qualname__ == name
    assert "GatedResidualBlock" in interop._TORCH_NAMES
    assert hq.SingleLayer.torch_twin_class().__name__ == "Linear"
    with pytest.raises(AttributeError):
        interop.SingleLayer  # noqa: B018 - a layer, not a twin


def test_a_converted_module_pickles(tmp_path):
    torch = pytest.importorskip("torch")
    net = hq.NN(hq.ResnetLayer(3, h=0.5, act="tanh", seed=0), hq.QuadraticLayer(3, 2, seed=1))
    tm = hq.to_torch(net)
    buf = _io.BytesIO()
    torch.save(tm, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(back(x), tm(x))


# --------------------------------------------------------------------------
# a layer from outside the package: registry, its own config type, its own twin
# --------------------------------------------------------------------------


def _gain(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
        raise ConfigError(f"{key!r} must be a number in (0, 1e6), got {quote(value)}")
    return float(value)


@base.lazy_torch_class
def _scale_twin() -> type:
    import torch
    from torch import nn

    class ScaleTwin(nn.Module):
        def __init__(self, features, gain):
            super().__init__()
            self.gain = gain
            self.c = nn.Parameter(torch.zeros(features, dtype=torch.float64))

        def forward(self, u):
            return self.gain * self.c * u

    return ScaleTwin


class Scale(base.Layer):
    r""":math:`f(u) = g\,c \odot u` (value only: enough for the seams tested here)."""

    config_schema = {"features": "int", "gain": "gain"}
    torch_twin = "ScaleTwin"

    def __init__(self, features, gain=1.0, *, dtype=np.float64, seed=None):
        super().__init__()
        self.in_features = self.out_features = base.check_int("features", features)
        self.gain = float(gain)
        self._register("c", base.rng_of(seed).uniform(0.5, 1.5, (features,)).astype(dtype), (features,))

    def config(self):
        return {"features": self.in_features, "gain": self.gain}

    @classmethod
    def parameter_shapes(cls, config):
        return {"c": (config["features"],)}

    def evaluate(self, u, params, order, ops):
        assert order == 0
        return self.gain * params["c"] * u, None

    @classmethod
    def torch_twin_class(cls):
        return _scale_twin()

    def to_torch(self, kit):
        mod = self.torch_twin_class()(self.in_features, self.gain)
        kit.copy_state(self, mod)
        return [mod]

    @classmethod
    def from_torch(cls, module, kit):
        return cls(module.c.shape[0], module.gain), {"c": kit.numpy(module.c)}


@pytest.fixture
def scale_registered(monkeypatch):
    monkeypatch.setitem(CONFIG_TYPES, "gain", _gain)
    base.register_layer(Scale)
    yield Scale
    del base.LAYERS["Scale"]


def test_a_new_layer_saves_and_loads_without_a_package_edit(tmp_path, scale_registered):
    net = hq.NN(hq.SingleLayer(2, 3, act="tanh", seed=0), Scale(3, gain=2.5, seed=1))
    x = np.random.default_rng(0).standard_normal((4, 2))
    p = tmp_path / "scale.safetensors"
    hq.save(net, p)
    back = hq.load(p)
    assert type(back[1]) is Scale and back[1].gain == 2.5
    np.testing.assert_array_equal(back(x).value, net(x).value)


def test_a_new_config_type_validates_files(tmp_path, scale_registered):
    from hessquik_core import io

    node = {"layer": "Scale", "config": {"features": 3, "gain": -1.0}}
    with pytest.raises(io.FileFormatError, match=r"'gain' must be a number in \(0, 1e6\), got -1.0"):
        io._plan(node, io._class_tables())
    assert io._plan({**node, "config": {"features": 3, "gain": 2}}, io._class_tables()) == {"c": (3,)}


def test_a_new_layer_converts_to_and_from_torch(scale_registered):
    torch = pytest.importorskip("torch")
    net = hq.NN(hq.SingleLayer(2, 3, act="tanh", seed=0), Scale(3, gain=0.5, seed=1))
    tm = hq.to_torch(net)
    assert type(tm[2]).__name__ == "ScaleTwin"
    x = np.random.default_rng(1).standard_normal((4, 2))
    np.testing.assert_allclose(tm(torch.from_numpy(x)).detach().numpy(), net(x).value, rtol=1e-15)
    back = hq.from_torch(tm)
    assert type(back[1]) is Scale
    np.testing.assert_array_equal(back(x).value, net(x).value)


def test_register_config_type_refuses_a_second_checker():
    with pytest.raises(ValueError, match="already registered"):
        register_config_type("int", _gain)
    with pytest.raises(TypeError, match="non-empty string"):
        register_config_type("", _gain)


def test_register_layer_refuses_non_layers_and_name_clashes():
    with pytest.raises(TypeError, match="Layer subclass"):
        base.register_layer(int)
    clash = type("SingleLayer", (base.Layer,), {})
    with pytest.raises(ValueError, match="already registered"):
        base.register_layer(clash)


# --------------------------------------------------------------------------
# networks register like layers
# --------------------------------------------------------------------------


def test_networks_are_found_through_their_registry(tmp_path, monkeypatch):
    from hessquik_core import networks

    assert {"NN", "FullyConnectedNN", "ResnetNN", "ICNN"} <= set(networks.NETWORKS)
    assert networks.NETWORK_ALIASES["compat.resnetNN"] is hq.ResnetNN

    class Tower(hq.NN):
        def __init__(self, width):
            super().__init__(
                hq.SingleLayer(width, width, act="tanh", seed=0), hq.SingleLayer(width, 1, seed=1)
            )

    p = tmp_path / "tower.safetensors"
    with pytest.raises(TypeError, match="cannot save network of type"):
        hq.save(Tower(2), p)
    monkeypatch.setitem(networks.NETWORKS, "Tower", Tower)
    net = Tower(2)
    hq.save(net, p)
    back = hq.load(p)
    assert type(back) is Tower
    x = np.ones((3, 2))
    np.testing.assert_array_equal(back(x).value, net(x).value)
    with pytest.raises(TypeError, match="NN subclass"):
        networks.register_network(hq.SingleLayer)


def test_every_registered_layer_satisfies_the_layer_protocol():
    """The Protocol states the contract; every registered layer class (and an instance of
    the built-in ones) provides it."""
    from hessquik_core.layers.base import LayerProtocol

    for cls in base.LAYERS.values():
        for name in ("evaluate", "forward_step", "backward_step", "backward_first", "config"):
            assert callable(getattr(cls, name)), (cls, name)
    rng = np.random.default_rng(0)
    for layer in (
        hq.SingleLayer(2, 3, seed=rng),
        hq.ResnetLayer(3, seed=rng),
        hq.ICNNLayer(2, None, 3, seed=rng),
        hq.QuadraticLayer(3, 2, seed=rng),
        hq.SirenLayer(2, 3, seed=rng),
        hq.LayerNorm(3),
    ):
        assert isinstance(layer, LayerProtocol), type(layer)
    assert not isinstance(object(), LayerProtocol)

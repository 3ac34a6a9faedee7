"""from_torch / to_torch: PyTorch modules in, exact derivatives out, and back."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from _reference import LAYER_KINDS, make_network, rel_err, torch_jit_script_quiet, truth  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import hessian, jacrev, vmap  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core import interop  # noqa: E402


def _ad(module, x: np.ndarray):
    """(value, gradient (n,d,m), Hessian (n,d,d,m)) of a torch module by torch.func."""
    xt = torch.from_numpy(np.array(x))

    def one(xi):
        return module(xi[None])[0]

    with torch.no_grad():
        val = module(xt).numpy()
    grad = vmap(jacrev(one))(xt).permute(0, 2, 1).detach().numpy()
    with torch_jit_script_quiet():
        hess = vmap(hessian(one))(xt).permute(0, 2, 3, 1).detach().numpy()
    return val, grad, hess


def _torch_models():
    torch.manual_seed(0)
    yield "tanh", nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    yield (
        "nested",
        nn.Sequential(
            nn.Linear(3, 5),
            nn.Sigmoid(),
            nn.Sequential(
                nn.Linear(5, 5),
                nn.Softplus(beta=2.0, threshold=3.0),
                nn.Sequential(nn.Identity(), nn.Linear(5, 4), nn.SiLU()),
            ),
            nn.Linear(4, 2),
        ),
    )
    yield (
        "split_across_sequentials",
        nn.Sequential(nn.Sequential(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 1)),
    )
    yield (
        "custom_acts",
        nn.Sequential(
            nn.Linear(3, 4),
            interop.AntiTanh(),
            nn.Linear(4, 4),
            interop.Sin(),
            nn.Linear(4, 3),
            interop.Quadratic(),
        ),
    )
    yield (
        "blocks",
        nn.Sequential(
            nn.Linear(3, 4),
            nn.Tanh(),
            interop.ResidualBlock(4, 0.5, nn.Softplus()),
            nn.Dropout(0.5).eval(),
            interop.QuadraticBlock(4, 2),
        ),
    )
    yield (
        "icnn",
        nn.Sequential(
            interop.ICNNBlock(3, None, 4),
            interop.ICNNBlock(3, 4, 2, nn.Sigmoid()),
            interop.QuadraticICNNBlock(3, 2, 2),
        ),
    )
    yield (
        "no_bias",
        nn.Sequential(
            nn.Linear(3, 4, bias=False),
            nn.Tanh(),
            interop.ResidualBlock(4, 1.0, nn.Tanh(), bias=False),
            interop.ICNNBlock(4, None, 3, bias=False),
            nn.Linear(7, 2, bias=False),
        ),
    )


def _model(name):
    m = dict(_torch_models())[name]
    with torch.no_grad():  # the blocks start at zero: give them random weights
        for p in m.parameters():
            p.copy_(torch.randn(p.shape) * 0.7)
    return m.double()


MODEL_NAMES = sorted(dict(_torch_models()))


def _check_against_autodiff(name, lib):
    tm = _model(name)
    net = hq.from_torch(tm)
    d = net.in_features
    xn = np.random.default_rng(1).standard_normal((5, d))
    val, grad, hess = _ad(tm, xn)
    x = lib.asarray(xn)
    for mode in ("forward", "backward"):
        res = net(x, gradient=True, hessian=True, mode=mode, backend=lib.backend)
        lib.check(res.hessian, hess.shape, like=x)
        assert rel_err(lib.to_numpy(res.value), val) < 1e-13
        assert rel_err(lib.to_numpy(res.gradient), grad) < 1e-12
        assert rel_err(lib.to_numpy(res.hessian), hess) < 1e-12


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_from_torch_matches_torch_autodiff(name):
    """Value, gradient and Hessian of the converted network equal torch.func's
    derivatives of the original module (float64)."""
    from conftest import _numpy

    _check_against_autodiff(name, _numpy())


@pytest.mark.parametrize("name", ["nested", "blocks"])
def test_from_torch_on_every_backend(name, lib):
    _check_against_autodiff(name, lib)


def test_from_torch_copies_weights_bitwise_and_keeps_float32():
    tm = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    net = hq.from_torch(tm)
    assert [k for k, _ in net.named_parameters()] == ["0.K", "0.b", "1.K", "1.b"]
    assert net[0].K.dtype == np.float32
    np.testing.assert_array_equal(net[0].K, tm[0].weight.detach().numpy().T)
    np.testing.assert_array_equal(net[1].b, tm[2].bias.detach().numpy())
    assert hq.from_torch(tm, dtype=np.float64)[0].K.dtype == np.float64
    # float32 evaluation agrees with torch's float32 forward to float32 round-off
    x = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    np.testing.assert_allclose(net(x).value, tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        tm[0].weight.zero_()
    assert np.abs(net[0].K).max() > 0  # a copy, not a view


def test_relu_needs_opt_in():
    tm = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU()), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match=r"'1\.0' is nn\.ReLU.*second derivative.*allow_relu=True"):
        hq.from_torch(tm)
    net = hq.from_torch(tm, allow_relu=True)
    assert isinstance(net[0].act, interop.ReLU)
    x = np.random.default_rng(3).standard_normal((7, 3))
    val, grad, _ = _ad(tm, x)
    res = net(x, gradient=True, hessian=True)
    assert rel_err(res.value, val) < 1e-14 and rel_err(res.gradient, grad) < 1e-14
    # the Hessian of a ReLU net with linear output layers is zero (where it exists)
    assert np.abs(res.hessian).max() == 0.0


@pytest.mark.parametrize(
    "mod, match",
    [
        (nn.LeakyReLU(), "not twice differentiable"),
        (nn.ELU(), "not twice differentiable"),
        (nn.Hardtanh(), "not twice differentiable"),
        (nn.Tanhshrink(), r"cannot convert submodule '1' \(torch\.nn\.modules\.activation\.Tanhshrink\)"),
    ],
)
def test_unsupported_activations_name_the_submodule(mod, match):
    with pytest.raises(ValueError, match=match):
        hq.from_torch(nn.Sequential(nn.Linear(2, 2), mod))


class HandWrittenResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, u):
        return u + torch.tanh(self.lin(u))


def test_unrecognised_residual_pattern_names_the_submodule():
    tm = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), HandWrittenResidual()), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"'1\.1' \(.*HandWrittenResidual\).*ResidualBlock"):
        hq.from_torch(tm)


def test_other_structural_errors():
    with pytest.raises(ValueError, match=r"'0' \(Tanh\) is an activation not preceded by an nn.Linear"):
        hq.from_torch(nn.Sequential(nn.Tanh(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"'2' \(Tanh\) .*not preceded"):
        hq.from_torch(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Tanh()))
    with pytest.raises(ValueError, match="training mode"):
        hq.from_torch(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
    with pytest.raises(ValueError, match=r"width mismatch: submodule '0' outputs 3 features, '1' takes 4"):
        hq.from_torch(nn.Sequential(nn.Linear(2, 3), nn.Linear(4, 1)))
    with pytest.raises(ValueError, match="no nn.Linear"):
        hq.from_torch(nn.Sequential(nn.Identity()))
    with pytest.raises(ValueError, match="ModuleList"):
        hq.from_torch(nn.ModuleList([nn.Linear(2, 2)]))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        hq.from_torch([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="bfloat16"):
        hq.from_torch(nn.Linear(2, 2).to(torch.bfloat16))
    # a single Linear is a network too
    assert hq.from_torch(nn.Linear(2, 5)).out_features == 5


@pytest.mark.parametrize("kind", LAYER_KINDS)
@pytest.mark.parametrize("act", ["tanh", "softplus", "antitanh", "sin", "silu", "quadratic", "sigmoid"])
def test_to_torch_forward_equals_ours(kind, act):
    """to_torch(net)(x) equals net(x).value, and torch.func derivatives of the
    torch module equal our exact ones; the independent torch re-implementation
    in _reference agrees too."""
    net = make_network(kind, 3, act, seed=11)
    tm = to = hq.to_torch(net)
    x = np.random.default_rng(12).standard_normal((4, 3))
    val, grad, hess = _ad(tm, x)
    res = net(x, gradient=True, hessian=True)
    assert rel_err(val, res.value) < 1e-14
    assert rel_err(grad, res.gradient) < 1e-13
    assert rel_err(hess, res.hessian) < 1e-12
    tv, _, _ = truth(net, x, hessian=False)
    assert rel_err(val, tv) < 1e-14
    assert isinstance(to, nn.Sequential)


def test_round_trips_and_training_in_torch():
    net = make_network("nested", 3, "tanh", seed=13)
    tm = hq.to_torch(net)
    assert isinstance(tm[0], nn.Sequential)  # nesting kept
    back = hq.from_torch(tm)
    for (_, a), (_, b) in zip(net.named_parameters(), back.named_parameters()):
        assert a.tobytes() == b.tobytes()  # Kᵀᵀ = K exactly
    # keep training in PyTorch, then come back for exact derivatives
    x = torch.randn(16, 3, dtype=torch.float64)
    opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    loss = (tm(x) ** 2).mean()
    loss.backward()
    opt.step()
    trained = hq.from_torch(tm)
    with torch.no_grad():
        np.testing.assert_allclose(trained(x.numpy()).value, tm(x).numpy(), rtol=1e-13, atol=1e-14)
    assert not np.allclose(trained(x.numpy()).value, net(x.numpy()).value)


def test_to_torch_dtype_device_and_single_layer():
    net = hq.SingleLayer(3, 2, act="tanh", seed=0)
    tm = hq.to_torch(net, dtype=torch.float32, device="cpu")
    assert isinstance(tm, nn.Sequential) and tm[0].weight.dtype == torch.float32
    x = np.random.default_rng(0).standard_normal((3, 3))
    np.testing.assert_allclose(tm(torch.from_numpy(x).float()).detach().numpy(), net(x).value, rtol=1e-6)
    assert hq.to_torch(hq.SingleLayer(3, 2)).__len__() == 1  # identity activation: just the Linear
    net.to("torch")  # parameters living in torch convert too
    assert torch.equal(hq.to_torch(net)[0].weight, net.K.T)
    with pytest.raises(TypeError, match="network or layer"):
        hq.to_torch("net")


def test_relu_network_to_torch_and_back(tmp_path):
    net = hq.from_torch(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), allow_relu=True)
    tm = hq.to_torch(net)
    assert isinstance(tm[1], nn.ReLU)
    with pytest.raises(ValueError, match="allow_relu"):
        hq.from_torch(tm)
    hq.save(net, tmp_path / "relu.safetensors")
    back = hq.load(tmp_path / "relu.safetensors")
    assert isinstance(back[0].act, interop.ReLU)
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    np.testing.assert_array_equal(back(x, gradient=True).gradient, net(x, gradient=True).gradient)


def test_torch_classes_are_importable_by_name():
    """torch.save of a whole module needs its classes importable as module.qualname."""
    for name in interop._TORCH_NAMES:
        cls = getattr(interop, name)
        assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls
    with pytest.raises(AttributeError):
        interop.NotAThing  # noqa: B018


def test_import_hygiene():
    """``import hessquik_core`` (compat, interop and io included) never imports torch."""
    code = (
        "import sys, hessquik_core, hessquik_core.compat, hessquik_core.interop, hessquik_core.io; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_from_torch_refuses_tied_weights_and_keeps_reused_activations():
    """A module object with parameters used twice is refused (its weights are tied); a reused
    parameter-free activation is converted at every place it occurs."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    shared = nn.Linear(3, 3).double()
    with pytest.raises(ValueError, match=r"'2' is the same module object as '0'.*tied"):
        hq.from_torch(nn.Sequential(shared, nn.Tanh(), shared))
    act = nn.Tanh()
    tm = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2), act).double()
    net = hq.from_torch(tm)
    x = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_allclose(net(x).value, tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-13, atol=1e-14)

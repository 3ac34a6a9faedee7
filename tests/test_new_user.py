"""Issue 15, a new user's review: unpacking, ``to``, output activation, single points, cost titles."""

from __future__ import annotations

import numpy as np
import pytest
from _optional import needs_torch, torch

import hessquik_core as hq
from hessquik_core.engine import FIELDS

#: the quantities one call can request together (biharmonic=True has its own route
#: and combines only with gradient and laplacian: tests/test_higher_flags.py; the
#: third/fourth directional derivatives need directions: tests/test_higher_call_taylor.py)
TOGETHER = tuple(f for f in FIELDS[1:] if f not in ("biharmonic", "third_derivative", "fourth_derivative"))


@pytest.fixture
def net():
    return hq.FullyConnectedNN([3, 6, 3], act="tanh", seed=0)  # d = m = 3: divergence too


@pytest.fixture
def x():
    return np.random.default_rng(1).standard_normal((4, 3))


# -- 2: unpacking yields exactly the requested quantities ------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        (),
        ("gradient",),
        ("hessian",),
        ("laplacian",),
        ("gradient", "laplacian"),
        ("gradient", "hessian"),
        ("laplacian", "hessian_diagonal", "divergence"),
        TOGETHER,
        ("gradient", "laplacian", "biharmonic"),
        ("biharmonic",),
    ],
)
def test_unpacking_yields_requested_in_fixed_order(net, x, request_):
    res = net(x, **{k: True for k in request_})
    parts = list(res)
    want = ["value"] + [f for f in FIELDS[1:] if f in request_]
    assert len(parts) == len(want)
    for got, name in zip(parts, want):
        assert got is getattr(res, name) and got is not None


def test_unpacking_examples_from_the_issue(net, x):
    f, g, L = net(x, gradient=True, laplacian=True)
    ref = net(x, gradient=True, laplacian=True)
    np.testing.assert_array_equal(L, ref.laplacian)  # the Laplacian, not a None Hessian slot
    assert L.shape == (4, 3)
    f, g = net(x, gradient=True)
    assert g.shape == (4, 3, 3)
    f, df, d2f = net(x, gradient=True, hessian=True)  # hessQuik's triple
    assert d2f.shape == (4, 3, 3, 3)
    (v,) = net(x)
    assert v.shape == (4, 3)


def test_unpacking_refuses_a_wrong_count(net, x):
    with pytest.raises(ValueError, match="not enough values to unpack"):
        f, g, H = net(x, gradient=True)
    with pytest.raises(ValueError, match="too many values to unpack"):
        f, g = net(x, gradient=True, laplacian=True)
    with pytest.raises(ValueError, match="not enough values to unpack"):
        f, df, d2f = net(x)


@needs_torch
def test_compat_triple_unchanged(x):
    from hessquik_core.compat import networks as cnet

    f = cnet.fullyConnectedNN([3, 5, 2])
    xt = torch.from_numpy(x).to(torch.get_default_dtype())
    fx, dfx, lap = f(xt, do_gradient=True, do_Laplacian=True)
    assert lap.shape == (4, 1, 2)
    fx, dfx, d2fx = f(xt, do_gradient=True)
    assert d2fx is None and dfx.shape == (4, 3, 2)


# -- 3: to() as a torch user expects ------------------------------------------------


def _kinds(net):
    return {(type(p).__module__.split(".")[0], str(p.dtype).split(".")[-1]) for p in net.parameters()}


@needs_torch
def test_to_device_strings_and_dtypes(net, x):
    ref = net(x, gradient=True).gradient
    assert net.to(torch.float32) is net
    assert _kinds(net) == {("numpy", "float32")}  # dtype only: NumPy stays NumPy
    net.to(np.float64)
    assert _kinds(net) == {("numpy", "float64")}
    net.to("cpu")
    assert _kinds(net) == {("torch", "float64")}
    assert all(p.device.type == "cpu" and not p.requires_grad for p in net.parameters())
    np.testing.assert_allclose(net(x, gradient=True).gradient, ref, rtol=1e-5, atol=1e-7)  # float32 trip
    net.to(torch.float32)
    assert _kinds(net) == {("torch", "float32")}
    net.to(torch.device("cpu"), torch.float64)
    assert _kinds(net) == {("torch", "float64")}
    net.to("numpy")
    net.to(device="cpu", dtype=torch.float32)
    assert _kinds(net) == {("torch", "float32")}
    net.to("float64")
    assert _kinds(net) == {("torch", "float64")}
    net.to()
    assert _kinds(net) == {("numpy", "float64")}
    np.testing.assert_allclose(net(x, gradient=True).gradient, ref, rtol=1e-5, atol=1e-7)  # float32 trip


@needs_torch
def test_to_keeps_trainable_tensors_trainable(net):
    net.to("torch", requires_grad=True)
    net.to(torch.float32)
    assert all(p.requires_grad and p.is_leaf for p in net.parameters())
    net.to("cpu")
    assert all(p.requires_grad and p.is_leaf for p in net.parameters())
    net.to("torch", requires_grad=False)
    assert not any(p.requires_grad for p in net.parameters())


@needs_torch
def test_to_refuses_unknown_and_leaves_module_untouched(net):
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="unknown backend or device 'tensorflow'"):
        net.to("tensorflow")
    with pytest.raises(ValueError, match="invalid device 'cuda:x'"):
        net.to("cuda:x")
    with pytest.raises(ValueError, match="must name a torch device"):
        net.to(device="gpu")
    with pytest.raises(TypeError, match="backend name, a device or a dtype"):
        net.to(3)
    with pytest.raises(TypeError, match="floating dtype"):
        net.to(torch.int64)
    with pytest.raises(TypeError, match="dtype given twice"):
        net.to(torch.float32, torch.float64)
    with pytest.raises(ValueError, match="requires_grad=True needs backend='torch'"):
        net.to(np.float32, requires_grad=True)
    for k, v in net.state_dict().items():
        assert isinstance(v, np.ndarray) and v.tobytes() == before[k].tobytes()


@needs_torch
@pytest.mark.cuda
def test_to_cuda(net, x):
    if not torch.cuda.is_available():
        pytest.skip("needs torch.cuda")
    ref = net(x, hessian=True).hessian
    net.to("cuda", torch.float64)
    assert all(p.device.type == "cuda" for p in net.parameters())
    xt = torch.from_numpy(x).cuda()
    np.testing.assert_allclose(net(xt, hessian=True).hessian.cpu().numpy(), ref, rtol=1e-12, atol=1e-14)
    net.to(torch.float32)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in net.parameters())
    net.to(torch.device("cuda:0"))
    net.to("cpu")
    assert all(p.device.type == "cpu" for p in net.parameters())


# -- 10: the output activation -------------------------------------------------------


def test_output_activation_default_and_linear(x, tmp_path):
    default = hq.FullyConnectedNN([3, 5, 2], act="tanh", seed=3)
    assert [b.act.name for b in default] == ["tanh", "tanh"]  # hessQuik's convention, kept
    linear = hq.FullyConnectedNN([3, 5, 2], act="tanh", output_act=None, seed=3)
    assert [b.act.name for b in linear] == ["tanh", "identity"]
    assert [b.act.name for b in hq.FullyConnectedNN([3, 2], act="tanh", output_act="sin")] == ["sin"]
    # same weights, the read-out only differs by the last tanh
    for k in default.state_dict():
        np.testing.assert_array_equal(default.state_dict()[k], linear.state_dict()[k])
    np.testing.assert_allclose(default(x).value, np.tanh(linear(x).value), rtol=1e-14)
    big = 100 * x
    assert np.abs(linear(big).value).max() > 1 >= np.abs(default(big).value).max()
    for i, n in enumerate((default, linear)):
        path = tmp_path / f"net{i}.hqk"
        hq.save(n, path)
        back = hq.load(path)
        assert [b.act.name for b in back] == [b.act.name for b in n]
        np.testing.assert_array_equal(back(x, hessian=True).hessian, n(x, hessian=True).hessian)


# -- 11: a single point ----------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_single_point_every_quantity(net, x, mode, lib):
    req = {f: True for f in TOGETHER}
    batch = net(x, mode=mode, **req)
    conv = (lambda a: a) if lib == "numpy" else torch.from_numpy
    for i in range(len(x)):
        one = net(conv(x[i]), mode=mode, **req)
        assert one.mode == mode
        for name in ("value", *TOGETHER):
            got = getattr(one, name)
            want = getattr(batch, name)[i]
            assert tuple(got.shape) == want.shape
            got = got if lib == "numpy" else got.numpy()
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    assert tuple(net(conv(x[0])).value.shape) == (3,)
    assert tuple(net(conv(x[0]), divergence=True).divergence.shape) == ()


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_single_point_with_directions(x, mode):
    net = hq.FullyConnectedNN([3, 6, 2], act="tanh", seed=2)
    V = np.random.default_rng(3).standard_normal((3 if mode == "forward" else 2, 4))
    batch = net(x, gradient=True, hessian=True, directions=V, mode=mode)
    one = net(x[1], gradient=True, hessian=True, directions=V, mode=mode)
    np.testing.assert_allclose(one.gradient, batch.gradient[1], rtol=1e-13)
    np.testing.assert_allclose(one.hessian, batch.hessian[1], rtol=1e-13)


@needs_torch
def test_single_point_keeps_autograd_and_input(net, x):
    xt = torch.from_numpy(x[0].copy()).requires_grad_(True)
    keep = xt.detach().clone()
    out = net(xt, laplacian=True).laplacian.sum()
    out.backward()
    assert xt.grad is not None and xt.grad.shape == (3,)
    assert torch.equal(xt.detach(), keep)


def test_wrong_shapes_say_what_is_expected(net):
    with pytest.raises(ValueError, match=r"got shape \(4,\) \(ndim 1\): a single point has shape \(3,\)"):
        net(np.zeros(4))
    # the curvature calls need a batch: a single point is told x[None]
    import hessquik_core.curvature as cv

    with pytest.raises(ValueError, match=r"pass x\[None\], shape \(1, 3\)"):
        cv.gradient(net, np.zeros(3), np.zeros((1, 3)), "mse")


# -- 12: the cost report's title -------------------------------------------------------


def test_cost_title_names_the_request():
    net = hq.FullyConnectedNN([64, 32, 1], act="tanh", seed=0)
    value_only = net.cost(1600, gradient=False)
    assert str(value_only).startswith("cost of value for n=1600")
    assert value_only.chosen == "forward"
    with_grad = net.cost(1600)
    assert str(with_grad).startswith("cost of value + gradient for n=1600")
    assert value_only.routes["forward"].flops < with_grad.routes["forward"].flops
    assert net.cost(10, gradient=False, hessian=True).request == "value + Hessian"
    assert net.cost(10, laplacian=True).request == "value + gradient + Laplacian"


@needs_torch
def test_load_with_a_device_alone(net, tmp_path):
    hq.save(net, tmp_path / "n.hqk")
    back = hq.load(tmp_path / "n.hqk", device="cpu")
    assert _kinds(back) == {("torch", "float64")}

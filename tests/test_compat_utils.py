"""hessquik_core.compat.utils: hessQuik's ``utils`` on compat objects.

The checks hessQuik's own test suite runs on every activation, layer and
network (Taylor tests in the input and in the weights, finite differences,
directional derivatives, Laplacians) are run here on the compat classes,
and each helper is compared with hessQuik 0.0.6's on the same inputs. Every
check is also shown to fail on a deliberately wrong derivative.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hessQuik")

import hessQuik.activations as h_act  # noqa: E402
import hessQuik.layers as h_lay  # noqa: E402
import hessQuik.networks as h_net  # noqa: E402
import hessQuik.utils as h_utils  # noqa: E402

import hessquik_core.compat.activations as act  # noqa: E402
import hessquik_core.compat.layers as lay  # noqa: E402
import hessquik_core.compat.networks as net  # noqa: E402
from hessquik_core.compat import utils as cu  # noqa: E402


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


ACTIVATIONS = [
    "antiTanhActivation",
    "identityActivation",
    "quadraticActivation",
    "sigmoidActivation",
    "softplusActivation",
    "tanhActivation",
]


def _layers():
    return {
        "single": (lay.singleLayer(4, 7, act=act.softplusActivation()), 4),
        "single_no_bias": (lay.singleLayer(4, 7, act=act.softplusActivation(), bias=False), 4),
        "resnet": (lay.resnetLayer(4, h=0.25, act=act.softplusActivation()), 4),
        "resnet_no_bias": (lay.resnetLayer(4, h=0.25, act=act.softplusActivation(), bias=False), 4),
        "icnn": (lay.ICNNLayer(3, None, 5, act=act.softplusActivation()), 3),
        "icnn_no_bias": (lay.ICNNLayer(3, None, 5, act=act.softplusActivation(), bias=False), 3),
        "quadratic": (lay.quadraticLayer(4, 7), 4),
        "quadratic_icnn": (lay.quadraticICNNLayer(3, None, 5), 3),
    }


def _networks():
    def mixed(m):
        return net.NN(
            lay.singleLayer(3, 2, act=act.softplusActivation()),
            lay.singleLayer(2, 7, act=act.softplusActivation()),
            lay.resnetLayer(7, h=0.25, act=act.antiTanhActivation()),
            lay.singleLayer(7, 5, act=act.softplusActivation()),
            lay.resnetLayer(5, h=0.5, act=act.quadraticActivation()),
            lay.singleLayer(5, m, act=act.softplusActivation()),
        )

    return {
        "mixed_scalar": (mixed(1), 3),
        "mixed_vector": (mixed(3), 3),
        "fully_connected": (net.fullyConnectedNN([3, 2, 5, 1], act=act.softplusActivation()), 3),
        "resnet": (net.resnetNN(3, 4, h=0.25, act=act.quadraticActivation()), 3),
        "icnn_layers": (
            net.NN(
                lay.ICNNLayer(3, None, 5, act=act.softplusActivation()),
                lay.ICNNLayer(3, 5, 2, act=act.softplusActivation()),
                lay.ICNNLayer(3, 2, 7, act=act.softplusActivation()),
            ),
            3,
        ),
        "icnn": (net.ICNN(3, [None, 5, 2, 7], act=act.softplusActivation()), 3),
        "block_fully_connected": (
            net.NN(
                net.fullyConnectedNN([3, 2, 3], act=act.antiTanhActivation()),
                net.fullyConnectedNN([3, 4, 5], act=act.identityActivation()),
                net.fullyConnectedNN([5, 7, 6, 1], act=act.softplusActivation()),
            ),
            3,
        ),
        "block_resnet": (
            net.NN(
                lay.singleLayer(3, 7, act=act.antiTanhActivation()),
                net.resnetNN(7, 3, h=0.8, act=act.softplusActivation()),
                lay.quadraticLayer(7, 2),
            ),
            3,
        ),
        "block_icnn": (
            net.NN(
                net.ICNN(3, [None, 4, 5, 2, 7], act=act.tanhActivation()), lay.quadraticICNNLayer(3, 7, 2)
            ),
            3,
        ),
    }


def _all_taylor(f, x):
    for fm in (True, False):
        for hess in (False, True):
            g, h = cu.input_derivative_check(f, x, do_Hessian=hess, forward_mode=fm)
            assert g is True, (fm, hess)
            assert (h is True) if hess else (h is None), (fm, hess)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_taylor_checks(name):
    _all_taylor(getattr(act, name)(), torch.randn(11, 7))


@pytest.mark.parametrize("name", sorted(_layers()))
def test_layer_taylor_checks(name):
    f, d = _layers()[name]
    _all_taylor(f, torch.randn(11, d))


@pytest.mark.parametrize("name", sorted(_networks()))
def test_network_taylor_checks(name):
    f, d = _networks()[name]
    _all_taylor(f, torch.randn(11, d))


@pytest.mark.parametrize("wrapper", ["NNPytorchAD", "NNPytorchHessian"])
def test_autograd_wrapper_taylor_checks(wrapper):
    f, d = _networks()["mixed_scalar"]
    x = torch.randn(11, d).requires_grad_(True)  # as hessQuik's test sets it
    _all_taylor(getattr(net, wrapper)(f), x)


@pytest.mark.parametrize("name", ["single", "resnet"])
def test_layer_laplacian_finite_differences(name):
    f, d = _layers()[name]
    x = torch.randn(11, d)
    assert cu.input_derivative_check_finite_difference_laplacian(f, x) == (True, None)
    assert cu.input_derivative_check_finite_difference_laplacian(f, x, do_Laplacian=True) == (True, True)


@pytest.mark.parametrize("name", ["mixed_scalar", "mixed_vector", "fully_connected", "resnet"])
def test_network_laplacian_and_directional_checks(name):
    f, d = _networks()[name]
    x = torch.randn(11, d)
    assert cu.input_derivative_check_finite_difference_laplacian(f, x, do_Laplacian=True) == (True, True)
    assert cu.directional_derivative_check(f, x, k=3, tol=1e-10) == (True, True, True, True)
    assert cu.directional_derivative_laplacian_check(f, x, k=3, tol=1e-10) == (True, True)


@pytest.mark.parametrize("name", ["single", "icnn", "quadratic_icnn"])
def test_finite_difference_checks(name):
    f, d = _layers()[name]
    x = torch.randn(6, d)
    for fm in (True, False):
        assert cu.input_derivative_check_finite_difference(f, x, forward_mode=fm) == (True, None)
        assert cu.input_derivative_check_finite_difference(f, x, do_Hessian=True, forward_mode=fm) == (
            True,
            True,
        )


@pytest.mark.parametrize("name", ["single", "resnet", "block", "icnn"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["exact", "NNPytorchAD"])
def test_network_derivative_check(name, wrapped):
    """hessQuik's weight-derivative tests; each runs twice on the same network
    (forward then backward mode), which the check must survive: it leaves
    weights and ``.grad`` as they were."""
    d = 4
    if name == "single":
        f = lay.singleLayer(d, 7, act=act.softplusActivation())
    elif name == "resnet":
        f = net.resnetNN(d, 4, act=act.softplusActivation())
    elif name == "block":
        f = net.NN(
            lay.singleLayer(d, 7, act=act.tanhActivation()),
            net.resnetNN(7, 4, act=act.softplusActivation()),
            net.fullyConnectedNN([7, 13, 5], act=act.quadraticActivation()),
            lay.singleLayer(5, 3, act=act.identityActivation()),
            lay.quadraticLayer(3, 2),
        )
    else:
        f = net.NN(net.ICNN(d, [None, 4, 5, 2, 7], act=act.tanhActivation()), lay.quadraticICNNLayer(d, 7, 2))
    if wrapped:
        f = net.NNPytorchAD(net.NN(f) if name == "single" else f)
    x = torch.randn(11 if not wrapped else 5, d)
    before = cu.extract_data(f).clone()
    for fm in (True, False):
        assert cu.network_derivative_check(f, x, do_Hessian=True, forward_mode=fm) is True
        assert torch.equal(cu.extract_data(f), before)
        assert all(p.grad is None for p in f.parameters())
    assert cu.network_derivative_check(f, x, do_Hessian=False) is True


# --------------------------------------------------------------------------
# the checks can fail
# --------------------------------------------------------------------------


class _Wrong(torch.nn.Module):
    """A network whose gradient (or Hessian) is off by a small relative amount."""

    def __init__(self, f, where: int, scale: float = 1.01, laplacian_only: bool = False):
        super().__init__()
        self.f, self.where, self.scale, self.laplacian_only = f, where, scale, laplacian_only

    def forward(self, x, do_gradient=False, do_Hessian=False, do_Laplacian=False, **kw):
        out = list(self.f(x, do_gradient=do_gradient, do_Hessian=do_Hessian, do_Laplacian=do_Laplacian, **kw))
        if out[self.where] is not None and (do_Laplacian or not self.laplacian_only):
            out[self.where] = out[self.where] * self.scale
        return tuple(out)


def test_checks_detect_wrong_derivatives():
    f, d = _networks()["mixed_vector"]
    x = torch.randn(11, d)
    assert cu.input_derivative_check(_Wrong(f, 1), x, do_Hessian=True) == (False, False)
    assert cu.input_derivative_check(_Wrong(f, 2), x, do_Hessian=True) == (True, False)
    assert cu.input_derivative_check_finite_difference(_Wrong(f, 1), x, do_Hessian=True)[0] is False
    assert cu.input_derivative_check_finite_difference(_Wrong(f, 2), x, do_Hessian=True) == (True, False)
    assert cu.input_derivative_check_finite_difference_laplacian(_Wrong(f, 2), x, do_Laplacian=True) == (
        True,
        False,
    )
    assert cu.directional_derivative_laplacian_check(_Wrong(f, 2, 1.0 + 1e-6, laplacian_only=True), x) == (
        True,
        False,
    )
    # a wrong weight gradient: the derivative call detaches one term from autograd
    g = lay.singleLayer(d, 5, act=act.tanhActivation())

    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = g

        def forward(self, x, **kw):
            f0, df, d2f = self.g(x, **kw)
            return f0, None if df is None else df.detach() + 0 * df, d2f

    assert cu.network_derivative_check(Detached(), x, do_Hessian=True) is False


# --------------------------------------------------------------------------
# agreement with hessQuik's helpers
# --------------------------------------------------------------------------


def test_hessquik_checks_accept_compat_networks_and_ours_accept_hessquik_networks():
    f, d = _networks()["block_resnet"]
    x = torch.randn(11, d)
    for fm in (True, False):
        assert tuple(map(bool, h_utils.input_derivative_check(f, x, do_Hessian=True, forward_mode=fm))) == (
            True,
            True,
        )
    h = h_net.NN(
        h_lay.singleLayer(d, 5, act=h_act.tanhActivation()),
        h_net.resnetNN(5, 2, act=h_act.softplusActivation()),
    )
    assert cu.input_derivative_check(h, x, do_Hessian=True) == (True, True)
    assert cu.network_derivative_check(h, x, do_Hessian=True) is True
    assert cu.directional_derivative_check(h, x, tol=1e-10) == (True, True, True, True)


def test_convert_to_base_matches_hessquik():
    vals = (1.0, 0.75, 3.0e-9, 1234.5, 0.0, -2.0)
    np.testing.assert_allclose(cu.convert_to_base(vals), h_utils.convert_to_base(vals), rtol=1e-14)
    np.testing.assert_allclose(
        cu.convert_to_base(vals, 10.0), h_utils.convert_to_base(vals, 10.0), rtol=1e-14
    )


def test_extract_insert_and_attribute_helpers_match_hessquik():
    torch.manual_seed(1)
    ref = h_net.NN(h_lay.singleLayer(3, 4, act=h_act.tanhActivation()), h_lay.resnetLayer(4, h=0.5))
    ours = net.NN(lay.singleLayer(3, 4, act=act.tanhActivation()), lay.resnetLayer(4, h=0.5))
    ours.load_state_dict(ref.state_dict())
    theta = cu.extract_data(ours)
    assert torch.equal(theta, h_utils.extract_data(ref))
    assert torch.equal(cu.extract_data(ours, "grad"), torch.zeros_like(theta))
    cu.insert_data(ours, 2 * theta)
    h_utils.insert_data(ref, 2 * theta)
    assert torch.equal(cu.extract_data(ours), h_utils.extract_data(ref))
    assert cu.module_getattr(ours, ["1", "layer", "K"]) is ours[1].layer.K
    assert cu.module_getattr(ours, "0") is ours[0]
    cu.module_setattr(ours, ["1", "h"], 0.25)
    assert ours[1].h == 0.25


def test_peaks_matches_hessquik():
    y = -3 + 6 * torch.rand(50, 2)
    for kw in ({}, {"do_gradient": True}, {"do_Hessian": True}, {"do_gradient": True, "do_Hessian": True}):
        ours, ref = cu.peaks(y, **kw), h_utils.peaks(y, **kw)
        for a, b in zip(ours, ref):
            assert (a is None) == (b is None), kw
            if a is not None:
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        cu.peaks(torch.zeros(3, 3))


@pytest.mark.parametrize("flags", [(False, False), (True, False), (True, True), (False, True)])
def test_training_loop_matches_hessquik(flags):
    """Same weights, same data, same seed for the shuffle, SGD: identical losses
    per epoch and identical weights afterwards."""
    do_gradient, do_Hessian = flags
    torch.manual_seed(3)
    ref = h_net.NN(h_lay.singleLayer(2, 6, act=h_act.tanhActivation()), h_lay.singleLayer(6, 1))
    ours = net.NN(lay.singleLayer(2, 6, act=act.tanhActivation()), lay.singleLayer(6, 1))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(23, 2)
    f, df, d2f = cu.peaks(x, do_gradient=True, do_Hessian=True)
    y = torch.cat((f, df.reshape(23, -1), d2f.reshape(23, -1)), dim=1)
    opt_r = torch.optim.SGD(ref.parameters(), lr=1e-2)
    opt_o = torch.optim.SGD(ours.parameters(), lr=1e-2)
    w = (1.0, 0.5, 0.25)
    for epoch in range(2):
        torch.manual_seed(10 + epoch)
        r = h_utils.train_one_epoch(
            ref, x, y, opt_r, batch_size=5, do_gradient=do_gradient, do_Hessian=do_Hessian, loss_weights=w
        )
        torch.manual_seed(10 + epoch)
        o = cu.train_one_epoch(
            ours, x, y, opt_o, batch_size=5, do_gradient=do_gradient, do_Hessian=do_Hessian, loss_weights=w
        )
        assert len(o) == len(r)
        np.testing.assert_allclose(o, r, rtol=1e-10)
    for (k, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=k)
    rt = h_utils.test(ref, x, y, do_gradient=do_gradient, do_Hessian=do_Hessian, loss_weights=w)
    ot = cu.test(ours, x, y, do_gradient=do_gradient, do_Hessian=do_Hessian, loss_weights=w)
    assert len(ot) == len(rt) and not ours.training
    np.testing.assert_allclose(ot, rt, rtol=1e-10)


@pytest.mark.parametrize("flags", [(True, False), (True, True), (False, True), (False, False)])
def test_print_headers_match_hessquik(flags, capsys):
    for verbose in (False, True):
        ours = cu.print_headers(*flags, verbose=verbose, loss_weights=(1.0, 0.5, 0.25))
        mine = capsys.readouterr().out
        ref = h_utils.print_headers(*flags, verbose=verbose, loss_weights=(1.0, 0.5, 0.25))
        theirs = capsys.readouterr().out
        assert ours == ref
        assert mine == theirs


@pytest.mark.parametrize("wrapper", ["hessQuik", "PytorchAD", "PytorchHessian"])
@pytest.mark.parametrize("network_type", ["resnet", "fully_connected", "icnn"])
def test_timing_test_returns_hessquik_layout(wrapper, network_type):
    ins, outs = torch.tensor([2, 3]), torch.tensor([1])
    res = cu.timing_test(
        ins, outs, nex=4, num_trials=2, width=4, depth=2, network_wrapper=wrapper, network_type=network_type
    )
    assert set(res) == {
        "timing_trials",
        "timing_trials_mean",
        "timing_trials_std",
        "in_feature_range",
        "out_feature_range",
        "nex",
        "num_trials",
    }
    assert res["timing_trials"].shape == (2, 1, 2) and res["timing_trials_mean"].shape == (2, 1)
    assert bool((res["timing_trials"] > 0).all())


def test_timing_test_rejects_bad_settings():
    with pytest.raises(ValueError, match="scalar output"):
        cu.timing_test(torch.tensor([2]), torch.tensor([2]), num_trials=1, network_type="icnn")
    with pytest.raises(ValueError, match="network_type"):
        cu.timing_test(torch.tensor([2]), torch.tensor([1]), num_trials=1, network_type="cnn")
    with pytest.raises(ValueError, match="network_wrapper"):
        cu.timing_test(torch.tensor([2]), torch.tensor([1]), num_trials=1, network_wrapper="jax")

"""hessquik_core.compat as torch modules: training the weights.

hessQuik networks are ``nn.Module`` s: ``loss.backward()`` on any output
(value, gradient, Hessian, Laplacian) reaches their parameters and an
optimizer trains them. The compat networks must do the same. The weight
gradients are compared with hessQuik 0.0.6's (autograd through its own
derivative code) on the same weights and with finite differences; one
optimizer step is compared step for step.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hessQuik")

import hessQuik.activations as h_act  # noqa: E402
import hessQuik.layers as h_lay  # noqa: E402
import hessQuik.networks as h_net  # noqa: E402

import hessquik_core.compat.activations as c_act  # noqa: E402
import hessquik_core.compat.layers as c_lay  # noqa: E402
import hessquik_core.compat.networks as c_net  # noqa: E402


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _build(lib_act, lib_lay, lib_net, kind):
    """The same architecture written with either library's modules."""
    A, Ly, Nt = lib_act, lib_lay, lib_net
    if kind == "single":
        return Ly.singleLayer(3, 5, act=A.tanhActivation()), 3
    if kind == "resnet_mlp":
        return Nt.NN(
            Ly.singleLayer(3, 6, act=A.softplusActivation()),
            Nt.resnetNN(6, 2, h=0.5, act=A.antiTanhActivation()),
            Ly.singleLayer(6, 2, act=A.tanhActivation()),
        ), 3
    if kind == "fully_connected":
        return Nt.fullyConnectedNN([4, 5, 3, 1], act=A.sigmoidActivation()), 4
    if kind == "quadratic_head":
        return Nt.NN(
            Ly.singleLayer(3, 5, act=A.tanhActivation()),
            Nt.resnetNN(5, 1, h=0.25, act=A.quadraticActivation()),
            Ly.quadraticLayer(5, 2),
        ), 3
    if kind == "icnn":
        return Nt.NN(Nt.ICNN(3, [None, 4, 3], act=A.softplusActivation()), Ly.quadraticICNNLayer(3, 3, 2)), 3
    raise AssertionError(kind)


def _pair(kind, seed=0):
    """(hessQuik module, compat module with the same weights, input width)."""
    torch.manual_seed(seed)
    ref, d = _build(h_act, h_lay, h_net, kind)
    ours, _ = _build(c_act, c_lay, c_net, kind)
    ours.load_state_dict(ref.state_dict())
    return ref, ours, d


def _grads(module) -> dict:
    return {
        k: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for k, p in module.named_parameters()
    }


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


KINDS = ["single", "resnet_mlp", "fully_connected", "quadratic_head", "icnn"]
# hessQuik computes Laplacians for single and residual layers only
LAPLACIAN_KINDS = ["single", "resnet_mlp", "fully_connected"]


def _loss(out, which: int):
    t = out[which]
    return torch.sum(torch.sin(t) * t)  # not just a square: a generic smooth loss of the output


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("forward_mode", [True, False])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["value", "gradient", "hessian"])
def test_weight_gradients_match_hessquik(kind, forward_mode, which):
    ref, ours, d = _pair(kind)
    x = torch.randn(6, d)
    _loss(ref(x, do_gradient=True, do_Hessian=True, forward_mode=forward_mode), which).backward()
    _loss(ours(x, do_gradient=True, do_Hessian=True, forward_mode=forward_mode), which).backward()
    g_ref, g_ours = _grads(ref), _grads(ours)
    assert list(g_ref) == list(g_ours)
    for k in g_ref:
        if float(g_ref[k].abs().max()) == 0.0:  # e.g. a bias that the Hessian does not see
            assert float(g_ours[k].abs().max()) < 1e-12, k
        else:
            assert _rel(g_ours[k], g_ref[k]) < 1e-10, (k, _rel(g_ours[k], g_ref[k]))


@pytest.mark.parametrize("kind", LAPLACIAN_KINDS)
def test_laplacian_weight_gradients_match_hessquik(kind):
    ref, ours, d = _pair(kind)
    x = torch.randn(5, d)
    _loss(ref(x, do_gradient=True, do_Laplacian=True), 2).backward()
    _loss(ours(x, do_gradient=True, do_Laplacian=True), 2).backward()
    g_ref, g_ours = _grads(ref), _grads(ours)
    for k in g_ref:
        assert _rel(g_ours[k], g_ref[k]) < 1e-10, k


def test_weight_gradient_matches_finite_differences():
    """d/dt L(theta + t p) at t = 0 by central differences, for a loss of all three outputs."""
    _, ours, d = _pair("quadratic_head", seed=3)
    x = torch.randn(4, d)

    def total():
        f, df, d2f = ours(x, do_gradient=True, do_Hessian=True)
        return _loss((f,), 0) + _loss((df,), 0) + _loss((d2f,), 0)

    total().backward()
    params = list(ours.parameters())
    dirs = [torch.randn_like(p) for p in params]
    slope = sum(float(torch.sum(p.grad * q)) for p, q in zip(params, dirs))
    saved = [p.detach().clone() for p in params]
    t = 1e-5
    vals = []
    with torch.no_grad():
        for s in (t, -t):
            for p, p0, q in zip(params, saved, dirs):
                p.copy_(p0 + s * q)
            vals.append(float(total()))
        for p, p0 in zip(params, saved):
            p.copy_(p0)
    fd = (vals[0] - vals[1]) / (2 * t)
    assert abs(fd - slope) < 1e-7 * max(1.0, abs(slope)), (fd, slope)


def test_optimizer_step_matches_hessquik_and_training_reduces_the_loss():
    """SGD on a loss of gradient and Hessian outputs: the first steps agree with
    hessQuik's step for step; more steps reduce the loss."""
    ref, ours, d = _pair("resnet_mlp", seed=5)
    x = torch.randn(16, d)
    _, teacher, _ = _pair("resnet_mlp", seed=6)  # a reachable target: another net's gradient
    target_g = teacher(x, do_gradient=True)[1].detach()

    def loss_of(mod):
        _, df, d2f = mod(x, do_gradient=True, do_Hessian=True)
        return torch.mean((df - target_g) ** 2) + 0.1 * torch.mean(d2f**2)

    opt_r = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.2, momentum=0.9)
    history = []
    for step in range(40):
        for opt, mod in ((opt_r, ref), (opt_o, ours)):
            if step >= 3 and mod is ref:
                continue  # compare the first steps only; then train ours alone
            opt.zero_grad()
            loss = loss_of(mod)
            loss.backward()
            opt.step()
            if mod is ours:
                history.append(float(loss.detach()))
        if step == 2:
            for (k, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
                assert _rel(q.detach(), p.detach()) < 1e-10, k
    assert history[-1] < 0.7 * history[0], history


def test_adam_trains_through_the_laplacian():
    torch.manual_seed(2)
    f = c_net.NN(
        c_lay.singleLayer(2, 8, act=c_act.tanhActivation()),
        c_lay.singleLayer(8, 1, act=c_act.identityActivation()),
    )
    opt = torch.optim.Adam(f.parameters(), lr=0.02)
    x = torch.randn(32, 2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        _, _, lap = f(x, do_gradient=True, do_Laplacian=True)
        loss = torch.mean((lap - 1.0) ** 2)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_frozen_parameters_get_no_gradient():
    _, ours, d = _pair("resnet_mlp")
    ours[0].requires_grad_(False)
    x = torch.randn(3, d)
    _, df, _ = ours(x, do_gradient=True)
    df.sum().backward()
    assert ours[0].K.grad is None and ours[0].b.grad is None
    assert ours[2].K.grad is not None and float(ours[2].K.grad.abs().max()) > 0


def test_no_grad_and_numpy_inputs_build_no_graph():
    _, ours, d = _pair("single")
    x = torch.randn(3, d)
    with torch.no_grad():
        out = ours(x, do_gradient=True, do_Hessian=True)
    assert not any(t.requires_grad for t in out)
    out_np = ours(x.numpy(), do_gradient=True, do_Hessian=True)
    assert all(isinstance(t, np.ndarray) for t in out_np)
    for a, b in zip(out_np, out):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------
# NNPytorchAD / NNPytorchHessian
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["resnet_mlp", "quadratic_head"])
def test_nnpytorchad_gradients_reach_the_weights(kind):
    """The weight gradient of a loss of NNPytorchAD's outputs equals the one of
    the exact (compat) outputs, and hessQuik's NNPytorchAD on hessQuik's net."""
    ref, ours, d = _pair(kind)
    x = torch.randn(5, d)
    ad, ad_ref = c_net.NNPytorchAD(ours), h_net.NNPytorchAD(ref)
    assert isinstance(ad, torch.nn.Module)
    assert [k for k, _ in ad.named_parameters()] == ["net." + k for k, _ in ours.named_parameters()]

    def total(out):
        return sum(_loss((t,), 0) for t in out)

    out_ad = ad(x, do_gradient=True, do_Hessian=True)
    total(out_ad).backward()
    g_ad = _grads(ours)
    ours.zero_grad()
    out_exact = ours(x, do_gradient=True, do_Hessian=True)
    total(out_exact).backward()
    g_exact = _grads(ours)
    total(ad_ref(x.clone(), do_gradient=True, do_Hessian=True)).backward()
    g_ref = _grads(ref)
    for a, b in zip(out_ad, out_exact):
        assert a.shape == b.shape and _rel(a.detach(), b.detach()) < 1e-12
    for k in g_exact:
        assert _rel(g_ad[k], g_exact[k]) < 1e-10, k
        assert _rel(g_ad[k], g_ref[k]) < 1e-10, k


def test_nnpytorchad_leaves_inputs_alone_and_handles_numpy():
    _, ours, d = _pair("fully_connected")
    ad = c_net.NNPytorchAD(ours)
    x = torch.randn(4, d)
    f, df, d2f = ad(x, do_gradient=True, do_Hessian=True)
    assert not x.requires_grad and x.grad is None
    assert f.shape == (4, 1) and df.shape == (4, d, 1) and d2f.shape == (4, d, d, 1)
    fn, dfn, d2fn = ad(x.numpy(), do_gradient=True)
    assert isinstance(dfn, np.ndarray) and d2fn is None
    np.testing.assert_allclose(dfn, df.detach().numpy(), rtol=1e-13)
    with torch.no_grad():
        out = ad(x, do_gradient=True, do_Hessian=True)
    assert not any(t.requires_grad for t in out)
    assert (ad.dim_input(), ad.dim_output()) == (d, 1)


def test_nnpytorchhessian_needs_scalar_output():
    _, ours, d = _pair("resnet_mlp")
    with pytest.raises(ValueError, match="scalar output"):
        c_net.NNPytorchHessian(ours)(torch.randn(2, d), do_Hessian=True)
    _, scalar, d = _pair("fully_connected")
    out = c_net.NNPytorchHessian(scalar)(torch.randn(3, d), do_gradient=True, do_Hessian=True)
    exact = scalar(torch.randn(3, d), do_gradient=True, do_Hessian=True)
    assert [t.shape for t in out] == [t.shape for t in exact]


def test_nnpytorchad_wraps_core_networks_too():
    import hessquik_core as hq

    core = hq.NN(hq.SingleLayer(3, 4, act="tanh", seed=0), hq.SingleLayer(4, 2, act="softplus", seed=1))
    core.to("torch", requires_grad=True)
    x = torch.randn(5, 3)
    f, df, d2f = c_net.NNPytorchAD(core)(x, do_gradient=True, do_Hessian=True)
    res = core(x, gradient=True, hessian=True)
    assert (
        _rel(df.detach(), res.gradient.detach()) < 1e-12 and _rel(d2f.detach(), res.hessian.detach()) < 1e-12
    )
    d2f.sum().backward()
    assert all(p.grad is not None for p in core.parameters())


# --------------------------------------------------------------------------
# hessQuik's device test: float32 parameters moved with .to(device)
# --------------------------------------------------------------------------


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("kind", KINDS)
def test_float32_on_the_local_device(kind):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(0)
        ours, d = _build(c_act, c_lay, c_net, kind)
        x = torch.randn(11, d)
        twin, _ = _build(c_act, c_lay, c_net, kind)
    finally:
        torch.set_default_dtype(old)
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    twin.load_state_dict(ours.state_dict())
    twin.double()
    dev = _device()
    ours.to(dev)
    assert all(p.device.type == dev for p in ours.parameters())
    with torch.no_grad():
        truth = twin(x.double(), do_gradient=True, do_Hessian=True)
    for fm in (True, False):
        out = ours(x.to(dev), do_gradient=True, do_Hessian=True, forward_mode=fm)
        for a, t in zip(out, truth):
            assert a.dtype == torch.float32 and a.device.type == dev
            # float32 eps = 1.2e-7; a few layers of round-off
            assert float((a.detach().double().cpu() - t).abs().max()) < 1e-4 * max(1.0, float(t.abs().max()))

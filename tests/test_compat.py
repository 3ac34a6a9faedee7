"""hessquik_core.compat: hessQuik's names and calling convention.

The README examples of hessQuik are run twice, once with hessQuik 0.0.6 and
once with only the import lines changed to ``hessquik_core.compat``; the
networks get the same weights (copied through ``state_dict``, whose keys are
the same) and every returned array is compared.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hessQuik")

import hessQuik.activations as hq_act  # noqa: E402
import hessQuik.layers as hq_lay  # noqa: E402
import hessQuik.networks as hq_net  # noqa: E402

import hessquik_core as hq  # noqa: E402
import hessquik_core.compat.activations as c_act  # noqa: E402
import hessquik_core.compat.layers as c_lay  # noqa: E402
import hessquik_core.compat.networks as c_net  # noqa: E402

# --------------------------------------------------------------------------
# hessQuik's README (Getting Started + "Support for Laplacians and Directional
# Derivatives"), one code block per entry. Only the import block differs.
# The README's network block contains
#     lay.resnetLayer(widths[0], h=1.0, act.softplusActivation())
# which is a SyntaxError in Python (positional argument after a keyword
# argument) for hessQuik too; it is run with ``act=`` (test below checks
# that the original line indeed cannot run).
# --------------------------------------------------------------------------

IMPORTS_HESSQUIK = """
import hessQuik.activations as act
import hessQuik.layers as lay
import hessQuik.networks as net
"""
IMPORTS_COMPAT = """
import hessquik_core.compat.activations as act
import hessquik_core.compat.layers as lay
import hessquik_core.compat.networks as net
"""
README_NETWORK = """
d = 10 # dimension of the input features
widths = [32, 64] # hidden channel dimensions
f = net.NN(lay.singleLayer(d, widths[0], act.antiTanhActivation()),
           lay.resnetLayer(widths[0], h=1.0, act=act.softplusActivation()),
           lay.singleLayer(widths[0], widths[1], act.quadraticActivation())
           )
"""
README_BLOCKS = {
    "hessian": """
nex = 20 # number of examples
x = torch.randn(nex, d)
fx, dfx, d2fx = f(x, do_gradient=True, do_Hessian=True)
out = (fx, dfx, d2fx)
""",
    "laplacian": """
fx, dfx, lapfd2x = f(x, do_gradient=True, do_Laplacian=True)
out = (fx, dfx, lapfd2x)
""",
    "directional_forward": """
k = 3  # number of directions
v = torch.randn(k, d)
fx, vdfx, vd2fxv = f(x, do_gradient=True, do_Hessian=True, v=v, forward_mode=True)
out = (fx, vdfx, vd2fxv)
""",
    "directional_backward": """
m = widths[-1]  # dimension of output features
v = torch.randn(m, k)
fx, dfxv, d2fxv = f(x, do_gradient=True, do_Hessian=True, v=v, forward_mode=False)
out = (fx, dfxv, d2fxv)
""",
}


@pytest.fixture(autouse=True)
def _float64_default():
    """hessQuik's checks run with torch's default dtype set to float64; compat
    parameters follow the default dtype as hessQuik's do."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


README_SHAPES = {
    "hessian": [(20, 64), (20, 10, 64), (20, 10, 10, 64)],
    "laplacian": [(20, 64), (20, 10, 64), (20, 1, 64)],
    "directional_forward": [(20, 64), (20, 3, 64), (20, 3, 3, 64)],
    "directional_backward": [(20, 64), (20, 10, 3), (20, 10, 10, 3)],
}


def _copy_weights(dst, src) -> None:
    """hessQuik module -> compat network (same state_dict keys)."""
    dst.load_state_dict({k: v.detach().cpu().numpy() for k, v in src.state_dict().items()})


def _run_readme(imports: str, default_dtype, reference_f=None) -> dict:
    """Execute the README blocks in a fresh namespace; torch's RNG is reseeded
    before each block so both runs draw the same x and v."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        ns: dict = {"torch": torch}
        exec(imports, ns)
        torch.manual_seed(0)
        exec(README_NETWORK, ns)
        if reference_f is not None:
            _copy_weights(ns["f"], reference_f)
        outs = {}
        for i, (name, block) in enumerate(README_BLOCKS.items()):
            torch.manual_seed(100 + i)
            exec(block, ns)
            outs[name] = tuple(t.detach().clone() for t in ns["out"])
        return ns, outs
    finally:
        torch.set_default_dtype(old)


def _rel(a, b) -> float:
    a = a.detach().double() if isinstance(a, torch.Tensor) else torch.as_tensor(np.array(a, np.float64))
    b = b.detach().double() if isinstance(b, torch.Tensor) else torch.as_tensor(np.array(b, np.float64))
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def test_readme_line_with_positional_after_keyword_is_a_syntax_error():
    bad = "lay.resnetLayer(widths[0], h=1.0, act.softplusActivation())"
    with pytest.raises(SyntaxError):
        compile(bad, "<README>", "eval")


def test_readme_examples_float64_match_hessquik():
    """Same weights, same inputs: every output of every README block agrees
    with hessQuik to float64 round-off."""
    ns_ref, ref = _run_readme(IMPORTS_HESSQUIK, torch.float64)
    ns_c, ours = _run_readme(IMPORTS_COMPAT, torch.float64, reference_f=ns_ref["f"])
    assert (
        isinstance(ns_c["f"], torch.nn.Sequential)
        and type(ns_c["f"]).__module__ == "hessquik_core.compat.networks"
    )
    for name in README_BLOCKS:
        for a, b, shape in zip(ours[name], ref[name], README_SHAPES[name]):
            assert isinstance(a, torch.Tensor) and a.dtype == torch.float64
            assert tuple(a.shape) == shape == tuple(b.shape)
            # |values| ~ 1e2..1e3 here; two correct float64 implementations differ by
            # a few hundred ulps of the largest entry at most
            assert _rel(a, b) < 1e-12, name


def test_readme_examples_float32_as_written():
    """The README as written runs in float32 (torch's default). The float64
    run with the same weights is the truth; ours must be as accurate as
    hessQuik's own float32 result (within a small factor) and at float32
    round-off in absolute terms."""
    ns_ref32, ref32 = _run_readme(IMPORTS_HESSQUIK, torch.float32)
    _, ours32 = _run_readme(IMPORTS_COMPAT, torch.float32, reference_f=ns_ref32["f"])
    # truth: hessQuik's float32 weights in float64, same (float32) x and v upcast
    f64 = c_net.NN(
        c_lay.singleLayer(10, 32, c_act.antiTanhActivation()),
        c_lay.resnetLayer(32, h=1.0, act=c_act.softplusActivation()),
        c_lay.singleLayer(32, 64, c_act.quadraticActivation()),
    )
    _copy_weights(f64, ns_ref32["f"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(100)
        x = torch.randn(20, 10).double()
        torch.manual_seed(102)
        v_fwd = torch.randn(3, 10).double()
        torch.manual_seed(103)
        v_bwd = torch.randn(64, 3).double()
    finally:
        torch.set_default_dtype(old)
    truth = {
        "hessian": f64(x, do_gradient=True, do_Hessian=True),
        "laplacian": f64(x, do_gradient=True, do_Laplacian=True),
        "directional_forward": f64(x, do_gradient=True, do_Hessian=True, v=v_fwd, forward_mode=True),
        "directional_backward": f64(x, do_gradient=True, do_Hessian=True, v=v_bwd, forward_mode=False),
    }
    for name in README_BLOCKS:
        for a, b, t in zip(ours32[name], ref32[name], truth[name]):
            assert a.dtype == torch.float32
            err_ours, err_ref = _rel(a, t), _rel(b, t)
            # float32 eps = 6e-8; measured errors of both libraries are 1e-8 .. 3.5e-7
            # (relative to max(1, max|truth|)), i.e. up to ~6 eps
            assert err_ours < 3e-6, (name, err_ours)
            assert err_ours < 4 * err_ref + 3e-7, (name, err_ours, err_ref)


@pytest.mark.parametrize(
    "cls",
    [
        "antiTanhActivation",
        "identityActivation",
        "quadraticActivation",
        "sigmoidActivation",
        "softplusActivation",
        "tanhActivation",
    ],
)
def test_activation_docstring_examples(cls):
    """``sigma, dsigma, d2sigma = act_func(x, do_gradient=True, do_Hessian=True)``."""
    x = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    ref = getattr(hq_act, cls)()
    ours = getattr(c_act, cls)()
    for kw in ({}, {"do_gradient": True}, {"do_Hessian": True}, {"do_gradient": True, "do_Hessian": True}):
        r = ref(x, **kw)
        o = ours(x, **kw)
        for a, b in zip(o, r):
            assert (a is None) == (b is None), kw
            if a is not None:
                assert _rel(a, b) < 1e-14
    # positional flags, as hessQuik's forward(x, do_gradient, do_Hessian) allows
    assert all(t is not None for t in ours(x, True, True))


def test_softplus_parameters_match_hessquik():
    """Equal to hessQuik for beta*x >= -threshold. Below, hessQuik sets the
    derivatives to 0 although its value, torch's softplus, is smooth there;
    compat returns the true derivatives (checked against autograd)."""
    beta, thr = 2.5, 4.0
    x = torch.linspace(-30, 30, 201, dtype=torch.float64)[:, None]
    ref = hq_act.softplusActivation(beta=beta, threshold=thr)(x, do_gradient=True, do_Hessian=True)
    ours = c_act.softplusActivation(beta=beta, threshold=thr)(x, do_gradient=True, do_Hessian=True)
    agree = (beta * x >= -thr)[:, 0]
    for a, b in zip(ours, ref):
        assert _rel(a[agree], b[agree]) < 1e-14
    xl = x[~agree].clone().requires_grad_(True)
    s = torch.nn.functional.softplus(xl, beta=beta, threshold=thr)
    (ds,) = torch.autograd.grad(s.sum(), xl, create_graph=True)
    (d2s,) = torch.autograd.grad(ds.sum(), xl)
    for a, b in zip(ours[1:], (ds.detach(), d2s.detach())):
        assert float(((a[~agree] - b) / b).abs().max()) < 1e-12
    assert float(ref[1][~agree].abs().max()) == 0.0  # hessQuik's truncation


LAYER_EXAMPLES = {
    # docstring examples of hessQuik's layers: constructor args, input width
    "singleLayer": ((4, 7), 4),
    "resnetLayer": ((4,), 4),
    "ICNNLayer": ((4, None, 7), 4),
    "quadraticLayer": ((4, 2), 4),
    "quadraticICNNLayer": ((4, None, 2), 4),
}


@pytest.mark.parametrize("name", sorted(LAYER_EXAMPLES))
def test_layer_docstring_examples(name):
    """``f = lay.<layer>(...); fx, dfdx, d2fd2x = f(x, do_gradient=True, do_Hessian=True)``."""
    args, d = LAYER_EXAMPLES[name]
    torch.manual_seed(0)
    ref = getattr(hq_lay, name)(*args, dtype=torch.float64)
    if name == "resnetLayer":
        ref = hq_lay.resnetLayer(4, h=0.25, dtype=torch.float64)
        ours = c_lay.resnetLayer(4, h=0.25)
    else:
        ours = getattr(c_lay, name)(*args)
    _copy_weights(ours, ref)
    x = torch.randn(10, d, dtype=torch.float64)
    r = ref(x, do_gradient=True, do_Hessian=True)
    o = ours(x, do_gradient=True, do_Hessian=True)
    # (hessQuik's quadraticICNNLayer(4, None, 2).dim_input() raises: None + int)
    assert ours.dim_input() == d and ours.dim_output() == r[0].shape[1]
    m = r[0].shape[1]
    # the shapes hessQuik's docstrings print; hessQuik's quadraticLayer itself returns its
    # (constant) Hessian without the batch axis, (d, d, 1), so it is broadcast for the comparison
    for a, b, shape in zip(o, r, [(10, m), (10, d, m), (10, d, d, m)]):
        assert tuple(a.shape) == shape
        assert _rel(a, b.expand(shape)) < 1e-13


def _pair(kind):
    """(hessQuik net, compat net with the same weights, d)."""
    torch.manual_seed(1)
    if kind == "fullyConnectedNN":
        ref = hq_net.fullyConnectedNN([3, 6, 5, 4], act=hq_act.tanhActivation(), dtype=torch.float64)
        ours = c_net.fullyConnectedNN([3, 6, 5, 4], act=c_act.tanhActivation())
        d = 3
    elif kind == "fullyConnectedNN_scalar":
        ref = hq_net.fullyConnectedNN([5, 6, 1], dtype=torch.float64)
        ours = c_net.fullyConnectedNN([5, 6, 1])
        d = 5
    elif kind == "resnetNN":
        ref = hq_net.resnetNN(4, 3, h=0.5, act=hq_act.sigmoidActivation(), dtype=torch.float64)
        ours = c_net.resnetNN(4, 3, h=0.5, act=c_act.sigmoidActivation())
        d = 4
    elif kind == "ICNN":
        ref = hq_net.ICNN(3, [None, 5, 2], act=hq_act.softplusActivation(), dtype=torch.float64)
        ours = c_net.ICNN(3, [None, 5, 2])
        d = 3
    elif kind == "ICNN_quadratic":
        ref = hq_net.NN(
            hq_net.ICNN(3, [None, 5, 2], dtype=torch.float64),
            hq_lay.quadraticICNNLayer(3, 2, 2, dtype=torch.float64),
        )
        ours = c_net.NN(c_net.ICNN(3, [None, 5, 2]), c_lay.quadraticICNNLayer(3, 2, 2))
        d = 3
    elif kind == "nested":
        ref = hq_net.NN(
            hq_lay.singleLayer(4, 6, act=hq_act.tanhActivation(), dtype=torch.float64),
            hq_net.resnetNN(6, 2, h=1.0, act=hq_act.tanhActivation(), dtype=torch.float64),
            hq_lay.quadraticLayer(6, 3, dtype=torch.float64),
        )
        ours = c_net.NN(
            c_lay.singleLayer(4, 6, act=c_act.tanhActivation()),
            c_net.resnetNN(6, 2, h=1.0, act=c_act.tanhActivation()),
            c_lay.quadraticLayer(6, 3),
        )
        d = 4
    elif kind == "nested_single_resnet":
        ref = hq_net.NN(
            hq_lay.singleLayer(3, 5, act=hq_act.antiTanhActivation(), dtype=torch.float64),
            hq_net.NN(
                hq_net.resnetNN(5, 2, h=0.5, dtype=torch.float64),
                hq_lay.singleLayer(5, 2, act=hq_act.tanhActivation(), dtype=torch.float64),
            ),
        )
        ours = c_net.NN(
            c_lay.singleLayer(3, 5, act=c_act.antiTanhActivation()),
            c_net.NN(c_net.resnetNN(5, 2, h=0.5), c_lay.singleLayer(5, 2, act=c_act.tanhActivation())),
        )
        d = 3
    else:
        raise AssertionError(kind)
    _copy_weights(ours, ref)
    return ref, ours, d


KINDS = [
    "fullyConnectedNN",
    "fullyConnectedNN_scalar",
    "resnetNN",
    "ICNN",
    "ICNN_quadratic",
    "nested",
    "nested_single_resnet",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("forward_mode", [True, False, "omitted"])
def test_networks_match_hessquik(kind, forward_mode):
    ref, ours, d = _pair(kind)
    x = torch.randn(7, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kw = {} if forward_mode == "omitted" else {"forward_mode": forward_mode}
    r = ref(x, do_gradient=True, do_Hessian=True, **kw)
    o = ours(x, do_gradient=True, do_Hessian=True, **kw)
    for a, b in zip(o, r):
        assert a.shape == b.shape
        assert _rel(a, b) < 1e-12
    value_only = ours(x)
    assert value_only[1] is None and value_only[2] is None
    assert _rel(value_only[0], r[0]) < 1e-13


@pytest.mark.parametrize(
    "kind", ["fullyConnectedNN", "fullyConnectedNN_scalar", "resnetNN", "nested_single_resnet"]
)
def test_laplacian_and_directions_match_hessquik(kind):
    """hessQuik supports Laplacians and directions only for single/resnet layers
    (README note), so only those are compared here."""
    ref, ours, d = _pair(kind)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, d, dtype=torch.float64, generator=g)
    m = ours.dim_output()
    calls = [
        dict(do_gradient=True, do_Laplacian=True),
        dict(do_gradient=True, do_Laplacian=True, v=torch.randn(2, d, dtype=torch.float64, generator=g)),
        dict(
            do_gradient=True,
            do_Hessian=True,
            forward_mode=True,
            v=torch.randn(3, d, dtype=torch.float64, generator=g),
        ),
        dict(
            do_gradient=True,
            do_Hessian=True,
            forward_mode=False,
            v=torch.randn(m, 2, dtype=torch.float64, generator=g),
        ),
        dict(do_gradient=True, forward_mode=False),
    ]
    for kw in calls:
        r = ref(x, **kw)
        o = ours(x, **kw)
        for a, b in zip(o, r):
            assert (a is None) == (b is None), kw
            if a is not None:
                assert a.shape == b.shape, kw
                assert _rel(a, b) < 1e-12, kw


def test_hessian_without_gradient_flag_returns_both():
    """hessQuik fails on do_Hessian without do_gradient in forward mode; compat
    returns the gradient whenever a derivative is requested (as hessQuik's
    backward mode does)."""
    ref, ours, d = _pair("fullyConnectedNN")
    x = torch.randn(5, d, dtype=torch.float64)
    r = ref(x, do_gradient=True, do_Hessian=True)
    o = ours(x, do_Hessian=True)
    assert _rel(o[1], r[1]) < 1e-12 and _rel(o[2], r[2]) < 1e-12


def test_compat_accepts_every_array_library(lib):
    """hessQuik's call with NumPy / torch / array-api-strict (/ CuPy) inputs:
    results in x's library, equal to hessQuik's on torch."""
    ref, ours, d = _pair("nested_single_resnet")
    xn = np.random.default_rng(5).standard_normal((6, d))
    xt = torch.from_numpy(xn)
    x = lib.asarray(xn)
    v = lib.asarray(np.random.default_rng(6).standard_normal((2, d)))
    for kw in (
        dict(do_gradient=True, do_Hessian=True),
        dict(do_gradient=True, do_Laplacian=True),
        dict(do_gradient=True, do_Hessian=True, forward_mode=True, v=v),
    ):
        kt = dict(kw)
        if "v" in kw:
            kt["v"] = torch.from_numpy(np.array(lib.to_numpy(kw["v"])))
        r = ref(xt, **kt)
        o = ours(x, **kw)
        for a, b in zip(o, r):
            lib.check(a, tuple(b.shape), like=x)
            assert _rel(lib.to_numpy(a), b) < 1e-12


def test_core_keywords_still_give_a_result():
    _, ours, d = _pair("resnetNN")
    x = np.random.default_rng(0).standard_normal((3, d))
    res = ours(x, gradient=True, hessian=True, mode="backward")  # hessQuik rule for d = m
    assert isinstance(res, hq.Result)
    f, df, d2f = ours(x, do_gradient=True, do_Hessian=True)
    np.testing.assert_array_equal(res.hessian, d2f)
    with pytest.raises(TypeError, match="cannot mix"):
        ours(x, do_gradient=True, hessian=True)
    # layers too (their hessQuik default is forward mode)
    layer = c_lay.singleLayer(d, 2, act=c_act.tanhActivation())
    res = layer(x, gradient=True, hessian=True, mode="forward")
    assert isinstance(res, hq.Result)
    np.testing.assert_array_equal(res.hessian, layer(x, do_gradient=True, do_Hessian=True)[2])
    with pytest.raises(TypeError):
        ours(x, not_a_keyword=True)


def test_bad_calls_raise_clear_errors():
    _, ours, d = _pair("fullyConnectedNN")
    x = torch.randn(3, d, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(k, 3\)"):
        ours(x, do_gradient=True, forward_mode=True, v=torch.randn(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(4, k\)"):
        ours(x, do_gradient=True, forward_mode=False, v=torch.randn(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="forward_mode=None"):
        ours(x, do_gradient=True, forward_mode=None)
    with pytest.raises(ValueError, match="dudx"):
        ours(x, do_gradient=True, dudx=torch.zeros(3, 3, 3))
    with pytest.raises(TypeError, match="do_Hessian"):
        ours(x, do_Hessian="yes")


def test_compat_classes_are_torch_modules():
    f = c_net.NN(c_lay.singleLayer(3, 4, c_act.tanhActivation()), c_lay.resnetLayer(4, h=0.5))
    assert isinstance(f, torch.nn.Sequential) and isinstance(f[0], torch.nn.Module) and len(f) == 2
    assert isinstance(f[0], c_lay.hessQuikLayer) and isinstance(f[0].act, hq.Tanh)
    assert [k for k, _ in f.named_parameters()] == ["0.K", "0.b", "1.layer.K", "1.layer.b"]
    assert all(isinstance(p, torch.nn.Parameter) and p.dtype == torch.float64 for p in f.parameters())
    # hessQuik defaults: identity in single/resnet layers, softplus in networks and ICNN layers
    assert type(f[1].layer.act).__name__ == "identityActivation"
    assert type(c_net.resnetNN(3, 1)[0].layer.act).__name__ == "softplusActivation"
    assert type(c_lay.ICNNLayer(3, None, 2).act).__name__ == "softplusActivation"
    # a core activation or name is accepted and turned into the compat class
    assert type(c_lay.singleLayer(2, 2, act="sigmoid").act).__name__ == "sigmoidActivation"
    # hessquik-core layers can be mixed into a compat network (converted, weights copied)
    core = hq.SingleLayer(3, 4, act="tanh", seed=0)
    g = c_net.NN(core, c_lay.singleLayer(4, 2))
    np.testing.assert_array_equal(g[0].K.detach().numpy(), core.K)
    assert len(g(np.zeros((2, 3)), do_gradient=True)) == 3
    with pytest.raises(TypeError, match="block 1"):
        c_net.NN(c_lay.singleLayer(3, 4), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="incompatible composition for block 0 to block 1"):
        c_net.NN(c_lay.singleLayer(3, 4), c_lay.singleLayer(5, 2))
    # hessQuik's attributes
    icnn = c_lay.ICNNLayer(3, None, 5)
    assert (icnn.input_dim, icnn.in_features, icnn.out_features) == (3, None, 5)
    assert (icnn.dim_input(), icnn.dim_output()) == (3, 8)


def test_parameters_follow_torch_default_dtype_and_dtype_argument():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        assert c_lay.singleLayer(3, 4).K.dtype == torch.float32
        assert c_net.resnetNN(3, 2)[1].layer.b.dtype == torch.float32
    finally:
        torch.set_default_dtype(old)
    assert c_lay.quadraticLayer(3, 2).A.dtype == torch.float64
    assert c_lay.singleLayer(3, 4, dtype=torch.float32).K.dtype == torch.float32
    assert c_net.fullyConnectedNN([2, 3], dtype="float32")[0].K.dtype == torch.float32
    assert c_net.ICNN(2, [None, 3], dtype=np.float32)[0].K.dtype == torch.float32
    with pytest.raises(TypeError, match="floating dtype"):
        c_lay.singleLayer(3, 4, dtype=torch.int64)


def test_initial_weights_follow_torch_manual_seed():
    torch.manual_seed(7)
    a = c_net.fullyConnectedNN([3, 5, 2])
    torch.manual_seed(7)
    b = c_net.fullyConnectedNN([3, 5, 2])
    c = c_net.fullyConnectedNN([3, 5, 2])
    for (k, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(p, q), k
        assert not torch.equal(p, r), k


def test_torch_style_to():
    _, ours, d = _pair("resnetNN")
    x = torch.randn(4, d, dtype=torch.float64)
    before = ours(x, do_gradient=True, do_Hessian=True)
    assert ours.to("cpu") is ours
    assert all(p.device.type == "cpu" for p in ours.parameters())
    ours.to(torch.float32)
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    # the call runs in x's dtype; the weights' float32 round trip changes results at float32 level
    mid = ours(x, do_gradient=True, do_Hessian=True)
    assert all(a.dtype == torch.float64 and _rel(a, b) < 1e-5 for a, b in zip(mid, before))
    ours.double()
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    ours.to("torch", requires_grad=False)  # hessquik-core's spelling
    assert not any(p.requires_grad for p in ours.parameters())
    ours.requires_grad_(True)
    with pytest.raises(TypeError, match="to_core"):
        ours.to("numpy")
    after = ours(x, do_gradient=True, do_Hessian=True)
    for a, b in zip(after, before):
        assert _rel(a, b) < 1e-5


def test_train_eval_modes_and_state_dict_round_trip():
    ref, ours, d = _pair("nested")
    assert ours.training and all(m.training for m in ours.modules())
    ours.eval()
    assert not any(m.training for m in ours.modules())
    ours.train()
    sd = ours.state_dict()
    assert list(sd) == list(ref.state_dict())
    twin = _pair("nested")[1]
    for p in twin.parameters():
        torch.nn.init.zeros_(p)
    twin.load_state_dict(sd)  # torch tensors, as torch.save / torch.load would give them
    x = torch.randn(3, d, dtype=torch.float64)
    for a, b in zip(twin(x, do_gradient=True, do_Hessian=True), ours(x, do_gradient=True, do_Hessian=True)):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="Missing key"):
        twin.load_state_dict({k: v for k, v in sd.items() if k != "0.K"})
    # deep copies (and pickles) carry only torch state; the copy computes the same
    clone = copy.deepcopy(ours)
    for a, b in zip(clone(x, do_gradient=True, do_Hessian=True), ours(x, do_gradient=True, do_Hessian=True)):
        assert torch.equal(a, b)
    assert all(p is not q for p, q in zip(clone.parameters(), ours.parameters()))


def test_edited_or_replaced_parameters_are_used():
    _, ours, d = _pair("fullyConnectedNN")
    x = torch.randn(3, d, dtype=torch.float64)
    f0 = ours(x)[0]
    with torch.no_grad():
        ours[0].K.mul_(2.0)  # in place
    f1 = ours(x)[0]
    ours[0].K.data = ours[0].K.data / 2.0  # .data assignment (hessQuik's insert_data)
    assert torch.allclose(ours(x)[0], f0) and not torch.allclose(f1, f0)
    ours[1].b = torch.nn.Parameter(torch.zeros_like(ours[1].b))  # replaced
    ours.append(c_lay.singleLayer(4, 2))  # nn.Sequential editing rebuilds the core twin
    assert ours(x)[0].shape == (3, 2)


def test_reference_ad_wrappers_agree():
    ref, ours, d = _pair("fullyConnectedNN_scalar")
    x = torch.randn(5, d, dtype=torch.float64)
    exact = ours(x, do_gradient=True, do_Hessian=True)
    for wrapper in (c_net.NNPytorchAD(ours), c_net.NNPytorchHessian(ours)):
        ad = wrapper(x, do_gradient=True, do_Hessian=True)
        for a, b in zip(ad, exact):
            assert a.shape == b.shape
            assert _rel(a, b) < 1e-12
    with pytest.raises(ValueError, match="scalar output"):
        c_net.NNPytorchHessian(_pair("resnetNN")[1])(x[:, :4], do_Hessian=True)
    ad_np = c_net.NNPytorchAD(ours)(x.numpy(), do_gradient=True)
    assert isinstance(ad_np[1], np.ndarray) and ad_np[2] is None


def test_save_load_through_to_core_and_from_core(tmp_path):
    _, ours, d = _pair("ICNN_quadratic")
    p = tmp_path / "compat.safetensors"
    core = ours.to_core()
    assert isinstance(core, hq.NN) and all(isinstance(w, np.ndarray) for w in core.parameters())
    hq.save(core, p)
    back = c_net.from_core(hq.load(p))
    assert type(back) is c_net.NN and type(back[1]) is c_lay.quadraticICNNLayer
    x = torch.randn(4, d, dtype=torch.float64)
    for a, b in zip(back(x, do_gradient=True, do_Hessian=True), ours(x, do_gradient=True, do_Hessian=True)):
        assert torch.equal(a, b)
    assert os.listdir(tmp_path) == ["compat.safetensors"]


@pytest.mark.parametrize("name", ["fullyConnectedNN", "resnetNN", "ICNN_quadratic", "nested"])
def test_save_converts_a_compat_module_itself(tmp_path, name):
    """Issue 24.11: hq.save of a compat module saves the network its to_core() returns
    (it used to raise a TypeError asking the user to call to_core())."""
    _, ours, d = _pair(name)
    p = tmp_path / "compat.safetensors"
    hq.save(ours, p)
    back = hq.load(p)
    assert isinstance(back, (hq.NN, hq.layers.Layer)) and not isinstance(back, torch.nn.Module)
    core = ours.to_core()
    assert back.state_dict().keys() == core.state_dict().keys()
    for k, v in core.state_dict().items():
        assert back.state_dict()[k].dtype == v.dtype
        np.testing.assert_array_equal(back.state_dict()[k], v)
    x = torch.randn(5, d, dtype=torch.float64)
    want = ours(x, do_gradient=True, do_Hessian=True)
    got = c_net.from_core(back)(x, do_gradient=True, do_Hessian=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert os.listdir(tmp_path) == ["compat.safetensors"]


def test_save_converts_a_compat_layer_itself(tmp_path):
    torch.manual_seed(0)
    lay = c_lay.resnetLayer(4, h=0.5, act=c_act.tanhActivation()).double()
    p = tmp_path / "layer.safetensors"
    hq.save(lay, p)
    back = hq.load(p)
    assert type(back) is hq.ResnetLayer and back.state_dict()["layer.K"].dtype == np.float64
    x = torch.randn(3, 4, dtype=torch.float64)
    want = lay(x, do_gradient=True)
    got = c_net.from_core(back)(x, do_gradient=True)
    for a, b in zip(got[:2], want[:2]):
        assert torch.equal(a, b)


def test_migration_guide_examples_run():
    """Every ```python block of docs/migration.md runs, in order, in one namespace."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "migration.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    ns: dict = {"__name__": "migration_md"}
    torch.manual_seed(0)
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/migration.md block {i}", "exec"), ns)
    assert isinstance(ns["g"], hq.NN) and isinstance(ns["g_torch"].parameters()[0], torch.Tensor)
    assert ns["grad_ok"] and ns["hess_ok"] and ns["weights_ok"]
    assert isinstance(ns["f3"], c_net.NN) and torch.equal(ns["f3"][0].K, ns["f2"][0].K)
    assert [type(b).__name__ for b in hq.from_torch(ns["model"])] == [
        "SingleLayer",
        "ResnetLayer",
        "SingleLayer",
    ]

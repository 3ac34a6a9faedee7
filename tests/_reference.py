"""Independent references for the test suite.

* :func:`torch_forward` rebuilds the value of a hessquik_core network in
  plain torch from each layer's *math* (and its parameters), never calling
  hessquik_core's evaluation code; ``torch.func`` then differentiates it.
* :func:`truth` returns float64 value/gradient/Hessian from ``torch.func``
  (``vmap(jacrev)`` and ``vmap(hessian)``).
* :func:`random_network` draws architectures of every layer type.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

import hessquik_core as hq

ACTIVATIONS = ("antitanh", "identity", "quadratic", "sigmoid", "softplus", "tanh", "sin", "silu")


# --------------------------------------------------------------------------
# torch reference forward, from the math of each layer
# --------------------------------------------------------------------------


@contextlib.contextmanager
def torch_jit_script_quiet():
    """Silence torch's notice about its *own* use of ``torch.jit.script`` (it
    loads the forward-AD decompositions that way the first time jacfwd /
    hessian runs): a DeprecationWarning up to torch 2.13, a FutureWarning in
    2.14. Nothing else is ignored."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=category)
        yield


#: torch formulas of activations that tests define themselves (name -> z -> σ(z))
TORCH_TWINS: dict = {}


def torch_act(act, z):
    """σ(z) written directly in torch (autograd gives σ', σ'')."""
    import torch
    import torch.nn.functional as F

    name = act.name
    if name == "antitanh":  # log(cosh z), overflow-free
        return torch.abs(z) + torch.log1p(torch.exp(-2.0 * torch.abs(z)))
    if name == "identity":
        return z
    if name == "quadratic":
        return 0.5 * z**2
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "softplus":
        return F.softplus(z, beta=act.beta, threshold=act.threshold)
    if name == "tanh":
        return torch.tanh(z)
    if name == "sin":
        return torch.sin(z)
    if name == "silu":
        return F.silu(z)
    if name == "gelu":
        return F.gelu(z, approximate=act.approximate)
    if name == "mish":
        return F.mish(z)
    if name == "gaussian":
        return torch.exp(-(z * z))
    if name == "elu":
        return F.elu(z, alpha=act.alpha)
    if name == "celu":
        return F.celu(z, alpha=act.alpha)
    if name == "selu":
        return F.selu(z)
    if name == "softsign":
        return F.softsign(z)
    if name == "logsigmoid":
        return F.logsigmoid(z)
    if name in TORCH_TWINS:  # a test's own activation, with its torch formula
        return TORCH_TWINS[name](z)
    raise AssertionError(name)


def _t(a):
    import torch

    return torch.tensor(np.array(hq.backends._generic.to_numpy(a), dtype=np.float64))


def torch_layer(layer, u):
    """Value of one hessquik_core layer on a torch batch ``u`` (n, p)."""
    import torch
    import torch.nn.functional as F

    if isinstance(layer, hq.SingleLayer):
        z = u @ _t(layer.K)
        if layer.b is not None:
            z = z + _t(layer.b)
        return torch_act(layer.act, z)
    if isinstance(layer, hq.ResnetLayer):
        return u + layer.h * torch_layer(layer.layer, u)
    if isinstance(layer, hq.ICNNLayer):
        s = layer.n_in
        x = u[:, s:]
        z = x @ _t(layer.K)
        if layer.L is not None:
            z = z + u[:, :s] @ F.softplus(_t(layer.L))
        if layer.b is not None:
            z = z + _t(layer.b)
        return torch.cat([torch_act(layer.act, z), x], dim=1)
    if isinstance(layer, hq.QuadraticICNNLayer):
        s = layer.n_in
        x = u[:, s:]
        xa = x @ _t(layer.A).T
        f = x @ _t(layer.v) + 0.5 * torch.sum(xa * xa, dim=1) + _t(layer.mu)
        if layer.w is not None:
            f = f + u[:, :s] @ F.softplus(_t(layer.w))
        return f[:, None]
    if isinstance(layer, hq.QuadraticLayer):
        A = _t(layer.A)
        f = u @ _t(layer.v) + 0.5 * torch.sum((u @ A.T) ** 2, dim=1) + _t(layer.mu)
        return f[:, None]
    if isinstance(layer, hq.NN):
        for blk in layer:
            u = torch_layer(blk, u)
        return u
    raise AssertionError(type(layer))


def truth(net, x: np.ndarray, hessian: bool = True):
    """float64 ``(value (n,m), gradient (n,d,m), hessian (n,d,d,m))`` by torch.func."""
    import torch
    from torch.func import hessian as t_hessian
    from torch.func import jacrev, vmap

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))

    def f1(xi):  # one example: (d,) -> (m,)
        return torch_layer(net, xi[None, :])[0]

    with torch.no_grad():
        val = torch_layer(net, xt).numpy()
    jac = vmap(jacrev(f1))(xt)  # (n, m, d)
    grad = jac.permute(0, 2, 1).detach().numpy()
    hess = None
    if hessian:
        with torch_jit_script_quiet():
            H = vmap(t_hessian(f1))(xt)  # (n, m, d, d)
        hess = H.permute(0, 2, 3, 1).detach().numpy()
    return val, grad, hess


# --------------------------------------------------------------------------
# random architectures
# --------------------------------------------------------------------------

LAYER_KINDS = ("single", "resnet", "icnn", "quadratic", "quadratic_icnn", "nested")


def make_network(kind: str, d: int, act, seed: int, width: int = 4, m: int = 3):
    """A small network whose main ingredient is ``kind``.

    ``single``: d -> width -> m; ``resnet``: lift, two residual layers;
    ``icnn``: three ICNN layers (first without L, later with L);
    ``quadratic``: single layer then QuadraticLayer; ``quadratic_icnn``: ICNN
    then QuadraticICNNLayer; ``nested``: NN(NN(single, resnet), NN(resnet, single)).
    """
    rng = np.random.default_rng(seed)
    if kind == "single":
        return hq.NN(hq.SingleLayer(d, width, act=act, seed=rng), hq.SingleLayer(width, m, act=act, seed=rng))
    if kind == "resnet":
        return hq.NN(
            hq.SingleLayer(d, width, act=act, seed=rng),
            hq.ResnetLayer(width, h=0.5, act=act, seed=rng),
            hq.ResnetLayer(width, h=0.5, act=act, seed=rng),
        )
    if kind == "icnn":
        return hq.NN(
            hq.ICNNLayer(d, None, width, act=act, seed=rng),
            hq.ICNNLayer(d, width, 3, act=act, seed=rng),
            hq.ICNNLayer(d, 3, 2, act=act, seed=rng),
        )
    if kind == "quadratic":
        return hq.NN(hq.SingleLayer(d, width, act=act, seed=rng), hq.QuadraticLayer(width, 2, seed=rng))
    if kind == "quadratic_icnn":
        return hq.NN(
            hq.ICNNLayer(d, None, width, act=act, seed=rng),
            hq.ICNNLayer(d, width, 3, act=act, seed=rng),
            hq.QuadraticICNNLayer(d, 3, 2, seed=rng),
        )
    if kind == "nested":
        return hq.NN(
            hq.NN(
                hq.SingleLayer(d, width, act=act, seed=rng), hq.ResnetLayer(width, h=0.3, act=act, seed=rng)
            ),
            hq.NN(
                hq.ResnetLayer(width, h=0.7, act=act, seed=rng), hq.SingleLayer(width, m, act=act, seed=rng)
            ),
        )
    raise AssertionError(kind)


def build(kind: str, act, seed: int = 0):
    """A layer (or small network) featuring ``kind``; returns (net, d)."""
    rng = np.random.default_rng(seed)
    if kind == "SingleLayer":
        return hq.SingleLayer(3, 4, act=act, seed=rng), 3
    if kind == "ResnetLayer":
        return hq.ResnetLayer(3, h=0.7, act=act, seed=rng), 3
    if kind == "ICNNLayer-first":
        return hq.ICNNLayer(3, None, 4, act=act, seed=rng), 3
    if kind == "ICNNLayer-later":
        return hq.ICNNLayer(3, 2, 4, act=act, seed=rng), 5
    if kind == "ICNN-chain":
        return make_network("icnn", 3, act, seed), 3
    if kind == "QuadraticLayer":
        return hq.NN(hq.SingleLayer(3, 4, act=act, seed=rng), hq.QuadraticLayer(4, 2, seed=rng)), 3
    if kind == "QuadraticICNNLayer":
        return hq.NN(hq.ICNNLayer(3, None, 4, act=act, seed=rng), hq.QuadraticICNNLayer(3, 4, 2, seed=rng)), 3
    if kind == "nested-NN":
        return make_network("nested", 3, act, seed), 3
    raise AssertionError(kind)


KINDS = (
    "SingleLayer",
    "ResnetLayer",
    "ICNNLayer-first",
    "ICNNLayer-later",
    "ICNN-chain",
    "QuadraticLayer",
    "QuadraticICNNLayer",
    "nested-NN",
)


def rel_err(a, b) -> float:
    """max |a - b| / max(1, max |b|)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


# --------------------------------------------------------------------------
# hessQuik 0.0.6 networks of every kind
# --------------------------------------------------------------------------

HQ_NETWORKS = (
    "fullyConnectedNN",
    "resnetNN",
    "ICNN",
    "NN-single-resnet-quadratic",
    "NN-ICNN-quadraticICNN",
    "nested-NN",
)
HQ_ACTIVATIONS = ("antiTanh", "identity", "quadratic", "sigmoid", "softplus", "tanh")


def hessquik_activation(name: str):
    import hessQuik.activations as ha

    return {
        "antiTanh": ha.antiTanhActivation,
        "identity": ha.identityActivation,
        "quadratic": ha.quadraticActivation,
        "sigmoid": ha.sigmoidActivation,
        "softplus": lambda: ha.softplusActivation(beta=1.5, threshold=15.0),
        "tanh": ha.tanhActivation,
    }[name]()


def hessquik_network(kind: str, d: int, act: str, seed: int, dtype=None):
    """A random hessQuik network (torch's global RNG seeded with ``seed``)."""
    import hessQuik.layers as hl
    import hessQuik.networks as hn
    import torch

    torch.manual_seed(seed)
    a = lambda: hessquik_activation(act)  # noqa: E731
    if kind == "fullyConnectedNN":
        net = hn.fullyConnectedNN([d, 5, 4, 3], act=a())
    elif kind == "resnetNN":
        net = hn.resnetNN(d, 3, h=0.5, act=a())
    elif kind == "ICNN":
        net = hn.ICNN(d, [None, 5, 3], act=a())
    elif kind == "NN-single-resnet-quadratic":
        net = hn.NN(hl.singleLayer(d, 4, act=a()), hn.resnetNN(4, 2, h=0.3, act=a()), hl.quadraticLayer(4, 3))
    elif kind == "NN-ICNN-quadraticICNN":
        net = hn.NN(hn.ICNN(d, [None, 4, 3], act=a()), hl.quadraticICNNLayer(d, 3, 2))
    elif kind == "nested-NN":
        net = hn.NN(
            hn.NN(hl.singleLayer(d, 4, act=a()), hl.resnetLayer(4, h=0.6, act=a())),
            hn.NN(hn.fullyConnectedNN([4, 3], act=a()), hn.NN(hl.singleLayer(3, 2, act=a()))),
        )
    else:
        raise AssertionError(kind)
    return net.to(dtype or torch.float64)


def representative_only_on_jax(lib, kind: str, representative: str = "QuadraticICNNLayer") -> None:
    """JAX compiles every operation afresh for each new shape (seconds per
    network); on JAX only one representative network (ICNN layers first and
    later plus a quadratic ICNN head) is run, the other kinds on the other libraries."""
    import pytest

    if lib.name == "jax" and kind != representative:
        pytest.skip(f"jax: kind {kind!r} covered on the other libraries; jax runs {representative!r}")

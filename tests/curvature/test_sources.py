"""Every public curvature function and operator reads its data from a *source* (issue 21 item 4).

One declaration per function: called with dask ``x, y`` it takes exactly the
arguments of the in-memory call and returns the same numbers (lazily). The
tests enumerate ``hessquik_core.curvature``'s public functions by signature
(``net, x, y, loss, ...``), so a new one fails here until it is covered, and
try every keyword argument of each: with dask data an argument either acts as
in memory (same result) or is refused with a ``ValueError`` naming it; none is
accepted and ignored.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

import hessquik_core as hq  # noqa: E402
from hessquik_core import curvature as cv  # noqa: E402
from hessquik_core.curvature.sources import SOURCE_METHODS, _Problem, curvature_problem  # noqa: E402

RTOL = 1e-12
CHUNKS = (64, 64, 100, 73)  # uneven: the last chunk short
N = sum(CHUNKS)


@pytest.fixture(autouse=True)
def _threads():
    with dask.config.set(scheduler="threads"):
        yield


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _net():
    return hq.NN(
        hq.SingleLayer(3, 5, act="tanh", seed=4),
        hq.ResnetNN(5, depth=1, h=0.5, act="softplus", seed=6),
        hq.SingleLayer(5, 3, act="identity", seed=5),
    )


def _data(kind="cross", seed=0, labels=None):
    xn = np.random.default_rng(seed).standard_normal((N, 3))
    rng = np.random.default_rng(seed + 1)
    if labels is not None:
        yn = labels
    else:
        yn = rng.integers(0, 3, N) if kind == "cross" else rng.standard_normal((N, 3))
    x = da.from_array(xn, chunks=(CHUNKS, 3))
    y = da.from_array(yn, chunks=(CHUNKS,) + yn.shape[1:])
    return x, y, xn, yn


def _public_data_functions():
    """``hessquik_core.curvature``'s public functions whose data are ``x, y``."""
    out = {}
    for name in cv.__all__:
        f = getattr(cv, name)
        if inspect.isfunction(f) and list(inspect.signature(f).parameters)[:4] == ["net", "x", "y", "loss"]:
            out[name] = f
    return out


P = cv.parameter_layout(_net()).size
V = np.random.default_rng(7).standard_normal((P, 2))

#: the positional arguments after ``loss``
POSITIONAL = {
    "hvp": (V,),
    "ggn_vp": (V,),
    "empirical_fisher_vp": (V,),
    "empirical_fisher_eigenpairs": (2,),
    "hessian_eigenpairs": (2,),
}

#: keyword -> values tried (each alone, the others at their defaults)
KEYWORDS = {
    # valid values, and invalid ones (refused in memory, so refused for dask data too)
    "batch_size": (16, 1000, 0),
    "block_size": (5, -1),
    "memory_budget": (1e5, float("nan")),
    "backend": ("numpy", "generic", "nope"),
    "params": (("0.K", "2.b"), "all", ("nope",)),
    "cache_forward": (False, True),
    "progress": (False, True),
    "symmetric": (False,),
    "method": ("exact", "gram", "dense", "lanczos", "approx_randomized", "approx_incremental", "auto"),
    "oversample": (3,),
    "n_iter": (4,),
    "seed": (3,),
    "warn_rtol": (1.0,),
    "which": ("LM", "SA"),
    "tol": (1e-14,),
    "maxiter": (200,),
    "ncv": (12,),
    "return_info": (True,),
    # kfac_operator / ekfac_operator ("mc" draws need a seed to compare: tests/curvature/test_kfac.py)
    "fisher_type": ("empirical", "nope"),
    "mc_samples": (0, 2),
}

#: arguments that mean nothing for Dask-held data: refused, with the message naming them
REFUSED = {
    ("cache_forward", True): "cache_forward=True has no meaning for dask data",
    ("progress", True): "progress=True",
    ("method", "gram"): "for dask data empirical_fisher_eigenpairs supports method in",
    ("method", "approx_incremental"): "for dask data empirical_fisher_eigenpairs supports method in",
}
#: ``progress=True`` reports client-side iterations (meaningful, accepted) for the eigen-solvers
PROGRESS_ON_CLIENT = {"empirical_fisher_eigenpairs", "hessian_eigenpairs"}


def _materialise(r):
    """Lazy dask arrays computed; an operator as its dense matrix and a product; tuples element-wise."""
    if isinstance(r, tuple):
        return tuple(_materialise(a) for a in r)
    if isinstance(r, dict):
        return {k: _materialise(v) for k, v in r.items() if k in ("method",)}
    if isinstance(r, cv.LinearOperatorBase):
        return (np.asarray(r @ V[:, 0]), np.asarray(r.to_dense()))
    if hasattr(r, "compute"):
        return np.asarray(r.compute())
    return np.asarray(r) if hasattr(r, "shape") else r


def _same(a, b, name):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        # eigenvectors: equal up to sign, as columns of the same eigenproblem
        if name.endswith("eigenpairs"):
            assert rel(a[0], b[0]) <= 1e-10, (a[0], b[0])
            assert np.allclose(np.abs(a[1].T @ b[1]), np.eye(a[1].shape[1]), atol=1e-6)
            assert a[2:] == b[2:] if not isinstance(a[-1], dict) else a[-1] == b[-1]
            return
        for u, v in zip(a, b):
            _same(u, v, name)
        return
    if isinstance(a, dict):
        assert a == b
        return
    assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
    assert rel(a, b) <= RTOL, (name, rel(a, b))


FUNCTIONS = _public_data_functions()


def test_every_public_data_function_is_covered():
    assert set(FUNCTIONS) >= {"hvp", "hessian", "value_and_gradient", "empirical_fisher_eigenpairs"}
    positional = {
        n
        for n, f in FUNCTIONS.items()
        for k, p in list(inspect.signature(f).parameters.items())[4:]
        if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
    }
    assert positional <= set(POSITIONAL), (
        f"give positional arguments in POSITIONAL for {positional - set(POSITIONAL)}"
    )
    unknown = {
        (n, k)
        for n, f in FUNCTIONS.items()
        for k, p in inspect.signature(f).parameters.items()
        if p.kind == inspect.Parameter.KEYWORD_ONLY and k not in KEYWORDS
    }
    assert not unknown, f"add values for these keyword arguments to KEYWORDS: {sorted(unknown)}"


def _cases():
    for name, f in sorted(FUNCTIONS.items()):
        yield pytest.param(name, None, None, id=f"{name}-defaults")
        for k, p in inspect.signature(f).parameters.items():
            if p.kind != inspect.Parameter.KEYWORD_ONLY:
                continue
            for value in KEYWORDS.get(k, ()):
                yield pytest.param(name, k, value, id=f"{name}-{k}={value!r}")


@pytest.mark.parametrize(("name", "key", "value"), list(_cases()))
def test_dask_call_equals_in_memory_call_or_refuses(name, key, value):
    f = FUNCTIONS[name]
    net, loss = _net(), cv.CrossEntropyLoss()
    x, y, xn, yn = _data()
    args = POSITIONAL.get(name, ())
    kw = {} if key is None else {key: value}
    if key == "method" and name == "empirical_fisher_eigenpairs" and value == "auto":
        pytest.skip("not a method of empirical_fisher_eigenpairs")
    if key == "method" and name == "hessian_eigenpairs" and value not in ("auto", "lanczos", "dense"):
        pytest.skip("not a method of hessian_eigenpairs")
    if key in ("oversample", "n_iter") and name == "empirical_fisher_eigenpairs":
        kw.update(
            method="approx_randomized", warn_rtol=1.0
        )  # the arguments of that route (loose: no warning)
    if key == "progress" and value and name not in PROGRESS_ON_CLIENT:
        with pytest.raises(ValueError, match=REFUSED[("progress", True)]):
            _materialise(f(net, x, y, loss, *args, **kw))
        return
    if (key, value) in REFUSED and not (key == "progress" and name in PROGRESS_ON_CLIENT):
        with pytest.raises(ValueError, match=REFUSED[(key, value)]):
            _materialise(f(net, x, y, loss, *args, **kw))
        return
    try:
        ref = _materialise(f(net, xn, yn, loss, *args, **kw))
    except (ValueError, TypeError) as err:  # refused in memory: refused alike for dask data
        with pytest.raises(type(err)):
            _materialise(f(net, x, y, loss, *args, **kw))
        return
    got = _materialise(f(net, x, y, loss, *args, **kw))
    _same(got, ref, name)


def test_results_are_lazy_and_chunked_like_x():
    net, loss = _net(), cv.MSELoss()
    x, y, xn, yn = _data("mse")
    v, g = cv.value_and_gradient(net, x, y, loss)
    assert isinstance(v, da.Array) and isinstance(g, da.Array) and v.shape == () and g.shape == (P,)
    A = cv.per_example_gradients(net, x, y, loss)
    assert A.chunks == (CHUNKS, (P,))
    for f in (cv.hessian, cv.ggn, cv.empirical_fisher):
        assert isinstance(f(net, x, y, loss), da.Array)
    assert isinstance(cv.empirical_fisher_trace(net, x, y, loss), da.Array)
    op = cv.hessian_operator(net, x, y, loss)
    assert isinstance(op @ V, np.ndarray) and isinstance(op @ da.from_array(V), da.Array)


@pytest.mark.parametrize(
    "loss",
    [
        cv.CrossEntropyLoss(ignore_index=1),
        cv.CrossEntropyLoss(weight=np.array([0.5, 2.0, 1.0])),
        cv.CrossEntropyLoss(weight=np.array([0.5, 2.0, 1.0]), ignore_index=0, label_smoothing=0.1),
    ],
    ids=["ignore_index", "class_weights", "weights+ignore+smoothing"],
)
def test_target_dependent_mean_is_the_whole_datasets(loss):
    """``"mean"`` divides by the counted weights of *all* targets: each chunk adds its own."""
    labels = np.random.default_rng(3).integers(0, 3, N)
    labels[:64] = 1  # the first chunk: every label 1 (all ignored for ignore_index=1)
    net = _net()
    x, y, xn, yn = _data(labels=labels)
    got = dask.compute(*cv.value_and_gradient(net, x, y, loss), cv.hvp(net, x, y, loss, V))
    ref = (*cv.value_and_gradient(net, xn, yn, loss), cv.hvp(net, xn, yn, loss, V))
    for a, b in zip(got, ref):
        assert rel(a, b) <= RTOL


def test_every_target_ignored_is_refused_when_computed():
    loss = cv.CrossEntropyLoss(ignore_index=1)
    x, y, *_ = _data(labels=np.ones(N, dtype=np.int64))
    g = cv.gradient(_net(), x, y, loss)  # lazy: the targets are read only when computed
    with pytest.raises(ValueError, match="every target is ignored"):
        g.compute()


def test_both_sources_offer_the_source_methods():
    net = _net()
    x, y, xn, yn = _data()
    for pb in (
        curvature_problem(net, xn, yn, "cross_entropy"),
        curvature_problem(net, x, y, "cross_entropy"),
    ):
        missing = [m for m in SOURCE_METHODS if not hasattr(pb, m)]
        assert not missing, (type(pb).__name__, missing)
    assert isinstance(curvature_problem(net, xn, yn, "cross_entropy"), _Problem)


def test_a_partial_in_memory_source_sums_without_weights():
    """``partial=True`` (what each Dask task runs) returns plain sums: ``N`` times the mean."""
    net = _net()
    _, _, xn, yn = _data()
    whole = _Problem(net, xn, yn, "cross_entropy")
    part = _Problem(net, xn, yn, "cross_entropy", partial=True)
    for a, b in zip(part.value_and_gradient(), whole.value_and_gradient()):
        assert rel(a, N * b) <= RTOL
    assert rel(part.product("fisher", V), N * whole.product("fisher", V)) <= RTOL


def test_network_call_refuses_progress_for_dask():
    x, *_ = _data()
    with pytest.raises(ValueError, match="progress=True"):
        _net()(x, gradient=True, progress=True)
    assert _net()(x, gradient=True, progress=False).gradient.shape == (N, 3, 3)


def test_mixed_inputs_and_operator_to_dense_options():
    net, loss = _net(), cv.MSELoss()
    x, y, xn, yn = _data("mse")
    with pytest.raises(TypeError, match="both be dask arrays"):
        cv.hvp(net, x, yn, loss, V)
    op = cv.ggn_operator(net, x, y, loss, block_size=4)
    with pytest.raises(ValueError, match="block_size: for dask data give it when building the operator"):
        op.to_dense(block_size=3)
    ref = cv.ggn_operator(net, xn, yn, loss).to_dense()
    assert rel(op.to_dense(symmetric=False), ref) <= RTOL


def test_options_reach_every_chunk(monkeypatch):
    """``batch_size``, ``backend``, ``params`` reach each chunk's in-memory source; ``block_size``
    and ``memory_budget`` its products (recorded in the tasks, threaded scheduler)."""
    import hessquik_core.dask._curvature as dc

    seen = []

    class Recording(_Problem):
        def __init__(self, *args, **kwargs):
            seen.append(args[4:8])  # batch_size, backend, cache_forward, params
            super().__init__(*args, **kwargs)

        def product(self, kind, v, block_size=None, memory_budget=None):
            seen.append((kind, block_size, memory_budget))
            return super().product(kind, v, block_size, memory_budget)

    monkeypatch.setattr(dc, "_Problem", Recording)
    net, loss = _net(), cv.MSELoss()
    x, y, xn, yn = _data("mse")
    keys = ["0.K", "2.b"]
    sel = cv.parameter_layout(net, keys).size
    ref = cv.ggn_vp(net, xn, yn, loss, V[:sel], batch_size=16, backend="generic", params=keys)
    seen.clear()
    Vs = V[:sel]
    got = cv.ggn_vp(
        net, x, y, loss, Vs, batch_size=16, block_size=1, backend="generic", params=keys
    ).compute()
    assert rel(got, ref) <= RTOL
    chunks = [s for s in seen if len(s) == 4]
    # the client's one-example probe, then one source per chunk, all with the call's options
    assert all(c[:3] == (16, "generic", None) and list(c[3]) == keys for c in chunks)
    assert len(chunks) == 1 + len(CHUNKS)
    assert [s for s in seen if len(s) == 3] == [("ggn", 1, None)] * len(CHUNKS)


def test_torch_model_and_torch_parameter_names_over_dask_chunks():
    """A torch model (converted once on the client, frozen parameters excluded) and ``params`` in
    torch's names: each chunk's source differentiates the same selection as the in-memory call."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    model[0].bias.requires_grad_(False)
    x, y, xn, yn = _data()
    loss = torch.nn.CrossEntropyLoss()
    g, H = dask.compute(cv.gradient(model, x, y, loss), cv.hessian(model, x, y, loss, params=["2.weight"]))
    g0, H0 = cv.gradient(model, xn, yn, loss), cv.hessian(model, xn, yn, loss, params=["2.weight"])
    assert g.shape == g0.shape == (3 * 5 + 5 * 3 + 3,) and H.shape == H0.shape == (15, 15)
    assert rel(g, g0) <= RTOL and rel(H, H0) <= RTOL

"""Decisions that depend on the array library are asked of the backend's capabilities
(issue 11: nothing outside ``hessquik_core/backends/`` tests a backend's name)."""

from __future__ import annotations

import ast
import pathlib
import re

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core.backends import backend_for, device_backend, get_backend, model_backend, owner_of

ROOT = pathlib.Path(hq.__file__).parent


def test_numpy_capabilities():
    be = get_backend("numpy")
    a = np.zeros(3)
    assert be.host_resident("cpu") and be.writable(a) and be.cacheable(a) and be.dask_chunks
    assert not be.is_model(a) and be.as_device("cuda") is None


def test_generic_capabilities_follow_the_library():
    xps = pytest.importorskip("array_api_strict")
    a = xps.zeros(3)
    be = backend_for(xps)
    assert be.name == "generic" and not be.mutable
    assert be.writable(a)  # array-api-strict arrays can be written: results assembled in place
    assert be.host_resident(a.device) and be.cacheable(a) and not be.dask_chunks


def test_generic_on_jax_refuses_in_place_and_tracers():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    be = backend_for(jnp)
    assert not be.writable(jnp.zeros(3))
    seen = []
    jax.jit(lambda t: seen.append(be.cacheable(t)) or t)(jnp.zeros(2))
    assert seen == [False]  # a tracer must not outlive its trace
    assert be.cacheable(jnp.zeros(2))


def test_torch_capabilities():
    torch = pytest.importorskip("torch")
    be = get_backend("torch")
    assert be.host_resident(torch.device("cpu")) and not be.host_resident("cuda:0")
    assert not be.cacheable(torch.zeros(2, requires_grad=True)) and be.cacheable(torch.zeros(2))
    lin = torch.nn.Linear(2, 2)
    assert model_backend(lin) is be and model_backend(np.zeros(2)) is None
    assert owner_of(torch.zeros(1)) is be


def test_device_backend():
    torch = pytest.importorskip("torch")
    be, dev = device_backend("cpu")
    assert be.name == "torch" and dev == torch.device("cpu")
    assert device_backend(torch.device("cpu"))[1] == torch.device("cpu")
    assert device_backend("banana") is None and device_backend(np.float32) is None
    with pytest.raises(ValueError, match="invalid device"):
        device_backend("cuda:x")
    net = hq.FullyConnectedNN([2, 3, 1], seed=0).to("cpu")
    assert all(isinstance(p, torch.Tensor) for p in net.parameters())


def test_auto_lanczos_method_asks_the_backend():
    from hessquik_core.curvature.spectra import _auto_method

    net = hq.FullyConnectedNN([2, 3, 1], seed=0)
    op = hq.curvature.hessian_operator(net, np.ones((4, 2)), np.ones((4, 1)), "mse")
    assert _auto_method(op) == "scipy"


#: files that may name libraries: the backends themselves; the torch-only hessQuik layer
#: (compat); the Dask hook recognises Dask arrays (Dask wraps chunks of a backend's
#: library, it is no backend); training's torch helpers (torch_parameters, fit) are
#: torch API by name. Which modules may *import* what is tests/test_import_graph.py.
_ALLOWED = ("backends/", "compat/_torch.py", "_dask_hook.py", "training.py")
_LIBRARIES = {"numpy", "torch", "cupy", "jax", "generic", "dask"}


def _library_name_tests(tree) -> list[tuple[int, str]]:
    """Decisions by a library's name or by autograd duck typing, found in the syntax tree:
    a comparison with a library name, ``get_backend("<literal>")``, ``is_<lib>_array`` /
    ``is_<lib>_namespace``, ``__module__`` tests, and reading ``requires_grad`` off an
    array (``getattr(a, "requires_grad")``, ``a.requires_grad``) instead of asking the
    backend (``ops.requires_grad(a)``)."""
    hits = []
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare):
            for c in (n.left, *n.comparators):
                if isinstance(c, ast.Constant) and c.value in _LIBRARIES:
                    hits.append((n.lineno, ast.unparse(n)))
                if isinstance(c, (ast.Tuple, ast.List, ast.Set)) and any(
                    isinstance(e, ast.Constant) and e.value in _LIBRARIES for e in c.elts
                ):
                    hits.append((n.lineno, ast.unparse(n)))
            if "__module__" in ast.unparse(n):
                hits.append((n.lineno, ast.unparse(n)))
        elif isinstance(n, ast.Call):
            fn = ast.unparse(n.func)
            arg0 = n.args[0] if n.args else None
            literal = isinstance(arg0, (ast.Constant, ast.IfExp, ast.JoinedStr))
            if fn.split(".")[-1] == "get_backend" and literal:
                hits.append((n.lineno, ast.unparse(n)))
            if re.fullmatch(r"(\w+\.)*is_(jax|cupy|torch|numpy|dask)_(array|namespace)", fn):
                hits.append((n.lineno, ast.unparse(n)))
            if fn in ("getattr", "hasattr") and len(n.args) > 1:
                if isinstance(n.args[1], ast.Constant) and n.args[1].value == "requires_grad":
                    hits.append((n.lineno, ast.unparse(n)))
        elif isinstance(n, ast.Attribute) and n.attr == "requires_grad" and id(n) not in calls:
            hits.append((n.lineno, ast.unparse(n)))
    return hits


def test_nothing_outside_backends_tests_a_backend_name():
    hits = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(_ALLOWED):
            continue
        hits += [f"{rel}:{i}: {text}" for i, text in _library_name_tests(ast.parse(path.read_text()))]
    assert not hits, "library-name tests outside backends/ (use a backend capability):\n" + "\n".join(hits)


def test_the_name_guard_can_fail():
    """The guard finds what issue 21 listed (explain's library choice by name, the
    ``requires_grad`` duck typing), so it cannot pass for the wrong reason."""
    samples = [
        'be = get_backend("torch" if training else "numpy")',
        'ok = getattr(M, "requires_grad", False)',
        "ok = out.requires_grad",
        'ok = be.name == "generic"',
        "ok = aac.is_torch_array(x)",
        'ok = type(a).__module__.split(".")[0] == "jax"',
    ]
    for code in samples:
        assert _library_name_tests(ast.parse(code)), code
    assert not _library_name_tests(ast.parse("ok = ops.requires_grad(M) and get_backend(name)"))


def test_dtype_strings_are_memoised_per_library():
    """The parameter-cache key spells the dtype through a memo keyed by dtype
    object and type: NumPy's and array-api-strict's float64 hash alike but must
    neither share an entry nor be compared (array-api-strict warns on that)."""
    from hessquik_core._array import _dtype_str

    xps = pytest.importorskip("array_api_strict")
    for dt in (np.dtype("float64"), xps.float64, np.dtype("float32"), xps.float32):
        assert _dtype_str(dt) == str(dt)
        assert _dtype_str(dt) == str(dt)  # the memoised answer
    assert _dtype_str(xps.float64) != _dtype_str(np.dtype("float64"))


def test_identity_seed_of_each_backend():
    """``Backend.eye`` (the tangent seed) is the identity in the call's library."""
    torch = pytest.importorskip("torch")
    for be, lib in ((get_backend("numpy"), np), (get_backend("torch"), torch)):
        e = be.eye(3, dtype=lib.float32, device=None)
        assert type(e) is type(lib.zeros(1)) and e.dtype == lib.float32
        np.testing.assert_array_equal(np.asarray(e), np.eye(3))
    xps = pytest.importorskip("array_api_strict")
    e = backend_for(xps).eye(2, dtype=xps.float64, device=None)
    np.testing.assert_array_equal(np.asarray(e), np.eye(2))


def test_namespace_and_device_are_asked_of_the_backend(monkeypatch):
    """The call resolution asks the owning backend for the namespace and the device of
    ``x`` (issue 21 item 4: a library array-api-compat does not know is one backend file)."""
    be = get_backend("numpy")
    asked = []
    real_ns, real_dev = type(be).namespace, type(be).device_of

    def namespace(self, a):
        asked.append("namespace")
        return real_ns(self, a)

    def device_of(self, a):
        asked.append("device")
        return real_dev(self, a)

    monkeypatch.setattr(type(be), "namespace", namespace)
    monkeypatch.setattr(type(be), "device_of", device_of)
    net = hq.FullyConnectedNN([2, 3, 1], seed=0)
    assert net(np.zeros((4, 2)), gradient=True).gradient.shape == (4, 2, 1)
    assert "namespace" in asked and "device" in asked

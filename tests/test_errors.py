"""Bad input: every error names what was expected and what was given;
non-finite inputs propagate per example; empty batches work; caller arrays
are never modified."""

from __future__ import annotations

import numpy as np
import pytest
from _reference import KINDS, build, representative_only_on_jax

import hessquik_core as hq

ALL_FLAGS = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)


@pytest.fixture
def net():
    return hq.FullyConnectedNN([3, 4, 2], act="tanh", seed=0)  # d = 3, m = 2


@pytest.fixture
def x(rng):
    return rng.normal(size=(5, 3))


# --------------------------------------------------------------------------
# x
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (2, 3, 1), ()])
def test_wrong_ndim(net, shape, lib):
    # (1, 1, 3) is accepted since issue 24: extra leading batch axes (tests/test_inputs.py)
    xx = lib.asarray(np.zeros(shape))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\) \(or \(\.\.\., 3\).*got shape .*ndim"):
        net(xx)


@pytest.mark.parametrize("cols", [1, 2, 4])
def test_wrong_feature_count(net, cols, lib):
    with pytest.raises(ValueError, match=rf"3 features .*got shape \(2, {cols}\)"):
        net(lib.asarray(np.zeros((2, cols))), gradient=True)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128])
def test_non_real_floating_dtype(net, dtype):
    with pytest.raises(
        TypeError, match=r"real floating dtype \(float32 or float64\), got " + np.dtype(dtype).name
    ):
        net(np.zeros((2, 3), dtype=dtype))


def test_integer_dtype_every_lib(net, lib):
    xi = lib.asarray(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="real floating dtype.*got.*int64"):
        net(xi, hessian=True)


@pytest.mark.parametrize(
    "bad, name",
    [
        # nested lists and tuples of numbers are accepted since issue 24 (tests/test_inputs.py)
        (object(), "object"),
        (1.5, "float"),
        ("abc", "str"),
        (None, "NoneType"),
    ],
)
def test_unsupported_array_type(net, bad, name):
    with pytest.raises(TypeError, match=rf"x must be a NumPy, CuPy or torch array .*got {name}"):
        net(bad)


# --------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["jax", "NumPy", "cuda", 1])
def test_unknown_backend(net, x, backend):
    with pytest.raises(
        ValueError, match=rf"unknown backend {backend!r}.*expected one of.*'numpy'.*'generic'"
    ):
        net(x, backend=backend)


@pytest.mark.parametrize("mode", ["fwd", "reverse", None, True])
def test_unknown_mode(net, x, mode):
    with pytest.raises(
        ValueError, match=rf"mode must be one of .*'auto', 'forward', 'backward'.*got {mode!r}"
    ):
        net(x, mode=mode)


@pytest.mark.parametrize("flag", ["gradient", "hessian", "laplacian", "hessian_diagonal"])
@pytest.mark.parametrize("value", [1, 0, None, "yes", 1.0])
def test_non_bool_flags(net, x, flag, value):
    with pytest.raises(TypeError, match=rf"{flag} must be True or False, got {value!r}"):
        net(x, **{flag: value})


# --------------------------------------------------------------------------
# directions
# --------------------------------------------------------------------------


def test_directions_wrong_shape_auto(net, x):
    # d = 3, m = 2: (4, k) fits neither side
    with pytest.raises(
        ValueError, match=r"shape \(3, k\) \(forward\) or \(2, k\) \(backward\), got \(4, 2\)"
    ):
        net(x, gradient=True, directions=np.ones((4, 2)))


@pytest.mark.parametrize("mode, rows, need", [("forward", 2, 3), ("backward", 3, 2)])
def test_directions_wrong_shape_for_mode(net, x, mode, rows, need):
    with pytest.raises(ValueError, match=rf"mode='{mode}' must have shape \({need}, k\), got \({rows}, 2\)"):
        net(x, gradient=True, directions=np.ones((rows, 2)), mode=mode)


@pytest.mark.parametrize("shape", [(3,), (3, 2, 1), ()])
def test_directions_not_a_matrix(net, x, shape):
    with pytest.raises(
        ValueError,
        match=rf"directions must be a matrix .*got shape {tuple(shape)}".replace("(", r"\(").replace(
            ")", r"\)"
        ),
    ):
        net(x, gradient=True, directions=np.ones(shape))


def test_directions_bad_dtype_and_type(net, x):
    with pytest.raises(TypeError, match="directions must have a real floating dtype, got int64"):
        net(x, gradient=True, directions=np.ones((3, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="directions dtype float32 differs from x dtype float64"):
        net(x, gradient=True, directions=np.ones((3, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="directions must be a NumPy, CuPy or torch array.*got str"):
        net(x, gradient=True, directions="abc")


def test_directions_as_nested_list_accepted(net, x):
    V = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    a = net(x, gradient=True, directions=V, mode="forward")
    b = net(x, gradient=True, directions=np.array(V), mode="forward")
    np.testing.assert_array_equal(a.gradient, b.gradient)


# --------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------


def test_nn_dimension_mismatch_names_both_blocks():
    a, b = hq.SingleLayer(3, 4), hq.SingleLayer(5, 2)
    with pytest.raises(ValueError) as info:
        hq.NN(a, b)
    msg = str(info.value)
    assert "block 0" in msg and "block 1" in msg
    assert "4 outputs" in msg and "5 inputs" in msg
    assert repr(a) in msg and repr(b) in msg
    # nested: the mismatch is reported at the level where it happens
    with pytest.raises(ValueError, match=r"block 1 .*ICNNLayer\(3, 5, 2.*8 inputs"):
        hq.NN(hq.NN(hq.ICNNLayer(3, None, 4)), hq.ICNNLayer(3, 5, 2))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: hq.SingleLayer(0, 3), "in_features must be an integer >= 1, got 0"),
        (lambda: hq.SingleLayer(3, 2.5), "out_features must be an integer >= 1, got 2.5"),
        (lambda: hq.ResnetLayer(3, h=float("inf")), "h must be a finite real number, got inf"),
        (lambda: hq.ResnetNN(3, 0), "depth must be an integer >= 1, got 0"),
        (lambda: hq.QuadraticLayer(3, 0), "rank must be an integer >= 1, got 0"),
        (lambda: hq.FullyConnectedNN([3]), r"at least two entries .*got \[3\]"),
        (lambda: hq.NN(), "at least one layer"),
        (lambda: hq.SingleLayer(3, 2, act="relu"), "unknown activation 'relu': expected one of"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_nn_rejects_non_layers():
    with pytest.raises(TypeError, match="block 1 must be a Layer or NN, got int"):
        hq.NN(hq.SingleLayer(3, 3), 3)


# --------------------------------------------------------------------------
# non-finite input, empty batches, no mutation
# --------------------------------------------------------------------------


# NumPy itself warns about inf - inf inside the matrix products; that is
# NumPy's report, not a failure: the call must complete and keep examples apart
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["nested-NN", "ICNN-chain", "QuadraticICNNLayer"])
def test_non_finite_input_propagates_per_example(kind, bad, lib, rng):
    representative_only_on_jax(lib, kind)
    net, d = build(kind, "softplus", seed=1)
    x_np = rng.normal(size=(3, d))
    clean = net(np.delete(x_np, 2, axis=0), **ALL_FLAGS)
    x_np[2, 0] = bad
    x = lib.asarray(x_np)
    for mode in ("forward", "backward"):
        for flags in (ALL_FLAGS, dict(laplacian=True, hessian_diagonal=True)):
            r = net(x, mode=mode, backend=lib.backend, **flags)
            for name in ("value", "gradient", "hessian", "laplacian", "hessian_diagonal"):
                got = getattr(r, name)
                if name not in flags and name != "value":
                    assert got is None
                    continue
                got = lib.to_numpy(got)
                # the other examples are untouched by the bad one
                np.testing.assert_allclose(
                    np.delete(got, 2, axis=0), getattr(clean, name), rtol=1e-12, atol=1e-14
                )
            if np.isnan(bad):
                assert np.any(np.isnan(lib.to_numpy(r.value)[2]))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind, lib):
    representative_only_on_jax(lib, kind)
    net, d = build(kind, "tanh")
    m = net.out_features
    x = lib.asarray(np.zeros((0, d)))
    for mode in ("forward", "backward"):
        r = net(x, mode=mode, backend=lib.backend, **ALL_FLAGS)
        lib.check(r.value, (0, m), like=x)
        lib.check(r.gradient, (0, d, m), like=x)
        lib.check(r.hessian, (0, d, d, m), like=x)
        lib.check(r.laplacian, (0, m), like=x)
        lib.check(r.hessian_diagonal, (0, d, m), like=x)
        r = net(x, mode=mode, backend=lib.backend, laplacian=True, hessian_diagonal=True)
        lib.check(r.laplacian, (0, m), like=x)
        lib.check(r.hessian_diagonal, (0, d, m), like=x)
    V = lib.asarray(np.ones((d, 2)))
    r = net(x, gradient=True, hessian=True, directions=V, mode="forward", backend=lib.backend)
    lib.check(r.gradient, (0, 2, m), like=x)
    lib.check(r.hessian, (0, 2, 2, m), like=x)
    W = lib.asarray(np.ones((m, 2)))
    r = net(x, gradient=True, hessian=True, directions=W, mode="backward", backend=lib.backend)
    lib.check(r.gradient, (0, d, 2), like=x)
    lib.check(r.hessian, (0, d, d, 2), like=x)
    lib.check(net(x, backend=lib.backend).value, (0, m), like=x)


@pytest.mark.parametrize("forced", [None, "numpy", "torch", "generic"])
@pytest.mark.parametrize("kind", ["nested-NN", "QuadraticICNNLayer", "QuadraticLayer"])
def test_caller_arrays_never_modified(kind, forced, lib, rng):
    representative_only_on_jax(lib, kind)
    net, d = build(kind, "sigmoid")
    m = net.out_features
    if forced == "torch":
        pytest.importorskip("torch")
    x_np = rng.normal(size=(3, d))
    x = lib.asarray(x_np)
    V = lib.asarray(rng.normal(size=(d, 2)))
    W = lib.asarray(rng.normal(size=(m, 2)))
    V0, W0 = lib.to_numpy(V).copy(), lib.to_numpy(W).copy()
    for mode, D in (("forward", V), ("backward", W), ("forward", None), ("backward", None)):
        net(x, mode=mode, directions=D, backend=forced, **ALL_FLAGS)
        net(x, mode=mode, directions=D, backend=forced, laplacian=True, hessian_diagonal=True)
    np.testing.assert_array_equal(lib.to_numpy(x), x_np)
    np.testing.assert_array_equal(lib.to_numpy(V), V0)
    np.testing.assert_array_equal(lib.to_numpy(W), W0)

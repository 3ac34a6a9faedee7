"""The standard-only erf/erfc (hessquik_core._special) and every backend's
``erf``/``erfc`` against math.erf / math.erfc."""

from __future__ import annotations

import math

import array_api_compat as aac
import numpy as np
import pytest

from hessquik_core import _special
from hessquik_core.backends import get_backend


def _grid():
    return np.concatenate(
        [
            np.linspace(-30.0, 30.0, 120001),
            np.geomspace(1e-300, 1.0, 2001),
            -np.geomspace(1e-300, 1.0, 2001),
            [0.0, -0.0, 0.5, -0.5, np.nextafter(0.5, 0.0), np.nextafter(-0.5, 0.0), 26.5, 27.3, 1e4, -1e4],
        ]
    )


def _ulps(a, ref):
    # ulp of the reference, floored at the smallest normal's ulp (no denormal ulps)
    return np.abs(a - ref) / np.maximum(np.spacing(np.abs(ref)), np.spacing(np.finfo(np.float64).tiny))


def test_erf_float64_within_two_ulps():
    x = _grid()
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        e = _special.erf(x, xp=np)
    ref = np.array([math.erf(v) for v in x])
    assert e.dtype == np.float64
    assert np.max(_ulps(e, ref)) <= 2.0
    assert np.all(np.abs(e) <= 1.0)
    np.testing.assert_array_equal(e, -_special.erf(-x, xp=np))  # odd, exactly


def test_erfc_float64_relative_precision_in_tails():
    x = _grid()
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        c = _special.erfc(x, xp=np)
    ref = np.array([math.erfc(v) for v in x])
    normal = ref > 1e-300
    assert np.max(_ulps(c, ref)[normal]) <= 8.0
    assert np.max(np.abs(c - ref)) <= 1e-300 + 4 * np.finfo(np.float64).eps
    assert np.all(c[x > 27.5] < 1e-300) and np.all(c >= 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_and_infinite_arguments(dtype):
    big = np.finfo(dtype).max
    x = np.array([-np.inf, -big, -1e30, -1e7, -31.0, 31.0, 1e7, 1e30, big, np.inf], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        e = _special.erf(x, xp=np)
        c = _special.erfc(x, xp=np)
    np.testing.assert_array_equal(e, np.sign(x))
    np.testing.assert_array_equal(c, np.where(x < 0, 2.0, 0.0).astype(dtype))
    assert np.isnan(_special.erf(np.array([np.nan], dtype=dtype), xp=np)[0])


def test_float32():
    x = _grid().astype(np.float32)
    e = _special.erf(x, xp=np)
    c = _special.erfc(x, xp=np)
    assert e.dtype == np.float32 and c.dtype == np.float32
    ref = np.array([math.erf(float(v)) for v in x])
    refc = np.array([math.erfc(float(v)) for v in x])
    assert np.max(np.abs(e - ref)) <= 2 * np.finfo(np.float32).eps
    normal = refc > 1e-37
    assert np.max(np.abs(c - refc)[normal] / refc[normal]) <= 16 * np.finfo(np.float32).eps


def test_every_backend(lib):
    x_np = np.linspace(-7.0, 7.0, 141) + 1e-3
    ref = np.array([math.erf(v) for v in x_np])
    refc = np.array([math.erfc(v) for v in x_np])
    native = lib.name.split("-")[0]
    x = lib.asarray(x_np)
    xp = aac.array_namespace(x)
    for backend in {"generic", *([native] if native in ("numpy", "torch", "cupy") else [])}:
        mod = get_backend(backend)
        e = mod.erf(x, xp=xp)
        c = mod.erfc(x, xp=xp)
        lib.check(e, x_np.shape, like=x)
        lib.check(c, x_np.shape, like=x)
        np.testing.assert_allclose(lib.to_numpy(e), ref, rtol=4e-16, atol=0)
        # native kernels (JAX) are a few ulps looser than ours in the far tail
        np.testing.assert_allclose(lib.to_numpy(c), refc, rtol=1e-14, atol=0)


def test_jit_traceable():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    jax.config.update("jax_enable_x64", True)
    x = np.linspace(-5.0, 5.0, 11)
    f = jax.jit(lambda a: _special.erf(a, xp=jnp))
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(x))), [math.erf(v) for v in x], rtol=4e-16)

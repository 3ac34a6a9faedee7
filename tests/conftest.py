"""Shared fixtures: one ``lib`` fixture parametrised over every array library.

``lib.asarray(np_array)`` makes an input of that library, ``lib.to_numpy``
brings a result back, ``lib.check(a, shape)`` asserts namespace, dtype,
device and shape before any value is compared.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac
import numpy as np
import pytest
from hypothesis import settings

# CI runs the same hypothesis examples every time (a red CI must be
# reproducible); locally each run explores new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@dataclass
class Lib:
    name: str
    backend: str | None  # explicit backend to force, None = inferred
    asarray: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    device: Any = None

    def check(self, a, shape, like):
        """namespace, dtype, device and shape of result ``a`` against input ``like``."""
        assert a is not None
        assert aac.array_namespace(a) == aac.array_namespace(like), (type(a), type(like))
        assert a.dtype == like.dtype, (a.dtype, like.dtype)
        assert str(aac.device(a)) == str(aac.device(like))
        assert tuple(a.shape) == tuple(shape), (tuple(a.shape), shape)


def _numpy():
    return Lib("numpy", None, lambda a: np.asarray(a), lambda a: np.asarray(a))


def _generic_numpy():
    return Lib("numpy-generic", "generic", lambda a: np.asarray(a), lambda a: np.asarray(a))


def _torch():
    import torch

    return Lib("torch", None, lambda a: torch.from_numpy(np.array(a)), lambda a: a.detach().cpu().numpy())


def _strict():
    import array_api_strict as xs

    return Lib("array_api_strict", None, lambda a: xs.asarray(np.array(a)), lambda a: np.asarray(a))


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return Lib("jax", None, lambda a: jnp.asarray(a), lambda a: np.asarray(a))


def _cupy():
    import cupy as cp

    return Lib("cupy", None, lambda a: cp.asarray(a), lambda a: cp.asnumpy(a))


def _torch_cuda():
    import torch

    return Lib(
        "torch-cuda", None, lambda a: torch.from_numpy(np.array(a)).cuda(), lambda a: a.detach().cpu().numpy()
    )


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _cuda_available() -> bool:
    if _has("torch"):
        import torch

        return torch.cuda.is_available()
    return False


def _cupy_available() -> bool:
    if not _has("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


# torch is optional: without it its two parameters are dropped rather than skipped, so a
# torch-free run (.ci/run's second stage) reports as skipped only what it could have run
_TORCH_PARAMS = (
    [
        pytest.param(_torch, id="torch"),
        pytest.param(
            _torch_cuda,
            id="torch-cuda",
            marks=[pytest.mark.cuda, pytest.mark.skipif(not _cuda_available(), reason="no CUDA GPU")],
        ),
    ]
    if _has("torch")
    else []
)

LIB_PARAMS = [
    pytest.param(_numpy, id="numpy"),
    pytest.param(_generic_numpy, id="numpy-generic"),
    *_TORCH_PARAMS[:1],
    pytest.param(
        _strict,
        id="array_api_strict",
        marks=pytest.mark.skipif(not _has("array_api_strict"), reason="array-api-strict missing"),
    ),
    pytest.param(_jax, id="jax", marks=pytest.mark.skipif(not _has("jax"), reason="jax not installed")),
    pytest.param(
        _cupy,
        id="cupy",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not _cupy_available(), reason="no CuPy GPU")],
    ),
    *_TORCH_PARAMS[1:],
]


@pytest.fixture(params=LIB_PARAMS)
def lib(request) -> Lib:
    """Every array library the engine must support."""
    return request.param()


@pytest.fixture
def rng():
    return np.random.default_rng(20221122)

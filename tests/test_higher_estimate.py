"""The randomised bi-Laplacian estimate: unbiased within its standard errors."""

from __future__ import annotations

import numpy as np
import pytest
from _reference import make_network, rel_err

import hessquik_core as hq


def test_unbiased_within_standard_errors():
    """The mean of 4000 probes lies within 4.5 standard errors of the exact Δ²u
    (fixed seeds: deterministic), and the standard error is an honest one: over
    20 independent estimates of 200 probes the z-scores have a spread near one."""
    net = make_network("resnet", 3, "tanh", 2)
    x = np.random.default_rng(0).standard_normal((3, 3))
    exact = hq.biharmonic(net, x)
    est = hq.biharmonic_estimate(net, x, 4000, seed=1)
    assert est.value.shape == exact.shape and est.stderr.shape == exact.shape
    z = (est.value - exact) / est.stderr
    assert np.all(np.abs(z) < 4.5), z
    # honest standard errors: independent small estimates, each scaled by its own
    # standard error, scatter with a spread near one
    zs = []
    for s in range(2, 22):
        e = hq.biharmonic_estimate(net, x, 200, seed=s)
        zs.append((e.value - exact) / e.stderr)
    assert 0.5 < float(np.std(zs)) < 1.6, np.std(zs)


def test_torch_and_shapes(lib):
    net = make_network("single", 2, "tanh", 0)
    x = np.random.default_rng(0).standard_normal((4, 2))
    xs = lib.asarray(x)
    est = hq.biharmonic_estimate(net, xs, 8, seed=3, backend=lib.backend)
    lib.check(est.value, (4, 3), xs)
    lib.check(est.stderr, (4, 3), xs)
    ref = hq.biharmonic_estimate(net, x, 8, seed=3)
    assert rel_err(lib.to_numpy(est.value), ref.value) <= 1e-12
    assert est.num_samples == 8 and "±" in str(ref)


def test_refusals():
    net = make_network("single", 2, "tanh", 0)
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match="Gaussian probes.*rademacher"):
        hq.biharmonic_estimate(net, x, 8, distribution="rademacher")
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        hq.biharmonic_estimate(net, x, 1)

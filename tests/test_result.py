"""Result: a short repr (shapes, dtype, library, device; never the arrays), indexing
by points equal to calling on those points, and the batch length."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq

NET = hq.FullyConnectedNN([3, 8, 2], act="tanh", seed=0)
KW = dict(gradient=True, hessian=True, laplacian=True, hessian_diagonal=True)


def _x(n=40):
    return np.random.default_rng(1).standard_normal((n, 3))


def test_repr_names_fields_shapes_and_library_without_the_arrays():
    res = NET(_x(1000), **KW)
    text = repr(res)
    assert len(text) < 400, text  # printing a result never dumps its arrays
    for line in ("value: (1000, 2) float64", "gradient: (1000, 3, 2) float64", "hessian: (1000, 3, 3, 2)"):
        assert line in text
    assert "numpy on cpu" in text and "divergence" not in text  # not requested: not listed
    assert str(res) == text


def test_repr_torch():
    torch = pytest.importorskip("torch")
    res = NET(torch.tensor(_x(5), dtype=torch.float32), gradient=True)
    assert "torch on cpu" in repr(res) and "(5, 3, 2) float32" in repr(res)


@pytest.mark.parametrize("index", [3, slice(5, 17), slice(None, None, 4), "array", "mask"])
def test_indexing_by_points_equals_the_call_on_those_points(index):
    x = _x()
    if index == "array":
        index = np.array([7, 0, 7, 39])
    elif index == "mask":
        index = np.arange(40) % 3 == 0
    full = NET(x, **KW)
    part = full[index]
    want = NET(x[index], **KW)
    for name in hq.engine.FIELDS:
        a, b = getattr(part, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14, err_msg=name)
    assert part.mode == full.mode


def test_len_truthiness_and_unpacking_unchanged():
    res = NET(_x(7), gradient=True)
    assert len(res) == 7 and bool(res)
    f, g = res
    assert f.shape == (7, 2) and g.shape == (7, 3, 2)
    assert bool(NET(_x(0), gradient=True))  # an empty batch is still a result


def test_bad_indices_say_what_is_expected():
    res = NET(_x(4), gradient=True)
    with pytest.raises(TypeError, match="indexed by points only"):
        res[0, 1]
    single = NET(_x(1)[0], gradient=True)
    with pytest.raises(TypeError, match="no batch axis"):
        single[0]
    with pytest.raises(TypeError, match="no batch axis"):
        len(single)

"""The workspace of eager torch training steps (``backends/_torch_workspace``).

The stacks the analytic weight gradient saves are lent from a pool and lent
again once nothing shares their memory. These tests make every stack pooled
(``MIN_BYTES = 0``) and check what must never happen: a buffer reused while a
result the caller holds, or a retained graph, still views it. The numbers
must be bit-for-bit those of the step without the workspace.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from layer_checks import uses_analytic_sweep as _uses_sweep  # noqa: E402

import hessquik_core as hq  # noqa: E402
from hessquik_core.backends import _torch_workspace as tw  # noqa: E402
from hessquik_core.backends.base import SWITCHES  # noqa: E402
from hessquik_core.training import step_workspace, torch_parameters  # noqa: E402

pytestmark = pytest.mark.skipif(tw._use_count is None, reason="this torch has no storage use count")


@pytest.fixture(autouse=True)
def pool_everything(monkeypatch):
    monkeypatch.setattr(tw, "MIN_BYTES", 0)
    before = step_workspace(True, release=True)["enabled"]
    yield
    step_workspace(before, release=True)


def _net(d=3, width=8):
    net = hq.FullyConnectedNN([d, width, width, width, 1], act="tanh", seed=4)
    return net, torch_parameters(net, dtype=torch.float64)


def _x(seed, n=16, d=3):
    return torch.as_tensor(np.random.default_rng(seed).standard_normal((n, d)))


def _loss(net, x):
    r = net(x, gradient=True, laplacian=True, mode="forward")
    return ((r.laplacian + 0.3) ** 2).mean() + (r.gradient**2).sum() * 0.1 + (r.value**2).sum(), r


def _step(net, params, x):
    loss, r = _loss(net, x)
    assert _uses_sweep(loss)
    return loss.detach(), torch.autograd.grad(loss, params), r


def _reference(net, params, xs):
    before = step_workspace(False)["enabled"]
    try:
        return [_step(net, params, x)[:2] for x in xs]
    finally:
        step_workspace(before)


def _equal(a, b):
    la, ga = a
    lb, gb = b
    assert torch.equal(la, lb)
    assert all(torch.equal(u, v) for u, v in zip(ga, gb))


def test_same_bits_with_and_without_the_workspace():
    net, params = _net()
    xs = [_x(s) for s in range(4)]
    ref = _reference(net, params, xs)
    for _ in range(2):  # the second round runs on reused buffers
        for x, r in zip(xs, ref):
            _equal(_step(net, params, x)[:2], r)
    assert step_workspace()["nbytes"] > 0


def test_buffers_are_reused_not_grown():
    net, params = _net()
    _step(net, params, _x(0))
    held = step_workspace()["nbytes"]
    ptrs = {e[0].data_ptr() for es in tw.WORKSPACE._bufs.values() for e in es}
    for s in range(1, 6):
        _step(net, params, _x(s))
    assert step_workspace()["nbytes"] == held
    assert {e[0].data_ptr() for es in tw.WORKSPACE._bufs.values() for e in es} == ptrs


def test_results_held_by_the_caller_are_not_overwritten():
    net, params = _net()
    x1, x2 = _x(1), _x(2)
    _, _, r1 = _step(net, params, x1)
    kept = (r1.value.clone(), r1.gradient.clone(), r1.laplacian.clone())
    for s in range(3):
        _step(net, params, _x(10 + s))
    assert torch.equal(r1.value, kept[0])
    assert torch.equal(r1.gradient, kept[1])
    assert torch.equal(r1.laplacian, kept[2])
    # and a result of the step without the workspace agrees with the held one
    before = step_workspace(False)["enabled"]
    try:
        r = net(x1, gradient=True, laplacian=True, mode="forward")
    finally:
        step_workspace(before)
    assert torch.equal(r.laplacian.detach(), kept[2].detach())
    del x2


def test_a_retained_graph_keeps_its_buffers():
    net, params = _net()
    x1, x2 = _x(1), _x(2)
    (ref1, ref2) = _reference(net, params, [x1, x2])
    loss1, _ = _loss(net, x1)
    g1 = torch.autograd.grad(loss1, params, retain_graph=True)
    _equal((loss1.detach(), g1), ref1)
    # other steps in between, which would take freed buffers
    for _ in range(2):
        _equal(_step(net, params, x2)[:2], ref2)
    g1_again = torch.autograd.grad(loss1, params)
    _equal((loss1.detach(), g1_again), ref1)


def test_a_loss_not_yet_differentiated_keeps_its_buffers():
    net, params = _net()
    x1, x2 = _x(1), _x(2)
    ref1, ref2 = _reference(net, params, [x1, x2])
    loss1, _ = _loss(net, x1)  # forward only: its saved stacks are alive
    _equal(_step(net, params, x2)[:2], ref2)
    _equal((loss1.detach(), torch.autograd.grad(loss1, params)), ref1)


def test_second_backward_through_the_workspace():
    net, params = _net()
    x = _x(3)
    loss, _ = _loss(net, x)
    g = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.ones_like(p) for p in params]
    hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params)
    before = step_workspace(False)["enabled"]
    try:
        loss0, _ = _loss(net, x)
        g0 = torch.autograd.grad(loss0, params, create_graph=True)
        hv0 = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g0, v)), params)
    finally:
        step_workspace(before)
    for a, b in zip(hv, hv0):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    assert max(float(a.abs().max()) for a in hv0) > 1e-3


def test_stale_shapes_are_released():
    net, params = _net()
    _step(net, params, _x(0, n=32))
    keys32 = {k for k in tw.WORKSPACE._bufs if 32 in k[0]}
    assert keys32
    for s in range(tw.KEEP_STEPS + 2):
        _step(net, params, _x(s, n=8))
    assert not any(k in tw.WORKSPACE._bufs for k in keys32)
    assert tw.WORKSPACE._bufs


def test_threads_never_share_a_buffer():
    net, params = _net()
    xs = [_x(s) for s in range(6)]
    ref = _reference(net, params, xs)
    got = [None] * len(xs)
    errors = []

    def work(j):
        try:
            for _ in range(4):
                got[j] = _step(net, params, xs[j])[:2]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, r in zip(got, ref):
        _equal(g, r)


def test_switch_and_release():
    net, params = _net()
    _step(net, params, _x(0))
    state = step_workspace()
    assert state["enabled"] is True and state["nbytes"] > 0
    assert step_workspace(release=True)["nbytes"] == state["nbytes"]
    assert step_workspace()["nbytes"] == 0
    step_workspace(False)
    _step(net, params, _x(0))
    assert step_workspace()["nbytes"] == 0  # off: nothing pooled
    step_workspace(True)
    with pytest.raises(TypeError, match="enabled must be True, False or None"):
        step_workspace(1)
    with pytest.raises(TypeError, match="release must be a bool"):
        step_workspace(release="yes")


def test_without_a_use_count_nothing_is_pooled(monkeypatch):
    monkeypatch.setattr(tw, "_use_count", None)
    ws = tw.Workspace()
    ws.new_step()
    like = torch.zeros(1, dtype=torch.float64)
    a = ws.empty((4, 5), like)
    assert a._base is None and ws.nbytes() == 0
    assert a.dtype == torch.float64 and a.shape == (4, 5)


def test_small_buffers_and_other_devices_are_left_to_the_allocator(monkeypatch):
    monkeypatch.setattr(tw, "MIN_BYTES", 1 << 20)
    ws = tw.Workspace()
    ws.new_step()
    like = torch.zeros(1, dtype=torch.float32)
    assert ws.empty((8, 8), like)._base is None
    big = ws.empty((512, 1024), like)  # 2 MiB
    assert big._base is not None and big.dtype == torch.float32 and ws.nbytes() == 512 * 1024 * 4


def test_training_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, hessquik_core.training as t; t.step_workspace(False); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert SWITCHES.step_workspace is True

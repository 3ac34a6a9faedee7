"""hq.pinn optimizers: the Gauss–Newton solvers against dense linear algebra, loss decrease, records, refusals."""

from __future__ import annotations

import numpy as np
import pytest

import hessquik_core as hq
from hessquik_core import pinn
from hessquik_core.engine.plan import MemoryBudgetError
from hessquik_core.pinn._solvers import cgls, dense_factors, kernel_factors, svd_step

PI = np.pi


def poisson_problem(lib="numpy", dtype=np.float64, n=30, nb=16, width=6, seed=0):
    """-Δu = 2π² sin(πx) sin(πy) on the unit square, u = 0 on its boundary."""
    net = hq.FullyConnectedNN([2, width, 1], act="tanh", output_act=None, seed=seed)
    rng = np.random.default_rng(seed + 1)
    xi = rng.uniform(0.0, 1.0, (n, 2))
    xb = rng.uniform(0.0, 1.0, (nb, 2))
    face = rng.integers(0, 2, nb)
    xb[np.arange(nb), face] = rng.integers(0, 2, nb)
    xi, xb = xi.astype(dtype), xb.astype(dtype)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        xi, xb = torch.from_numpy(xi), torch.from_numpy(xb)

    def interior(q, x):
        s = np.sin if isinstance(x, np.ndarray) else __import__("torch").sin
        return -q.laplacian - 2 * PI**2 * s(PI * x[:, 0]) * s(PI * x[:, 1])

    return pinn.Problem(
        net,
        [
            pinn.Residual(xi, interior, needs=("laplacian",), name="interior"),
            pinn.Residual(xb, lambda q, x: q.value, needs=("value",), name="boundary"),
        ],
    )


def np_(a):
    return a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)


# --------------------------------------------------------------------------
# the step against dense linear algebra
# --------------------------------------------------------------------------


@pytest.mark.parametrize("damping", [1e-2, 1e-6])
def test_solvers_against_dense_linear_algebra(damping):
    pr = poisson_problem(n=12, nb=6, width=4)  # N = 18 > P = 17
    for N_less in (False, True):
        if N_less:
            pr = poisson_problem(n=6, nb=4, width=5)  # N = 10 < P = 21
        J, rho = pr.jacobian(), pr.residual_vector()
        P = pr.P
        # the augmented least-squares problem [J; √λ I] d ≈ [ρ; 0], solved by LAPACK
        ref = np.linalg.lstsq(
            np.vstack([J, np.sqrt(damping) * np.eye(P)]), np.r_[rho, np.zeros(P)], rcond=None
        )[0]
        if damping >= 1e-2:  # well conditioned: the normal equations and the Woodbury form agree
            normal = np.linalg.solve(J.T @ J + damping * np.eye(P), J.T @ rho)  # (JᵀJ + λI)⁻¹ Jᵀρ
            woodbury = J.T @ np.linalg.solve(J @ J.T + damping * np.eye(pr.N), rho)  # Jᵀ(JJᵀ + λI)⁻¹ρ
            np.testing.assert_allclose(normal, ref, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(woodbury, ref, rtol=1e-9, atol=1e-12)
        for factors in (dense_factors(J, pr.xp), kernel_factors(J, pr.xp)):
            d = svd_step(factors, rho, damping, 0.0, pr.xp, J)
            np.testing.assert_allclose(d.d, ref, rtol=1e-9, atol=1e-12)
            assert d.gd == pytest.approx(float(rho @ J @ ref), rel=1e-9)
            assert d.jd2 == pytest.approx(float(np.sum((J @ ref) ** 2)), rel=1e-9)
        d = cgls(pr, rho, damping, maxiter=500, tol=1e-14)
        np.testing.assert_allclose(d.d, ref, rtol=1e-6, atol=1e-9)
        assert d.iterations >= 1


def test_pseudo_inverse_step_is_lstsq():
    pr = poisson_problem(n=12, nb=6, width=4)
    J, rho = pr.jacobian(), pr.residual_vector()
    rcond = max(J.shape) * np.finfo(float).eps
    ref = np.linalg.lstsq(J, rho, rcond=rcond)[0]
    for factors in (dense_factors(J, pr.xp), kernel_factors(J, pr.xp)):
        d = svd_step(factors, rho, 0.0, rcond, pr.xp, J)
        np.testing.assert_allclose(d.d, ref, rtol=1e-8, atol=1e-10)


def test_first_step_of_gauss_newton_is_the_damped_step():
    pr = poisson_problem()
    J, rho, theta = pr.jacobian(), pr.residual_vector(), pr.parameters()
    opt = pinn.GaussNewton(pr, damping=1e-3, line_search=None, adaptive=False)
    rec = opt.step()
    ref = np.linalg.solve(J.T @ J + 1e-3 * np.eye(pr.P), J.T @ rho)
    if rec.accepted:
        np.testing.assert_allclose(pr.parameters(), theta - ref, rtol=1e-9, atol=1e-12)
    assert rec.damping == 1e-3 and rec.step_size in (0.0, 1.0)


# --------------------------------------------------------------------------
# every optimizer lowers the loss, deterministically, NumPy and torch
# --------------------------------------------------------------------------

OPTIMIZERS = {
    # (optimizer, steps, loss reduction factor it reaches at least, monotone)
    "engd": (lambda pr: pinn.ENGD(pr), 20, 0.5, True),
    "gn_dense": (lambda pr: pinn.GaussNewton(pr, solver="dense"), 15, 0.5, True),
    "gn_kernel": (lambda pr: pinn.GaussNewton(pr, solver="kernel", line_search="armijo"), 10, 0.5, True),
    "gn_cg": (lambda pr: pinn.GaussNewton(pr, solver="cg", line_search=None, cg_maxiter=10), 10, 0.5, True),
    "adam": (lambda pr: pinn.Adam(pr, lr=3e-2), 30, 0.9, False),
    "lbfgs": (lambda pr: pinn.LBFGS(pr), 15, 0.5, True),
    "kfac": (lambda pr: pinn.KFAC(pr), 15, 0.5, True),
    "kfac_fixed_lr": (
        lambda pr: pinn.KFAC(pr, auto=False, lr=0.01, momentum=0.5, damping=0.1),
        15,
        0.9,
        False,
    ),
}


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizers_lower_the_loss(name, lib):
    make, steps, factor, monotone = OPTIMIZERS[name]
    losses = []
    for _ in range(2):
        pr = poisson_problem(lib)
        l0 = pr.loss()
        recs = make(pr).run(steps, progress=False)
        assert len(recs) >= 1 and all(isinstance(r, pinn.StepRecord) for r in recs)
        losses.append([r.loss for r in recs])
        assert recs[-1].loss == pytest.approx(pr.loss(), rel=1e-12)
        assert recs[-1].loss < factor * l0, (name, l0, recs[-1].loss)
        assert all(r.loss <= r.loss_before for r in recs) or not monotone
        assert [r.step for r in recs] == list(range(len(recs)))
        assert all(r.seconds > 0 for r in recs)
    assert losses[0] == losses[1]  # deterministic


def test_float32_runs():
    pr = poisson_problem(dtype=np.float32)
    l0 = pr.loss()
    opt = pinn.GaussNewton(pr)
    recs = opt.run(4, progress=False)
    assert pr.parameters().dtype == np.float32
    assert recs[-1].loss < l0


def test_torch_and_numpy_take_the_same_steps():
    a, b = poisson_problem("numpy"), poisson_problem("torch")
    ra = pinn.GaussNewton(a).run(3, progress=False)
    rb = pinn.GaussNewton(b).run(3, progress=False)
    np.testing.assert_allclose([r.loss for r in ra], [r.loss for r in rb], rtol=1e-8)
    np.testing.assert_allclose(np_(b.parameters()), a.parameters(), rtol=1e-7, atol=1e-10)


def test_cg_records_iterations_and_never_builds_J():
    pr = poisson_problem()
    opt = pinn.GaussNewton(pr, solver="cg", cg_maxiter=7)
    rec = opt.step()
    assert 1 <= rec.cg_iterations <= 7
    assert pr._jac is None  # matrix-free: J never formed


# --------------------------------------------------------------------------
# damping, line searches, run()
# --------------------------------------------------------------------------


def test_levenberg_marquardt_raises_damping_on_failure():
    pr = poisson_problem()
    opt = pinn.GaussNewton(pr, damping=1e-3, line_search=None)
    theta = pr.parameters()
    # a direction that cannot lower the loss: pretend the loss is already lower than anything
    pr_loss = pr.loss_at
    pr.loss_at = lambda th, **kw: np.inf  # type: ignore[method-assign]
    rec = opt.step()
    pr.loss_at = pr_loss  # type: ignore[method-assign]
    assert not rec.accepted and rec.step_size == 0.0
    assert opt.damping == pytest.approx(1e-2)
    np.testing.assert_array_equal(pr.parameters(), theta)
    rec = opt.step()
    assert rec.damping == pytest.approx(1e-2)  # the retry used the raised damping


def test_fixed_damping_stall_stops_run():
    pr = poisson_problem()
    opt = pinn.ENGD(pr)
    pr.loss_at = lambda th, **kw: np.inf  # type: ignore[method-assign]
    recs = opt.run(10, progress=False)
    assert len(recs) == 1 and opt.converged is not None and "lowers the loss" in opt.converged


def test_engd_retries_a_failed_pseudo_inverse_step_with_damping():
    """A pseudo-inverse direction no grid point accepts is retried on the same J with
    λ = 10^{2j-12} σ₁² (the first accepted λ is this step's only); without the retry ENGD stops."""
    pr = poisson_problem()
    opt = pinn.ENGD(pr)
    theta, rho, J = pr.parameters(), pr.residual_vector(), pr.jacobian()
    s1 = np.linalg.svd(J, compute_uv=False)[0]
    real = pr.loss_at
    # every trial of the undamped direction and of the first retry (λ = 1e-12 σ₁²) "fails"
    pr.loss_at = lambda th, **kw: np.inf if opt.damping < 1e-11 * s1**2 else real(th, **kw)  # type: ignore[method-assign]
    rec = opt.step()
    pr.loss_at = real  # type: ignore[method-assign]
    assert rec.accepted and opt.converged is None
    assert rec.damping == pytest.approx(1e-10 * s1**2) and opt.damping == 0.0  # next step undamped again
    d = svd_step(dense_factors(J, np), rho, 1e-10 * s1**2, opt.rcond, np, J).d
    np.testing.assert_allclose(pr.parameters(), theta - rec.step_size * d, rtol=1e-12, atol=1e-14)
    assert rec.loss < rec.loss_before
    off = pinn.ENGD(poisson_problem(), retry_damping=False)
    off.problem.loss_at = lambda th, **kw: np.inf if off.damping < 1e-11 * s1**2 else real(th, **kw)  # type: ignore[method-assign]
    assert not off.step().accepted and off.converged is not None


def test_engd_adaptive_rcond_follows_the_progress_of_its_steps():
    """rcond="adaptive" (ENGD's default): starts at 1e-7, ×100 after a step shorter than 2^-8
    (capped at 1e-7), ÷100 after a step lowering the loss by < 10 % (floored at max(N, P)ε)."""
    from hessquik_core.pinn.optim import RCOND_START

    pr = poisson_problem()
    opt = pinn.ENGD(pr)
    floor = max(pr.N, pr.P) * np.finfo(np.float64).eps
    assert opt.rcond_adaptive and opt.rcond == RCOND_START == 1e-7 and opt.rcond_floor == floor
    real = opt._search
    plan = iter([(0.5, 0.95), (0.5, 0.95), (2.0**-10, 0.5), (0.5, 0.5), (0.5, 0.95)])

    def scripted(theta, rho, loss0):  # the real direction, a scripted step length and loss ratio
        direc, _, _ = real(theta, rho, loss0)
        alpha, ratio = next(plan)
        return direc, alpha, ratio * loss0

    opt._search = scripted  # type: ignore[method-assign]
    seen = []
    for _ in range(5):
        rec = opt.step()
        seen.append((rec.extra["rcond"], opt.rcond))
    assert seen == [
        (1e-7, pytest.approx(1e-9)),  # slow progress: let in smaller singular values
        (pytest.approx(1e-9), pytest.approx(1e-11)),
        (pytest.approx(1e-11), pytest.approx(1e-9)),  # a short step: cut more again
        (pytest.approx(1e-9), pytest.approx(1e-9)),  # good progress: keep
        (pytest.approx(1e-9), pytest.approx(1e-11)),
    ]
    for _ in range(10):  # never below the floor
        opt._search = lambda th, r, l0: (real(th, r, l0)[0], 0.5, 0.99 * l0)  # type: ignore[method-assign]
        opt.step()
    assert opt.rcond == floor
    assert pinn.GaussNewton(pr).rcond == floor and not pinn.GaussNewton(pr).rcond_adaptive
    with pytest.raises(ValueError, match="rcond must be a float, None or 'adaptive'"):
        pinn.ENGD(pr, rcond="auto")


def test_run_budget_and_callback(capsys):
    pr = poisson_problem()
    opt = pinn.Adam(pr, lr=1e-2)
    recs = opt.run(100, callback=lambda rec, o: rec.step >= 2, progress=False)
    assert len(recs) == 3
    recs = opt.run(time_budget=1e-9, progress=False)
    assert len(recs) == 1 and len(opt.history) == 4
    opt.run(2, progress=True)
    assert "Adam" in capsys.readouterr().err
    with pytest.raises(ValueError, match="steps= or time_budget="):
        opt.run()
    with pytest.raises(ValueError, match="steps"):
        opt.run(-1)


def test_lbfgs_stops_at_tolerance():
    pr = poisson_problem()
    opt = pinn.LBFGS(pr, gtol=1e3)  # already met
    recs = opt.run(10, progress=False)
    assert len(recs) == 1 and "gtol" in opt.converged


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_dense_solver_refused_up_front():
    pr = poisson_problem()
    calls = []
    pr.jacobian = lambda: calls.append(1)  # type: ignore[method-assign]
    with pytest.raises(MemoryBudgetError, match="kernel") as err:
        pinn.GaussNewton(pr, solver="dense", max_memory=1000)
    assert "'cg'" in str(err.value) and f"P = {pr.P}" in str(err.value)
    with pytest.raises(MemoryBudgetError, match="'cg'"):
        pinn.ENGD(pr, solver="kernel", max_memory=1000)
    assert not calls  # refused before any work
    pinn.GaussNewton(pr, solver="cg", max_memory=1000)  # matrix-free: no refusal
    assert issubclass(MemoryBudgetError, MemoryError)


def test_dense_solver_refused_for_a_large_network():
    net = hq.FullyConnectedNN([2, 3000, 3000, 1], act="tanh", seed=0)  # P ≈ 9e6: P² ≈ 650 TB
    x = np.random.default_rng(0).uniform(size=(10, 2))
    pr = pinn.Problem(net, [pinn.Residual(x, lambda q, x: q.value)])
    with pytest.raises(MemoryBudgetError, match="'kernel' or 'cg'"):
        pinn.GaussNewton(pr)


def test_bad_options():
    pr = poisson_problem()
    with pytest.raises(ValueError, match="solver"):
        pinn.GaussNewton(pr, solver="qr")
    with pytest.raises(ValueError, match="line_search"):
        pinn.GaussNewton(pr, line_search="wolfe")
    with pytest.raises(ValueError, match="damping"):
        pinn.GaussNewton(pr, damping=-1.0)
    with pytest.raises(ValueError, match="lr"):
        pinn.Adam(pr, lr=0.0)
    with pytest.raises(ValueError, match="memory"):
        pinn.LBFGS(pr, memory=0)
    with pytest.raises(TypeError, match="Problem"):
        pinn.GaussNewton("problem")  # type: ignore[arg-type]


def test_nan_residual_is_reported_by_the_optimizer():
    pr = poisson_problem()
    pr.terms[1].fn = lambda q, x: q.value * np.nan
    with pytest.raises(ValueError, match="'boundary' has 16 non-finite"):
        pinn.GaussNewton(pr).step()


# --------------------------------------------------------------------------
# KFAC
# --------------------------------------------------------------------------


def test_kfac_factors_and_preconditioner():
    pr = poisson_problem(n=9, nb=5, width=4)
    opt = pinn.KFAC(pr, ema=0.0)
    opt.step()
    pr.set_parameters(pr.parameters())
    # one term with one quantity: the block's factors are the term's, weighted
    pr1 = pinn.Problem(pr.net, [pr.terms[0]])
    k1 = pinn.KFAC(pr1, ema=0.0)
    k1._update_factors()
    lin = pr1._linearization()[0]
    ref = hq.pinn.kfac_factors(pr.net, pr.terms[0].points, "laplacian", lin.coef["laplacian"])
    for (A, B), (Ar, Br) in zip(k1._factors, ref):
        np.testing.assert_allclose(np.kron(A, B), np.kron(Ar, Br), rtol=1e-13, atol=1e-15)
    # the preconditioner is the damped Kronecker inverse, block by block
    g = np.random.default_rng(0).standard_normal(pr1.P)
    got = pr1.layout.unflatten(k1.precondition(g))
    parts = pr1.layout.unflatten(g)
    lam = k1.damping
    for (kw, kb), (A, B) in zip(k1.blocks, k1._factors):
        pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(B) / len(B)))
        M = np.kron(A + pi * np.sqrt(lam) * np.eye(len(A)), B + np.sqrt(lam) / pi * np.eye(len(B)))
        G = np.vstack([parts[kw], parts[kb][None, :]])
        X = np.linalg.solve(M, G.ravel()).reshape(G.shape)
        np.testing.assert_allclose(np.vstack([got[kw], got[kb][None, :]]), X, rtol=1e-9, atol=1e-12)


def test_kfac_two_term_combination():
    pr = poisson_problem(n=9, nb=5, width=4)
    k = pinn.KFAC(pr, ema=0.0)
    k._update_factors()
    per_term = []
    for t, lin in zip(pr.terms, pr._linearization()):
        q = t.needs[0]
        per_term.append(hq.pinn.kfac_factors(pr.net, t.points, q, lin.coef[q]))
    for i, (A, B) in enumerate(k._factors):
        (A1, B1), (A2, B2) = per_term[0][i], per_term[1][i]
        np.testing.assert_allclose(B, B1 + B2, rtol=1e-13, atol=1e-15)
        t1, t2 = np.trace(B1), np.trace(B2)
        np.testing.assert_allclose(A, (t1 * A1 + t2 * A2) / (t1 + t2), rtol=1e-13, atol=1e-15)


def test_kfac_bad_input():
    pr = poisson_problem()
    with pytest.raises(ValueError, match="damping"):
        pinn.KFAC(pr, damping=0.0)
    with pytest.raises(ValueError, match="momentum"):
        pinn.KFAC(pr, momentum=1.0)
    with pytest.raises(RuntimeError, match="step"):
        pinn.KFAC(pr).precondition(pr.parameters())

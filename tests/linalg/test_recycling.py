"""GCRO-DR and deflated CG against dense solves, GMRES and CG; what the recycled space is; bad input."""

from __future__ import annotations

import pytest
import torch

from neuralnumerics import Status
from neuralnumerics.linalg import CG, GMRES, DenseOperator, Jacobi, linear_solve
from neuralnumerics.linalg.recycling import GCRODR, RecycledCG, RecycleSpace

F64 = torch.float64
N = 200


def outliers(n=N, seed=0):
    """Six small eigenvalues (1e-3 .. 1e-1) below a bulk in [1, 2]: restarted GMRES must rediscover them each
    cycle, a recycled space deflates them once."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.cat([torch.logspace(-3, -1, 6, dtype=F64), 1 + torch.rand(n - 6, generator=g, dtype=F64)])
    return lam, g


def nonsymmetric_family(count=5, drift=0.005, n=N, seed=0):
    """``S diag(lam) S^-1 + drift i E``: nonsymmetric, slowly varying along i."""
    lam, g = outliers(n, seed)
    S = torch.eye(n, dtype=F64) + 0.3 * torch.randn(n, n, generator=g, dtype=F64) / n ** 0.5
    E = torch.randn(n, n, generator=g, dtype=F64) / n ** 0.5
    A0 = (S * lam) @ torch.linalg.inv(S)
    return [A0 + drift * i * E for i in range(count)]


def spd_family(count=5, drift=2e-4, n=N, seed=0):
    lam, g = outliers(n, seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    E = torch.randn(n, n, generator=g, dtype=F64) / n ** 0.5
    A0 = (Q * lam) @ Q.T
    return [A0 + drift * i * (E + E.T) / 2 for i in range(count)]


def rhs(n=N, seed=5):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def run_sequence(As, solver, *, recycle=True, tag_spd=False):
    state, sols = None, []
    for A in As:
        op = DenseOperator(A, positive_definite=True) if tag_spd else A
        sol = linear_solve(op, rhs(), solver, state=state if recycle else None, throw=False)
        sols.append(sol)
        state = sol.state
    return sols


# GCRO-DR ---------------------------------------------------------------------------------------------------------

def test_gcrodr_solves_a_nonsymmetric_system_like_a_dense_solve():
    A, b = nonsymmetric_family(1)[0], rhs()
    sol = linear_solve(A, b, GCRODR(m=15, k=6, rtol=1e-11))
    assert sol.status is Status.SUCCESS
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b), rtol=1e-7, atol=1e-9)
    assert sol.stats.residual == pytest.approx(float((b - A @ sol.x).norm() / b.norm()), rel=1e-6)
    assert isinstance(sol.state, RecycleSpace) and sol.state.dim == 6


def test_gcrodr_with_an_empty_recycle_space_is_gmres():
    A, b = nonsymmetric_family(1)[0], rhs()
    ours = linear_solve(A, b, GCRODR(m=15, k=0, rtol=1e-8, max_iters=400), throw=False)
    ref = linear_solve(A, b, GMRES(restart=15, rtol=1e-8, max_iters=400), throw=False)
    assert ours.stats.iterations == ref.stats.iterations
    torch.testing.assert_close(torch.tensor(ours.stats.residual_history, dtype=F64),
                               torch.tensor(ref.stats.residual_history, dtype=F64), rtol=1e-4, atol=1e-14)
    assert ours.state is None
    # a first system that converges within one cycle (no restart, nothing recycled yet) is GMRES too
    one_cycle = linear_solve(A, b, GCRODR(m=120, k=10, rtol=1e-8))
    full = linear_solve(A, b, GMRES(restart=120, rtol=1e-8))
    assert one_cycle.stats.iterations == full.stats.iterations < 120
    torch.testing.assert_close(one_cycle.x, full.x, rtol=1e-8, atol=1e-12)


def test_recycling_cuts_iterations_along_a_slowly_varying_sequence():
    As = nonsymmetric_family()
    solver = GCRODR(m=15, k=6, rtol=1e-10)
    recycled = run_sequence(As, solver)
    fresh = run_sequence(As, solver, recycle=False)  # same solver, the space thrown away after each system
    gmres = run_sequence(As, GMRES(restart=15, rtol=1e-10, max_iters=3000))
    for A, sol in zip(As, recycled):
        assert sol.status is Status.SUCCESS
        torch.testing.assert_close(sol.x, torch.linalg.solve(A, rhs()), rtol=1e-7, atol=1e-9)
    it = lambda sols: sum(s.stats.iterations for s in sols)  # noqa: E731
    assert recycled[0].stats.iterations == fresh[0].stats.iterations  # nothing to recycle yet
    assert it(recycled[1:]) <= 0.8 * it(fresh[1:])
    assert it(recycled) < 0.2 * it(gmres)
    # every later system starts with the residual reduced by the recycled space
    assert all(s.stats.extra["projected_residual"] < 1.0 for s in recycled[1:])


def test_the_recycled_space_satisfies_c_equals_a_u_and_is_recomputed_for_a_new_operator():
    As = nonsymmetric_family(2)
    op0 = DenseOperator(As[0])
    first = linear_solve(op0, rhs(), GCRODR(m=15, k=6, rtol=1e-10))
    U, C = first.state.U, first.state.C
    torch.testing.assert_close(C, As[0] @ U, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(C.T @ C, torch.eye(6, dtype=F64), rtol=0, atol=1e-10)
    # the same operator object: C is reused as it is
    again = linear_solve(op0, rhs(seed=6), GCRODR(m=15, k=6, rtol=1e-10), state=first.state)
    assert "recycle_recomputed" not in again.stats.extra
    # a new operator: C = A U is recomputed and re-orthonormalised before the first cycle
    new = linear_solve(DenseOperator(As[1]), rhs(), GCRODR(m=15, k=6, rtol=1e-10), state=again.state)
    assert new.stats.extra["recycle_recomputed"] is True
    torch.testing.assert_close(new.state.C, As[1] @ new.state.U, rtol=1e-8, atol=1e-10)


def test_harmonic_ritz_values_approach_the_small_eigenvalues():
    As = spd_family(count=4, drift=0.0)
    sols = run_sequence(As, GCRODR(m=15, k=6, rtol=1e-10))
    theta = sols[-1].state.ritz_values
    assert theta.abs().max() < 0.2  # the six outliers, not the bulk in [1, 2]
    torch.testing.assert_close(theta.real.sort().values, torch.logspace(-3, -1, 6, dtype=F64), rtol=1e-3, atol=0)


def test_gcrodr_with_a_right_preconditioner():
    As = nonsymmetric_family(3)
    scale = torch.logspace(0, 2, N, dtype=F64)
    state = None
    for A in As:
        As_ = scale[:, None] * A  # badly scaled rows: Jacobi undoes most of it
        op = DenseOperator(As_)
        M = Jacobi(op)
        sol = linear_solve(op, scale * rhs(), GCRODR(m=15, k=6, rtol=1e-10), M=M, state=state)
        torch.testing.assert_close(sol.x, torch.linalg.solve(As_, scale * rhs()), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(sol.state.C, As_ @ M.mv(sol.state.U), rtol=1e-8, atol=1e-9)
        state = sol.state


def test_gcrodr_stops_at_max_iters_and_still_returns_a_space():
    A = nonsymmetric_family(1)[0]
    sol = linear_solve(A, rhs(), GCRODR(m=15, k=6, rtol=1e-12, max_iters=20), throw=False)
    assert sol.status is Status.MAX_ITERS and sol.stats.iterations == 20
    assert sol.state.dim == 6


def test_gcrodr_float32_and_batched_right_hand_sides():
    A = nonsymmetric_family(1)[0]
    b = torch.stack([rhs(), rhs(seed=7)], dim=1)
    sol = linear_solve(A.float(), b.float(), GCRODR(m=15, k=6, rtol=1e-5))
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b).float(), rtol=1e-3, atol=1e-3)
    assert sol.state.U.dtype == torch.float32  # the columns were solved in turn, the space passed along


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gcrodr_and_recycled_cg_on_cuda():
    A, b = nonsymmetric_family(1)[0].cuda(), rhs().cuda()
    sol = linear_solve(A, b, GCRODR(m=15, k=6, rtol=1e-10))
    assert sol.x.is_cuda and sol.state.U.is_cuda
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b), rtol=1e-7, atol=1e-9)
    S = spd_family(1)[0].cuda()
    sol = linear_solve(DenseOperator(S, positive_definite=True), b, RecycledCG(k=6, rtol=1e-10))
    torch.testing.assert_close(sol.x, torch.linalg.solve(S, b), rtol=1e-7, atol=1e-9)


# deflated CG -----------------------------------------------------------------------------------------------------

def test_recycled_cg_matches_cg_and_the_dense_solution_with_fewer_iterations():
    As = spd_family()
    recycled = run_sequence(As, RecycledCG(k=6, rtol=1e-10), tag_spd=True)
    plain = run_sequence(As, CG(rtol=1e-10), tag_spd=True)
    for A, r in zip(As, recycled):
        assert r.status is Status.SUCCESS
        torch.testing.assert_close(r.x, torch.linalg.solve(A, rhs()), rtol=1e-8, atol=1e-10)
    assert recycled[0].stats.iterations == plain[0].stats.iterations  # the first system is plain CG
    assert sum(r.stats.iterations for r in recycled[1:]) <= 0.7 * sum(p.stats.iterations for p in plain[1:])
    assert recycled[-1].stats.iterations <= 0.5 * plain[-1].stats.iterations


def test_recycled_cg_without_a_space_is_cg_step_for_step():
    A = spd_family(1)[0]
    op = DenseOperator(A, positive_definite=True)
    ours = linear_solve(op, rhs(), RecycledCG(k=0, rtol=1e-10))
    ref = linear_solve(op, rhs(), CG(rtol=1e-10))
    assert ours.stats.iterations == ref.stats.iterations and ours.state is None
    assert ours.stats.residual_history == ref.stats.residual_history


def test_recycled_cg_space_is_a_orthonormal_and_finds_the_small_eigenvalues():
    As = spd_family(count=4, drift=0.0)
    sols = run_sequence(As, RecycledCG(k=6, rtol=1e-10), tag_spd=True)
    W, AW = sols[-1].state.U, sols[-1].state.C
    torch.testing.assert_close(AW, As[-1] @ W, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(W.T @ AW, torch.eye(6, dtype=F64), rtol=0, atol=1e-8)
    torch.testing.assert_close(sols[-1].state.ritz_values, torch.logspace(-3, -1, 6, dtype=F64), rtol=1e-2, atol=0)


@pytest.mark.parametrize("solver", [GCRODR(m=15, k=6, rtol=1e-10), RecycledCG(k=6, rtol=1e-10)], ids=repr)
def test_recycling_does_not_depend_on_the_scale_of_the_system(solver):
    # search directions of norm ~1e6 next to a unit-normalised recycled basis: a rank cutoff relative to the
    # largest column would drop the whole recycled space
    As = spd_family()
    iters = {}
    for scale in (1.0, 1e6):
        state, its = None, []
        for A in As:
            sol = linear_solve(DenseOperator(A * scale, positive_definite=True), rhs() * scale ** 2, solver,
                               state=state)
            state = sol.state
            its.append(sol.stats.iterations)
        iters[scale] = its
    assert iters[1e6] == iters[1.0]


def test_recycled_cg_with_jacobi():
    As = spd_family(count=4)
    s = torch.logspace(0, 1, N, dtype=F64)
    state, iters = None, []
    for A in As:
        As_ = s[:, None] * A * s[None, :]
        op = DenseOperator(As_, positive_definite=True)
        sol = linear_solve(op, rhs(), RecycledCG(k=6, rtol=1e-10), M=Jacobi(op), state=state)
        torch.testing.assert_close(sol.x, torch.linalg.solve(As_, rhs()), rtol=1e-7, atol=1e-9)
        state = sol.state
        iters.append(sol.stats.iterations)
    assert iters[-1] < 0.7 * iters[0]


def test_recycled_cg_reports_an_indefinite_operator():
    from neuralnumerics.linalg import NotPositiveDefiniteError

    A = spd_family(1)[0]
    A[0, 0] = -5.0
    with pytest.raises(NotPositiveDefiniteError, match="Use GCRODR"):
        linear_solve(DenseOperator(A, positive_definite=True), rhs(), RecycledCG(k=4))


# bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(m=0), "m must be a positive integer"),
    (dict(m=10, k=10), "0 <= k < m = 10"),
    (dict(k=-1), "0 <= k < m"),
    (dict(k=True), "0 <= k < m"),
    (dict(rtol=-1.0), "rtol must be a finite non-negative number"),
])
def test_gcrodr_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GCRODR(**kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(k=-1), "k must be a non-negative integer"),
                                           (dict(directions=-2), "directions must be")])
def test_recycled_cg_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecycledCG(**kwargs)


def test_a_state_must_fit_the_solver_and_the_system():
    A = nonsymmetric_family(1)[0]
    state = linear_solve(A, rhs(), GCRODR(m=15, k=6, rtol=1e-8)).state
    with pytest.raises(ValueError, match="made by GCRODR.*pass state=None when switching solvers"):
        linear_solve(DenseOperator(spd_family(1)[0], positive_definite=True), rhs(), RecycledCG(), state=state)
    with pytest.raises(ValueError, match="vectors of length 200 but this system has 50 unknowns"):
        linear_solve(torch.eye(50, dtype=F64), rhs(50), GCRODR(m=15, k=6), state=state)
    with pytest.raises(ValueError, match="float64 on cpu, the system torch.float32"):
        linear_solve(A.float(), rhs().float(), GCRODR(m=15, k=6), state=state)
    with pytest.raises(ValueError, match="state must be None or the .state of a previous GCRODR solution"):
        linear_solve(A, rhs(), GCRODR(), state={"U": state.U})


def test_recycled_cg_refuses_operators_not_tagged_spd():
    with pytest.raises(ValueError, match="RecycledCG needs a positive definite operator"):
        linear_solve(DenseOperator(spd_family(1)[0]), rhs(), RecycledCG())

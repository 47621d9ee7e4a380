"""CG and GMRES against dense solves and SciPy; linear_solve's validation, statuses and errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from neuralnumerics import Status
from neuralnumerics.linalg import (CG, GMRES, DenseOperator, FunctionOperator, LinearSolveError,
                                   NotPositiveDefiniteError, PoissonGrid, linear_solve)

F64 = torch.float64


def spd(n=40, cond=100.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    eig = torch.logspace(0, np.log10(cond), n, dtype=F64)
    return ((q * eig) @ q.T).to(dtype)


def nonsymmetric(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(n, dtype=F64) * 4 + torch.randn(n, n, dtype=F64, generator=g) / np.sqrt(n)


def rhs(n, k=None, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dtype=F64, generator=g).to(dtype) if k is None else \
        torch.randn(n, k, dtype=F64, generator=g).to(dtype)


# CG -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [None, 3])
def test_cg_matches_the_dense_solution(k):
    A = spd()
    b = rhs(40, k)
    sol = linear_solve(DenseOperator(A, positive_definite=True), b, CG(rtol=1e-12))
    assert sol.status is Status.SUCCESS
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
    assert sol.stats.residual_history[0] == pytest.approx(1.0)
    assert sol.stats.residual <= 1e-12
    # n = 40 in exact arithmetic; rounding (loss of orthogonality) costs some more at rtol 1e-12
    assert sol.stats.iterations <= 2 * 40 and sol.stats.matvecs == sol.stats.iterations
    assert sol.stats.seconds > 0


def test_cg_residual_history_matches_scipy():
    # the same algorithm from x0 = 0: SciPy's iterates are ours, so the residual norms agree step by step
    # until rounding separates the two (ours is the recursive residual, SciPy's callback gives x_k), and
    # both need the same number of iterations
    A, b = spd(cond=1e3), rhs(40)
    ours = linear_solve(DenseOperator(A, positive_definite=True), b, CG(rtol=1e-10)).stats.residual_history
    theirs = []
    x_ref = np.zeros(40)

    def record(xk):
        theirs.append(np.linalg.norm(b.numpy() - A.numpy() @ xk) / np.linalg.norm(b.numpy()))

    spla.cg(A.numpy(), b.numpy(), x0=x_ref, rtol=1e-10, atol=0.0, callback=record, maxiter=200)
    np.testing.assert_allclose(ours[1:16], theirs[:15], rtol=1e-9)
    assert len(theirs) > 40 and abs(len(ours) - 1 - len(theirs)) <= 2


def test_pcg_with_jacobi_on_a_badly_scaled_system_needs_fewer_iterations():
    from neuralnumerics.linalg import Jacobi

    A = spd(cond=10.0)
    s = torch.logspace(0, 3, 40, dtype=F64)
    A = s[:, None] * A * s[None, :]  # symmetric diagonal scaling: Jacobi undoes it
    op = DenseOperator(A, positive_definite=True)
    b = rhs(40)
    plain = linear_solve(op, b, CG(rtol=1e-10, max_iters=2000))
    pre = linear_solve(op, b, CG(rtol=1e-10), M=Jacobi(op))
    torch.testing.assert_close(pre.x, torch.linalg.solve(A, b), rtol=1e-7, atol=1e-12)
    assert pre.stats.iterations < plain.stats.iterations / 2


def test_cg_batch_columns_stop_independently_and_zero_columns_are_exact():
    A = spd()
    b = rhs(40, 2)
    b[:, 1] = 0
    sol = linear_solve(DenseOperator(A, positive_definite=True), b, CG(rtol=1e-10))
    assert torch.equal(sol.x[:, 1], torch.zeros(40, dtype=F64))
    torch.testing.assert_close(sol.x[:, 0], torch.linalg.solve(A, b[:, 0]), rtol=1e-8, atol=1e-10)


def test_cg_from_an_initial_guess():
    A, b = spd(), rhs(40)
    x = torch.linalg.solve(A, b)
    sol = linear_solve(DenseOperator(A, positive_definite=True), b, CG(rtol=1e-8), x0=x + 1e-12)
    assert sol.stats.iterations == 0 and sol.status is Status.SUCCESS
    torch.testing.assert_close(sol.x, x)


def test_cg_on_an_indefinite_matrix_says_so():
    A = spd()
    A[0, 0] = -50.0
    with pytest.raises(NotPositiveDefiniteError, match=r"p\^T A p = .* <= 0 at iteration \d+.*Use GMRES"):
        linear_solve(DenseOperator(A, positive_definite=True), rhs(40), CG())


def test_cg_refuses_operators_not_tagged_spd():
    with pytest.raises(ValueError, match="CG needs a positive definite operator.*tag it if it is, or use GMRES"):
        linear_solve(DenseOperator(spd()), rhs(40), CG())
    with pytest.raises(ValueError, match="CG needs a symmetric operator"):
        linear_solve(DenseOperator(nonsymmetric(), positive_definite=True), rhs(40), CG())


def test_cg_float32():
    A = spd(cond=10.0, dtype=torch.float32)
    b = rhs(40, dtype=torch.float32)
    sol = linear_solve(DenseOperator(A, positive_definite=True), b, CG(rtol=1e-5))
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b), rtol=1e-4, atol=1e-4)


def test_cg_on_a_closed_box_poisson_system_with_a_consistent_rhs():
    op = PoissonGrid((12, 10))  # all walls: singular, constants in the null space
    b = op.project_out_nullspace(rhs(120))
    sol = linear_solve(op, b, CG(rtol=1e-10))
    assert sol.status is Status.SUCCESS
    torch.testing.assert_close(op.mv(sol.x), b, rtol=0, atol=1e-8)


# GMRES ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("restart", [5, 40])
def test_gmres_matches_the_dense_solution(restart):
    A, b = nonsymmetric(), rhs(40)
    sol = linear_solve(A, b, GMRES(restart=restart, rtol=1e-11))
    assert sol.status is Status.SUCCESS
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    # the last history entry is the true residual
    true = float((b - A @ sol.x).norm() / b.norm())
    assert sol.stats.residual == pytest.approx(true, rel=1e-6)


def test_gmres_iterations_match_scipy_without_restarts():
    A, b = nonsymmetric(seed=3), rhs(40)
    ours = linear_solve(A, b, GMRES(restart=40, rtol=1e-10))
    count = []
    spla.gmres(A.numpy(), b.numpy(), rtol=1e-10, atol=0.0, restart=40, maxiter=1,
               callback=lambda r: count.append(r), callback_type="pr_norm")
    assert abs(ours.stats.iterations - len(count)) <= 1


def test_gmres_with_a_batch_solves_each_column():
    A, B = nonsymmetric(), rhs(40, 3)
    sol = linear_solve(A, B, GMRES(rtol=1e-11))
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, B), rtol=1e-8, atol=1e-10)


def test_gmres_with_a_right_preconditioner():
    A, b = nonsymmetric(), rhs(40)
    M = DenseOperator(torch.linalg.inv(A))  # the exact inverse: one iteration
    sol = linear_solve(A, b, GMRES(rtol=1e-10), M=M)
    assert sol.stats.iterations == 1
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b))


# statuses and errors ----------------------------------------------------------------------------------------------

def test_non_convergence_is_a_status_or_an_error():
    A, b = spd(cond=1e6), rhs(40)
    op = DenseOperator(A, positive_definite=True)
    sol = linear_solve(op, b, CG(rtol=1e-12, max_iters=3), throw=False)
    assert sol.status is Status.MAX_ITERS and sol.stats.iterations == 3
    assert "raise max_iters, loosen rtol, or add a preconditioner" in sol.message
    with pytest.raises(LinearSolveError, match=r"CG: CG stopped at its iteration cap.*after 3 iterations") as info:
        linear_solve(op, b, CG(rtol=1e-12, max_iters=3))
    assert info.value.status is Status.MAX_ITERS
    assert torch.equal(info.value.result.x, sol.x)  # nothing computed is lost


def test_an_operator_producing_nan_gives_diverged():
    op = FunctionOperator(lambda x: x * float("nan"), (5, 5))
    sol = linear_solve(op, torch.ones(5, dtype=F64), GMRES(), throw=False)
    assert sol.status is Status.DIVERGED and "NaN" in sol.message


def test_default_solver_follows_the_tags():
    A = spd()
    assert linear_solve(DenseOperator(A, positive_definite=True), rhs(40)).status is Status.SUCCESS
    assert linear_solve(nonsymmetric(), rhs(40)).status is Status.SUCCESS


@pytest.mark.parametrize("make,message", [
    (lambda: (torch.ones(3, 4, dtype=F64), torch.ones(3, dtype=F64)), r"square operator, got shape \(3, 4\)"),
    (lambda: (torch.eye(3, dtype=F64), torch.ones(4, dtype=F64)), r"b has shape \(4,\); .* must be \(3,\) or \(3, k\)"),
    (lambda: (torch.eye(3, dtype=F64), torch.ones(3, dtype=torch.float32)), "b is torch.float32 and the operator "
                                                                             "torch.float64"),
    (lambda: (torch.eye(3, dtype=F64), torch.tensor([1.0, float("nan"), 2.0], dtype=F64)), "b has 1 non-finite"),
    (lambda: (torch.eye(3, dtype=F64), [1.0, 2.0, 3.0]), "b must be a torch tensor, got list"),
])
def test_bad_input_is_named(make, message):
    A, b = make()
    with pytest.raises(ValueError, match=message):
        linear_solve(A, b, GMRES())


def test_bad_x0_preconditioner_and_solver():
    A, b = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match=r"x0 has shape \(3, 1\), b has \(3,\)"):
        linear_solve(A, b, GMRES(), x0=torch.ones(3, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"the preconditioner has shape \(2, 2\), the operator \(3, 3\)"):
        linear_solve(A, b, GMRES(), M=torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="solver must be a LinearSolver instance"):
        linear_solve(A, b, "cg")


@pytest.mark.parametrize("kwargs,message", [
    ({"rtol": -1.0}, "rtol must be a finite non-negative number"),
    ({"rtol": 0.0}, "rtol and atol are both 0"),
    ({"max_iters": 0}, "max_iters must be a positive integer, got 0"),
    ({"max_iters": 2.5}, "max_iters must be a positive integer, got 2.5"),
])
def test_solver_configuration_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CG(**kwargs)
    with pytest.raises(ValueError, match="restart must be a positive integer"):
        GMRES(restart=0)

"""SOR, SSOR and the SSOR preconditioner against dense oracles, and Young's theory on the Poisson model problem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from neuralnumerics._status import Status
from neuralnumerics.linalg.cg import CG
from neuralnumerics.linalg.operators import DenseOperator, SparseOperator
from neuralnumerics.linalg.solve import LinearSolveError, linear_solve
from neuralnumerics.linalg.sor import (SOR, SSOR, SSORPreconditioner, optimal_omega, sor_iteration_estimate,
                                       sor_spectral_radius)
from neuralnumerics.linalg.stencil import PoissonGrid

F64 = torch.float64


def poisson_1d(n: int) -> torch.Tensor:
    """tridiag(-1, 2, -1), n x n: the 1D model problem with mesh width h = 1 / (n + 1)."""
    return 2 * torch.eye(n, dtype=F64) - torch.diag(torch.ones(n - 1, dtype=F64), 1) \
        - torch.diag(torch.ones(n - 1, dtype=F64), -1)


def random_spd(n: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, dtype=F64, generator=g)
    return q @ q.T / n + 0.5 * torch.eye(n, dtype=F64)


def rhs(n: int, seed: int = 1, k: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dtype=F64, generator=g) if k is None else torch.randn(n, k, dtype=F64, generator=g)


def sor_iteration_matrix(A: torch.Tensor, omega: float) -> torch.Tensor:
    """C = I - (D / omega + L)^{-1} A, dense."""
    M = torch.diag(A.diagonal()) / omega + torch.tril(A, -1)
    return torch.eye(A.shape[0], dtype=A.dtype) - torch.linalg.solve_triangular(M, A, upper=False)


# --------------------------------------------------------------------------- #
# the iteration itself
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("omega", [0.7, 1.0, 1.6])
def test_one_sor_iteration_is_the_textbook_sweep(omega):
    A = random_spd(25)
    b, x0 = rhs(25, 1), rhs(25, 2)
    sol = linear_solve(A, b, SOR(omega, max_iters=1), x0=x0, throw=False)
    M = torch.diag(A.diagonal()) / omega + torch.tril(A, -1)
    expected = x0 + torch.linalg.solve_triangular(M, (b - A @ x0)[:, None], upper=False)[:, 0]
    torch.testing.assert_close(sol.x, expected, rtol=1e-12, atol=1e-12)
    assert sol.stats.iterations == 1 and sol.status is Status.MAX_ITERS


def test_one_ssor_iteration_is_a_forward_then_a_backward_sweep():
    A, omega = random_spd(25), 1.3
    b, x0 = rhs(25, 1), rhs(25, 2)
    D = torch.diag(A.diagonal())
    fwd, bwd = D / omega + torch.tril(A, -1), D / omega + torch.triu(A, 1)
    half = x0 + torch.linalg.solve_triangular(fwd, (b - A @ x0)[:, None], upper=False)[:, 0]
    expected = half + torch.linalg.solve_triangular(bwd, (b - A @ half)[:, None], upper=True)[:, 0]
    sol = linear_solve(A, b, SSOR(omega, max_iters=1), x0=x0, throw=False)
    torch.testing.assert_close(sol.x, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", [SOR(1.0), SOR(1.5), SSOR(1.2)], ids=repr)
@pytest.mark.parametrize("kind", ["dense", "scipy", "grid"])
def test_solves_match_a_dense_solve(solver, kind):
    if kind == "grid":
        op = PoissonGrid((6, 5), boundary="dirichlet")
        A = op.to_dense()
    else:
        A = random_spd(30)
        op = A if kind == "dense" else sp.csr_matrix(A.numpy())
    b = rhs(A.shape[0])
    solver = type(solver)(solver.omega, rtol=1e-10, max_iters=5000)
    sol = linear_solve(op, b, solver)
    assert sol.status is Status.SUCCESS
    torch.testing.assert_close(sol.x, torch.linalg.solve(A, b), rtol=1e-7, atol=1e-8)
    assert sol.stats.residual <= 1e-10
    assert len(sol.stats.residual_history) == sol.stats.iterations + 1
    assert sol.stats.matvecs == sol.stats.iterations  # x0 = 0: no initial product


def test_batch_matches_column_by_column_and_float32_follows_the_input():
    A = random_spd(20)
    B = rhs(20, k=3)
    batch = linear_solve(A, B, SOR(1.2, rtol=1e-10))
    for j in range(3):
        col = linear_solve(A, B[:, j], SOR(1.2, rtol=1e-10))
        torch.testing.assert_close(batch.x[:, j], col.x, rtol=1e-12, atol=1e-12)
    assert batch.stats.iterations == max(linear_solve(A, B[:, j], SOR(1.2, rtol=1e-10)).stats.iterations
                                         for j in range(3))
    sol32 = linear_solve(A.float(), B[:, 0].float(), SOR(1.2, rtol=1e-5))
    assert sol32.x.dtype == torch.float32
    torch.testing.assert_close(sol32.x.double(), torch.linalg.solve(A, B[:, 0]), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- #
# Young's theory on the model problem
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("omega", [0.8, 1.0, 1.3, 1.6, 1.75, 1.9])
def test_spectral_radius_matches_young_on_the_2d_poisson_problem(omega):
    op = PoissonGrid((7, 7), boundary="dirichlet")  # the 5-point Laplacian in natural order, h = 1/8
    rho = torch.linalg.eigvals(sor_iteration_matrix(op.to_dense(), omega)).abs().max().item()
    beta = math.cos(math.pi / 8)
    # near omega* the eigenvalues form Jordan blocks and their computed moduli scatter by ~sqrt(eps)
    assert rho == pytest.approx(sor_spectral_radius(beta, omega), abs=2e-6)


def test_optimal_omega_is_the_closed_form_and_beats_gauss_seidel_as_predicted():
    n = 31
    h = 1.0 / (n + 1)
    A = poisson_1d(n)
    beta = torch.linalg.eigvals(torch.eye(n, dtype=F64) - A / 2).abs().max().item()
    assert beta == pytest.approx(math.cos(math.pi * h), rel=1e-12)
    w_opt = optimal_omega(beta)
    assert w_opt == pytest.approx(2 / (1 + math.sin(math.pi * h)), rel=1e-12)
    # the dense spectral radius is smallest at omega*: equal to omega* - 1 there, larger on both sides
    radius = {w: torch.linalg.eigvals(sor_iteration_matrix(A, w)).abs().max().item()
              for w in (1.0, w_opt - 0.05, w_opt, w_opt + 0.05)}
    assert radius[w_opt] == pytest.approx(w_opt - 1, abs=1e-3)
    assert radius[w_opt] < min(radius[w_opt - 0.05], radius[w_opt + 0.05]) < radius[1.0]
    # measured iterations: omega* is ~20x faster than Gauss-Seidel, as log(rho_1) / log(rho*) predicts
    b = rhs(n)
    iters = {w: linear_solve(A, b, SOR(w, rtol=1e-8, max_iters=20000)).stats.iterations for w in (1.0, w_opt)}
    predicted_speedup = math.log(radius[w_opt]) / math.log(radius[1.0])
    assert predicted_speedup > 15
    assert iters[1.0] / iters[w_opt] > 0.6 * predicted_speedup
    # each count is near the asymptotic estimate log(rtol) / log(rho): a random b has little weight on the
    # slowest mode, so Gauss-Seidel needs somewhat fewer; omega* has a transient from its Jordan block: allow 2x
    assert 0.75 * sor_iteration_estimate(beta, 1.0, 1e-8) <= iters[1.0] <= 1.05 * sor_iteration_estimate(beta, 1.0, 1e-8)
    assert sor_iteration_estimate(beta, w_opt, 1e-8) <= iters[w_opt] <= 2 * sor_iteration_estimate(beta, w_opt, 1e-8)


def test_young_helpers_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        optimal_omega(1.0)
    with pytest.raises(ValueError, match=r"\(0, 2\)"):
        sor_spectral_radius(0.5, 2.0)
    with pytest.raises(ValueError, match="tau"):
        sor_iteration_estimate(0.5, 1.0, 1e-6, tau=1.0)
    assert sor_spectral_radius(0.0, 1.0) == 0.0  # beta = 0: Gauss-Seidel is exact in one sweep


# --------------------------------------------------------------------------- #
# the SSOR preconditioner
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("omega", [0.5, 1.0, 1.5, 1.9])
def test_ssor_preconditioner_is_spd_and_matches_the_formula(omega):
    A = random_spd(20)
    P = SSORPreconditioner(DenseOperator(A, positive_definite=True), omega)
    assert P.symmetric and P.positive_definite
    Minv = P.to_dense()
    D, L, U = torch.diag(A.diagonal()), torch.tril(A, -1), torch.triu(A, 1)
    M = (D + omega * L) @ torch.linalg.inv(D) @ (D + omega * U) / (omega * (2 - omega))
    torch.testing.assert_close(Minv, torch.linalg.inv(M), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(Minv, Minv.T, rtol=1e-12, atol=1e-12)
    assert torch.linalg.eigvalsh(Minv).min() > 0


def test_ssor_preconditioned_cg_needs_fewer_iterations_than_plain_cg():
    op = PoissonGrid((16, 16), boundary="dirichlet")
    b = rhs(256)
    plain = linear_solve(op, b, CG(rtol=1e-8))
    pre = linear_solve(op, b, CG(rtol=1e-8), M=SSORPreconditioner(op, 1.6))
    assert pre.stats.iterations < 0.6 * plain.stats.iterations
    torch.testing.assert_close(pre.x, torch.linalg.solve(op.to_dense(), b), rtol=1e-6, atol=1e-8)
    # a batch is applied column by column consistently
    R = rhs(256, k=2)
    P = SSORPreconditioner(op, 1.6)
    torch.testing.assert_close(P.mv(R)[:, 1], P.mv(R[:, 1]))


def test_ssor_preconditioner_takes_the_operators_tags():
    A = random_spd(10)
    assert not SSORPreconditioner(DenseOperator(A), 1.0).positive_definite  # A not tagged positive definite
    nonsym = A + torch.triu(torch.ones(10, 10, dtype=F64), 1)
    assert not SSORPreconditioner(nonsym, 1.0).symmetric


# --------------------------------------------------------------------------- #
# failures
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("omega", [0.0, 2.0, -0.5, 2.5, math.nan, math.inf, "1.5", True, None])
@pytest.mark.parametrize("factory", [SOR, SSOR, lambda w: SSORPreconditioner(torch.eye(3, dtype=F64), w)],
                         ids=["SOR", "SSOR", "SSORPreconditioner"])
def test_bad_omega_is_rejected_with_the_valid_range(factory, omega):
    with pytest.raises(ValueError, match=r"omega must (lie in the open interval|be a real number in) \(0, 2\)"):
        factory(omega)


def test_zero_diagonal_is_rejected():
    A = torch.tensor([[0.0, 1.0], [1.0, 2.0]], dtype=F64)
    with pytest.raises(ValueError, match="zero entries.*row 0"):
        linear_solve(A, torch.ones(2, dtype=F64), SOR(1.0))
    with pytest.raises(ValueError, match="zero entries"):
        SSORPreconditioner(A, 1.0)


def test_a_preconditioner_is_refused():
    A = random_spd(5)
    with pytest.raises(ValueError, match="takes no preconditioner"):
        linear_solve(A, rhs(5), SOR(1.0), M=torch.eye(5, dtype=F64))


def test_iteration_cap_gives_max_iters_or_raises():
    A = poisson_1d(50)
    b = rhs(50)
    sol = linear_solve(A, b, SOR(1.0, rtol=1e-10, max_iters=5), throw=False)
    assert sol.status is Status.MAX_ITERS and sol.stats.iterations == 5
    assert "omega=1" in sol.message and "max_iters" in sol.message
    with pytest.raises(LinearSolveError, match="iteration cap"):
        linear_solve(A, b, SOR(1.0, rtol=1e-10, max_iters=5))


def test_overflow_is_reported_as_diverged():
    # nonsymmetric, and SOR's iteration matrix has a huge eigenvalue: the iterates overflow to inf, then NaN
    A = sp.csr_matrix(np.array([[1.0, 1e150], [-1e150, 1.0]]))
    op = SparseOperator.from_scipy(A)
    sol = linear_solve(op, torch.ones(2, dtype=F64), SOR(1.0, max_iters=50), throw=False)
    assert sol.status is Status.DIVERGED
    assert "diverges" in sol.message

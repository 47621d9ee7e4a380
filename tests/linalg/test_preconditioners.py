"""Preconditioners: Jacobi, IC(0) (against exact Cholesky where they coincide, and its defining property), AMG."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from neuralnumerics.linalg import CG, AMG, IncompleteCholesky, Jacobi, PoissonGrid, SparseOperator, linear_solve

F64 = torch.float64


def poisson_1d(n=30):
    return sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")


def test_jacobi_is_the_inverse_diagonal_and_refuses_zeros():
    A = torch.tensor([[4.0, 1.0], [1.0, 2.0]], dtype=F64)
    torch.testing.assert_close(Jacobi(A).to_dense(), torch.diag(torch.tensor([0.25, 0.5], dtype=F64)))
    with pytest.raises(ValueError, match=r"the diagonal has 1 zero or non-finite entries \(first at 1\)"):
        Jacobi(torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64))


def test_ic0_of_a_tridiagonal_matrix_is_its_cholesky_factor():
    A = poisson_1d()
    ic = IncompleteCholesky(SparseOperator.from_scipy(A, symmetric=True, positive_definite=True))
    exact = torch.linalg.cholesky(torch.from_numpy(A.toarray()))
    torch.testing.assert_close(torch.from_numpy(ic.L.toarray()), exact)
    assert ic.shift == 0.0
    b = torch.randn(30, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ic.mv(b), torch.linalg.solve(torch.from_numpy(A.toarray()), b))


def test_ic0_reproduces_a_on_its_pattern_and_speeds_up_cg():
    solid = np.zeros((24, 24), dtype=bool)
    solid[8:14, 6:12] = True
    op = PoissonGrid((24, 24), boundary="dirichlet", solid=solid)
    ic = IncompleteCholesky(op)
    A = op.to_scipy().toarray()
    LLt = (ic.L @ ic.L.T).toarray()
    pattern = A != 0
    np.testing.assert_allclose(LLt[pattern], A[pattern], atol=1e-12)  # the defining property of IC(0)
    assert np.abs(LLt[~pattern]).max() > 0  # ...and it is not the exact factor (fill-in was dropped)
    b = torch.randn(op.shape[0], dtype=F64, generator=torch.Generator().manual_seed(1))
    b[torch.from_numpy(solid.reshape(-1))] = 0
    plain = linear_solve(op, b, CG(rtol=1e-8))
    pre = linear_solve(op, b, CG(rtol=1e-8), M=ic)
    torch.testing.assert_close(pre.x, torch.linalg.solve(torch.from_numpy(A), b), rtol=1e-6, atol=1e-8)
    assert pre.stats.iterations < plain.stats.iterations / 2


def test_ic0_shifts_when_a_pivot_breaks_down():
    # SPD but far from an M-matrix: IC(0) without a shift meets a non-positive pivot
    A = sp.csr_matrix(np.array([[3.0, -2.0, 0.0, 2.0], [-2.0, 3.0, -2.0, 0.0], [0.0, -2.0, 3.0, -2.0],
                                [2.0, 0.0, -2.0, 3.0]]))
    assert np.linalg.eigvalsh(A.toarray()).min() > 0
    ic = IncompleteCholesky(SparseOperator.from_scipy(A, symmetric=True, positive_definite=True))
    assert ic.shift > 0
    M = ic.to_dense()
    assert torch.linalg.eigvalsh((M + M.T) / 2).min() > 0


def test_ic0_rejects_a_non_positive_diagonal():
    with pytest.raises(ValueError, match="non-positive diagonal entries; it is not SPD"):
        IncompleteCholesky(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64))


def test_amg_without_pyamg_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyamg", None)
    with pytest.raises(ImportError, match="pip install pyamg"):
        AMG(PoissonGrid((8, 8), boundary="dirichlet"))


def test_amg_preconditioned_cg():
    pytest.importorskip("pyamg")
    op = PoissonGrid((40, 40), boundary="dirichlet")
    b = torch.randn(1600, dtype=F64, generator=torch.Generator().manual_seed(2))
    plain = linear_solve(op, b, CG(rtol=1e-8))
    pre = linear_solve(op, b, CG(rtol=1e-8), M=AMG(op))
    torch.testing.assert_close(op.mv(pre.x), b, rtol=0, atol=1e-6)
    assert pre.stats.iterations < plain.stats.iterations / 4

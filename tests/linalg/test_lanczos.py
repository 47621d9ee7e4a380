"""Lanczos tridiagonalisation and Ritz pairs against dense eigendecompositions (numpy.linalg.eigvalsh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralnumerics.gallery.tanks import tank_system
from neuralnumerics.linalg import DenseOperator, PoissonGrid
from neuralnumerics.linalg.lanczos import lanczos, ritz_pairs

F64 = torch.float64


def spd(n=40, seed=0, low=1.0, high=100.0):
    """A dense SPD matrix with n distinct eigenvalues, evenly spread in [low, high], and the eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
    eig = torch.linspace(low, high, n, dtype=F64)
    return (q * eig) @ q.T, eig


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tridiag(alpha, beta):
    return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)


# the Lanczos relation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["dense", "tank"])
def test_basis_is_orthonormal_and_projects_a_to_the_tridiagonal(case):
    if case == "dense":
        A, _ = spd(60)
        op, steps = DenseOperator(A), 25
    else:
        op, _ = tank_system((12, 12))
        A, steps = op.to_dense(), 60
    alpha, beta, Q = lanczos(op, steps, generator=gen())
    assert alpha.shape == (steps,) and beta.shape == (steps - 1,) and Q.shape == (steps, op.shape[0])
    assert alpha.dtype == F64 and Q.dtype == F64
    torch.testing.assert_close(Q @ Q.T, torch.eye(steps, dtype=F64), rtol=0, atol=1e-10)
    scale = float(torch.linalg.matrix_norm(A, 2))
    torch.testing.assert_close(Q @ A @ Q.T, tridiag(alpha, beta), rtol=0, atol=1e-10 * scale)
    assert bool((beta > 0).all())


def test_default_start_is_a_times_a_random_vector():
    # v0 defaults to A g with g ~ N(0, 1) from the generator: the first basis vector is A g / ||A g||
    A, _ = spd(30)
    g = torch.randn(30, generator=gen(7), dtype=F64)
    _, _, Q = lanczos(DenseOperator(A), 5, generator=gen(7))
    v = A @ g
    torch.testing.assert_close(Q[0], v / v.norm(), rtol=0, atol=1e-13)
    # the same generator seed gives the same basis
    _, _, Q2 = lanczos(DenseOperator(A), 5, generator=gen(7))
    assert torch.equal(Q, Q2)


def test_a_single_step_gives_the_rayleigh_quotient():
    A, _ = spd(20)
    v = torch.randn(20, generator=gen(3), dtype=F64)
    alpha, beta, Q = lanczos(DenseOperator(A), 1, v0=v)
    assert beta.numel() == 0
    torch.testing.assert_close(alpha, (v @ A @ v / (v @ v)).reshape(1), rtol=1e-13, atol=0)
    values, vectors = ritz_pairs(DenseOperator(A), 1, v0=v)
    torch.testing.assert_close(values, alpha, rtol=1e-13, atol=0)
    torch.testing.assert_close(vectors[:, 0], v / v.norm(), rtol=0, atol=1e-14)


def test_float32_operator_keeps_its_dtype():
    op = PoissonGrid((8, 8), boundary="dirichlet", dtype=torch.float32)
    alpha, beta, Q = lanczos(op, 10, generator=gen())
    values, vectors = ritz_pairs(op, 10, generator=gen())
    assert alpha.dtype == beta.dtype == Q.dtype == values.dtype == vectors.dtype == torch.float32
    torch.testing.assert_close(Q @ Q.T, torch.eye(10), rtol=0, atol=1e-5)


def test_without_reorthogonalisation_the_basis_loses_orthogonality():
    # the documented reason for the default: once Ritz values converge plain Lanczos loses orthogonality
    op = PoissonGrid((16, 16), boundary="dirichlet")
    _, _, Q = lanczos(op, 120, reorthogonalize=False, generator=gen())
    assert float((Q @ Q.T - torch.eye(Q.shape[0], dtype=F64)).abs().max()) > 1e-3
    _, _, Q = lanczos(op, 120, generator=gen())
    assert float((Q @ Q.T - torch.eye(Q.shape[0], dtype=F64)).abs().max()) < 1e-12


# Ritz values against the dense spectrum ---------------------------------------------------------------------------

def test_a_full_run_recovers_every_eigenvalue():
    A, eig = spd(40)
    alpha, beta, _ = lanczos(DenseOperator(A), 40, generator=gen())
    assert alpha.numel() == 40
    np.testing.assert_allclose(np.linalg.eigvalsh(tridiag(alpha, beta).numpy()), eig.numpy(), rtol=1e-10)
    values, vectors = ritz_pairs(DenseOperator(A), 40, generator=gen())
    np.testing.assert_allclose(values.numpy(), np.linalg.eigvalsh(A.numpy()), rtol=1e-10)
    # all pairs are eigenpairs of A, the vectors orthonormal
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(40, dtype=F64), rtol=0, atol=1e-10)
    assert float((A @ vectors - vectors * values).norm(dim=0).max()) < 1e-9 * float(eig.max())


@pytest.mark.parametrize("case,steps,rtol_low", [("dirichlet", 70, 1e-10), ("closed_tank", 100, 1e-8)])
def test_extreme_ritz_values_match_eigvalsh(case, steps, rtol_low):
    if case == "dirichlet":
        op = PoissonGrid((16, 16), boundary="dirichlet")
    else:
        op, _ = tank_system((16, 16), open_top=False)  # singular: the smallest is the lowest nonzero
        assert op.singular
    A = op.to_dense()
    eig = np.linalg.eigvalsh(A.numpy())
    nonzero = eig[eig > 1e-9 * eig.max()]
    values, vectors = ritz_pairs(op, steps, generator=gen())
    assert values.numel() <= steps
    assert bool((values[1:] >= values[:-1]).all())  # ascending
    assert float(values[-1]) == pytest.approx(eig[-1], rel=1e-12)
    assert float(values[0]) == pytest.approx(nonzero[0], rel=rtol_low)
    # Ritz values lie inside the spectrum (of A restricted to its range)
    assert float(values.min()) >= nonzero[0] * (1 - 1e-10) and float(values.max()) <= eig[-1] * (1 + 1e-12)
    # the converged (extreme) pairs are eigenpairs: small ||A v - theta v||
    res = (A @ vectors - vectors * values).norm(dim=0)
    assert float(res[-1]) < 1e-8 * eig[-1] and float(res[0]) < 1e-3 * eig[-1]
    torch.testing.assert_close(vectors.norm(dim=0), torch.ones(values.numel(), dtype=F64), rtol=0, atol=1e-12)


def test_ritz_vectors_residuals_fall_as_the_ritz_values_converge():
    # a partial run: the residual of each pair is a fair indicator of the error of its Ritz value
    op = PoissonGrid((12, 12), boundary="dirichlet", solid=np.pad(np.ones((2, 2), bool), 5))
    A = op.to_dense()
    eig = np.linalg.eigvalsh(A.numpy())
    values, vectors = ritz_pairs(op, 50, generator=gen(1))
    res = (A @ vectors - vectors * values).norm(dim=0).numpy()
    dist = np.abs(values.numpy()[:, None] - eig[None, :]).min(axis=1)
    # a symmetric matrix has an eigenvalue within ||A v - theta v|| of every Ritz value (v unit)
    assert np.all(dist <= res + 1e-12)
    # the pairs with small residuals have converged, their values to about the square of the residual
    converged = res < 1e-6 * eig[-1]
    assert converged.sum() >= 3
    assert np.all(dist[converged] < 1e-10 * eig[-1])


# early termination and null spaces ----------------------------------------------------------------------------------

def test_early_termination_on_an_invariant_subspace():
    d = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 5.0, 5.0], dtype=F64)
    op = DenseOperator(torch.diag(d))
    alpha, beta, Q = lanczos(op, 10, v0=torch.ones(10, dtype=F64))
    assert alpha.numel() == 4 and beta.numel() == 3 and Q.shape == (4, 10)  # 4 distinct eigenvalues
    v0 = torch.ones(10, dtype=F64)
    v0[8:] = 0  # no component along the eigenvalue 5
    alpha, beta, Q = lanczos(op, 10, v0=v0)
    assert alpha.numel() == 3
    torch.testing.assert_close(Q @ Q.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)
    values, vectors = ritz_pairs(op, 10, v0=v0)
    torch.testing.assert_close(values, torch.tensor([1.0, 2.0, 3.0], dtype=F64), rtol=1e-12, atol=0)
    assert float(vectors[8:].abs().max()) == 0.0
    torch.testing.assert_close(op.mv(vectors), vectors * values, rtol=0, atol=1e-12)


def test_a_fluid_only_start_stays_on_the_fluid_cells():
    # solid cells are decoupled identity rows: the Krylov space of a vector zero there never reaches them,
    # and with distinct eigenvalues it spans the whole fluid subspace before Lanczos stops
    op, _ = tank_system((8, 8))
    solid = op.solid.reshape(-1)
    n_fluid = int((~solid).sum())
    g = torch.randn(64, generator=gen(), dtype=F64) * (~solid)
    alpha, beta, Q = lanczos(op, 64, v0=op.mv(g))
    assert alpha.numel() == n_fluid
    assert float(Q[:, solid].abs().max()) == 0.0
    fluid_block = op.to_dense()[~solid][:, ~solid]
    np.testing.assert_allclose(np.linalg.eigvalsh(tridiag(alpha, beta).numpy()),
                               np.linalg.eigvalsh(fluid_block.numpy()), rtol=1e-9)


def test_ritz_pairs_leave_out_the_null_space_of_a_closed_box():
    op = PoissonGrid((8, 8))  # all walls: the constants are the null space
    assert op.singular
    z = op.nullspace()
    eig = np.linalg.eigvalsh(op.to_dense().numpy())
    lam2 = eig[1]
    assert abs(eig[0]) < 1e-12 and lam2 > 0.1
    values, vectors = ritz_pairs(op, 24, generator=gen())  # from A g, within the range of A
    assert values.numel() > 0 and float(values.min()) >= lam2 * (1 - 1e-8)
    assert float((z.T @ vectors).abs().max()) < 1e-8
    # a start with a null component does reach the null space: its Ritz value ~0 is there when nothing is
    # dropped, and the default cutoff removes it
    v0 = torch.ones(64, dtype=F64) + op.mv(torch.randn(64, generator=gen(1), dtype=F64))
    kept, _ = ritz_pairs(op, 24, v0=v0, drop_below=-np.inf)
    assert float(kept.abs().min()) < 1e-8 * float(kept.max())  # below the default cutoff
    dropped, _ = ritz_pairs(op, 24, v0=v0)
    assert dropped.numel() == kept.numel() - 1 and float(dropped.min()) >= lam2 * (1 - 1e-8)


# errors ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [0, -1, 65, 2.5, True])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        lanczos(PoissonGrid((8, 8), boundary="dirichlet"), steps)


@pytest.mark.parametrize("v0,match", [
    (torch.zeros(64, dtype=F64), "zero"),
    (torch.full((64,), float("nan"), dtype=F64), "finite"),
    (torch.ones(63, dtype=F64), "shape"),
    (torch.ones(64, 1, dtype=F64), "shape"),
])
def test_bad_start_vector(v0, match):
    op = PoissonGrid((8, 8), boundary="dirichlet")
    with pytest.raises(ValueError, match=match):
        lanczos(op, 5, v0=v0)
    with pytest.raises(ValueError, match=match):
        ritz_pairs(op, 5, v0=v0)


def test_non_symmetric_or_non_square_operators_are_refused():
    g = gen()
    nonsym = torch.eye(10, dtype=F64) * 4 + torch.randn(10, 10, dtype=F64, generator=g)
    with pytest.raises(ValueError, match="symmetric"):
        lanczos(DenseOperator(nonsym), 3)
    with pytest.raises(ValueError, match="symmetric"):
        ritz_pairs(nonsym, 3)
    with pytest.raises(ValueError, match="square"):
        lanczos(DenseOperator(torch.randn(10, 8, dtype=F64, generator=g)), 3)

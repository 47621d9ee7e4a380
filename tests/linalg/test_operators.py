"""Operators: every adapter against the dense matrix it wraps; PoissonGrid against a matrix assembled cell by cell."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from neuralnumerics.linalg import (DenseOperator, DiagonalOperator, FunctionOperator, PoissonGrid,
                                   as_operator)

F64 = torch.float64


def random_sparse(n=30, density=0.2, seed=0):
    m = sp.random(n, n, density=density, random_state=seed, format="csr") + sp.eye(n)
    return m.tocsr()


def adapters(m):
    dense = torch.from_numpy(m.toarray())
    return {
        "dense": as_operator(dense),
        "numpy": as_operator(m.toarray()),
        "scipy": as_operator(m),
        "torch-csr": as_operator(dense.to_sparse_csr()),
        "torch-coo": as_operator(dense.to_sparse()),
        "function": FunctionOperator(lambda x: dense @ x, m.shape, rfn=lambda x: dense.T @ x),
    }


@pytest.mark.parametrize("kind", ["dense", "numpy", "scipy", "torch-csr", "torch-coo", "function"])
def test_adapters_agree_with_the_dense_matrix(kind):
    m = random_sparse()
    A = torch.from_numpy(m.toarray())
    op = adapters(m)[kind]
    assert op.shape == (30, 30) and op.dtype == F64 and op.is_square
    g = torch.Generator().manual_seed(1)
    x, X = torch.randn(30, dtype=F64, generator=g), torch.randn(30, 4, dtype=F64, generator=g)
    torch.testing.assert_close(op.mv(x), A @ x)
    torch.testing.assert_close(op @ X, A @ X)
    torch.testing.assert_close(op.rmv(x), A.T @ x)
    torch.testing.assert_close(op.to_dense(), A)
    torch.testing.assert_close(op.diagonal(), A.diagonal())
    torch.testing.assert_close(torch.from_numpy(op.to_scipy().toarray()), A)


def test_dense_symmetry_is_detected_up_to_rounding():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(20, 20, dtype=F64, generator=g)
    assert DenseOperator(q @ q.T).symmetric  # not bitwise symmetric after a matmul
    assert not DenseOperator(q).symmetric
    assert not DenseOperator(torch.randn(3, 4, dtype=F64)).symmetric


def test_diagonal_operator():
    d = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    op = DiagonalOperator(d)
    assert op.symmetric and op.positive_definite
    torch.testing.assert_close(op.mv(torch.ones(3, 2, dtype=F64)), torch.diag(d) @ torch.ones(3, 2, dtype=F64))
    assert not DiagonalOperator(-d).positive_definite


def test_function_operator_checks_what_the_function_returns():
    op = FunctionOperator(lambda x: x[:2], (3, 3))
    with pytest.raises(ValueError, match=r"returned \(2,\) for an input of shape \(3,\); expected \(3,\)"):
        op.mv(torch.ones(3, dtype=F64))
    with pytest.raises(NotImplementedError, match="no transpose product"):
        FunctionOperator(lambda x: x, (3, 3)).rmv(torch.ones(3, dtype=F64))


@pytest.mark.parametrize("bad,message", [
    (lambda x: x, "a callable has no shape; wrap it as FunctionOperator"),
    ("matrix", "cannot make a linear operator from str"),
    ([[1.0, 2.0]], "cannot make a linear operator from list"),
])
def test_as_operator_rejects_what_it_cannot_wrap(bad, message):
    with pytest.raises(ValueError, match=message):
        as_operator(bad)


def test_as_operator_keeps_operators_and_refuses_tags_on_them():
    op = as_operator(torch.eye(3, dtype=F64))
    assert as_operator(op) is op
    with pytest.raises(ValueError, match="structure tags apply to new operators"):
        as_operator(op, symmetric=True)


# PoissonGrid ------------------------------------------------------------------------------------------------------

def assembled_by_hand(shape, boundary, solid, h=1.0):
    """The same operator, built by visiting every cell and its 2d neighbours (independent of PoissonGrid's code)."""
    dim = len(shape)
    n = int(np.prod(shape))
    A = np.zeros((n, n))
    index = lambda c: int(np.ravel_multi_index(c, shape))  # noqa: E731
    for cell in np.ndindex(*shape):
        i = index(cell)
        if solid[cell]:
            A[i, i] = 1.0
            continue
        for axis in range(dim):
            for side, step in ((0, -1), (1, 1)):
                nb = list(cell)
                nb[axis] += step
                if 0 <= nb[axis] < shape[axis]:
                    if not solid[tuple(nb)]:
                        A[i, i] += 1.0
                        A[i, index(nb)] -= 1.0
                elif boundary[axis][side] == "dirichlet":
                    A[i, i] += 1.0
        if A[i, i] == 0:  # a fluid cell walled in on every side
            A[i, i] = 1.0
    return A / h ** 2


CASES = [
    ((6, 7), "neumann", None),
    ((6, 7), "dirichlet", None),
    ((8, 5), ("neumann", ("neumann", "dirichlet")), "block"),
    ((4, 5, 3), (("dirichlet", "neumann"), "neumann", "neumann"), "block"),
    ((5, 5), "dirichlet", "walled-in"),
]


def _solid(shape, kind):
    solid = np.zeros(shape, dtype=bool)
    if kind == "block":
        solid[(slice(1, 3),) * len(shape)] = True
    elif kind == "walled-in":
        solid[1:4, 1:4] = True
        solid[2, 2] = False  # a fluid cell with solid on all four sides
    return solid


@pytest.mark.parametrize("shape,boundary,solid_kind", CASES)
def test_poisson_grid_matches_a_hand_assembled_matrix(shape, boundary, solid_kind):
    solid = _solid(shape, solid_kind)
    op = PoissonGrid(shape, boundary=boundary, solid=solid, spacing=0.5)
    parsed = op.boundary
    A = torch.from_numpy(assembled_by_hand(shape, parsed, solid, h=0.5))
    n = A.shape[0]
    g = torch.Generator().manual_seed(0)
    x, X = torch.randn(n, dtype=F64, generator=g), torch.randn(n, 3, dtype=F64, generator=g)
    torch.testing.assert_close(op.mv(x), A @ x)
    torch.testing.assert_close(op.mv(X), A @ X)
    torch.testing.assert_close(op.to_dense(), A)
    torch.testing.assert_close(op.diagonal(), A.diagonal())
    assert op.symmetric
    eig = torch.linalg.eigvalsh(A)
    # SPD exactly when some fluid region touches an open face; otherwise singular with the constants null
    assert op.singular == bool(eig[0] < 1e-10)
    assert op.positive_definite == (not op.singular)
    z = op.nullspace()
    assert z.shape[1] == int((eig < 1e-10).sum())
    if z.shape[1]:
        torch.testing.assert_close(A @ z, torch.zeros_like(z), atol=1e-12, rtol=0)


def test_poisson_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="shape must be 2 or 3 positive sizes"):
        PoissonGrid((5,))
    with pytest.raises(ValueError, match="unknown boundary kind 'periodic'"):
        PoissonGrid((4, 4), boundary="periodic")
    with pytest.raises(ValueError, match=r"boundary needs one entry per axis \(2\), got 3"):
        PoissonGrid((4, 4), boundary=["neumann"] * 3)
    with pytest.raises(ValueError, match=r"the solid mask has shape \(3, 4\), the grid \(4, 4\)"):
        PoissonGrid((4, 4), solid=np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="every cell is solid"):
        PoissonGrid((2, 2), solid=np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="expected a vector of 16 cells"):
        PoissonGrid((4, 4)).mv(torch.ones(15, dtype=F64))

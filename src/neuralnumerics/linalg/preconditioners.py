"""Preconditioners: operators that approximate ``A^{-1}``, for the ``M=`` slot of :func:`linear_solve`."""

from __future__ import annotations

import math

import numpy as np
import torch

from .operators import DiagonalOperator, LinearOperator, as_operator

__all__ = ["Jacobi", "IncompleteCholesky", "AMG"]


def Jacobi(op) -> DiagonalOperator:  # noqa: N802 - reads as a class at the call site
    """``diag(A)^{-1}``.

    Raises:
        ValueError: when a diagonal entry is zero or not finite.
    """
    op = as_operator(op)
    d = op.diagonal()
    bad = (d == 0) | ~torch.isfinite(d)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"Jacobi: the diagonal has {int(bad.sum())} zero or non-finite entries (first at {i}); "
                         "the Jacobi preconditioner needs a nonzero diagonal")
    return DiagonalOperator(1.0 / d)


class _ScipyBacked(LinearOperator):
    """An operator applied through NumPy/SciPy on the CPU (vectors on other devices are moved there and back)."""

    def _numpy_apply(self, r: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        xn = x.detach().cpu().numpy()
        if xn.ndim == 1:
            y = self._numpy_apply(xn)
        else:
            y = np.stack([self._numpy_apply(xn[:, j]) for j in range(xn.shape[1])], axis=1)
        return torch.from_numpy(np.ascontiguousarray(y)).to(dtype=x.dtype, device=x.device)


class IncompleteCholesky(_ScipyBacked):
    """Zero fill-in incomplete Cholesky, ``M = (L L^T)^{-1}`` with ``L`` on the pattern of ``tril(A)``.

    When a pivot is not positive (IC(0) exists for M-matrices, not for every SPD matrix) the
    factorisation is retried on ``A + s diag(A)`` with ``s`` = 1e-3, 1e-2, ... (Manteuffel's shift);
    ``shift`` records the one used. The factorisation is a plain loop over rows (a small implementation,
    fine up to ~10^5 unknowns); applications are two sparse triangular solves on the CPU.

    Args:
        op: an SPD operator that can be assembled (``op.to_scipy()``).

    References:
        Meijerink, van der Vorst. "An iterative solution method for linear systems of which the
        coefficient matrix is a symmetric M-matrix", Math. Comp. 31 (1977).
    """

    def __init__(self, op) -> None:
        op = as_operator(op)
        if not op.is_square:
            raise ValueError(f"IncompleteCholesky needs a square operator, got {op.shape}")
        super().__init__(op.shape, op.dtype, op.device, symmetric=True, positive_definite=True)
        import scipy.sparse as sp

        A = sp.csr_matrix(op.to_scipy(), dtype=np.float64)
        lower = sp.tril(A, format="csr")
        lower.sort_indices()
        diag = A.diagonal()
        if (diag <= 0).any():
            raise ValueError("IncompleteCholesky: the matrix has non-positive diagonal entries; it is not SPD")
        self.shift = 0.0
        for shift in (0.0, 1e-3, 1e-2, 1e-1, 1.0):
            values = _ic0(lower.indptr, lower.indices, lower.data + shift * _diag_mask(lower) * diag[_rows(lower)])
            if values is not None:
                self.shift = shift
                break
        else:
            raise ValueError("IncompleteCholesky: the factorisation broke down even with a diagonal shift of "
                             "diag(A); the matrix is probably not SPD")
        self.L = sp.csr_matrix((values, lower.indices.copy(), lower.indptr.copy()), shape=A.shape)
        # SuperLU on the triangular factor in its natural order, without pivoting, reproduces L (no fill-in);
        # its compiled triangular solves are ~10x faster than scipy's spsolve_triangular
        from scipy.sparse.linalg import splu

        self._lu = splu(self.L.tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0,
                        options={"SymmetricMode": False})

    def _numpy_apply(self, r):
        y = self._lu.solve(np.asarray(r, dtype=np.float64))
        return self._lu.solve(y, trans="T")


def _rows(m) -> np.ndarray:
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def _diag_mask(m) -> np.ndarray:
    return (_rows(m) == m.indices).astype(np.float64)


def _ic0(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> np.ndarray | None:
    """IC(0) of the lower triangle given in sorted CSR; None when a pivot is not positive."""
    n = len(indptr) - 1
    ptr, idx, val = indptr.tolist(), indices.tolist(), data.tolist()
    out = [0.0] * len(val)
    rows: list[dict[int, float]] = [dict() for _ in range(n)]  # row i of L: column -> value
    for i in range(n):
        row = rows[i]
        for p in range(ptr[i], ptr[i + 1]):
            k = idx[p]
            if k < i:
                rk = rows[k]
                s = val[p]
                # sum_{j<k} L[i, j] L[k, j] over the shared pattern
                if len(row) < len(rk):
                    s -= sum(v * rk[j] for j, v in row.items() if j in rk and j < k)
                else:
                    s -= sum(v * row[j] for j, v in rk.items() if j in row and j < k)
                lij = s / rk[k]
                row[k] = lij
                out[p] = lij
            elif k == i:
                s = val[p] - sum(v * v for v in row.values())
                if not s > 0 or not math.isfinite(s):
                    return None
                d = math.sqrt(s)
                row[i] = d
                out[p] = d
    return np.asarray(out)


class AMG(_ScipyBacked):
    """One algebraic-multigrid V-cycle (PyAMG smoothed aggregation) as a preconditioner.

    Needs the optional dependency PyAMG (``pip install pyamg`` or ``neuralnumerics[amg]``).

    Args:
        op: an operator that can be assembled (``op.to_scipy()``); SPD for use inside CG.
        **kwargs: passed to ``pyamg.smoothed_aggregation_solver``.
    """

    def __init__(self, op, **kwargs) -> None:
        try:
            import pyamg
        except ImportError as exc:
            raise ImportError("AMG needs PyAMG: pip install pyamg (or neuralnumerics[amg])") from exc
        op = as_operator(op)
        super().__init__(op.shape, op.dtype, op.device, symmetric=op.symmetric, positive_definite=op.positive_definite)
        self.hierarchy = pyamg.smoothed_aggregation_solver(op.to_scipy().tocsr(), **kwargs)
        self._precond = self.hierarchy.aspreconditioner(cycle="V")

    def _numpy_apply(self, r):
        return self._precond.matvec(r)

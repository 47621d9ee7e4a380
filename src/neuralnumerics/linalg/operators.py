"""Linear operators: a shape, a dtype, a device, a matrix-vector product and structure tags.

Every solver in :mod:`neuralnumerics.linalg` takes a :class:`LinearOperator`; :func:`as_operator`
wraps what users have (dense tensors or arrays, torch sparse CSR/COO, SciPy sparse matrices) and
:class:`FunctionOperator` wraps a matrix-free callable. Vectors are tensors of shape ``(n,)``; a batch
of right-hand sides is ``(n, k)`` (one system per column).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

__all__ = ["LinearOperator", "DenseOperator", "SparseOperator", "FunctionOperator", "DiagonalOperator",
           "as_operator"]


class LinearOperator:
    """A linear map ``R^n -> R^m`` known through its action.

    Subclasses implement :meth:`mv`; the rest has defaults. Structure tags are promises made by whoever
    builds the operator (they are not checked, except where a check is cheap): solvers that need them
    (CG needs ``symmetric`` and ``positive_definite``) refuse operators without them.

    Attributes:
        shape: ``(m, n)``.
        dtype, device: of the vectors the operator acts on.
        symmetric: ``A == A^T``.
        positive_definite: ``x^T A x > 0`` for ``x != 0`` (with ``symmetric``: SPD).
    """

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str, *,
                 symmetric: bool = False, positive_definite: bool = False) -> None:
        m, n = (int(s) for s in shape)
        if m < 1 or n < 1:
            raise ValueError(f"a linear operator needs a positive shape, got {tuple(shape)}")
        self.shape = (m, n)
        self.dtype = dtype
        self.device = torch.device(device)
        self.symmetric = bool(symmetric)
        self.positive_definite = bool(positive_definite)

    # -- the action ---------------------------------------------------------------------------------------
    def mv(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x`` of shape ``(n,)`` or ``(n, k)``."""
        raise NotImplementedError

    def rmv(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T x``; free for symmetric operators, otherwise up to the subclass."""
        if self.symmetric:
            return self.mv(x)
        raise NotImplementedError(f"{type(self).__name__} has no transpose product (rmv)")

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mv(x)

    # -- derived quantities ---------------------------------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """The matrix, shape ``(m, n)``, by applying the operator to the identity (``n`` products)."""
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self.mv(eye)

    def diagonal(self) -> torch.Tensor:
        """The main diagonal, shape ``(min(m, n),)``."""
        return self.to_dense().diagonal()

    def to_scipy(self):
        """The matrix as a SciPy CSR matrix (dense operators are converted, matrix-free ones assembled)."""
        import scipy.sparse as sp

        return sp.csr_matrix(self.to_dense().cpu().numpy())

    @property
    def is_square(self) -> bool:
        return self.shape[0] == self.shape[1]

    def __repr__(self) -> str:
        tags = [t for t in ("symmetric", "positive_definite") if getattr(self, t)]
        return (f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device}"
                + (f", {', '.join(tags)}" if tags else "") + ")")


class DenseOperator(LinearOperator):
    """A dense matrix, shape ``(m, n)``."""

    def __init__(self, matrix: torch.Tensor, *, symmetric: bool | None = None,
                 positive_definite: bool = False) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
            raise ValueError(f"DenseOperator needs a 2D tensor, got {_describe(matrix)}")
        if not matrix.is_floating_point():
            matrix = matrix.to(torch.get_default_dtype())
        if symmetric is None:  # cheap to check for a dense matrix: equal to its transpose up to rounding
            tol = 100 * torch.finfo(matrix.dtype).eps * float(matrix.abs().max()) if matrix.numel() else 0.0
            symmetric = matrix.shape[0] == matrix.shape[1] and bool((matrix - matrix.mT).abs().max() <= tol)
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device, symmetric=symmetric,
                         positive_definite=positive_definite)
        self.matrix = matrix

    def mv(self, x):
        return self.matrix @ x

    def rmv(self, x):
        return self.matrix.mT @ x

    def to_dense(self):
        return self.matrix

    def diagonal(self):
        return self.matrix.diagonal()


class SparseOperator(LinearOperator):
    """A torch sparse matrix (stored in CSR; COO input is converted), shape ``(m, n)``."""

    def __init__(self, matrix: torch.Tensor, *, symmetric: bool = False, positive_definite: bool = False) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
            raise ValueError(f"SparseOperator needs a 2D sparse tensor, got {_describe(matrix)}")
        if matrix.layout == torch.sparse_coo:
            matrix = matrix.coalesce().to_sparse_csr()
        elif matrix.layout != torch.sparse_csr:
            raise ValueError(f"SparseOperator needs a sparse CSR or COO tensor, got layout {matrix.layout}")
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device, symmetric=symmetric,
                         positive_definite=positive_definite)
        self.matrix = matrix
        self._transpose: torch.Tensor | None = None

    @classmethod
    def from_scipy(cls, matrix, *, dtype: torch.dtype | None = None, device=None, **tags) -> "SparseOperator":
        """From a SciPy sparse matrix or array (any format); float64 unless ``dtype`` says otherwise."""
        csr = matrix.tocsr()
        csr.sum_duplicates()
        dtype = dtype or (torch.float64 if not np.issubdtype(csr.dtype, np.floating) else
                          torch.from_numpy(np.zeros(0, dtype=csr.dtype)).dtype)
        with warnings.catch_warnings():  # torch says once that CSR support is "beta"; it is what we need here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            t = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                        torch.from_numpy(csr.indices.astype(np.int64)),
                                        torch.from_numpy(csr.data).to(dtype), size=csr.shape,
                                        check_invariants=True)
        return cls(t.to(device) if device is not None else t, **tags)

    def mv(self, x):
        if x.ndim == 1:
            return (self.matrix @ x[:, None])[:, 0]
        return self.matrix @ x

    def rmv(self, x):
        if self.symmetric:
            return self.mv(x)
        if self._transpose is None:
            self._transpose = self.matrix.to_sparse_coo().t().coalesce().to_sparse_csr()
        return (self._transpose @ x[:, None])[:, 0] if x.ndim == 1 else self._transpose @ x

    def to_dense(self):
        return self.matrix.to_dense()

    def diagonal(self):
        crow, col, val = self.matrix.crow_indices(), self.matrix.col_indices(), self.matrix.values()
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), crow.diff())
        on_diag = rows == col
        out = torch.zeros(min(self.shape), dtype=self.dtype, device=self.device)
        return out.index_put_((rows[on_diag],), val[on_diag], accumulate=True)

    def to_scipy(self):
        import scipy.sparse as sp

        m = self.matrix.cpu()
        return sp.csr_matrix((m.values().numpy(), m.col_indices().numpy(), m.crow_indices().numpy()),
                             shape=self.shape)


class FunctionOperator(LinearOperator):
    """A matrix-free operator from a callable ``fn(x) -> A x`` (and optionally ``rfn(x) -> A^T x``).

    ``fn`` must accept ``(n,)`` vectors; a batch ``(n, k)`` is applied column by column unless
    ``batched=True`` says ``fn`` handles it.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int], *,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                 rfn: Callable[[torch.Tensor], torch.Tensor] | None = None, batched: bool = False,
                 symmetric: bool = False, positive_definite: bool = False) -> None:
        if not callable(fn):
            raise ValueError(f"FunctionOperator needs a callable, got {type(fn).__name__}")
        super().__init__(shape, dtype, device, symmetric=symmetric, positive_definite=positive_definite)
        self.fn, self.rfn, self.batched = fn, rfn, bool(batched)

    def _apply(self, fn, x, rows):
        if x.ndim == 2 and not self.batched:
            y = torch.stack([fn(c) for c in x.unbind(1)], dim=1)
        else:
            y = fn(x)
        if not isinstance(y, torch.Tensor) or y.shape != (rows, *x.shape[1:]):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"the operator's function returned {got} for an input of shape {tuple(x.shape)}; "
                             f"expected {(rows, *x.shape[1:])}")
        return y

    def mv(self, x):
        return self._apply(self.fn, x, self.shape[0])

    def rmv(self, x):
        if self.rfn is not None:
            return self._apply(self.rfn, x, self.shape[1])
        return super().rmv(x)


class DiagonalOperator(LinearOperator):
    """``diag(d)``: a diagonal matrix, also the Jacobi preconditioner's form."""

    def __init__(self, d: torch.Tensor, *, positive_definite: bool | None = None) -> None:
        if not isinstance(d, torch.Tensor) or d.ndim != 1:
            raise ValueError(f"DiagonalOperator needs a 1D tensor, got {_describe(d)}")
        pd = bool((d > 0).all()) if positive_definite is None else positive_definite
        super().__init__((d.numel(), d.numel()), d.dtype, d.device, symmetric=True, positive_definite=pd)
        self.d = d

    def mv(self, x):
        return self.d * x if x.ndim == 1 else self.d[:, None] * x

    def diagonal(self):
        return self.d

    def to_dense(self):
        return torch.diag(self.d)


def as_operator(a, **tags) -> LinearOperator:
    """Wrap ``a`` as a :class:`LinearOperator`.

    Accepts a :class:`LinearOperator` (returned as is; ``tags`` must then be empty), a dense tensor or
    NumPy array, a torch sparse CSR/COO tensor, or a SciPy sparse matrix/array. ``tags`` are
    ``symmetric=`` and ``positive_definite=``.

    Raises:
        ValueError: for anything else (a bare callable needs :class:`FunctionOperator` and a shape).
    """
    if isinstance(a, LinearOperator):
        if tags:
            raise ValueError("as_operator: structure tags apply to new operators; set them on the "
                             f"{type(a).__name__} itself")
        return a
    if isinstance(a, torch.Tensor):
        if a.layout in (torch.sparse_csr, torch.sparse_coo):
            return SparseOperator(a, **tags)
        return DenseOperator(a, **tags)
    if isinstance(a, np.ndarray):
        return DenseOperator(torch.from_numpy(np.ascontiguousarray(a)), **tags)
    try:
        import scipy.sparse as sp

        if sp.issparse(a):
            return SparseOperator.from_scipy(a, **tags)
    except ImportError:  # pragma: no cover - scipy is a hard dependency
        pass
    if callable(a):
        raise ValueError("as_operator: a callable has no shape; wrap it as FunctionOperator(fn, shape=(m, n))")
    raise ValueError(f"as_operator: cannot make a linear operator from {_describe(a)}; pass a tensor, a NumPy "
                     "array, a SciPy sparse matrix or a LinearOperator")


def _describe(a) -> str:
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return f"{type(a).__name__} of shape {tuple(a.shape)}"
    return type(a).__name__

"""Matrix-free Poisson operators on cell grids, as fluid pressure projection produces them."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .operators import LinearOperator

__all__ = ["PoissonGrid"]

_KINDS = ("dirichlet", "neumann")


class PoissonGrid(LinearOperator):
    """The negative Laplacian ``-∇²`` on a 2D or 3D cell-centred grid, matrix free (5/7-point stencil).

    Unknowns are the cells of the grid in C order (``x.reshape(shape)``). Between two fluid cells the
    stencil couples them; a face to a solid cell is a wall (``dp/dn = 0``, the face drops out); a face
    on the domain boundary is a wall (``"neumann"``) or open (``"dirichlet"``, ``p = 0`` on the face:
    the ghost value is 0, so the face adds 1 to the diagonal). Solid cells are not unknowns of the
    physical problem: their rows are the identity times ``1/h^2`` (and a right-hand side that is 0 there keeps them
    at 0), which keeps the operator symmetric and the vector layout that of the grid.

    With a Dirichlet face somewhere in every connected fluid region the operator is symmetric positive
    definite. Without one (a closed box) it is singular, with the constants on each region in its null
    space: ``singular`` is then True and solvers treat the system as consistent when the right-hand
    side sums to zero on each region (see :meth:`project_out_nullspace`).

    Args:
        shape: cells per axis, ``(nx, ny)`` or ``(nx, ny, nz)``.
        boundary: ``"neumann"`` or ``"dirichlet"`` for every face, or one entry per axis, each a kind or a
            ``(low, high)`` pair of kinds (e.g. a smoke tank open at the top: ``("neumann", ("neumann",
            "dirichlet"))``).
        solid: optional boolean mask of shape ``shape``, True on obstacle cells.
        spacing: cell size ``h`` (scalar); the operator is scaled by ``1 / h^2``.
        dtype, device: of the vectors.

    Equivalent to assembling the matrix with :meth:`to_scipy` and multiplying.
    """

    def __init__(self, shape: Sequence[int], *, boundary="neumann", solid: torch.Tensor | np.ndarray | None = None,
                 spacing: float = 1.0, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"PoissonGrid: shape must be 2 or 3 positive sizes, got {shape}")
        if not (np.isfinite(spacing) and spacing > 0):
            raise ValueError(f"PoissonGrid: spacing must be positive, got {spacing}")
        self.grid_shape = shape
        self.boundary = _parse_boundary(boundary, len(shape))
        if solid is None:
            solid_t = torch.zeros(shape, dtype=torch.bool, device=device)
        else:
            solid_t = torch.as_tensor(np.asarray(solid) if not isinstance(solid, torch.Tensor) else solid,
                                      device=device).to(torch.bool)
            if tuple(solid_t.shape) != shape:
                raise ValueError(f"PoissonGrid: the solid mask has shape {tuple(solid_t.shape)}, the grid {shape}")
        self.solid = solid_t
        if bool(solid_t.all()):
            raise ValueError("PoissonGrid: every cell is solid; there is nothing to solve for")
        n = int(np.prod(shape))
        super().__init__((n, n), dtype, device, symmetric=True, positive_definite=True)
        self.spacing = float(spacing)
        fluid = (~solid_t).to(dtype)
        # face weights between neighbours along each axis: 1 where both cells are fluid
        self._faces = []
        diag = torch.zeros(shape, dtype=dtype, device=device)
        for axis in range(len(shape)):
            lo = fluid.narrow(axis, 0, shape[axis] - 1)
            hi = fluid.narrow(axis, 1, shape[axis] - 1)
            w = lo * hi
            self._faces.append(w)
            diag += _pad_axis(w, axis, 0, 1) + _pad_axis(w, axis, 1, 0)
            for side, kind in enumerate(self.boundary[axis]):
                if kind == "dirichlet":
                    index = 0 if side == 0 else shape[axis] - 1
                    face = torch.zeros_like(diag)
                    face.select(axis, index).copy_(fluid.select(axis, index))
                    diag += face
        self._isolated = (diag == 0) & ~solid_t  # fluid cells with no coupling at all
        diag = torch.where(solid_t | self._isolated, torch.ones_like(diag), diag)
        self._diag = diag
        self._scale = 1.0 / self.spacing ** 2
        # the 1/h^2 factor folded into the stencil once
        self._scaled_diag = diag * self._scale
        self._scaled_faces = [w * self._scale for w in self._faces]
        self.singular = self._find_singular()
        self.positive_definite = not self.singular

    # -- action --------------------------------------------------------------------------------------------
    def mv(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[1:] if x.ndim == 2 else ()
        if x.shape[0] != self.shape[0] or x.ndim not in (1, 2):
            raise ValueError(f"PoissonGrid: expected a vector of {self.shape[0]} cells (or (n, k)), "
                             f"got shape {tuple(x.shape)}")
        g = x.reshape(*self.grid_shape, *batch)
        extra = (None,) * len(batch)
        y = self._scaled_diag[(...,) + extra] * g
        for axis, w in enumerate(self._scaled_faces):
            wb = w[(...,) + extra]
            m = self.grid_shape[axis] - 1
            y.narrow(axis, 0, m).addcmul_(wb, g.narrow(axis, 1, m), value=-1.0)
            y.narrow(axis, 1, m).addcmul_(wb, g.narrow(axis, 0, m), value=-1.0)
        return y.reshape(x.shape)

    def diagonal(self) -> torch.Tensor:
        return (self._diag * self._scale).reshape(-1)

    # -- assembly (for tests, direct solvers and AMG) ---------------------------------------------------------
    def to_scipy(self):
        import scipy.sparse as sp

        shape = self.grid_shape
        idx = np.arange(int(np.prod(shape))).reshape(shape)
        rows, cols, vals = [idx.ravel()], [idx.ravel()], [self._diag.cpu().numpy().ravel()]
        for axis, w in enumerate(self._faces):
            wn = w.cpu().numpy()
            a = np.take(idx, range(0, shape[axis] - 1), axis=axis)[wn > 0]
            b = np.take(idx, range(1, shape[axis]), axis=axis)[wn > 0]
            rows += [a, b]
            cols += [b, a]
            vals += [-np.ones(a.size), -np.ones(a.size)]
        m = sp.coo_matrix((np.concatenate(vals) * self._scale, (np.concatenate(rows), np.concatenate(cols))),
                          shape=self.shape)
        return m.tocsr()

    def to_dense(self) -> torch.Tensor:
        return torch.as_tensor(self.to_scipy().toarray(), dtype=self.dtype, device=self.device)

    # -- the null space of closed regions -----------------------------------------------------------------------
    def _find_singular(self) -> bool:
        """Whether some connected fluid region touches no Dirichlet face (then constants there are null)."""
        return bool(self._closed_regions(self.regions()))

    def regions(self) -> np.ndarray:
        """Connected fluid regions: labels ``1..k`` on the grid (0 on solid cells), face-connected."""
        from scipy import ndimage

        fluid = (~self.solid).cpu().numpy()
        labels, _ = ndimage.label(fluid)  # the default structure is face connectivity, the stencil's
        return labels

    def _closed_regions(self, labels: np.ndarray) -> list[int]:
        open_labels: set[int] = set()
        for axis, kinds in enumerate(self.boundary):
            for side, kind in enumerate(kinds):
                if kind == "dirichlet":
                    face = np.take(labels, 0 if side == 0 else labels.shape[axis] - 1, axis=axis)
                    open_labels.update(int(v) for v in np.unique(face) if v)
        isolated = set(int(v) for v in np.unique(labels[self._isolated.cpu().numpy()]) if v)
        return [k for k in range(1, int(labels.max()) + 1) if k not in open_labels and k not in isolated]

    def nullspace(self) -> torch.Tensor:
        """Orthonormal basis of the null space, shape ``(n, r)`` (``r = 0`` when the operator is SPD)."""
        labels = self.regions()
        closed = self._closed_regions(labels)
        flat = torch.as_tensor(labels.reshape(-1), device=self.device)
        cols = []
        for k in closed:
            v = (flat == k).to(self.dtype)
            cols.append(v / v.norm())
        if not cols:
            return torch.zeros(self.shape[0], 0, dtype=self.dtype, device=self.device)
        return torch.stack(cols, dim=1)

    def project_out_nullspace(self, b: torch.Tensor) -> torch.Tensor:
        """``b`` minus its component in the null space (makes a closed-box system consistent)."""
        z = self.nullspace()
        if z.shape[1] == 0:
            return b
        return b - z @ (z.mT @ b)


def _pad_axis(t: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    shape = list(t.shape)
    parts = []
    if before:
        shape_b = shape.copy()
        shape_b[axis] = before
        parts.append(torch.zeros(shape_b, dtype=t.dtype, device=t.device))
    parts.append(t)
    if after:
        shape_a = shape.copy()
        shape_a[axis] = after
        parts.append(torch.zeros(shape_a, dtype=t.dtype, device=t.device))
    return torch.cat(parts, dim=axis)


def _parse_boundary(boundary, dim: int) -> list[tuple[str, str]]:
    def kind(k) -> str:
        if not isinstance(k, str) or k.lower() not in _KINDS:
            raise ValueError(f"PoissonGrid: unknown boundary kind {k!r}; use 'neumann' (wall) or 'dirichlet' (open)")
        return k.lower()

    if isinstance(boundary, str):
        return [(kind(boundary), kind(boundary))] * dim
    boundary = list(boundary)
    if len(boundary) != dim:
        raise ValueError(f"PoissonGrid: boundary needs one entry per axis ({dim}), got {len(boundary)}")
    out = []
    for entry in boundary:
        if isinstance(entry, str):
            out.append((kind(entry), kind(entry)))
        else:
            lo, hi = entry
            out.append((kind(lo), kind(hi)))
    return out

"""Linear finite elements for hyperelastic solids: triangles (2D) and tetrahedra (3D), static equilibrium by
projected Newton.

The deformation is piecewise affine: in each element the deformation gradient is ``F = D_s D_m^{-1}``, with
``D_m`` the element's edge vectors at rest and ``D_s`` the deformed ones, and the elastic energy is
``sum_e vol_e Psi(F_e)`` for an energy density ``Psi`` of :mod:`neuralnumerics.pde.hyperelastic`. Its
gradient is taken by autograd; its Hessian is assembled from per-element Hessians ``B^T (d^2 Psi / dF^2) B``
(``B`` the linear map from an element's vertex positions to ``vec F``), each projected to its positive
semidefinite part (clamped eigenvalues), so that every Newton system is symmetric positive definite and is
solved by preconditioned CG (:func:`neuralnumerics.linalg.linear_solve`). Dirichlet vertices are
eliminated. A backtracking line search on the energy makes each step a descent step.

References:
    Teran, Sifakis, Irving, Fedkiw. "Robust quasistatic finite elements and flesh simulation", SCA 2005
    (the projection of element Hessians).
    Sifakis, Barbic. "FEM simulation of 3D deformable solids", SIGGRAPH course notes 2012.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.func import hessian, vmap

from ..pde.bodies import check_mesh
from ..pde.obstacles import penalty_density

__all__ = ["rectangle_mesh", "box_mesh", "ElasticFEM", "StaticResult"]


def rectangle_mesh(nx: int, ny: int, lo=(-1.0, -1.0), hi=(1.0, 1.0), *, crossed: bool = False,
                   dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A structured triangulation of a rectangle: ``(nx+1)(ny+1)`` vertices and ``2 nx ny`` triangles, or with
    ``crossed`` a vertex more at each cell's centre and four triangles per cell.

    Linear triangles lock on nearly incompressible materials (a large volume weight): the plain pattern
    then converges slowly under refinement. The crossed ("criss-cross") pattern has enough divergence-free
    deformations to avoid most of that, at twice the vertices per cell.

    Returns:
        ``(vertices (V, 2), triangles (E, 3) int64)``, triangles counter-clockwise (positive area).

    Raises:
        ValueError: ``nx`` or ``ny`` below 1, or an empty rectangle.
    """
    if nx < 1 or ny < 1:
        raise ValueError(f"rectangle_mesh: nx and ny must be at least 1, got {nx} and {ny}")
    if not (hi[0] > lo[0] and hi[1] > lo[1]):
        raise ValueError(f"rectangle_mesh: hi {hi} must exceed lo {lo} in both coordinates")
    xs = torch.linspace(lo[0], hi[0], nx + 1, dtype=dtype)
    ys = torch.linspace(lo[1], hi[1], ny + 1, dtype=dtype)
    X, Y = torch.meshgrid(xs, ys, indexing="ij")
    vertices = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    idx = torch.arange((nx + 1) * (ny + 1)).reshape(nx + 1, ny + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    if not crossed:
        tris = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
        return vertices, tris
    centres = 0.25 * (vertices[a] + vertices[b] + vertices[c] + vertices[d]).reshape(-1, 2)
    m = (vertices.shape[0] + torch.arange(nx * ny)).reshape(nx, ny)
    tris = torch.cat([torch.stack([p, q, m], -1).reshape(-1, 3) for p, q in ((a, b), (b, c), (c, d), (d, a))])
    return torch.cat([vertices, centres]), tris


def box_mesh(nx: int, ny: int, nz: int, lo=(-1.0, -1.0, -1.0), hi=(1.0, 1.0, 1.0), *,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A structured tetrahedral mesh of a box: ``(nx+1)(ny+1)(nz+1)`` vertices, ``6 nx ny nz`` tetrahedra.

    Each cube is cut into six tetrahedra around its main diagonal (the Freudenthal/Kuhn subdivision), which
    fits conformingly across neighbouring cubes; every tetrahedron is positively oriented.

    Returns:
        ``(vertices (V, 3), tetrahedra (E, 4) int64)``.

    Raises:
        ValueError: a count below 1 or an empty box.
    """
    if min(nx, ny, nz) < 1:
        raise ValueError(f"box_mesh: nx, ny and nz must be at least 1, got {nx}, {ny}, {nz}")
    if not all(h > lo_ for lo_, h in zip(lo, hi)):
        raise ValueError(f"box_mesh: hi {hi} must exceed lo {lo} in every coordinate")
    axes = [torch.linspace(lo[k], hi[k], n + 1, dtype=dtype) for k, n in enumerate((nx, ny, nz))]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    idx = torch.arange(grid.shape[0]).reshape(nx + 1, ny + 1, nz + 1)
    corner = idx[:-1, :-1, :-1].reshape(-1)
    step = {0: (ny + 1) * (nz + 1), 1: nz + 1, 2: 1}
    tets = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        # the path corner -> +e_a -> +e_a+e_b -> opposite corner along the axes in the order `perm`
        v0 = corner
        v1 = v0 + step[perm[0]]
        v2 = v1 + step[perm[1]]
        v3 = v2 + step[perm[2]]
        tets.append(torch.stack([v0, v1, v2, v3], 1))
    tets = torch.cat(tets)
    x = grid[tets]
    vol = torch.linalg.det((x[:, 1:] - x[:, :1]).mT)
    flip = vol < 0
    tets[flip] = tets[flip][:, [0, 2, 1, 3]]
    return grid, tets


@dataclass
class StaticResult:
    """The outcome of :meth:`ElasticFEM.solve_static`.

    Attributes:
        q: ``(V, d)`` deformed vertex positions.
        energy: the final elastic energy.
        gradient_norm: the final norm of the energy gradient over the free vertices.
        iterations: Newton iterations taken.
        converged: whether ``gradient_norm <= tol`` was reached.
        history: the gradient norm before each iteration and at the end.
    """

    q: torch.Tensor
    energy: float
    gradient_norm: float
    iterations: int
    converged: bool
    history: list = field(default_factory=list)


class ElasticFEM:
    """A hyperelastic body meshed with linear triangles (2D) or tetrahedra (3D).

    Args:
        vertices: ``(V, d)`` rest positions, ``d`` = 2 or 3.
        cells: ``(E, d + 1)`` vertex indices of each element.
        density: ``density(F) -> (E,)`` energy per unit rest volume (e.g. ``arap_energy``, or ``lambda F:
            arap_energy(F) + 1e3 * volume_energy(F)``).

    Attributes:
        volumes: ``(E,)`` rest volumes (areas in 2D).
        dof: ``V d``.

    Raises:
        ValueError: wrong shapes, indices out of range, or degenerate or inverted elements (naming the
            first one).
    """

    def __init__(self, vertices: torch.Tensor, cells: torch.Tensor, density: Callable[[torch.Tensor], torch.Tensor]):
        vertices, cells, volumes = check_mesh(vertices, cells, "ElasticFEM")
        self.vertices, self.cells, self.density, self.d = vertices, cells, density, vertices.shape[1]
        Dm = self._edges(vertices)
        self.Dm_inv = torch.linalg.inv(Dm)
        self.volumes = volumes
        self.dof = vertices.numel()
        self._extra_hessian = None

    def _edges(self, q: torch.Tensor) -> torch.Tensor:
        x = q[self.cells]  # (E, d+1, d)
        return (x[:, 1:] - x[:, :1]).mT  # (E, d, d): columns are edge vectors

    def deformation_gradients(self, q: torch.Tensor) -> torch.Tensor:
        """``(E, d, d)``: ``F = D_s D_m^{-1}`` of each element for deformed positions ``q`` ``(V, d)``."""
        return self._edges(q) @ self.Dm_inv

    def energy(self, q: torch.Tensor) -> torch.Tensor:
        """The elastic energy ``sum_e vol_e Psi(F_e)`` (a scalar)."""
        return (self.volumes * self.density(self.deformation_gradients(q))).sum()

    def gradient(self, q: torch.Tensor) -> torch.Tensor:
        """``(V, d)``: the energy's gradient (the negative elastic forces)."""
        q = q.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.energy(q), q)
        return g

    def _element_matrices(self) -> torch.Tensor:
        """``B`` ``(E, d*d, d*(d+1))`` with ``vec(F) = B vec(x_e)`` (row-major vec, vertex-major dofs)."""
        E, d = self.cells.shape[0], self.d
        # F = sum_k (x_{k+1} - x_0) Dm_inv[k, :]  =>  dF_ij / dx_{a,i} = G[a, j]
        G = torch.cat([-self.Dm_inv.sum(1, keepdim=True), self.Dm_inv], 1)  # (E, d+1, d)
        B = torch.zeros(E, d, d, d + 1, d, dtype=self.Dm_inv.dtype)
        for i in range(d):
            B[:, i, :, :, i] = G.mT
        return B.reshape(E, d * d, (d + 1) * d)

    def hessian(self, q: torch.Tensor, *, project: bool = True) -> torch.Tensor:
        """The energy's Hessian as a sparse COO ``(V d, V d)`` tensor (dof ``v d + i`` is coordinate ``i`` of
        vertex ``v``); with ``project``, each element's block is replaced by its positive semidefinite part."""
        E, d = self.cells.shape[0], self.d
        F = self.deformation_gradients(q.detach())
        H_F = vmap(hessian(lambda f: self.density(f[None])[0]))(F).reshape(E, d * d, d * d)
        B = self._element_matrices()
        H = B.mT @ H_F @ B * self.volumes[:, None, None]
        if project:
            w, V = torch.linalg.eigh(0.5 * (H + H.mT))
            H = (V * w.clamp_min(0).unsqueeze(-2)) @ V.mT
        dofs = (self.cells.unsqueeze(-1) * d + torch.arange(d)).reshape(E, -1)  # (E, (d+1) d)
        k = dofs.shape[1]
        rows = dofs.unsqueeze(-1).expand(E, k, k).reshape(-1)
        cols = dofs.unsqueeze(-2).expand(E, k, k).reshape(-1)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), H.reshape(-1), (self.dof, self.dof),
                                       check_invariants=False).coalesce()

    def _free_hessian(self, q, idx, *, project: bool):
        """The Hessian's block on the free dofs ``idx`` as a SciPy CSR matrix (plus ``self._extra_hessian(q)``
        while a solve sets one)."""
        import scipy.sparse as sp

        H = self.hessian(q, project=project)
        i, j = H.indices().numpy()
        K = sp.csr_matrix((H.values().numpy(), (i, j)), shape=(self.dof, self.dof))
        if self._extra_hessian is not None:
            K = K + self._extra_hessian(q)
        return K.tocsr()[idx][:, idx]

    def _projected_step(self, q, g, free, idx, total, mu):
        """One projected-Newton step (CG with IC(0), backtracking line search); returns ``(q, mu, accepted)``
        (``mu`` passed through, unused)."""
        import numpy as np
        import scipy.sparse as sp

        from ..linalg import CG, IncompleteCholesky, SparseOperator, linear_solve

        K = self._free_hessian(q, idx, project=True)
        K = K + sp.identity(K.shape[0]) * (1e-12 * float(np.abs(K.diagonal()).max()))  # PSD -> SPD
        op = SparseOperator.from_scipy(K.tocsr(), dtype=q.dtype, symmetric=True, positive_definite=True)
        sol = linear_solve(op, -g[free], CG(rtol=1e-10, max_iters=20 * K.shape[0]), M=IncompleteCholesky(op),
                           throw=False)
        step = torch.zeros_like(g)
        step[free] = sol.x
        e0, slope, alpha = float(total(q)), float(g @ step), 1.0
        while alpha > 1e-10:
            trial = q + alpha * step.reshape(q.shape)
            if float(total(trial)) <= e0 + 1e-4 * alpha * slope:
                return trial.detach(), mu, True
            alpha *= 0.5
        return q, mu, False  # no descent left at this precision

    def _damped_step(self, q, g, free, idx, total, mu):
        """One Levenberg step ``(H + mu I) s = -g`` on the free dofs; returns ``(q, mu, accepted)``."""
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.linalg import spsolve

        K = self._free_hessian(q, idx, project=False).tocsc()
        scale = float(np.abs(K.diagonal()).max()) or 1.0
        mu = 1e-3 * scale if mu is None else mu
        gf = g[free].numpy()
        e0 = float(total(q))
        for _ in range(60):
            s = spsolve(K + mu * sp.identity(K.shape[0], format="csc"), -gf)
            if np.all(np.isfinite(s)) and float(gf @ s) < 0:
                step = torch.zeros_like(g)
                step[free] = torch.from_numpy(s).to(g.dtype)
                trial = q + step.reshape(q.shape)
                if float(total(trial)) < e0:
                    return trial.detach(), max(mu / 3, 1e-12 * scale), True
            mu *= 4
        return q, mu, False

    def solve_static(self, q0: torch.Tensor, fixed: torch.Tensor, *, tol: float = 1e-9, atol: float = 1e-12,
                     max_iters: int = 50, external: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     external_hessian=None, newton: str = "projected") -> StaticResult:
        """Static equilibrium by Newton's method on the energy.

        ``newton="projected"``: element Hessians projected to their positive semidefinite parts, CG with
        IC(0), a backtracking line search. ``newton="damped"``: the exact Hessian plus ``mu I`` (Levenberg),
        solved directly (SuperLU), ``mu`` lowered after a step that lowers the energy and raised otherwise;
        slower per step, but it follows negative curvature, which the projection discards (large stretches
        with a strong volume term converge much faster and to lower energies).

        Args:
            q0: ``(V, d)`` starting positions; the ``fixed`` vertices keep theirs (Dirichlet conditions).
            fixed: ``(V,)`` bool, the vertices held in place.
            tol, atol: stop when the gradient norm over the free dofs is at most ``tol`` times its initial
                value or at most ``atol``.
            max_iters: Newton iteration cap. The iteration also stops when the line search finds no decrease
                of the energy (rounding level reached, or no descent); it counts as converged then if the
                gradient norm is at most ``sqrt(tol)`` times its initial value (or ``atol``).
            external: optional ``external(q) -> scalar`` potential added to the elastic energy (gravity,
                penalty terms).
            external_hessian: optional ``external_hessian(q)`` -> a SciPy sparse ``(V d, V d)`` positive
                semidefinite matrix added to the elastic Hessian (the external potential's Hessian or an
                approximation of it); without it Newton becomes quasi-Newton for ``external``.

        Returns:
            A :class:`StaticResult`.
        """
        if newton not in ("projected", "damped"):
            raise ValueError(f"ElasticFEM.solve_static: newton must be 'projected' or 'damped', got {newton!r}")
        newton_step = self._projected_step if newton == "projected" else self._damped_step
        d = self.d
        free = (~fixed).repeat_interleave(d)
        idx = free.nonzero().squeeze(1).numpy()
        q = q0.detach().clone()

        def total(x):
            e = self.energy(x)
            return e + external(x) if external is not None else e

        def grad(x):
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(total(x), x)
            return g.reshape(-1)

        g = grad(q)
        g0 = float(g[free].norm()) or 1.0
        history = [float(g[free].norm())]
        it, mu, stalled = 0, None, False
        self._extra_hessian = external_hessian
        try:
            for it in range(1, max_iters + 1):
                if history[-1] <= max(tol * g0, atol):
                    it -= 1
                    break
                q, mu, accepted = newton_step(q, g, free, idx, total, mu)
                if not accepted:
                    stalled = True
                    break
                g = grad(q)
                history.append(float(g[free].norm()))
        finally:
            self._extra_hessian = None
        return StaticResult(q=q, energy=float(total(q)), gradient_norm=history[-1], iterations=it,
                            converged=history[-1] <= max(tol * g0, atol) or (stalled and history[-1] <= max(
                                math.sqrt(tol) * g0, atol)), history=history)

    def interpolate(self, q: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``(n, d)``: the piecewise-linear deformation ``q`` evaluated at rest points ``X`` ``(n, d)`` (each point in
        the element that contains it, by barycentric coordinates; points outside the mesh take the nearest
        element's extrapolation).

        Raises:
            ValueError: on points of the wrong dimension.
        """
        if X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"ElasticFEM.interpolate: points must be (n, {self.d}), got {tuple(X.shape)}")
        X = X.to(self.vertices.dtype)
        corners = self.vertices[self.cells]  # (E, d+1, d)
        out = torch.empty(X.shape[0], self.d, dtype=q.dtype)
        chunk = max(1, 2**21 // self.cells.shape[0])  # points per pass: about 2M point-element pairs
        for i in range(0, X.shape[0], chunk):
            rel = X[i:i + chunk, None, :] - corners[None, :, 0]
            lam = torch.einsum("eij,nej->nei", self.Dm_inv, rel)  # barycentric coordinates 1..d
            lam = torch.cat([1 - lam.sum(-1, keepdim=True), lam], -1)  # (n, E, d+1)
            e = lam.min(-1).values.argmax(1)  # the element the point is most inside of
            w = lam[torch.arange(lam.shape[0]), e]
            out[i:i + chunk] = (w[:, :, None] * q[self.cells[e]]).sum(1)
        return out

    def lumped_masses(self, density: float = 1.0) -> torch.Tensor:
        """``(V,)`` vertex masses: each element's mass ``density * vol_e`` shared equally by its vertices."""
        m = torch.zeros(self.vertices.shape[0], dtype=self.volumes.dtype)
        m.index_add_(0, self.cells.reshape(-1), (density * self.volumes / (self.d + 1)).repeat_interleave(self.d + 1))
        return m

    def step(self, q: torch.Tensor, v: torch.Tensor, dt: float, *, density: float = 1.0, gravity=None,
             obstacles=(), contact_stiffness: float = 1e4, fixed: torch.Tensor | None = None,
             targets: torch.Tensor | None = None, static: bool = False, tol: float = 1e-8, max_iters: int = 50,
             newton: str = "projected") -> tuple[torch.Tensor, torch.Tensor, StaticResult]:
        """One implicit-Euler step (or, with ``static``, one equilibrium solve): minimise the incremental potential

            ``sum_i m_i / (2 dt^2) |x_i - q_i - dt v_i - dt^2 g|^2 + E_elastic(x) + sum_i w_i k/2 depth_i(x)^2``

        over the positions ``x`` (lumped masses ``m_i``, vertex volumes ``w_i = m_i / density``, penalty
        contact of stiffness ``k`` per unit volume with each obstacle of :mod:`neuralnumerics.pde.obstacles`),
        by Newton's method whose Hessian holds the elastic part, the mass term and ``k w_i n n^T`` for the
        penetrating vertices. The new velocity is ``(x - q) / dt``. With ``static`` the mass term is dropped and
        gravity enters as the potential ``-sum_i m_i g . (x_i - X_i)`` (``X`` the rest positions): the result is
        the equilibrium under the given targets, starting from ``q``.

        Args:
            q, v: ``(V, d)`` positions and velocities at the start of the step.
            dt: the time step.
            density: mass per unit rest volume.
            gravity: acceleration vector (length ``d``) or None.
            obstacles: :class:`~neuralnumerics.pde.obstacles.Plane`, ``Sphere`` or ``Bowl`` instances.
            contact_stiffness: the penalty stiffness ``k``.
            fixed: ``(V,)`` bool, vertices moved to ``targets`` (or kept where they are) instead of solved for.
            targets: ``(V, d)`` positions of the fixed vertices at the end of the step.
            tol, max_iters, newton: as in :meth:`solve_static`.

        Returns:
            ``(x, v_new, result)`` with the :class:`StaticResult` of the Newton solve.
        """
        import scipy.sparse as sp

        if not (dt > 0):
            raise ValueError(f"ElasticFEM.step: dt must be positive, got {dt}")
        if q.shape != self.vertices.shape or v.shape != q.shape:
            raise ValueError(f"ElasticFEM.step: q and v must have shape {tuple(self.vertices.shape)}, got "
                             f"{tuple(q.shape)} and {tuple(v.shape)}")
        d, n = self.d, q.shape[0]
        m = self.lumped_masses(density)
        w = m / density
        g = None if gravity is None else q.new_tensor(list(gravity))
        q_hat = q if static else q + dt * v + (0 if g is None else dt * dt * g)
        fixed = torch.zeros(n, dtype=torch.bool) if fixed is None else fixed
        x0 = q_hat.clone()
        x0[fixed] = (q if targets is None else targets)[fixed]
        k = float(contact_stiffness)

        def potential(x):
            if static:
                e = x.new_zeros(()) if g is None else -(m[:, None] * (x - self.vertices) * g).sum()
            else:
                e = (m[:, None] / (2 * dt * dt) * (x - q_hat).square()).sum()
            return e + (w * penalty_density(x, obstacles, k)).sum()

        def potential_hessian(x):
            H = sp.diags(np.repeat(m.numpy() / (dt * dt) * (not static), d))
            for ob in obstacles:
                depth, normal = ob.penetration(x.detach())
                hit = (depth > 0).nonzero().squeeze(1)
                if hit.numel():
                    blocks = k * w[hit, None, None] * normal[hit, :, None] * normal[hit, None, :]
                    dofs = hit[:, None] * d + torch.arange(d)
                    rows = dofs[:, :, None].expand(-1, d, d).reshape(-1).numpy()
                    cols = dofs[:, None, :].expand(-1, d, d).reshape(-1).numpy()
                    H = H + sp.csr_matrix((blocks.reshape(-1).numpy(), (rows, cols)), shape=(n * d, n * d))
            return H

        # the absolute tolerance follows the step's force scale: at an exact answer (free fall) the gradient is
        # rounding noise of that size, not zero
        forces = float(self.gradient(q).norm()) + float((m[:, None] * v).norm()) / dt
        if g is not None:
            forces += float(m.norm() * g.norm())
        result = self.solve_static(x0, fixed, tol=tol, atol=max(1e-12, 1e-10 * forces), max_iters=max_iters,
                                   external=potential,
                                   external_hessian=potential_hessian, newton=newton)
        return result.q, (result.q - q) / dt, result

"""Stable fluids (Stam 1999) on a staggered grid: the classical baseline for INSR's 2D incompressible flow.

A :class:`StableFluids2D` stores the velocity of a 2D inviscid incompressible fluid on a MAC grid of
square cells: the x-component ``u`` at the centres of the cell faces normal to x, the y-component ``v``
at the centres of the faces normal to y. One step is the textbook splitting

1. advection: every face value is carried along the flow by a semi-Lagrangian step, a second-order
   (midpoint, RK2) backtrace through the current velocity and bilinear interpolation of the staggered
   component at its foot;
2. boundary conditions: zero normal velocity on the box walls and on every face of a solid cell;
3. projection: the pressure Poisson equation is solved (conjugate gradients on
   :class:`~neuralnumerics.linalg.PoissonGrid`) and the pressure gradient is subtracted, so the discrete
   divergence of every fluid cell vanishes to the solver's tolerance.

No viscosity, no forcing and no inflow (the box is closed): the semi-Lagrangian step is the only
(numerical) dissipation. The state costs ``(nx + 1) ny + nx (ny + 1) + nx ny`` floats (``u``, ``v`` and
the pressure kept to warm-start the next solve), the quantity the INSR paper puts on the memory axis when
it compares a neural field with a grid of equal size.

Conventions: every 2D array is indexed ``[i_x, i_y]`` (first axis x), so ``u`` has shape ``(nx + 1, ny)``,
``v`` ``(nx, ny + 1)`` and cell quantities ``(nx, ny)``; flattened in C order this is the unknown order of
:class:`~neuralnumerics.linalg.PoissonGrid` of shape ``(nx, ny)``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch

from .._status import Status, StepDivergedError
from ..linalg.cg import CG, NotPositiveDefiniteError
from ..linalg.preconditioners import IncompleteCholesky
from ..linalg.solve import LinearSolveError, LinearSolver, Solution, linear_solve
from ..linalg.stencil import PoissonGrid

__all__ = ["StableFluids2D"]

SOLVERS: dict[str, str] = {
    "pcg": "conjugate gradients preconditioned with zero fill-in incomplete Cholesky (IncompleteCholesky)",
    "cg": "plain conjugate gradients",
}


class _ProjectedFlow:
    """What the grid flows share: the step bookkeeping and :meth:`run`."""

    def _commit(self, k: int, dt: float, sol: Solution, b: torch.Tensor, start: float) -> None:
        """Record a successful step ``k`` of size ``dt`` whose pressure solve was ``sol`` (right-hand side ``b``)."""
        self._last_dt = dt
        self.t += dt
        self.steps = k
        self.pressure_iterations.append(sol.stats.iterations)
        if self.record_pressure:
            self.pressure_systems.append((self.op, b))
        self.step_seconds.append(time.perf_counter() - start)

    def run(self, steps: int, dt: float, callback: Callable | None = None):
        """Take ``steps`` steps of size ``dt``, calling ``callback(self)`` after each.

        Args:
            steps: number of steps, a non-negative integer.
            dt: time step (see :meth:`step`).
            callback: optional, called with the simulator after every step.

        Returns:
            ``self``.

        Raises:
            ValueError: on a bad ``steps`` or ``dt``.
            StepDivergedError, LinearSolveError: as :meth:`step`.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{type(self).__name__}.run: steps must be a non-negative integer, got {steps!r}")
        for _ in range(steps):
            self.step(dt)
            if callback is not None:
                callback(self)
        return self


class StableFluids2D(_ProjectedFlow):
    """Stable fluids (semi-Lagrangian advection + pressure projection) for 2D Euler flow in a closed box.

    The box ``[lo[0], hi[0]] x [lo[1], hi[1]]`` is cut into ``nx = n`` by ``ny`` square cells of side
    ``h = (hi[0] - lo[0]) / n``. Cell ``(i, j)`` has its centre at ``lo + ((i + 1/2) h, (j + 1/2) h)``;
    ``u[i, j]`` sits on the face ``x = lo[0] + i h`` at height ``lo[1] + (j + 1/2) h``, ``v[i, j]`` on the
    face ``y = lo[1] + j h`` at ``x = lo[0] + (i + 1/2) h``.

    Boundaries: the four sides of the box are solid walls (``u = 0`` on ``u[0]`` and ``u[nx]``, ``v = 0`` on
    ``v[:, 0]`` and ``v[:, ny]``). With an ``obstacle`` disc, the cells whose centres lie inside it are
    solid and every face touching a solid cell carries zero normal velocity. The tangential velocity is
    free (slip walls, as the inviscid equations ask). Interpolation does not treat solid cells specially:
    the zero faces in and around the obstacle are read like any other, so the advected velocity within a
    cell of the obstacle is damped toward zero (a crude no-slip-like effect of the basic method).

    One :meth:`step` of size ``dt``:

    - advection: for every face ``x_f``, the foot of its characteristic is found with the midpoint rule,
      ``x_mid = x_f - dt/2 U(x_f)``, ``x_foot = x_f - dt U(x_mid)`` (both clamped into the box), and the
      face's component is interpolated there (:meth:`velocity`, bilinear on the staggered grid);
    - the wall and solid faces are set to zero;
    - projection: with ``D`` the discrete divergence (``div[i, j] = (u[i+1, j] - u[i, j] + v[i, j+1] -
      v[i, j]) / h``) and ``G`` the gradient on the open faces (``(p[i, j] - p[i-1, j]) / h``, ``G = -D^T``),
      the potential ``phi`` solves ``(-∇²) phi = -div(u)`` with ``-∇² = -D G`` the
      :class:`~neuralnumerics.linalg.PoissonGrid` operator (Neumann walls, solid cells), and
      ``u <- u - G phi`` on the open faces. This is the orthogonal projection onto the discretely
      divergence-free fields (in the face-wise Euclidean inner product), so it never adds kinetic energy.

    Pressure scaling: the unknown of the Poisson solve is ``phi = dt p / rho``, the potential whose gradient
    the projection subtracts; :attr:`pressure` stores it as solved (divide by ``dt`` for the kinematic
    pressure ``p / rho``). Each solve is warm-started from the previous step's ``phi`` times
    ``dt / dt_previous``. In a closed box the Poisson operator is singular (constants per fluid region);
    the right-hand side is passed through :meth:`PoissonGrid.project_out_nullspace
    <neuralnumerics.linalg.PoissonGrid.project_out_nullspace>` and CG returns one of the solutions (the
    velocity does not depend on which).

    The initial velocity, ``initial`` sampled at the face centres with the wall and solid faces zeroed, is
    projected once in the constructor, so the state starts discretely divergence-free (a field that is
    divergence free in the continuum, like Taylor-Green, changes by its discretisation error only).
    :attr:`pressure` starts at zero: the initial projection's potential is not a pressure.

    Args:
        n: cells along x, at least 4.
        initial: the initial velocity, a callable mapping points ``(m, 2)`` (in ``dtype`` on ``device``) to
            velocities ``(m, 2)``; called once, on all face centres (the x-faces, then the y-faces), and only
            the normal component of each face is kept.
        lo, hi: opposite corners of the box; ``n (hi[1] - lo[1]) / (hi[0] - lo[0])`` must be an integer
            ``ny >= 4`` (square cells).
        obstacle: optional solid disc ``(cx, cy, radius)``, centre inside the box, radius positive; it must
            cover at least one cell centre and leave at least one fluid cell.
        dtype: floating dtype of the state.
        device: device of the state.
        solver: the pressure solver: a key of ``SOLVERS``, ``"pcg"`` (CG with
            :class:`~neuralnumerics.linalg.IncompleteCholesky`, applied on the CPU) or ``"cg"`` (plain CG); or
            any :class:`~neuralnumerics.linalg.LinearSolver` instance, e.g. :class:`~neuralnumerics.linalg.DCDM`
            (its own ``rtol`` applies; pass none here).
        rtol: relative residual tolerance of the pressure solve, in ``[10 eps, 1)`` of ``dtype``; default
            ``max(1e-8, 100 eps)`` (1e-8 in float64, about 1.2e-5 in float32).
        record_pressure: keep every step's pressure system in :attr:`pressure_systems`.
        force: optional forcing applied after advection, before the projection: ``force(points, velocity)``
            gets the face centres ``(m, 2)`` and the advected velocity there ``(m, 2)`` and returns the
            forced velocity, of which each face keeps its own component (e.g.
            :meth:`IncompressibleFlow2D.force <neuralnumerics.pde.fluid.IncompressibleFlow2D.force>` imposes a jet).

    Attributes:
        nx, ny: cells per axis; ``h``: cell size; ``lo``, ``hi``: the box corners as float pairs.
        u: x-velocity on the x-faces, ``(nx + 1, ny)``; v: y-velocity on the y-faces, ``(nx, ny + 1)``.
            Assigning new tensors of these shapes sets the state (e.g. to test interpolation); the next
            :meth:`step` zeros their wall and solid faces before projecting.
        pressure: the last step's projection potential ``dt p / rho`` per cell, ``(nx, ny)``.
        solid: True on obstacle cells, ``(nx, ny)`` bool.
        op: the :class:`~neuralnumerics.linalg.PoissonGrid` of the projection (built once).
        preconditioner: the IncompleteCholesky factor for ``"pcg"``, else None (built once).
        t: simulated time; steps: steps taken.
        pressure_iterations: CG iterations of each step's pressure solve.
        step_seconds: wall-clock seconds of each step.
        pressure_systems: with ``record_pressure``, one ``(op, b)`` per step, ``b`` the right-hand side that
            was solved (shape ``(nx ny,)``), ready for :func:`~neuralnumerics.linalg.solve_sequence`;
            otherwise an empty list.

    Raises:
        ValueError: on ``n < 4``, ``lo >= hi``, a box whose aspect ratio gives no whole number of square
            cells, a non-callable ``initial`` or one returning the wrong shape or non-finite values, a bad
            ``obstacle``, an unknown ``solver``, ``rtol`` outside ``[10 eps, 1)`` or a non-floating ``dtype``.
        LinearSolveError: if the initial projection's pressure solve does not converge.

    References:
        J. Stam, Stable fluids, SIGGRAPH 1999.
        R. Bridson, *Fluid Simulation for Computer Graphics*, 2nd ed., 2015 (MAC grid, projection).
        H. Chen et al., Implicit Neural Spatial Representations for Time-dependent PDEs, ICML 2023
        (the error-vs-memory comparison this baseline serves).
    """

    def __init__(self, n: int, *, initial: Callable[[torch.Tensor], torch.Tensor],
                 lo: Sequence[float] = (-1.0, -1.0), hi: Sequence[float] = (1.0, 1.0),
                 obstacle: tuple[float, float, float] | None = None, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu", solver: str = "pcg", rtol: float | None = None,
                 record_pressure: bool = False,
                 force: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 4:
            raise ValueError(f"StableFluids2D: n (cells along x) must be an integer >= 4, got {n!r}")
        lo, hi = _corner(lo, "lo"), _corner(hi, "hi")
        if not (lo[0] < hi[0] and lo[1] < hi[1]):
            raise ValueError(f"StableFluids2D: lo must be below hi on both axes, got lo={lo}, hi={hi}")
        if not callable(initial):
            raise ValueError(f"StableFluids2D: initial must be a callable mapping points (m, 2) to velocities "
                             f"(m, 2), got {type(initial).__name__}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"StableFluids2D: dtype must be a floating torch dtype such as torch.float64, "
                             f"got {dtype!r}")
        if force is not None and not callable(force):
            raise ValueError(f"StableFluids2D: force must be a callable (points (m, 2), velocities (m, 2)) -> "
                             f"velocities (m, 2), got {type(force).__name__}")
        self.force = force
        custom = solver if isinstance(solver, LinearSolver) else None
        if custom is None and solver not in SOLVERS:
            raise ValueError(f"StableFluids2D: unknown solver {solver!r}; choose one of {sorted(SOLVERS)} or pass a "
                             f"LinearSolver instance (e.g. DCDM(model))")
        eps = torch.finfo(dtype).eps
        if custom is not None:
            if rtol is not None:
                raise ValueError("StableFluids2D: rtol is the solver's own when a LinearSolver is given; set it there")
            rtol = max(custom.rtol, 10 * eps)
        if rtol is None:
            rtol = max(1e-8, 100 * eps)
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not (0 < rtol < 1):
            raise ValueError(f"StableFluids2D: rtol must be a number in (0, 1), got {rtol!r}")
        if rtol < 10 * eps:
            raise ValueError(f"StableFluids2D: rtol={rtol:g} is below what {dtype} can reach (10 eps = "
                             f"{10 * eps:.2g}); raise rtol (the default for {dtype} is {max(1e-8, 100 * eps):.2g}) "
                             f"or use float64")
        h = (hi[0] - lo[0]) / n
        ny_real = n * (hi[1] - lo[1]) / (hi[0] - lo[0])
        ny = round(ny_real)
        if abs(ny_real - ny) > 1e-9 * max(1.0, ny_real) or ny < 4:
            raise ValueError(f"StableFluids2D: the box lo={lo}, hi={hi} with n={n} cells along x needs "
                             f"n (hi[1] - lo[1]) / (hi[0] - lo[0]) = {ny_real:.6g} cells along y; that must be a "
                             f"whole number >= 4 (cells are square). Change hi, lo or n")
        self.nx, self.ny, self.h = n, ny, h
        self.lo, self.hi = lo, hi
        self.dtype = dtype
        self.device = torch.device(device)
        self.solver_name = solver if custom is None else type(custom).__name__
        self.rtol = float(rtol)
        self.record_pressure = bool(record_pressure)

        centres = self.cell_centres()
        self.solid = torch.zeros(n, ny, dtype=torch.bool, device=self.device)
        if obstacle is not None:
            cx, cy, radius = _obstacle(obstacle, lo, hi)
            self.solid = (centres[..., 0] - cx) ** 2 + (centres[..., 1] - cy) ** 2 < radius ** 2
            if not bool(self.solid.any()):
                raise ValueError(f"StableFluids2D: obstacle {obstacle} covers no cell centre at h={h:.4g}; "
                                 f"enlarge its radius or refine the grid (n)")
            if bool(self.solid.all()):
                raise ValueError(f"StableFluids2D: obstacle {obstacle} covers every cell; there is no fluid left")
        self.obstacle = None if obstacle is None else (cx, cy, radius)
        fluid = ~self.solid
        # open faces: interior, between two fluid cells; all other faces carry zero normal velocity
        u_open = torch.zeros(n + 1, ny, dtype=torch.bool, device=self.device)
        u_open[1:-1] = fluid[1:] & fluid[:-1]
        v_open = torch.zeros(n, ny + 1, dtype=torch.bool, device=self.device)
        v_open[:, 1:-1] = fluid[:, 1:] & fluid[:, :-1]
        self._u_open, self._v_open = u_open, v_open
        self._u_open_f, self._v_open_f = u_open.to(dtype), v_open.to(dtype)
        self._fluid_f = fluid.to(dtype)

        # face positions (flattened), used by the advection backtrace
        xs_nodes = lo[0] + h * torch.arange(n + 1, dtype=dtype, device=self.device)
        ys_nodes = lo[1] + h * torch.arange(ny + 1, dtype=dtype, device=self.device)
        xs_cells = lo[0] + h * (torch.arange(n, dtype=dtype, device=self.device) + 0.5)
        ys_cells = lo[1] + h * (torch.arange(ny, dtype=dtype, device=self.device) + 0.5)
        self._u_points = torch.stack(torch.meshgrid(xs_nodes, ys_cells, indexing="ij"), dim=-1).reshape(-1, 2)
        self._v_points = torch.stack(torch.meshgrid(xs_cells, ys_nodes, indexing="ij"), dim=-1).reshape(-1, 2)
        self._box_lo = torch.tensor(lo, dtype=dtype, device=self.device)
        self._box_hi = torch.tensor(hi, dtype=dtype, device=self.device)
        self.u, self.v = self._sample_initial(initial)

        # the projection's operator, preconditioner and solver: built once, the grid never changes
        self.op = PoissonGrid((n, ny), boundary="neumann", solid=self.solid, spacing=h, dtype=dtype,
                              device=self.device)
        self.preconditioner = IncompleteCholesky(self.op) if solver == "pcg" else None
        self._cg = custom if custom is not None else CG(rtol=self.rtol)

        self.t = 0.0
        self.steps = 0
        self.pressure_iterations: list[int] = []
        self.step_seconds: list[float] = []
        self.pressure_systems: list[tuple[PoissonGrid, torch.Tensor]] = []
        self._last_dt: float | None = None

        self.pressure = torch.zeros(n, ny, dtype=dtype, device=self.device)
        self.project()

    # -- set-up --------------------------------------------------------------------------------------------
    def _sample_initial(self, initial) -> tuple[torch.Tensor, torch.Tensor]:
        """``initial`` at all face centres in one call (x-faces, then y-faces): ``u`` and ``v`` on their grids."""
        points = torch.cat([self._u_points, self._v_points])
        values = initial(points)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (points.shape[0], 2):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"StableFluids2D: initial must return velocities of shape ({points.shape[0]}, 2) for "
                             f"points of shape {tuple(points.shape)}, got {shape}")
        m = self._u_points.shape[0]
        values = values.detach().to(dtype=self.dtype, device=self.device)
        u, v = values[:m, 0].clone(), values[m:, 1].clone()
        bad = int((~torch.isfinite(u)).sum() + (~torch.isfinite(v)).sum())
        if bad:
            raise ValueError(f"StableFluids2D: initial returned {bad} non-finite (NaN or inf) velocity values at the "
                             f"face centres; check the initial condition")
        return u.reshape(self.nx + 1, self.ny), v.reshape(self.nx, self.ny + 1)

    # -- grid ----------------------------------------------------------------------------------------------
    def cell_centres(self) -> torch.Tensor:
        """Cell centres, shape ``(nx, ny, 2)``: entry ``[i, j]`` is ``lo + ((i + 1/2) h, (j + 1/2) h)``."""
        xs = self.lo[0] + self.h * (torch.arange(self.nx, dtype=self.dtype, device=self.device) + 0.5)
        ys = self.lo[1] + self.h * (torch.arange(self.ny, dtype=self.dtype, device=self.device) + 0.5)
        return torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the state: ``u``, ``v`` and the pressure, ``((nx + 1) ny + nx (ny + 1) + nx ny) * itemsize``."""
        return sum(a.numel() * a.element_size() for a in (self.u, self.v, self.pressure))

    # -- interpolation -------------------------------------------------------------------------------------
    def _interpolate(self, grid: torch.Tensor, points: torch.Tensor, offset: tuple[float, float]) -> torch.Tensor:
        """Bilinear interpolation of values at ``lo + (i + offset[0], j + offset[1]) h`` (constant past the ends)."""
        nx, ny = grid.shape
        s = (points[:, 0] - self.lo[0]) / self.h - offset[0]
        r = (points[:, 1] - self.lo[1]) / self.h - offset[1]
        # NaN coordinates (from a diverged velocity) index cell 0 and give NaN weights, so NaN propagates
        i = torch.floor(torch.nan_to_num(s, nan=0.0)).clamp(0, nx - 2)
        j = torch.floor(torch.nan_to_num(r, nan=0.0)).clamp(0, ny - 2)
        fs = (s - i).clamp(0, 1)
        fr = (r - j).clamp(0, 1)
        i, j = i.long(), j.long()
        flat = grid.reshape(-1)
        k = i * ny + j
        low = (1 - fr) * flat[k] + fr * flat[k + 1]
        high = (1 - fr) * flat[k + ny] + fr * flat[k + ny + 1]
        return (1 - fs) * low + fs * high

    def _clamp(self, points: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(points, self._box_hi), self._box_lo)

    def _velocity(self, points: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self._clamp(points)
        return torch.stack([self._interpolate(u, p, (0.0, 0.5)), self._interpolate(v, p, (0.5, 0.0))], dim=1)

    def velocity(self, points: torch.Tensor) -> torch.Tensor:
        """The velocity at arbitrary points, by bilinear interpolation of each staggered component.

        Points outside the box are clamped onto it. Within half a cell of a wall parallel to a component's
        sample rows (e.g. ``u`` near ``y = lo[1]``) that component is held constant from the nearest row,
        so the interpolation reproduces linear fields exactly at least ``h/2`` away from the walls.

        Args:
            points: shape ``(m, 2)``.

        Returns:
            Velocities ``(m, 2)`` in the dtype and on the device of ``points``.

        Raises:
            ValueError: if ``points`` is not a tensor of shape ``(m, 2)``.
        """
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 2:
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"StableFluids2D.velocity: points must have shape (m, 2), got {shape}")
        p = points.to(dtype=self.dtype, device=self.device)
        return self._velocity(p, self.u, self.v).to(dtype=points.dtype, device=points.device)

    # -- diagnostics ---------------------------------------------------------------------------------------
    def _divergence(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        div = (u[1:] - u[:-1] + v[:, 1:] - v[:, :-1]) / self.h
        return div * self._fluid_f

    def divergence(self) -> torch.Tensor:
        """Discrete divergence per cell, ``(u[i+1, j] - u[i, j] + v[i, j+1] - v[i, j]) / h``, shape ``(nx, ny)``.

        Zero on solid cells.
        """
        return self._divergence(self.u, self.v)

    def rms_divergence(self) -> float:
        """Root mean square of :meth:`divergence` over the fluid cells."""
        div = self.divergence()
        return math.sqrt(float((div ** 2).sum()) / max(1, int((~self.solid).sum())))

    def vorticity(self) -> torch.Tensor:
        """The curl ``dv/dx - du/dy`` at the cell centres, shape ``(nx, ny)``.

        Each component is averaged from its two faces to the cell centre, then differentiated with central
        differences (one-sided at the box edges, ``torch.gradient``). Zero on solid cells.
        """
        uc = 0.5 * (self.u[1:] + self.u[:-1])
        vc = 0.5 * (self.v[:, 1:] + self.v[:, :-1])
        dvdx = torch.gradient(vc, spacing=self.h, dim=0)[0]
        dudy = torch.gradient(uc, spacing=self.h, dim=1)[0]
        return (dvdx - dudy) * self._fluid_f

    def kinetic_energy(self) -> float:
        """``0.5 * (sum u^2 + sum v^2) * h^2``: every face stands for an ``h x h`` area (wall faces are zero)."""
        return 0.5 * float((self.u ** 2).sum() + (self.v ** 2).sum()) * self.h ** 2

    # -- projection ----------------------------------------------------------------------------------------
    def _project(self, u: torch.Tensor, v: torch.Tensor, x0: torch.Tensor | None,
                 what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Solution]:
        """Zero the closed faces of ``(u, v)``, then make them divergence free. Returns (u, v, b, solution)."""
        u = u * self._u_open_f
        v = v * self._v_open_f
        b = -self._divergence(u, v).reshape(-1)
        if self.op.singular:
            b = self.op.project_out_nullspace(b)
        try:
            sol = linear_solve(self.op, b, self._cg, x0=x0, M=self.preconditioner)
        except LinearSolveError as exc:
            raise LinearSolveError(f"StableFluids2D: the pressure solve of {what} did not converge: {exc}. Try "
                                   f"solver='pcg', a looser rtol (now {self.rtol:g}) or a smaller dt",
                                   exc.status, exc.result) from exc
        except NotPositiveDefiniteError as exc:  # round-off broke CG down on the singular system
            raise LinearSolveError(f"StableFluids2D: the pressure solve of {what} broke down ({exc}); rtol="
                                   f"{self.rtol:g} is probably below what {self.dtype} can reach: loosen rtol or use "
                                   f"float64", Status.STAGNATED, None) from exc
        phi = sol.x.reshape(self.nx, self.ny)
        u = u.clone()
        v = v.clone()
        u[1:-1] -= (phi[1:] - phi[:-1]) / self.h * self._u_open_f[1:-1]
        v[:, 1:-1] -= (phi[:, 1:] - phi[:, :-1]) / self.h * self._v_open_f[:, 1:-1]
        return u, v, b, sol

    def project(self) -> Solution:
        """Project the stored velocity onto the discretely divergence-free fields, in place.

        The wall and solid faces are zeroed first. Time, :attr:`pressure` and the per-step records are left
        alone (this is not a time step; the constructor calls it once on the initial velocity).

        Returns:
            The :class:`~neuralnumerics.linalg.Solution` of the Poisson solve (``x`` is the potential).

        Raises:
            LinearSolveError: if the pressure solve does not converge.
        """
        self.u, self.v, _, sol = self._project(self.u, self.v, None, "the projection")
        return sol

    # -- time stepping -------------------------------------------------------------------------------------
    def _advect(self, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Semi-Lagrangian advection of both components, midpoint backtrace through the current velocity."""
        points = torch.cat([self._u_points, self._v_points])
        u, v = self.u, self.v
        mid = self._clamp(points - 0.5 * dt * self._velocity(points, u, v))
        foot = self._clamp(points - dt * self._velocity(mid, u, v))
        m = self._u_points.shape[0]
        new_u = self._interpolate(u, foot[:m], (0.0, 0.5)).reshape(u.shape)
        new_v = self._interpolate(v, foot[m:], (0.5, 0.0)).reshape(v.shape)
        if self.force is not None:
            # the forcing sees the full advected velocity at each face and sets that face's component
            full = self._velocity(points, new_u, new_v)
            forced = self.force(points, full)
            new_u = forced[:m, 0].reshape(u.shape)
            new_v = forced[m:, 1].reshape(v.shape)
        return new_u, new_v

    def step(self, dt: float) -> StableFluids2D:
        """Advance the flow by ``dt``: advect, enforce the walls, project (see the class docstring).

        The state (``u``, ``v``, :attr:`pressure`, ``t``, ``steps`` and the records) changes only when the step
        succeeds.

        Args:
            dt: time step, positive and finite (any size is stable; accuracy wants a CFL number
                ``max|u| dt / h`` of a few at most).

        Returns:
            ``self``.

        Raises:
            ValueError: on a bad ``dt``.
            StepDivergedError: if the step produces NaN or inf; ``result`` is this solver, still holding the
                last good step.
            LinearSolveError: if the pressure solve does not converge.
        """
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"StableFluids2D.step: dt must be a positive finite number, got {dt!r}")
        dt = float(dt)
        start = time.perf_counter()
        k = self.steps + 1
        u, v = self._advect(dt)
        if not (bool(torch.isfinite(u).all()) and bool(torch.isfinite(v).all())):
            raise StepDivergedError(f"StableFluids2D: step {k} (t={self.t + dt:g}) produced NaN or inf in the "
                                    f"advected velocity; check the velocity for non-finite values",
                                    Status.DIVERGED, self)
        x0 = self.pressure.reshape(-1)
        if self._last_dt is not None:
            x0 = x0 * (dt / self._last_dt)
        u, v, b, sol = self._project(u, v, x0, f"step {k} (t={self.t + dt:g})")
        phi = sol.x.reshape(self.nx, self.ny)
        finite = all(bool(torch.isfinite(a).all()) for a in (u, v, phi))  # also synchronises an accelerator
        if not finite:
            raise StepDivergedError(f"StableFluids2D: step {k} (t={self.t + dt:g}) produced NaN or inf in the "
                                    f"projection; reduce dt or check the pressure solver", Status.DIVERGED, self)
        self.u, self.v, self.pressure = u, v, phi
        self._commit(k, dt, sol, b, start)
        return self

    def __repr__(self) -> str:
        return (f"StableFluids2D(nx={self.nx}, ny={self.ny}, h={self.h:g}, obstacle={self.obstacle}, "
                f"solver={self.solver_name!r}, t={self.t:g}, steps={self.steps})")


def _corner(value, name: str) -> tuple[float, float]:
    try:
        pair = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ValueError(f"StableFluids2D: {name} must be a pair of numbers (x, y), got {value!r}") from None
    if len(pair) != 2 or not all(math.isfinite(x) for x in pair):
        raise ValueError(f"StableFluids2D: {name} must be a pair of finite numbers (x, y), got {value!r}")
    return pair


def _obstacle(obstacle, lo: tuple[float, float], hi: tuple[float, float]) -> tuple[float, float, float]:
    try:
        cx, cy, radius = (float(x) for x in obstacle)
    except (TypeError, ValueError):
        raise ValueError(f"StableFluids2D: obstacle must be a disc (cx, cy, radius) of three numbers, "
                         f"got {obstacle!r}") from None
    if not all(math.isfinite(x) for x in (cx, cy, radius)):
        raise ValueError(f"StableFluids2D: obstacle must have finite (cx, cy, radius), got {obstacle!r}")
    if radius <= 0:
        raise ValueError(f"StableFluids2D: the obstacle radius must be positive, got {radius!r}")
    if not (lo[0] < cx < hi[0] and lo[1] < cy < hi[1]):
        raise ValueError(f"StableFluids2D: the obstacle centre ({cx:g}, {cy:g}) lies outside the box lo={lo}, "
                         f"hi={hi}; move it inside")
    return cx, cy, radius

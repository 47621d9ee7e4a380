"""Smoke on a MAC grid in 2D and 3D: buoyant plumes rising past solid obstacles, and their pressure systems.

A :class:`Smoke` simulates the incompressible, inviscid flow of air carrying a passive smoke density that
makes it buoyant (Fedkiw, Stam, Jensen 2001, without the temperature and vorticity confinement), with
the stable-fluids splitting of Stam (1999) on a staggered (MAC) grid of square or cubic cells, in 2D or
3D with one code path. Its main use is to produce realistic sequences of pressure Poisson systems (the
operator fixed by the obstacles, the right-hand side changing with the flow) for linear solvers, learned
(DCDM) and classical.

Conventions (those of :class:`~neuralnumerics.classical.StableFluids2D`): arrays are indexed
``[i_x, i_y]`` or ``[i_x, i_y, i_z]``; the last axis points up (gravity pulls along ``-e_last``); cell
quantities have shape ``shape`` and, flattened in C order, are the unknowns of the
:class:`~neuralnumerics.linalg.PoissonGrid` of that shape. The velocity component along axis ``a`` lives
on the faces normal to ``a``: its array has ``shape[a] + 1`` entries along ``a`` (face ``i`` lies between
cells ``i - 1`` and ``i``) and ``shape[b]`` along the other axes.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._status import Status, StepDivergedError
from ..linalg.cg import CG, NotPositiveDefiniteError
from ..linalg.operators import LinearOperator, as_operator
from ..linalg.solve import LinearSolveError, LinearSolver, Solution, linear_solve
from ..linalg.stencil import PoissonGrid
from .fluid import _ProjectedFlow

__all__ = ["Smoke"]

# the default source: a ball (disc) of this radius, centred horizontally, its centre at this height (both
# times the smallest extent of the box)
SOURCE_RADIUS = 0.08
SOURCE_HEIGHT = 0.12


class Smoke(_ProjectedFlow):
    """A buoyant smoke plume in a box with solid obstacles: semi-Lagrangian advection + pressure projection.

    The box ``[0, n_0 h] x ... x [0, n_{d-1} h]`` is cut into ``shape`` cells of side ``h`` (``d`` = 2 or
    3). Cell ``i`` has its centre at ``(i + 1/2) h``; the ``a``-velocity ``u[a][i]`` sits at the centre of
    the face between cells ``i - e_a`` and ``i``, at ``(i + 1/2) h - h/2 e_a``. Cells where ``solid`` is
    True are obstacles.

    Boundaries: every face of the box is a slip wall (zero normal velocity, ``dp/dn = 0``), except with
    ``open_top`` the top (high end of the last axis), which is open: the pressure is 0 there (Dirichlet)
    and its faces carry whatever normal velocity the projection gives them, so smoke and air leave
    through it. Every face touching a solid cell carries zero normal velocity. With an open top the
    pressure operator is symmetric positive definite (unless the obstacles seal off a pocket of fluid);
    in a closed box (``open_top=False``) it is singular, its null space the constants, and the
    right-hand side is made consistent with
    :meth:`PoissonGrid.project_out_nullspace <neuralnumerics.linalg.PoissonGrid.project_out_nullspace>`.

    One :meth:`step` of size ``dt``:

    1. advection of every face velocity and of the cell-centred density (Stam's semi-Lagrangian step):
       the foot of the characteristic through each sample point ``x`` is traced back with the midpoint
       rule through the current velocity, ``x_mid = x - dt/2 U(x)``, ``x_foot = x - dt U(x_mid)``
       (both clamped into the box), and the quantity is interpolated there, bi/trilinearly on its own
       staggered grid (``torch.nn.functional.grid_sample``, constant past the ends of the grid);
    2. the source: the density of the source cells is set to ``source_density`` and the vertical
       velocity on their faces to ``source_velocity``; the smoke in solid cells is removed;
    3. buoyancy: the vertical face velocities gain ``dt * buoyancy * density`` (the density averaged to
       the face): the density-driven part of the buoyancy force of Fedkiw, Stam and Jensen;
    4. projection: the wall and solid faces are set to zero; with ``D`` the discrete divergence
       (``div[i] = sum_a (u[a][i + e_a] - u[a][i]) / h``) and ``G = -D^T`` the gradient on the open faces
       (``(phi[i] - phi[i - e_a]) / h``, the pressure outside an open top being 0), the potential
       ``phi`` solves ``A phi = b`` with ``A = -D G`` the :class:`~neuralnumerics.linalg.PoissonGrid`
       operator (:attr:`op`, ``spacing=h``) and ``b = -div(u*)``, and ``u <- u* - G phi``. After the
       step the divergence of every fluid cell is the solve's residual there: below ``rtol ||b||`` in
       the 2-norm for a solver that stops at ``||b - A phi|| <= rtol ||b||`` (CG does).

    The unknown of the Poisson solve is ``phi = dt p / rho``, the potential whose gradient the projection
    subtracts (:attr:`pressure` stores it). Each solve goes through
    :func:`~neuralnumerics.linalg.linear_solve` with :attr:`solver` and :attr:`M` only, warm-started
    from the previous step's ``phi`` times ``dt / dt_previous`` and handed the previous solve's ``state``,
    so any
    :class:`~neuralnumerics.linalg.LinearSolver` fits (a learned one included). Interpolation does not
    treat solid cells specially (their faces read as zero velocity), as in the basic method.

    Args:
        shape: cells per axis, 2 or 3 integers, each at least 4; the last axis is up.
        solid: optional boolean mask of shape ``shape`` (tensor or NumPy array), True on obstacle cells.
            It must leave fluid and may not cover the source.
        open_top: open top (Dirichlet ``p = 0``, SPD operator); otherwise a closed box (singular operator).
        buoyancy: upward acceleration per unit density (``>= 0``).
        source: where smoke is injected every step: None for a ball (a disc in 2D) of radius ``0.08 m``
            centred horizontally at height ``0.12 m``, ``m`` the smallest extent of the box; a ball
            ``(centre, radius)`` in the box's coordinates (``centre`` has ``d`` entries); or a boolean mask
            of shape ``shape``. A ball that covers no cell centre injects into the cell containing its centre.
        source_density: the density the source cells are reset to every step (``>= 0``).
        source_velocity: the upward velocity given to the vertical faces of the source cells every step
            (a finite number; 0 leaves the faces to advection and buoyancy).
        spacing: the cell side ``h``; default ``1 / shape[0]`` (the box is one unit wide along x).
        solver: the pressure solver, any :class:`~neuralnumerics.linalg.LinearSolver` instance; default
            :class:`~neuralnumerics.linalg.CG` with ``rtol``. It must accept a symmetric positive
            definite operator (and, in a closed box, a singular consistent one).
        preconditioner: None, an operator approximating ``A^{-1}`` (anything
            :func:`~neuralnumerics.linalg.as_operator` accepts, shape ``(n, n)`` with ``n = prod(shape)``),
            or a callable ``op -> M`` called once on :attr:`op` (e.g.
            :class:`~neuralnumerics.linalg.IncompleteCholesky` or :func:`~neuralnumerics.linalg.Jacobi`);
            a callable that returns None means no preconditioner.
        rtol: relative tolerance of the default CG solver, in ``[10 eps, 1)`` of ``dtype``; default
            ``max(1e-6, 100 eps)``. Give the tolerance to the solver itself when you pass ``solver``.
        record_pressure: keep every step's pressure system in :attr:`pressure_systems`.
        dtype: floating dtype of the state and of the systems.
        device: device of the state (the solid and source masks are moved there).

    Attributes:
        shape: cells per axis; dim: 2 or 3; h: cell side; extent: the box's size per axis, ``n_a h``.
        u: list of ``dim`` face-velocity tensors, ``u[a]`` of shape ``shape`` with ``shape[a] + 1`` along ``a``.
            Entries may be assigned (e.g. to test the projection); :meth:`step` zeros the wall and solid
            faces before projecting.
        density: smoke density per cell, ``shape``; zero on solid cells.
        pressure: the last step's projection potential ``dt p / rho`` per cell, ``shape``.
        solid: obstacle cells, ``shape`` bool; source: source cells, ``shape`` bool.
        op: the :class:`~neuralnumerics.linalg.PoissonGrid` of the projection (built once).
        solver: the pressure solver; M: the preconditioner operator or None (built once).
        solver_state: the ``state`` the last step's solve returned, passed to the next step's (the
            pressure solves of the steps form a sequence: recycling and bandit solvers learn along it).
        t: simulated time; steps: steps taken.
        pressure_iterations: solver iterations of each step's pressure solve.
        step_seconds: wall-clock seconds of each step.
        pressure_systems: with ``record_pressure``, one ``(op, b)`` per step, ``b`` the right-hand side
            that was solved, shape ``(prod(shape),)``, ready for
            :func:`~neuralnumerics.linalg.solve_sequence`; otherwise an empty list.

    Raises:
        ValueError: on a shape that is not 2 or 3 integers ``>= 4``; a solid mask of the wrong shape or
            dtype, one covering every cell or overlapping the source; a bad source (wrong shape or
            dtype, no cell, a ball outside the box); a negative or non-finite buoyancy or source density,
            a non-finite source velocity, a bad spacing; a solver that is not a LinearSolver instance;
            ``rtol`` given together with ``solver``, or outside ``[10 eps, 1)``; a preconditioner of the
            wrong shape or one given to a solver that takes none; a non-floating dtype.

    References:
        J. Stam, Stable fluids, SIGGRAPH 1999.
        R. Fedkiw, J. Stam, H. W. Jensen, Visual simulation of smoke, SIGGRAPH 2001.
        R. Bridson, *Fluid Simulation for Computer Graphics*, 2nd ed., CRC Press, 2015 (MAC grid,
        semi-Lagrangian advection, the projection and its boundary conditions).
        A. Kaneda et al., A deep conjugate direction method for iteratively solving linear systems,
        ICML 2023 (smoke pressure systems as the test problems of a learned solver).
    """

    def __init__(self, shape: Sequence[int], *, solid: torch.Tensor | np.ndarray | None = None, open_top: bool = True,
                 buoyancy: float = 1.0, source=None, source_density: float = 1.0, source_velocity: float = 1.0,
                 spacing: float | None = None, solver: LinearSolver | None = None,
                 preconditioner: LinearOperator | Callable[[PoissonGrid], LinearOperator] | None = None,
                 rtol: float | None = None, record_pressure: bool = False, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> None:
        shape = _shape(shape)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Smoke: dtype must be a floating torch dtype such as torch.float64, got {dtype!r}")
        self.shape, self.dim = shape, len(shape)
        self.dtype = dtype
        self.device = torch.device(device)
        if spacing is None:
            spacing = 1.0 / shape[0]
        self.h = _number(spacing, "spacing", positive=True)
        self.extent = tuple(n * self.h for n in shape)
        self.open_top = bool(open_top)
        self.buoyancy = _number(buoyancy, "buoyancy", nonnegative=True)
        self.source_density = _number(source_density, "source_density", nonnegative=True)
        self.source_velocity = _number(source_velocity, "source_velocity")
        self.record_pressure = bool(record_pressure)

        # -- obstacles and source ----------------------------------------------------------------------------
        self.solid = self._mask(solid, "solid") if solid is not None else torch.zeros(shape, dtype=torch.bool,
                                                                                        device=self.device)
        if bool(self.solid.all()):
            raise ValueError("Smoke: the solid mask covers every cell; there is no fluid left")
        self.source = self._source(source)
        overlap = int((self.source & self.solid).sum())
        if overlap:
            raise ValueError(f"Smoke: the solid mask covers {overlap} of the {int(self.source.sum())} source cells; "
                             f"move the obstacle or the source apart")
        fluid = ~self.solid
        self._fluid_f = fluid.to(dtype)

        # open faces per axis: between two fluid cells, or on an open top above a fluid cell
        self._open_f = []
        for a, n in enumerate(shape):
            open_a = torch.zeros(_face_shape(shape, a), dtype=torch.bool, device=self.device)
            open_a.narrow(a, 1, n - 1).copy_(fluid.narrow(a, 1, n - 1) & fluid.narrow(a, 0, n - 1))
            if self.open_top and a == self.dim - 1:
                open_a.select(a, n).copy_(fluid.select(a, n - 1))
            self._open_f.append(open_a.to(dtype))
        up = self.dim - 1
        n_up = shape[up]
        src_faces = torch.zeros(_face_shape(shape, up), dtype=torch.bool, device=self.device)
        src_faces.narrow(up, 0, n_up).logical_or_(self.source)   # the low face of each source cell
        src_faces.narrow(up, 1, n_up).logical_or_(self.source)   # and its high face
        self._source_faces = src_faces

        # -- the pressure solve: operator, solver and preconditioner, built once -----------------------------
        boundary = ["neumann"] * (self.dim - 1) + [("neumann", "dirichlet" if self.open_top else "neumann")]
        self.op = PoissonGrid(shape, boundary=boundary, solid=self.solid, spacing=self.h, dtype=dtype,
                              device=self.device)
        eps = torch.finfo(dtype).eps
        if solver is None:
            if rtol is None:
                rtol = max(1e-6, 100 * eps)
            if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not (0 < rtol < 1):
                raise ValueError(f"Smoke: rtol must be a number in (0, 1), got {rtol!r}")
            if rtol < 10 * eps:
                raise ValueError(f"Smoke: rtol={rtol:g} is below what {dtype} can reach (10 eps = {10 * eps:.2g}); "
                                 f"raise rtol or use float64")
            solver = CG(rtol=float(rtol))
        elif not isinstance(solver, LinearSolver):
            raise ValueError(f"Smoke: solver must be a LinearSolver instance such as CG(rtol=1e-6) (any solver of "
                             f"neuralnumerics.linalg, or a subclass of LinearSolver), got {type(solver).__name__}")
        elif rtol is not None:
            raise ValueError(f"Smoke: rtol={rtol!r} applies to the default CG solver only; set the tolerance on the "
                             f"solver you pass (e.g. {type(solver).__name__}(rtol={rtol!r}))")
        self.solver = solver
        self.M = self._preconditioner(preconditioner)

        # -- state and sample points -------------------------------------------------------------------------
        self.u = [torch.zeros(_face_shape(shape, a), dtype=dtype, device=self.device) for a in range(self.dim)]
        self.density = torch.zeros(shape, dtype=dtype, device=self.device)
        self.pressure = torch.zeros(shape, dtype=dtype, device=self.device)
        self._grids = []      # per sampled grid (the d face grids, then the cells): (points, scale, shift)
        for a in [*range(self.dim), None]:
            offsets = [0.5] * self.dim
            sizes = list(shape)
            if a is not None:
                offsets[a] = 0.0
                sizes[a] += 1
            axes = [self.h * (torch.arange(s, dtype=dtype, device=self.device) + o) for s, o in zip(sizes, offsets)]
            points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)
            # grid_sample's normalised coordinate, -1 at the first sample and +1 at the last (align_corners)
            scale = torch.tensor([2.0 / ((s - 1) * self.h) for s in sizes], dtype=dtype, device=self.device)
            shift = torch.tensor([-2.0 * o / (s - 1) - 1.0 for s, o in zip(sizes, offsets)], dtype=dtype,
                                 device=self.device)
            self._grids.append((points, scale, shift))
        self._points = torch.cat([g[0] for g in self._grids])
        self._sizes = [g[0].shape[0] for g in self._grids]
        self._box_hi = torch.tensor(self.extent, dtype=dtype, device=self.device)

        self.t = 0.0
        self.steps = 0
        self.pressure_iterations: list[int] = []
        self.step_seconds: list[float] = []
        self.pressure_systems: list[tuple[PoissonGrid, torch.Tensor]] = []
        self.solver_state = None
        self._last_dt: float | None = None

    # -- set-up --------------------------------------------------------------------------------------------
    def _mask(self, mask, name: str) -> torch.Tensor:
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(np.ascontiguousarray(mask))
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"Smoke: {name} must be a boolean tensor or NumPy array of shape {self.shape}, "
                             f"got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise ValueError(f"Smoke: {name} must be a boolean mask (dtype torch.bool), got {mask.dtype}; "
                             f"convert it with mask.bool() or mask > 0.5")
        if tuple(mask.shape) != self.shape:
            raise ValueError(f"Smoke: the {name} mask has shape {tuple(mask.shape)}, the grid {self.shape}")
        return mask.detach().to(self.device).clone()

    def _source(self, source) -> torch.Tensor:
        if source is None:
            w = min(self.extent)
            centre = [0.5 * e for e in self.extent[:-1]] + [SOURCE_HEIGHT * w]
            return self._ball(centre, SOURCE_RADIUS * w)
        if isinstance(source, (torch.Tensor, np.ndarray)):
            mask = self._mask(source, "source")
            if not bool(mask.any()):
                raise ValueError("Smoke: the source mask selects no cell; mark at least one cell True")
            return mask
        try:
            centre, radius = source
            centre = [float(c) for c in centre]
            radius = float(radius)
        except (TypeError, ValueError):
            raise ValueError(f"Smoke: source must be None, a boolean mask of shape {self.shape}, or a ball "
                             f"(centre, radius) with {self.dim} centre coordinates, got {source!r}") from None
        if len(centre) != self.dim or not all(math.isfinite(c) for c in centre):
            raise ValueError(f"Smoke: the source centre must have {self.dim} finite coordinates, got {centre}")
        if not (math.isfinite(radius) and radius > 0):
            raise ValueError(f"Smoke: the source radius must be positive and finite, got {radius!r}")
        if not all(0 < c < e for c, e in zip(centre, self.extent)):
            raise ValueError(f"Smoke: the source centre {tuple(centre)} lies outside the box "
                             f"(0, {self.extent}); move it inside")
        return self._ball(centre, radius)

    def _ball(self, centre: Sequence[float], radius: float) -> torch.Tensor:
        """Cells whose centre lies in the ball; the cell containing ``centre`` when there is none."""
        axes = [(torch.arange(n, dtype=torch.float64, device=self.device) + 0.5) * self.h for n in self.shape]
        r2 = sum(((x - c) ** 2).reshape([-1 if b == a else 1 for b in range(self.dim)])
                 for a, (x, c) in enumerate(zip(axes, centre)))
        mask = r2 < radius ** 2
        if not bool(mask.any()):
            index = tuple(min(n - 1, int(c / self.h)) for n, c in zip(self.shape, centre))
            mask[index] = True
        return mask

    def _preconditioner(self, preconditioner) -> LinearOperator | None:
        if preconditioner is None:
            return None
        if not self.solver.accepts_preconditioner:
            raise ValueError(f"Smoke: {type(self.solver).__name__} takes no preconditioner; drop preconditioner=")
        if isinstance(preconditioner, (LinearOperator, torch.Tensor, np.ndarray)):
            M = preconditioner
        elif callable(preconditioner):
            M = preconditioner(self.op)
            if M is None:  # the builder declined (e.g. a factorisation that only fits some grids)
                return None
        else:
            raise ValueError(f"Smoke: preconditioner must be None, an operator, or a callable op -> operator "
                             f"(e.g. IncompleteCholesky), got {type(preconditioner).__name__}")
        M = as_operator(M)
        if M.shape != self.op.shape:
            raise ValueError(f"Smoke: the preconditioner has shape {M.shape}, the pressure operator {self.op.shape}")
        return M

    # -- grid ----------------------------------------------------------------------------------------------
    def cell_centres(self) -> torch.Tensor:
        """Cell centres, shape ``(*shape, dim)``: entry ``[i]`` is ``(i + 1/2) h``."""
        return self._grids[-1][0].reshape(*self.shape, self.dim)

    def max_speed(self) -> float:
        """The largest face velocity magnitude ``max_a max |u[a]|`` (the CFL number is ``max_speed dt / h``)."""
        return max(float(ua.abs().max()) for ua in self.u)

    # -- interpolation -------------------------------------------------------------------------------------
    def _sample(self, values: torch.Tensor, grid: int, points: torch.Tensor) -> torch.Tensor:
        """Bi/trilinear interpolation of ``values`` (on face grid ``grid``, or the cells for ``grid = dim``).

        ``points`` has shape ``(m, dim)``; past the ends of the sample grid the value is held constant.
        """
        _, scale, shift = self._grids[grid]
        coords = torch.addcmul(shift, points, scale).flip(-1)  # grid_sample wants the last axis first
        coords = coords.reshape((1,) * self.dim + tuple(coords.shape))
        out = F.grid_sample(values[None, None], coords, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(-1)

    def _velocity(self, u: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._sample(u[a], a, points) for a in range(self.dim)], dim=1)

    def _clamp(self, points: torch.Tensor) -> torch.Tensor:
        return torch.minimum(points.clamp_(min=0.0), self._box_hi)

    def velocity(self, points: torch.Tensor) -> torch.Tensor:
        """The velocity at arbitrary points, each staggered component interpolated bi/trilinearly.

        Points outside the box are clamped onto it.

        Args:
            points: shape ``(m, dim)``.

        Returns:
            Velocities ``(m, dim)`` in the dtype and on the device of ``points``.

        Raises:
            ValueError: if ``points`` is not a tensor of shape ``(m, dim)``.
        """
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != self.dim:
            got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"Smoke.velocity: points must have shape (m, {self.dim}), got {got}")
        p = self._clamp(points.to(dtype=self.dtype, device=self.device).clone())
        return self._velocity(self.u, p).to(dtype=points.dtype, device=points.device)

    # -- diagnostics ---------------------------------------------------------------------------------------
    def _divergence(self, u: list[torch.Tensor]) -> torch.Tensor:
        div = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        for a, (ua, n) in enumerate(zip(u, self.shape)):
            div += ua.narrow(a, 1, n) - ua.narrow(a, 0, n)
        return div * (self._fluid_f / self.h)

    def divergence(self) -> torch.Tensor:
        """Discrete divergence per cell, ``sum_a (u[a][i + e_a] - u[a][i]) / h``, shape ``shape``; 0 on solid cells."""
        return self._divergence(self.u)

    def rms_divergence(self) -> float:
        """Root mean square of :meth:`divergence` over the fluid cells."""
        div = self.divergence()
        return math.sqrt(float((div ** 2).sum()) / max(1, int((~self.solid).sum())))

    def closed_faces(self, axis: int) -> torch.Tensor:
        """Faces normal to ``axis`` that carry zero normal velocity (walls, faces touching a solid cell), bool."""
        return self._open_f[axis] == 0

    # -- projection ----------------------------------------------------------------------------------------
    def _project(self, u: list[torch.Tensor], x0: torch.Tensor | None, what: str,
                 state=None) -> tuple[list[torch.Tensor], torch.Tensor, Solution]:
        """Zero the closed faces of ``u``, then make it divergence free. Returns ``(u, b, solution)``."""
        u = [ua * oa for ua, oa in zip(u, self._open_f)]
        b = -self._divergence(u).reshape(-1)
        if self.op.singular:
            b = self.op.project_out_nullspace(b)
        name = type(self.solver).__name__
        try:
            sol = linear_solve(self.op, b, self.solver, x0=x0, M=self.M, state=state)
        except LinearSolveError as exc:
            hint = "add a preconditioner, " if self.solver.accepts_preconditioner and self.M is None else ""
            raise LinearSolveError(f"Smoke: the pressure solve of {what} did not converge: {exc}. Try {hint}a looser "
                                   f"tolerance or a larger max_iters on {name}, or a smaller dt", exc.status,
                                   exc.result) from exc
        except NotPositiveDefiniteError as exc:  # round-off broke CG down (singular box, too tight rtol)
            raise LinearSolveError(f"Smoke: the pressure solve of {what} broke down in {name} ({exc}); the "
                                   f"tolerance is probably below what {self.dtype} can reach: loosen it or use "
                                   f"float64", Status.STAGNATED, None) from exc
        phi = sol.x.reshape(self.shape)
        out = []
        for a, (ua, oa) in enumerate(zip(u, self._open_f)):
            # the pressure outside the box is 0 (only used on an open top; wall faces are masked out)
            padded = torch.nn.functional.pad(phi, _pad_spec(self.dim, a))
            grad = (padded.narrow(a, 1, self.shape[a] + 1) - padded.narrow(a, 0, self.shape[a] + 1)) / self.h
            out.append(ua - grad * oa)
        return out, b, sol

    def project(self) -> Solution:
        """Project the stored velocity :attr:`u` onto the discretely divergence-free fields, in place.

        The wall and solid faces are zeroed first. Time, :attr:`pressure` and the records are left alone
        (this is not a time step).

        Returns:
            The :class:`~neuralnumerics.linalg.Solution` of the Poisson solve (``x`` is the potential).

        Raises:
            LinearSolveError: if the pressure solve does not converge.
        """
        self.u, _, sol = self._project(self.u, None, "the projection")
        return sol

    # -- time stepping -------------------------------------------------------------------------------------
    def _advect(self, dt: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Semi-Lagrangian advection of the face velocities and the density, midpoint backtrace."""
        points = self._points
        mid = self._clamp(points - 0.5 * dt * self._velocity(self.u, points))
        foot = self._clamp(points - dt * self._velocity(self.u, mid))
        feet = foot.split(self._sizes)
        u = [self._sample(self.u[a], a, feet[a]).reshape(self.u[a].shape) for a in range(self.dim)]
        density = self._sample(self.density, self.dim, feet[-1]).reshape(self.shape)
        return u, density

    def _forces(self, u: list[torch.Tensor], density: torch.Tensor,
                dt: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Source and buoyancy: reset the source's density and vertical velocity, push the smoke up."""
        up = self.dim - 1
        density = torch.where(self.source, torch.as_tensor(self.source_density, dtype=self.dtype,
                                                           device=self.device), density) * self._fluid_f
        if self.buoyancy:
            n = self.shape[up]
            # density at the vertical faces: the mean of the two cells (the one cell at the bottom and top)
            ends = torch.cat([density.narrow(up, 0, 1), density, density.narrow(up, n - 1, 1)], dim=up)
            face_density = 0.5 * (ends.narrow(up, 0, n + 1) + ends.narrow(up, 1, n + 1))
            u[up] = u[up] + (dt * self.buoyancy) * face_density
        if self.source_velocity:
            u[up] = torch.where(self._source_faces, torch.as_tensor(self.source_velocity, dtype=self.dtype,
                                                                    device=self.device), u[up])
        return u, density

    def step(self, dt: float) -> Smoke:
        """Advance the smoke by ``dt``: advect, inject, add buoyancy, project (see the class docstring).

        The state (:attr:`u`, :attr:`density`, :attr:`pressure`, ``t``, ``steps`` and the records) changes
        only when the step succeeds.

        Args:
            dt: time step, positive and finite. Any size is stable; accuracy wants a CFL number
                ``max_speed() dt / h`` of a few cells at most.

        Returns:
            ``self``.

        Raises:
            ValueError: on a bad ``dt``.
            StepDivergedError: if the state holds NaN or inf, or the step produces them; ``result`` is this
                simulator, still holding the last good step.
            LinearSolveError: if the pressure solve does not converge.
        """
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"Smoke.step: dt must be a positive finite number, got {dt!r}")
        dt = float(dt)
        start = time.perf_counter()
        k = self.steps + 1
        when = f"step {k} (t={self.t + dt:g})"
        if not _finite(*self.u, self.density):
            raise StepDivergedError(f"Smoke: the state holds NaN or inf before {when}; reset u and density to "
                                    f"finite values", Status.DIVERGED, self)
        u, density = self._advect(dt)
        u, density = self._forces(u, density, dt)
        if not _finite(*u, density):
            raise StepDivergedError(f"Smoke: {when} produced NaN or inf in the advected velocity or density; "
                                    f"reduce dt or the source and buoyancy", Status.DIVERGED, self)
        x0 = self.pressure.reshape(-1)
        if self._last_dt is not None:
            x0 = x0 * (dt / self._last_dt)
        u, b, sol = self._project(u, x0, when, self.solver_state)
        phi = sol.x.reshape(self.shape)
        if not _finite(*u, phi):  # also synchronises an accelerator
            raise StepDivergedError(f"Smoke: {when} produced NaN or inf in the projection; reduce dt or check the "
                                    f"pressure solver ({type(self.solver).__name__})", Status.DIVERGED, self)
        self.u, self.density, self.pressure = u, density, phi
        self.solver_state = sol.state
        self._commit(k, dt, sol, b, start)
        return self

    def __repr__(self) -> str:
        return (f"Smoke(shape={self.shape}, h={self.h:g}, open_top={self.open_top}, solid cells="
                f"{int(self.solid.sum())}, solver={self.solver!r}, t={self.t:g}, steps={self.steps})")


def _shape(shape) -> tuple[int, ...]:
    try:
        sizes = tuple(shape)
    except TypeError:
        raise ValueError(f"Smoke: shape must be 2 or 3 cell counts, e.g. (64, 64) or (32, 32, 32), "
                         f"got {shape!r}") from None
    if len(sizes) not in (2, 3) or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                           for s in sizes):
        raise ValueError(f"Smoke: shape must be 2 or 3 integer cell counts, e.g. (64, 64) or (32, 32, 32), "
                         f"got {shape!r}")
    if min(sizes) < 4:
        raise ValueError(f"Smoke: every axis needs at least 4 cells, got shape {tuple(int(s) for s in sizes)}")
    return tuple(int(s) for s in sizes)


def _number(value, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Smoke: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"Smoke: {name} must be positive, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"Smoke: {name} must be non-negative, got {value!r}")
    return float(value)


def _face_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return tuple(n + (a == axis) for a, n in enumerate(shape))


def _pad_spec(dim: int, axis: int) -> tuple[int, ...]:
    """``F.pad`` widths that add one zero at both ends of ``axis`` only (F.pad lists the last axis first)."""
    spec = [0] * (2 * dim)
    spec[2 * (dim - 1 - axis)] = spec[2 * (dim - 1 - axis) + 1] = 1
    return tuple(spec)


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)

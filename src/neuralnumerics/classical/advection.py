"""Grid baselines for 1D advection ``u_t + v u_x = 0``: the classical side of INSR's error-vs-memory plot.

A :class:`GridAdvection1D` stores ``n_cells`` point values at the cell centres of the problem's domain
and advances them with one of four textbook schemes (:data:`SCHEMES`). The state costs
``n_cells * itemsize`` bytes, the quantity the INSR paper puts on the memory axis when it compares a
neural field with a grid of equal size.

Boundary treatment (the same for every scheme): the inflow end (left for ``v > 0``, right for
``v < 0``) holds ``u = 0``, imposed through a zero ghost value one cell outside the domain, which is
what the exact solution carries in. The outflow end is transparent: its ghost value is a constant
extrapolation of the last interior value (zero gradient), so a pulse leaves the domain instead of
reflecting off a ``u = 0`` wall. Only the central schemes (``lax-wendroff``, ``crank-nicolson``) and the
cubic stencil of ``semi-lagrangian`` next to the outflow end ever read the outflow ghost. With this ghost
the Crank-Nicolson matrix keeps the discrete energy ``||u||_2`` non-increasing at any CFL number, but its
non-dissipative central difference still reflects a small odd-even wave (about 5% of a Gaussian pulse's
height) when a pulse leaves; the other schemes let it out cleanly.

Negative velocities are handled by mirroring: the domain is symmetric, so the state is flipped, advanced
with ``|v|`` and flipped back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field as dataclass_field
from typing import Callable

import torch

from .._status import Status, StepDivergedError
from ..pde.advection import Advection1D
from ..pde.problem import relative_l2

__all__ = ["GridAdvection1D", "GridTrajectory", "SCHEMES"]

SCHEMES: dict[str, str] = {
    "upwind": "first-order upwind, explicit, stable for CFL |v| dt / h <= 1",
    "lax-wendroff": "second-order Lax-Wendroff, explicit, stable for CFL |v| dt / h <= 1",
    "crank-nicolson": "central differences in space, trapezoidal rule in time (a tridiagonal solve per step), "
                      "second order, unconditionally stable",
    "semi-lagrangian": "exact foot point x - v dt, cubic Lagrange interpolation of the previous values, "
                       "unconditionally stable",
}

_EXPLICIT = ("upwind", "lax-wendroff")
# a CFL number this close to an integer is taken as that integer, so CFL 1 shifts are exact
_SNAP = 1e-12


@dataclass
class GridTrajectory:
    """Grid values of a classical advection run at every time step.

    Attributes:
        x: cell centres, shape ``(n_cells,)``.
        values: the solution at steps ``0..steps``, shape ``(steps + 1, n_cells)``; row ``k`` is time ``k * dt``.
        dt: time step.
        seconds: wall-clock seconds of each step, length ``steps``.
        memory_bytes: bytes of one state, ``n_cells * itemsize`` (the memory axis of the comparison).
        scheme: the scheme's name (a key of :data:`SCHEMES`).
        bounds: ``(lo, hi)`` of the domain.
    """

    x: torch.Tensor
    values: torch.Tensor
    dt: float
    seconds: list[float] = dataclass_field(default_factory=list)
    memory_bytes: int = 0
    scheme: str = ""
    bounds: tuple[float, float] = (0.0, 0.0)

    @property
    def steps(self) -> int:
        """Number of time steps taken (``values.shape[0] - 1``)."""
        return self.values.shape[0] - 1

    @property
    def times(self) -> list[float]:
        """The time of each row of :attr:`values`."""
        return [k * self.dt for k in range(self.steps + 1)]

    def _row(self, step: int) -> torch.Tensor:
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"GridTrajectory: step must be an int, got {step!r}")
        if not -(self.steps + 1) <= step <= self.steps:
            raise IndexError(f"GridTrajectory: step {step} is out of range; the trajectory holds steps "
                             f"0..{self.steps}")
        return self.values[step]

    def field(self, step: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The solution at ``step`` as a function of position, by linear interpolation between cell centres.

        Between a domain end and the nearest cell centre the value of that centre is held; outside the
        domain the field is zero.

        Args:
            step: index of the row of :attr:`values` (negative counts from the end, like Python).

        Returns:
            A callable mapping points ``(n, 1)`` to values ``(n, 1)`` on the points' device and in their dtype.

        Raises:
            IndexError: if ``step`` is not in ``-(steps + 1)..steps``.
        """
        row = self._row(step)
        lo, hi = self.bounds
        n = row.shape[0]
        h = (hi - lo) / n

        def grid_field(points: torch.Tensor) -> torch.Tensor:
            if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 1:
                shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
                raise ValueError(f"GridTrajectory.field: points must have shape (n, 1), got {shape}; "
                                 f"reshape with points.reshape(-1, 1)")
            u = row.to(device=points.device)
            p = points[:, 0].to(dtype=u.dtype)
            s = (p - lo) / h - 0.5
            j = torch.floor(s).clamp(0, n - 2)
            theta = (s - j).clamp(0, 1)
            j = j.long()
            out = (1 - theta) * u[j] + theta * u[j + 1]
            out = torch.where((p >= lo) & (p <= hi), out, torch.zeros_like(out))
            return out.to(points.dtype).unsqueeze(1)

        return grid_field

    def errors(self, problem: Advection1D, *, points: torch.Tensor | None = None) -> list[float]:
        """Relative L2 error of every step against ``problem.exact``.

        Args:
            problem: the problem that was solved; needs an exact solution.
            points: where to compare, shape ``(n, 1)``; default ``problem.eval_points()`` (the grid the INSR
                runs are scored on, so the two methods are measured alike, interpolation error included).

        Returns:
            ``steps + 1`` floats, ``||u_k - u(., k dt)|| / ||u(., k dt)||`` over the points.

        Raises:
            ValueError: if the problem has no exact solution.
        """
        if points is None:
            points = problem.eval_points(dtype=self.values.dtype, device=self.values.device)
        out = []
        for k in range(self.steps + 1):
            exact = problem.exact(points, k * self.dt)
            if exact is None:
                raise ValueError(f"GridTrajectory.errors: problem {getattr(problem, 'name', problem)!r} has no "
                                 f"exact solution to compare against")
            out.append(relative_l2(self.field(k)(points), exact))
        return out


class GridAdvection1D:
    """Finite-difference / semi-Lagrangian solver for :class:`~neuralnumerics.pde.Advection1D` on a uniform grid.

    The grid has ``n_cells`` cells on ``[-L/2, L/2]`` and stores point values at their centres
    ``x_i = -L/2 + (i + 1/2) h``, ``h = L / n_cells``. With the Courant number ``c = |v| dt / h``
    (for ``v >= 0``; mirrored for ``v < 0``), one step is

    - ``upwind``: ``u_i <- (1 - c) u_i + c u_{i-1}``;
    - ``lax-wendroff``: ``u_i <- c(1 + c)/2 u_{i-1} + (1 - c^2) u_i + c(c - 1)/2 u_{i+1}``;
    - ``crank-nicolson``: ``(I + c/4 A) u^{n+1} = (I - c/4 A) u^n`` with ``(A u)_i = u_{i+1} - u_{i-1}``,
      i.e. central differences and the trapezoidal rule (INSR's default integrator), one tridiagonal
      solve per step (``scipy.linalg.solve_banded``, on the CPU);
    - ``semi-lagrangian``: ``u_i <- p(x_i - v dt)`` with ``p`` the cubic Lagrange interpolant of the four
      nearest values; exact characteristics, so no time-step limit.

    Boundaries: zero inflow, zero-gradient outflow (see the module docstring). At ``c = 1`` the upwind,
    Lax-Wendroff and semi-Lagrangian steps are exact shifts by one cell.

    Args:
        problem: the advection problem (velocity, domain, initial condition).
        n_cells: number of grid cells, at least 4.
        scheme: a key of :data:`SCHEMES`.
        dtype: floating dtype of the state.
        device: device of the state (the Crank-Nicolson solve runs on the CPU and copies back).

    Raises:
        TypeError: if ``problem`` is not an :class:`~neuralnumerics.pde.Advection1D`.
        ValueError: on an unknown scheme, ``n_cells < 4`` or a non-floating dtype.

    References:
        R. J. LeVeque, *Finite Volume Methods for Hyperbolic Problems*, 2002 (upwind, Lax-Wendroff).
        A. Staniforth and J. Côté, Semi-Lagrangian integration schemes for atmospheric models, 1991.
        H. Chen et al., Implicit Neural Spatial Representations for Time-dependent PDEs, ICML 2023
        (the error-vs-memory comparison this baseline serves).
    """

    def __init__(self, problem: Advection1D, n_cells: int, *, scheme: str = "semi-lagrangian",
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        if not isinstance(problem, Advection1D):
            raise TypeError(f"GridAdvection1D: problem must be an Advection1D, got {type(problem).__name__}")
        if scheme not in SCHEMES:
            raise ValueError(f"GridAdvection1D: unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
        if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 4:
            raise ValueError(f"GridAdvection1D: n_cells must be an integer >= 4 (the stencils span 4 cells), "
                             f"got {n_cells!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"GridAdvection1D: dtype must be a floating torch dtype such as torch.float64, "
                             f"got {dtype!r}")
        self.problem = problem
        self.n_cells = n_cells
        self.scheme = scheme
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.h = problem.length / n_cells
        self.x = problem.domain.grid(n_cells, dtype=dtype, device=self.device)[:, 0]

    @property
    def memory_bytes(self) -> int:
        """Bytes of one state: ``n_cells * itemsize``."""
        return self.n_cells * torch.empty((), dtype=self.dtype).element_size()

    def cfl(self, dt: float) -> float:
        """The Courant number ``|v| dt / h`` of a step ``dt``."""
        return abs(self.problem.velocity) * dt / self.h

    def max_stable_dt(self) -> float:
        """The largest stable ``dt`` of the scheme: ``h / |v|`` for explicit schemes, ``inf`` otherwise."""
        if self.scheme in _EXPLICIT and self.problem.velocity != 0:
            return self.h / abs(self.problem.velocity)
        return math.inf

    def initial_values(self) -> torch.Tensor:
        """``u_0`` at the cell centres, shape ``(n_cells,)``."""
        return self.problem.initial(self.x.unsqueeze(1))[:, 0].to(self.dtype)

    def run(self, *, dt: float, steps: int,
            callback: Callable[[int, float, torch.Tensor], None] | None = None) -> GridTrajectory:
        """Advance the initial condition ``steps`` times by ``dt``.

        Args:
            dt: time step, positive and finite; at most :meth:`max_stable_dt` for explicit schemes.
            steps: number of steps, a non-negative integer.
            callback: called as ``callback(step, t, values)`` after each step, ``values`` of shape
                ``(n_cells,)`` (a view into the trajectory: copy it to keep it).

        Returns:
            A :class:`GridTrajectory` with ``steps + 1`` rows.

        Raises:
            ValueError: on a bad ``dt`` or ``steps``, or a CFL number above 1 for an explicit scheme.
            StepDivergedError: if a step produces NaN or inf (e.g. from a non-finite initial condition);
                its ``result`` is the trajectory up to the last good step.
        """
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"GridAdvection1D.run: dt must be a positive finite number, got {dt!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"GridAdvection1D.run: steps must be a non-negative integer, got {steps!r}")
        dt = float(dt)
        c = self.cfl(dt)
        if abs(c - round(c)) <= _SNAP * max(1.0, c):
            c = float(round(c))
        if self.scheme in _EXPLICIT and c > 1:
            raise ValueError(f"GridAdvection1D.run: scheme {self.scheme!r} is unstable at CFL number "
                             f"|v| dt / h = {c:.4g} > 1 (v={self.problem.velocity:g}, h={self.h:.4g}); use "
                             f"dt <= {self.max_stable_dt():.6g}, or an unconditionally stable scheme "
                             f"('crank-nicolson', 'semi-lagrangian')")
        step_fn = self._make_step(c)
        flip = self.problem.velocity < 0

        values = torch.empty(steps + 1, self.n_cells, dtype=self.dtype, device=self.device)
        values[0] = self.initial_values()
        traj = GridTrajectory(x=self.x, values=values, dt=dt, seconds=[], memory_bytes=self.memory_bytes,
                              scheme=self.scheme, bounds=(self.problem.domain.lo[0], self.problem.domain.hi[0]))
        w = values[0].flip(0) if flip else values[0].clone()
        for k in range(1, steps + 1):
            start = time.perf_counter()
            w = step_fn(w)
            finite = bool(torch.isfinite(w).all())  # also synchronises an accelerator before the clock
            seconds = time.perf_counter() - start
            if not finite:
                partial = GridTrajectory(x=self.x, values=values[:k].clone(), dt=dt, seconds=traj.seconds,
                                         memory_bytes=self.memory_bytes, scheme=self.scheme, bounds=traj.bounds)
                raise StepDivergedError(f"GridAdvection1D: step {k} (t={k * dt:g}) of scheme {self.scheme!r} "
                                        f"produced NaN or inf; check the initial condition for non-finite "
                                        f"values", Status.DIVERGED, partial)
            values[k] = w.flip(0) if flip else w
            traj.seconds.append(seconds)
            if callback is not None:
                callback(k, k * dt, values[k])
        return traj

    def _make_step(self, c: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """One step for ``v >= 0`` at Courant number ``c``, as a function of the state ``(n_cells,)``."""
        n = self.n_cells
        zero = torch.zeros(1, dtype=self.dtype, device=self.device)

        def left(w: torch.Tensor) -> torch.Tensor:  # u_{i-1}, zero inflow ghost
            return torch.cat([zero, w[:-1]])

        def right(w: torch.Tensor) -> torch.Tensor:  # u_{i+1}, zero-gradient outflow ghost
            return torch.cat([w[1:], w[-1:]])

        if self.scheme == "upwind":
            return lambda w: (1 - c) * w + c * left(w)

        if self.scheme == "lax-wendroff":
            a, b, d = c * (1 + c) / 2, 1 - c * c, c * (c - 1) / 2
            return lambda w: a * left(w) + b * w + d * right(w)

        if self.scheme == "crank-nicolson":
            try:
                import numpy as np
                from scipy.linalg import solve_banded
            except ImportError as exc:  # pragma: no cover - scipy is installed with the test extras
                raise ImportError("GridAdvection1D: scheme 'crank-nicolson' needs SciPy for its tridiagonal "
                                  "solve; install it with `pip install scipy`") from exc
            q = c / 4
            np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
            ab = np.zeros((3, n), dtype=np_dtype)
            ab[0, 1:] = q          # superdiagonal
            ab[1, :] = 1.0         # diagonal; the outflow row folds in its ghost u_n = u_{n-1}
            ab[1, -1] = 1.0 + q
            ab[2, :-1] = -q        # subdiagonal

            def cn_step(w: torch.Tensor) -> torch.Tensor:
                rhs = w - q * (right(w) - left(w))
                sol = solve_banded((1, 1), ab, rhs.detach().cpu().numpy(), check_finite=False)
                return torch.from_numpy(sol).to(device=w.device, dtype=w.dtype)

            return cn_step

        # semi-lagrangian: the foot of x_i is x_i - c h = x_j + tau h with j = i - m - 1, tau in (0, 1]
        m = math.floor(c)
        tau = 1.0 - (c - m)
        weights = (-tau * (tau - 1) * (tau - 2) / 6, (tau + 1) * (tau - 1) * (tau - 2) / 2,
                   -(tau + 1) * tau * (tau - 2) / 2, (tau + 1) * tau * (tau - 1) / 6)
        base = torch.arange(n, device=self.device) - m - 2
        # extended state [0, u_0 .. u_{n-1}, u_{n-1}]: indices below 0 read the inflow zero, above n-1 the outflow
        index = [(base + o).clamp(-1, n) + 1 for o in range(4)]

        def sl_step(w: torch.Tensor) -> torch.Tensor:
            ext = torch.cat([zero, w, w[-1:]])
            return sum(wt * ext[idx] for wt, idx in zip(weights, index) if wt != 0)

        return sl_step

"""Pressure systems of smoke plumes rising past obstacles: sequences of realistic fluid Poisson problems.

:func:`smoke_systems` runs the :class:`~neuralnumerics.classical.Smoke` simulator and returns the
pressure systems its projections solved, the test problems of learned solvers such as DCDM (Kaneda et
al., ICML 2023); :func:`obstacle_mask` makes the obstacles (a ball, a box, or a random smooth blob).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..classical.smoke import SOURCE_HEIGHT, SOURCE_RADIUS, Smoke
from ..linalg import LinearOperator, LinearSolver, PoissonGrid

__all__ = ["obstacle_mask", "smoke_systems", "OBSTACLE_KINDS"]

OBSTACLE_KINDS = ("none", "sphere", "box", "blob")

# obstacles sit centred horizontally, their centre at this fraction of the height of the box, their size a
# fraction of the smallest extent of the box (the default source lies below them)
_OBSTACLE_HEIGHT = 0.45
_SPHERE_RADIUS = 0.15
_BOX_HALF_SIDE = 0.12
_BLOB_BALLS = 6
_BLOB_FLOOR = SOURCE_HEIGHT + SOURCE_RADIUS + 0.05


def obstacle_mask(shape: Sequence[int], kind: str = "sphere", *, seed: int = 0) -> torch.Tensor:
    """A solid obstacle on a cell grid of side ``h = 1 / shape[0]``, above the default smoke source.

    With ``L`` the box's extents (``n_a h``) and ``m = min(L)``, the obstacle is centred horizontally at a
    height of ``0.45 L[-1]``:

    - ``"none"``: no solid cell;
    - ``"sphere"``: a disc (2D) or ball (3D) of radius ``0.15 m``;
    - ``"box"``: an axis-aligned square or cube of half side ``0.12 m``;
    - ``"blob"``: an arbitrary smooth shape fixed by ``seed``: the set where a sum of six Gaussian bumps
      (centres within ``0.12 m`` of the middle along each axis, widths ``0.05 m`` to ``0.08 m``) exceeds
      1/2, with its enclosed cavities filled (no pocket of fluid is sealed off) and anything below the
      height ``0.25 m`` removed (it always clears the default source of
      :class:`~neuralnumerics.classical.Smoke`, whose top is at ``0.2 m``).

    A shape that covers no cell centre (very coarse grids) falls back to the cell containing its centre.
    ``"sphere"`` and ``"box"`` do not depend on ``seed``.

    Args:
        shape: cells per axis, 2 or 3 entries, each at least 4 (the last axis is up).
        kind: one of :data:`OBSTACLE_KINDS`.
        seed: fixes the ``"blob"``.

    Returns:
        A boolean tensor of shape ``shape`` on the CPU, True on solid cells.

    Raises:
        ValueError: on an unknown ``kind`` or a bad ``shape``.
    """
    shape = _shape(shape, "obstacle_mask")
    if kind not in OBSTACLE_KINDS:
        raise ValueError(f"obstacle_mask: unknown obstacle kind {kind!r}; choose one of {', '.join(OBSTACLE_KINDS)}")
    h = 1.0 / shape[0]
    extent = [n * h for n in shape]
    m = min(extent)
    centre = np.array([0.5 * e for e in extent[:-1]] + [_OBSTACLE_HEIGHT * extent[-1]])
    axes = np.meshgrid(*[(np.arange(n) + 0.5) * h for n in shape], indexing="ij")
    if kind == "none":
        return torch.zeros(shape, dtype=torch.bool)
    if kind == "sphere":
        solid = sum((x - c) ** 2 for x, c in zip(axes, centre)) < (_SPHERE_RADIUS * m) ** 2
    elif kind == "box":
        solid = np.all([np.abs(x - c) < _BOX_HALF_SIDE * m for x, c in zip(axes, centre)], axis=0)
    else:
        from scipy import ndimage

        rng = np.random.default_rng(seed)
        field = np.zeros(shape)
        for _ in range(_BLOB_BALLS):
            c = centre + rng.uniform(-0.12, 0.12, size=len(shape)) * m
            width = rng.uniform(0.05, 0.08) * m
            field += np.exp(-sum((x - ci) ** 2 for x, ci in zip(axes, c)) / width ** 2)
        solid = ndimage.binary_fill_holes(field > 0.5) & (axes[-1] > _BLOB_FLOOR * m)
    if not solid.any():
        solid[tuple(min(n - 1, int(c / h)) for n, c in zip(shape, centre))] = True
    return torch.from_numpy(np.ascontiguousarray(solid))


def smoke_systems(shape: Sequence[int], *, obstacle: str = "sphere", steps: int = 10, every: int = 1,
                  warmup: int = 1, dt: float | None = None, open_top: bool = True, seed: int = 0,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                  solver: LinearSolver | None = None,
                  preconditioner="auto") -> list[tuple[PoissonGrid, torch.Tensor]]:
    """The pressure Poisson systems of a smoke plume rising past an obstacle, one per recorded time step.

    Runs :class:`~neuralnumerics.classical.Smoke` on ``shape`` cells of side ``h = 1 / shape[0]`` (walls
    on every side, the top open unless ``open_top`` is False), with the obstacle
    ``obstacle_mask(shape, obstacle, seed=seed)`` and the default source of the simulator (a ball of
    radius ``0.08 m`` at height ``0.12 m``, ``m`` the smallest extent of the box), shifted horizontally
    by up to ``0.1 m`` along each horizontal axis (uniformly at random, fixed by ``seed``). It
    takes ``warmup + steps`` steps of size ``dt`` and returns the systems of steps ``warmup + every``,
    ``warmup + 2 every``, ... (at most ``warmup + steps``).

    Each system is ``(A, b)``: ``A`` the simulator's :class:`~neuralnumerics.linalg.PoissonGrid` (one
    object shared by all systems: the obstacle does not move) and ``b = -div(u*)`` the right-hand side the
    projection solved, the divergence of the advected, buoyancy-driven velocity: structured, flow
    dependent, 0 on solid cells; in a closed box (``A`` singular) orthogonal to ``A``'s null space, so
    every system is consistent. ``A x = b`` gives the potential ``dt p / rho``.

    Args:
        shape: cells per axis, 2 or 3 entries, each at least 4 (the last axis is up).
        obstacle: one of :data:`OBSTACLE_KINDS`.
        steps: recorded time steps, a positive integer.
        every: keep every ``every``-th system, a positive integer.
        warmup: steps taken before the recorded ones (their systems are dropped), to let the plume develop.
            The default 1 drops the first step's system: the flow starts from rest, so its right-hand side
            is the source's injection alone, a few cells.
        dt: time step; default ``2 h``: a CFL number of 2 (two cells per step) at the plume's typical
            speed, 1 (the source's upward velocity), at any resolution.
        open_top: open top (SPD systems); otherwise a closed box (singular, consistent systems).
        seed: fixes the source's position and a ``"blob"`` obstacle.
        dtype, device: of the systems (and the simulation).
        solver: the simulator's pressure solver (default :class:`~neuralnumerics.linalg.CG` with
            ``rtol=1e-6``): it sets how accurately the flow is projected, not the systems' form.
        preconditioner: passed to :class:`~neuralnumerics.classical.Smoke`; the default ``"auto"`` factors a
            2D SPD operator of at most ``2^20`` cells once with a sparse LU (SuperLU), an exact inverse with
            which CG converges in one or two iterations (it makes 512^2 grids cheap), and uses none
            otherwise (3D fill-in would be too large) or when the solver takes no preconditioner.

    Returns:
        A list of ``steps // every`` pairs ``(A, b)``, ``b`` of shape ``(prod(shape),)``.

    Raises:
        ValueError: on a bad ``shape``, ``obstacle``, ``steps``, ``every``, ``warmup`` or ``dt``.
        StepDivergedError, LinearSolveError: if the simulation fails (see :meth:`Smoke.step`).

    References:
        R. Fedkiw, J. Stam, H. W. Jensen, Visual simulation of smoke, SIGGRAPH 2001.
        A. Kaneda et al., A deep conjugate direction method for iteratively solving linear systems, ICML 2023.
    """
    shape = _shape(shape, "smoke_systems")
    for name, value, low in (("steps", steps, 1), ("every", every, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"smoke_systems: {name} must be an integer >= {low}, got {value!r}")
    h = 1.0 / shape[0]
    if dt is None:
        dt = 2.0 * h
    elif isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"smoke_systems: dt must be a positive finite number, got {dt!r}")
    solid = obstacle_mask(shape, obstacle, seed=seed)
    extent = [n * h for n in shape]
    m = min(extent)
    rng = np.random.default_rng([seed, 1])  # independent of the blob's stream
    centre = [0.5 * e + rng.uniform(-0.1, 0.1) * m for e in extent[:-1]] + [SOURCE_HEIGHT * m]
    if isinstance(preconditioner, str):
        if preconditioner != "auto":
            raise ValueError(f"smoke_systems: preconditioner must be 'auto', None, an operator or a callable "
                             f"op -> operator, got {preconditioner!r}")
        preconditioner = _auto_preconditioner if solver is None or solver.accepts_preconditioner else None
    sim = Smoke(shape, solid=solid, open_top=open_top, source=(centre, SOURCE_RADIUS * m), solver=solver,
                preconditioner=preconditioner, record_pressure=True, dtype=dtype, device=device)
    sim.run(warmup + steps, float(dt))
    return sim.pressure_systems[warmup + every - 1::every]


_LU_MAX_CELLS = 2 ** 20


class _SparseLU(LinearOperator):
    """``A^{-1}`` through a sparse LU factorisation of ``op.to_scipy()`` (SuperLU, float64, on the CPU).

    Vectors on other devices or in other dtypes are moved to the CPU in float64 and back.
    """

    def __init__(self, op: PoissonGrid) -> None:
        import scipy.sparse.linalg as spla

        super().__init__(op.shape, op.dtype, op.device, symmetric=True, positive_definite=True)
        self._lu = spla.splu(op.to_scipy().tocsc().astype(np.float64), permc_spec="MMD_AT_PLUS_A")

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        y = self._lu.solve(x.detach().cpu().numpy().astype(np.float64))
        return torch.from_numpy(y).to(dtype=x.dtype, device=x.device)


def _auto_preconditioner(op: PoissonGrid) -> LinearOperator | None:
    """The exact sparse-LU inverse for a 2D SPD operator of at most ``2^20`` cells, else None."""
    if len(op.grid_shape) == 2 and not op.singular and op.shape[0] <= _LU_MAX_CELLS:
        return _SparseLU(op)
    return None


def _shape(shape, where: str) -> tuple[int, ...]:
    try:
        sizes = tuple(shape)
    except TypeError:
        raise ValueError(f"{where}: shape must be 2 or 3 cell counts, got {shape!r}") from None
    if (len(sizes) not in (2, 3) or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes)
            or min(sizes) < 4):
        raise ValueError(f"{where}: shape must be 2 or 3 integer cell counts of at least 4, e.g. (64, 64) or "
                         f"(32, 32, 32), got {shape!r}")
    return tuple(int(s) for s in sizes)

"""Pressure systems of a fluid tank: walls, an optional open top, an obstacle, a smooth random right-hand side."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..linalg import PoissonGrid

__all__ = ["tank_system", "smooth_field", "OBSTACLES"]

OBSTACLES = ("disc", "box", "none")


def tank_system(shape: Sequence[int], *, obstacle: str = "disc", open_top: bool = True, seed: int = 0,
                modes: int = 8, dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> tuple[PoissonGrid, torch.Tensor]:
    """The pressure Poisson system of a tank on a unit-width cell grid.

    Walls on every side (Neumann) except, with ``open_top``, the high end of the last axis (Dirichlet,
    like a free surface); an obstacle in the middle: a disc/ball of radius 0.2 (``"disc"``), a centred
    square/cube of side 0.3 (``"box"``), or none. The right-hand side is a smooth random field (a sum of
    ``modes`` random cosine modes per axis), zero in the obstacle; for a closed tank it is projected onto
    the range of the operator so the singular system is consistent.

    Args:
        shape: cells per axis, 2 or 3 entries.
        obstacle: one of :data:`OBSTACLES`.
        open_top: open (Dirichlet) top face; otherwise the tank is closed and the operator singular.
        seed: fixes the right-hand side.
        modes: number of random Fourier modes.
        dtype, device: of the operator and the right-hand side.

    Returns:
        ``(A, b)``: a :class:`~neuralnumerics.linalg.PoissonGrid` and a vector of ``prod(shape)`` entries.

    Raises:
        ValueError: on an unknown obstacle or a bad shape.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise ValueError(f"tank_system: shape must be 2 or 3 sizes of at least 2 cells, got {shape}")
    if obstacle not in OBSTACLES:
        raise ValueError(f"tank_system: unknown obstacle {obstacle!r}; choose one of {', '.join(OBSTACLES)}")
    h = 1.0 / shape[0]
    centres = [(np.arange(s) + 0.5) * h for s in shape]
    axes = np.meshgrid(*centres, indexing="ij")
    middle = [0.5 * s * h for s in shape]
    if obstacle == "disc":
        solid = sum((a - c) ** 2 for a, c in zip(axes, middle)) < 0.2 ** 2
    elif obstacle == "box":
        solid = np.all([np.abs(a - c) < 0.15 for a, c in zip(axes, middle)], axis=0)
    else:
        solid = np.zeros(shape, dtype=bool)
    boundary = ["neumann"] * (len(shape) - 1) + [("neumann", "dirichlet" if open_top else "neumann")]
    op = PoissonGrid(shape, boundary=boundary, solid=solid, spacing=h, dtype=dtype, device=device)
    field = smooth_field(shape, seed=seed, modes=modes).numpy()
    field[solid] = 0.0
    b = torch.as_tensor(field.reshape(-1), dtype=dtype, device=device)
    if op.singular:
        b = op.project_out_nullspace(b)
    return op, b


def smooth_field(shape: Sequence[int], *, seed: int = 0, modes: int = 8) -> torch.Tensor:
    """A smooth random cell field: a sum of ``modes`` products of cosines, wave numbers 1-5 per axis.

    Cells are of side ``1 / shape[0]``, centred; the field is float64 of shape ``shape``, fixed by ``seed``.
    """
    shape = tuple(int(s) for s in shape)
    h = 1.0 / shape[0]
    axes = np.meshgrid(*[(np.arange(s) + 0.5) * h for s in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    field = np.zeros(shape)
    for _ in range(modes):
        k = rng.integers(1, 6, size=len(shape))
        phase = rng.uniform(0, 2 * math.pi, size=len(shape))
        term = np.ones(shape)
        for a, kk, ph in zip(axes, k, phase):
            term = term * np.cos(math.pi * kk * a + ph)
        field += rng.normal() * term
    return torch.from_numpy(field)

"""Rigid obstacles for elastic bodies: a ground plane, a solid sphere and a bowl, with penalty contact terms.

Each obstacle gives, for deformed positions ``q`` of shape ``(N, d)`` (``d`` = 2 or 3, the last coordinate
pointing up), the penetration depth (``(N,)``, zero for points in the free region) and the unit direction
that leads back out of the obstacle (``(N, d)``). Two contact terms are built on them:

* :func:`penalty_energy`: the penalty potential ``k/2 sum_i depth_i^2``, whose negative gradient pushes each
  penetrating point out along the obstacle's normal with force ``k depth_i``;
* :func:`collision_work`: the INSR paper's collision term, ``-dt sum_i qdot_i . (k depth_i n_i)`` over the
  penetrating points, the work of that penalty force over a step, as the paper's code adds it to the
  per-step objective.

The obstacles follow the paper's: a horizontal plane (``collision``), a solid sphere or disc
(``collision_sphere``), and a bowl, the lower half of a sphere whose inside is the free region
(``collision_bowl``).

References:
    Chen, Wu, Grinspun, Zheng, Chen. "Implicit Neural Spatial Representations for Time-dependent PDEs",
    ICML 2023, Sec. 5.3 and its code (``elasticity/losses.py``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = ["Plane", "Sphere", "Bowl", "penalty_density", "penalty_energy", "collision_work"]


def _check_points(q, who: str) -> torch.Tensor:
    if not isinstance(q, torch.Tensor) or q.ndim != 2 or q.shape[1] not in (2, 3):
        shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"{who}: q must be points of shape (N, d) with d = 2 or 3, got {shape}")
    return q


def _positive(value, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{who}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def _safe_unit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|v|, v / |v|)`` row-wise, with a zero direction (and no NaN gradient) where ``v = 0``."""
    norm = torch.linalg.vector_norm(v, dim=-1)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return norm, v / safe.unsqueeze(-1)


@dataclass(frozen=True)
class Plane:
    """The half-space below ``height`` along the last coordinate; the free region is above it."""

    height: float = 0.0

    def penetration(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(depth (N,), outward direction (N, d))``: depth ``max(0, height - q_last)``, direction up."""
        q = _check_points(q, "Plane.penetration")
        depth = (self.height - q[:, -1]).clamp_min(0)
        up = torch.zeros_like(q)
        up[:, -1] = 1
        return depth, up


@dataclass(frozen=True)
class Sphere:
    """A solid ball (a disc in 2D) of ``radius`` around ``center``; the free region is outside it."""

    center: tuple[float, ...]
    radius: float

    def __post_init__(self):
        _positive(self.radius, "radius", "Sphere")

    def penetration(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(depth, direction)``: depth ``max(0, radius - |q - c|)``, direction away from the centre."""
        q = _check_points(q, "Sphere.penetration")
        c = q.new_tensor(self.center[:q.shape[1]])
        dist, direction = _safe_unit(q - c)
        return (self.radius - dist).clamp_min(0), direction


@dataclass(frozen=True)
class Bowl:
    """The lower half of a sphere of ``radius`` around ``center``, as a container: points below the centre
    must stay within ``radius`` of it (the paper's bowl); points above the centre are free."""

    center: tuple[float, ...]
    radius: float

    def __post_init__(self):
        _positive(self.radius, "radius", "Bowl")

    def penetration(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(depth, direction)``: for points below the centre, depth ``max(0, |q - c| - radius)`` and the
        direction towards the centre; zero above it."""
        q = _check_points(q, "Bowl.penetration")
        c = q.new_tensor(self.center[:q.shape[1]])
        dist, direction = _safe_unit(c - q)
        below = q[:, -1] < c[-1]
        depth = torch.where(below, (dist - self.radius).clamp_min(0), torch.zeros_like(dist))
        return depth, direction


def penalty_density(q: torch.Tensor, obstacles, stiffness: float) -> torch.Tensor:
    """``(N,)``: the penalty ``stiffness/2 depth_i(q)^2`` of each point, summed over the ``obstacles`` (a
    sequence); per unit volume when the points are quadrature points of a body, as INSR and the
    finite-element baseline use it."""
    k = _positive(stiffness, "stiffness", "penalty_density")
    out = q.new_zeros(q.shape[0])
    for obstacle in obstacles:
        depth, _ = obstacle.penetration(q)
        out = out + 0.5 * k * depth.square()
    return out


def penalty_energy(q: torch.Tensor, obstacle, stiffness: float) -> torch.Tensor:
    """The penalty potential ``stiffness/2 sum_i depth_i(q)^2`` (a scalar); zero when nothing penetrates.

    Its negative gradient is the force ``stiffness * depth_i * n_i`` on each penetrating point ``i``, along
    the obstacle's outward direction ``n_i``.
    """
    return penalty_density(q, (obstacle,), stiffness).sum()


def collision_work(q: torch.Tensor, qdot: torch.Tensor, dt: float, obstacle, stiffness: float) -> torch.Tensor:
    """The INSR paper's collision term ``-dt sum_i qdot_i . (stiffness depth_i n_i)`` (a scalar).

    Args:
        q: ``(N, d)`` deformed positions at the end of the step.
        qdot: ``(N, d)`` velocities over the step, ``(q - q_prev) / dt``.
        dt: the step.
        obstacle: a :class:`Plane`, :class:`Sphere` or :class:`Bowl`.
        stiffness: the penalty stiffness ``k`` (the paper's ``ratio_collide``).
    """
    k = _positive(stiffness, "stiffness", "collision_work")
    depth, direction = obstacle.penetration(q)
    if qdot.shape != q.shape:
        raise ValueError(f"collision_work: qdot has shape {tuple(qdot.shape)}, q has {tuple(q.shape)}; they must match")
    force = k * depth.unsqueeze(-1) * direction
    return -dt * (qdot * force).sum()

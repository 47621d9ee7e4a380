"""3D point clouds sampled on simple surfaces and curves, generated procedurally (nothing is downloaded).

The gradient-flow demos of :mod:`neuralnumerics.ot` move one of these clouds onto another, as the sliced
Wasserstein papers do with ShapeNet point clouds.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["point_cloud", "CLOUD_SHAPES"]


def _sphere(u, v):
    z = 2 * u - 1
    r = torch.sqrt((1 - z * z).clamp_min(0))
    phi = 2 * math.pi * v
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def _torus(u, v, w):
    # area-uniform on the torus (R = 1, r = 0.35): accept the tube angle with probability ~ (R + r cos)
    R, r = 1.0, 0.35
    theta = 2 * math.pi * u
    phi = 2 * math.pi * v
    keep = w * (R + r) <= R + r * torch.cos(phi)
    ring = R + r * torch.cos(phi)
    pts = torch.stack([ring * torch.cos(theta), ring * torch.sin(theta), r * torch.sin(phi)], -1)
    return pts, keep


def _cube(u, v, w):
    face = torch.floor(w * 6).clamp_max(5).long()
    a, b = 2 * u - 1, 2 * v - 1
    one = torch.ones_like(a)
    axes = torch.stack([torch.stack([one, a, b], -1), torch.stack([-one, a, b], -1),
                        torch.stack([a, one, b], -1), torch.stack([a, -one, b], -1),
                        torch.stack([a, b, one], -1), torch.stack([a, b, -one], -1)])
    return axes[face, torch.arange(len(face))] * 0.8


def _trefoil(u, v, w):
    t = 2 * math.pi * u
    centre = torch.stack([torch.sin(t) + 2 * torch.sin(2 * t), torch.cos(t) - 2 * torch.cos(2 * t),
                          -torch.sin(3 * t)], -1) / 3
    # a thin tube around the knot: an isotropic offset of radius 0.08
    offset = _sphere(v, w) * 0.08
    return centre + offset


def _helix(u, v, w):
    t = 4 * math.pi * u
    centre = torch.stack([0.7 * torch.cos(t), 0.7 * torch.sin(t), 2 * u - 1], -1)
    return centre + _sphere(v, w) * 0.08


CLOUD_SHAPES = ("sphere", "torus", "cube", "trefoil", "helix")


def point_cloud(shape: str, n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None, center=(0.0, 0.0, 0.0), scale: float = 1.0) -> torch.Tensor:
    """``n`` points sampled uniformly at random on a 3D shape, ``(n, 3)``.

    Shapes (:data:`CLOUD_SHAPES`), each within about ``[-1, 1]^3`` before ``scale`` and ``center``:
    ``"sphere"`` (the unit sphere's surface), ``"torus"`` (radii 1 and 0.35, uniform by area),
    ``"cube"`` (the surface of a cube of side 1.6), ``"trefoil"`` (a thin tube around a trefoil knot) and
    ``"helix"`` (a thin tube around two turns of a helix).

    Args:
        shape: one of :data:`CLOUD_SHAPES`.
        n: the number of points.
        generator: the random source (None: torch's global generator).
        dtype, device: of the result (default: torch's default dtype, the CPU).
        center: added to every point (3 numbers).
        scale: multiplies every point before ``center`` is added.

    Returns:
        ``(n, 3)``.

    Raises:
        ValueError: an unknown shape or a non-positive ``n``.
    """
    if shape not in CLOUD_SHAPES:
        raise ValueError(f"point_cloud: unknown shape {shape!r}; choose one of {', '.join(CLOUD_SHAPES)}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"point_cloud: n must be a positive integer, got {n!r}")
    where = torch.device("cpu") if generator is None else generator.device

    def uniform(k):
        return torch.rand(k, generator=generator, dtype=torch.float64, device=where)

    if shape == "sphere":
        pts = _sphere(uniform(n), uniform(n))
    elif shape == "torus":
        chunks, have = [], 0
        while have < n:
            k = 2 * (n - have) + 16
            p, keep = _torus(uniform(k), uniform(k), uniform(k))
            chunks.append(p[keep])
            have += int(keep.sum())
        pts = torch.cat(chunks)[:n]
    else:
        pts = {"cube": _cube, "trefoil": _trefoil, "helix": _helix}[shape](uniform(n), uniform(n), uniform(n))
    pts = pts * scale + torch.tensor(center, dtype=torch.float64, device=where)
    return pts.to(dtype=torch.get_default_dtype() if dtype is None else dtype, device=device or "cpu")

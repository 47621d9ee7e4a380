"""Rest shapes of elastic bodies: where INSR samples its points and what the finite-element baseline meshes.

A body is a region of ``R^d`` (``d`` = 2 or 3) in its rest configuration. Every body can

* draw points inside itself (:meth:`Body.sample`; scrambled Sobol or i.i.d. uniform), the quadrature
  points of INSR's energy integrals;
* draw points on its boundary (:meth:`Body.surface`), for pictures;
* mesh itself with linear triangles or tetrahedra (:meth:`Body.mesh`), for :class:`~neuralnumerics.classical.
  elasticity.ElasticFEM`.

Three kinds: :class:`BoxBody` (rectangles and cuboids), :class:`ImplicitBody` (inside a signed-distance-like
function; :func:`disc`, :func:`capsule`, :func:`torus` and :func:`blob` build procedural ones) and
:class:`MeshBody` (a user's triangle or tetrahedron mesh; :func:`load_mesh` reads ``.mesh``, ``.msh``, ``.vtu``
and the other formats of meshio).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import torch

__all__ = ["Body", "BoxBody", "ImplicitBody", "MeshBody", "disc", "capsule", "torus", "blob", "load_mesh",
           "check_mesh", "BODIES"]

F64 = torch.float64


def _sobol_unit(n: int, dim: int, generator: torch.Generator | None, quasi: bool) -> torch.Tensor:
    if quasi:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed).draw(n, dtype=F64)
    return torch.rand(n, dim, generator=generator, dtype=F64)


def check_mesh(vertices, cells, who: str = "mesh") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check a simplex mesh and return ``(vertices float64, cells int64, signed rest volumes)``.

    Raises:
        ValueError: naming the problem: wrong shapes or dimension, non-finite coordinates, indices out of
            range, degenerate or inverted elements (the first one and how many).
    """
    if not isinstance(vertices, torch.Tensor) or vertices.ndim != 2 or vertices.shape[1] not in (2, 3):
        raise ValueError(f"{who}: vertices must have shape (V, 2) or (V, 3), got {tuple(getattr(vertices, 'shape', ()))}")
    d = vertices.shape[1]
    if not isinstance(cells, torch.Tensor) or cells.ndim != 2 or cells.shape[1] != d + 1:
        raise ValueError(f"{who}: cells must have shape (E, {d + 1}) ({'triangles' if d == 2 else 'tetrahedra'} "
                         f"for {d}D vertices), got {tuple(getattr(cells, 'shape', ()))}")
    if cells.shape[0] == 0:
        raise ValueError(f"{who}: the mesh has no elements")
    if not bool(torch.isfinite(vertices).all()):
        raise ValueError(f"{who}: vertex coordinates contain NaN or inf")
    cells = cells.long()
    if int(cells.min()) < 0 or int(cells.max()) >= vertices.shape[0]:
        raise ValueError(f"{who}: cell indices must lie in [0, {vertices.shape[0]}), got "
                         f"[{int(cells.min())}, {int(cells.max())}]")
    x = vertices.to(F64)[cells]
    edges = (x[:, 1:] - x[:, :1]).mT
    det = torch.linalg.det(edges)
    scale = edges.abs().amax(dim=(-2, -1)) ** d
    bad = det <= 1e-12 * scale
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        kind = "inverted" if float(det[first]) < 0 else "degenerate"
        raise ValueError(f"{who}: element {first} (vertices {cells[first].tolist()}) is {kind} at rest (signed volume "
                         f"{float(det[first]) / math.factorial(d):.3g}); {int(bad.sum())} such elements in all. Fix "
                         "the mesh (orientation or collapsed elements)")
    return vertices.to(F64), cells, det / math.factorial(d)


class Body(ABC):
    """A region of ``R^d`` in its rest configuration (see the module docstring).

    Attributes:
        name: a short label.
        dim: 2 or 3.
        lo, hi: corners of an axis-aligned box containing the body.
        volume: its area (2D) or volume (3D).
    """

    name: str = "body"
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    volume: float

    @property
    def dim(self) -> int:
        return len(self.lo)

    @abstractmethod
    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,)`` bool: which of the points ``(n, d)`` lie inside."""

    @abstractmethod
    def sample(self, n: int, *, generator: torch.Generator | None = None, quasi: bool = True,
               dtype: torch.dtype = F64) -> torch.Tensor:
        """``(n, d)`` points inside the body, uniformly distributed (scrambled Sobol when ``quasi``)."""

    @abstractmethod
    def surface(self, n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = F64) -> torch.Tensor:
        """About ``n`` points on the body's boundary, ``(m, d)``."""

    @abstractmethod
    def mesh(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A conforming linear simplex mesh ``(vertices (V, d), cells (E, d + 1))``, about ``resolution``
        elements' edges across the longest side of the bounding box."""

    def _box_mesh(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A structured mesh of the bounding box, ``resolution`` cells along its longest side."""
        from ..classical.elasticity import box_mesh, rectangle_mesh

        size = [h - l for l, h in zip(self.lo, self.hi)]
        counts = [max(1, round(resolution * s / max(size))) for s in size]
        return rectangle_mesh(*counts, self.lo, self.hi) if self.dim == 2 else box_mesh(*counts, self.lo, self.hi)

    def _bbox_sample(self, n: int, generator, quasi: bool, dtype) -> torch.Tensor:
        """``n`` points inside by rejection from the bounding box."""
        if n < 1:
            raise ValueError(f"{self.name}: need at least one sample point, got n={n}")
        lo, hi = torch.tensor(self.lo, dtype=F64), torch.tensor(self.hi, dtype=F64)
        fraction = max(self.volume / float(torch.prod(hi - lo)), 1e-3)
        m = int(n / fraction * 1.1) + 64
        for _ in range(20):
            pts = lo + _sobol_unit(m, self.dim, generator, quasi) * (hi - lo)
            pts = pts[self.contains(pts)]
            if pts.shape[0] >= n:
                return pts[:n].to(dtype)
            m *= 2
        raise RuntimeError(f"{self.name}: could not draw {n} points inside the body; is it empty?")


class BoxBody(Body):
    """The rectangle or cuboid ``[lo, hi]`` (the INSR paper's ``[-1, 1]^d`` by default)."""

    def __init__(self, lo=(-1.0, -1.0), hi=(1.0, 1.0), name: str = "box"):
        if len(lo) != len(hi) or len(lo) not in (2, 3):
            raise ValueError(f"BoxBody: lo and hi must both have 2 or 3 coordinates, got {lo} and {hi}")
        if any(not h > l for l, h in zip(lo, hi)):
            raise ValueError(f"BoxBody: every hi must exceed its lo, got lo={lo}, hi={hi}")
        self.lo, self.hi, self.name = tuple(map(float, lo)), tuple(map(float, hi)), name
        self.volume = float(math.prod(h - l for l, h in zip(self.lo, self.hi)))

    def contains(self, x):
        lo, hi = x.new_tensor(self.lo), x.new_tensor(self.hi)
        return ((x >= lo - 1e-12) & (x <= hi + 1e-12)).all(dim=1)

    def sample(self, n, *, generator=None, quasi=True, dtype=F64):
        if n < 1:
            raise ValueError(f"{self.name}: need at least one sample point, got n={n}")
        lo, hi = torch.tensor(self.lo, dtype=F64), torch.tensor(self.hi, dtype=F64)
        return (lo + _sobol_unit(n, self.dim, generator, quasi) * (hi - lo)).to(dtype)

    def face(self, axis: int, side: int, n: int, *, dtype: torch.dtype = F64) -> torch.Tensor:
        """``n`` points (per in-face axis in 3D: ``n^2``) on the face ``x_axis = lo`` (``side`` 0) or ``hi``
        (``side`` 1), at cell centres of a uniform grid (the paper's "uniform" constraint samples)."""
        d = self.dim
        other = [k for k in range(d) if k != axis]
        axes = [torch.linspace(self.lo[k], self.hi[k], n + 1, dtype=F64) for k in other]
        axes = [0.5 * (a[1:] + a[:-1]) for a in axes]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d - 1)
        pts = torch.empty(grid.shape[0], d, dtype=F64)
        pts[:, other] = grid
        pts[:, axis] = (self.lo, self.hi)[side][axis]
        return pts.to(dtype)

    def surface(self, n, *, generator=None, dtype=F64):
        per = max(2, round(n / (2 * self.dim))) if self.dim == 2 else max(2, round(math.sqrt(n / 6)))
        return torch.cat([self.face(a, s, per, dtype=dtype) for a in range(self.dim) for s in (0, 1)])

    def mesh(self, resolution):
        return self._box_mesh(resolution)


class ImplicitBody(Body):
    """The set ``{x : sdf(x) < 0}`` inside the box ``[lo, hi]``.

    Args:
        sdf: ``(n, d) -> (n,)``, negative inside; a signed distance or any smooth function with a gradient of
            about unit length near the surface (its zero set is found by Newton projection).
        lo, hi: a box containing the body.
        name: a label.
        volume: the body's volume if known; by default estimated from 2^16 Sobol points (error ~1e-3).
    """

    def __init__(self, sdf: Callable[[torch.Tensor], torch.Tensor], lo, hi, name: str = "implicit",
                 volume: float | None = None):
        if len(lo) != len(hi) or len(lo) not in (2, 3):
            raise ValueError(f"ImplicitBody: lo and hi must both have 2 or 3 coordinates, got {lo} and {hi}")
        self.sdf, self.lo, self.hi, self.name = sdf, tuple(map(float, lo)), tuple(map(float, hi)), name
        if volume is None:
            lo_t, hi_t = torch.tensor(self.lo, dtype=F64), torch.tensor(self.hi, dtype=F64)
            pts = lo_t + torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=0).draw(2**16, dtype=F64) * (hi_t - lo_t)
            volume = float(self.contains(pts).double().mean() * torch.prod(hi_t - lo_t))
        if not volume > 0:
            raise ValueError(f"ImplicitBody {name!r}: the body is empty inside the box lo={self.lo}, hi={self.hi}")
        self.volume = float(volume)

    def contains(self, x):
        return self.sdf(x.to(F64)) < 0

    def sample(self, n, *, generator=None, quasi=True, dtype=F64):
        return self._bbox_sample(n, generator, quasi, dtype)

    def surface(self, n, *, generator=None, dtype=F64):
        lo, hi = torch.tensor(self.lo, dtype=F64), torch.tensor(self.hi, dtype=F64)
        band = 0.05 * float((hi - lo).max())
        pts = lo + torch.rand(40 * n, self.dim, generator=generator, dtype=F64) * (hi - lo)
        pts = pts[self.sdf(pts).abs() < band][:n]
        for _ in range(5):  # Newton projection onto the zero set
            x = pts.detach().requires_grad_(True)
            f = self.sdf(x)
            (g,) = torch.autograd.grad(f.sum(), x)
            pts = (x - (f / g.square().sum(1).clamp_min(1e-12))[:, None] * g).detach()
        return pts.to(dtype)

    def mesh(self, resolution):
        """The elements of a structured background mesh of the bounding box whose centroids lie inside
        (a stair-stepped approximation of the body's boundary, as voxel-based solvers use)."""
        V, C = self._box_mesh(resolution)
        C = C[self.contains(V[C].mean(1))]
        if C.shape[0] == 0:
            raise ValueError(f"{self.name}: no element of a {resolution}-cell mesh lies inside the body; raise the "
                             "resolution")
        used, C = torch.unique(C, return_inverse=True)
        return V[used], C


def disc(radius: float = 1.0, center=(0.0, 0.0)) -> ImplicitBody:
    """A disc (2D)."""
    c = torch.tensor(center, dtype=F64)
    r = float(radius)
    return ImplicitBody(lambda x: (x - c.to(x)).norm(dim=1) - r, [v - r for v in center], [v + r for v in center],
                        name="disc", volume=math.pi * r * r)


def capsule(radius: float = 0.4, length: float = 1.2, center=(0.0, 0.0, 0.0)) -> ImplicitBody:
    """A capsule (3D): the points within ``radius`` of a segment of ``length`` along the x axis."""
    c = torch.tensor(center, dtype=F64)
    r, h = float(radius), float(length) / 2

    def sdf(x):
        p = x - c.to(x)
        s = p[:, 0].clamp(-h, h)
        return torch.stack([p[:, 0] - s, p[:, 1], p[:, 2]], 1).norm(dim=1) - r

    lo = [c[0].item() - h - r, c[1].item() - r, c[2].item() - r]
    hi = [c[0].item() + h + r, c[1].item() + r, c[2].item() + r]
    return ImplicitBody(sdf, lo, hi, name="capsule", volume=math.pi * r * r * (2 * h) + 4 / 3 * math.pi * r ** 3)


def torus(major: float = 0.7, minor: float = 0.3, center=(0.0, 0.0, 0.0), tilt: float = 0.5) -> ImplicitBody:
    """A torus (3D) of radii ``major`` > ``minor``, its axis tilted by ``tilt`` radians from z towards y."""
    if not major > minor > 0:
        raise ValueError(f"torus: need major > minor > 0, got {major} and {minor}")
    c = torch.tensor(center, dtype=F64)
    ct, st = math.cos(tilt), math.sin(tilt)

    def sdf(x):
        p = x - c.to(x)
        y = ct * p[:, 1] - st * p[:, 2]  # rotate about x into the torus' frame
        z = st * p[:, 1] + ct * p[:, 2]
        ring = torch.sqrt(p[:, 0] ** 2 + y ** 2) - major
        return torch.sqrt(ring ** 2 + z ** 2) - minor

    e = major + minor
    return ImplicitBody(sdf, [v - e for v in center], [v + e for v in center], name="torus",
                        volume=2 * math.pi ** 2 * major * minor ** 2)


def blob(radius: float = 0.8, bumps: float = 0.18, seed: int = 0, center=(0.0, 0.0, 0.0)) -> ImplicitBody:
    """A lumpy blob (3D): a ball whose radius varies smoothly by about ``bumps`` of itself with direction, from
    five random lobes (``seed`` picks them)."""
    g = torch.Generator().manual_seed(int(seed))
    dirs = torch.randn(5, 3, generator=g, dtype=F64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    signs = torch.where(torch.rand(5, generator=g, dtype=F64) < 0.3, -1.0, 1.0)
    c = torch.tensor(center, dtype=F64)
    r = float(radius)

    def sdf(x):
        p = x - c.to(x)
        n = p.norm(dim=1).clamp_min(1e-9)
        cos = (p / n[:, None]) @ dirs.to(x).T
        return n - r * (1 + bumps * (signs.to(x) * torch.exp(4 * (cos - 1))).sum(1))

    e = r * (1 + 5 * bumps)
    return ImplicitBody(sdf, [v - e for v in center], [v + e for v in center], name="blob")


class MeshBody(Body):
    """A body given by a conforming linear triangle (2D) or tetrahedron (3D) mesh.

    Raises:
        ValueError: on a bad mesh (see :func:`check_mesh`).
    """

    def __init__(self, vertices: torch.Tensor, cells: torch.Tensor, name: str = "mesh"):
        self.vertices, self.cells, vol = check_mesh(vertices, cells, f"MeshBody {name!r}")
        self.name = name
        self.element_volumes = vol
        self.volume = float(vol.sum())
        self.lo = tuple(self.vertices.min(0).values.tolist())
        self.hi = tuple(self.vertices.max(0).values.tolist())
        self._boundary = None

    def contains(self, x):
        """Inside any element (barycentric test; ``O(n E)`` memory in chunks)."""
        x = x.to(F64)
        corners = self.vertices[self.cells]
        T_inv = torch.linalg.inv((corners[:, 1:] - corners[:, :1]).mT)
        out = torch.zeros(x.shape[0], dtype=torch.bool)
        chunk = max(1, 2**21 // self.cells.shape[0])  # points per pass: about 2M point-element pairs
        for i in range(0, x.shape[0], chunk):
            rel = x[i:i + chunk, None, :] - corners[None, :, 0]
            lam = torch.einsum("eij,nej->nei", T_inv, rel)
            inside = (lam >= -1e-12).all(-1) & (lam.sum(-1) <= 1 + 1e-12)
            out[i:i + chunk] = inside.any(1)
        return out

    def sample(self, n, *, generator=None, quasi=True, dtype=F64):
        if n < 1:
            raise ValueError(f"{self.name}: need at least one sample point, got n={n}")
        d = self.dim
        u = _sobol_unit(n, d + 1, generator, quasi)
        # element by inverse CDF of the volumes, then a uniform point of the simplex (sorted uniforms)
        cdf = torch.cumsum(self.element_volumes, 0)
        e = torch.searchsorted(cdf / cdf[-1], u[:, 0].contiguous()).clamp_max(self.cells.shape[0] - 1)
        s, _ = torch.sort(u[:, 1:], dim=1)
        lam = torch.diff(torch.cat([torch.zeros(n, 1, dtype=F64), s, torch.ones(n, 1, dtype=F64)], 1), dim=1)
        return (lam[:, :, None] * self.vertices[self.cells[e]]).sum(1).to(dtype)

    def boundary_facets(self) -> torch.Tensor:
        """``(B, d)`` vertex indices of the facets that belong to one element only."""
        if self._boundary is None:
            d = self.dim
            faces = torch.cat([self.cells[:, [k for k in range(d + 1) if k != j]] for j in range(d + 1)])
            key, _ = torch.sort(faces, dim=1)
            uniq, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
            self._boundary = uniq[counts == 1]
        return self._boundary

    def surface(self, n, *, generator=None, dtype=F64):
        facets = self.vertices[self.boundary_facets()]  # (B, d, d)
        d = self.dim
        edges = facets[:, 1:] - facets[:, :1]
        size = edges[:, 0].norm(dim=1) if d == 2 else torch.linalg.cross(edges[:, 0], edges[:, 1]).norm(dim=1)
        idx = torch.multinomial(size, n, replacement=True, generator=generator)
        u = torch.rand(n, d, generator=generator, dtype=F64)
        if d == 3:
            flip = u[:, 0] + u[:, 1] > 1
            u[flip, :2] = 1 - u[flip, :2]
            lam = torch.stack([1 - u[:, 0] - u[:, 1], u[:, 0], u[:, 1]], 1)
        else:
            lam = torch.stack([1 - u[:, 0], u[:, 0]], 1)
        return (lam[:, :, None] * facets[idx]).sum(1).to(dtype)

    def mesh(self, resolution=None):
        return self.vertices, self.cells


def load_mesh(path, dim: int | None = None, *, normalize: bool = False) -> MeshBody:
    """Read a triangle or tetrahedron mesh with meshio (``.mesh``, ``.msh``, ``.vtu``, ...) as a :class:`MeshBody`.

    Args:
        path: the file.
        dim: 2 (use its triangles, drop a constant third coordinate) or 3 (its tetrahedra); by default 3 when
            the file has tetrahedra, else 2.
        normalize: translate and scale the mesh into ``[-1, 1]^d`` (longest side 2), as the INSR paper does.

    Raises:
        FileNotFoundError: no such file. ImportError: meshio is not installed (``pip install meshio`` or the
        ``mesh`` extra). ValueError: an unreadable file, no elements of the needed kind, a 2D mesh that is
        not flat, or bad elements (:func:`check_mesh`); every message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file {str(path)!r} does not exist")
    try:
        import meshio
    except ImportError:
        raise ImportError("reading meshes needs meshio: pip install meshio (or neuralnumerics[mesh])") from None
    try:
        m = meshio.read(path)
    except (Exception, SystemExit) as exc:  # meshio raises many kinds of errors (and exits) on bad files
        raise ValueError(f"could not read mesh {str(path)!r}: {exc}") from None
    kinds = {c.type: c.data for c in m.cells}
    if dim is None:
        dim = 3 if "tetra" in kinds else 2
    if dim not in (2, 3):
        raise ValueError(f"load_mesh: dim must be 2 or 3, got {dim}")
    kind = "tetra" if dim == 3 else "triangle"
    if kind not in kinds:
        raise ValueError(f"mesh {str(path)!r} has no {kind} elements (it has {sorted(kinds) or 'none'}); "
                         f"{'a 3D body needs a tetrahedral mesh' if dim == 3 else 'a 2D body needs triangles'}")
    cells = torch.as_tensor(kinds[kind].astype("int64"))
    pts = torch.as_tensor(m.points, dtype=F64)
    if pts.shape[1] < dim:
        raise ValueError(f"mesh {str(path)!r} has {pts.shape[1]}D points; a {dim}D body needs {dim}D points")
    if dim == 2 and pts.shape[1] == 3:
        if float(pts[:, 2].abs().max()) > 1e-12 * float(pts.abs().max()):
            raise ValueError(f"mesh {str(path)!r}: its triangles are not in the plane z = 0; a 2D body must be flat")
        pts = pts[:, :2]
    pts = pts[:, :dim]
    used, cells = torch.unique(cells, return_inverse=True)  # drop vertices no element uses
    pts = pts[used]
    if normalize:
        lo, hi = pts.min(0).values, pts.max(0).values
        pts = (pts - (lo + hi) / 2) * (2 / float((hi - lo).max()))
    # files differ in their orientation convention: a mesh whose elements are all negatively oriented is
    # flipped; one with mixed orientations has inverted elements, which check_mesh reports
    x = pts[cells]
    vol = torch.linalg.det((x[:, 1:] - x[:, :1]).mT)
    if bool((vol < 0).all()):
        cells = cells[:, [1, 0] + list(range(2, dim + 1))]
    return MeshBody(pts, cells, name=path.stem)


#: Procedural bodies by name (the ``shape`` option of the elasticity scenarios).
BODIES: dict[str, Callable[[], Body]] = {
    "square": lambda: BoxBody((-1.0, -1.0), (1.0, 1.0), name="square"),
    "disc": disc,
    "cube": lambda: BoxBody((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), name="cube"),
    "capsule": capsule,
    "torus": torus,
    "blob": blob,
}

"""Rest shapes of elastic bodies: sampled points lie inside and are uniformly spread (Monte-Carlo moments against
closed forms), sampling is reproducible, surface points lie on the boundary, meshes are valid and fill the body,
mesh bodies sample by volume, and ``load_mesh`` round-trips meshio files and refuses bad ones clearly."""

from __future__ import annotations

import math

import pytest
import torch

from neuralnumerics.classical.elasticity import box_mesh, rectangle_mesh
from neuralnumerics.pde.bodies import (BODIES, BoxBody, ImplicitBody, MeshBody, blob, capsule, check_mesh, disc,
                                       load_mesh, torus)

meshio = pytest.importorskip("meshio")

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- sampling


def test_disc_samples_are_inside_and_uniform():
    r, c = 0.7, torch.tensor([0.3, -0.2], dtype=F64)
    body = disc(r, (0.3, -0.2))
    assert body.dim == 2 and body.volume == pytest.approx(math.pi * r * r, rel=1e-14)
    x = body.sample(8192, generator=gen())
    assert x.shape == (8192, 2) and x.dtype == F64
    assert bool(body.contains(x).all())
    dist = (x - c).norm(dim=1)
    assert float(dist.max()) <= r
    # uniform on the disc: centroid at the centre, E|x - c|^2 = r^2 / 2, a quarter of the points within r / 2
    torch.testing.assert_close(x.mean(0), c, rtol=0, atol=2e-3)
    assert float(dist.square().mean()) == pytest.approx(r * r / 2, rel=5e-3)
    assert float((dist < r / 2).double().mean()) == pytest.approx(0.25, abs=5e-3)


def test_capsule_volume_formula_and_uniform_samples():
    r, length = 0.4, 1.2
    body = capsule(r, length, center=(0.1, 0.0, -0.2))
    expect = math.pi * r * r * length + 4 / 3 * math.pi * r ** 3
    assert body.volume == pytest.approx(expect, rel=1e-14)
    # the same solid without a given volume: ImplicitBody's own Monte-Carlo estimate (2^16 Sobol points)
    estimated = ImplicitBody(body.sdf, body.lo, body.hi)
    assert estimated.volume == pytest.approx(expect, rel=5e-3)
    x = body.sample(8192, generator=gen(1))
    assert bool(body.contains(x).all())
    torch.testing.assert_close(x.mean(0), torch.tensor([0.1, 0.0, -0.2], dtype=F64), rtol=0, atol=5e-3)
    # the share of points in the cylindrical part is the cylinder's share of the volume
    in_cylinder = float(((x[:, 0] - 0.1).abs() < length / 2).double().mean())
    assert in_cylinder == pytest.approx(math.pi * r * r * length / expect, abs=1e-2)


def test_torus_volume_from_the_implicit_estimate_and_uniform_samples():
    R, r = 0.7, 0.3
    body = torus(R, r, center=(0.0, 0.1, 0.0), tilt=0.5)
    exact = 2 * math.pi ** 2 * R * r * r
    assert body.volume == pytest.approx(exact, rel=1e-14)
    estimated = ImplicitBody(body.sdf, body.lo, body.hi, volume=None)
    assert estimated.volume == pytest.approx(exact, rel=5e-3)
    x = estimated.sample(8192, generator=gen(2))
    assert bool(body.contains(x).all())
    torch.testing.assert_close(x.mean(0), torch.tensor([0.0, 0.1, 0.0], dtype=F64), rtol=0, atol=5e-3)
    # distance rho from the tube's core circle: dV = 2 pi R rho d rho, so a quarter of the volume has rho < r / 2
    rho = body.sdf(x) + r
    assert float((rho < r / 2).double().mean()) == pytest.approx(0.25, abs=1e-2)
    with pytest.raises(ValueError, match="major > minor > 0"):
        torus(0.3, 0.7)


def test_box_samples_are_uniform_and_quasi_random_points_are_more_even():
    body = BoxBody((-1.0, 0.0, 2.0), (1.0, 0.5, 3.0))
    assert body.volume == pytest.approx(1.0) and body.dim == 3
    lo, hi = torch.tensor(body.lo, dtype=F64), torch.tensor(body.hi, dtype=F64)
    for quasi, tol in ((True, 2e-3), (False, 2e-2)):
        x = body.sample(4096, generator=gen(3), quasi=quasi)
        assert bool(body.contains(x).all())
        torch.testing.assert_close(x.mean(0), (lo + hi) / 2, rtol=0, atol=tol * float((hi - lo).max()))
        torch.testing.assert_close(x.var(0), (hi - lo) ** 2 / 12, rtol=5 * tol, atol=0)
    with pytest.raises(ValueError, match="every hi must exceed its lo"):
        BoxBody((0.0, 0.0), (1.0, 0.0))
    with pytest.raises(ValueError, match="at least one sample point"):
        body.sample(0)


@pytest.mark.parametrize("name", sorted(BODIES))
def test_sampling_is_reproducible_with_a_seeded_generator(name):
    body = BODIES[name]()
    for quasi in (True, False):
        a = body.sample(300, generator=gen(5), quasi=quasi)
        b = body.sample(300, generator=gen(5), quasi=quasi)
        assert torch.equal(a, b)
        assert not torch.equal(a, body.sample(300, generator=gen(6), quasi=quasi))
        assert bool(body.contains(a).all())
    assert not torch.equal(body.sample(300, generator=gen(5), quasi=True),
                           body.sample(300, generator=gen(5), quasi=False))
    assert body.sample(10, generator=gen(5), dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("body", [disc(0.7, (0.3, -0.2)), capsule(), torus(), blob(seed=3)],
                         ids=["disc", "capsule", "torus", "blob"])
def test_surface_points_lie_on_the_zero_set(body):
    s = body.surface(400, generator=gen(7))
    assert s.ndim == 2 and s.shape[1] == body.dim and s.shape[0] > 300
    assert float(body.sdf(s).abs().max()) < 1e-9


def test_box_surface_points_lie_on_its_faces():
    body = BoxBody((-1.0, -0.5), (2.0, 0.5))
    s = body.surface(100)
    lo, hi = torch.tensor(body.lo, dtype=F64), torch.tensor(body.hi, dtype=F64)
    on_face = ((s - lo).abs() < 1e-12) | ((s - hi).abs() < 1e-12)
    assert bool(on_face.any(1).all()) and bool(body.contains(s).all())
    face = body.face(0, 1, 4)
    assert face.shape == (4, 2) and bool((face[:, 0] == 2.0).all())
    torch.testing.assert_close(face[:, 1], torch.tensor([-0.375, -0.125, 0.125, 0.375], dtype=F64))


# ----------------------------------------------------------------------------------------------- meshes


def _surface_measure(name: str) -> float:
    return {"disc": 2 * math.pi * 0.7, "capsule": 2 * math.pi * 0.4 * 1.2 + 4 * math.pi * 0.4 ** 2,
            "torus": 4 * math.pi ** 2 * 0.7 * 0.3}[name]


@pytest.mark.parametrize("resolution", [16, 32])
@pytest.mark.parametrize("name", ["disc", "capsule", "torus"])
def test_implicit_body_meshes_are_valid_and_fill_the_body(name, resolution):
    body = disc(0.7, (0.3, -0.2)) if name == "disc" else BODIES[name]()
    V, C = body.mesh(resolution)
    V, C, vol = check_mesh(V, C)  # raises on degenerate or inverted elements
    assert int(C.max()) == V.shape[0] - 1 and torch.unique(C).numel() == V.shape[0]  # no unused vertices
    h = max(b - a for a, b in zip(body.lo, body.hi)) / resolution
    # a stair-stepped boundary: the volume error is at most a fraction of (boundary measure) x (cell size)
    assert abs(float(vol.sum()) - body.volume) < 0.1 * _surface_measure(name) * h
    assert bool(body.contains(V[C].mean(1)).all())
    assert float(body.sdf(V).max()) < math.sqrt(body.dim) * h


def test_box_meshes_are_exact():
    for body in (BoxBody((-1.0, -1.0), (3.0, 1.0)), BoxBody((0.0, 0.0, 0.0), (1.0, 0.5, 2.0))):
        V, C = body.mesh(8)
        _, _, vol = check_mesh(V, C)
        assert float(vol.sum()) == pytest.approx(body.volume, rel=1e-13)
        torch.testing.assert_close(V.min(0).values, torch.tensor(body.lo, dtype=F64))
        torch.testing.assert_close(V.max(0).values, torch.tensor(body.hi, dtype=F64))
    V, C = BoxBody((-1.0, -1.0), (3.0, 1.0)).mesh(8)
    assert C.shape == (2 * 8 * 4, 3)  # 8 cells along the long side, 4 along the short one


def test_mesh_body_sampling_is_volume_weighted():
    # a big triangle (area 0.5) and a small one (area 0.005), not even connected
    V = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.1, 0.0], [2.0, 0.1]], dtype=F64)
    C = torch.tensor([[0, 1, 2], [3, 4, 5]])
    body = MeshBody(V, C, name="two")
    assert body.volume == pytest.approx(0.505) and body.dim == 2
    small = 0.005 / 0.505
    for quasi, n, tol in ((True, 20000, 1e-3), (False, 20000, 3e-3)):
        x = body.sample(n, generator=gen(0), quasi=quasi)
        assert bool(body.contains(x).all())
        in_small = x[:, 0] >= 2.0
        assert float(in_small.double().mean()) == pytest.approx(small, abs=tol)
        torch.testing.assert_close(x[~in_small].mean(0), torch.tensor([1 / 3, 1 / 3], dtype=F64), rtol=0,
                                   atol=5e-3)
    outside = torch.tensor([[0.6, 0.6], [1.5, 0.0], [2.06, 0.06], [-1e-3, 0.5]], dtype=F64)
    assert not bool(body.contains(outside).any())


def test_mesh_body_sampling_in_3d_is_volume_weighted():
    V = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                      [3, 0, 0], [3.2, 0, 0], [3, 0.2, 0], [3, 0, 0.2]], dtype=F64)
    C = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    body = MeshBody(V, C)
    big, small = 1 / 6, 0.2 ** 3 / 6
    assert body.volume == pytest.approx(big + small)
    x = body.sample(20000, generator=gen(1))
    assert bool(body.contains(x).all())
    assert float((x[:, 0] >= 3.0).double().mean()) == pytest.approx(small / (big + small), abs=1e-3)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_boundary_facets_of_structured_meshes(n):
    body = MeshBody(*rectangle_mesh(n, n))
    facets = body.boundary_facets()
    assert facets.shape == (4 * n, 2)
    V = body.vertices[facets]
    assert bool((V.abs() >= 1 - 1e-12).any(-1).all())  # both ends of every boundary edge on the square's boundary
    assert MeshBody(*rectangle_mesh(n, n + 2)).boundary_facets().shape == (2 * (2 * n + 2), 2)
    cube = MeshBody(*box_mesh(n, n, n))
    assert cube.boundary_facets().shape == (6 * 2 * n * n, 3)
    s = cube.surface(200, generator=gen(2))
    assert s.shape == (200, 3) and bool((s.abs() >= 1 - 1e-12).any(1).all())


# ----------------------------------------------------------------------------------------------- files


def _write(path, points, cells, kind, file_format=None):
    meshio.write_points_cells(str(path), points.numpy(), [(kind, cells.numpy())], file_format=file_format)
    return path


TETS = box_mesh(2, 2, 2, lo=(0.0, 0.0, 0.0), hi=(2.0, 1.0, 1.0))
TRIS = rectangle_mesh(3, 2)


@pytest.mark.parametrize("suffix, file_format", [(".vtu", None), (".msh", "gmsh22"), (".msh", None), (".mesh", None)],
                         ids=["vtu", "msh-gmsh22", "msh-gmsh41", "medit"])
@pytest.mark.parametrize("kind", ["tetra", "triangle"])
def test_load_mesh_round_trips_meshio_files(tmp_path, suffix, file_format, kind):
    V, C = TETS if kind == "tetra" else TRIS
    path = _write(tmp_path / f"body{suffix}", V, C, kind, file_format)
    body = load_mesh(path)
    assert isinstance(body, MeshBody) and body.name == "body"
    assert body.dim == (3 if kind == "tetra" else 2)
    assert torch.equal(body.vertices, V) and torch.equal(body.cells, C)
    assert body.volume == pytest.approx(2.0 if kind == "tetra" else 4.0, rel=1e-13)
    assert load_mesh(path, dim=body.dim).volume == pytest.approx(body.volume)


def test_load_mesh_normalizes_and_drops_unused_vertices(tmp_path):
    V, C = TETS
    extra = torch.cat([V, torch.tensor([[50.0, 50.0, 50.0]], dtype=F64)])  # an unused, far-away vertex
    body = load_mesh(_write(tmp_path / "b.vtu", extra, C, "tetra"), normalize=True)
    assert body.vertices.shape == V.shape
    torch.testing.assert_close(body.vertices.min(0).values, torch.tensor([-1.0, -0.5, -0.5], dtype=F64))
    torch.testing.assert_close(body.vertices.max(0).values, torch.tensor([1.0, 0.5, 0.5], dtype=F64))
    assert body.volume == pytest.approx(2.0)


def test_a_mesh_with_every_element_negatively_oriented_is_flipped(tmp_path):
    V, C = TETS
    body = load_mesh(_write(tmp_path / "neg.vtu", V, C[:, [1, 0, 2, 3]], "tetra"))
    assert body.volume == pytest.approx(2.0) and float(body.element_volumes.min()) > 0
    V2, C2 = TRIS
    body = load_mesh(_write(tmp_path / "neg2.vtu", V2, C2[:, [1, 0, 2]], "triangle"))
    assert body.volume == pytest.approx(4.0) and float(body.element_volumes.min()) > 0


def test_load_mesh_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "missing.msh"
    with pytest.raises(FileNotFoundError, match="missing.msh"):
        load_mesh(path)


def test_load_mesh_refuses_the_wrong_kind_of_elements(tmp_path):
    path = _write(tmp_path / "tri.vtu", *TRIS, "triangle")
    with pytest.raises(ValueError, match="tetrahedral") as info:
        load_mesh(path, dim=3)
    assert "tri.vtu" in str(info.value) and "triangle" in str(info.value)
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        load_mesh(path, dim=4)
    tilted = torch.cat([TRIS[0], TRIS[0][:, :1] * 0.1], 1)  # triangles in the plane z = 0.1 x
    path = _write(tmp_path / "tilted.vtu", tilted, TRIS[1], "triangle")
    with pytest.raises(ValueError, match="not in the plane z = 0"):
        load_mesh(path)


def test_load_mesh_refuses_an_inverted_element(tmp_path):
    V, C = TETS
    bad = C.clone()
    bad[5] = bad[5, [1, 0, 2, 3]]
    with pytest.raises(ValueError, match=r"element 5 .*inverted") as info:
        load_mesh(_write(tmp_path / "inv.vtu", V, bad, "tetra"))
    assert "1 such elements" in str(info.value)


def test_load_mesh_refuses_a_degenerate_tetrahedron(tmp_path):
    V, C = box_mesh(1, 1, 1)
    flat = torch.tensor([[0, 1, 2, 3]])  # four corners of the face x = -1
    assert bool((V[flat[0], 0] == -1).all())
    with pytest.raises(ValueError, match="degenerate"):
        load_mesh(_write(tmp_path / "flat.vtu", V, torch.cat([C, flat]), "tetra"))


@pytest.mark.parametrize("suffix", [".vtu", ".msh", ".xyz"])
def test_load_mesh_refuses_a_garbage_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a mesh\n\x00\x01\x02 at all\n")
    with pytest.raises(ValueError, match="could not read mesh") as info:
        load_mesh(path)
    assert f"garbage{suffix}" in str(info.value)


def test_check_mesh_refuses_bad_input():
    V, C = TRIS
    with pytest.raises(ValueError, match=r"vertices must have shape \(V, 2\) or \(V, 3\)"):
        check_mesh(V[:, :1], C)
    with pytest.raises(ValueError, match="NaN or inf"):
        check_mesh(torch.cat([V[:-1], torch.tensor([[math.nan, 0.0]], dtype=F64)]), C)
    with pytest.raises(ValueError, match="no elements"):
        check_mesh(V, C[:0])
    with pytest.raises(ValueError, match="MeshBody 'm'.*cell indices"):
        MeshBody(V, C + 100, name="m")

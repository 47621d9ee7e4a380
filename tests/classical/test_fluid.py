"""Stable-fluids baseline on a MAC grid, checked against dense projections, linear fields and Taylor-Green."""

import math

import numpy as np
import pytest
import torch

from neuralnumerics import StepDivergedError
from neuralnumerics.classical.fluid import StableFluids2D
from neuralnumerics.linalg import CG, solve_sequence

pytestmark = pytest.mark.usefixtures("one_thread")

PI = math.pi

# Relative L2 velocity error at the cell centres after 20 steps of dt = 0.05 (t = 1) of the steady
# Taylor-Green vortex in [-1, 1]^2, float64, solver "cg". Measured: n=32 8.27e-2, n=64 4.08e-2 (n=128 1.96e-2),
# first order in h at fixed dt: the bilinear semi-Lagrangian step's numerical diffusion dominates.
TG_TOL = {32: 0.16, 64: 0.08}


def taylor_green(points: torch.Tensor) -> torch.Tensor:
    """A steady solution of the Euler equations in [-1, 1]^2 with zero normal velocity on the walls."""
    x, y = points[:, 0] + 1, points[:, 1] + 1
    return torch.stack([torch.sin(PI * x) * torch.cos(PI * y) / PI, -torch.cos(PI * x) * torch.sin(PI * y) / PI], 1)


def zero_field(points: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(points)


def closed_faces(solid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces with zero normal velocity (walls and faces touching a solid cell), by loops over the faces."""
    nx, ny = solid.shape
    cu = np.zeros((nx + 1, ny), dtype=bool)
    cv = np.zeros((nx, ny + 1), dtype=bool)
    for i in range(nx + 1):
        for j in range(ny):
            cu[i, j] = i == 0 or i == nx or solid[i - 1, j] or solid[i, j]
    for i in range(nx):
        for j in range(ny + 1):
            cv[i, j] = j == 0 or j == ny or solid[i, j - 1] or solid[i, j]
    return cu, cv


def dense_divergence(solid: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The divergence matrix (cells x open faces) and the open-face masks, assembled face by face."""
    nx, ny = solid.shape
    cu, cv = closed_faces(solid)
    faces = [("u", i, j) for i in range(nx + 1) for j in range(ny) if not cu[i, j]]
    faces += [("v", i, j) for i in range(nx) for j in range(ny + 1) if not cv[i, j]]
    D = np.zeros((nx * ny, len(faces)))
    for f, (kind, i, j) in enumerate(faces):
        # face f is the high face of the cell below it (+1/h) and the low face of the cell above it (-1/h)
        below, above = ((i - 1, j), (i, j)) if kind == "u" else ((i, j - 1), (i, j))
        D[below[0] * ny + below[1], f] += 1 / h
        D[above[0] * ny + above[1], f] -= 1 / h
    return D, ~cu, ~cv


def random_state(solver: StableFluids2D, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(solver.u.shape, generator=g, dtype=torch.float64)
    v = torch.randn(solver.v.shape, generator=g, dtype=torch.float64)
    return u, v


def tg_error(solver: StableFluids2D) -> float:
    c = solver.cell_centres().reshape(-1, 2)
    exact = taylor_green(c)
    return float((solver.velocity(c) - exact).norm() / exact.norm())


# -- projection ----------------------------------------------------------------------------------------------
def test_projection_removes_divergence_with_an_obstacle():
    solver = StableFluids2D(32, initial=zero_field, lo=(0.0, 0.0), hi=(2.0, 1.0), obstacle=(0.6, 0.45, 0.2),
                            solver="cg")
    assert (solver.nx, solver.ny, solver.h) == (32, 16, 0.0625)
    assert int(solver.solid.sum()) > 10
    cu, cv = closed_faces(solver.solid.numpy())
    u, v = random_state(solver, 0)
    u[torch.from_numpy(cu)] = 0
    v[torch.from_numpy(cv)] = 0
    solver.u, solver.v = u, v
    before = solver.rms_divergence()
    sol = solver.project()
    after = solver.rms_divergence()
    assert before > 1.0
    assert after < 1e-6 * before, (before, after)
    assert sol.stats.iterations > 0
    # the closed faces stay closed
    assert bool((solver.u[torch.from_numpy(cu)] == 0).all()) and bool((solver.v[torch.from_numpy(cv)] == 0).all())


@pytest.mark.parametrize("solver_name", ["cg", "pcg"])
def test_projection_matches_dense_orthogonal_projection_and_is_idempotent(solver_name):
    solver = StableFluids2D(8, initial=zero_field, obstacle=(0.1, -0.05, 0.35), solver=solver_name, rtol=1e-12)
    solid = solver.solid.numpy()
    assert 0 < solid.sum() < 20
    D, open_u, open_v = dense_divergence(solid, solver.h)
    u, v = random_state(solver, 1)
    w = np.concatenate([u.numpy()[open_u], v.numpy()[open_v]])  # open faces, in the order of D's columns
    # the divergence agrees with the assembled matrix (closed faces do not count once zeroed)
    solver.u = torch.where(torch.from_numpy(open_u), u, torch.zeros_like(u))
    solver.v = torch.where(torch.from_numpy(open_v), v, torch.zeros_like(v))
    np.testing.assert_allclose(solver.divergence().numpy().reshape(-1), D @ w, atol=1e-12)
    # oracle: the orthogonal projection onto ker D, by a pseudo-inverse
    w_proj = w - D.T @ (np.linalg.pinv(D @ D.T) @ (D @ w))
    assert np.linalg.norm(D @ w_proj) < 1e-10 * np.linalg.norm(D @ w)
    solver.u, solver.v = u.clone(), v.clone()  # unzeroed: project() must close the walls itself
    solver.project()
    got = np.concatenate([solver.u.numpy()[open_u], solver.v.numpy()[open_v]])
    assert np.linalg.norm(got - w_proj) < 1e-8 * np.linalg.norm(w_proj)
    assert bool((solver.u.numpy()[~open_u] == 0).all()) and bool((solver.v.numpy()[~open_v] == 0).all())
    # and the same through the solver's own operator, assembled densely: u <- u - G phi = u + D^T phi
    A = solver.op.to_dense().numpy()
    phi = np.linalg.lstsq(A, -D @ w, rcond=None)[0]
    assert np.linalg.norm(w + D.T @ phi - w_proj) < 1e-10 * np.linalg.norm(w_proj)
    # idempotent
    u1, v1 = solver.u.clone(), solver.v.clone()
    solver.project()
    change = math.sqrt(float((solver.u - u1).square().sum() + (solver.v - v1).square().sum()))
    size = math.sqrt(float(u1.square().sum() + v1.square().sum()))
    assert change < 1e-8 * size, change / size


def test_divergence_free_initial_field_survives_projection_exactly():
    # u = x, v = -y is divergence free but crosses the walls; a stream function psi at the nodes that vanishes on
    # the walls gives face velocities (differences of psi) that are discretely divergence free and wall-tangent
    n = 16
    solver = StableFluids2D(n, initial=zero_field, solver="cg")
    h = solver.h
    nodes = -1 + h * torch.arange(n + 1, dtype=torch.float64)
    X, Y = torch.meshgrid(nodes, nodes, indexing="ij")
    psi = torch.sin(PI * (X + 1) / 2) ** 2 * torch.sin(PI * (Y + 1) / 2) ** 2 * torch.cos(X)
    solver.u = (psi[:, 1:] - psi[:, :-1]) / h   # u = d psi / dy on the x-faces
    solver.v = -(psi[1:] - psi[:-1]) / h        # v = -d psi / dx on the y-faces
    assert solver.rms_divergence() < 1e-12
    u0, v0 = solver.u.clone(), solver.v.clone()
    solver.project()
    assert torch.allclose(solver.u, u0, atol=1e-12) and torch.allclose(solver.v, v0, atol=1e-12)


# -- interpolation -------------------------------------------------------------------------------------------
def test_bilinear_interpolation_is_exact_for_linear_fields():
    solver = StableFluids2D(16, initial=zero_field, lo=(0.0, -0.5), hi=(2.0, 0.5), solver="cg")
    assert solver.ny == 8
    h = solver.h
    ux = h * torch.arange(17, dtype=torch.float64)[:, None]
    uy = -0.5 + h * (torch.arange(8, dtype=torch.float64)[None, :] + 0.5)
    vx = h * (torch.arange(16, dtype=torch.float64)[:, None] + 0.5)
    vy = -0.5 + h * torch.arange(9, dtype=torch.float64)[None, :]
    solver.u = 0.3 + 1.7 * ux - 2.1 * uy
    solver.v = -0.4 + 0.9 * vx + 1.3 * vy
    g = torch.Generator().manual_seed(2)
    # at least h/2 from every wall, where both components have samples on each side
    p = torch.rand(500, 2, generator=g, dtype=torch.float64)
    p[:, 0] = h / 2 + p[:, 0] * (2.0 - h)
    p[:, 1] = -0.5 + h / 2 + p[:, 1] * (1.0 - h)
    got = solver.velocity(p)
    exact = torch.stack([0.3 + 1.7 * p[:, 0] - 2.1 * p[:, 1], -0.4 + 0.9 * p[:, 0] + 1.3 * p[:, 1]], 1)
    assert torch.allclose(got, exact, atol=1e-12, rtol=0)
    # the face values themselves are reproduced, and points outside the box are clamped onto it
    assert torch.allclose(solver.velocity(torch.tensor([[2 * h, -0.5 + 2.5 * h]], dtype=torch.float64))[0, 0],
                          solver.u[2, 2])
    outside = torch.tensor([[-3.0, 0.1], [2.5, 7.0]], dtype=torch.float64)
    clamped = torch.tensor([[0.0, 0.1], [2.0, 0.5]], dtype=torch.float64)
    assert torch.equal(solver.velocity(outside), solver.velocity(clamped))
    # dtype follows the points
    assert solver.velocity(p.float()).dtype == torch.float32


# -- advection -------------------------------------------------------------------------------------------------
def test_advection_uses_the_midpoint_backtrace():
    # in the linear field U(x) = A x (solid rotation) bilinear interpolation is exact, so away from the walls the
    # advected face values are exactly A x_foot with the midpoint foot x_foot = (I - dt A + dt^2 A^2 / 2) x
    solver = StableFluids2D(16, initial=zero_field, solver="cg")
    h, dt = solver.h, 0.1
    A = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    xs_nodes = -1 + h * torch.arange(17, dtype=torch.float64)
    xs_cells = -1 + h * (torch.arange(16, dtype=torch.float64) + 0.5)
    u_pts = torch.stack(torch.meshgrid(xs_nodes, xs_cells, indexing="ij"), -1)
    v_pts = torch.stack(torch.meshgrid(xs_cells, xs_nodes, indexing="ij"), -1)
    solver.u, solver.v = -u_pts[..., 1], v_pts[..., 0]
    new_u, new_v = solver._advect(dt)
    eye = torch.eye(2, dtype=torch.float64)
    midpoint = eye - dt * A + dt ** 2 / 2 * A @ A
    euler = eye - dt * A
    for pts, got, comp in ((u_pts, new_u, 0), (v_pts, new_v, 1)):
        inner = (pts.abs() <= 0.5).all(-1)
        x = pts[inner]
        assert x.shape[0] > 20
        expected = (x @ midpoint.T @ A.T)[:, comp]
        assert torch.allclose(got[inner], expected, atol=1e-12, rtol=0)
        assert not torch.allclose(got[inner], (x @ euler.T @ A.T)[:, comp], atol=1e-4, rtol=0)


# -- Taylor-Green ----------------------------------------------------------------------------------------------
def test_taylor_green_error_is_small_and_converges():
    errors = {}
    for n in (32, 64):
        solver = StableFluids2D(n, initial=taylor_green, solver="cg")
        assert tg_error(solver) < 2.0 / n ** 2 * 10  # only interpolation of the initial field (measured 1.2e-3 at 64)
        solver.run(20, 0.05)
        assert solver.steps == 20 and solver.t == pytest.approx(1.0)
        assert len(solver.pressure_iterations) == 20 and len(solver.step_seconds) == 20
        errors[n] = tg_error(solver)
        assert errors[n] < TG_TOL[n], f"n={n}: Taylor-Green error {errors[n]:.3e}"
        assert solver.rms_divergence() < 1e-7
    assert errors[64] < 0.6 * errors[32], errors  # measured ratio 0.49 (first order)


def test_kinetic_energy_never_grows_on_taylor_green():
    solver = StableFluids2D(32, initial=taylor_green, solver="cg")
    energies = [solver.kinetic_energy()]
    # the quadrature 0.5 sum(u^2 + v^2) h^2 approximates the exact energy, int 0.5 |u|^2 = 0.5 * 4 / (2 pi^2)
    assert energies[0] == pytest.approx(1 / PI ** 2, rel=0.05)
    solver.run(20, 0.05, callback=lambda s: energies.append(s.kinetic_energy()))
    assert len(energies) == 21
    growth = [b - a for a, b in zip(energies, energies[1:])]
    assert max(growth) <= 1e-10 * energies[0], growth
    assert energies[-1] < energies[0]  # semi-Lagrangian advection is dissipative


def test_vorticity_of_taylor_green():
    solver = StableFluids2D(64, initial=taylor_green, solver="cg")
    c = solver.cell_centres()
    exact = 2 * torch.sin(PI * (c[..., 0] + 1)) * torch.sin(PI * (c[..., 1] + 1))
    w = solver.vorticity()
    assert w.shape == (64, 64)
    assert float((w - exact).norm() / exact.norm()) < 0.01  # measured 2.2e-3 (one-sided at the edges)


# -- walls and obstacles ---------------------------------------------------------------------------------------
def test_no_flux_through_walls_and_obstacle():
    def swirl(p):
        return torch.stack([0.5 - 0.5 * p[:, 1], 0.5 * p[:, 0]], 1)

    solver = StableFluids2D(32, initial=swirl, lo=(-1.0, -0.5), hi=(1.0, 0.5), obstacle=(-0.3, 0.0, 0.15),
                            solver="cg")
    cu, cv = closed_faces(solver.solid.numpy())
    cu, cv = torch.from_numpy(cu), torch.from_numpy(cv)
    e0 = solver.kinetic_energy()
    assert e0 > 0.01
    for _ in range(10):
        solver.step(0.05)
        assert bool((solver.u[cu] == 0).all()) and bool((solver.v[cv] == 0).all())
        assert bool(torch.isfinite(solver.u).all()) and bool(torch.isfinite(solver.v).all())
        speed = math.sqrt(float(solver.u.square().mean() + solver.v.square().mean()))
        assert solver.rms_divergence() * solver.h < 1e-7 * speed
    assert bool((solver.divergence()[solver.solid] == 0).all())
    assert bool((solver.vorticity()[solver.solid] == 0).all())
    assert 0 < solver.kinetic_energy() <= e0 * (1 + 1e-10)


# -- recorded pressure systems ---------------------------------------------------------------------------------
def test_record_pressure_gives_one_solvable_system_per_step():
    solver = StableFluids2D(16, initial=taylor_green, obstacle=(0.2, 0.1, 0.3), solver="pcg", record_pressure=True)
    assert solver.pressure_systems == []
    solver.run(4, 0.05)
    systems = solver.pressure_systems
    assert len(systems) == 4 == len(solver.pressure_iterations)
    assert all(op is solver.op for op, _ in systems)
    # the last recorded right-hand side is the one the stored pressure solves
    op, b = systems[-1]
    assert float((op.mv(solver.pressure.reshape(-1)) - b).norm()) < 1e-6 * float(b.norm())
    result = solve_sequence(systems, CG(rtol=1e-10), sort=False)
    assert result.status.ok and len(result.solutions) == 4
    for (op, b), sol in zip(systems, result.solutions):
        assert float((op.mv(sol.x) - b).norm()) < 1e-8 * float(b.norm())
    # off by default
    plain = StableFluids2D(8, initial=taylor_green, solver="cg").run(2, 0.05)
    assert plain.pressure_systems == [] and len(plain.pressure_iterations) == 2


def test_pcg_and_cg_agree():
    a = StableFluids2D(16, initial=taylor_green, obstacle=(0.0, 0.0, 0.3), solver="pcg", rtol=1e-10).run(3, 0.1)
    b = StableFluids2D(16, initial=taylor_green, obstacle=(0.0, 0.0, 0.3), solver="cg", rtol=1e-10).run(3, 0.1)
    assert torch.allclose(a.u, b.u, atol=1e-8) and torch.allclose(a.v, b.v, atol=1e-8)


# -- bookkeeping -------------------------------------------------------------------------------------------------
def test_shapes_memory_and_grid():
    solver = StableFluids2D(8, initial=taylor_green, lo=(0.0, 0.0), hi=(1.0, 1.5), solver="cg",
                            dtype=torch.float32)
    assert (solver.nx, solver.ny) == (8, 12)
    assert solver.u.shape == (9, 12) and solver.v.shape == (8, 13) and solver.pressure.shape == (8, 12)
    assert solver.u.dtype == torch.float32
    assert solver.rtol == pytest.approx(100 * torch.finfo(torch.float32).eps)  # the dtype's default tolerance
    solver.run(3, 0.05)
    assert solver.rms_divergence() < 1e-4
    assert solver.memory_bytes == (9 * 12 + 8 * 13 + 8 * 12) * 4
    c = solver.cell_centres()
    assert c.shape == (8, 12, 2)
    assert torch.allclose(c[2, 3], torch.tensor([2.5 / 8, 3.5 / 8]))
    assert solver.solid.shape == (8, 12) and not bool(solver.solid.any())
    assert solver.divergence().shape == (8, 12) and solver.vorticity().shape == (8, 12)


def test_non_finite_step_raises_and_keeps_the_last_good_state():
    solver = StableFluids2D(8, initial=taylor_green, solver="cg").run(2, 0.05)
    bad = solver.u.clone()
    bad[4, 4] = float("inf")
    solver.u = bad
    v, p = solver.v.clone(), solver.pressure.clone()
    with pytest.raises(StepDivergedError, match="NaN or inf") as info:
        solver.step(0.05)
    assert info.value.result is solver
    assert solver.steps == 2 and solver.t == pytest.approx(0.1) and len(solver.step_seconds) == 2
    assert torch.equal(solver.u, bad) and torch.equal(solver.v, v) and torch.equal(solver.pressure, p)


# -- bad inputs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(n=3), "n "),
    (dict(n=8.0), "n "),
    (dict(lo=(1.0, -1.0)), "lo must be below hi"),
    (dict(hi=(1.0, float("nan"))), "hi must be a pair of finite"),
    (dict(lo=(-1.0,)), "lo must be a pair"),
    (dict(hi=(1.0, 0.1)), "square"),
    (dict(initial=42), "initial must be a callable"),
    (dict(initial=lambda p: torch.full_like(p, float("nan"))), "initial returned .* non-finite"),
    (dict(initial=lambda p: p[:, :1]), "initial must return velocities of shape"),
    (dict(obstacle=(0.0, 0.0, 0.0)), "obstacle radius must be positive"),
    (dict(obstacle=(0.0, 0.0, -0.3)), "obstacle radius must be positive"),
    (dict(obstacle=(1.5, 0.0, 0.3)), "obstacle centre .* outside the box"),
    (dict(obstacle=(0.0, 0.0)), "obstacle must be a disc"),
    (dict(obstacle=(0.01, 0.01, 0.001)), "obstacle .* covers no cell"),
    (dict(obstacle=(0.0, 0.0, 5.0)), "obstacle .* covers every cell"),
    (dict(solver="gmres"), "unknown solver 'gmres'"),
    (dict(rtol=0.0), "rtol"),
    (dict(dtype=torch.int64), "dtype"),
    (dict(dtype=torch.float32, rtol=1e-8), "rtol=1e-08 is below what torch.float32 can reach"),
])
def test_bad_inputs_are_rejected(kwargs, match):
    args = dict(n=8, initial=taylor_green, solver="cg") | kwargs
    with pytest.raises(ValueError, match=match):
        StableFluids2D(**args)


def test_bad_step_arguments_are_rejected():
    solver = StableFluids2D(8, initial=taylor_green, solver="cg")
    for dt in (0.0, -0.1, float("inf"), "0.1"):
        with pytest.raises(ValueError, match="dt must be a positive finite number"):
            solver.step(dt)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        solver.run(-1, 0.1)
    with pytest.raises(ValueError, match=r"points must have shape \(m, 2\)"):
        solver.velocity(torch.zeros(3, 3))
    assert solver.steps == 0 and solver.t == 0.0


def test_identity_force_changes_nothing_and_a_jet_drives_the_flow():
    from neuralnumerics.pde.fluid import jet_past_cylinder

    plain = StableFluids2D(24, initial=taylor_green)
    forced = StableFluids2D(24, initial=taylor_green, force=lambda x, a: a)
    plain.run(3, 0.05)
    forced.run(3, 0.05)
    torch.testing.assert_close(forced.u, plain.u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forced.v, plain.v, rtol=1e-12, atol=1e-12)
    flow = jet_past_cylinder(n_points=100, speed=0.5)
    sim = StableFluids2D(32, initial=flow.initial, obstacle=flow.obstacle, force=flow.force, solver="cg")
    sim.run(10, 0.05)
    nozzle = torch.tensor([[0.0, -0.9]], dtype=torch.float64)
    # the projection spreads the forcing over the closed box: upward flow at the nozzle, below the jet speed
    assert 0.1 < float(sim.velocity(nozzle)[0, 1]) < 0.5
    assert sim.rms_divergence() < 1e-6 and sim.kinetic_energy() > 0.0
    with pytest.raises(ValueError, match="force"):
        StableFluids2D(8, initial=taylor_green, force="jet")

"""Smoke simulator on a MAC grid (2D and 3D), checked against dense projections assembled face by face."""

import math

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from neuralnumerics import Status, StepDivergedError
from neuralnumerics.classical import Smoke
from neuralnumerics.linalg import CG, SOR, IncompleteCholesky, LinearSolveError, LinearSolver, solve_sequence

pytestmark = pytest.mark.usefixtures("one_thread")


def ball(shape, centre, radius):
    """Cells of side 1/shape[0] whose centre lies within ``radius`` of ``centre`` (NumPy, independent of Smoke)."""
    h = 1.0 / shape[0]
    axes = np.meshgrid(*[(np.arange(n) + 0.5) * h for n in shape], indexing="ij")
    return torch.from_numpy(sum((x - c) ** 2 for x, c in zip(axes, centre)) < radius ** 2)


def obstacle(shape):
    """A ball above the default source (which sits at height 0.12, radius 0.08)."""
    return ball(shape, [0.5] * (len(shape) - 1) + [0.55], 0.22)


def face_list(shape, solid, open_top):
    """Every face as (axis, index, open), by loops: open faces join two fluid cells or cap an open top."""
    solid = np.asarray(solid)
    faces = []
    for a, n in enumerate(shape):
        fshape = tuple(m + (b == a) for b, m in enumerate(shape))
        for idx in np.ndindex(fshape):
            i = idx[a]
            below = idx[:a] + (i - 1,) + idx[a + 1:]
            if i == 0:
                is_open = False
            elif i == n:
                is_open = open_top and a == len(shape) - 1 and not solid[below]
            else:
                is_open = not solid[below] and not solid[idx]
            faces.append((a, idx, is_open))
    return faces


def dense_divergence(shape, solid, open_top, h):
    """The divergence matrix, cells x open faces: +1/h on the cell below a face, -1/h on the cell above."""
    faces = [(a, idx) for a, idx, is_open in face_list(shape, solid, open_top) if is_open]
    D = np.zeros((int(np.prod(shape)), len(faces)))
    for f, (a, idx) in enumerate(faces):
        i = idx[a]
        if i > 0:
            D[np.ravel_multi_index(idx[:a] + (i - 1,) + idx[a + 1:], shape), f] += 1 / h
        if i < shape[a]:
            D[np.ravel_multi_index(idx, shape), f] -= 1 / h
    return D, faces


def random_velocity(sim, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(ua.shape, generator=g, dtype=sim.dtype) for ua in sim.u]


def rtol_bound(sim, b):
    """What the solver's stopping rule promises for the 2-norm of the fluid divergence (plus round-off)."""
    return 1.01 * sim.solver.rtol * float(b.norm()) + 1e-12 * max(1.0, float(b.norm()))


# -- projection against dense linear algebra --------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(12, 10), (6, 5, 4)])
@pytest.mark.parametrize("open_top", [True, False])
def test_projection_is_the_orthogonal_projection_onto_divergence_free_faces(shape, open_top):
    solid = ball(shape, [0.5] * (len(shape) - 1) + [0.5 * shape[-1] / shape[0]], 0.25)
    assert bool(solid.any())
    source = torch.zeros(shape, dtype=torch.bool)
    source[(0,) * len(shape)] = True
    sim = Smoke(shape, solid=solid, open_top=open_top, source=source, solver=CG(rtol=1e-12))
    h = sim.h
    D, faces = dense_divergence(shape, solid.numpy(), open_top, h)
    # the pressure operator is -D G = D D^T, assembled here face by face
    np.testing.assert_allclose(sim.op.to_scipy().toarray() * ~solid.numpy().reshape(-1, 1), D @ D.T, atol=1e-9)
    u0 = random_velocity(sim, 1)
    sim.u = [ua.clone() for ua in u0]
    sol = sim.project()
    # the oracle: u - D^T (D D^T)^+ D u on the open faces (least squares covers the singular closed box)
    vec = np.array([float(u0[a][idx]) for a, idx in faces])
    lam = np.linalg.lstsq(D @ D.T, D @ vec, rcond=None)[0]
    expected = vec - D.T @ lam
    got = np.array([float(sim.u[a][idx]) for a, idx in faces])
    np.testing.assert_allclose(got, expected, atol=1e-9 * np.abs(vec).max())
    # every closed face (walls, solid) is zero
    closed = [(a, idx) for a, idx, is_open in face_list(shape, solid.numpy(), open_top) if not is_open]
    assert all(float(sim.u[a][idx]) == 0.0 for a, idx in closed)
    if open_top:  # SPD: the potential itself matches a sparse direct solve
        assert not sim.op.singular
        b = -(D @ vec)
        exact = spla.spsolve(sim.op.to_scipy().tocsc(), b)
        np.testing.assert_allclose(sol.x.numpy(), exact, atol=1e-8 * np.abs(b).max())
    else:
        assert sim.op.singular


def test_projecting_a_discretely_divergence_free_field_changes_nothing():
    shape = (16, 12)
    solid = obstacle(shape)
    sim = Smoke(shape, solid=solid)
    # u = d(psi)/dy, v = -d(psi)/dx from a stream function on the nodes, zero on the box edge and on the
    # corners of solid cells: divergence free to round-off, and zero on every closed face
    nx, ny = shape
    g = torch.Generator().manual_seed(0)
    psi = torch.randn(nx + 1, ny + 1, generator=g, dtype=torch.float64)
    psi[0], psi[-1], psi[:, 0], psi[:, -1] = 0, 0, 0, 0
    for i, j in solid.nonzero().tolist():
        psi[i:i + 2, j:j + 2] = 0
    u = (psi[:, 1:] - psi[:, :-1]) / sim.h
    v = -(psi[1:] - psi[:-1]) / sim.h
    sim.u = [u.clone(), v.clone()]
    assert sim.rms_divergence() < 1e-10
    sol = sim.project()
    assert float(sol.x.abs().max()) < 1e-12  # the right-hand side is round-off, and so is the potential
    torch.testing.assert_close(sim.u[0], u, rtol=0, atol=1e-9)
    torch.testing.assert_close(sim.u[1], v, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 10)])
def test_projection_is_idempotent(shape):
    sim = Smoke(shape, solid=obstacle(shape), solver=CG(rtol=1e-10))
    sim.u = random_velocity(sim, 2)
    sim.project()
    once = [ua.clone() for ua in sim.u]
    sim.project()
    scale = max(float(ua.abs().max()) for ua in once)
    for a, b in zip(sim.u, once):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8 * scale)


# -- time steps ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 16), (16, 24), (8, 8, 8), (10, 8, 12)])
@pytest.mark.parametrize("open_top", [True, False])
def test_steps_leave_the_fluid_divergence_at_the_solver_tolerance(shape, open_top):
    solid = obstacle(shape)
    sim = Smoke(shape, solid=solid, open_top=open_top, record_pressure=True)
    assert sim.op.singular is (not open_top)
    for _ in range(4):
        sim.step(2 * sim.h)
        op, b = sim.pressure_systems[-1]
        assert op is sim.op and b.shape == (int(np.prod(shape)),)
        assert float(b.norm()) > 0
        div = sim.divergence()
        assert float(div.norm()) <= rtol_bound(sim, b)
        assert float(div[solid].abs().max()) == 0.0
        # the right-hand side is -div(u*) on fluid cells, 0 on solid cells
        assert float(b.reshape(shape)[solid].abs().max()) == 0.0
        if not open_top:  # consistent: sums to zero over the (one) fluid region
            assert abs(float(b.sum())) < 1e-10 * float(b.abs().sum())
    assert sim.steps == 4 and math.isclose(sim.t, 8 * sim.h)
    assert len(sim.pressure_iterations) == 4 and all(k > 0 for k in sim.pressure_iterations)
    assert len(sim.step_seconds) == 4
    assert np.isclose(sim.rms_divergence(), float(sim.divergence().norm()) / math.sqrt(int((~solid).sum())))


@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 8)])
def test_walls_and_solid_faces_carry_no_normal_velocity_and_the_top_is_open(shape):
    solid = obstacle(shape)
    sim = Smoke(shape, solid=solid)
    sim.run(5, 2 * sim.h)
    faces = face_list(shape, solid.numpy(), True)
    closed = [(a, idx) for a, idx, is_open in faces if not is_open]
    assert max(abs(float(sim.u[a][idx])) for a, idx in closed) == 0.0
    top = sim.u[-1].select(len(shape) - 1, shape[-1])
    assert float(top.abs().max()) > 0  # air leaves through the open top
    assert float(sim.density[solid].abs().max()) == 0.0


def test_the_closed_face_masks_match_the_loops():
    shape = (10, 8, 6)
    solid = ball(shape, (0.5, 0.4, 0.3), 0.2)
    sim = Smoke(shape, solid=solid)
    expected = [np.zeros(sim.u[a].shape, dtype=bool) for a in range(3)]
    for a, idx, is_open in face_list(shape, solid.numpy(), True):
        expected[a][idx] = not is_open
    for a in range(3):
        np.testing.assert_array_equal(sim.closed_faces(a).numpy(), expected[a])


@pytest.mark.parametrize("shape", [(16, 20), (8, 8, 12)])
def test_smoke_rises_under_buoyancy_and_stays_put_without_it(shape):
    # without buoyancy and without an injected velocity nothing moves: the density is the source mask
    still = Smoke(shape, buoyancy=0.0, source_velocity=0.0)
    still.run(3, 2 * still.h)
    assert max(float(ua.abs().max()) for ua in still.u) == 0.0
    torch.testing.assert_close(still.density, still.source.double())
    # buoyancy alone lifts the smoke: its centre of mass and its top climb step after step
    sim = Smoke(shape, buoyancy=4.0, source_velocity=0.0)
    height = sim.cell_centres()[..., -1]
    heights, tops = [], []
    for _ in range(3):
        sim.run(4, 2 * sim.h)
        heights.append(float((sim.density * height).sum() / sim.density.sum()))
        tops.append(float(height[sim.density > 0.05].max()))
    source_top = float(height[sim.source].max())
    assert heights[0] < heights[1] < heights[2]
    assert tops[0] <= tops[1] <= tops[2] and tops[2] > source_top + 2 * sim.h
    assert float(sim.u[-1].max()) > 0


def test_velocity_interpolation_reproduces_linear_fields():
    shape = (6, 8, 10)  # unequal sizes catch a swapped axis
    sim = Smoke(shape)
    A = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.4, -0.5], [-0.8, 1.1, 0.9]], dtype=torch.float64)
    c = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    # the face centres of axis a: (i + 1/2) h - h/2 e_a
    for a in range(3):
        axes = [(torch.arange(n + (b == a), dtype=torch.float64) + (0.0 if b == a else 0.5)) * sim.h
                for b, n in enumerate(shape)]
        x = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        sim.u[a] = x @ A[a] + c[a]
    g = torch.Generator().manual_seed(3)
    lo, hi = torch.full((3,), sim.h), torch.tensor(sim.extent, dtype=torch.float64) - sim.h
    points = lo + (hi - lo) * torch.rand(200, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sim.velocity(points), points @ A.T + c, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"shape \(m, 3\)"):
        sim.velocity(points[:, :2])


def test_density_is_carried_one_cell_by_a_uniform_upward_flow():
    shape = (8, 12)
    sim = Smoke(shape, buoyancy=0.0, source_velocity=0.0)
    sim.u[1] = torch.ones_like(sim.u[1])
    g = torch.Generator().manual_seed(4)
    sim.density = torch.rand(shape, generator=g, dtype=torch.float64)
    u, density = sim._advect(sim.h)  # one cell per step: the semi-Lagrangian step is an exact shift
    torch.testing.assert_close(density[:, 1:], sim.density[:, :-1], rtol=0, atol=1e-12)
    torch.testing.assert_close(u[1], sim.u[1], rtol=0, atol=1e-12)


def test_float32_runs_with_a_reachable_default_tolerance():
    sim = Smoke((16, 16), dtype=torch.float32, record_pressure=True)
    assert sim.solver.rtol == pytest.approx(100 * torch.finfo(torch.float32).eps)
    sim.run(3, 0.1)
    assert sim.density.dtype == torch.float32 and sim.pressure_systems[-1][1].dtype == torch.float32
    b = sim.pressure_systems[-1][1]
    assert float(sim.divergence().norm()) <= 10 * sim.solver.rtol * float(b.norm())


# -- solvers ---------------------------------------------------------------------------------------------------
class DenseSolver(LinearSolver):
    """A custom solver: a dense least-squares solve (an oracle), counting its calls; its state counts the sequence."""

    def __init__(self):
        super().__init__(rtol=1e-12)
        self.calls = 0

    def _solve(self, op, b, x0, M, state, stats):
        self.calls += 1
        stats.iterations = 1
        x = torch.linalg.lstsq(op.to_dense(), b[:, None]).solution[:, 0]
        return x, Status.SUCCESS, (0 if state is None else state + 1)


@pytest.mark.parametrize("open_top", [True, False])
def test_any_linear_solver_plugs_in(open_top):
    solver = DenseSolver()
    sim = Smoke((12, 12), solid=obstacle((12, 12)), open_top=open_top, solver=solver)
    assert sim.solver is solver
    sim.run(3, 0.1)
    assert solver.calls == 3 and sim.pressure_iterations == [1, 1, 1]
    assert sim.solver_state == 2  # each solve was handed the state of the one before
    assert sim.rms_divergence() < 1e-9
    # a classical iteration without preconditioner slot works too
    sor = Smoke((8, 8), open_top=open_top, solver=SOR(1.5, rtol=1e-8))
    sor.run(2, 0.2)
    assert sor.rms_divergence() < 1e-5


def test_tolerance_and_preconditioner_of_the_given_solver_are_used():
    shape = (16, 16)
    loose = Smoke(shape, solver=CG(rtol=1e-3), record_pressure=True).run(3, 0.1)
    tight = Smoke(shape, solver=CG(rtol=1e-10), record_pressure=True).run(3, 0.1)
    assert sum(tight.pressure_iterations) > sum(loose.pressure_iterations)
    b = tight.pressure_systems[-1][1]
    assert float(tight.divergence().norm()) <= rtol_bound(tight, b)
    calls = []

    def build(op):
        calls.append(op)
        return IncompleteCholesky(op)

    pre = Smoke(shape, solver=CG(rtol=1e-10), preconditioner=build).run(3, 0.1)
    assert len(calls) == 1 and calls[0] is pre.op and isinstance(pre.M, IncompleteCholesky)
    assert sum(pre.pressure_iterations) < sum(tight.pressure_iterations)
    torch.testing.assert_close(pre.density, tight.density, rtol=0, atol=1e-7)


def test_recorded_systems_replay_with_solve_sequence():
    sim = Smoke((12, 16), solid=obstacle((12, 16)), record_pressure=True).run(3, 0.1)
    assert len(sim.pressure_systems) == 3
    result = solve_sequence(sim.pressure_systems, CG(rtol=1e-8))
    assert len(result.solutions) == 3
    assert Smoke((12, 16)).run(2, 0.1).pressure_systems == []


# -- failures --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(16,)), "2 or 3"),
    (dict(shape=(8, 8, 8, 8)), "2 or 3"),
    (dict(shape=(16, 3)), "at least 4 cells"),
    (dict(shape=(16.0, 16)), "integer"),
    (dict(shape=16), "2 or 3"),
    (dict(solid=torch.zeros(8, 8, dtype=torch.bool)), r"has shape \(8, 8\), the grid \(16, 16\)"),
    (dict(solid=torch.zeros(16, 16)), "boolean mask"),
    (dict(solid=[[False] * 16] * 16), "boolean tensor or NumPy array"),
    (dict(solid=torch.ones(16, 16, dtype=torch.bool)), "every cell"),
    (dict(solid=ball((16, 16), (0.5, 0.1), 0.2)), "source cells"),
    (dict(source=torch.zeros(16, 16, dtype=torch.bool)), "selects no cell"),
    (dict(source=((0.5, 1.5), 0.1)), "outside the box"),
    (dict(source=((0.5,), 0.1)), "2 finite coordinates"),
    (dict(source=((0.5, 0.5), -0.1)), "radius must be positive"),
    (dict(source="bottom"), "source must be None"),
    (dict(solver="cg"), "LinearSolver instance"),
    (dict(solver=CG), "LinearSolver instance"),
    (dict(solver=CG(), rtol=1e-8), "applies to the default CG"),
    (dict(rtol=0.0), r"rtol must be a number in \(0, 1\)"),
    (dict(rtol=1e-17), "below what"),
    (dict(preconditioner=torch.eye(3, dtype=torch.float64)), "preconditioner has shape"),
    (dict(preconditioner="ilu"), "preconditioner must be None"),
    (dict(solver=SOR(1.5), preconditioner=IncompleteCholesky), "takes no preconditioner"),
    (dict(buoyancy=-1.0), "buoyancy must be non-negative"),
    (dict(buoyancy=float("nan")), "buoyancy must be a finite number"),
    (dict(source_velocity=float("inf")), "source_velocity must be a finite number"),
    (dict(spacing=0.0), "spacing must be positive"),
    (dict(dtype=torch.int64), "floating torch dtype"),
])
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, match):
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (16, 16))
    with pytest.raises(ValueError, match=match):
        Smoke(shape, **kwargs)


@pytest.mark.parametrize("dt", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_time_steps_are_refused(dt):
    sim = Smoke((8, 8))
    with pytest.raises(ValueError, match="dt must be a positive finite number"):
        sim.step(dt)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        sim.run(-1, 0.1)
    assert sim.steps == 0


def test_a_non_finite_state_raises_and_keeps_the_last_good_step():
    sim = Smoke((8, 8))
    sim.step(0.1)
    density = sim.density.clone()
    sim.u[0][3, 3] = float("nan")
    with pytest.raises(StepDivergedError, match="NaN or inf") as info:
        sim.step(0.1)
    assert info.value.status is Status.DIVERGED and info.value.result is sim
    assert sim.steps == 1 and torch.equal(sim.density, density)


def test_a_pressure_solve_that_does_not_converge_says_so():
    sim = Smoke((16, 16), solver=CG(rtol=1e-8, max_iters=2))
    with pytest.raises(LinearSolveError, match="pressure solve of step 1 .* did not converge.*add a preconditioner"):
        sim.step(0.1)
    assert sim.steps == 0 and sim.pressure_systems == []

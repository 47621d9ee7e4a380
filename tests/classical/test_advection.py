"""Grid baselines for 1D advection, checked against the exact translated solution."""

import math

import pytest
import torch

from neuralnumerics import StepDivergedError
from neuralnumerics.classical import SCHEMES, GridAdvection1D, GridTrajectory
from neuralnumerics.pde import Advection1D, gaussian_pulse, relative_l2

# Relative L2 error on problem.eval_points() after 40 steps of dt = 0.05 (t = 2) of the paper's pulse on
# 256 cells (CFL 0.8), float64. Measured: upwind 6.32e-2, lax-wendroff 1.03e-2, crank-nicolson 3.61e-2,
# semi-lagrangian 2.65e-3 (linear interpolation onto the evaluation grid is most of the last one).
PULSE_TOL = {"upwind": 0.09, "lax-wendroff": 0.015, "crank-nicolson": 0.05, "semi-lagrangian": 0.004}

# Observed order of the grid-point error at t = 1, CFL 0.5, n = 128 -> 256 -> 512.
# Measured: upwind 0.86, 0.92; lax-wendroff 1.95, 1.99; crank-nicolson 1.96, 1.99; semi-lagrangian 2.92, 2.98.
ORDER_RANGE = {"upwind": (0.75, 1.25), "lax-wendroff": (1.8, 2.2), "crank-nicolson": (1.8, 2.2),
               "semi-lagrangian": (2.5, 3.5)}


def grid_error(traj: GridTrajectory, problem: Advection1D, step: int) -> float:
    """Relative L2 error at the cell centres (no interpolation error), the oracle being problem.exact."""
    exact = problem.exact(traj.x.unsqueeze(1), step * traj.dt)[:, 0]
    return relative_l2(traj.values[step], exact)


def test_registry_lists_the_four_schemes():
    assert set(SCHEMES) == {"upwind", "lax-wendroff", "crank-nicolson", "semi-lagrangian"}
    assert set(PULSE_TOL) == set(SCHEMES) == set(ORDER_RANGE)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_pulse_error_after_40_steps(scheme):
    problem = Advection1D()
    solver = GridAdvection1D(problem, 256, scheme=scheme)
    traj = solver.run(dt=0.05, steps=40)
    assert traj.values.shape == (41, 256)
    assert traj.x.shape == (256,)
    assert len(traj.seconds) == 40
    errors = traj.errors(problem)
    assert len(errors) == 41
    assert errors[0] < 3e-3  # only linear interpolation of u_0 (measured 1.93e-3)
    assert errors[-1] < PULSE_TOL[scheme], f"{scheme}: error {errors[-1]:.3e} at t=2"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_convergence_order_in_space_and_time(scheme):
    problem = Advection1D()
    errors = []
    for n in (128, 256, 512):
        solver = GridAdvection1D(problem, n, scheme=scheme)
        dt = 0.5 * solver.h / problem.velocity  # CFL 0.5: dt is halved with h
        steps = round(1.0 / dt)
        errors.append(grid_error(solver.run(dt=dt, steps=steps), problem, steps))
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    lo, hi = ORDER_RANGE[scheme]
    assert all(lo < p < hi for p in orders), f"{scheme}: errors {errors}, orders {orders}"


@pytest.mark.parametrize("scheme, dt", [("upwind", 0.25), ("lax-wendroff", 0.25), ("semi-lagrangian", 0.25),
                                        ("semi-lagrangian", 0.5)])
@pytest.mark.parametrize("velocity", [0.25, -0.25])
def test_integer_cell_shift_is_exact(scheme, dt, velocity):
    # h = 4/64 = 1/16 and |v| dt = 1/16 or 1/8: each step moves the pulse exactly 1 or 2 cells
    problem = Advection1D(velocity=velocity, initial=gaussian_pulse(-1.5 if velocity > 0 else 1.5, 0.1))
    solver = GridAdvection1D(problem, 64, scheme=scheme)
    shift = round(solver.cfl(dt))
    assert solver.cfl(dt) == shift
    traj = solver.run(dt=dt, steps=10)
    u0 = traj.values[0]
    for k in range(11):
        expected = torch.zeros_like(u0)  # closed form: u_i^k = u_{i - k s}^0, zero from the inflow
        d = k * shift
        if velocity > 0:
            expected[d:] = u0[:64 - d]
        else:
            expected[:64 - d] = u0[d:]
        assert torch.equal(traj.values[k], expected), f"step {k}"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_negative_velocity_mirrors_positive(scheme):
    right = Advection1D(velocity=0.25, initial=gaussian_pulse(-1.5, 0.1))
    left = Advection1D(velocity=-0.25, initial=gaussian_pulse(1.5, 0.1))
    traj_r = GridAdvection1D(right, 256, scheme=scheme).run(dt=0.05, steps=40)
    traj_l = GridAdvection1D(left, 256, scheme=scheme).run(dt=0.05, steps=40)
    assert traj_l.errors(left)[-1] < PULSE_TOL[scheme]
    torch.testing.assert_close(traj_l.values, traj_r.values.flip(1), rtol=0, atol=1e-12)
    # the pulse moved left
    assert traj_l.x[traj_l.values[-1].argmax()] == pytest.approx(1.0, abs=2 * 4 / 256)


# measured at CFL 2.5, t = 2.5: crank-nicolson 0.371 (dispersion, no growth), semi-lagrangian 0.0113
@pytest.mark.parametrize("scheme, tol", [("crank-nicolson", 0.5), ("semi-lagrangian", 0.02)])
def test_implicit_and_semi_lagrangian_are_stable_beyond_cfl_one(scheme, tol):
    problem = Advection1D()
    solver = GridAdvection1D(problem, 128, scheme=scheme)
    traj = solver.run(dt=0.3125, steps=8)
    assert solver.cfl(0.3125) == 2.5
    norms = traj.values.norm(dim=1)
    assert bool(torch.all(norms[1:] <= norms[:-1] * (1 + 1e-12)))  # energy never grows
    assert traj.errors(problem)[-1] < tol


# max |u| left in the domain after the pulse has gone out through the right end (t = 2, CFL 0.8).
# Measured: upwind 1.4e-13, lax-wendroff 6.5e-16, semi-lagrangian 3e-22; crank-nicolson 0.054 (its central
# difference reflects a small odd-even wave even with the extrapolated ghost; a u = 0 wall reflects 0.975).
OUTFLOW_TOL = {"upwind": 1e-10, "lax-wendroff": 1e-10, "crank-nicolson": 0.08, "semi-lagrangian": 1e-10}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_outflow_lets_the_pulse_leave(scheme):
    problem = Advection1D(velocity=1.0, initial=gaussian_pulse(1.0, 0.1))
    traj = GridAdvection1D(problem, 256, scheme=scheme).run(dt=0.0125, steps=160)
    assert float(traj.values[-1].abs().max()) < OUTFLOW_TOL[scheme]


def test_trajectory_field_interpolates_linearly_and_is_zero_outside():
    problem = Advection1D()
    traj = GridAdvection1D(problem, 16, scheme="upwind").run(dt=0.05, steps=2)
    f = traj.field(-1)
    x, u = traj.x, traj.values[-1]
    torch.testing.assert_close(f(x.unsqueeze(1))[:, 0], u, rtol=0, atol=1e-14)
    mid = ((x[:-1] + x[1:]) / 2).unsqueeze(1)
    torch.testing.assert_close(f(mid)[:, 0], (u[:-1] + u[1:]) / 2, rtol=0, atol=1e-14)
    outside = torch.tensor([[-2.5], [2.01]], dtype=torch.float64)
    assert torch.equal(f(outside), torch.zeros(2, 1, dtype=torch.float64))
    assert f(torch.zeros(3, 1, dtype=torch.float32)).dtype == torch.float32
    with pytest.raises(ValueError, match=r"shape \(n, 1\)"):
        f(torch.zeros(3))
    with pytest.raises(IndexError, match="0..2"):
        traj.field(3)


@pytest.mark.parametrize("dtype, itemsize", [(torch.float64, 8), (torch.float32, 4)])
def test_memory_dtype_callback_and_zero_steps(dtype, itemsize):
    problem = Advection1D()
    solver = GridAdvection1D(problem, 100, scheme="crank-nicolson", dtype=dtype)
    seen = []
    traj = solver.run(dt=0.1, steps=3, callback=lambda k, t, v: seen.append((k, t, v.clone())))
    assert traj.memory_bytes == 100 * itemsize
    assert traj.values.dtype == dtype and traj.x.dtype == dtype
    assert [(k, t) for k, t, _ in seen] == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert all(torch.equal(v, traj.values[k]) for k, _, v in seen)
    empty = solver.run(dt=0.1, steps=0)
    assert empty.values.shape == (1, 100) and empty.seconds == []


def test_non_finite_state_raises_with_partial_trajectory():
    problem = Advection1D()
    solver = GridAdvection1D(problem, 32, scheme="upwind")
    problem.initial_fn = lambda x: torch.full_like(x, math.inf)  # bypasses the constructor's check
    with pytest.raises(StepDivergedError, match="NaN or inf") as info:
        solver.run(dt=0.05, steps=3)
    assert info.value.result.values.shape == (1, 32)


def test_bad_inputs_raise_with_a_message():
    problem = Advection1D()
    with pytest.raises(ValueError, match="unknown scheme 'leapfrog'"):
        GridAdvection1D(problem, 64, scheme="leapfrog")
    with pytest.raises(ValueError, match="n_cells must be an integer >= 4"):
        GridAdvection1D(problem, 3)
    with pytest.raises(ValueError, match="dtype"):
        GridAdvection1D(problem, 64, dtype=torch.int64)
    with pytest.raises(TypeError, match="Advection1D"):
        GridAdvection1D(object(), 64)
    solver = GridAdvection1D(problem, 64, scheme="upwind")
    for dt in (0.0, -0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="dt must be a positive finite number"):
            solver.run(dt=dt, steps=1)
    for steps in (-1, 2.0, True):
        with pytest.raises(ValueError, match="steps must be a non-negative integer"):
            solver.run(dt=0.05, steps=steps)
    # h = 1/16, v = 1/4: largest stable dt 0.25; dt = 0.4 is CFL 1.6
    for scheme in ("upwind", "lax-wendroff"):
        with pytest.raises(ValueError, match=r"CFL number .* = 1\.6 > 1.*dt <= 0\.25"):
            GridAdvection1D(problem, 64, scheme=scheme).run(dt=0.4, steps=1)
        GridAdvection1D(problem, 64, scheme=scheme).run(dt=0.25, steps=1)  # CFL exactly 1 is fine

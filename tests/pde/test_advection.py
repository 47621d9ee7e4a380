"""Advection1D and an INSR run of it, checked against closed forms.

Oracles: the translated initial condition (with the zero inflow region), the analytic derivative of a
closed-form field, and the time-discrete solution of the implicit midpoint rule, computed spectrally
(each Fourier mode of the pulse times ``R(z)^steps``, ``R(z) = (1 + z/2) / (1 - z/2)``, ``z = -i k v dt``).
The last one separates the integrator's own error from the per-step fit's.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from neuralnumerics import ConvergenceWarning, Status, StepDivergedError
from neuralnumerics.fields import gradient
from neuralnumerics.pde import Advection1D, Box, FitConfig, Problem, evolve, gaussian_pulse, relative_l2

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
DT, STEPS = 0.05, 20
CENTER, WIDTH, VELOCITY, LENGTH = -1.5, 0.1, 0.25, 4.0

# Relative L2 errors on problem.eval_points() (2000 cells) at t = 1 (20 midpoint steps of 0.05), SIREN 2x16,
# 500 points, float64, seed 0, at most 10 LM iterations per step. Measured: against the exact solution 4.43e-3,
# of which the midpoint rule's own error (spectral oracle) is 4.42e-3; against the midpoint oracle 4.7e-5-6.3e-5.
# Broken on purpose (test_the_tolerance_catches_a_broken_problem, 10 steps), against the midpoint oracle:
# velocity x1.1 in rhs 0.088, the sign flipped 1.26, no boundary term 0.086.
EXACT_TOL = 1e-2
MIDPOINT_TOL = 2e-4

INITIAL_FIT = FitConfig(max_iters=100, warmup_iters=300)
STEP_FIT = FitConfig(max_iters=10)


def small_problem(**kwargs) -> Advection1D:
    return Advection1D(**{"velocity": VELOCITY, "n_points": 500, "hidden_features": 16, **kwargs})


def midpoint_oracle(x: np.ndarray, steps: int, dt: float = DT, v: float = VELOCITY) -> np.ndarray:
    """The implicit midpoint rule's solution after ``steps`` steps, exact in space (FFT on the periodic box).

    The pulse is ~1e-5 at the domain ends, so periodic and zero-inflow boundaries agree to that level.
    """
    u0 = np.exp(-0.5 * ((x - CENTER) / WIDTH) ** 2)
    k = 2 * np.pi * np.fft.fftfreq(x.size, d=LENGTH / x.size)
    z = -1j * k * v * dt
    return np.real(np.fft.ifft(np.fft.fft(u0) * ((1 + z / 2) / (1 - z / 2)) ** steps))


@pytest.fixture(scope="module")
def initial_weights(one_thread) -> torch.Tensor:
    """Weights fitted to the pulse at step 0 (fitted once; every run here starts from them)."""
    traj = evolve(small_problem(), dt=DT, steps=0, initial_fit=INITIAL_FIT, dtype=F64, seed=0)
    assert traj.records[0].error < 1e-4  # measured 9.2e-6
    return traj.weights(0)


def run_from_initial(problem: Advection1D, weights: torch.Tensor, steps: int, **kwargs):
    return evolve(problem, dt=DT, steps=steps, fit=STEP_FIT, dtype=F64, seed=0, start=(0, weights), **kwargs)


# closed forms ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("velocity", [0.5, -0.75])
def test_exact_is_the_translation_with_zero_inflow(velocity):
    def initial(x):  # vanishes at both ends (x = -2 and 2), nonzero in between
        return torch.sin(math.pi * (x + 2) / 4) ** 2 * torch.exp(x / 3)

    p = Advection1D(velocity=velocity, initial=initial, length=4.0, n_points=10)
    x = torch.linspace(-2, 2, 801, dtype=F64)[:, None]
    xs = x[:, 0].numpy()
    for t in (0.0, 0.4, 1.3):
        foot = xs - velocity * t
        expected = np.where((foot >= -2) & (foot <= 2), np.sin(np.pi * (foot + 2) / 4) ** 2 * np.exp(foot / 3), 0.0)
        got = p.exact(x, t)
        assert got.shape == (801, 1)
        np.testing.assert_allclose(got[:, 0].numpy(), expected, rtol=0, atol=1e-14)
        # exactly zero where the characteristic comes from the inflow boundary, and only there
        inflow = xs < -2 + velocity * t if velocity > 0 else xs > 2 + velocity * t
        assert inflow.any() == (t > 0)
        assert (got[torch.from_numpy(inflow), 0] == 0).all()
        assert (got[torch.from_numpy(~inflow), 0][1:-1] != 0).all()


def test_default_is_the_papers_pulse():
    p = Advection1D(n_points=10)
    x = torch.linspace(-2, 2, 101, dtype=F64)[:, None]
    np.testing.assert_allclose(p.initial(x).numpy(), np.exp(-0.5 * ((x.numpy() + 1.5) / 0.1) ** 2), rtol=1e-14)
    assert p.velocity == 0.25 and p.domain == Box((-2.0,), (2.0,))


@pytest.mark.parametrize("velocity", [0.25, -1.7])
def test_rhs_of_an_analytic_field_is_minus_v_ux(velocity):
    p = Advection1D(velocity=velocity, n_points=10)
    x = torch.linspace(-2, 2, 57, dtype=F64)[:, None]

    def u(y):
        return torch.sin(3 * y) + y**2

    got = p.rhs(u, x, 0.3)
    assert got.shape == (57, 1)
    np.testing.assert_allclose(got.numpy(), -velocity * (3 * np.cos(3 * x.numpy()) + 2 * x.numpy()),
                               rtol=1e-12, atol=1e-12)


# an INSR run against the exact and the time-discrete solutions -------------------------------------------------

def test_insr_midpoint_run_matches_exact_and_midpoint_solutions(initial_weights):
    p = small_problem()
    traj = run_from_initial(p, initial_weights, STEPS)
    assert [r.step for r in traj.records] == list(range(1, STEPS + 1))
    assert all(Status(r.status).ok for r in traj.records)
    x = p.eval_points()
    u = traj.field(STEPS)(x)
    t = STEPS * DT
    err_exact = relative_l2(u, p.exact(x, t))
    err_midpoint = relative_l2(u, torch.from_numpy(midpoint_oracle(x[:, 0].numpy(), STEPS))[:, None])
    assert err_exact < EXACT_TOL, err_exact
    assert err_midpoint < MIDPOINT_TOL, err_midpoint
    # the remaining error is the integrator's: the oracle's own error against the exact solution is the same
    oracle_err = relative_l2(torch.from_numpy(midpoint_oracle(x[:, 0].numpy(), STEPS))[:, None], p.exact(x, t))
    assert abs(err_exact - oracle_err) < MIDPOINT_TOL
    # the zero boundary holds
    assert traj.field(STEPS)(torch.tensor([[-2.0], [2.0]], dtype=F64)).abs().max() < 1e-4  # measured 2e-6


def _wrong_velocity(p):
    p.rhs = lambda u, x, t: -1.1 * p.velocity * gradient(u, x)


def _wrong_sign(p):
    p.rhs = lambda u, x, t: p.velocity * gradient(u, x)


def _no_boundary(p):
    p.boundary_terms = lambda *args, **kwargs: []


@pytest.mark.parametrize("break_it", [_wrong_velocity, _wrong_sign, _no_boundary])
def test_the_tolerance_catches_a_broken_problem(initial_weights, break_it):
    """The run test's tolerance is not vacuous: a wrong velocity, sign or boundary fails it within 10 steps."""
    p = small_problem()
    break_it(p)
    steps = 10
    traj = run_from_initial(p, initial_weights, steps)
    x = p.eval_points()
    err = relative_l2(traj.field(steps)(x), torch.from_numpy(midpoint_oracle(x[:, 0].numpy(), steps))[:, None])
    assert err > 10 * MIDPOINT_TOL, err


def test_recorded_errors_agree_with_recomputing_them(initial_weights):
    p = small_problem()
    traj = run_from_initial(p, initial_weights, 3)
    x = p.eval_points()
    assert traj.steps == [0, 1, 2, 3]
    for record in traj.records:
        assert record.t == pytest.approx(record.step * DT, abs=0)
        expected = relative_l2(traj.field(record.step)(x), p.exact(x, record.step * DT))
        assert record.error == pytest.approx(expected, rel=1e-10, abs=0)
        assert set(record.losses) == {"pde", "boundary"}
        assert record.loss == pytest.approx(sum(record.losses.values()), rel=1e-6)
    # errors grow with time (the midpoint rule's phase error accumulates)
    errors = [r.error for r in traj.records]
    assert errors == sorted(errors)


def test_trajectory_field_shape_contract_and_missing_steps(initial_weights):
    p = small_problem()
    traj = run_from_initial(p, initial_weights, 2)
    assert traj.steps == [0, 1, 2] and traj.times == [0.0, DT, 2 * DT] and len(traj) == 3
    f = traj.field(2)
    for n in (1, 7):
        assert f(torch.rand(n, 1, dtype=F64)).shape == (n, 1)
    assert f(torch.rand(5, 1, dtype=torch.float32)).dtype == F64  # points follow the field's dtype
    with pytest.raises(ValueError, match=r"\(n, dim\)"):
        f(torch.rand(5, dtype=F64))
    with pytest.raises(IndexError, match="step 3 is not stored"):
        traj.field(3)
    with pytest.raises(IndexError, match="step -1 is not stored"):
        traj.weights(-1)

    last = run_from_initial(p, initial_weights, 2, keep="last")
    assert last.steps == [2]
    with pytest.raises(IndexError, match=r"step 1 is not stored; stored steps are \[2\]"):
        last.field(1)
    # the last step is identical whether or not the earlier ones are kept
    assert torch.equal(last.weights(2), traj.weights(2))


def test_a_diverging_step_raises_and_keeps_the_good_steps(initial_weights):
    p = small_problem()
    good_rhs = p.rhs
    p.rhs = lambda u, x, t: good_rhs(u, x, t) * (math.nan if t > 2 * DT else 1.0)  # from step 3 on
    with pytest.raises(StepDivergedError, match=r"time step 3 \(t=0\.15\) failed.*dt") as info:
        run_from_initial(p, initial_weights, 5)
    assert info.value.status is Status.DIVERGED
    partial = info.value.result
    assert partial.last_step == 2 and [r.step for r in partial.records] == [1, 2]
    assert torch.isfinite(partial.weights(2)).all()



def test_a_fit_stopping_far_above_its_tolerance_warns_and_keeps_the_step(initial_weights):
    # one LM iteration cannot bring the step residual to rtol=1e-12: the step is kept (its status says
    # why it stopped), but a silently kept step this far from its tolerance would hide a broken run
    with pytest.warns(ConvergenceWarning, match=r"time step 1 \(t=0\.05\): the fit stopped \(max_iters\)"):
        traj = evolve(small_problem(), dt=DT, steps=1, fit=FitConfig(max_iters=1, rtol=1e-12), dtype=F64,
                      seed=0, start=(0, initial_weights))
    assert traj.records[0].status == "max_iters" and traj.last_step == 1


def test_a_converged_run_does_not_warn(initial_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        run_from_initial(small_problem(), initial_weights, 2)

# bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan, math.inf, "0.1", None])
def test_bad_dt(dt):
    with pytest.raises(ValueError, match=r"dt must be a positive number, got"):
        evolve(small_problem(), dt=dt, steps=1)


@pytest.mark.parametrize("steps", [-1, 1.5, True, "3"])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match=r"steps must be a non-negative integer, got"):
        evolve(small_problem(), dt=0.1, steps=steps)


def test_unknown_integrator_and_keep():
    with pytest.raises(ValueError, match=r"unknown integrator 'rk4'; choose one of .*'midpoint'"):
        evolve(small_problem(), dt=0.1, steps=1, integrator="rk4")
    with pytest.raises(ValueError, match=r"keep must be 'all' or 'last', got 'some'"):
        evolve(small_problem(), dt=0.1, steps=1, keep="some")
    with pytest.raises(ValueError, match=r"unknown dtype 'float16'"):
        evolve(small_problem(), dt=0.1, steps=0, dtype="float16")


def test_initial_condition_with_nan_is_rejected_naming_where():
    def initial(x):
        return torch.where(x > 0.5, torch.nan, torch.exp(-x**2))

    with pytest.raises(ValueError, match=r"initial condition is not finite at 750 of 2000 grid points "
                                         r"\(first at x=0\.501\)"):
        Advection1D(initial=initial)


@pytest.mark.parametrize("initial,shape", [(lambda x: x[:, 0], r"\(2000,\)"),
                                           (lambda x: x.repeat(1, 2), r"\(2000, 2\)"),
                                           (lambda x: x.numpy(), "ndarray")])
def test_initial_condition_of_the_wrong_shape_is_rejected(initial, shape):
    with pytest.raises(ValueError, match=r"must map points \(n, 1\) to values \(n, 1\), got " + shape):
        Advection1D(initial=initial)


def test_initial_condition_that_raises_is_reported():
    def initial(x):
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match=r"initial condition failed on points of shape \(2000, 1\): boom"):
        Advection1D(initial=initial)


@pytest.mark.parametrize("velocity", [math.nan, math.inf, -math.inf])
def test_non_finite_velocity(velocity):
    with pytest.raises(ValueError, match=r"velocity must be finite, got"):
        Advection1D(velocity=velocity)


@pytest.mark.parametrize("kwargs,message", [({"length": 0.0}, "length must be positive"),
                                            ({"length": math.nan}, "length must be positive"),
                                            ({"n_points": 0}, "n_points must be positive")])
def test_other_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Advection1D(**kwargs)


@pytest.mark.parametrize("width", [0.0, -0.1, math.nan])
def test_bad_pulse_width(width):
    with pytest.raises(ValueError, match="width must be positive"):
        gaussian_pulse(width=width)


class _Burgers(Problem):
    """``u_t = -u u_x``: non-linear, so the Gauss-Legendre residual (which composes rhs with itself) is invalid."""

    name = "burgers-test"
    domain = Box((-1.0,), (1.0,))
    linear = False
    n_points = 16

    def initial(self, x):
        return torch.sin(math.pi * x)

    def rhs(self, u, x, t):
        return -u(x) * gradient(u, x)


def test_gauss_legendre_on_a_nonlinear_problem_is_refused():
    with pytest.raises(ValueError, match=r"'gauss-legendre2' needs a linear.*'burgers-test' is not; use 'midpoint'"):
        evolve(_Burgers(), dt=0.1, steps=1, integrator="gauss-legendre2")
    # the same check guards the residual itself
    from neuralnumerics.pde import get_integrator

    with pytest.raises(ValueError, match="needs a linear"):
        _Burgers().step_terms(get_integrator("gauss-legendre2"), lambda x: x, 0.0, 0.1)
    # a non-linear problem is fine with the midpoint rule
    terms = _Burgers().step_terms(get_integrator("midpoint"), lambda x: x, 0.0, 0.1)
    assert [t.name for t in terms] == ["pde"]

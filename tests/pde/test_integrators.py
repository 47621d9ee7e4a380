"""Time integrators: registry, residual formulas, and convergence orders measured through ``fit_field``.

The convergence test solves the linear ODE ``u' = A u`` (a scalar decay and a 2-channel rotation) to
``T = 1`` with every registered integrator, using the INSR machinery end to end: the "field" is a
learnable constant vector (ignoring ``x``), and each step is a Levenberg-Marquardt fit of the
integrator's residual. The observed order ``log2(err(dt) / err(dt/2))`` must match ``order``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from neuralnumerics.pde import INTEGRATORS, FitConfig, ResidualTerm, TimeIntegrator, fit_field, get_integrator

F64 = torch.float64
EXPECTED_ORDERS = {"explicit-euler": 1, "implicit-euler": 1, "midpoint": 2, "trapezoidal": 2, "gauss-legendre2": 4}

LAM, OMEGA = -1.3, 2.0
PROBLEMS = {
    # name: (A, u0); exact solution expm(T A) u0
    "decay": (np.array([[LAM]]), np.array([1.0])),
    "rotation": (np.array([[0.0, -OMEGA], [OMEGA, 0.0]]), np.array([1.0, 0.0])),
}


def _exact(problem: str, T: float = 1.0) -> np.ndarray:
    if problem == "decay":
        return np.array([math.exp(LAM * T)])
    return np.array([math.cos(OMEGA * T), math.sin(OMEGA * T)])  # closed form of the rotation


def _one_step_matrix(name: str, z: np.ndarray) -> np.ndarray:
    """Stability function R(dt A) of each method (the independent oracle for one step)."""
    eye = np.eye(z.shape[0])
    solve = np.linalg.solve
    if name == "explicit-euler":
        return eye + z
    if name == "implicit-euler":
        return solve(eye - z, eye)
    if name in ("midpoint", "trapezoidal"):
        return solve(eye - z / 2, eye + z / 2)
    if name == "gauss-legendre2":  # (2,2) Pade approximant of exp
        return solve(eye - z / 2 + z @ z / 12, eye + z / 2 + z @ z / 12)
    raise KeyError(name)


class ConstantField(nn.Module):
    """A field equal to one learnable vector everywhere: ``x -> value`` broadcast to ``(n, c)``."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.as_tensor(value, dtype=F64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], -1)


def _constant(v: torch.Tensor):
    v = v.detach().clone()
    return lambda x: v.expand(x.shape[0], -1)


def _linear_rhs(A: torch.Tensor):
    return lambda u, x, t: u(x) @ A.T


FIT = FitConfig(optimizer="lm", rtol=0.0, atol=1e-28, max_iters=20)
POINTS = torch.linspace(-1.0, 1.0, 3, dtype=F64)[:, None]


@functools.lru_cache(maxsize=None)
def _solve(name: str, problem: str, n_steps: int) -> tuple[np.ndarray, float]:
    """Integrate to T = 1 in ``n_steps`` fitted steps; returns u(T) and the worst per-step fit loss."""
    integ = get_integrator(name)
    A_np, u0 = PROBLEMS[problem]
    A = torch.as_tensor(A_np, dtype=F64)
    rhs = _linear_rhs(A)
    dt = 1.0 / n_steps
    field = ConstantField(torch.as_tensor(u0))
    worst = 0.0
    for k in range(n_steps):
        u_prev = _constant(field.value)
        t = k * dt
        term = ResidualTerm("step", lambda u, x, u_prev=u_prev, t=t: integ.residual(rhs, u, u_prev, x, t, dt),
                            lambda generator, quasi: POINTS)
        report = fit_field(field, [term], FIT)
        assert report.status.ok, report.status
        worst = max(worst, report.loss)
    return field.value.detach().numpy().copy(), worst


def _steps(order: int) -> list[int]:
    # asymptotic range, and for order 4 errors (~1e-5..1e-8) well above round-off (~1e-14)
    return [4, 8, 16] if order >= 4 else [8, 16, 32]


# ---------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------

def test_registry_has_the_five_methods_with_their_orders():
    for name, order in EXPECTED_ORDERS.items():
        assert name in INTEGRATORS
        assert INTEGRATORS[name].order == order
        assert INTEGRATORS[name].name == name
    for name, cls in INTEGRATORS.items():
        assert issubclass(cls, TimeIntegrator)
        assert isinstance(cls.order, int) and cls.order >= 1
    assert INTEGRATORS["explicit-euler"].implicit is False
    assert INTEGRATORS["gauss-legendre2"].needs_linear is True


def test_get_integrator_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        get_integrator("nope")
    message = str(info.value)
    assert "nope" in message
    for name in INTEGRATORS:
        assert name in message


def test_get_integrator_returns_instances():
    for name, cls in INTEGRATORS.items():
        integ = get_integrator(name)
        assert type(integ) is cls
        assert get_integrator(integ) is integ


# ---------------------------------------------------------------------------------------------------------
# residual formulas, without fitting
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED_ORDERS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("dt", [0.3, 0.05])
def test_residual_vanishes_on_the_methods_one_step_map(name, problem, dt):
    A_np, u0_np = PROBLEMS[problem]
    u0_np = u0_np + 0.25  # generic start
    u1_np = _one_step_matrix(name, dt * A_np) @ u0_np
    A = torch.as_tensor(A_np, dtype=F64)
    integ = get_integrator(name)
    x = POINTS
    u0, u1 = torch.as_tensor(u0_np), torch.as_tensor(u1_np)
    r = integ.residual(_linear_rhs(A), _constant(u1), _constant(u0), x, 0.7, dt)
    assert r.shape == (x.shape[0], A.shape[0])
    assert float(r.abs().max()) < 1e-12
    # and it is a difference quotient: moving u_new by eps moves the residual by ~eps/dt
    eps = 1e-3
    r_bad = integ.residual(_linear_rhs(A), _constant(u1 + eps), _constant(u0), x, 0.7, dt)
    assert float(r_bad.abs().max()) > 0.5 * eps / dt


@pytest.mark.parametrize("name,t_new", [("explicit-euler", []), ("implicit-euler", [1.0]),
                                        ("midpoint", [0.75]), ("trapezoidal", [1.0])])
def test_time_at_which_rhs_is_evaluated_on_u_new(name, t_new):
    """Which fields and times the rhs sees: u_new at the step's end (or midpoint), u_prev at its start."""
    calls = []
    u_new, u_prev = _constant(torch.tensor([2.0], dtype=F64)), _constant(torch.tensor([1.0], dtype=F64))

    def rhs(u, x, t):
        calls.append((u, t))
        return u(x)

    get_integrator(name).residual(rhs, u_new, u_prev, POINTS, 0.5, 0.5)
    new_times = [t for u, t in calls if u is u_new]
    prev_times = [t for u, t in calls if u is u_prev]
    if name == "midpoint":  # rhs of the average field at the midpoint time
        assert [t for u, t in calls] == [0.75] and not new_times and not prev_times
    else:
        assert new_times == t_new
        assert prev_times == ([0.5] if name in ("explicit-euler", "trapezoidal") else [])


def test_explicit_euler_does_not_evaluate_rhs_at_u_new():
    integ = get_integrator("explicit-euler")
    seen = []

    def rhs(u, x, t):  # nonlinear, so the value check below is not a coincidence of linearity
        seen.append(u)
        return u(x) ** 2 + t

    x = POINTS
    u_prev = _constant(torch.tensor([0.6, -0.4], dtype=F64))
    dt, t = 0.1, 0.3
    for value in ([1.0, 2.0], [-3.0, 5.0]):
        u_new = _constant(torch.tensor(value, dtype=F64))
        r = integ.residual(rhs, u_new, u_prev, x, t, dt)
        expected = (torch.tensor(value, dtype=F64) - torch.tensor([0.6, -0.4], dtype=F64)) / dt \
            - (torch.tensor([0.6, -0.4], dtype=F64) ** 2 + t)
        torch.testing.assert_close(r, expected.expand(3, -1), rtol=1e-14, atol=1e-14)
        assert all(u is u_prev for u in seen)
    # so the residual is affine in u_new with slope exactly 1/dt
    r1 = integ.residual(rhs, _constant(torch.tensor([1.0, 2.0], dtype=F64)), u_prev, x, t, dt)
    r2 = integ.residual(rhs, _constant(torch.tensor([1.5, 2.0], dtype=F64)), u_prev, x, t, dt)
    torch.testing.assert_close(r2 - r1, torch.tensor([0.5 / dt, 0.0], dtype=F64).expand(3, -1))


# ---------------------------------------------------------------------------------------------------------
# convergence orders, end to end through fit_field
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(INTEGRATORS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_observed_convergence_order(name, problem):
    order = INTEGRATORS[name].order
    exact = _exact(problem)
    errors = []
    for n in _steps(order):
        u, worst_loss = _solve(name, problem, n)
        assert worst_loss < 1e-24  # every step was solved, so the error is the method's
        errors.append(float(np.abs(u - exact).max()))
    observed = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert all(abs(p - order) < 0.25 for p in observed), (errors, observed)


@pytest.mark.parametrize("name", sorted(EXPECTED_ORDERS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_fitted_steps_reproduce_the_methods_discrete_solution(name, problem):
    """Stronger than the order: the fitted trajectory is R(dt A)^N u0, R the method's stability function."""
    A, u0 = PROBLEMS[problem]
    n = _steps(INTEGRATORS[name].order)[0]
    u, _ = _solve(name, problem, n)
    discrete = np.linalg.matrix_power(_one_step_matrix(name, A / n), n) @ u0
    np.testing.assert_allclose(u, discrete, rtol=0, atol=1e-12)
    if name == "gauss-legendre2":
        # R is the (2,2) Pade approximant of exp: closer to expm than the order-2 methods by far
        np.testing.assert_allclose(u, scipy.linalg.expm(A) @ u0, rtol=0, atol=2e-4)

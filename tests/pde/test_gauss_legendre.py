"""The order-4 integrator on advection: accuracy against the exact solution and its inflow condition."""

import pytest
import torch

from neuralnumerics.pde import Advection1D, FitConfig, evolve, get_integrator


@pytest.fixture(scope="module")
def start(one_thread):
    problem = Advection1D(n_points=500, hidden_features=16)
    traj = evolve(problem, dt=0.05, steps=0, dtype="float64", initial_fit=FitConfig(max_iters=100, warmup_iters=300))
    return problem, traj.weights(0)


def test_gauss_legendre2_beats_midpoint_by_far(start):
    # measured (SIREN 2x16, 500 points, float64, 12 steps): midpoint 2.2e-3, gauss-legendre2 2.7e-5
    problem, w0 = start
    errors = {}
    for name in ("midpoint", "gauss-legendre2"):
        traj = evolve(problem, dt=0.05, steps=12, integrator=name, dtype="float64", start=(0, w0),
                      fit=FitConfig(max_iters=20))
        errors[name] = traj.records[-1].error
    assert 1.5e-3 < errors["midpoint"] < 3e-3  # the midpoint rule's own time error, about 1.8e-4 per step
    assert errors["gauss-legendre2"] < 1e-4
    assert errors["gauss-legendre2"] < errors["midpoint"] / 20


@pytest.mark.parametrize("velocity,inflow", [(0.25, -2.0), (-0.25, 2.0)])
def test_second_order_residual_adds_the_inflow_operator_condition(velocity, inflow):
    problem = Advection1D(velocity=velocity, n_points=10)
    assert [t.name for t in problem.boundary_terms(0.0, 1)] == ["boundary"]
    terms = {t.name: t for t in problem.boundary_terms(0.0, get_integrator("gauss-legendre2").operator_power)}
    assert set(terms) == {"boundary", "inflow_operator"}
    x = terms["inflow_operator"].sample(None, True)
    assert x.tolist() == [[inflow]]
    field = lambda y: torch.sin(3 * y) + y ** 2  # noqa: E731  u_x = 3 cos(3x) + 2x
    expected = -velocity * (3 * torch.cos(3 * x) + 2 * x)
    torch.testing.assert_close(terms["inflow_operator"].fn(field, x), expected)

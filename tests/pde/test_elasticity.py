"""INSR hyperelasticity: energy terms in ``fit_field``, rest and rigid motions reproduced exactly (a body at
rest, free fall and uniform translation follow the implicit-Euler recurrence), penalty contact that stiffens
with the stiffness, constraint ramps, refusals of bad input, and agreement with the finite-element baseline on
a short run of the paper's collision example and on a static stretch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuralnumerics.classical.elasticity import ElasticFEM, rectangle_mesh
from neuralnumerics.pde.bodies import BoxBody
from neuralnumerics.pde.elasticity import (Constraint, Elasticity, ElasticTrajectory, evolve_elastic,
                                           paper_weights)
from neuralnumerics.pde.fit import FitConfig, ResidualTerm, fit_field
from neuralnumerics.pde.obstacles import Plane, Sphere

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:Sparse invariant checks")]

F64 = torch.float64
SMALL = dict(hidden_features=16, n_points=512)
QUICK_FIT = FitConfig(optimizer="lbfgs", max_iters=100, ftol=1e-6)


def unit_points(n: int = 1024):
    """``sample(generator, quasi)`` of ``n`` points of [0, 1]."""
    return lambda generator, quasi: BoxBody((0.0, 0.0), (1.0, 1.0)).sample(n, generator=generator,
                                                                            quasi=quasi)[:, :1].contiguous()


# ----------------------------------------------------------------------------------------------- energy terms


class Constant(nn.Module):
    """The field ``x -> c`` with one weight ``c``."""

    def __init__(self):
        super().__init__()
        self.value = nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x):
        return self.value.expand(x.shape[0], 1)


def test_an_energy_term_is_minimised_not_squared():
    # mean(u^2 / 2 - x^2 u) over linear fields u = a x + b is minimal at the L2 projection of x^2 on [0, 1]:
    # u = x - 1/6, where the energy is -1/2 int (x - 1/6)^2 = -7/72 (times the weight 2)
    net = nn.Linear(1, 1).double()
    term = ResidualTerm("pot", lambda u, x: 0.5 * u(x).square() - x.square() * u(x), unit_points(),
                        weight=2.0, energy=True)
    report = fit_field(net, [term], FitConfig(optimizer="lbfgs", max_iters=200, ftol=1e-12),
                       generator=torch.Generator().manual_seed(0))
    assert report.status.ok
    assert float(net.weight.detach()) == pytest.approx(1.0, abs=2e-3)
    assert float(net.bias.detach()) == pytest.approx(-1 / 6, abs=2e-3)
    assert report.loss == pytest.approx(-7 / 36, rel=2e-3)  # negative: the energy itself, weighted
    assert report.losses["pot"] == pytest.approx(report.loss)
    assert report.target == -math.inf  # an energy has no known minimum: no residual tolerance


def test_energy_and_residual_terms_combine_and_lm_refuses_energies():
    # energy mean(u^2 / 2 - u) pulls u to 1; a residual term 10 * mean((u - 3)^2) pulls it to 3: for a constant
    # u the loss u^2/2 - u + 10 (u - 3)^2 is minimal at u = 61 / 21
    net = Constant()
    energy = ResidualTerm("pot", lambda u, x: 0.5 * u(x).square() - u(x), unit_points(64), energy=True)
    data = ResidualTerm("data", lambda u, x: u(x) - 3.0, unit_points(64), weight=10.0)
    report = fit_field(net, [energy, data], FitConfig(optimizer="lbfgs", max_iters=100, ftol=1e-14))
    assert float(net.value.detach()) == pytest.approx(61 / 21, abs=1e-6)
    with pytest.raises(ValueError, match=r"\['pot'\] are energies; use optimizer 'lbfgs' or 'adam'") as info:
        fit_field(net, [data, energy], FitConfig(optimizer="lm"))
    assert "data" not in str(info.value)
    assert report.status.ok


# ----------------------------------------------------------------------------------------------- rigid motions


def test_a_body_at_rest_with_no_forces_stays_at_rest():
    problem = Elasticity(BoxBody(), **SMALL)
    traj = evolve_elastic(problem, dt=0.1, steps=2)
    assert traj.steps == [0, 1, 2] and [r.step for r in traj.records] == [0, 1, 2]
    X = problem.eval_points(2000)
    for s in traj.steps:
        assert float(traj.displacement(s)(X).abs().max()) < 1e-8
        torch.testing.assert_close(traj.deformation(s)(X), X, rtol=0, atol=1e-8)
        d = traj.records[s].diagnostics
        for key in ("elastic_energy", "kinetic_energy", "gravity_energy", "contact_energy", "max_penetration",
                    "constraint_violation", "volume_change"):
            assert abs(d[key]) < 1e-8, key
        assert d["min_det_f"] == pytest.approx(1.0, abs=1e-8)
        assert max(abs(c) for c in d["center_of_mass"]) < 1e-8  # the eval points' centroid, at the origin
        assert traj.records[s].status in ("success", "stagnated")


@pytest.fixture(scope="module")
def free_fall():
    g, rho, dt = 9.0, 3.0, 0.1
    problem = Elasticity(BoxBody(), gravity=(0.0, -g), density=rho, **SMALL)
    return problem, evolve_elastic(problem, dt=dt, steps=2, fit=QUICK_FIT), g, rho, dt


def test_free_fall_follows_the_implicit_euler_recurrence(free_fall):
    problem, traj, g, rho, dt = free_fall
    V = problem.body.volume
    com = [torch.tensor(r.diagnostics["center_of_mass"], dtype=F64) for r in traj.records]
    # implicit Euler from rest: x1 = x0 + dt^2 g, then x2 = 2 x1 - x0 + dt^2 g = x0 + 3 dt^2 g
    torch.testing.assert_close(com[1] - com[0], torch.tensor([0.0, -g * dt * dt], dtype=F64), rtol=0, atol=1e-4)
    torch.testing.assert_close(com[2] - com[0], torch.tensor([0.0, -3 * g * dt * dt], dtype=F64), rtol=0,
                               atol=1e-4)
    d1, d2 = traj.records[1].diagnostics, traj.records[2].diagnostics
    assert d1["kinetic_energy"] == pytest.approx(0.5 * rho * V * (g * dt) ** 2, rel=1e-3)
    assert d2["kinetic_energy"] == pytest.approx(0.5 * rho * V * (2 * g * dt) ** 2, rel=1e-3)
    assert d1["gravity_energy"] == pytest.approx(-rho * V * g * g * dt * dt, rel=1e-3)  # -rho V g . (phi - X)
    assert d1["elastic_energy"] < 1e-5 and abs(d1["volume_change"]) < 1e-5


def test_free_fall_moves_every_point_rigidly(free_fall):
    problem, traj, g, rho, dt = free_fall
    X = problem.body.sample(1000, generator=torch.Generator().manual_seed(3))
    u1, u2 = traj.displacement(1)(X), traj.displacement(2)(X)
    drop = torch.tensor([0.0, -g * dt * dt], dtype=F64)
    torch.testing.assert_close(u1, drop.expand_as(u1), rtol=0, atol=1e-3)
    torch.testing.assert_close(u2 - 2 * u1, drop.expand_as(u1), rtol=0, atol=2e-3)


def test_a_constant_initial_velocity_translates_the_body():
    v = (0.5, -0.25)
    problem = Elasticity(BoxBody(), initial_velocity=v, density=2.0, **SMALL)
    traj = evolve_elastic(problem, dt=0.1, steps=2, fit=QUICK_FIT)
    X = problem.eval_points(1000)
    for s in (1, 2):
        expect = 0.1 * s * torch.tensor(v, dtype=F64)
        u = traj.displacement(s)(X)
        torch.testing.assert_close(u.mean(0), expect, rtol=0, atol=1e-5)
        torch.testing.assert_close(u, expect.expand_as(u), rtol=0, atol=2e-3)
        assert traj.records[s].diagnostics["kinetic_energy"] == pytest.approx(0.5 * 2.0 * 4.0 * (0.25 + 0.0625),
                                                                              rel=1e-3)


# ----------------------------------------------------------------------------------------------- contact


def test_penalty_contact_keeps_a_falling_body_above_the_floor_and_stiffens_with_k():
    # the square's bottom rests on the floor y = -1 and moves down at speed 5: without the floor one step of
    # dt 0.1 would take it 0.5 + dt^2 g = 0.6 through
    fall = 0.6
    depth, com = {}, {}
    for k in (1e4, 1e5):
        problem = Elasticity(BoxBody(), gravity=(0.0, -10.0), initial_velocity=(0.0, -5.0), obstacles=[Plane(-1.0)],
                             contact_stiffness=k, **SMALL)
        traj = evolve_elastic(problem, dt=0.1, steps=1, fit=FitConfig(optimizer="lbfgs", max_iters=200, ftol=1e-6))
        d = traj.records[1].diagnostics
        depth[k], com[k] = d["max_penetration"], d["center_of_mass"][1]
        assert d["contact_energy"] > 0
    assert depth[1e5] < 0.15 * fall
    assert depth[1e5] < 0.7 * depth[1e4] < 0.7 * 0.3 * fall
    assert -fall < com[1e4] < com[1e5] < 0  # the stiffer floor stops the body sooner


# ----------------------------------------------------------------------------------------------- constraints


def test_constraint_targets_ramp_linearly_then_hold():
    pts = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=F64)
    c = Constraint("right", pts, (0.4, -0.2), 400.0, 2.0, ramp_steps=4)
    offset = torch.tensor([0.4, -0.2], dtype=F64)
    for step, ramp in ((0, 0.0), (1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):
        torch.testing.assert_close(c.target(pts, step), pts + ramp * offset)
    at_once = Constraint("right", pts, (0.4, -0.2), 400.0, 2.0)
    torch.testing.assert_close(at_once.target(pts, 1), pts + offset)


def test_a_ramped_static_stretch_follows_its_constraints():
    body = BoxBody()
    left = Constraint("left", body.face(0, 0, 20), (0.0, 0.0), 400.0, 2.0)
    right = Constraint("right", body.face(0, 1, 20), (0.4, 0.0), 400.0, 2.0, ramp_steps=2)
    problem = Elasticity(body, constraints=[left, right], static=True, **SMALL)
    terms = problem.step_terms(lambda x: torch.zeros_like(x), None, 1, 1.0)
    assert [t.name for t in terms] == ["body", "left", "right"] and terms[0].energy and not terms[1].energy
    assert terms[0].weight == pytest.approx(4.0) and terms[2].weight == pytest.approx(0.5 * 400.0 * 2.0)
    traj = evolve_elastic(problem, dt=1.0, steps=2, fit=FitConfig(optimizer="lbfgs", max_iters=150, ftol=1e-7))
    for s, pulled in ((1, 0.2), (2, 0.4)):
        u = traj.displacement(s)
        torch.testing.assert_close(u(right.points).mean(0), torch.tensor([pulled, 0.0], dtype=F64), rtol=0,
                                   atol=0.02)
        assert float(u(left.points).abs().max()) < 0.02
        d = traj.records[s].diagnostics
        assert d["constraint_violation"] < 0.02 and d["kinetic_energy"] == 0.0 and d["elastic_energy"] > 0
        assert abs(d["volume_change"]) < 0.01


def test_paper_weights_convert_the_sample_summed_constraint_weight():
    # the stretch scenario's 400 per unit length is the paper's 1e4 over 100 boundary and 10^4 interior samples
    assert paper_weights(1e4, 100, 10_000, 4.0, 2.0) == pytest.approx(400.0)
    assert paper_weights(1.0, 10, 20, 3.0, 0.5) == pytest.approx(2 * 10 / 20 * 3.0 / 0.5)


# ----------------------------------------------------------------------------------------------- refusals


def test_bad_input_is_refused_with_clear_messages():
    body = BoxBody()
    with pytest.raises(ValueError, match=r"gravity must have 2 components for a 2D body, got \[0.0, -1.0, 0.0\]"):
        Elasticity(body, gravity=(0.0, -1.0, 0.0))
    with pytest.raises(ValueError, match="initial_velocity must have 2 components"):
        Elasticity(body, initial_velocity=(1.0,))
    with pytest.raises(ValueError, match="unknown material 'rubber'; choose one of arap, neo-hookean"):
        Elasticity(body, material="rubber")
    with pytest.raises(ValueError, match="density must be positive, got -1.0"):
        Elasticity(body, density=-1.0)
    with pytest.raises(ValueError, match="contact_stiffness must be positive"):
        Elasticity(body, contact_stiffness=0.0)
    with pytest.raises(ValueError, match="n_points must be positive"):
        Elasticity(body, n_points=0)
    with pytest.raises(ValueError, match="volume_weight must be a finite non-negative number"):
        Elasticity(body, volume_weight=math.nan)
    pts3 = torch.zeros(4, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"constraint 'c': points must be \(m, 2\)"):
        Elasticity(body, constraints=[Constraint("c", pts3, (0.0, 0.0), 1.0, 1.0)])
    with pytest.raises(ValueError, match="constraint 'c'.*offset have 2 components"):
        Elasticity(body, constraints=[Constraint("c", torch.zeros(4, 2, dtype=F64), (0.0, 0.0, 1.0), 1.0, 1.0)])
    with pytest.raises(ValueError, match=r"constraint 'c': points must be \(m, 2\)"):
        Elasticity(body, constraints=[Constraint("c", torch.zeros(4, dtype=F64), (0.0, 0.0), 1.0, 1.0)])
    problem = Elasticity(body, **SMALL)
    with pytest.raises(ValueError, match="dt must be a positive number"):
        evolve_elastic(problem, dt=0.0, steps=1)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        evolve_elastic(problem, dt=0.1, steps=-1)
    with pytest.raises(ValueError, match="keep must be 'all' or 'last'"):
        evolve_elastic(problem, dt=0.1, steps=1, keep="first")
    traj = ElasticTrajectory(problem.default_field(), 0.1)
    with pytest.raises(IndexError, match="step 3 is not stored"):
        traj.weights(3)


def test_keep_last_stores_the_two_newest_steps():
    problem = Elasticity(BoxBody(), **SMALL)
    seen = []
    traj = evolve_elastic(problem, dt=0.1, steps=3, keep="last", callback=lambda rec, tr: seen.append(rec.step),
                          fit=FitConfig(optimizer="lbfgs", max_iters=5))
    assert seen == [0, 1, 2, 3] and traj.steps == [2, 3]


# ----------------------------------------------------------------------------------------------- INSR vs FEM


def test_insr_agrees_with_the_finite_element_baseline_on_the_collision_example():
    # the elasticity-collide-2d setting: a square pushed down onto a disc for two steps of dt 0.1
    kwargs = dict(arap_weight=20.0, volume_weight=1e3, density=20.0, gravity=(0.0, -10.0), force_steps=2,
                  obstacles=[Sphere((0.0, -2.0), 1.0)], contact_stiffness=1e4)
    problem = Elasticity(BoxBody(), hidden_features=32, n_points=2048, **kwargs)
    traj = evolve_elastic(problem, dt=0.1, steps=2, fit=FitConfig(optimizer="lbfgs", max_iters=300, ftol=1e-6))
    V, T = rectangle_mesh(24, 24)
    fem = ElasticFEM(V, T, problem.energy_density)
    m = fem.lumped_masses(problem.density)
    torch.testing.assert_close(m.sum(), torch.tensor(20.0 * 4.0, dtype=F64))
    q, v = V.clone(), torch.zeros_like(V)
    for s in (1, 2):
        q, v, result = fem.step(q, v, 0.1, density=problem.density, gravity=problem.gravity,
                                obstacles=problem.obstacles, contact_stiffness=problem.contact_stiffness)
        assert result.converged
        d = traj.records[s].diagnostics
        kinetic = float(0.5 * (m[:, None] * v.square()).sum())
        com = (m[:, None] * q).sum(0) / m.sum()
        depth = float(problem.obstacles[0].penetration(q)[0].max())
        assert d["kinetic_energy"] == pytest.approx(kinetic, rel=0.03), s
        assert d["center_of_mass"][1] == pytest.approx(float(com[1]), rel=0.03), s
        assert abs(d["center_of_mass"][0]) < 1e-3 and abs(float(com[0])) < 1e-3  # symmetric
        assert d["max_penetration"] == pytest.approx(depth, rel=0.15), s
    # the body was slowed by the disc: less kinetic energy than in free fall (0.5 * 80 * (2 g dt)^2 = 160)
    assert d["kinetic_energy"] < 0.95 * 160.0


# ------------------------------------------------------------------------------ static stretch against FEM


def _stretch_constraints(body, offset):
    return [Constraint("left", body.face(0, 0, 40), (0.0, 0.0), 400.0, 2.0),
            Constraint("right", body.face(0, 1, 40), (offset, 0.0), 400.0, 2.0)]


def _fem_stretch(arap_weight, volume_weight, offset):
    """The converged finite-element equilibrium (crossed triangles, 12 x 12 cells, two load increments)."""
    body = BoxBody()
    density = Elasticity(body, static=True, arap_weight=arap_weight, volume_weight=volume_weight).energy_density
    V, T = rectangle_mesh(12, 12, crossed=True)
    fem = ElasticFEM(V, T, density)
    fixed = V[:, 0].abs() > 1 - 1e-9
    target = V.clone()
    target[V[:, 0] > 1 - 1e-9, 0] += offset
    q = V.clone()
    for k in (1, 2):
        q, _, res = fem.step(q, torch.zeros_like(V), 1.0, fixed=fixed, targets=V + (target - V) * k / 2,
                             static=True, tol=1e-10, max_iters=100, newton="damped")
        assert res.converged
    return fem, q


def test_the_static_stretch_converges_to_the_finite_element_solution():
    # ARAP 1 + volume 3, the right side pulled by 0.5: INSR's displacement is within 2% of the FEM solution of
    # the same problem, while FEM solutions with a wrong energy (ARAP weight x1.5 or x2, no volume term) are
    # 3.4%, 6% and 30% away: the tolerance catches a wrong term
    body = BoxBody()
    problem = Elasticity(body, constraints=_stretch_constraints(body, 0.5), static=True, arap_weight=1.0,
                         volume_weight=3.0, hidden_features=16, hidden_layers=2, n_points=1024)
    traj = evolve_elastic(problem, dt=1.0, steps=1, fit=FitConfig(optimizer="lbfgs", max_iters=400, ftol=1e-7))
    X = BoxBody().sample(2000, generator=torch.Generator().manual_seed(1))
    ours = traj.displacement(1)(X)

    def distance(arap_weight, volume_weight):
        fem, q = _fem_stretch(arap_weight, volume_weight, 0.5)
        fem_disp = fem.interpolate(q, X) - X
        return float((ours - fem_disp).norm() / fem_disp.norm())

    assert distance(1.0, 3.0) < 0.02
    assert distance(1.5, 3.0) > 0.025
    assert distance(1.0, 0.0) > 0.1
    # the constraints hold to the penalty's accuracy
    assert traj.records[-1].diagnostics["constraint_violation"] < 0.02


def test_a_bar_pinned_at_both_ends_stays_at_rest():
    body = BoxBody()
    problem = Elasticity(body, constraints=_stretch_constraints(body, 0.0), static=True, **SMALL)
    traj = evolve_elastic(problem, dt=1.0, steps=2, fit=QUICK_FIT)
    X = body.sample(500)
    assert float(traj.displacement(2)(X).abs().max()) < 1e-10
    assert traj.records[-1].diagnostics["elastic_energy"] < 1e-16

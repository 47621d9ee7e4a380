"""INSR fluids: set-ups against closed forms, the projection against an analytic Helmholtz decomposition."""

from __future__ import annotations

import math

import pytest
import torch

from neuralnumerics.classical import StableFluids2D
from neuralnumerics.fields import SIREN, divergence, jacobian
from neuralnumerics.pde.fit import FitConfig
from neuralnumerics.pde import fluid as F

F64 = torch.float64


def _points(n: int, seed: int = 0, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_taylor_green_is_divergence_free_tangential_and_steady():
    x = _points(200)
    u = F.taylor_green_velocity
    assert float(divergence(u, x).abs().max()) < 1e-12
    # steady Euler solution: the convective term (u . grad) u is a gradient, so its curl vanishes
    conv = lambda y: torch.einsum("ncd,nd->nc", jacobian(u, y), u(y))  # noqa: E731
    J = jacobian(conv, x)
    assert float((J[:, 1, 0] - J[:, 0, 1]).abs().max()) < 1e-12
    t = torch.linspace(-1, 1, 50, dtype=F64)
    ones = torch.ones_like(t)
    for side, comp in ((torch.stack([-ones, t], 1), 0), (torch.stack([ones, t], 1), 0),
                       (torch.stack([t, -ones], 1), 1), (torch.stack([t, ones], 1), 1)):
        assert float(u(side)[:, comp].abs().max()) < 1e-12
    assert abs(float(u(x).abs().max()) - 1 / math.pi) < 0.05


def test_multiscale_cells_are_scaled_taylor_green_cells():
    scale = 8.0
    big = _points(100, seed=1, lo=-0.95, hi=-0.05)
    torch.testing.assert_close(F.taylor_green_multiscale_velocity(big, scale),
                               math.pi * F.taylor_green_velocity(2 * big + 1))
    corner = 1 - 2 / scale
    small = _points(100, seed=2, lo=corner + 0.02, hi=0.99)
    torch.testing.assert_close(F.taylor_green_multiscale_velocity(small, scale),
                               math.pi * F.taylor_green_velocity(scale * small - scale + 1))
    middle = torch.tensor([[0.5, -0.5], [-0.5, 0.5]], dtype=F64)
    assert float(F.taylor_green_multiscale_velocity(middle, scale).abs().max()) == 0.0
    # its pressure is finer than the other scenes' unless told otherwise
    flow = F.taylor_green_multiscale(n_points=2048)
    assert (flow.pressure_omega, flow.pressure_points) == (30.0, 2048)
    flow = F.taylor_green_multiscale(n_points=2048, pressure_omega=10.0, pressure_points=512)
    assert (flow.pressure_omega, flow.pressure_points) == (10.0, 512)


def test_sampling_stays_in_the_fluid_and_walls_carry_unit_normals():
    flow = F.jet_past_cylinder(n_points=500)
    g = torch.Generator().manual_seed(0)
    x = flow.sample_fluid(500, g)
    assert x.shape == (500, 2) and bool(flow.inside(x).all())
    cx, cy, r = flow.obstacle
    assert float(((x[:, 0] - cx) ** 2 + (x[:, 1] - cy) ** 2).min()) > r * r
    walls = flow.sample_walls(g)
    pts, normals = walls[:, :2], walls[:, 2:]
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(len(walls), dtype=F64))
    on_box = (pts.abs() - 1).abs().min(dim=1).values < 1e-12
    on_disc = ((pts - torch.tensor([cx, cy], dtype=F64)).norm(dim=1) - r).abs() < 1e-12
    assert bool((on_box | on_disc).all()) and int(on_disc.sum()) >= 8 and int(on_box.sum()) == 4 * flow.wall_points
    # normals point out of the fluid: a small step along them leaves it
    assert not bool(flow.inside(pts + 1e-3 * normals).any())


def test_jet_imposes_its_velocity_in_the_nozzle_only():
    flow = F.jet_past_cylinder(n_points=100, speed=0.7)
    x = torch.tensor([[0.0, -0.95], [0.8, 0.8], [-0.8, -0.95]], dtype=F64)
    a = torch.full((3, 2), 0.1, dtype=F64)
    out = flow.force(x, a)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.7], dtype=F64))
    torch.testing.assert_close(out[1:], a[1:])


def test_diagnostics_of_the_analytic_taylor_green_field():
    flow = F.taylor_green(n_points=100)
    x = flow.eval_points(128)
    d = F.flow_diagnostics(flow, F.taylor_green_velocity, x, 0.3, energy0=0.5)
    assert d["error"] == 0.0 and d["rms_divergence"] < 1e-12
    # kinetic energy 1/2 int |u|^2 over [-1, 1]^2 = 1 / pi^2
    assert abs(d["kinetic_energy"] - 1 / math.pi ** 2) < 1e-6
    assert abs(d["energy_ratio"] - 2 / math.pi ** 2) < 1e-6


@pytest.mark.parametrize("kwargs, match", [
    (dict(obstacle=(0.9, 0.0, 0.2)), "inside the box"),
    (dict(obstacle=(0.0, 0.0, 0.0)), "radius must be positive"),
    (dict(n_points=3), "n_points"),
    (dict(jet=F.Jet(width=-1.0)), "jet"),
])
def test_bad_flow_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.IncompressibleFlow2D(F.taylor_green_velocity, **kwargs)


@pytest.mark.parametrize("initial, match", [
    ("not callable", "callable"),
    (lambda x: x[:, :1], r"\(n, 2\)"),
    (lambda x: x / 0.0, "not finite"),
    (lambda x: 1 / "a", "failed"),
])
def test_bad_initial_velocities_are_named(initial, match):
    with pytest.raises(ValueError, match=match):
        F.IncompressibleFlow2D(initial)


def test_projection_recovers_the_divergence_free_part(one_thread):
    """u* = TG + grad phi with d(phi)/dn = 0 on the walls: the pressure fit must find grad phi and the
    projection fit TG (the Helmholtz decomposition in closed form)."""
    flow = F.taylor_green(n_points=1500, wall_points=40, hidden_features=24, hidden_layers=2)
    c = 0.03

    def u_star(x):
        phi_grad = -c * math.pi * torch.stack([torch.sin(math.pi * x[:, 0]) * torch.cos(math.pi * x[:, 1]),
                                               torch.cos(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])], 1)
        return F.taylor_green_velocity(x) + phi_grad

    g = torch.Generator().manual_seed(0)
    points, walls = flow.sample_fluid(flow.n_points, g), flow.sample_walls(g)
    velocity = flow.default_field(2, generator=g, dtype=F64)
    pressure = flow.default_field(1, generator=g, dtype=F64)
    fits = (FitConfig("lbfgs", max_iters=400, rtol=1e-5), FitConfig("lm", max_iters=40, rtol=1e-4))
    reports = F._project(flow, velocity, pressure, u_star, lambda x: divergence(u_star, x), points, walls, fits, g)
    x = flow.eval_points(64)
    with torch.no_grad():
        u = velocity(x)
    before = float((u_star(x) - F.taylor_green_velocity(x)).norm() / F.taylor_green_velocity(x).norm())
    after = float((u - F.taylor_green_velocity(x)).norm() / F.taylor_green_velocity(x).norm())
    assert before > 0.2
    assert after < 0.03, (after, {k: (r.loss, r.iters) for k, r in reports.items()})


def test_evolve_fluid_validates_its_arguments():
    flow = F.taylor_green(n_points=64)
    with pytest.raises(ValueError, match="dt"):
        F.evolve_fluid(flow, dt=0.0, steps=1)
    with pytest.raises(ValueError, match="scheme"):
        F.evolve_fluid(flow, dt=0.1, steps=1, scheme="nope")
    with pytest.raises(ValueError, match="keep"):
        F.evolve_fluid(flow, dt=0.1, steps=1, keep="some")


def test_short_taylor_green_run_stays_close_and_resumes(one_thread):
    flow = F.taylor_green(n_points=1024, wall_points=32, hidden_features=16, hidden_layers=2)
    kw = dict(dt=0.05, fit=FitConfig("lbfgs", max_iters=150, rtol=1e-4),
              pressure_fit=FitConfig("lm", max_iters=5, rtol=1e-3),
              initial_fit=FitConfig("lbfgs", max_iters=600, rtol=1e-5, warmup_iters=200), eval_resolution=48)
    traj = F.evolve_fluid(flow, steps=2, **kw)
    recs = traj.records
    assert [r.step for r in recs] == [0, 1, 2]
    assert set(recs[1].stages) == {"pressure", "projection"}
    assert recs[0].error < 0.02 and recs[2].error < 0.1
    assert all(r.energy_ratio < 1.01 for r in recs)
    # resuming from step 1 reproduces step 2 exactly
    wu, wp = traj.weights(1)
    again = F.evolve_fluid(flow, steps=2, start=(1, wu, wp), **kw)
    assert again.records[0].step == 2
    assert again.records[0].error == recs[2].error
    torch.testing.assert_close(again.weights(2)[0], traj.weights(2)[0], rtol=0, atol=0)
    assert isinstance(traj.velocity_module, SIREN)



def test_taylor_green_stays_close_over_twenty_steps(one_thread):
    # the vortex is steady: every step must give it back, up to the splitting's own drift (about 6e-4
    # per step at this dt) and the small network's; measured 1.5e-2 error and 1.9e-3 divergence at step 20
    flow = F.taylor_green(n_points=2048, wall_points=32, hidden_features=16, hidden_layers=2)
    traj = F.evolve_fluid(flow, dt=0.05, steps=20, keep="last", eval_resolution=48,
                          fit=FitConfig("lbfgs", max_iters=150, rtol=1e-4, ftol=1e-2),
                          initial_fit=FitConfig("lbfgs", max_iters=600, rtol=1e-5, warmup_iters=200))
    recs = traj.records
    assert [r.step for r in recs] == list(range(21))
    # without the pressure (projection by the penalty alone): error 2.7e-2 and divergence 1.4e-2
    assert recs[-1].error < 0.02 and recs[-1].error - recs[1].error < 0.012
    assert recs[-1].rms_divergence < 0.006
    energy = [r.energy_ratio for r in recs]
    assert all(b <= a + 1e-4 for a, b in zip(energy, energy[1:])) and energy[-1] > 0.95

def test_paper_scheme_fits_advection_pressure_and_projection(one_thread):
    flow = F.taylor_green(n_points=768, wall_points=24, hidden_features=12, hidden_layers=2)
    traj = F.evolve_fluid(flow, dt=0.05, steps=1, scheme="paper", fit=FitConfig("lbfgs", max_iters=100, rtol=1e-4),
                          pressure_fit=FitConfig("lm", max_iters=5, rtol=0.05),
                          initial_fit=FitConfig("lbfgs", max_iters=400, rtol=1e-5, warmup_iters=100),
                          eval_resolution=32)
    rec = traj.records[-1]
    assert list(rec.stages) == ["advection", "pressure", "projection"]
    assert rec.error < 0.1 and rec.energy_ratio < 1.01
    assert rec.fit_iters == sum(s["iters"] for s in rec.stages.values())


def test_divergence_penalty_lowers_the_divergence(one_thread):
    flow = F.taylor_green(n_points=1024, wall_points=32, hidden_features=16, hidden_layers=2)
    kw = dict(dt=0.05, steps=1, fit=FitConfig("lbfgs", max_iters=150, rtol=1e-4),
              pressure_fit=FitConfig("lm", max_iters=5, rtol=0.05),
              initial_fit=FitConfig("lbfgs", max_iters=400, rtol=1e-5, warmup_iters=100), eval_resolution=48)
    plain = F.evolve_fluid(flow, divergence_weight=0.0, **kw).records[-1]
    penalised = F.evolve_fluid(flow, divergence_weight=0.1, **kw).records[-1]
    assert penalised.rms_divergence < 0.7 * plain.rms_divergence, (penalised.rms_divergence, plain.rms_divergence)
    assert penalised.error < 0.1
    with pytest.raises(ValueError, match="divergence_weight"):
        F.evolve_fluid(flow, divergence_weight=-1.0, **kw)


@pytest.mark.slow
def test_multiscale_first_step_removes_the_gap_divergence_and_loses_the_grids_energy(one_thread):
    # the multi-scale initial field is divergent in the gaps where its cells fade out; the first step
    # must project that away, and lose about the energy the same splitting loses on a fine grid
    flow = F.taylor_green_multiscale(scale=4.0, n_points=4096)
    x = flow.eval_points(64)
    initial = float(divergence(flow.initial, x).square().mean().sqrt())
    traj = F.evolve_fluid(flow, dt=0.05, steps=1, eval_resolution=64,
                          initial_fit=FitConfig("lbfgs", max_iters=800, rtol=1e-5, warmup_iters=200))
    rec = traj.records[-1]
    grid = StableFluids2D(128, initial=flow.initial)
    e0 = float(flow.initial(x).square().sum(1).mean())
    grid.step(0.05)
    grid_ratio = float(grid.velocity(x).square().sum(1).mean()) / e0
    assert initial > 0.3
    assert rec.rms_divergence < 0.15 * initial, (rec.rms_divergence, initial)  # 0.11 measured; was > 2 before
    assert abs(rec.energy_ratio - grid_ratio) < 0.03, (rec.energy_ratio, grid_ratio)

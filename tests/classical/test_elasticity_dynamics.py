"""Implicit Euler for the finite-element baseline (``ElasticFEM.step``): free fall follows the exact recurrence,
lumped masses add up to the body's mass, internal forces conserve momentum, static mode is ``solve_static``,
penalty contact holds a body on the floor with a depth set by the stiffness, and bad input is refused."""

from __future__ import annotations

import pytest
import torch

from neuralnumerics.classical.elasticity import ElasticFEM, box_mesh, rectangle_mesh
from neuralnumerics.pde.hyperelastic import arap_energy, neo_hookean_energy, volume_energy
from neuralnumerics.pde.obstacles import Plane

F64 = torch.float64
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:Sparse invariant checks")]

DENSITIES = {"arap+volume": lambda F: arap_energy(F) + 1e3 * volume_energy(F),
             "neo-hookean": lambda F: neo_hookean_energy(F, 1.0, 5.0)}


@pytest.mark.parametrize("material", sorted(DENSITIES))
@pytest.mark.parametrize("dim", [2, 3])
def test_free_fall_follows_the_implicit_euler_recurrence_exactly(material, dim):
    V, T = rectangle_mesh(4, 3) if dim == 2 else box_mesh(2, 2, 2)
    fem = ElasticFEM(V, T, DENSITIES[material])
    gravity = (0.0, -9.8) if dim == 2 else (0.5, 0.0, -9.8)
    g, dt = torch.tensor(gravity, dtype=F64), 0.1
    q0, v0 = V.clone(), torch.zeros_like(V)
    q1, v1, r1 = fem.step(q0, v0, dt, density=2.0, gravity=gravity)
    q2, v2, _ = fem.step(q1, v1, dt, density=2.0, gravity=gravity)
    # a rigid translation has no elastic energy, so every vertex falls freely: x1 = x0 + dt^2 g, v1 = dt g,
    # and x_{n+1} = 2 x_n - x_{n-1} + dt^2 g
    torch.testing.assert_close(q1, V + dt * dt * g, rtol=0, atol=1e-13)
    torch.testing.assert_close(v1, (dt * g).expand_as(v1), rtol=0, atol=1e-12)
    torch.testing.assert_close(q2, 2 * q1 - q0 + dt * dt * g, rtol=0, atol=1e-13)
    torch.testing.assert_close(q2, V + 3 * dt * dt * g, rtol=0, atol=1e-13)
    assert abs(float(fem.energy(q2))) < 1e-12
    if material == "neo-hookean":
        # (with the 1e3 volume term the gradient's rounding noise at the exact answer, ~1e-12, sits above the
        # solve's absolute tolerance 1e-12, and the solve reports no convergence although q is exact)
        assert r1.converged and r1.iterations == 0


def test_lumped_masses_add_up_to_the_mass_of_the_body():
    V, T = rectangle_mesh(5, 3, lo=(0.0, 0.0), hi=(2.0, 1.5))
    m = ElasticFEM(V, T, arap_energy).lumped_masses(3.0)
    assert m.shape == (V.shape[0],) and bool((m > 0).all())
    assert float(m.sum()) == pytest.approx(3.0 * 3.0, rel=1e-13)
    corner = int(((V - torch.tensor([2.0, 0.0], dtype=F64)).norm(dim=1)).argmin())  # in one triangle only
    assert float(m[corner]) == pytest.approx(3.0 * (0.4 * 0.5 / 2) / 3, rel=1e-13)
    V, T = box_mesh(2, 3, 1, lo=(0.0, 0.0, 0.0), hi=(1.0, 1.0, 0.5))
    fem = ElasticFEM(V, T, arap_energy)
    assert float(fem.lumped_masses(0.7).sum()) == pytest.approx(0.7 * 0.5, rel=1e-13)
    assert float(fem.lumped_masses().sum()) == pytest.approx(float(fem.volumes.sum()), rel=1e-13)


@pytest.mark.parametrize("dim", [2, 3])
def test_internal_forces_conserve_momentum(dim):
    V, T = rectangle_mesh(6, 5) if dim == 2 else box_mesh(2, 2, 2)
    fem = ElasticFEM(V, T, lambda F: neo_hookean_energy(F, 1.0, 5.0))
    v = torch.randn(V.shape, generator=torch.Generator().manual_seed(0), dtype=F64)  # far from uniform
    m = fem.lumped_masses(2.0)
    momentum = (m[:, None] * v).sum(0)
    q = V.clone()
    for _ in range(3):
        q, v, result = fem.step(q, v, 0.05, density=2.0)
        assert result.converged and result.iterations > 0  # the body deforms: real Newton solves
        torch.testing.assert_close((m[:, None] * v).sum(0), momentum, rtol=0, atol=1e-10)
    assert float(fem.energy(q)) > 1e-3


@pytest.mark.parametrize("with_gravity", [False, True], ids=["targets", "targets+gravity"])
def test_static_mode_is_the_equilibrium_solve(with_gravity):
    V, T = rectangle_mesh(6, 5)
    fem = ElasticFEM(V, T, DENSITIES["arap+volume"])
    fixed = V[:, 0].abs() >= 1 - 1e-12
    targets = V.clone()
    right = V[:, 0] >= 1 - 1e-12
    targets[right, 0] += 0.3
    g = torch.tensor([0.0, -2.0], dtype=F64)
    gravity = tuple(g.tolist()) if with_gravity else None
    m = fem.lumped_masses(1.5)
    q, _, result = fem.step(V.clone(), torch.zeros_like(V), 0.1, density=1.5, gravity=gravity, fixed=fixed,
                            targets=targets, static=True, tol=1e-10, newton="damped")
    q0 = V.clone()
    q0[fixed] = targets[fixed]
    external = (lambda x: -(m[:, None] * (x - V) * g).sum()) if with_gravity else None
    expect = fem.solve_static(q0, fixed, tol=1e-10, newton="damped", external=external)
    assert result.converged and expect.converged
    torch.testing.assert_close(q, expect.q, rtol=0, atol=1e-9)
    torch.testing.assert_close(q[fixed], targets[fixed], rtol=0, atol=0)
    if with_gravity:
        assert float(q[~fixed, 1].mean()) < float(V[~fixed, 1].mean()) - 1e-3  # it sags
    # the static answer does not depend on dt or on the starting velocity
    q_other, _, _ = fem.step(V.clone(), torch.ones_like(V), 7.0, density=1.5, gravity=gravity, fixed=fixed,
                             targets=targets, static=True, tol=1e-10, newton="damped")
    torch.testing.assert_close(q_other, q, rtol=0, atol=1e-9)


def test_penalty_contact_holds_a_body_on_the_floor():
    # a square starting at rest on the floor y = -1 settles into it: per unit of the bottom row's vertex volume
    # w, the floor's force k w depth carries the weight F = rho V g, so depth ~ F / (k sum_bottom w)
    V, T = rectangle_mesh(6, 6)
    fem = ElasticFEM(V, T, lambda F: neo_hookean_energy(F, 50.0, 200.0))
    rho, g, dt = 1.0, 10.0, 0.05
    w = fem.lumped_masses(rho) / rho
    bottom = V[:, 1] <= -1 + 1e-12
    weight = rho * 4.0 * g
    worst, final = {}, {}
    for k in (1e5, 1e6):
        q, v = V.clone(), torch.zeros_like(V)
        deepest = 0.0
        for _ in range(10):
            q, v, _ = fem.step(q, v, dt, density=rho, gravity=(0.0, -g), obstacles=[Plane(-1.0)], contact_stiffness=k)
            deepest = max(deepest, float((-1.0 - q[:, 1]).clamp_min(0).max()))
        scale = weight / (k * float(w[bottom].sum()))
        assert deepest < 2 * scale, k
        final[k] = float((-1.0 - q[:, 1]).clamp_min(0).max())
        assert 0.5 * scale < final[k] < 1.5 * scale, k
        assert float(q[~bottom, 1].min()) > -1.0  # only the bottom row touches the floor
        worst[k] = deepest
    assert 5 < worst[1e5] / worst[1e6] < 20  # ten times stiffer, about ten times shallower


def test_step_refuses_bad_input():
    V, T = rectangle_mesh(2, 2)
    fem = ElasticFEM(V, T, arap_energy)
    v = torch.zeros_like(V)
    for dt in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="dt must be positive"):
            fem.step(V, v, dt)
    with pytest.raises(ValueError, match=r"q and v must have shape \(9, 2\), got \(8, 2\) and \(9, 2\)"):
        fem.step(V[:-1], v, 0.1)
    with pytest.raises(ValueError, match=r"q and v must have shape \(9, 2\), got \(9, 2\) and \(9, 3\)"):
        fem.step(V, torch.zeros(9, 3, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="newton must be 'projected' or 'damped'"):
        fem.step(V, v, 0.1, newton="exact")

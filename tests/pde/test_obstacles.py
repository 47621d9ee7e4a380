"""Obstacles and contact terms: penetration depths by hand, the penalty force along the outward normal, the
paper's collision term, and refusals."""

from __future__ import annotations

import pytest
import torch

from neuralnumerics.pde.obstacles import Bowl, Plane, Sphere, collision_work, penalty_density, penalty_energy

F64 = torch.float64


def test_plane_depths_and_directions():
    q = torch.tensor([[0.0, 0.5], [1.0, -0.25], [2.0, 0.0]], dtype=F64)
    depth, n = Plane(0.1).penetration(q)
    torch.testing.assert_close(depth, torch.tensor([0.0, 0.35, 0.1], dtype=F64))
    torch.testing.assert_close(n, torch.tensor([[0.0, 1.0]] * 3, dtype=F64))


def test_sphere_and_bowl_depths_in_3d():
    sphere = Sphere((0.0, 0.0, 1.0), 0.5)
    q = torch.tensor([[0.0, 0.0, 1.2], [0.3, 0.4, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=F64)
    depth, n = sphere.penetration(q)
    torch.testing.assert_close(depth, torch.tensor([0.3, 0.0, 0.5, 0.0], dtype=F64))
    torch.testing.assert_close(n[0], torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    assert bool(torch.isfinite(n).all())  # the centre itself: a zero direction, no NaN
    bowl = Bowl((0.0, 0.0, 1.0), 1.0)
    q = torch.tensor([[0.0, 0.0, -0.5], [0.0, 0.0, 0.5], [2.0, 0.0, 1.5], [0.6, 0.0, 0.2]], dtype=F64)
    depth, n = bowl.penetration(q)
    torch.testing.assert_close(depth, torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=F64))  # above the rim: free
    torch.testing.assert_close(n[0], torch.tensor([0.0, 0.0, 1.0], dtype=F64))


@pytest.mark.parametrize("obstacle", [Plane(0.0), Sphere((0.0, 0.0), 1.0), Bowl((0.0, 2.0), 1.5)],
                         ids=["plane", "sphere", "bowl"])
def test_the_penalty_force_pushes_penetrating_points_out_with_force_k_depth(obstacle):
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(200, 2, dtype=F64, generator=g) * 1.5).requires_grad_(True)
    k = 30.0
    (grad,) = torch.autograd.grad(penalty_energy(q, obstacle, k), q)
    depth, n = obstacle.penetration(q.detach())
    assert int((depth > 0).sum()) > 10 and int((depth == 0).sum()) > 10
    torch.testing.assert_close(-grad, k * depth[:, None] * n, rtol=1e-12, atol=1e-12)
    # the paper's term: the work of that force over a step with velocity qdot
    qdot = torch.randn(200, 2, dtype=F64, generator=g)
    expect = -0.1 * (qdot * (k * depth[:, None] * n)).sum()
    torch.testing.assert_close(collision_work(q.detach(), qdot, 0.1, obstacle, k), expect, rtol=1e-14, atol=0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="radius must be a positive finite number"):
        Sphere((0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match=r"q must be points of shape \(N, d\)"):
        Plane().penetration(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="stiffness must be a positive"):
        penalty_energy(torch.zeros(3, 2), Plane(), -1.0)
    with pytest.raises(ValueError, match="qdot has shape"):
        collision_work(torch.zeros(3, 2), torch.zeros(2, 2), 0.1, Plane(), 1.0)


def test_penalty_density_is_per_point_and_sums_over_obstacles():
    q = torch.tensor([[0.0, -0.5], [0.0, 0.2], [0.0, -1.5]], dtype=torch.float64)
    plane, sphere = Plane(0.0), Sphere((0.0, -1.0), 0.7)
    dens = penalty_density(q, [plane, sphere], 10.0)
    # depths below the plane: 0.5, 0, 1.5; inside the disc: 0.2, 0, 0.2
    assert torch.allclose(dens, 5.0 * torch.tensor([0.5**2 + 0.2**2, 0.0, 1.5**2 + 0.2**2], dtype=torch.float64))
    assert float(penalty_energy(q, plane, 10.0)) == pytest.approx(5.0 * (0.25 + 2.25))
    assert float(penalty_density(q, [], 10.0).abs().sum()) == 0.0

"""Linear finite elements for hyperelasticity: the patch test (affine boundary values give the affine solution,
with Newton's quadratic convergence), gradients and Hessians against autograd and finite differences, and
refusals of bad meshes."""

from __future__ import annotations

import pytest
import torch

from neuralnumerics.classical.elasticity import ElasticFEM, box_mesh, rectangle_mesh
from neuralnumerics.pde.hyperelastic import arap_energy, neo_hookean_energy, volume_energy

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")


def perturbed(V, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return V + scale * torch.randn(V.shape, dtype=F64, generator=g)


@pytest.mark.parametrize("newton", ["projected", "damped"])
@pytest.mark.parametrize("density, quadratic", [(lambda F: neo_hookean_energy(F, 1.0, 2.0), True),
                                                (lambda F: arap_energy(F) + 10 * volume_energy(F), False)],
                         ids=["neo-hookean", "arap"])
def test_patch_test_affine_boundary_values_give_the_affine_solution(density, quadratic, newton):
    # ARAP's Hessian has negative curvature off rest: projected Newton converges linearly there, the damped
    # (exact-Hessian) Newton quadratically
    quadratic = quadratic or newton == "damped"
    V, T = rectangle_mesh(6, 5)
    fem = ElasticFEM(V, T, density)
    A = torch.tensor([[1.3, 0.2], [-0.1, 0.9]], dtype=F64)
    b = torch.tensor([0.5, -0.2], dtype=F64)
    boundary = (V.abs() >= 1 - 1e-12).any(1)
    q0 = V.clone()
    q0[boundary] = V[boundary] @ A.T + b
    result = fem.solve_static(q0, boundary, tol=1e-9, newton=newton)
    assert result.converged
    torch.testing.assert_close(result.q, V @ A.T + b, rtol=0, atol=1e-8)
    h = result.history
    if quadratic:
        assert any(h[k + 1] < 1e-2 * h[k] for k in range(len(h) - 1))  # a quadratic step near the end


def test_the_energy_of_an_affine_map_is_the_density_times_the_area():
    V, T = rectangle_mesh(4, 3, lo=(0.0, 0.0), hi=(2.0, 1.5))
    fem = ElasticFEM(V, T, lambda F: neo_hookean_energy(F, 0.7, 1.1))
    A = torch.tensor([[1.2, 0.3], [0.1, 0.8]], dtype=F64)
    expect = 3.0 * neo_hookean_energy(A[None], 0.7, 1.1)[0]
    torch.testing.assert_close(fem.energy(V @ A.T), expect, rtol=1e-12, atol=0)
    torch.testing.assert_close(fem.volumes.sum(), torch.tensor(3.0, dtype=F64), rtol=1e-14, atol=0)


def test_gradient_and_hessian_match_autograd_and_finite_differences():
    V, T = rectangle_mesh(3, 3)
    fem = ElasticFEM(V, T, lambda F: neo_hookean_energy(F, 1.0, 3.0) + volume_energy(F))
    q = perturbed(V, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fem.energy(x), (q,), eps=1e-6, atol=1e-6)
    dense = torch.autograd.functional.hessian(lambda x: fem.energy(x.reshape(V.shape)), q.detach().reshape(-1))
    torch.testing.assert_close(fem.hessian(q.detach(), project=False).to_dense(), dense, rtol=1e-10, atol=1e-10)
    projected = fem.hessian(q.detach()).to_dense()
    assert float(torch.linalg.eigvalsh(projected).min()) > -1e-10  # positive semidefinite
    torch.testing.assert_close(fem.gradient(q.detach()), torch.autograd.grad(fem.energy(q), q)[0])


def test_bad_meshes_are_refused_naming_the_element():
    V, T = rectangle_mesh(2, 2)
    flipped = T.clone()
    flipped[3] = flipped[3, [0, 2, 1]]
    with pytest.raises(ValueError, match=r"element 3 \(vertices .*\) is inverted at rest"):
        ElasticFEM(V, flipped, arap_energy)
    collapsed = T.clone()
    collapsed[0, 2] = collapsed[0, 1]
    with pytest.raises(ValueError, match="element 0 .* is degenerate"):
        ElasticFEM(V, collapsed, arap_energy)
    with pytest.raises(ValueError, match=r"cell indices must lie in \[0, 9\)"):
        ElasticFEM(V, T + 5, arap_energy)
    with pytest.raises(ValueError, match=r"cells must have shape \(E, 3\)"):
        ElasticFEM(V, T[:, :2], arap_energy)
    with pytest.raises(ValueError, match="nx and ny must be at least 1"):
        rectangle_mesh(0, 3)


def test_a_bar_stretched_to_twice_its_length_in_load_steps_thins_out_symmetrically():
    # the paper's 2D stretch as a static FEM problem: the left end held, the right end moved by 2 in ten load
    # steps (each solved from the last, which follows the physical branch: the problem has other equilibria)
    V, T = rectangle_mesh(6, 6)
    fem = ElasticFEM(V, T, lambda F: arap_energy(F) + 1e3 * volume_energy(F))
    ends, right = V[:, 0].abs() >= 1 - 1e-12, V[:, 0] >= 1 - 1e-12
    q = V.clone()
    for k in range(1, 11):
        q = q.clone()
        q[right, 0] = V[right, 0] + 0.2 * k
        result = fem.solve_static(q, ends, tol=1e-10, max_iters=100, newton="damped")
        assert result.converged, k
        q = result.q
    mid = V[:, 0].abs() < 1e-12
    width = float(q[mid, 1].max() - q[mid, 1].min())
    assert 0.4 < width < 1.0  # area preservation: twice as long, so thinner than half the rest width 2
    assert float(q[:, 0].max()) == pytest.approx(3.0) and float(fem.energy(q)) > 0
    with pytest.raises(ValueError, match="newton must be 'projected' or 'damped'"):
        fem.solve_static(q, ends, newton="exact")


def test_box_mesh_fills_the_box_with_positive_tetrahedra_and_passes_the_3d_patch_test():
    V, T = box_mesh(3, 2, 2, lo=(0.0, 0.0, 0.0), hi=(1.5, 1.0, 2.0))
    assert V.shape == (36, 3) and T.shape == (72, 4)
    fem = ElasticFEM(V, T, lambda F: neo_hookean_energy(F, 1.0, 2.0))  # refuses inverted or degenerate tets
    torch.testing.assert_close(fem.volumes.sum(), torch.tensor(3.0, dtype=F64), rtol=1e-13, atol=0)
    faces = torch.cat([T[:, [0, 1, 2]], T[:, [0, 1, 3]], T[:, [0, 2, 3]], T[:, [1, 2, 3]]]).sort(1).values
    _, counts = torch.unique(faces, dim=0, return_counts=True)
    assert int(counts.max()) <= 2  # conforming: an interior face is shared by exactly two tetrahedra
    assert int((counts == 1).sum()) == 2 * 2 * (3 * 2 + 2 * 2 + 3 * 2)  # only the boundary's triangles are single
    A = torch.tensor([[1.1, 0.1, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 1.2]], dtype=F64)
    V, T = box_mesh(3, 3, 3)
    fem = ElasticFEM(V, T, lambda F: neo_hookean_energy(F, 1.0, 2.0))
    boundary = (V.abs() >= 1 - 1e-12).any(1)
    q0 = V.clone()
    q0[boundary] = V[boundary] @ A.T
    result = fem.solve_static(q0, boundary, tol=1e-10)
    assert result.converged
    torch.testing.assert_close(result.q, V @ A.T, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="nx, ny and nz must be at least 1"):
        box_mesh(1, 0, 1)


def test_3d_patch_test_with_arap_and_a_volume_term():
    from neuralnumerics.classical.elasticity import box_mesh

    V, T = box_mesh(3, 3, 3)
    fem = ElasticFEM(V, T, lambda F: arap_energy(F) + 10 * volume_energy(F))
    A = torch.tensor([[1.1, 0.1, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 1.2]], dtype=F64)
    boundary = (V.abs() >= 1 - 1e-12).any(1)
    q0 = perturbed(V, seed=7)  # the interior vertices start off the solution
    q0[boundary] = V[boundary] @ A.T
    result = fem.solve_static(q0, boundary, tol=1e-10, newton="damped")
    assert result.converged
    torch.testing.assert_close(result.q, V @ A.T, rtol=0, atol=1e-9)


def test_interpolate_is_exact_for_affine_deformations_in_2d_and_3d():
    # a piecewise-linear interpolant reproduces any affine map, inside every element; the 3D mesh is large
    # enough that the points go through several chunks
    gen = torch.Generator().manual_seed(0)
    for V, C in (rectangle_mesh(7, 5, crossed=True), box_mesh(18, 18, 18)):
        d = V.shape[1]
        A = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=gen, dtype=torch.float64)
        c = torch.randn(d, generator=gen, dtype=torch.float64)
        fem = ElasticFEM(V, C, arap_energy)
        X = torch.rand(500, d, generator=gen, dtype=torch.float64) * 2 - 1
        assert torch.allclose(fem.interpolate(V @ A.T + c, X), X @ A.T + c, atol=1e-12)
    with pytest.raises(ValueError, match=r"points must be \(n, 3\)"):
        fem.interpolate(V, X[:, :2])

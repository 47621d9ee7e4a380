"""Hyperelastic energy densities against hand-computed values, linear elasticity for small strains, their
invariances, the Neo-Hookean stress in closed form and finite-difference gradients."""

from __future__ import annotations

import math

import pytest
import torch

from neuralnumerics.pde.hyperelastic import arap_energy, lame_parameters, neo_hookean_energy, volume_energy

F64 = torch.float64
MU, LAM = 0.7, 1.3


def random_F(n, d, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(d, dtype=F64) + scale * torch.randn(n, d, d, dtype=F64, generator=g)


def rotations(n, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(n, d, d, dtype=F64, generator=g))
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(Q)
    Q[det < 0, :, 0] *= -1  # proper rotations
    return Q


ENERGIES = [arap_energy, volume_energy, lambda F: neo_hookean_energy(F, MU, LAM)]
IDS = ["arap", "volume", "neo-hookean"]


def test_hand_computed_values_in_2d():
    stretch = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=F64)  # sigma = (2, 0.5), det 1
    assert float(arap_energy(stretch)) == pytest.approx(1.25, rel=1e-14)
    assert float(volume_energy(stretch)) == pytest.approx(0.0, abs=1e-14)
    # mu/2 (4.25 - 2) + k/2 (1 - alpha)^2 - mu^2/(2k), k = 2, alpha = 1.5: 1.125 + 0.25 - 0.25
    assert float(neo_hookean_energy(stretch, 1.0, 1.0)) == pytest.approx(1.125, rel=1e-14)
    shear = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64)
    a, b = float(shear.square().sum()), float(torch.linalg.det(shear)) ** 2  # sigma^2 = (a +- sqrt(a^2 - 4b)) / 2
    sig = [math.sqrt((a + s * math.sqrt(a * a - 4 * b)) / 2) for s in (1, -1)]
    assert float(arap_energy(shear)) == pytest.approx(sum((x - 1) ** 2 for x in sig), rel=1e-12)
    scaled = 1.1 * torch.eye(3, dtype=F64)
    assert float(volume_energy(scaled)) == pytest.approx((1.1 ** 3 - 1) ** 2, rel=1e-13)
    assert float(arap_energy(scaled)) == pytest.approx(3 * 0.1 ** 2, rel=1e-12)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("energy", ENERGIES, ids=IDS)
def test_zero_with_zero_stress_at_rest_and_rotation_invariant(energy, d):
    rest = torch.eye(d, dtype=F64).repeat(4, 1, 1).requires_grad_(True)
    e = energy(rest)
    (grad,) = torch.autograd.grad(e.sum(), rest)
    assert float(e.detach().abs().max()) < 1e-14 and float(grad.abs().max()) < 1e-12
    F = random_F(20, d, seed=d)
    torch.testing.assert_close(energy(rotations(20, d) @ F), energy(F), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(energy(rotations(20, d, seed=5)), torch.zeros(20, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_neo_hookean_is_linear_elasticity_for_small_strains(d):
    # Psi(I + e H) = e^2 (mu |sym H|^2 + lam/2 (tr H)^2) + O(e^3)
    g = torch.Generator().manual_seed(2)
    H = torch.randn(10, d, d, dtype=F64, generator=g)
    sym = 0.5 * (H + H.mT)
    linear = MU * sym.square().sum((-2, -1)) + 0.5 * LAM * torch.diagonal(H, dim1=-2, dim2=-1).sum(-1) ** 2
    for eps in (1e-3, 1e-4):
        psi = neo_hookean_energy(torch.eye(d, dtype=F64) + eps * H, MU, LAM)
        torch.testing.assert_close(psi / eps ** 2, linear, rtol=30 * eps, atol=0)


@pytest.mark.parametrize("d", [2, 3])
def test_neo_hookean_stress_is_the_closed_form(d):
    F = random_F(15, d, seed=3).requires_grad_(True)
    (P,) = torch.autograd.grad(neo_hookean_energy(F, MU, LAM).sum(), F)
    k = LAM + MU
    J = torch.linalg.det(F.detach())
    cof = J[:, None, None] * torch.linalg.inv(F.detach()).mT
    expect = MU * F.detach() + k * (J - 1 - MU / k)[:, None, None] * cof
    torch.testing.assert_close(P, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("energy", ENERGIES, ids=IDS)
def test_gradients_match_finite_differences(energy, d):
    F = random_F(6, d, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(energy, (F,), eps=1e-6, atol=1e-6)


def test_lame_parameters_and_bad_input():
    mu, lam = lame_parameters(1e5, 0.3)
    assert mu == pytest.approx(1e5 / 2.6) and lam == pytest.approx(1e5 * 0.3 / (1.3 * 0.4))
    assert lame_parameters(2.0, 0.0) == (1.0, 0.0)
    for young, nu, match in [(0, 0.3, "Young's modulus"), (1.0, 0.5, "Poisson's ratio must lie in"),
                             (1.0, -1.0, "Poisson's ratio")]:
        with pytest.raises(ValueError, match=match):
            lame_parameters(young, nu)
    with pytest.raises(ValueError, match=r"F must be deformation gradients of shape \(\.\.\., d, d\)"):
        arap_energy(torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="needs mu > 0 and lam \\+ mu > 0"):
        neo_hookean_energy(torch.eye(2), 1.0, -2.0)
    with pytest.raises(ValueError, match="real floating"):
        volume_energy(torch.eye(2, dtype=torch.int64))


@pytest.mark.parametrize("d", [2, 3])
def test_arap_is_the_distance_to_the_nearest_proper_rotation_and_has_a_hessian_at_rest(d):
    from torch.func import hessian, vmap

    g = torch.Generator().manual_seed(6)
    F = torch.eye(d, dtype=F64) + 0.8 * torch.randn(300, d, d, dtype=F64, generator=g)
    sig = torch.linalg.svdvals(F)
    det = torch.linalg.det(F)
    assert int((det < 0).sum()) > 10  # inverted states included
    best = sig[:, :-1].sum(1) + torch.sign(det) * sig[:, -1]  # max over proper rotations of tr(R^T F)
    torch.testing.assert_close(arap_energy(F), F.square().sum((-2, -1)) + d - 2 * best, rtol=1e-10, atol=1e-10)
    upright = det > 0
    torch.testing.assert_close(arap_energy(F[upright]), (sig[upright] - 1).square().sum(1), rtol=1e-10, atol=1e-10)
    H = vmap(hessian(lambda f: arap_energy(f[None])[0]))(torch.eye(d, dtype=F64)[None]).reshape(d * d, d * d)
    # at rest: 2 on symmetric perturbations, 0 on the d(d-1)/2 infinitesimal rotations
    expect = torch.tensor([0.0] * (d * (d - 1) // 2) + [2.0] * (d * (d + 1) // 2), dtype=F64)
    torch.testing.assert_close(torch.linalg.eigvalsh(H), expect, rtol=0, atol=1e-10)

"""The PDE system families: structure, discretisation accuracy, reproducibility, sorting by time, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from neuralnumerics.gallery import PDESystems, darcy_flow, gaussian_random_field, heat, helmholtz, poisson
from neuralnumerics.gallery.pde_systems import _diffusion_matrix
from neuralnumerics.linalg.sequence import sort_systems

FAMILIES = {
    "darcy": lambda **kw: darcy_flow(4, 10, **kw),
    "darcy-piecewise": lambda **kw: darcy_flow(4, 10, coefficient="piecewise", **kw),
    "poisson": lambda **kw: poisson(4, 10, **kw),
    "helmholtz": lambda **kw: helmholtz(4, 10, **kw),
    "heat": lambda **kw: heat(4, 10, **kw),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_families_are_lists_of_csr_systems_with_features(name):
    fam = FAMILIES[name]()
    assert isinstance(fam, PDESystems) and len(fam) == 4 and fam.grid == 10
    pattern = None
    for A, b in fam.systems:
        assert sp.isspmatrix_csr(A) and A.shape == (100, 100) and A.dtype == np.float64
        assert isinstance(b, torch.Tensor) and b.shape == (100,) and b.dtype == torch.float64
        assert abs(A - A.T).max() == 0  # symmetric by construction
        pattern = pattern if pattern is not None else (A.indptr, A.indices)
        assert np.array_equal(A.indptr, pattern[0]) and np.array_equal(A.indices, pattern[1])
    assert fam.features.shape[0] == 4 and fam.features.dtype == torch.float64
    assert bool(torch.isfinite(fam.features).all())
    smallest = [np.linalg.eigvalsh(A.toarray())[0] for A, _ in fam.systems]
    if fam.positive_definite:
        assert min(smallest) > 0
    else:
        assert min(smallest) < 0  # Helmholtz with k in (4, 8): indefinite


def test_as_operators_tags_the_structure():
    from neuralnumerics.linalg import linear_solve
    from neuralnumerics.linalg.recycling import RecycledCG

    fam = darcy_flow(2, 8)
    (op, b), _ = fam.as_operators()
    assert op.symmetric and op.positive_definite and op.shape == (64, 64)
    sol = linear_solve(op, b, RecycledCG(rtol=1e-10))
    ref = spla.spsolve(fam.systems[0][0].tocsc(), b.numpy())
    np.testing.assert_allclose(sol.x.numpy(), ref, rtol=1e-8)
    (op, _), _ = helmholtz(2, 8).as_operators()
    assert op.symmetric and not op.positive_definite


def test_helmholtz_is_definite_below_the_first_eigenvalue():
    fam = helmholtz(3, 10, wavenumber=(0.0, 1.0))
    assert all(np.linalg.eigvalsh(A.toarray())[0] > 0 for A, _ in fam.systems)
    assert fam.parameters["wavenumber"].shape == (3,) and float(fam.parameters["wavenumber"].max()) <= 1.0


def test_the_stencil_is_the_five_point_laplacian_for_a_constant_coefficient():
    g = 7
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(g, g))
    L = (sp.kron(T, sp.identity(g)) + sp.kron(sp.identity(g), T)) * (g + 1) ** 2
    A = _diffusion_matrix(np.full((g, g), 3.0), 1.0 / (g + 1))
    np.testing.assert_allclose(A.toarray(), 3.0 * L.toarray(), rtol=1e-14)


def test_the_discretisation_converges_at_second_order():
    # -div(a grad u) = f with a = 1 + x y and u = sin(pi x) sin(pi y): f by hand
    def error(g):
        h = 1.0 / (g + 1)
        x = np.arange(1, g + 1) * h
        X, Y = np.meshgrid(x, x, indexing="ij")
        a = 1 + X * Y
        u = np.sin(np.pi * X) * np.sin(np.pi * Y)
        ux, uy = np.pi * np.cos(np.pi * X) * np.sin(np.pi * Y), np.pi * np.sin(np.pi * X) * np.cos(np.pi * Y)
        f = -(Y * ux + X * uy) + a * 2 * np.pi ** 2 * u
        uh = spla.spsolve(_diffusion_matrix(a, h).tocsc(), f.ravel())
        return np.abs(uh - u.ravel()).max()

    e1, e2 = error(15), error(31)
    assert e2 < 0.3 * e1 and math.log2(e1 / e2) > 1.7


def test_piecewise_coefficients_take_two_values():
    fam = darcy_flow(3, 12, coefficient="piecewise", contrast=(12.0, 3.0))
    assert set(torch.unique(fam.parameters["coefficient"]).tolist()) == {3.0, 12.0}


def test_gaussian_random_fields_have_zero_mean_and_follow_the_seed():
    f = gaussian_random_field(5, 16, seed=3)
    assert f.shape == (5, 16, 16)
    torch.testing.assert_close(f.mean(dim=(1, 2)), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(f, gaussian_random_field(5, 16, seed=3), rtol=0, atol=0)
    smooth = gaussian_random_field(5, 16, alpha=4.0, seed=3)
    rough_diff = (f.diff(dim=1).abs().mean() / f.abs().mean())
    smooth_diff = (smooth.diff(dim=1).abs().mean() / smooth.abs().mean())
    assert smooth_diff < rough_diff


@pytest.mark.parametrize("name", FAMILIES)
def test_randomness_is_injected(name):
    make = FAMILIES[name]
    before = torch.get_rng_state()
    a, b = make(seed=7), make(seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left alone
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    assert (a.systems[0][0] != b.systems[0][0]).nnz == 0
    assert not torch.equal(make(seed=8).features, a.features)
    gen = torch.Generator().manual_seed(7)
    torch.testing.assert_close(make(generator=gen).features, a.features, rtol=0, atol=0)
    assert not torch.equal(make(generator=gen).features, a.features)  # the generator moved on
    with pytest.raises(ValueError, match="a generator or a seed, not both"):
        make(generator=gen, seed=1)


def test_heat_systems_sorted_by_conductivity_line_up_in_time():
    fam = heat(30, 10, seed=2)
    t = fam.parameters["time"]
    order = sort_systems(fam.features)
    steps = t[order].diff()
    assert bool((steps > 0).all()) or bool((steps < 0).all())


@pytest.mark.parametrize("call, match", [
    (lambda: darcy_flow(0, 8), "n_systems must be a positive integer"),
    (lambda: darcy_flow(2, 8.5), "grid must be a positive integer"),
    (lambda: darcy_flow(2, 8, coefficient="smooth"), "'lognormal' or 'piecewise'"),
    (lambda: darcy_flow(2, 8, coefficient="piecewise", contrast=(1.0, 0.0)), "contrast values must be positive"),
    (lambda: poisson(2, 8, variation=-1.0), "variation must be non-negative"),
    (lambda: helmholtz(2, 8, wavenumber=(3.0, 1.0)), "0 <= k_min <= k_max"),
    (lambda: heat(2, 8, dt=0.0), "dt must be positive"),
    (lambda: gaussian_random_field(2, 8, tau=0.0), "alpha and tau must be positive"),
    (lambda: darcy_flow(2, 8, generator=3), "generator must be a torch.Generator"),
])
def test_bad_parameters_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()

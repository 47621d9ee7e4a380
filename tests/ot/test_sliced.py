"""sliced_wasserstein and wasserstein_1d against independent oracles: sorting in 1D, POT, SciPy, the closed form
for isotropic Gaussians, finite differences; the control variates' bias and variance; error messages."""

from __future__ import annotations

import math

import pytest
import torch

from neuralnumerics.ot import SlicedInfo, random_directions, sliced_wasserstein, wasserstein_1d

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def cloud(n, d, seed=0, shift=0.0, scale=1.0, dtype=F64):
    return (torch.randn(n, d, dtype=F64, generator=gen(seed)) * scale + shift).to(dtype)


# 1D ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [1, 2, 3])
def test_in_one_dimension_sw_is_the_wasserstein_distance_by_sorting(p):
    x, y = cloud(40, 1, seed=1), cloud(40, 1, seed=2, shift=0.7)
    expect = ((x.sort(0).values - y.sort(0).values).abs() ** p).mean() ** (1 / p)
    for theta in (torch.ones(1, 1, dtype=F64), -torch.ones(3, 1, dtype=F64)):  # every direction of S^0
        torch.testing.assert_close(sliced_wasserstein(x, y, p=p, projections=theta), expect, rtol=1e-12, atol=0)


def test_weighted_and_unequal_1d_distances_match_scipy_and_pot():
    from scipy.stats import wasserstein_distance

    ot = pytest.importorskip("ot", reason="POT is the oracle (pip install pot)")
    g = gen(3)
    u, v = torch.randn(7, dtype=F64, generator=g), torch.randn(12, dtype=F64, generator=g) + 1
    a, b = torch.rand(7, dtype=F64, generator=g), torch.rand(12, dtype=F64, generator=g)
    a, b = a / a.sum(), b / b.sum()
    w1 = wasserstein_1d(u, v, p=1, u_weights=a, v_weights=b)
    assert float(w1) == pytest.approx(wasserstein_distance(u.numpy(), v.numpy(), a.numpy(), b.numpy()), rel=1e-12)
    for p in (2, 3):
        ours = wasserstein_1d(u, v, p=p, u_weights=a, v_weights=b)
        assert float(ours) == pytest.approx(float(ot.wasserstein_1d(u.numpy(), v.numpy(), a.numpy(), b.numpy(), p=p)),
                                            rel=1e-12)
    # uniform weights given explicitly take the general path and agree with the sorting shortcut
    w = torch.full((7,), 1 / 7, dtype=F64)
    torch.testing.assert_close(wasserstein_1d(u, u.flip(0) + 0.3, u_weights=w), wasserstein_1d(u, u + 0.3),
                               rtol=1e-12, atol=0)


# against POT ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("case", ["equal", "unequal", "weighted"])
def test_matches_pot_with_the_same_projections(p, case):
    ot = pytest.importorskip("ot", reason="POT is the oracle (pip install pot)")
    x = cloud(30, 4, seed=4)
    y = cloud(30 if case == "equal" else 45, 4, seed=5, shift=1.0, scale=0.5)
    a = b = None
    if case == "weighted":
        a = torch.rand(30, dtype=F64, generator=gen(6)) + 0.1
        b = torch.rand(45, dtype=F64, generator=gen(7)) + 0.1
    theta = random_directions(25, 4, generator=gen(8), dtype=F64)
    ours = sliced_wasserstein(x, y, p=p, projections=theta, weights=None if a is None else (a, b))
    theirs = ot.sliced_wasserstein_distance(x, y, None if a is None else a / a.sum(), None if b is None else b / b.sum(),
                                            p=p, projections=theta.T)
    torch.testing.assert_close(ours, theirs.to(F64), rtol=1e-10, atol=0)


# metric properties -----------------------------------------------------------------------------------------------

def test_zero_on_identical_clouds_positive_otherwise_and_symmetric():
    x = cloud(25, 3, seed=9).requires_grad_(True)
    theta = random_directions(16, 3, generator=gen(10), dtype=F64)
    for cv in (None, "lower", "upper"):
        same = sliced_wasserstein(x, x.detach().clone(), projections=theta, control_variate=cv)
        assert float(same.detach()) == 0.0
        (grad,) = torch.autograd.grad(same, x)
        assert bool(torch.isfinite(grad).all())  # no NaN from the root at zero
    y = cloud(25, 3, seed=11) * 1.01
    xy, yx = (sliced_wasserstein(a, b, projections=theta) for a, b in ((x, y), (y, x)))
    assert float(xy.detach()) > 0
    torch.testing.assert_close(xy, yx, rtol=1e-14, atol=0)


def test_isotropic_gaussians_match_the_closed_form():
    # SW_2^2(N(m1, s1^2 I), N(m2, s2^2 I)) = |m1 - m2|^2 / d + (s1 - s2)^2
    d, n = 5, 20000
    m1, m2 = torch.zeros(d, dtype=F64), torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5], dtype=F64)
    s1, s2 = 1.0, 2.0
    exact = float((m1 - m2).square().sum()) / d + (s1 - s2) ** 2
    x = cloud(n, d, seed=12, scale=s1) + m1
    y = cloud(n, d, seed=13, scale=s2) + m2
    for cv in (None, "upper"):
        _, info = sliced_wasserstein(x, y, n_projections=400, generator=gen(14), control_variate=cv,
                                     return_info=True)
        assert float(info.estimate) == pytest.approx(exact, rel=0.03)


# control variates --------------------------------------------------------------------------------------------------

def _repeat(x, y, L, cv, draws, seed, directions="uniform"):
    g = gen(seed)
    return torch.stack([sliced_wasserstein(x, y, n_projections=L, control_variate=cv, generator=g,
                                           directions=directions, return_info=True)[1].estimate for _ in range(draws)])


def test_control_variates_reduce_the_variance_on_shifted_clouds_and_stay_unbiased_up_to_order_1_over_l():
    d = 10
    x = cloud(200, d, seed=15)
    y = cloud(200, d, seed=16, shift=torch.linspace(-1, 2, d, dtype=F64), scale=1.3)
    _, ref = sliced_wasserstein(x, y, n_projections=40000, generator=gen(17), return_info=True)
    truth, truth_sd = float(ref.estimate), math.sqrt(float(ref.variance))
    L, draws = 10, 400
    est = {cv: _repeat(x, y, L, cv, draws, seed=18) for cv in (None, "lower", "upper")}
    var = {cv: float(e.var()) for cv, e in est.items()}
    assert var["lower"] < var[None] / 5 and var["upper"] < var[None] / 5
    for cv, e in est.items():
        se = math.sqrt(var[cv] / draws)
        bias = abs(float(e.mean()) - truth)
        # plain Monte Carlo is unbiased; the control-variate estimates may be off by O(1/L) (gamma is fitted
        # on the same directions): allow 4 standard errors plus a few per cent of the value over L
        allowed = 4 * (se + truth_sd) + (0 if cv is None else 0.3 * truth / L)
        assert bias < allowed, (cv, bias, allowed)


@pytest.mark.parametrize("cv, L, low, high", [(None, 50, 0.7, 1.4), ("lower", 50, 0.8, 3.0), ("upper", 500, 0.8, 1.25)])
def test_the_variance_estimate_matches_the_spread_over_draws(cv, L, low, high, one_thread):
    # with a control variate the jackknife is conservative at small L (the coefficient is fitted on the same
    # directions; the plain residual variance would say 0.26 here) and sharp at large L
    x, y = cloud(100, 6, seed=19), cloud(100, 6, seed=20, shift=1.0)
    g = gen(21)
    runs = [sliced_wasserstein(x, y, n_projections=L, control_variate=cv, generator=g, return_info=True)[1]
            for _ in range(200)]
    spread = float(torch.stack([r.estimate for r in runs]).var())
    predicted = float(torch.stack([r.variance for r in runs]).mean())
    assert low < predicted / spread < high, (predicted, spread)


def test_the_coefficient_follows_the_papers_formula():
    x, y = cloud(50, 4, seed=22), cloud(60, 4, seed=23, shift=0.5)
    theta = random_directions(30, 4, generator=gen(24), dtype=F64)
    _, info = sliced_wasserstein(x, y, projections=theta, control_variate="upper", return_info=True)
    # from scratch: Gaussian moments of the clouds, projected directly
    dm = x.mean(0) - y.mean(0)
    Sx = (x - x.mean(0)).T @ (x - x.mean(0)) / 50
    Sy = (y - y.mean(0)).T @ (y - y.mean(0)) / 60
    C = (theta @ dm) ** 2 + ((theta @ Sx) * theta).sum(1) + ((theta @ Sy) * theta).sum(1)
    EC = (dm @ dm + Sx.trace() + Sy.trace()) / 4
    torch.testing.assert_close(info.control_values, C, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info.control_mean, EC, rtol=1e-12, atol=0)
    W = info.per_projection
    gamma = ((W - W.mean()) * (C - EC)).mean() / ((C - EC) ** 2).mean()
    torch.testing.assert_close(info.coefficient, gamma, rtol=1e-10, atol=0)
    torch.testing.assert_close(info.estimate, W.mean() - gamma * (C.mean() - EC), rtol=1e-12, atol=0)


# gradients, batches, dtypes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cv", [None, "lower", "upper"])
def test_gradients_match_finite_differences(cv):
    x = cloud(6, 3, seed=25).requires_grad_(True)
    y = cloud(8, 3, seed=26, shift=0.8).requires_grad_(True)
    a = (torch.rand(8, dtype=F64, generator=gen(27)) + 0.5).requires_grad_(True)
    theta = random_directions(5, 3, generator=gen(28), dtype=F64)
    assert torch.autograd.gradcheck(
        lambda x, y, a: sliced_wasserstein(x, y, projections=theta, control_variate=cv, weights=(None, a)),
        (x, y, a), eps=1e-6, atol=1e-7)


def test_batches_of_pairs_equal_one_call_per_pair():
    xs = torch.stack([cloud(20, 3, seed=30 + i) for i in range(3)])
    y = cloud(15, 3, seed=40, shift=1.0)  # broadcast against the batch of x
    theta = random_directions(12, 3, generator=gen(41), dtype=F64)
    for cv in (None, "lower", "upper"):
        batched, info = sliced_wasserstein(xs, y, projections=theta, control_variate=cv, return_info=True)
        assert batched.shape == (3,) and info.per_projection.shape == (3, 12)
        single = torch.stack([sliced_wasserstein(xs[i], y, projections=theta, control_variate=cv) for i in range(3)])
        torch.testing.assert_close(batched, single, rtol=1e-12, atol=0)


def test_float32_agrees_with_float64():
    x, y = cloud(64, 8, seed=42), cloud(64, 8, seed=43, shift=0.3)
    theta = random_directions(32, 8, generator=gen(44), dtype=F64)
    for cv in (None, "upper"):
        d64 = sliced_wasserstein(x, y, projections=theta, control_variate=cv)
        d32 = sliced_wasserstein(x.float(), y.float(), projections=theta.float(), control_variate=cv)
        assert d32.dtype == torch.float32
        assert float(d32) == pytest.approx(float(d64), rel=1e-5)


# directions -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "orthogonal", "qmc"])
def test_directions_are_unit_vectors_uniform_on_the_sphere(kind):
    d = 4
    theta = random_directions(4000, d, kind=kind, generator=gen(45), dtype=F64)
    torch.testing.assert_close(theta.norm(dim=1), torch.ones(4000, dtype=F64), rtol=1e-12, atol=0)
    # E[theta theta^T] = I / d (the control variates' closed-form means rest on it), and no preferred side
    torch.testing.assert_close(theta.T @ theta / 4000, torch.eye(d, dtype=F64) / d, rtol=0, atol=0.02)
    assert float(theta.mean(0).abs().max()) < 0.05
    if kind == "orthogonal":
        torch.testing.assert_close(theta[:d] @ theta[:d].T, torch.eye(d, dtype=F64), rtol=0, atol=1e-12)


def test_directions_follow_the_generator():
    for kind in ("uniform", "orthogonal", "qmc"):
        a = random_directions(9, 5, kind=kind, generator=gen(46))
        b = random_directions(9, 5, kind=kind, generator=gen(46))
        c = random_directions(9, 5, kind=kind, generator=gen(47))
        assert torch.equal(a, b) and not torch.equal(a, c)


# errors ----------------------------------------------------------------------------------------------------------

def test_bad_input_is_refused_with_the_fix():
    x, y = cloud(5, 3), cloud(6, 3, seed=1)
    cases = [
        (dict(x=x[0], y=y), r"x must be a tensor of shape \(\.\.\., n, d\).*x\[:, None\]"),
        (dict(x=x, y=cloud(6, 2)), "x has points of dimension 3 and y of dimension 2"),
        (dict(x=x, y=y.float()), "x is torch.float64 on cpu and y is torch.float32"),
        (dict(x=x.long(), y=y), "x must be a real floating tensor"),
        (dict(x=torch.stack([x, x]), y=torch.stack([y, y, y])), r"batch shapes \(2,\) of x and \(3,\) of y"),
        (dict(x=x, y=y, p=0.5), "p must be a finite number >= 1"),
        (dict(x=x, y=y, control_variate="middle"), "unknown control_variate 'middle'; choose None, 'lower' or 'upper'"),
        (dict(x=x, y=y, directions="sobol"), "unknown directions 'sobol'; choose one of 'uniform', 'orthogonal', 'qmc'"),
        (dict(x=x, y=y, n_projections=0), "n_projections must be a positive integer"),
        (dict(x=x, y=y, projections=torch.ones(4, 2, dtype=F64)), r"projections must be a tensor of shape \(L, 3\)"),
        (dict(x=x, y=y, projections=2 * torch.eye(3, dtype=F64), control_variate="lower"),
         "must be unit vectors.*row norms range over \\[2, 2\\]"),
        (dict(x=x, y=y, weights=torch.ones(5, dtype=F64)), r"weights must be None or a pair \(a, b\)"),
        (dict(x=x, y=y, weights=(torch.ones(4, dtype=F64), None)), r"weights\[0\] must be None or a tensor of shape"),
        (dict(x=x, y=y, weights=(None, -torch.ones(6, dtype=F64))), "must be finite and non-negative"),
        (dict(x=x, y=y, weights=(torch.zeros(5, dtype=F64), None)), "sums to zero"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            sliced_wasserstein(**kwargs)
    bad = x.clone()
    bad[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"x has 1 non-finite \(NaN or inf\) entries, the first at index \(2, 1\)"):
        sliced_wasserstein(bad, y)
    with pytest.raises(ValueError, match="unknown kind 'grid'"):
        random_directions(3, 2, kind="grid")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        random_directions(0, 2)


def test_info_is_returned_only_when_asked():
    x, y = cloud(10, 2), cloud(10, 2, seed=1, shift=1.0)
    out = sliced_wasserstein(x, y, n_projections=7, generator=gen(48))
    assert isinstance(out, torch.Tensor) and out.shape == ()
    dist, info = sliced_wasserstein(x, y, n_projections=7, generator=gen(48), return_info=True)
    assert isinstance(info, SlicedInfo) and info.projections.shape == (7, 2) and info.coefficient is None
    torch.testing.assert_close(dist, out, rtol=0, atol=0)
    torch.testing.assert_close(dist, info.estimate ** 0.5, rtol=1e-14, atol=0)


def test_the_numpy_sort_on_the_cpu_gives_torch_sorts_values_and_gradients():
    from neuralnumerics.ot.wasserstein1d import _sort_last

    for dtype in (torch.float32, F64):
        t = torch.randn(7, 50, dtype=dtype, generator=gen(49))
        t[0, :10] = 0.25  # ties
        values, _ = _sort_last(t)
        assert torch.equal(values, torch.sort(t, dim=-1).values)
        a = t.clone().requires_grad_(True)
        b = t.clone().requires_grad_(True)
        w = torch.randn(7, 50, dtype=dtype, generator=gen(50))
        (_sort_last(a)[0] * w).sum().backward()
        (torch.sort(b, dim=-1).values * w).sum().backward()
        # with ties the two sorts may order equal values differently; the gradient per value class agrees
        assert torch.equal(a.grad[1:], b.grad[1:])
        torch.testing.assert_close(a.grad[0, :10].sum(), b.grad[0, :10].sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_estimates_and_gradients_match_the_cpu():
    x, y = cloud(300, 5, seed=51), cloud(200, 5, seed=52, shift=1.0)
    theta = random_directions(64, 5, generator=gen(53), dtype=F64)
    for cv in (None, "lower", "upper"):
        xc = x.cuda().requires_grad_(True)
        xh = x.clone().requires_grad_(True)
        dc = sliced_wasserstein(xc, y.cuda(), projections=theta.cuda(), control_variate=cv)
        dh = sliced_wasserstein(xh, y, projections=theta, control_variate=cv)
        dc.backward()
        dh.backward()
        torch.testing.assert_close(dc.cpu(), dh, rtol=1e-10, atol=0)
        torch.testing.assert_close(xc.grad.cpu(), xh.grad, rtol=1e-8, atol=1e-12)
    g = torch.Generator(device="cuda").manual_seed(0)
    assert sliced_wasserstein(x.cuda(), y.cuda(), generator=g).device.type == "cuda"

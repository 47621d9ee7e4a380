"""SIREN: shapes, the SIREN initialisation, reproducibility, argument checks and dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from neuralnumerics.fields import SIREN, param_count


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("in_f,out_f,width,depth", [(1, 1, 8, 0), (2, 1, 16, 1), (3, 2, 20, 2), (2, 3, 5, 3)])
def test_output_shape_and_layer_count(in_f, out_f, width, depth):
    net = SIREN(in_f, out_f, width, depth, generator=_gen(0))
    assert len(net.layers) == depth + 2
    expected = (in_f + 1) * width + depth * (width + 1) * width + (width + 1) * out_f
    assert param_count(net) == expected
    assert net(torch.rand(7, in_f)).shape == (7, out_f)
    # leading batch dimensions are carried through
    assert net(torch.rand(2, 4, in_f)).shape == (2, 4, out_f)


def test_siren_2x20_has_901_weights():
    # the "SIREN 2x20" of INSR's 1-D advection example
    assert param_count(SIREN(1, 1, 20, 2)) == 901


def test_forward_matches_explicit_formula():
    net = SIREN(3, 2, 10, 2, first_omega=7.0, hidden_omega=3.0, generator=_gen(1), dtype=torch.float64)
    x = torch.rand(6, 3, dtype=torch.float64, generator=_gen(2)) * 2 - 1
    W = [layer.weight.detach().numpy() for layer in net.layers]
    b = [layer.bias.detach().numpy() for layer in net.layers]
    h = np.sin(7.0 * (x.numpy() @ W[0].T + b[0]))
    for Wi, bi in zip(W[1:-1], b[1:-1]):
        h = np.sin(3.0 * (h @ Wi.T + bi))
    expected = h @ W[-1].T + b[-1]
    np.testing.assert_allclose(net(x).detach().numpy(), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("first_omega,hidden_omega", [(30.0, 30.0), (30.0, 10.0), (5.0, 60.0)])
def test_initialisation_bounds(first_omega, hidden_omega):
    in_f, width = 3, 64
    net = SIREN(in_f, 2, width, 3, first_omega=first_omega, hidden_omega=hidden_omega, generator=_gen(3))
    for i, layer in enumerate(net.layers):
        n = layer.in_features
        w_bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / hidden_omega
        b_bound = 1.0 / math.sqrt(n)
        w = layer.weight.detach().abs()
        assert float(w.max()) <= w_bound
        assert float(layer.bias.detach().abs().max()) <= b_bound
        if layer.weight.numel() >= 100:
            # not merely inside the bound: filling it (a much smaller init would also pass the bound)
            assert float(w.max()) >= 0.9 * w_bound


def test_hidden_weights_are_uniform():
    # Kolmogorov-Smirnov against U(-bound, bound) on a wide hidden layer (4096 samples)
    net = SIREN(2, 1, 64, 1, hidden_omega=30.0, generator=_gen(4))
    layer = net.layers[1]
    bound = math.sqrt(6.0 / 64) / 30.0
    w = layer.weight.detach().reshape(-1).numpy()
    p = scipy.stats.kstest(w, scipy.stats.uniform(loc=-bound, scale=2 * bound).cdf).pvalue
    assert p > 1e-4


def test_same_seed_same_weights_different_seed_different_weights():
    a = SIREN(2, 3, 16, 2, generator=_gen(123))
    b = SIREN(2, 3, 16, 2, generator=_gen(123))
    c = SIREN(2, 3, 16, 2, generator=_gen(124))
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_reset_parameters_with_generator_is_reproducible():
    net = SIREN(2, 1, 8, 1, generator=_gen(5))
    first = [p.detach().clone() for p in net.parameters()]
    net.reset_parameters(_gen(5))
    for p, q in zip(net.parameters(), first):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kwargs", [
    dict(in_features=0, out_features=1),
    dict(in_features=2, out_features=0),
    dict(in_features=-1, out_features=1),
    dict(in_features=2, out_features=1, hidden_features=0),
    dict(in_features=2, out_features=1, hidden_layers=-1),
    dict(in_features=2, out_features=1, first_omega=0.0),
    dict(in_features=2, out_features=1, hidden_omega=-1.0),
    dict(in_features=2, out_features=1, first_omega=float("nan")),
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        SIREN(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_respected(dtype):
    net = SIREN(2, 2, 8, 1, generator=_gen(7), dtype=dtype, device="cpu")
    assert all(p.dtype == dtype for p in net.parameters())
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert net(torch.rand(4, 2, dtype=dtype)).dtype == dtype


def test_float64_init_matches_bounds_in_float64():
    net = SIREN(2, 1, 32, 2, generator=_gen(8), dtype=torch.float64)
    for i, layer in enumerate(net.layers):
        n = layer.in_features
        bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / 30.0
        assert float(layer.weight.detach().abs().max()) <= bound


def test_construction_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SIREN(2, 1, 16, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("d,c,m,hidden_layers", [(1, 1, 1, 2), (2, 2, 2, 1), (3, 1, 2, 0), (2, 3, 1, 3)])
def test_siren_jet_matches_autograd(d, c, m, hidden_layers):
    """SirenJet's value, gradient and weight Jacobian against torch.autograd on the explicit combination."""
    from neuralnumerics.fields import SirenJet, flat_params, functional_field, jacobian

    g = torch.Generator().manual_seed(d + 10 * c)
    net = SIREN(d, c, 7, hidden_layers, first_omega=3.0, hidden_omega=2.0, generator=g, dtype=torch.float64)
    n = 5
    x = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    a = torch.randn(n, m, c, generator=g, dtype=torch.float64)
    b = torch.randn(n, m, c, d, generator=g, dtype=torch.float64)
    theta = flat_params(net)
    params = {k: v.detach() for k, v in net.named_parameters()}
    jet = SirenJet(net, params, x)
    torch.testing.assert_close(jet.value, net(x).detach(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(jet.grad, jacobian(net, x).detach(), rtol=1e-12, atol=1e-12)

    def combination(th):
        u = functional_field(net, th)
        value, grad = u(x), jacobian(u, x)  # (n, c), (n, c, d)
        return (torch.einsum("nmc,nc->nm", a, value) + torch.einsum("nmcd,ncd->nm", b, grad)).reshape(-1)

    J = torch.autograd.functional.jacobian(combination, theta)  # (n m, p)
    torch.testing.assert_close(jet.weight_jacobian_t(a, b), J.T, rtol=1e-11, atol=1e-11)

"""Flat-weight helpers: round trips, functional evaluation, differentiability and bad lengths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuralnumerics.fields import SIREN, flat_params, functional_field, load_flat_params, param_count, unflatten_params


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _net(seed: int = 0, dtype=torch.float64) -> SIREN:
    return SIREN(2, 3, 8, 2, generator=_gen(seed), dtype=dtype)


def _x(n: int = 9, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, 2, dtype=dtype, generator=_gen(99)) * 2 - 1


def test_param_count_and_flat_layout():
    net = _net()
    params = list(net.named_parameters())
    assert param_count(net) == sum(p.numel() for _, p in params) == 3 * 8 + 2 * 9 * 8 + 9 * 3
    flat = flat_params(net)
    assert flat.shape == (param_count(net),)
    assert flat.dtype == torch.float64 and not flat.requires_grad
    # named_parameters() order, row-major within each tensor
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for _, p in params]))
    parts = unflatten_params(net, flat)
    assert list(parts) == [name for name, _ in params]
    for name, p in params:
        assert parts[name].shape == p.shape
        assert torch.equal(parts[name], p.detach())


def test_flat_params_is_a_copy():
    net = _net()
    flat = flat_params(net)
    before = net.layers[0].weight.detach().clone()
    flat.zero_()
    assert torch.equal(net.layers[0].weight.detach(), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_load_round_trip(dtype):
    src, dst = _net(1, dtype), _net(2, dtype)
    x = _x(dtype=dtype)
    assert not torch.equal(src(x), dst(x))
    load_flat_params(dst, flat_params(src))
    assert torch.equal(flat_params(dst), flat_params(src))
    assert torch.equal(dst(x), src(x))
    # an arbitrary vector survives load -> flat unchanged
    v = torch.randn(param_count(dst), dtype=dtype, generator=_gen(3))
    load_flat_params(dst, v)
    assert torch.equal(flat_params(dst), v)


def test_load_converts_dtype():
    net = _net(4)
    v = torch.randn(param_count(net), dtype=torch.float32, generator=_gen(5))
    load_flat_params(net, v)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert torch.equal(flat_params(net), v.double())


def test_functional_field_at_module_weights_equals_module():
    net = _net(6)
    x = _x()
    torch.testing.assert_close(functional_field(net, flat_params(net))(x), net(x), rtol=0, atol=0)


def test_functional_field_at_other_weights():
    net, other = _net(7), _net(8)
    x = _x()
    before = flat_params(net)
    theta = flat_params(other)
    out = functional_field(net, theta)(x)
    assert not torch.allclose(out, net(x))
    torch.testing.assert_close(out, other(x), rtol=0, atol=0)  # oracle: a module holding those weights
    # a small perturbation changes the output, and the module itself is left untouched
    bumped = before.clone()
    bumped[0] += 1e-3
    assert not torch.equal(functional_field(net, bumped)(x), net(x))
    assert torch.equal(flat_params(net), before)


def test_functional_field_is_differentiable_in_flat():
    net = _net(9)
    x = _x()
    theta = flat_params(net).requires_grad_(True)
    (g_flat,) = torch.autograd.grad(functional_field(net, theta)(x).sin().sum(), theta)
    net.zero_grad()
    net(x).sin().sum().backward()
    g_module = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(g_flat, g_module, rtol=1e-12, atol=1e-12)


def test_works_for_plain_modules():
    net = nn.Sequential(nn.Linear(2, 4, dtype=torch.float64), nn.Tanh(), nn.Linear(4, 1, dtype=torch.float64))
    x = _x()
    assert param_count(net) == 17
    torch.testing.assert_close(functional_field(net, flat_params(net))(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape_fn", [lambda p: (p - 1,), lambda p: (p + 1,), lambda p: (0,), lambda p: (p, 1),
                                      lambda p: (1, p)])
def test_wrong_length_raises(shape_fn):
    net = _net(10)
    before = flat_params(net)
    bad = torch.zeros(shape_fn(param_count(net)), dtype=torch.float64)
    with pytest.raises(ValueError, match="flat vector"):
        unflatten_params(net, bad)
    with pytest.raises(ValueError, match="flat vector"):
        load_flat_params(net, bad)
    with pytest.raises(ValueError, match="flat vector"):
        functional_field(net, bad)
    assert torch.equal(flat_params(net), before)  # a failed load leaves the weights alone

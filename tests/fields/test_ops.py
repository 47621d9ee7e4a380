"""Differential operators on fields, against closed forms, finite differences and reverse-mode autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralnumerics.fields import (SIREN, directional_derivative, divergence, gradient, jacobian, laplacian,
                                  linear_combination)

# forward-mode derivatives of closed forms are exact up to round-off
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
DTYPES = [torch.float32, torch.float64]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _points(n: int, d: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, d, dtype=torch.float64, generator=_gen(seed)) * 2 - 1).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# closed-form fields
# ---------------------------------------------------------------------------------------------------------

A_VEC = (1.3, -0.7, 2.1)


def sine_product(x):  # prod_k sin(a_k x_k), scalar, d = 3
    return torch.prod(torch.sin(torch.as_tensor(A_VEC, dtype=x.dtype) * x), dim=1, keepdim=True)


def sine_product_grad(x):
    a = np.array(A_VEC)
    s, c = np.sin(a * x), np.cos(a * x)
    g = np.empty_like(x)
    for k in range(3):
        others = np.prod(np.delete(s, k, axis=1), axis=1)
        g[:, k] = a[k] * c[:, k] * others
    return g


def sine_product_lap(x):
    a = np.array(A_VEC)
    return -np.sum(a ** 2) * np.prod(np.sin(a * x), axis=1, keepdims=True)


def poly(x):  # x^2 y + 3 y z^3 - x z
    X, Y, Z = x.unbind(1)
    return (X ** 2 * Y + 3 * Y * Z ** 3 - X * Z)[:, None]


def poly_grad(x):
    X, Y, Z = x.T
    return np.stack([2 * X * Y - Z, X ** 2 + 3 * Z ** 3, 9 * Y * Z ** 2 - X], axis=1)


def poly_lap(x):
    X, Y, Z = x.T
    return (2 * Y + 18 * Y * Z)[:, None]


def vec2(x):  # (x y, x^2) in 2-D
    X, Y = x.unbind(1)
    return torch.stack([X * Y, X ** 2], dim=1)


def vec2_jac(x):
    X, Y = x.T
    return np.stack([np.stack([Y, X], 1), np.stack([2 * X, 0 * X], 1)], axis=1)


def vec3(x):  # (sin(x) y, y^2 z, exp(z) x) in 3-D
    X, Y, Z = x.unbind(1)
    return torch.stack([torch.sin(X) * Y, Y ** 2 * Z, torch.exp(Z) * X], dim=1)


def vec3_jac(x):
    X, Y, Z = x.T
    zero = 0 * X
    return np.stack([
        np.stack([np.cos(X) * Y, np.sin(X), zero], 1),
        np.stack([zero, 2 * Y * Z, Y ** 2], 1),
        np.stack([np.exp(Z), zero, np.exp(Z) * X], 1),
    ], axis=1)


def vec3_lap(x):
    X, Y, Z = x.T
    return np.stack([-np.sin(X) * Y, 2 * Z, np.exp(Z) * X], axis=1)


def rect(x):  # 2 channels in 3-D: (x y z, x + y^2)
    X, Y, Z = x.unbind(1)
    return torch.stack([X * Y * Z, X + Y ** 2], dim=1)


def rect_jac(x):
    X, Y, Z = x.T
    return np.stack([np.stack([Y * Z, X * Z, X * Y], 1), np.stack([1 + 0 * X, 2 * Y, 0 * X], 1)], axis=1)


def _close(actual: torch.Tensor, expected, dtype):
    expected = torch.as_tensor(np.asarray(expected), dtype=torch.float64).to(dtype)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("f,grad,lap", [(sine_product, sine_product_grad, sine_product_lap),
                                        (poly, poly_grad, poly_lap)])
def test_scalar_fields_closed_form(f, grad, lap, dtype):
    x = _points(20, 3, dtype)
    xn = x.double().numpy()
    g = gradient(f, x)
    assert g.shape == (20, 3)
    _close(g, grad(xn), dtype)
    _close(jacobian(f, x), grad(xn)[:, None, :], dtype)
    _close(laplacian(f, x), lap(xn), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_field_2d_closed_form(dtype):
    x = _points(15, 2, dtype, seed=1)
    xn = x.double().numpy()
    J = jacobian(vec2, x)
    assert J.shape == (15, 2, 2)
    _close(J, vec2_jac(xn), dtype)
    _close(divergence(vec2, x), xn[:, 1:2], dtype)  # d(xy)/dx + d(x^2)/dy = y
    _close(laplacian(vec2, x), np.tile([0.0, 2.0], (15, 1)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_field_3d_closed_form(dtype):
    x = _points(15, 3, dtype, seed=2)
    xn = x.double().numpy()
    J = vec3_jac(xn)
    _close(jacobian(vec3, x), J, dtype)
    _close(divergence(vec3, x), np.trace(J, axis1=1, axis2=2)[:, None], dtype)
    _close(laplacian(vec3, x), vec3_lap(xn), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_square_jacobian_and_directional_derivative(dtype):
    x = _points(12, 3, dtype, seed=3)
    xn = x.double().numpy()
    J = rect_jac(xn)
    _close(jacobian(rect, x), J, dtype)
    v = _points(12, 3, dtype, seed=4)
    _close(directional_derivative(rect, x, v), np.einsum("ncd,nd->nc", J, v.double().numpy()), dtype)
    # a single direction broadcasts over the points
    v1 = torch.tensor([0.5, -1.0, 2.0], dtype=dtype)
    _close(directional_derivative(rect, x, v1), J @ v1.double().numpy(), dtype)


# ---------------------------------------------------------------------------------------------------------
# a random SIREN, against central differences and reverse-mode autograd (float64)
# ---------------------------------------------------------------------------------------------------------

def _siren(out_features: int, seed: int = 10) -> SIREN:
    return SIREN(3, out_features, 16, 2, generator=_gen(seed), dtype=torch.float64)


def _fd_jacobian(f, x, h=1e-6):
    cols = []
    with torch.no_grad():
        for k in range(x.shape[1]):
            e = torch.zeros_like(x)
            e[:, k] = h
            cols.append((f(x + e) - f(x - e)) / (2 * h))
    return torch.stack(cols, dim=-1)


def _fd_laplacian(f, x, h=1e-4):
    with torch.no_grad():
        fx = f(x)
        out = torch.zeros_like(fx)
        for k in range(x.shape[1]):
            e = torch.zeros_like(x)
            e[:, k] = h
            out += (f(x + e) - 2 * fx + f(x - e)) / h ** 2
    return out


def _autograd_jac_lap(f, x):
    """Reverse-over-reverse autograd: per-point Jacobian (n, c, d) and Laplacian (n, c)."""
    x = x.clone().requires_grad_(True)
    y = f(x)
    jac_rows, laps = [], []
    for i in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, i].sum(), x, create_graph=True)
        jac_rows.append(g.detach())
        lap = 0
        for k in range(x.shape[1]):
            (gk,) = torch.autograd.grad(g[:, k].sum(), x, retain_graph=True)
            lap = lap + gk[:, k]
        laps.append(lap.detach())
    return torch.stack(jac_rows, dim=1), torch.stack(laps, dim=1)


@pytest.mark.parametrize("out_features", [1, 2, 3])
def test_siren_derivatives_match_finite_differences(out_features):
    net = _siren(out_features)
    x = _points(10, 3, seed=5)
    J = jacobian(net, x).detach()
    # SIREN derivatives scale like omega = 30; compare relative to the overall size
    jfd = _fd_jacobian(net, x)
    assert float((J - jfd).abs().max()) <= 1e-7 * float(jfd.abs().max())
    lap = laplacian(net, x).detach()
    lfd = _fd_laplacian(net, x)
    assert float((lap - lfd).abs().max()) <= 1e-5 * float(lfd.abs().max())
    if out_features == 1:
        torch.testing.assert_close(gradient(net, x), J[:, 0, :], rtol=0, atol=0)
    if out_features == 3:
        torch.testing.assert_close(divergence(net, x), J.diagonal(dim1=1, dim2=2).sum(-1, keepdim=True),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("out_features", [1, 3])
def test_siren_derivatives_match_reverse_mode_autograd(out_features):
    net = _siren(out_features, seed=11)
    x = _points(10, 3, seed=6)
    J_ref, lap_ref = _autograd_jac_lap(net, x)
    torch.testing.assert_close(jacobian(net, x).detach(), J_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(laplacian(net, x).detach(), lap_ref, rtol=1e-10, atol=1e-9)
    v = _points(10, 3, seed=7)
    torch.testing.assert_close(directional_derivative(net, x, v).detach(),
                               torch.einsum("ncd,nd->nc", J_ref, v), rtol=1e-10, atol=1e-10)
    if out_features == 3:
        torch.testing.assert_close(divergence(net, x).detach(),
                                   J_ref.diagonal(dim1=1, dim2=2).sum(-1, keepdim=True), rtol=1e-10, atol=1e-10)


def test_siren_closed_form_matches_forward_mode_for_functional_fields():
    # a SIREN (or functional_field of one) takes the closed-form SirenJet path; a plain lambda around the
    # same network takes forward mode: values and weight gradients must agree
    from neuralnumerics.fields import flat_params, functional_field

    net = _siren(2, seed=14)
    x = _points(12, 3, seed=10)
    theta = flat_params(net).requires_grad_(True)
    closed = jacobian(functional_field(net, theta), x)
    generic = jacobian(lambda y: functional_field(net, theta)(y), x)
    torch.testing.assert_close(closed, generic, rtol=1e-10, atol=1e-10)
    (g_closed,) = torch.autograd.grad(closed.sin().sum(), theta)
    (g_generic,) = torch.autograd.grad(generic.sin().sum(), theta)
    torch.testing.assert_close(g_closed, g_generic, rtol=1e-9, atol=1e-9)


def test_linear_combination_differentiates_each_part():
    # 0.5 * SIREN - 2 * vec3 + vec3: values and every derivative equal those of the same sum written as a
    # lambda (forward mode on the whole) and, for the closed-form part, its closed forms; weight gradients
    # flow through the SIREN part as through the lambda
    from neuralnumerics.fields import flat_params, functional_field

    net = _siren(3, seed=15)
    x = _points(11, 3, seed=11)
    theta = flat_params(net).requires_grad_(True)
    u = functional_field(net, theta)
    combo = linear_combination((0.5, u), (-2.0, vec3), (1.0, vec3))
    plain = lambda y: 0.5 * u(y) - 2.0 * vec3(y) + vec3(y)  # noqa: E731
    v = _points(11, 3, seed=12)
    for op in (jacobian, divergence, laplacian, lambda f, y: directional_derivative(f, y, v)):
        torch.testing.assert_close(op(combo, x), op(plain, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(combo(x), plain(x), rtol=0, atol=0)
    xn = x.double().numpy()
    only_vec = linear_combination((-1.0, vec3))
    _close(jacobian(only_vec, x), -vec3_jac(xn), torch.float64)
    _close(laplacian(only_vec, x), -vec3_lap(xn), torch.float64)
    (g_combo,) = torch.autograd.grad(jacobian(combo, x).sin().sum(), theta)
    (g_plain,) = torch.autograd.grad(jacobian(plain, x).sin().sum(), theta)
    torch.testing.assert_close(g_combo, g_plain, rtol=1e-9, atol=1e-9)
    # a combination of combinations
    nested = linear_combination((2.0, combo), (1.0, u))
    torch.testing.assert_close(jacobian(nested, x), 2 * jacobian(plain, x) + jacobian(u, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bad", [(), ((1.0,),), (("a", "b"),), ((1.0, 2.0),)])
def test_linear_combination_refuses_bad_terms(bad):
    with pytest.raises(ValueError, match="linear_combination"):
        linear_combination(*bad)


# ---------------------------------------------------------------------------------------------------------
# differentiability with respect to the weights
# ---------------------------------------------------------------------------------------------------------

def _losses(net, x):
    return {
        "laplacian": lambda: laplacian(net, x).square().mean(),
        "divergence": lambda: divergence(net, x).square().mean(),
        "jacobian": lambda: jacobian(net, x).sin().sum(),
    }


@pytest.mark.parametrize("which", ["laplacian", "divergence", "jacobian"])
def test_ops_backprop_to_weights_matches_finite_difference(which):
    net = _siren(3, seed=12)
    x = _points(8, 3, seed=8)
    loss = _losses(net, x)[which]
    net.zero_grad()
    loss().backward()
    weight = net.layers[1].weight
    idx = (2, 3)
    g = float(weight.grad[idx])
    # every weight but the output bias (which no x-derivative sees) receives a finite gradient
    for name, p in net.named_parameters():
        if name == f"layers.{len(net.layers) - 1}.bias":
            assert p.grad is None or not p.grad.any()
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any(), name
    h = 1e-6
    with torch.no_grad():
        w0 = float(weight[idx])
        weight[idx] = w0 + h
        up = float(loss())
        weight[idx] = w0 - h
        down = float(loss())
        weight[idx] = w0
    fd = (up - down) / (2 * h)
    assert math.isclose(g, fd, rel_tol=1e-6, abs_tol=1e-8 * max(1.0, abs(fd)))


def test_gradient_backprop_to_weights_matches_autograd_double_backward():
    # d/dtheta of sum |grad_x u|^2, forward-mode ops vs create_graph reverse mode
    net = _siren(1, seed=13)
    x = _points(8, 3, seed=9)
    net.zero_grad()
    gradient(net, x).square().sum().backward()
    grads = lambda: [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]  # noqa: E731
    ours = grads()
    net.zero_grad()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xr).sum(), xr, create_graph=True)
    g.square().sum().backward()
    for a, b in zip(ours, grads()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# failure paths
# ---------------------------------------------------------------------------------------------------------

def test_gradient_of_vector_field_raises():
    with pytest.raises(ValueError, match="scalar"):
        gradient(vec2, _points(4, 2))


@pytest.mark.parametrize("f,d", [(rect, 3), (sine_product, 3), (vec3, 2)])
def test_divergence_needs_as_many_channels_as_dimensions(f, d):
    if f is vec3:  # 3 channels in 2-D
        f = lambda x: torch.stack([x[:, 0], x[:, 1], x[:, 0] * x[:, 1]], dim=1)  # noqa: E731
    with pytest.raises(ValueError, match="channels"):
        divergence(f, _points(4, d))


@pytest.mark.parametrize("op", ["jacobian", "gradient", "divergence", "laplacian", "directional_derivative"])
@pytest.mark.parametrize("bad", ["1d", "3d", "numpy"])
def test_points_of_wrong_ndim_raise(op, bad):
    x = {"1d": torch.rand(5, dtype=torch.float64), "3d": torch.rand(2, 4, 1, dtype=torch.float64),
         "numpy": np.random.default_rng(0).random((4, 1))}[bad]
    f = lambda y: y.sum(-1, keepdim=True)  # noqa: E731
    fn = {"jacobian": jacobian, "gradient": gradient, "divergence": divergence, "laplacian": laplacian,
          "directional_derivative": lambda f, x: directional_derivative(f, x, torch.ones(1))}[op]
    with pytest.raises(ValueError, match="points"):
        fn(f, x)

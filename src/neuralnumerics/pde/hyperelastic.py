"""Hyperelastic energy densities of deformation gradients, and the material constants they take.

Every density maps deformation gradients ``F`` of shape ``(..., d, d)`` (``d`` = 2 or 3, ``F = dq/dX`` for the
deformation map ``q(X)`` from rest positions ``X``) to energies per unit rest volume, shape ``(...)``; all are
differentiable (autograd), zero at ``F = I`` and invariant under rotations ``F -> R F``.

* :func:`arap_energy`: as-rigid-as-possible, ``|F - R|^2`` = ``sum_i (sigma_i - 1)^2`` over the singular
  values of ``F`` for ``det F > 0`` (the INSR paper's elasticity term).
* :func:`volume_energy`: ``(det F - 1)^2``, the paper's volume-preservation term (with the signed
  determinant, so that inverted states cost more than their mirror images; the paper's code uses
  ``prod(sigma) = |det F|``).
* :func:`neo_hookean_energy`: the stable Neo-Hookean model of Smith, de Goes and Kim (2018) without its
  log term, rest-stable, finite through inversion (no ``log det F``), and reparameterised so that small
  strains give linear elasticity with the given Lame parameters.

:func:`lame_parameters` converts Young's modulus and Poisson's ratio into ``(mu, lambda)``.

References:
    Chen, Wu, Grinspun, Zheng, Chen. "Implicit Neural Spatial Representations for Time-dependent PDEs",
    ICML 2023, Sec. 5.3.
    Smith, de Goes, Kim. "Stable Neo-Hookean Flesh Simulation", ACM TOG 37(2), 2018.
    Sorkine, Alexa. "As-Rigid-As-Possible Surface Modeling", SGP 2007.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["arap_energy", "volume_energy", "neo_hookean_energy", "lame_parameters"]


def _check_gradients(F, who: str) -> torch.Tensor:
    if not isinstance(F, torch.Tensor) or F.ndim < 2 or F.shape[-1] != F.shape[-2] or F.shape[-1] not in (2, 3):
        shape = tuple(F.shape) if isinstance(F, torch.Tensor) else type(F).__name__
        raise ValueError(f"{who}: F must be deformation gradients of shape (..., d, d) with d = 2 or 3, got {shape}")
    if not F.is_floating_point():
        raise ValueError(f"{who}: F must be a real floating tensor, got dtype {F.dtype}")
    return F


def _det(F: torch.Tensor) -> torch.Tensor:
    """``det F`` of ``(..., d, d)``, d = 2 or 3, as the explicit polynomial (smooth to every order under
    autograd and ``torch.func``, unlike ``torch.linalg.det``'s second derivatives)."""
    if F.shape[-1] == 2:
        return F[..., 0, 0] * F[..., 1, 1] - F[..., 0, 1] * F[..., 1, 0]
    a, b, c = F[..., 0, 0], F[..., 0, 1], F[..., 0, 2]
    d, e, f = F[..., 1, 0], F[..., 1, 1], F[..., 1, 2]
    g, h, i = F[..., 2, 0], F[..., 2, 1], F[..., 2, 2]
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def arap_energy(F: torch.Tensor) -> torch.Tensor:
    """As-rigid-as-possible energy density ``|F - R|_F^2``, ``R`` the rotation closest to ``F``; for
    ``det F > 0`` this is ``sum_i (sigma_i(F) - 1)^2`` over the singular values.

    It is computed as ``|F|^2 + d - 2 max_R tr(R^T F)`` over proper rotations ``R`` (so an inverted ``F``
    costs more than in the singular-value form): in 2D in closed form, ``max_R tr(R^T F) = sqrt(|F|^2 + 2
    det F)``; in 3D as the largest root of a quartic in the invariants (:func:`_trace_rotation_3d`). Both
    are smooth at rest, where the singular values coincide, so the energy's Hessian (which
    finite-element Newton solvers need) is defined there; that of the singular-value form is not.

    Args:
        F: ``(..., d, d)`` deformation gradients, ``d`` = 2 or 3.

    Returns:
        ``(...)``.

    Raises:
        ValueError: ``F`` not of shape ``(..., d, d)`` with ``d`` in {2, 3}, or not floating point.
    """
    F = _check_gradients(F, "arap_energy")
    norm2 = F.square().sum((-2, -1))
    if F.shape[-1] == 2:
        trace_r = (norm2 + 2 * _det(F)).clamp_min(torch.finfo(F.dtype).tiny).sqrt()
        return norm2 + 2 - 2 * trace_r
    return norm2 + 3 - 2 * _trace_rotation_3d(F, norm2)


def _trace_rotation_3d(F: torch.Tensor, norm2: torch.Tensor) -> torch.Tensor:
    """``max_R tr(R^T F)`` over proper rotations, ``(...)``, for ``(..., 3, 3)`` ``F``: ``sigma_1 + sigma_2 +
    sign(det F) sigma_3`` (singular values in decreasing order).

    It is the largest root ``x`` of ``x^4 - 2 I x^2 - 8 det(F) x + I^2 - 4 II = 0`` (``I = tr C``, ``II``
    the second invariant of ``C = F^T F``; the invariants of the stretch ``U = sqrt(C)``), found by Newton's
    method from ``sqrt(3 I)``, an upper bound, from which it decreases monotonically. Built from polynomial
    operations only, it is smooth where that root is simple (everywhere but at ``F = 0``-like degenerate
    states), including at rest where all singular values coincide, so its Hessian is usable; the
    singular-value form's is not.
    """
    C = F.mT @ F
    i1 = norm2
    i2 = 0.5 * (i1.square() - C.square().sum((-2, -1)))
    det = _det(F)
    const = i1.square() - 4 * i2
    x = (3 * i1).clamp_min(torch.finfo(F.dtype).tiny).sqrt()
    for _ in range(40):
        x2 = x * x
        p = x2 * x2 - 2 * i1 * x2 - 8 * det * x + const
        dp = 4 * x2 * x - 4 * i1 * x - 8 * det
        x = x - p / torch.where(dp.abs() > 0, dp, torch.ones_like(dp))
    return x


def volume_energy(F: torch.Tensor) -> torch.Tensor:
    """Volume-preservation energy density ``(det F - 1)^2``.

    Args:
        F: ``(..., d, d)`` deformation gradients, ``d`` = 2 or 3.

    Returns:
        ``(...)``.
    """
    F = _check_gradients(F, "volume_energy")
    return (_det(F) - 1).square()


def neo_hookean_energy(F: torch.Tensor, mu: float, lam: float) -> torch.Tensor:
    """Stable Neo-Hookean energy density (Smith et al. 2018) for Lame parameters ``mu``, ``lam``; zero at rest.

    ``Psi(F) = mu/2 (tr(F^T F) - d) + k/2 (det F - alpha)^2 - mu^2 / (2 k)`` with ``k = lam + mu`` and
    ``alpha = 1 + mu / k`` (Smith et al.'s reparameterisation, so that small strains give linear elasticity
    with exactly these Lame parameters). The first Piola-Kirchhoff stress ``P = mu F + k (det F - alpha)
    cof(F)`` vanishes at ``F = I``; there is no ``log det F``, so inverted states have a finite energy.

    Args:
        F: ``(..., d, d)`` deformation gradients, ``d`` = 2 or 3.
        mu, lam: Lame parameters, ``mu > 0`` and ``lam + mu > 0`` (see :func:`lame_parameters`).

    Returns:
        ``(...)``.

    Raises:
        ValueError: bad ``F``, or ``mu``, ``lam`` not finite, ``mu <= 0`` or ``lam + mu <= 0``.
    """
    F = _check_gradients(F, "neo_hookean_energy")
    for name, v in (("mu", mu), ("lam", lam)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"neo_hookean_energy: {name} must be a finite number, got {v!r}")
    if mu <= 0 or lam + mu <= 0:
        raise ValueError(f"neo_hookean_energy: needs mu > 0 and lam + mu > 0, got mu={mu!r}, lam={lam!r}; "
                         "lame_parameters(young, poisson) converts Young's modulus and Poisson's ratio")
    d = F.shape[-1]
    k = lam + mu
    alpha = 1 + mu / k
    stretch = F.square().sum((-2, -1)) - d
    return 0.5 * mu * stretch + 0.5 * k * (_det(F) - alpha).square() - mu * mu / (2 * k)


def lame_parameters(young: float, poisson: float) -> tuple[float, float]:
    """``(mu, lambda)`` from Young's modulus ``E > 0`` and Poisson's ratio ``-1 < nu < 0.5``.

    ``mu = E / (2 (1 + nu))``, ``lambda = E nu / ((1 + nu)(1 - 2 nu))`` (3D, and 2D plane strain).

    Raises:
        ValueError: ``E <= 0`` or ``nu`` outside ``(-1, 0.5)`` (``nu = 0.5`` is incompressible: ``lambda``
            is infinite).
    """
    if isinstance(young, bool) or not isinstance(young, numbers.Real) or not math.isfinite(young) or young <= 0:
        raise ValueError(f"lame_parameters: Young's modulus must be a positive finite number, got {young!r}")
    if isinstance(poisson, bool) or not isinstance(poisson, numbers.Real) or not -1 < poisson < 0.5:
        raise ValueError(f"lame_parameters: Poisson's ratio must lie in (-1, 0.5), got {poisson!r} (0.5, "
                         "incompressible, has an infinite lambda: use a volume_energy penalty instead)")
    mu = young / (2 * (1 + poisson))
    lam = young * poisson / ((1 + poisson) * (1 - 2 * poisson))
    return float(mu), float(lam)


"""Time integrators for INSR, registered by name.

INSR keeps the classical time discretisation and replaces the spatial one: for ``u_t = f(u)`` an
integrator is a *residual* between the field being fitted (``u_new``) and the previous step's
field (``u_prev``), evaluated at sample points. Fitting the network weights drives the residual
to zero. Every residual is scaled like a difference quotient, ``(u_new - u_prev) / dt - ...``.

``rhs(u, x, t)`` is the spatial operator ``f``: it takes a field callable and returns ``f(u)`` at
the points ``x`` (shape ``(n, c)``), computing derivatives with :mod:`neuralnumerics.fields`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch

from ..fields import Field, linear_combination

__all__ = [
    "TimeIntegrator", "ExplicitEuler", "ImplicitEuler", "Midpoint", "Trapezoidal", "GaussLegendre2",
    "INTEGRATORS", "get_integrator", "register_integrator",
]

RHS = Callable[[Field, torch.Tensor, float], torch.Tensor]

INTEGRATORS: dict[str, type["TimeIntegrator"]] = {}


def register_integrator(cls: type["TimeIntegrator"]) -> type["TimeIntegrator"]:
    """Class decorator adding an integrator to :data:`INTEGRATORS` under ``cls.name``."""
    INTEGRATORS[cls.name] = cls
    return cls


def get_integrator(name: "str | TimeIntegrator") -> "TimeIntegrator":
    """An integrator instance from its registered name (or the instance itself)."""
    if isinstance(name, TimeIntegrator):
        return name
    try:
        return INTEGRATORS[name]()
    except KeyError:
        raise ValueError(f"unknown integrator {name!r}; choose one of {sorted(INTEGRATORS)}") from None


class TimeIntegrator(ABC):
    """A one-step time discretisation written as a residual on fields.

    Attributes:
        name: registry name (``neuralnumerics list`` shows them).
        order: global order of accuracy in ``dt``.
        implicit: whether ``f`` is evaluated at the new field.
        needs_linear: the method is written for linear autonomous ``f`` (``problem.linear``).
        operator_power: highest power of the spatial operator in the residual; a residual with ``A^2``
            has twice the differential order and needs boundary conditions on ``A u`` as well.
        affine: for a linear ``f`` the residual is affine in the new field (true of every built-in
            integrator); the fit then computes the residual's derivatives with respect to the field
            once per step. Leave it ``False`` in an integrator of your own unless you know it holds.
    """

    name: ClassVar[str]
    order: ClassVar[int]
    implicit: ClassVar[bool] = True
    needs_linear: ClassVar[bool] = False
    operator_power: ClassVar[int] = 1
    affine: ClassVar[bool] = False
    description: ClassVar[str] = ""

    @abstractmethod
    def residual(self, rhs: RHS, u_new: Field, u_prev: Field, x: torch.Tensor, t: float,
                 dt: float) -> torch.Tensor:
        """Residual of one step from time ``t`` to ``t + dt`` at points ``x``, shape ``(n, c)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"


@register_integrator
class ExplicitEuler(TimeIntegrator):
    name = "explicit-euler"
    order = 1
    implicit = False
    affine = True
    description = "u1 = u0 + dt f(u0)"

    def residual(self, rhs, u_new, u_prev, x, t, dt):
        return (u_new(x) - u_prev(x)) / dt - rhs(u_prev, x, t)


@register_integrator
class ImplicitEuler(TimeIntegrator):
    name = "implicit-euler"
    order = 1
    affine = True
    description = "u1 = u0 + dt f(u1)"

    def residual(self, rhs, u_new, u_prev, x, t, dt):
        return (u_new(x) - u_prev(x)) / dt - rhs(u_new, x, t + dt)


@register_integrator
class Midpoint(TimeIntegrator):
    name = "midpoint"
    order = 2
    affine = True
    description = "implicit midpoint: u1 = u0 + dt f((u0 + u1)/2); equals trapezoidal for linear f"

    def residual(self, rhs, u_new, u_prev, x, t, dt):
        u_mid = linear_combination((0.5, u_new), (0.5, u_prev))
        return (u_new(x) - u_prev(x)) / dt - rhs(u_mid, x, t + 0.5 * dt)


@register_integrator
class Trapezoidal(TimeIntegrator):
    name = "trapezoidal"
    order = 2
    affine = True
    description = "u1 = u0 + dt (f(u0) + f(u1))/2 (the INSR paper's 'midpoint' update)"

    def residual(self, rhs, u_new, u_prev, x, t, dt):
        return (u_new(x) - u_prev(x)) / dt - 0.5 * (rhs(u_new, x, t + dt) + rhs(u_prev, x, t))


@register_integrator
class GaussLegendre2(TimeIntegrator):
    """Two-stage Gauss-Legendre collocation (order 4) for linear autonomous ``u_t = A u``.

    For such problems the Gauss-Legendre update is ``u1 = R(dt A) u0`` with ``R`` the (2,2) Padé
    approximant of ``exp``, ``R(z) = (1 + z/2 + z^2/12) / (1 - z/2 + z^2/12)``. Multiplying out,
    the step residual is the trapezoidal one plus ``(dt/12) A^2 (u1 - u0)``, which needs one fit per
    step and no stage fields. ``A^2`` is applied by composing ``rhs`` with itself, so the problem's
    operator must be linear and time independent (``problem.linear``).

    References:
        Hairer, Nørsett, Wanner. "Solving Ordinary Differential Equations I", Sec. II.7 and IV.3.
    """

    name = "gauss-legendre2"
    order = 4
    needs_linear = True
    operator_power = 2
    affine = True
    description = "2-stage Gauss-Legendre (order 4), for linear autonomous problems"

    def residual(self, rhs, u_new, u_prev, x, t, dt):
        du = linear_combination((1.0, u_new), (-1.0, u_prev))
        a_du = lambda y: rhs(du, y, t)  # noqa: E731
        trapezoid = du(x) / dt - 0.5 * (rhs(u_new, x, t) + rhs(u_prev, x, t))
        return trapezoid + (dt / 12.0) * rhs(a_du, x, t)

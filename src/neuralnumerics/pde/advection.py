"""Advection in 1D with constant velocity: ``u_t + v u_x = 0`` on ``[-L/2, L/2]``, zero Dirichlet boundary."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..fields import SIREN, Field, gradient
from .domain import Box
from .fit import ResidualTerm
from .problem import Problem

__all__ = ["Advection1D", "gaussian_pulse"]


def gaussian_pulse(center: float = -1.5, width: float = 0.1) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> exp(-(x - center)^2 / (2 width^2))``, the INSR paper's advection initial condition."""
    if not width > 0:
        raise ValueError(f"gaussian_pulse: width must be positive, got {width}")

    def pulse(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * ((x - center) / width) ** 2)

    pulse.__qualname__ = f"gaussian_pulse(center={center}, width={width})"
    return pulse


class Advection1D(Problem):
    """Constant-velocity advection ``u_t + v u_x = 0`` on ``[-length/2, length/2]``.

    The boundary condition is ``u = 0`` at both ends (as in the INSR paper); with ``v > 0`` the left
    end is the inflow. The exact solution translates the initial condition:
    ``u(x, t) = u_0(x - v t)`` where ``x - v t`` lies in the domain and ``0`` where it comes from the
    inflow boundary. Defaults are the paper's configuration: length 4, velocity 0.25, the Gaussian
    pulse centred at -1.5 with width 0.1, a SIREN with 2 hidden layers of 20, 5000 samples.

    Args:
        velocity: advection speed ``v``.
        initial: ``u_0``, a callable from points ``(n, 1)`` to values ``(n, 1)``; default the paper's pulse.
        length: domain length ``L``.
        n_points: interior samples per fit.
        boundary_weight: weight of the boundary residual in the loss.
        hidden_features, hidden_layers: size of the default SIREN.

    Raises:
        ValueError: on a non-finite velocity, non-positive length, or an initial condition that is
            not finite or has the wrong shape on the domain.
    """

    name = "advection1d"
    channels = 1
    linear = True

    def __init__(self, velocity: float = 0.25, initial: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 length: float = 4.0, *, n_points: int = 5000, boundary_weight: float = 1.0,
                 hidden_features: int = 20, hidden_layers: int = 2) -> None:
        if not math.isfinite(velocity):
            raise ValueError(f"Advection1D: velocity must be finite, got {velocity}")
        if not (math.isfinite(length) and length > 0):
            raise ValueError(f"Advection1D: length must be positive, got {length}")
        if int(n_points) < 1:
            raise ValueError(f"Advection1D: n_points must be positive, got {n_points}")
        self.velocity = float(velocity)
        self.length = float(length)
        self.domain = Box((-self.length / 2,), (self.length / 2,))
        self.initial_fn = initial if initial is not None else gaussian_pulse()
        self.n_points = int(n_points)
        self.boundary_weight = float(boundary_weight)
        self.hidden_features = int(hidden_features)
        self.hidden_layers = int(hidden_layers)
        self._check_initial()

    def _check_initial(self) -> None:
        x = self.eval_points()
        try:
            u0 = self.initial_fn(x)
        except Exception as exc:  # a user callable: say which one failed and how
            raise ValueError(f"Advection1D: the initial condition failed on points of shape {tuple(x.shape)}: "
                             f"{exc}") from exc
        if not isinstance(u0, torch.Tensor) or u0.shape != (x.shape[0], 1):
            shape = tuple(u0.shape) if isinstance(u0, torch.Tensor) else type(u0).__name__
            raise ValueError(f"Advection1D: the initial condition must map points (n, 1) to values (n, 1), "
                             f"got {shape} for n={x.shape[0]}")
        if not torch.isfinite(u0).all():
            bad = x[~torch.isfinite(u0[:, 0]), 0]
            raise ValueError(f"Advection1D: the initial condition is not finite at {bad.numel()} of "
                             f"{x.shape[0]} grid points (first at x={float(bad[0]):.4g})")

    def initial(self, x: torch.Tensor) -> torch.Tensor:
        return self.initial_fn(x)

    def rhs(self, u: Field, x: torch.Tensor, t: float) -> torch.Tensor:
        return -self.velocity * gradient(u, x)

    def exact(self, x: torch.Tensor, t: float) -> torch.Tensor:
        foot = x - self.velocity * t
        inside = (foot >= self.domain.lo[0]) & (foot <= self.domain.hi[0])
        return torch.where(inside, self.initial_fn(foot), torch.zeros_like(foot))

    def default_field(self, *, generator=None, dtype=None, device=None) -> nn.Module:
        return SIREN(1, 1, self.hidden_features, self.hidden_layers, generator=generator, dtype=dtype, device=device)

    def boundary_terms(self, t: float, operator_power: int = 1) -> list[ResidualTerm]:
        ends = torch.tensor([[self.domain.lo[0]], [self.domain.hi[0]]], dtype=torch.float64)
        terms = [ResidualTerm("boundary", lambda u, x: u(x), lambda generator, quasi: ends, self.boundary_weight)]
        if operator_power >= 2 and self.velocity != 0:
            # A residual with (v d/dx)^2 is second order in x: both roots of its characteristic
            # equation decay downstream, so it needs two conditions at the inflow. With zero inflow
            # the exact solution also has u_x = 0 there; without it the fit has a free boundary-layer
            # mode at the inflow that grows from step to step.
            # The condition is A u = -v u_x = 0 at the inflow.
            inflow = ends[:1] if self.velocity > 0 else ends[1:]
            terms.append(ResidualTerm("inflow_operator", lambda u, x: self.rhs(u, x, t),
                                      lambda generator, quasi: inflow, self.boundary_weight))
        return terms

    def config(self) -> dict:
        return {"name": self.name, "velocity": self.velocity, "length": self.length,
                "initial": getattr(self.initial_fn, "__qualname__", repr(self.initial_fn)),
                "n_points": self.n_points, "boundary_weight": self.boundary_weight,
                "hidden_features": self.hidden_features, "hidden_layers": self.hidden_layers}

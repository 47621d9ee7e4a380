"""The ``Problem`` protocol: what INSR needs to know about a time-dependent PDE ``u_t = f(u)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import nn

from ..fields import Field, SIREN
from .domain import Box
from .fit import ResidualTerm
from .integrators import TimeIntegrator

__all__ = ["Problem", "relative_l2"]


def relative_l2(values: torch.Tensor, reference: torch.Tensor) -> float:
    """``||values - reference||_2 / ||reference||_2`` over all entries (absolute error if the reference is 0)."""
    diff = (values - reference).double().norm()
    ref = reference.double().norm()
    return float(diff / ref) if float(ref) > 0 else float(diff)


class Problem(ABC):
    """A time-dependent PDE ``u_t = f(u)`` on a box, for the INSR solver.

    Subclasses set ``name``, ``domain`` (:class:`~neuralnumerics.pde.domain.Box`), ``channels`` and
    ``linear`` and implement :meth:`initial` and :meth:`rhs`; they add boundary conditions through
    :meth:`boundary_terms` and an exact solution through :meth:`exact`. The per-step residual terms
    (:meth:`step_terms`) combine the integrator's residual in the interior with the boundary terms.

    Attributes:
        name: scenario-style name.
        domain: the spatial domain.
        channels: number of components of ``u``.
        linear: ``f`` is linear in ``u`` and independent of ``t`` (enables ``gauss-legendre2``).
        n_points: interior sample points per fit (the paper's ``sample_resolution``).
    """

    name: str = "problem"
    domain: Box
    channels: int = 1
    linear: bool = False
    n_points: int = 5000

    @property
    def dim(self) -> int:
        return self.domain.dim

    @abstractmethod
    def initial(self, x: torch.Tensor) -> torch.Tensor:
        """Initial condition ``u(x, 0)``, shape ``(n, channels)``."""

    @abstractmethod
    def rhs(self, u: Field, x: torch.Tensor, t: float) -> torch.Tensor:
        """``f(u)`` at points ``x`` and time ``t``, shape ``(n, channels)``."""

    def exact(self, x: torch.Tensor, t: float) -> torch.Tensor | None:
        """Exact solution at ``(x, t)``, or ``None`` when unknown."""
        return None

    def default_field(self, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> nn.Module:
        """A freshly initialised network for this problem."""
        return SIREN(self.dim, self.channels, 64, 3, generator=generator, dtype=dtype, device=device)

    def eval_points(self, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Uniform grid on which errors are measured."""
        return self.domain.grid(2000 if self.dim == 1 else 200 if self.dim == 2 else 40, dtype=dtype, device=device)

    def sampler(self, n: int) -> Callable[[torch.Generator | None, bool], torch.Tensor]:
        """Draws ``n`` interior points (quasi-random when asked)."""
        return lambda generator, quasi: self.domain.sample(n, generator=generator, quasi=quasi,
                                                           dtype=torch.float64)

    def boundary_terms(self, t: float, operator_power: int = 1) -> list[ResidualTerm]:
        """Residual terms imposing the boundary conditions at time ``t`` (none by default).

        ``operator_power`` is the integrator's :attr:`~TimeIntegrator.operator_power`: when the step
        residual applies the spatial operator twice, conditions on ``A u`` may be needed too.
        """
        return []

    def initial_terms(self) -> list[ResidualTerm]:
        """Terms whose minimiser is the initial condition: ``u(x) - u_0(x)`` in the interior."""
        return [ResidualTerm("initial", lambda u, x: u(x) - self.initial(x), self.sampler(self.n_points))]

    def step_terms(self, integrator: TimeIntegrator, u_prev: Field, t: float, dt: float) -> list[ResidualTerm]:
        """Terms of one step from ``t`` to ``t + dt``: the integrator's residual, then the boundary terms."""
        if integrator.needs_linear and not self.linear:
            raise ValueError(f"integrator {integrator.name!r} needs a linear, time-independent problem and "
                             f"{self.name!r} is not; use 'midpoint' or 'implicit-euler'")
        pde = ResidualTerm("pde", lambda u, x: integrator.residual(self.rhs, u, u_prev, x, t, dt),
                           self.sampler(self.n_points), affine=self.linear and integrator.affine)
        return [pde] + self.boundary_terms(t + dt, integrator.operator_power)

    def config(self) -> dict:
        """JSON-serialisable description of the problem's parameters."""
        return {"name": self.name}

"""The INSR simulator: problems, time integrators, per-step fitting and ``evolve``."""

from .advection import Advection1D, gaussian_pulse
from .domain import Box
from .evolve import StepRecord, Trajectory, evolve, step_generator
from .fit import OPTIMIZERS, FitConfig, FitReport, ResidualTerm, fit_field
from .integrators import (INTEGRATORS, ExplicitEuler, GaussLegendre2, ImplicitEuler, Midpoint, TimeIntegrator,
                          Trapezoidal, get_integrator, register_integrator)
from .problem import Problem, relative_l2

__all__ = [
    "Problem", "Advection1D", "gaussian_pulse", "Box", "evolve", "Trajectory", "StepRecord", "step_generator",
    "FitConfig", "FitReport", "ResidualTerm", "fit_field", "OPTIMIZERS",
    "TimeIntegrator", "ExplicitEuler", "ImplicitEuler", "Midpoint", "Trapezoidal", "GaussLegendre2",
    "INTEGRATORS", "get_integrator", "register_integrator", "relative_l2",
]

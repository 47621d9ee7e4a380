"""Grid and mesh baselines that solve the same problems as the neural solvers, the classical way."""

from .advection import SCHEMES, GridAdvection1D, GridTrajectory

__all__ = ["GridAdvection1D", "GridTrajectory", "SCHEMES"]

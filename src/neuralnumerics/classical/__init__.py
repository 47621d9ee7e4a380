"""Grid and mesh baselines that solve the same problems as the neural solvers, the classical way."""

from .advection import SCHEMES, GridAdvection1D, GridTrajectory
from .elasticity import ElasticFEM, StaticResult, box_mesh, rectangle_mesh
from .fluid import StableFluids2D
from .smoke import Smoke

__all__ = ["GridAdvection1D", "GridTrajectory", "SCHEMES", "StableFluids2D", "Smoke", "ElasticFEM", "StaticResult",
           "rectangle_mesh", "box_mesh"]

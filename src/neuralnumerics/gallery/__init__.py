"""Model problems with known structure, generated procedurally (nothing is downloaded).

Tank pressure systems (:mod:`.tanks`), and families of PDE linear systems for sequence solvers
(:mod:`.pde_systems`: Darcy flow, Poisson, Helmholtz, heat).
"""

from .pde_systems import PDESystems, darcy_flow, gaussian_random_field, heat, helmholtz, poisson
from .tanks import OBSTACLES, tank_system

__all__ = ["tank_system", "OBSTACLES", "PDESystems", "gaussian_random_field", "darcy_flow", "poisson", "helmholtz",
           "heat"]

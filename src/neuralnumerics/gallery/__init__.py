"""Model problems with known structure, generated procedurally (nothing is downloaded).

Tank pressure systems (:mod:`.tanks`), the pressure systems of smoke plumes past obstacles (:mod:`.smoke`),
and families of PDE linear systems for sequence solvers
(:mod:`.pde_systems`: Darcy flow, Poisson, Helmholtz, heat).
"""

from .pde_systems import PDESystems, darcy_flow, gaussian_random_field, heat, helmholtz, poisson
from .smoke import OBSTACLE_KINDS, obstacle_mask, smoke_systems
from .tanks import OBSTACLES, tank_system

__all__ = ["tank_system", "OBSTACLES", "PDESystems", "gaussian_random_field", "darcy_flow", "poisson", "helmholtz",
           "heat", "smoke_systems", "obstacle_mask", "OBSTACLE_KINDS"]

"""Optimal transport: sliced Wasserstein estimators with control variates, their directions and the 1D
Wasserstein distance they are built from.

:func:`sliced_wasserstein` estimates the sliced ``p``-Wasserstein distance between (batches of, weighted)
point clouds by plain Monte Carlo or with the lower- and upper-bound Gaussian control variates of Nguyen &
Ho (ICLR 2024); :func:`random_directions` draws i.i.d., orthogonal or quasi-Monte Carlo directions;
:func:`wasserstein_1d` is the exact 1D distance.
"""

from .directions import DIRECTION_KINDS, random_directions
from .sliced import CONTROL_VARIATES, SlicedInfo, sliced_wasserstein
from .wasserstein1d import wasserstein_1d

__all__ = ["sliced_wasserstein", "SlicedInfo", "CONTROL_VARIATES", "random_directions", "DIRECTION_KINDS",
           "wasserstein_1d"]

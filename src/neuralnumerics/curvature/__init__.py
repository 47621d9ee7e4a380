"""Curvature: M-FAC inverse empirical Fisher operators, the M-FAC optimiser and M-FAC pruning.

:class:`StaticMFAC` (a fixed set of gradients, for pruning) and :class:`SlidingMFAC` (a sliding window of
the last ``m`` gradients, for optimisation) are :class:`~neuralnumerics.linalg.LinearOperator` subclasses
for ``F^{-1}``, ``F = damp I + G^T G / m`` (symmetric positive definite, tagged so), so they fit any
operator or preconditioner slot of :mod:`neuralnumerics.linalg`. :class:`MFAC` is the
``torch.optim.Optimizer`` that steps along ``-lr F^{-1} g``. :func:`mfac_prune` prunes a model with the
Optimal Brain Surgeon and :class:`StaticMFAC` (one step: :func:`obs_prune`); :func:`magnitude_prune` is
the baseline and :func:`apply_masks` keeps pruned weights at zero while fine-tuning.
"""

from .mfac import SlidingMFAC, StaticMFAC
from .optim import MFAC
from .pruning import OBSResult, apply_masks, magnitude_prune, mfac_prune, obs_prune

__all__ = ["StaticMFAC", "SlidingMFAC", "MFAC", "OBSResult", "obs_prune", "mfac_prune", "magnitude_prune",
           "apply_masks"]

"""Curvature: M-FAC inverse empirical Fisher operators and the M-FAC optimiser.

:class:`StaticMFAC` (a fixed set of gradients, for pruning) and :class:`SlidingMFAC` (a sliding window of
the last ``m`` gradients, for optimisation) are :class:`~neuralnumerics.linalg.LinearOperator` subclasses
for ``F^{-1}``, ``F = damp I + G^T G / m`` (symmetric positive definite, tagged so), so they fit any
operator or preconditioner slot of :mod:`neuralnumerics.linalg`. :class:`MFAC` is the
``torch.optim.Optimizer`` that steps along ``-lr F^{-1} g``.
"""

from .mfac import SlidingMFAC, StaticMFAC
from .optim import MFAC

__all__ = ["StaticMFAC", "SlidingMFAC", "MFAC"]

"""Sliced Wasserstein gradient flows: point clouds moved onto a target by explicit Euler steps on SW.

The paper's demonstration (Nguyen & Ho 2024, Sec. 4.1): the points ``x_i`` of a source cloud follow
``dx_i/dt = -grad_{x_i} (n SW_p(x, y))`` towards the target cloud ``y``, each step estimating SW from a
few random directions with or without a control variate; a lower-variance estimator moves the cloud
closer to the target in the same number of steps. :class:`SlicedFlow` advances one cloud per estimator
from the same start, with the same directions at every step (common random numbers), so that the
estimators differ in nothing else; :func:`exact_wasserstein` measures where each cloud is.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .directions import DIRECTION_KINDS, random_directions
from .sliced import sliced_wasserstein

__all__ = ["SlicedFlow", "exact_wasserstein", "ESTIMATORS"]

# the paper's names for the estimators, and the control variate each uses
ESTIMATORS = {"sw": None, "lcv-sw": "lower", "ucv-sw": "upper"}


def exact_wasserstein(x: torch.Tensor, y: torch.Tensor, *, p: float = 2) -> float:
    """The exact ``W_p`` distance between two clouds of equally many, equally weighted points.

    With uniform weights and equal sizes an optimal plan is a permutation (Birkhoff), found here by
    :func:`scipy.optimize.linear_sum_assignment` on the ``|x_i - y_j|^p`` costs in float64, ``O(n^3)``.

    Args:
        x, y: ``(n, d)`` each.
        p: the order, ``>= 1``.

    Returns:
        ``W_p`` (the ``p``-th root of the optimal mean cost).

    Raises:
        ValueError: clouds of different shapes or not 2D.

    Equivalent to ``ot.emd2(a, b, ot.dist(x, y, p=p) ** ...) ** (1/p)`` of POT with uniform ``a``, ``b``.
    """
    from scipy.optimize import linear_sum_assignment

    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.ndim != 2 or x.shape != y.shape:
        raise ValueError("exact_wasserstein: x and y must be tensors of the same shape (n, d), got "
                         f"{getattr(x, 'shape', type(x).__name__)} and {getattr(y, 'shape', type(y).__name__)}; "
                         "for unequal sizes or weights use POT's ot.emd2")
    a = x.detach().to("cpu", torch.float64).numpy()
    b = y.detach().to("cpu", torch.float64).numpy()
    cost = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1) ** p
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean()) ** (1.0 / p)


class SlicedFlow:
    """Explicit Euler steps of the sliced Wasserstein gradient flow, one cloud per estimator.

    Each :meth:`step` draws ``n_projections`` directions once and moves every cloud ``x`` by
    ``x <- x - step_size * grad_x (n SW_p(x, target))`` with its estimator (``n`` the number of points,
    as in the paper's code, so that each point moves by an ``O(1)`` amount).

    Args:
        source: ``(n, d)``, the starting cloud (copied).
        target: ``(m, d)``, the cloud to flow to.
        estimators: names from :data:`ESTIMATORS` (``"sw"``: plain Monte Carlo; ``"lcv-sw"``,
            ``"ucv-sw"``: the lower and upper control variates).
        step_size: the Euler step (the paper's learning rate, 0.01).
        n_projections: directions per step (the paper's ``L = 10``).
        p: the order of SW.
        directions: ``"uniform"``, ``"orthogonal"`` or ``"qmc"``.
        generator: the random source (None: a fresh generator seeded with 0).

    Attributes:
        clouds: ``{estimator: (n, d) tensor}``, the current clouds.
        step_count: steps taken.
        last_loss: ``{estimator: float}``, each flow's SW estimate at the last step (before it moved).

    Raises:
        ValueError: bad clouds, an unknown estimator or kind of directions, non-positive sizes.
    """

    def __init__(self, source: torch.Tensor, target: torch.Tensor, *, estimators=tuple(ESTIMATORS),
                 step_size: float = 0.01, n_projections: int = 10, p: float = 2, directions: str = "uniform",
                 generator: torch.Generator | None = None) -> None:
        who = "SlicedFlow"
        if not isinstance(source, torch.Tensor) or source.ndim != 2:
            raise ValueError(f"{who}: source must be a (n, d) tensor, got {getattr(source, 'shape', type(source).__name__)}")
        if not isinstance(target, torch.Tensor) or target.ndim != 2 or target.shape[1] != source.shape[1]:
            raise ValueError(f"{who}: target must be a (m, {source.shape[1]}) tensor, got "
                             f"{getattr(target, 'shape', type(target).__name__)}")
        estimators = tuple(estimators)
        unknown = [e for e in estimators if e not in ESTIMATORS]
        if unknown or not estimators:
            raise ValueError(f"{who}: unknown estimators {unknown}; choose from {', '.join(ESTIMATORS)}")
        if not (isinstance(step_size, numbers.Real) and math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"{who}: step_size must be a positive number, got {step_size!r}")
        if isinstance(n_projections, bool) or not isinstance(n_projections, numbers.Integral) or n_projections < 1:
            raise ValueError(f"{who}: n_projections must be a positive integer, got {n_projections!r}")
        if directions not in DIRECTION_KINDS:
            raise ValueError(f"{who}: unknown directions {directions!r}; choose one of {', '.join(DIRECTION_KINDS)}")
        self.target = target.detach()
        self.estimators = estimators
        self.step_size = float(step_size)
        self.n_projections = int(n_projections)
        self.p = p
        self.directions = directions
        self.generator = torch.Generator().manual_seed(0) if generator is None else generator
        self.clouds = {e: source.detach().clone() for e in estimators}
        self.step_count = 0
        self.last_loss: dict[str, float] = {}

    def step(self) -> dict[str, float]:
        """One Euler step of every flow; returns each flow's SW estimate before the step."""
        x0 = next(iter(self.clouds.values()))
        theta = random_directions(self.n_projections, x0.shape[1], kind=self.directions, generator=self.generator,
                                  dtype=x0.dtype, device=x0.device)
        losses = {}
        for name, x in self.clouds.items():
            x = x.detach().requires_grad_(True)
            sw = sliced_wasserstein(x, self.target, p=self.p, projections=theta, control_variate=ESTIMATORS[name])
            (grad,) = torch.autograd.grad(x.shape[0] * sw, x)
            self.clouds[name] = (x - self.step_size * grad).detach()
            losses[name] = float(sw.detach())
        self.step_count += 1
        self.last_loss = losses
        return losses

    def state_dict(self) -> dict:
        """The clouds, the step count and the generator's state: enough to continue bit for bit."""
        return {"clouds": {k: v.cpu() for k, v in self.clouds.items()}, "step": self.step_count,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`.

        Raises:
            ValueError: a state for other estimators or cloud shapes.
        """
        clouds = state.get("clouds") if isinstance(state, dict) else None
        if not isinstance(clouds, dict) or set(clouds) != set(self.estimators):
            raise ValueError(f"SlicedFlow.load_state_dict: the state holds clouds for "
                             f"{sorted(clouds) if isinstance(clouds, dict) else None}, this flow has {list(self.estimators)}")
        for name, cloud in clouds.items():
            if tuple(cloud.shape) != tuple(self.clouds[name].shape):
                raise ValueError(f"SlicedFlow.load_state_dict: cloud {name!r} has shape {tuple(cloud.shape)}, expected "
                                 f"{tuple(self.clouds[name].shape)}")
        ref = next(iter(self.clouds.values()))
        self.clouds = {k: v.to(dtype=ref.dtype, device=ref.device) for k, v in clouds.items()}
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])

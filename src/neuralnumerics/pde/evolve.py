"""``evolve``: march an INSR field through time, one weight fit per step."""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from .._status import ConvergenceWarning, StepDivergedError
from ..fields import flat_params, functional_field, load_flat_params
from .fit import FitConfig, FitReport, fit_field
from .integrators import TimeIntegrator, get_integrator
from .problem import Problem, relative_l2

__all__ = ["evolve", "Trajectory", "StepRecord", "step_generator"]


# a step whose fit stops with a loss above this multiple of its target (100x the tolerance on the RMS
# residual) is kept, with a ConvergenceWarning
_WARN_FACTOR = 1e4


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random generator of time step ``step`` of a run with ``seed``.

    Each step draws from its own stream, so a resumed run samples exactly what an uninterrupted one
    does without saving generator state.
    """
    state = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class StepRecord:
    """Metrics of one time step (``metrics.jsonl`` holds one per line)."""

    step: int
    t: float
    loss: float
    fit_iters: int
    seconds: float
    status: str
    error: float | None = None
    losses: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Trajectory:
    """The weights of a neural field at each stored time step.

    ``traj.field(step)`` is a callable taking points ``(n, dim)`` and returning values
    ``(n, channels)``; ``traj.times[k]`` is the time of ``traj.steps[k]``.
    """

    def __init__(self, module: nn.Module, dt: float, records: list[StepRecord] | None = None) -> None:
        self.module = module
        self.dt = float(dt)
        self._weights: dict[int, torch.Tensor] = {}
        self.records: list[StepRecord] = list(records or [])

    def add(self, step: int, weights: torch.Tensor) -> None:
        self._weights[int(step)] = weights.detach().clone()

    @property
    def steps(self) -> list[int]:
        return sorted(self._weights)

    @property
    def times(self) -> list[float]:
        return [s * self.dt for s in self.steps]

    @property
    def last_step(self) -> int:
        if not self._weights:
            raise IndexError("the trajectory is empty")
        return max(self._weights)

    def weights(self, step: int) -> torch.Tensor:
        """Flat weights at ``step``."""
        try:
            return self._weights[int(step)]
        except KeyError:
            raise IndexError(f"step {step} is not stored; stored steps are "
                             f"{self.steps[:3]}...{self.steps[-3:]}" if len(self._weights) > 6 else
                             f"step {step} is not stored; stored steps are {self.steps}") from None

    def field(self, step: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The field at ``step`` as a callable ``(n, dim) -> (n, channels)`` (no gradient tracking)."""
        f = functional_field(self.module, self.weights(step))
        ref = self._weights[int(step)]

        def evaluate(x: torch.Tensor) -> torch.Tensor:
            if not isinstance(x, torch.Tensor) or x.ndim != 2:
                raise ValueError("points must be a tensor of shape (n, dim)")
            with torch.no_grad():
                return f(x.to(dtype=ref.dtype, device=ref.device))

        return evaluate

    def __len__(self) -> int:
        return len(self._weights)


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "float64": torch.float64}[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; choose float32 or float64") from None
    return dtype


def _rms(u, x: torch.Tensor) -> float:
    """Root-mean-square size of the field ``u`` over the points ``x`` (the fit's tolerance scale)."""
    with torch.no_grad():
        values = u(x)
    rms = float(values.double().square().mean().sqrt())
    return rms if rms > 0 else 1.0


def evolve(problem: Problem, *, dt: float, steps: int, integrator: str | TimeIntegrator = "midpoint",
           fit: FitConfig | None = None, initial_fit: FitConfig | None = None, field: nn.Module | None = None,
           seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
           callback: Callable[[StepRecord, Trajectory], None] | None = None,
           start: tuple[int, torch.Tensor] | tuple[int, torch.Tensor, torch.Tensor | None] | None = None,
           keep: str = "all", extrapolate: bool = True) -> Trajectory:
    """Solve ``problem`` from ``t = 0`` to ``t = steps * dt`` with an INSR field.

    Step 0 fits the field to the initial condition; each later step fits new weights, starting from
    the previous ones, so that the integrator's residual against the previous field vanishes.

    Args:
        problem: the PDE (:class:`~neuralnumerics.pde.Problem`).
        dt: time step, positive.
        steps: number of time steps after the initial fit.
        integrator: a registered name (see ``neuralnumerics list``) or an instance.
        fit: per-step fit configuration (default Levenberg-Marquardt).
        initial_fit: fit configuration of step 0 (default: ``fit`` after a 300-iteration Adam warm-up,
            with at least 100 iterations for lm).
        field: the network to evolve (default ``problem.default_field``); its weights are overwritten.
        seed: fixes the initialisation and all sampling of the run.
        device, dtype: of the field (``dtype`` as a torch dtype or ``"float32"``/``"float64"``); by default
            a given field keeps its dtype and a new one is float64, where the per-step fits converge in
            fewer iterations than in float32.
        callback: called as ``callback(record, trajectory)`` after every successful step.
        start: ``(step, weights)`` or ``(step, weights, previous_weights)`` to continue a run from a stored
            step instead of fitting ``u_0`` (pass the previous step's weights too to reproduce an
            uninterrupted run exactly when ``extrapolate`` is on).
        keep: ``"all"`` stores the weights of every step; ``"last"`` only the newest.
        extrapolate: start each fit from the linear extrapolation ``2 w_n - w_{n-1}`` of the last two
            steps' weights instead of ``w_n``; the fit then needs fewer iterations.

    Returns:
        A :class:`Trajectory`; ``trajectory.records`` holds a :class:`StepRecord` per computed step.

    Raises:
        ValueError: on bad arguments.
        StepDivergedError: when a fit produces a non-finite loss; its ``result`` is the trajectory up to
            the last good step, which is never overwritten by the failed one.
    """
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if keep not in ("all", "last"):
        raise ValueError(f"keep must be 'all' or 'last', got {keep!r}")
    integrator = get_integrator(integrator)
    if integrator.needs_linear and not problem.linear:
        raise ValueError(f"integrator {integrator.name!r} needs a linear, time-independent problem and "
                         f"{problem.name!r} is not; use 'midpoint' or 'implicit-euler'")
    fit = fit or FitConfig()
    if initial_fit is None:
        # from a random initialisation, a short Adam warm-up keeps lm/lbfgs out of poor local minima
        initial_fit = replace(fit, warmup_iters=300 if fit.optimizer != "adam" else 0,
                              max_iters=max(fit.iters, 100) if fit.optimizer == "lm" else fit.max_iters)
    if dtype is None:
        # a given field keeps its dtype; a new one is float64, in which the per-step Levenberg-Marquardt
        # fits reach their tolerance in fewer iterations than in float32 (and so run faster)
        dtype = next(field.parameters()).dtype if field is not None else torch.float64
    dtype = _resolve_dtype(dtype)
    if field is None:
        field = problem.default_field(generator=torch.Generator().manual_seed(int(seed)), dtype=dtype,
                                      device=device)
    else:
        field = field.to(dtype=dtype, device=device) if device is not None else field.to(dtype=dtype)
    frozen = copy.deepcopy(field).requires_grad_(False)
    traj = Trajectory(frozen, dt)
    eval_x = problem.eval_points(dtype=dtype, device=next(field.parameters()).device)

    def finish(step: int, report: FitReport) -> None:
        weights = flat_params(field)
        error = None
        exact = problem.exact(eval_x, step * dt)
        if exact is not None:
            with torch.no_grad():
                error = relative_l2(functional_field(frozen, weights)(eval_x), exact)
        record = StepRecord(step=step, t=step * dt, loss=report.loss, fit_iters=report.iters,
                            seconds=report.seconds, status=report.status.value, error=error,
                            losses=report.losses)
        if not report.status.ok:
            raise StepDivergedError(f"time step {step} (t={step * dt:g}) failed: {report.status.message()}",
                                    report.status, traj)
        if report.target > 0 and report.loss > _WARN_FACTOR * report.target:
            warnings.warn(f"time step {step} (t={step * dt:g}): the fit stopped ({report.status.value}) at loss "
                          f"{report.loss:.3g}, {report.loss / report.target:.3g}x its target; the step is kept, "
                          f"but its error may be large. A smaller dt, a larger network or more fit iterations "
                          f"(--max-fit-iters) may help.", ConvergenceWarning, stacklevel=3)
        if keep == "last":
            traj._weights.clear()
        traj.add(step, weights)
        traj.records.append(record)
        if callback is not None:
            callback(record, traj)

    prev_weights: torch.Tensor | None = None
    if start is None:
        first = 0
        t0 = time.perf_counter()
        init_terms = problem.initial_terms()
        report = fit_field(field, init_terms, initial_fit, generator=step_generator(seed, 0),
                           scale=_rms(problem.initial, eval_x))
        report.seconds = time.perf_counter() - t0
        finish(0, report)
    else:
        first = int(start[0])
        load_flat_params(field, start[1])
        traj.add(first, flat_params(field))
        if len(start) > 2 and start[2] is not None:
            prev_weights = start[2].detach().to(dtype=dtype, device=next(field.parameters()).device)
    for step in range(first + 1, steps + 1):
        t_prev = (step - 1) * dt
        current = flat_params(field)
        u_prev = functional_field(frozen, current)
        candidates: tuple[torch.Tensor, ...] = ()
        if extrapolate and prev_weights is not None:
            # the extrapolation is only a guess: consecutive fits may land in different (equivalent)
            # minima of the network, and then it points far away; the fit keeps the better start
            load_flat_params(field, 2 * current - prev_weights)
            candidates = (current,)
        prev_weights = current
        t0 = time.perf_counter()
        terms = problem.step_terms(integrator, u_prev, t_prev, dt)
        report = fit_field(field, terms, fit, generator=step_generator(seed, step),
                           scale=_rms(u_prev, eval_x) / dt, candidates=candidates)
        report.seconds = time.perf_counter() - t0
        finish(step, report)
    return traj

"""Statuses with actionable messages, and the errors and warnings the library raises."""

from __future__ import annotations

import enum

__all__ = ["Status", "NumericalError", "StepDivergedError", "ConvergenceWarning"]


class Status(enum.Enum):
    """Outcome of an iterative computation (a field fit, a linear solve, ...)."""

    SUCCESS = "success"
    MAX_ITERS = "max_iters"
    STAGNATED = "stagnated"
    DIVERGED = "diverged"

    @property
    def ok(self) -> bool:
        """Whether the result can be used: converged, or stopped at the iteration cap with a finite loss."""
        return self in (Status.SUCCESS, Status.MAX_ITERS, Status.STAGNATED)

    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.SUCCESS: "converged to the requested tolerance.",
    Status.MAX_ITERS: ("stopped at the iteration cap before reaching the tolerance; raise max_iters or loosen "
                       "the tolerance if the loss is too high."),
    Status.STAGNATED: ("stopped because no step lowered the loss any more (the damping reached its cap); the "
                       "result is the best found. A larger network or more points may fit better."),
    Status.DIVERGED: ("the loss became NaN or infinite. Reduce the time step (dt) or the learning rate, check the "
                      "initial condition and problem parameters for NaN/inf, or switch to float64 (--dtype float64)."),
}


class NumericalError(RuntimeError):
    """A computation failed numerically. ``status`` says how; ``result`` holds what was computed before."""

    def __init__(self, message: str, status: Status, result: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.result = result


class StepDivergedError(NumericalError):
    """A time step of a simulation failed; ``result`` is the trajectory up to the last good step."""


class ConvergenceWarning(UserWarning):
    """An iterative method stopped before its tolerance but produced a usable result."""

"""``linear_solve``: the one entry point for every linear solver, and the types it returns."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .._status import NumericalError, Status
from .operators import LinearOperator, as_operator

__all__ = ["LinearSolver", "Solution", "SolveStats", "LinearSolveError", "linear_solve"]


@dataclass
class SolveStats:
    """What a solve cost.

    Attributes:
        iterations: iterations of the solver (for a batch of right-hand sides: the most any column took).
        residual_history: relative residual ``||b - A x|| / ||b||`` at the start and after each iteration
            (for a batch: the largest over the columns).
        seconds: wall-clock time of the solve.
        matvecs: operator applications (a batch of k columns counts once).
        extra: solver-specific figures (e.g. the omega a bandit chose).
    """

    iterations: int = 0
    residual_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    matvecs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def residual(self) -> float:
        """The final relative residual."""
        return self.residual_history[-1] if self.residual_history else math.nan


@dataclass
class Solution:
    """Result of :func:`linear_solve`.

    Attributes:
        x: the solution, shaped like ``b``.
        status: how the solve ended (:class:`~neuralnumerics.Status`).
        stats: :class:`SolveStats`.
        state: what the solver carries to the next system of a sequence (pass it as ``state=``), or None.
        message: an actionable sentence on the status.
    """

    x: torch.Tensor
    status: Status
    stats: SolveStats
    state: Any = None
    message: str = ""


class LinearSolveError(NumericalError):
    """A linear solve did not converge (raised by ``linear_solve(..., throw=True)``); ``result`` is the Solution."""


class LinearSolver:
    """Base of the solvers: configuration in the constructor, data in :func:`linear_solve`.

    Subclasses implement :meth:`_solve`. Class attributes say what the solver needs:

    Attributes:
        needs_symmetric: the operator must be tagged symmetric.
        needs_positive_definite: the operator must be tagged positive definite.
        supports_batch: ``b`` may be ``(n, k)``; otherwise columns are solved one after another.
        accepts_preconditioner: ``M`` may be given.
    """

    needs_symmetric = False
    needs_positive_definite = False
    supports_batch = False
    accepts_preconditioner = True

    def __init__(self, *, rtol: float = 1e-6, atol: float = 0.0, max_iters: int | None = None) -> None:
        for name, v in (("rtol", rtol), ("atol", atol)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{type(self).__name__}: {name} must be a finite non-negative number, got {v!r}")
        if rtol == 0 and atol == 0:
            raise ValueError(f"{type(self).__name__}: rtol and atol are both 0; the solve could never stop")
        if max_iters is not None and (isinstance(max_iters, bool) or int(max_iters) != max_iters or max_iters < 1):
            raise ValueError(f"{type(self).__name__}: max_iters must be a positive integer, got {max_iters!r}")
        self.rtol, self.atol = float(rtol), float(atol)
        self.max_iters = None if max_iters is None else int(max_iters)

    def iteration_cap(self, n: int) -> int:
        """``max_iters``, or a default proportional to the size (10 n, at least 100)."""
        return self.max_iters if self.max_iters is not None else max(100, 10 * n)

    def _solve(self, op: LinearOperator, b: torch.Tensor, x0: torch.Tensor, M: LinearOperator | None,
               state: Any, stats: SolveStats) -> tuple[torch.Tensor, Status, Any]:
        """Solve ``op x = b`` from ``x0``; fill ``stats`` (iterations, history, matvecs); return (x, status, state)."""
        raise NotImplementedError

    def _start(self, op: LinearOperator, b: torch.Tensor, x0: torch.Tensor, stats: SolveStats):
        """Common start of a one-vector solve: ``(x, r, ||r||, threshold, ||b|| or 1)``.

        Records the initial relative residual in ``stats`` (and the product when ``x0`` is not zero).
        """
        bnorm = float(b.norm())
        threshold = max(self.rtol * bnorm, self.atol)
        denom = bnorm if bnorm > 0 else 1.0
        x = x0.clone()
        nonzero_start = bool(x.any())
        r = b - op.mv(x) if nonzero_start else b.clone()
        stats.matvecs += int(nonzero_start)
        rnorm = float(r.norm())
        stats.residual_history.append(rnorm / denom)
        return x, r, rnorm, threshold, denom

    def stopping_threshold(self, bnorm: torch.Tensor) -> torch.Tensor:
        """Residual norms at which each column has converged: ``max(rtol ||b||, atol)``."""
        return torch.clamp(self.rtol * bnorm, min=self.atol)

    def messages(self) -> dict[Status, str]:
        """Actionable sentences per status; subclasses add their own."""
        return {
            Status.SUCCESS: "converged to the requested tolerance.",
            Status.MAX_ITERS: (f"{type(self).__name__} stopped at its iteration cap before reaching rtol={self.rtol:g}; "
                               "raise max_iters, loosen rtol, or add a preconditioner (M=...)."),
            Status.STAGNATED: (f"{type(self).__name__} stopped making progress (breakdown or stagnation); the "
                               "system may be singular or badly conditioned: check the operator, or try GMRES."),
            Status.DIVERGED: ("the iteration produced NaN or infinity; check the operator and the right-hand side for "
                              "non-finite values, and the preconditioner for zero or negative diagonal entries."),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rtol={self.rtol:g}, atol={self.atol:g}, max_iters={self.max_iters})"


def linear_solve(op, b: torch.Tensor, solver: LinearSolver | None = None, *, x0: torch.Tensor | None = None,
                 M=None, state: Any = None, throw: bool = True) -> Solution:
    """Solve ``A x = b``.

    Args:
        op: the operator (anything :func:`~neuralnumerics.linalg.as_operator` accepts, or a LinearOperator).
        b: right-hand side, ``(n,)``, or ``(n, k)`` for k systems with the same operator.
        solver: a solver instance (default :class:`~neuralnumerics.linalg.CG` for operators tagged SPD,
            :class:`~neuralnumerics.linalg.GMRES` otherwise).
        x0: initial guess shaped like ``b`` (default zero).
        M: preconditioner: an operator approximating ``A^{-1}`` (e.g. :class:`~neuralnumerics.linalg.Jacobi`).
        state: the ``state`` of the previous solution of a sequence (recycled subspaces, bandit statistics).
        throw: raise :class:`LinearSolveError` when the solve does not converge; otherwise return the
            solution with its status.

    Returns:
        A :class:`Solution` with ``x``, ``status``, ``stats`` and ``state``.

    Raises:
        ValueError: on a non-square operator, mismatched shapes, dtypes or devices, non-finite ``b`` or
            ``x0``, or an operator without the structure the solver needs (e.g. CG on one not tagged SPD).
        LinearSolveError: when ``throw`` and the solve does not converge.
    """
    op = as_operator(op)
    if solver is None:
        from .cg import CG
        from .gmres import GMRES

        solver = CG() if (op.symmetric and op.positive_definite) else GMRES()
    if not isinstance(solver, LinearSolver):
        raise ValueError(f"solver must be a LinearSolver instance (e.g. CG()), got {type(solver).__name__}")
    name = type(solver).__name__
    if not op.is_square:
        raise ValueError(f"linear_solve needs a square operator, got shape {op.shape}; for least squares use "
                         "torch.linalg.lstsq")
    b = _check_vector(b, op, "b")
    if x0 is not None:
        x0 = _check_vector(x0, op, "x0")
        if x0.shape != b.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)}, b has {tuple(b.shape)}; they must match")
    if solver.needs_symmetric and not op.symmetric:
        raise ValueError(f"{name} needs a symmetric operator and this {type(op).__name__} is not tagged symmetric; "
                         "tag it (symmetric=True) if it is, or use GMRES")
    if solver.needs_positive_definite and not op.positive_definite and not getattr(op, "singular", False):
        raise ValueError(f"{name} needs a positive definite operator and this {type(op).__name__} is not tagged "
                         "positive_definite; tag it if it is, or use GMRES")
    if M is not None:
        if not solver.accepts_preconditioner:
            raise ValueError(f"{name} takes no preconditioner (M)")
        M = as_operator(M)
        if M.shape != op.shape:
            raise ValueError(f"the preconditioner has shape {M.shape}, the operator {op.shape}")
    stats = SolveStats()
    start = time.perf_counter()
    if x0 is None:
        x0 = torch.zeros_like(b)
    if b.ndim == 2 and not solver.supports_batch:
        xs, statuses, states = [], [], state
        for j in range(b.shape[1]):
            col_stats = SolveStats()
            xj, sj, states = solver._solve(op, b[:, j], x0[:, j], M, states, col_stats)
            xs.append(xj)
            statuses.append(sj)
            stats.iterations = max(stats.iterations, col_stats.iterations)
            stats.matvecs += col_stats.matvecs
            stats.residual_history = _merge_histories(stats.residual_history, col_stats.residual_history)
            stats.extra.update(col_stats.extra)
        x = torch.stack(xs, dim=1)
        status = next((s for s in statuses if s is not Status.SUCCESS), Status.SUCCESS)
        state = states
    else:
        x, status, state = solver._solve(op, b, x0, M, state, stats)
    stats.seconds = time.perf_counter() - start
    solution = Solution(x, status, stats, state, solver.messages()[status])
    if throw and status is not Status.SUCCESS:
        raise LinearSolveError(f"{name}: {solution.message} (relative residual {stats.residual:.3g} after "
                               f"{stats.iterations} iterations)", status, solution)
    return solution


def _check_vector(v, op: LinearOperator, name: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(v).__name__}")
    if v.ndim not in (1, 2) or v.shape[0] != op.shape[0]:
        raise ValueError(f"{name} has shape {tuple(v.shape)}; the operator is {op.shape[0]}x{op.shape[1]}, so "
                         f"{name} must be ({op.shape[0]},) or ({op.shape[0]}, k)")
    if v.dtype != op.dtype:
        raise ValueError(f"{name} is {v.dtype} and the operator {op.dtype}; convert one of them")
    if v.device != op.device:
        raise ValueError(f"{name} is on {v.device} and the operator on {op.device}; move one of them")
    if not torch.isfinite(v).all():
        bad = int((~torch.isfinite(v)).sum())
        raise ValueError(f"{name} has {bad} non-finite entries (NaN or inf)")
    return v


def _merge_histories(a: list[float], b: list[float]) -> list[float]:
    """Elementwise max, padding the shorter history with its last value."""
    if not a:
        return list(b)
    n = max(len(a), len(b))
    pad = lambda h: h + [h[-1]] * (n - len(h)) if h else [0.0] * n  # noqa: E731
    return [max(u, v) for u, v in zip(pad(a), pad(b))]

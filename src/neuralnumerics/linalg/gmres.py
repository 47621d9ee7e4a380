"""Restarted GMRES for general (nonsymmetric) square systems."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._status import Status
from .solve import LinearSolver, SolveStats

__all__ = ["GMRES", "arnoldi_lstsq"]


class GMRES(LinearSolver):
    """Restarted GMRES(m) with right preconditioning.

    Each cycle builds an orthonormal Krylov basis by Arnoldi (classical Gram-Schmidt with a second pass
    when the first cancels much of the vector, the DGKS criterion; as stable as modified Gram-Schmidt and
    made of matrix products) and minimises the residual over it
    with Givens rotations. With right preconditioning ``A M y = b, x = M y`` the monitored residual is the
    true residual of ``A x = b``.

    Args:
        restart: Krylov dimension per cycle (``m``).
        rtol, atol: stop when ``||b - A x|| <= max(rtol ||b||, atol)``.
        max_iters: cap on the total number of inner iterations (default ``10 n``).

    Equivalent to ``scipy.sparse.linalg.gmres`` with ``restart=m`` (same iterates in exact arithmetic;
    SciPy preconditions on the left, so its monitored residuals differ when ``M`` is given).

    References:
        Saad, Schultz. "GMRES: a generalized minimal residual algorithm for solving nonsymmetric linear
        systems", SIAM J. Sci. Stat. Comput. 7 (1986).
    """

    def __init__(self, *, restart: int = 30, rtol: float = 1e-6, atol: float = 0.0, max_iters: int | None = None):
        super().__init__(rtol=rtol, atol=atol, max_iters=max_iters)
        if isinstance(restart, bool) or int(restart) != restart or restart < 1:
            raise ValueError(f"GMRES: restart must be a positive integer, got {restart!r}")
        self.restart = int(restart)

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        n = b.shape[0]
        cap = self.iteration_cap(n)
        x, r, beta, threshold, denom = self._start(op, b, x0, stats)
        if beta <= threshold:
            return x, Status.SUCCESS, state
        total = 0
        while total < cap:
            m = min(self.restart, cap - total, n)
            y, V, k, res, finite = arnoldi_lstsq(op, r, beta, m, M, stop_at=threshold,
                                                 history=stats.residual_history, denom=denom)
            stats.matvecs += k
            total += k
            if not finite:
                stats.iterations = total
                return x, Status.DIVERGED, state
            update = V[:, :k] @ y
            x = x + (M.mv(update) if M is not None else update)
            r = b - op.mv(x)
            stats.matvecs += 1
            beta_new = float(r.norm())
            stats.iterations = total
            # the true residual replaces the last estimate of the cycle
            stats.residual_history[-1] = beta_new / denom
            if beta_new <= threshold:
                return x, Status.SUCCESS, state
            if not math.isfinite(beta_new):
                return x, Status.DIVERGED, state
            if beta_new >= beta * (1 - 1e-12) and k < m:  # breakdown without progress
                return x, Status.STAGNATED, state
            beta = beta_new
        return x, Status.MAX_ITERS, state


def arnoldi_lstsq(op, r0: torch.Tensor, beta: float, m: int, M=None, *, stop_at: float = 0.0,
                  history: list[float] | None = None, denom: float = 1.0, C: torch.Tensor | None = None):
    """``m`` steps of (right-preconditioned) Arnoldi from ``r0`` and the GMRES least-squares solution.

    Args:
        op, M: operator and optional right preconditioner.
        r0, beta: starting residual and its norm.
        m: at most this many steps; stops early once the residual estimate is at most ``stop_at``.
        history: relative residual estimates ``/ denom`` are appended to it.
        C: optional orthonormal columns ``(n, s)`` to project out of every new Krylov vector (the
            ``(I - C C^T) A`` operator of GCRO-DR); the caller accounts for the projection.

    Returns:
        ``(y, V, k, residual, finite)``: coefficients ``y`` (k,) of the update ``V[:, :k] y``, the basis
        ``V`` (n, m+1), the steps taken, the residual estimate, and whether everything stayed finite.
    """
    n = r0.shape[0]
    V = torch.zeros(n, m + 1, dtype=r0.dtype, device=r0.device)
    # the small least-squares problem lives in NumPy float64: its rotations are scalar work
    H = np.zeros((m + 1, m))
    cs, sn = np.zeros(m), np.zeros(m)
    g = np.zeros(m + 1)
    g[0] = beta
    V[:, 0] = r0 / beta
    k = 0
    res = beta
    for j in range(m):
        w = op.mv(M.mv(V[:, j]) if M is not None else V[:, j])
        if C is not None:
            w = w - C @ (C.mT @ w)
        basis = V[:, :j + 1]
        h = basis.mT @ w
        w_norm = float(w.norm())
        w = w - basis @ h
        hn = float(w.norm())
        if not math.isfinite(hn):
            return None, V, j, res, False
        if hn < 0.7 * w_norm:  # large cancellation: orthogonalise once more (Daniel-Gragg-Kaufman-Stewart)
            h2 = basis.mT @ w
            w = w - basis @ h2
            h = h + h2
            hn = float(w.norm())
        col = h.double().cpu().numpy()
        # apply the previous rotations, then make a new one
        for i in range(j):
            a, c = col[i], col[i + 1]
            col[i], col[i + 1] = cs[i] * a + sn[i] * c, -sn[i] * a + cs[i] * c
        a = col[j]
        rho = math.hypot(a, hn)
        cs[j], sn[j] = (a / rho, hn / rho) if rho > 0 else (1.0, 0.0)
        H[:j + 1, j] = col
        H[j, j] = rho
        g[j + 1] = -sn[j] * g[j]
        g[j] = cs[j] * g[j]
        k = j + 1
        res = abs(float(g[j + 1]))
        if history is not None:
            history.append(res / denom)
        if hn <= 1e-14 * max(1.0, float(np.abs(col).max())) or res <= stop_at:
            break
        V[:, j + 1] = w / hn
    y = _back_substitute(H[:k, :k], g[:k])
    return (torch.from_numpy(y).to(dtype=r0.dtype, device=r0.device), V, k, res, bool(np.isfinite(y).all()))


def _back_substitute(R: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Solve the upper-triangular ``R y = g``."""
    from scipy.linalg import solve_triangular

    return solve_triangular(R, g, lower=False, check_finite=False)

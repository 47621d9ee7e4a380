"""Conjugate gradients, preconditioned, for one or many right-hand sides."""

from __future__ import annotations

import math

import torch

from .._status import Status
from .solve import LinearSolver, SolveStats

__all__ = ["CG", "NotPositiveDefiniteError"]


class NotPositiveDefiniteError(ValueError):
    """CG met a direction of non-positive curvature: the operator or the preconditioner is not SPD."""


class CG(LinearSolver):
    """(Preconditioned) conjugate gradients for symmetric positive definite systems.

    Columns of a batch ``b`` of shape ``(n, k)`` are independent systems iterated together (one batched
    operator product per iteration); each stops when its residual is below ``max(rtol ||b||, atol)``.
    The residual is the recursively updated one, as in SciPy.

    Args:
        rtol, atol: stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (2-norm, per column).
        max_iters: iteration cap (default ``10 n``).

    Raises (from :func:`~neuralnumerics.linalg.linear_solve`):
        NotPositiveDefiniteError: when ``p^T A p <= 0`` (or ``r^T M r <= 0``) for some search direction.

    Equivalent to ``scipy.sparse.linalg.cg`` (same iterates in exact arithmetic).

    References:
        Hestenes, Stiefel. "Methods of conjugate gradients for solving linear systems", 1952.
    """

    needs_symmetric = True
    needs_positive_definite = True
    supports_batch = True

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        solve = self._solve_vector if b.ndim == 1 else self._solve_batch
        x, status = solve(op, b, x0, M, stats)
        return x, status, state

    def _solve_vector(self, op, b, x0, M, stats: SolveStats):
        """One right-hand side: scalars as Python floats, in-place updates (fewer kernels per iteration)."""
        x, r, rnorm, threshold, denom = self._start(op, b, x0, stats)
        if rnorm <= threshold:
            return x, Status.SUCCESS
        z = M.mv(r) if M is not None else r
        rz = float(r @ z) if M is not None else rnorm ** 2
        if rz < 0:
            raise NotPositiveDefiniteError("CG: r^T M r < 0 for the initial residual: the preconditioner M is not "
                                           "positive definite")
        p = z.clone()
        for it in range(self.iteration_cap(b.shape[0])):
            ap = op.mv(p)
            stats.matvecs += 1
            pap = float(p @ ap)
            if not pap > 0:
                if math.isnan(pap):
                    stats.iterations = it + 1
                    return x, Status.DIVERGED
                raise NotPositiveDefiniteError(
                    f"CG: p^T A p = {pap:.3g} <= 0 at iteration {it + 1}: the operator is not positive definite "
                    "(or not symmetric). Use GMRES for indefinite or nonsymmetric systems.")
            alpha = rz / pap
            x.add_(p, alpha=alpha)
            r.add_(ap, alpha=-alpha)
            rnorm = float(r.norm())
            stats.iterations = it + 1
            stats.residual_history.append(rnorm / denom)
            if not math.isfinite(rnorm):
                return x, Status.DIVERGED
            if rnorm <= threshold:
                return x, Status.SUCCESS
            if M is not None:
                z = M.mv(r)
                rz_new = float(r @ z)
                if not rz_new > 0:
                    raise NotPositiveDefiniteError("CG: r^T M r <= 0: the preconditioner M is not positive definite")
            else:
                z, rz_new = r, rnorm ** 2
            p.mul_(rz_new / rz).add_(z)
            rz = rz_new
        return x, Status.MAX_ITERS

    def _solve_batch(self, op, B, x0, M, stats: SolveStats):
        """Columns iterated together; converged columns are frozen (their step sizes are 0)."""
        X = x0.clone()
        bnorm = B.norm(dim=0)
        threshold = self.stopping_threshold(bnorm)
        denom = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
        nonzero_start = bool(X.any())
        R = B - op.mv(X) if nonzero_start else B.clone()
        stats.matvecs += int(nonzero_start)
        Z = M.mv(R) if M is not None else R
        rz = (R * Z).sum(0)
        if bool((rz < 0).any()):
            raise NotPositiveDefiniteError("CG: r^T M r < 0 for the initial residual: the preconditioner M is not "
                                           "positive definite")
        P = Z.clone()
        rnorm = R.norm(dim=0)
        stats.residual_history.append(float((rnorm / denom).max()))
        active = rnorm > threshold
        status = Status.MAX_ITERS
        for it in range(self.iteration_cap(B.shape[0])):
            if not bool(active.any()):
                status = Status.SUCCESS
                break
            AP = op.mv(P)
            stats.matvecs += 1
            pap = (P * AP).sum(0)
            bad = active & (pap <= 0) & (P.norm(dim=0) > 0)
            if bool(bad.any()):
                j = int(bad.nonzero()[0])
                raise NotPositiveDefiniteError(
                    f"CG: p^T A p = {float(pap[j]):.3g} <= 0 at iteration {it + 1}: the operator is not positive "
                    "definite (or not symmetric). Use GMRES for indefinite or nonsymmetric systems.")
            alpha = torch.where(active, rz / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(rz))
            X += alpha * P
            R -= alpha * AP
            if not bool(torch.isfinite(R).all()):
                status = Status.DIVERGED
                stats.iterations = it + 1
                break
            rnorm = R.norm(dim=0)
            stats.iterations = it + 1
            stats.residual_history.append(float((rnorm / denom).max()))
            active = active & (rnorm > threshold)
            if not bool(active.any()):
                status = Status.SUCCESS
                break
            Z = M.mv(R) if M is not None else R
            rz_new = (R * Z).sum(0)
            if bool((active & (rz_new <= 0)).any()):
                if M is not None:
                    raise NotPositiveDefiniteError("CG: r^T M r <= 0: the preconditioner M is not positive definite")
                status = Status.STAGNATED
                break
            beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            P = Z + beta * P
            rz = rz_new
        return X, status

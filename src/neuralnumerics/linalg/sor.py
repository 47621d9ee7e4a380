"""Successive over-relaxation: the SOR and SSOR iterations, the SSOR preconditioner, and Young's theory.

Write ``A = D + L + U`` (diagonal, strictly lower and strictly upper parts). One SOR iteration with
relaxation parameter ``omega`` is a forward Gauss-Seidel sweep whose updates are over-relaxed by
``omega``; in matrix form it is the sparse lower-triangular solve

    (D / omega + L) x_new = b - (U + (1 - 1 / omega) D) x,   i.e.   x_new = x + (D / omega + L)^{-1} (b - A x).

SSOR follows each forward sweep by a backward one (``D / omega + U``), which makes its preconditioner
symmetric when ``A`` is. The matrix is assembled once per solve with ``op.to_scipy()`` and the
triangular solves run in compiled code (SuperLU on the triangular factor in its natural order, so
there is no fill-in and no pivoting); the iteration runs on the CPU in float64, and the result is
returned in the dtype and on the device of ``b``.

For a consistently ordered matrix (e.g. the 5-point Laplacian in natural or red-black order) with
Jacobi spectral radius ``beta < 1``, Young's theory gives the SOR spectral radius in closed form
(:func:`sor_spectral_radius`) and the optimal ``omega`` (:func:`optimal_omega`); for the Poisson model
problem with mesh width ``h`` that optimum is ``2 / (1 + sin(pi h))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._status import Status
from .operators import LinearOperator, as_operator
from .solve import LinearSolver, SolveStats

__all__ = ["SOR", "SSOR", "SSORPreconditioner", "sor_spectral_radius", "optimal_omega", "sor_iteration_estimate"]


def check_omega(omega, owner: str) -> float:
    """``omega`` as a float, or a ValueError saying why it is not a valid relaxation parameter.

    Args:
        omega: the relaxation parameter.
        owner: the name used in the message (the class or function checking it).

    Returns:
        ``float(omega)``, which lies in ``(0, 2)``.

    Raises:
        ValueError: if ``omega`` is not a real number in the open interval ``(0, 2)``.
    """
    if isinstance(omega, bool) or not isinstance(omega, (int, float, np.floating, np.integer)):
        raise ValueError(f"{owner}: omega must be a real number in (0, 2), got {omega!r} "
                         f"({type(omega).__name__})")
    omega = float(omega)
    if not (0.0 < omega < 2.0):
        raise ValueError(f"{owner}: omega must lie in the open interval (0, 2), got {omega!r}; outside it SOR "
                         "diverges even for symmetric positive definite matrices (Kahan's bound "
                         "rho >= |omega - 1|). Typical values run from 1 (Gauss-Seidel) to about 1.95.")
    return omega


class _Splitting:
    """``A = D + L + U`` of an assembled operator, with the triangular solves SOR and SSOR need.

    Args:
        op: a square operator that can be assembled (``op.to_scipy()``), with real entries and a
            nonzero, finite diagonal.
        owner: the name used in error messages.

    Raises:
        ValueError: on a complex dtype, non-finite entries or a zero diagonal entry.
    """

    def __init__(self, op: LinearOperator, owner: str) -> None:
        import scipy.sparse as sp

        if op.dtype.is_complex or not op.dtype.is_floating_point:
            raise ValueError(f"{owner}: needs a real floating-point operator, got dtype {op.dtype}")
        A = sp.csr_matrix(op.to_scipy(), dtype=np.float64)
        A.sum_duplicates()
        if not np.isfinite(A.data).all():
            raise ValueError(f"{owner}: the matrix has {int((~np.isfinite(A.data)).sum())} non-finite entries")
        diag = A.diagonal()
        bad = ~(np.isfinite(diag) & (diag != 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{owner}: the diagonal has {int(bad.sum())} zero entries (first at row {i}); SOR and "
                             "SSOR divide by the diagonal. Reorder the unknowns or use GMRES.")
        self.A = A
        self.diag = diag
        self._lower = sp.tril(A, k=-1, format="csc")
        self._upper = sp.triu(A, k=1, format="csc")

    def _triangular(self, strict, omega: float):
        """A solver for ``(D / omega + strict) y = r``, strict being L or U (a SuperLU object)."""
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        T = (sp.diags(self.diag / omega, format="csc") + strict).tocsc()
        # A triangular matrix in its natural order is its own LU factor: no fill-in and, with the diagonal
        # always taken as pivot (it is nonzero), no row exchanges; solve() is then one substitution sweep.
        return splu(T, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})

    def forward(self, omega: float):
        """``r -> (D / omega + L)^{-1} r``: one SOR correction."""
        lu = self._triangular(self._lower, omega)
        return lu.solve

    def ssor(self, omega: float):
        """``r -> (2 - omega) / omega (D / omega + U)^{-1} D (D / omega + L)^{-1} r``: one SSOR correction."""
        lower = self._triangular(self._lower, omega).solve
        upper = self._triangular(self._upper, omega).solve
        scaled_diag = (2.0 - omega) / omega * self.diag

        def apply(r: np.ndarray) -> np.ndarray:
            y = lower(r)
            y *= scaled_diag[:, None] if y.ndim == 2 else scaled_diag
            return upper(y)

        return apply


class _RelaxationSolver(LinearSolver):
    """A stationary iteration ``x <- x + C (b - A x)`` with ``C`` one SOR or SSOR correction."""

    supports_batch = True
    accepts_preconditioner = False

    def __init__(self, omega: float = 1.0, *, rtol: float = 1e-6, atol: float = 0.0,
                 max_iters: int | None = None) -> None:
        super().__init__(rtol=rtol, atol=atol, max_iters=max_iters)
        self.omega = check_omega(omega, type(self).__name__)

    def _correction(self, splitting: _Splitting):
        raise NotImplementedError

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        splitting = _Splitting(op, type(self).__name__)
        correct = self._correction(splitting)
        A = splitting.A
        single = b.ndim == 1
        B = _to_numpy(b[:, None] if single else b)
        X = _to_numpy(x0[:, None] if single else x0).copy()
        bnorm = np.linalg.norm(B, axis=0)
        threshold = np.maximum(self.rtol * bnorm, self.atol)
        denom = np.where(bnorm > 0, bnorm, 1.0)
        R = B - A @ X if X.any() else B.copy()
        stats.matvecs += int(bool(X.any()))
        rnorm = np.linalg.norm(R, axis=0)
        stats.residual_history.append(float((rnorm / denom).max()))
        active = rnorm > threshold
        status = Status.MAX_ITERS
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below and reported as DIVERGED
            for it in range(self.iteration_cap(B.shape[0])):
                if not active.any():
                    status = Status.SUCCESS
                    break
                cols = slice(None) if active.all() else np.flatnonzero(active)
                X[:, cols] += correct(np.ascontiguousarray(R[:, cols]))
                R[:, cols] = B[:, cols] - A @ X[:, cols]
                rnorm[cols] = np.linalg.norm(R[:, cols], axis=0)
                stats.matvecs += 1
                stats.iterations = it + 1
                if not np.isfinite(rnorm).all():
                    stats.residual_history.append(math.inf)
                    status = Status.DIVERGED
                    break
                stats.residual_history.append(float((rnorm / denom).max()))
                active &= rnorm > threshold
            else:
                if not active.any():
                    status = Status.SUCCESS
        x = torch.from_numpy(X[:, 0] if single else X).to(dtype=b.dtype, device=b.device)
        return x, status, state

    def messages(self) -> dict[Status, str]:
        out = super().messages()
        name = type(self).__name__
        out[Status.MAX_ITERS] = (f"{name}(omega={self.omega:g}) stopped at its iteration cap before reaching "
                                 f"rtol={self.rtol:g}; raise max_iters, try an omega nearer the optimum (for the "
                                 "Poisson model problem 2 / (1 + sin(pi h))), or use CG with SSORPreconditioner.")
        out[Status.DIVERGED] = (f"{name}(omega={self.omega:g}) produced NaN or infinity: the iteration diverges "
                                "for this matrix. SOR converges for every omega in (0, 2) when the matrix is "
                                "symmetric positive definite; check that it is, or use GMRES.")
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(omega={self.omega:g}, rtol={self.rtol:g}, atol={self.atol:g}, "
                f"max_iters={self.max_iters})")


class SOR(_RelaxationSolver):
    """Successive over-relaxation: forward Gauss-Seidel sweeps over-relaxed by ``omega``.

    Each iteration is ``x <- x + (D / omega + L)^{-1} (b - A x)`` (one sparse triangular solve and one
    product with ``A``); ``omega = 1`` is Gauss-Seidel. It converges for every ``omega`` in ``(0, 2)``
    when ``A`` is symmetric positive definite (Ostrowski-Reich), and also for instance when ``A`` is
    strictly diagonally dominant and ``omega <= 1``; it needs no structure tags on the operator. Columns
    of a batch ``b`` of shape ``(n, k)`` are iterated together, each stopping on its own.

    Args:
        omega: relaxation parameter in ``(0, 2)`` (default 1, Gauss-Seidel).
        rtol, atol: stop when the true residual ``||b - A x|| <= max(rtol ||b||, atol)`` (2-norm, per column).
        max_iters: iteration cap (default ``10 n``, at least 100).

    Raises:
        ValueError: from the constructor, when ``omega`` is not in ``(0, 2)``; from
            :func:`~neuralnumerics.linalg.linear_solve`, when the matrix has a zero diagonal entry, a
            complex dtype or non-finite entries, or when a preconditioner ``M`` is given.

    The iterates are those of the textbook SOR method (Saad, chapter 4); the
    status is ``MAX_ITERS`` at the cap and ``DIVERGED`` when the residual becomes NaN or infinite.

    References:
        Young. "Iterative methods for solving partial difference equations of elliptic type",
        Trans. AMS 76 (1954). Saad. "Iterative Methods for Sparse Linear Systems", 2nd ed., SIAM (2003), chapter 4.
    """

    def _correction(self, splitting: _Splitting):
        return splitting.forward(self.omega)


class SSOR(_RelaxationSolver):
    """Symmetric successive over-relaxation: a forward SOR sweep followed by a backward one.

    One iteration is ``x <- x + M^{-1} (b - A x)`` with ``M`` the SSOR matrix of
    :class:`SSORPreconditioner`, i.e. the forward sweep with ``D / omega + L`` then the backward sweep
    with ``D / omega + U``. For symmetric positive definite ``A`` it converges for every ``omega`` in
    ``(0, 2)``. On its own it is rarely faster than SOR; its value is as a symmetric preconditioner
    for CG (:class:`SSORPreconditioner`).

    Args:
        omega: relaxation parameter in ``(0, 2)`` (default 1, symmetric Gauss-Seidel).
        rtol, atol: stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (2-norm, per column).
        max_iters: iteration cap (default ``10 n``, at least 100).

    Raises:
        ValueError: as :class:`SOR`.

    References:
        Sheldon. "On the numerical solution of elliptic difference equations", MTAC 9 (1955).
        Saad. "Iterative Methods for Sparse Linear Systems", 2nd ed., SIAM (2003), chapter 4.
    """

    def _correction(self, splitting: _Splitting):
        return splitting.ssor(self.omega)


class SSORPreconditioner(LinearOperator):
    """The SSOR preconditioner ``M^{-1}``, with ``M = (D + omega L) D^{-1} (D + omega U) / (omega (2 - omega))``.

    Applying it costs two sparse triangular solves (forward and backward sweep). When ``A`` is
    symmetric positive definite, ``M`` is too (for every ``omega`` in ``(0, 2)``), so it can precondition
    CG: ``linear_solve(A, b, CG(), M=SSORPreconditioner(A, 1.5))``. The operator takes the structure
    tags of ``op``: symmetric when ``op`` is tagged symmetric, positive definite when ``op`` is tagged
    symmetric and positive definite. The matrix is assembled once, here; products run on the CPU in
    float64 and return vectors in the input's dtype and device.

    Args:
        op: the operator ``A`` (anything :func:`~neuralnumerics.linalg.as_operator` accepts) that can be
            assembled with ``to_scipy()``; square, real, with a nonzero diagonal.
        omega: relaxation parameter in ``(0, 2)``.

    Raises:
        ValueError: when ``omega`` is not in ``(0, 2)``, or the operator is not square, is complex, has
            non-finite entries or a zero diagonal entry.

    References:
        Axelsson. "Iterative Solution Methods", Cambridge (1994). Saad (2003), chapter 10.
    """

    def __init__(self, op, omega: float) -> None:
        op = as_operator(op)
        self.omega = check_omega(omega, "SSORPreconditioner")
        if not op.is_square:
            raise ValueError(f"SSORPreconditioner needs a square operator, got shape {op.shape}")
        super().__init__(op.shape, op.dtype, op.device, symmetric=op.symmetric,
                         positive_definite=op.symmetric and op.positive_definite)
        self._apply = _Splitting(op, "SSORPreconditioner").ssor(self.omega)

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (1, 2) or x.shape[0] != self.shape[1]:
            raise ValueError(f"SSORPreconditioner: expected a vector of length {self.shape[1]} (or (n, k)), "
                             f"got shape {tuple(x.shape)}")
        y = self._apply(np.ascontiguousarray(_to_numpy(x)))
        return torch.from_numpy(np.ascontiguousarray(y)).to(dtype=x.dtype, device=x.device)

    def __repr__(self) -> str:
        return f"SSORPreconditioner(shape={self.shape}, omega={self.omega:g})"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


# --------------------------------------------------------------------------- #
# Young's theory for consistently ordered matrices
# --------------------------------------------------------------------------- #
def _check_beta(beta, owner: str) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)) \
            or not (0.0 <= float(beta) < 1.0):
        raise ValueError(f"{owner}: beta (the spectral radius of the Jacobi iteration matrix I - D^-1 A) must lie "
                         f"in [0, 1), got {beta!r}; for beta >= 1 Jacobi does not converge and Young's theory "
                         "does not apply")
    return float(beta)


def optimal_omega(beta: float) -> float:
    """Young's optimal relaxation parameter ``1 + (beta / (1 + sqrt(1 - beta^2)))^2 = 2 / (1 + sqrt(1 - beta^2))``.

    For the Poisson model problem with mesh width ``h`` (Jacobi radius ``cos(pi h)``) this is
    ``2 / (1 + sin(pi h))``.

    Args:
        beta: spectral radius of the Jacobi iteration matrix ``I - D^{-1} A``, in ``[0, 1)``.

    Returns:
        The ``omega`` minimising the SOR spectral radius of a consistently ordered matrix whose Jacobi
        matrix has real eigenvalues.

    Raises:
        ValueError: when ``beta`` is not in ``[0, 1)``.

    References:
        Young (1954); Saad (2003), chapter 4.
    """
    beta = _check_beta(beta, "optimal_omega")
    return 2.0 / (1.0 + math.sqrt(1.0 - beta * beta))


def sor_spectral_radius(beta: float, omega: float) -> float:
    """Spectral radius of the SOR iteration matrix ``I - (D / omega + L)^{-1} A`` by Young's formula.

    ``omega - 1`` for ``omega >= omega*``; below it ``((omega beta + sqrt(omega^2 beta^2 - 4 (omega - 1))) / 2)^2``.
    Exact for consistently ordered matrices whose Jacobi matrix has real eigenvalues (e.g. symmetric
    positive definite ones with property A, such as the 5-point Laplacian, shifted or not).

    Args:
        beta: spectral radius of the Jacobi iteration matrix, in ``[0, 1)``.
        omega: relaxation parameter in ``(0, 2)``.

    Returns:
        The asymptotic convergence factor per iteration.

    Raises:
        ValueError: when ``beta`` is not in ``[0, 1)`` or ``omega`` not in ``(0, 2)``.

    References:
        Young (1954); Saad (2003), chapter 4.
    """
    beta = _check_beta(beta, "sor_spectral_radius")
    omega = check_omega(omega, "sor_spectral_radius")
    if omega >= optimal_omega(beta):
        return omega - 1.0
    root = 0.5 * (omega * beta + math.sqrt(max(omega * omega * beta * beta - 4.0 * (omega - 1.0), 0.0)))
    return root * root


def sor_iteration_estimate(beta: float, omega: float, rtol: float, *, tau: float = 0.0) -> float:
    """Iterations for SOR to reduce the residual by ``rtol``, from the (near-)asymptotic convergence rate.

    ``log(rtol) / log(rho + tau (1 - rho))`` with ``rho`` = :func:`sor_spectral_radius`. With ``tau = 0``
    it is the asymptotic estimate, which undercounts near the optimal ``omega`` (the iteration matrix is
    then far from normal and ``||C^k||`` decays more slowly than ``rho^k`` for a while); ``tau`` in
    ``[0, 1)`` moves the rate towards 1 to cover that transient, the form of the near-asymptotic bound
    that Khodak et al. use as a surrogate cost in their analysis of bandit-tuned SOR.

    Args:
        beta: spectral radius of the Jacobi iteration matrix, in ``[0, 1)``.
        omega: relaxation parameter in ``(0, 2)``.
        rtol: residual reduction, in ``(0, 1)``.
        tau: asymptoticity correction in ``[0, 1)``.

    Returns:
        The estimated iteration count (a float; ``inf`` when the rate is 1).

    Raises:
        ValueError: on arguments outside the ranges above.

    References:
        Khodak, Chow, Balcan, Talwalkar. "Learning to Relax: Setting Solver Parameters Across a Sequence
        of Linear System Instances", ICLR 2024 (arXiv:2310.02246).
    """
    if not (isinstance(rtol, (int, float)) and 0.0 < rtol < 1.0):
        raise ValueError(f"sor_iteration_estimate: rtol must lie in (0, 1), got {rtol!r}")
    if not (isinstance(tau, (int, float)) and 0.0 <= tau < 1.0):
        raise ValueError(f"sor_iteration_estimate: tau must lie in [0, 1), got {tau!r}")
    rho = sor_spectral_radius(beta, omega)
    rate = rho + tau * (1.0 - rho)
    if rate >= 1.0:
        return math.inf
    if rate <= 0.0:
        return 1.0
    return math.log(rtol) / math.log(rate)

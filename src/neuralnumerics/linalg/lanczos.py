"""Lanczos tridiagonalisation and Ritz pairs of a symmetric operator.

DCDM's training data are combinations of Ritz vectors of the pressure matrix (Kaneda et al. 2023), and a
deflated CG starts from a few Ritz vectors for the smallest eigenvalues; both come from here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .operators import LinearOperator, as_operator

__all__ = ["lanczos", "ritz_pairs"]


def lanczos(op, steps: int, *, v0: torch.Tensor | None = None, reorthogonalize: bool = True,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``steps`` Lanczos steps: ``A Q^T = Q^T T + beta e_m^T`` with ``T = tridiag(beta, alpha, beta)``.

    With ``reorthogonalize`` each new vector is orthogonalised against all earlier ones (classical
    Gram-Schmidt, repeated once when it removed more than 30% of the norm: "twice is enough"), so the basis stays orthonormal to round-off and no spurious copies of
    converged Ritz values appear; this costs ``O(steps^2 n)``. The recurrence stops early when it finds an
    invariant subspace (``beta`` below ``1e-10`` of the largest ``alpha`` seen).

    Args:
        op: a symmetric operator, ``n x n``.
        steps: the most Lanczos vectors to build, ``1 <= steps <= n``.
        v0: starting vector ``(n,)`` (default: ``A g`` for a standard normal ``g``, which lies in the range
            of ``A``; round-off can still bring a singular operator's null space back after many steps, which
            :func:`ritz_pairs` drops by its cutoff).
        reorthogonalize: full reorthogonalisation (recommended; without it the basis loses orthogonality once
            Ritz values converge).
        generator: random generator for the default ``v0``.

    Returns:
        ``(alpha, beta, Q)``: the diagonal ``(m,)``, the off-diagonal ``(m - 1,)`` and the basis as rows
        ``(m, n)``, ``m <= steps``, in the operator's dtype and device.

    Raises:
        ValueError: on a non-square or non-symmetric operator, a bad ``steps``, or a zero or non-finite ``v0``.

    References:
        Golub, Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1.
    """
    op = _symmetric(op, "lanczos")
    n = op.shape[0]
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= n:
        raise ValueError(f"lanczos: steps must be an integer between 1 and the size {n}, got {steps!r}")
    steps = int(steps)
    if v0 is None:
        g = torch.randn(n, generator=generator, dtype=op.dtype, device="cpu").to(op.device)
        v0 = op.mv(g)
    elif tuple(v0.shape) != (n,):
        raise ValueError(f"lanczos: v0 has shape {tuple(v0.shape)}, expected ({n},)")
    v0 = v0.to(dtype=op.dtype, device=op.device)
    norm = float(v0.norm())
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError("lanczos: the starting vector is zero or not finite")
    Q = torch.empty(steps, n, dtype=op.dtype, device=op.device)
    alpha = torch.empty(steps, dtype=op.dtype, device=op.device)
    beta = torch.empty(max(steps - 1, 0), dtype=op.dtype, device=op.device)
    Q[0] = v0 / norm
    scale = 0.0
    m = steps
    for j in range(steps):
        w = op.mv(Q[j])
        alpha[j] = Q[j] @ w
        scale = max(scale, abs(float(alpha[j])))
        if j == steps - 1:
            break
        w = w - alpha[j] * Q[j]
        if j > 0:
            w = w - beta[j - 1] * Q[j - 1]
        if reorthogonalize:  # classical Gram-Schmidt, repeated when it cancelled much of w (DGKS test)
            for _ in range(2):
                before = float(w.norm())
                w = w - Q[:j + 1].mT @ (Q[:j + 1] @ w)
                if float(w.norm()) > 0.7071 * before:
                    break
        b = float(w.norm())
        if not math.isfinite(b):
            raise ValueError(f"lanczos: the operator produced non-finite values at step {j + 1}")
        if b <= 1e-10 * max(scale, 1e-300):
            m = j + 1
            break
        beta[j] = b
        Q[j + 1] = w / b
    return alpha[:m].clone(), beta[:m - 1].clone(), Q[:m].clone()


def ritz_pairs(op, steps: int, *, v0: torch.Tensor | None = None, generator: torch.Generator | None = None,
               drop_below: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values and vectors of a symmetric operator from ``steps`` fully reorthogonalised Lanczos steps.

    Args:
        op: a symmetric operator, ``n x n``.
        steps: Lanczos steps (see :func:`lanczos`).
        v0, generator: the starting vector, or the generator of the default one (``A g``).
        drop_below: drop the pairs whose Ritz value is below this (e.g. the null space of a singular
            operator); default ``1e-8`` times the largest Ritz value.

    Returns:
        ``(values, vectors)``: values ``(k,)`` ascending and unit vectors ``(n, k)``.

    Raises:
        ValueError: as :func:`lanczos`.
    """
    from scipy.linalg import eigh_tridiagonal

    alpha, beta, Q = lanczos(op, steps, v0=v0, generator=generator)
    if alpha.numel() == 1:
        theta, W = alpha.cpu().numpy(), np.ones((1, 1))
    else:
        theta, W = eigh_tridiagonal(alpha.cpu().double().numpy(), beta.cpu().double().numpy())
    cutoff = 1e-8 * float(np.abs(theta).max()) if drop_below is None else float(drop_below)
    keep = theta >= cutoff
    values = torch.as_tensor(theta[keep], dtype=op.dtype, device=op.device)
    vectors = Q.mT @ torch.as_tensor(W[:, keep], dtype=op.dtype, device=op.device)
    return values, vectors


def _symmetric(op, name: str) -> LinearOperator:
    op = as_operator(op)
    if not op.is_square:
        raise ValueError(f"{name}: the operator must be square, got shape {op.shape}")
    if not op.symmetric:
        raise ValueError(f"{name}: the operator must be symmetric (tag it symmetric=True if it is)")
    return op

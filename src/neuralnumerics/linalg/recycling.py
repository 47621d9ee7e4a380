"""Krylov subspace recycling across a sequence of systems: GCRO-DR (any square system) and deflated CG (SPD).

Both solvers return, as the ``state`` of their :class:`~neuralnumerics.linalg.Solution`, a
:class:`RecycleSpace`: a few vectors spanning approximate eigenvectors of the operator for its
eigenvalues nearest zero, the ones that slow Krylov methods down. Passed back as ``state=`` for the next
system (or handled by :func:`~neuralnumerics.linalg.sequence.solve_sequence`), the space is used from the
first iteration: the part of the residual it captures is removed at once and the Krylov iteration works
on an operator with those eigenvalues deflated. The space is refined during every solve, so it tracks
an operator that drifts along the sequence.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from .._status import Status
from .cg import NotPositiveDefiniteError
from .operators import LinearOperator
from .solve import LinearSolver, SolveStats

__all__ = ["GCRODR", "RecycledCG", "RecycleSpace"]


@dataclass
class RecycleSpace:
    """What a recycling solver carries from one system of a sequence to the next.

    Attributes:
        U: ``(n, k)`` basis of the recycled subspace. For :class:`GCRODR` it lives in the preconditioned
            unknowns (a correction is ``M U z``); for :class:`RecycledCG` it is A-orthonormal
            (``U^T A U = I``).
        C: ``(n, k)``: for :class:`GCRODR`, ``C = A M U`` with orthonormal columns; for :class:`RecycledCG`,
            ``C = A U``. Valid for the operator (and preconditioner) the space was last used with; a solve
            with another operator recomputes it.
        ritz_values: the harmonic Ritz values the basis vectors belong to (approximate eigenvalues of
            ``A M``, complex for GCRO-DR), smallest magnitude first.
        solver: name of the solver class that made it.
    """

    U: torch.Tensor
    C: torch.Tensor
    ritz_values: torch.Tensor
    solver: str
    _operator: weakref.ref | None = field(default=None, repr=False)
    _preconditioner: weakref.ref | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """Number of recycled vectors."""
        return int(self.U.shape[1])

    def made_for(self, op: LinearOperator, M: LinearOperator | None) -> bool:
        """Whether ``C`` belongs to this very operator and preconditioner (the same objects)."""
        same_op = self._operator is not None and self._operator() is op
        same_m = (M is None and self._preconditioner is None) or (
            M is not None and self._preconditioner is not None and self._preconditioner() is M)
        return same_op and same_m


def _make_space(U, C, ritz, solver, op, M) -> RecycleSpace | None:
    if U is None or U.shape[1] == 0:
        return None
    return RecycleSpace(U, C, ritz, solver, weakref.ref(op), None if M is None else weakref.ref(M))


def _check_state(state, solver: str, b: torch.Tensor) -> RecycleSpace | None:
    if state is None:
        return None
    if not isinstance(state, RecycleSpace):
        raise ValueError(f"{solver}: state must be None or the .state of a previous {solver} solution (a "
                         f"RecycleSpace), got {type(state).__name__}")
    if state.solver != solver:
        raise ValueError(f"{solver}: this state was made by {state.solver}; a recycled space is tied to the solver "
                         "that made it, so pass state=None when switching solvers")
    if state.U.shape[0] != b.shape[0]:
        raise ValueError(f"{solver}: the recycled space has vectors of length {state.U.shape[0]} but this system "
                         f"has {b.shape[0]} unknowns; recycling needs systems of one size (pass state=None)")
    if state.U.dtype != b.dtype or state.U.device != b.device:
        raise ValueError(f"{solver}: the recycled space is {state.U.dtype} on {state.U.device}, the system "
                         f"{b.dtype} on {b.device}; keep one dtype and device along a sequence")
    return state


def _cutoff(dtype: torch.dtype) -> float:
    """Relative singular-value threshold below which a recycled direction counts as dependent."""
    return math.sqrt(torch.finfo(dtype).eps)


def _image_basis(R: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """For a small ``T = Q R`` (``Q`` orthonormal), ``(W, X)`` with ``T X = Q W`` orthonormal, dropping dependence.

    Uses the SVD ``R = W S Z^T``: ``T Z S^{-1} = Q W``; singular values below ``cutoff * s_max`` are dropped.
    """
    W, s, Zt = np.linalg.svd(R, full_matrices=False)
    if s.size == 0 or not np.isfinite(s).all() or s[0] == 0:
        return W[:, :0], Zt.T[:, :0]
    keep = s > cutoff * s[0]
    return W[:, keep], Zt.T[:, keep] / s[keep]


class GCRODR(LinearSolver):
    """GCRO-DR(m, k): restarted GMRES that deflates with, and recycles, a k-dimensional subspace.

    Each cycle minimises the residual over ``span(U) + K_{m-k}((I - C C^T) A M, r)``, where ``U`` holds
    k harmonic Ritz vectors (approximate eigenvectors for the eigenvalues of ``A M`` nearest zero) and
    ``C = A M U`` is orthonormal; at the end of every cycle ``U`` and ``C`` are refreshed from the
    harmonic Ritz problem of the whole augmented space. The first system of a sequence (``state=None``)
    starts with one plain GMRES(m) cycle, from which the first ``U`` is harvested. A ``state`` from a
    previous solve seeds ``U``; if the operator (or preconditioner) is a different object, ``C`` is
    recomputed as ``A M U`` and re-orthonormalised (QR), ``U`` transformed with it, before the first
    cycle. Cost per cycle: m - k operator products, one more for the true residual at its end, plus
    ``O(n m k)`` vector work; recomputing ``C`` costs one product with the k vectors.

    Preconditioning is on the right (``A M y = b - A x0``, ``x = x0 + M y``), so the monitored residual
    is the true one, as in :class:`~neuralnumerics.linalg.GMRES`. With ``k=0``, or for a first system
    that converges within its first cycle, the iterates are those of GMRES(m).

    Args:
        m: dimension of the search space per cycle: k recycled vectors plus m - k Arnoldi vectors
            (the first, plain cycle uses m Arnoldi vectors). The SKR paper's setting is m=40.
        k: dimension of the recycled subspace, ``0 <= k < m`` (SKR: k=20). ``k=0`` is GMRES(m).
        rtol, atol: stop when ``||b - A x|| <= max(rtol ||b||, atol)``.
        max_iters: cap on the Arnoldi steps of one solve (default ``10 n``).

    Raises:
        ValueError: on ``m < 1``, ``k`` outside ``[0, m)``, or (from the solve) a ``state`` made by
            another solver or for a system of another size, dtype or device.

    References:
        Parks, de Sturler, Mackey, Johnson, Maiti. "Recycling Krylov subspaces for sequences of linear
        systems", SIAM J. Sci. Comput. 28(5), 2006 (the algorithm, Sec. 2.4).
        Wang, Hao, Wang, Geng, Wang, Li, Wu. "Accelerating data generation for neural operators via
        Krylov subspace recycling", ICLR 2024 (SKR: sorted sequences solved with GCRO-DR(40, 20)).
    """

    def __init__(self, *, m: int = 40, k: int = 20, rtol: float = 1e-6, atol: float = 0.0,
                 max_iters: int | None = None) -> None:
        super().__init__(rtol=rtol, atol=atol, max_iters=max_iters)
        if isinstance(m, bool) or int(m) != m or m < 1:
            raise ValueError(f"GCRODR: m must be a positive integer, got {m!r}")
        if isinstance(k, bool) or int(k) != k or not 0 <= k < m:
            raise ValueError(f"GCRODR: k must be an integer with 0 <= k < m = {m}, got {k!r} (each cycle needs at "
                             "least one new Krylov vector)")
        self.m, self.k = int(m), int(k)

    def __repr__(self) -> str:
        return (f"GCRODR(m={self.m}, k={self.k}, rtol={self.rtol:g}, atol={self.atol:g}, "
                f"max_iters={self.max_iters})")

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        state = _check_state(state, "GCRODR", b)
        n = b.shape[0]
        cap = self.iteration_cap(n)
        cutoff = _cutoff(b.dtype)
        x, r, beta, threshold, denom = self._start(op, b, x0, stats)
        if beta <= threshold:
            return x, Status.SUCCESS, state

        def apply(v):  # the right-preconditioned operator A M
            return op.mv(M.mv(v)) if M is not None else op.mv(v)

        def lift(v):  # preconditioned unknowns -> solution space
            return M.mv(v) if M is not None else v

        U = C = None
        ritz = torch.zeros(0, dtype=torch.complex128)
        if state is not None and self.k > 0:
            U, C, ritz = state.U, state.C, state.ritz_values
            if not state.made_for(op, M):
                U, C = self._fit_to_operator(U, apply(U), cutoff)
                stats.matvecs += 1
                stats.extra["recycle_recomputed"] = True
        if U is not None and U.shape[1] > 0:
            # the recycled space's share of the solution, before any iteration
            c = C.mT @ r
            x = x + lift(U @ c)
            r = r - C @ c
            beta = float(r.norm())
            stats.extra["projected_residual"] = beta / denom
            if beta <= threshold:
                stats.residual_history.append(beta / denom)
                return x, Status.SUCCESS, _make_space(U, C, ritz, "GCRODR", op, M)

        total = 0
        while total < cap:
            kk = 0 if U is None else U.shape[1]
            steps = max(1, min(self.m - kk if kk else self.m, cap - total, n - kk))
            if kk:
                # keep r orthogonal to C (exact arithmetic keeps it so; rounding and the true-residual
                # recomputation below do not)
                c = C.mT @ r
                x = x + lift(U @ c)
                r = r - C @ c
                beta = float(r.norm())
            cycle = _arnoldi(apply, r, beta, steps, C if kk else None, threshold, stats.residual_history, denom)
            stats.matvecs += cycle.steps
            total += cycle.steps
            stats.iterations = total
            if not cycle.finite:
                return x, Status.DIVERGED, state
            j = cycle.steps
            z = torch.from_numpy(cycle.z).to(dtype=b.dtype, device=b.device)
            update = cycle.V[:, :j] @ z
            if kk:
                # minimising over span(U) too zeroes the C-block of the residual: the U coefficients are -B z
                update = update - U @ torch.from_numpy(cycle.B[:, :j] @ cycle.z).to(dtype=b.dtype, device=b.device)
            x = x + lift(update)
            r = b - op.mv(x)
            stats.matvecs += 1
            beta_new = float(r.norm())
            stats.residual_history[-1] = beta_new / denom  # the true residual replaces the cycle's estimate
            if not math.isfinite(beta_new):
                return x, Status.DIVERGED, state
            if self.k > 0:
                U, C, ritz = self._harvest(cycle, U, C, cutoff)
            if beta_new <= threshold:
                return x, Status.SUCCESS, _make_space(U, C, ritz, "GCRODR", op, M)
            if beta_new >= beta * (1 - 1e-12) and j < steps:  # breakdown without progress
                return x, Status.STAGNATED, _make_space(U, C, ritz, "GCRODR", op, M)
            beta = beta_new
        return x, Status.MAX_ITERS, _make_space(U, C, ritz, "GCRODR", op, M)

    @staticmethod
    def _fit_to_operator(U: torch.Tensor, AU: torch.Tensor, cutoff: float):
        """``C = A M U`` orthonormalised by QR and ``U`` transformed alike (``A M U_new = C``), minus dependent
        directions."""
        scale = AU.norm(dim=0)  # unit columns first, so the rank cutoff judges directions, not their lengths
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        U, AU = U / scale, AU / scale
        Q, R = torch.linalg.qr(AU)
        W, X = _image_basis(R.double().cpu().numpy(), cutoff)
        W = torch.from_numpy(W).to(dtype=U.dtype, device=U.device)
        X = torch.from_numpy(X).to(dtype=U.dtype, device=U.device)
        return U @ X, Q @ W

    def _harvest(self, cycle: "_Cycle", U, C, cutoff: float):
        """New ``(U, C, ritz)`` from the harmonic Ritz vectors of the cycle's augmented search space.

        With ``What = [U D, V_j]`` (``D`` scaling U's columns to unit norm), ``Vhat = [C, V_{j+1}]`` and
        ``A M What = Vhat G``, the harmonic Ritz pairs solve ``G^T G p = theta G^T Vhat^T What p``.
        The k pairs of smallest ``|theta|`` give ``P``; then ``U = What P X`` and ``C = Vhat (G P X)``
        with ``G P X`` orthonormal (Parks et al. 2006, Sec. 2.4, with a thin SVD in place of the QR).
        """
        j = cycle.steps
        V = cycle.V
        dtype, device = V.dtype, V.device
        kk = 0 if U is None else U.shape[1]
        if kk == 0:
            G = cycle.H[:j + 1, :j]
            VtW = np.eye(j + 1, j)
        else:
            d = U.norm(dim=0)
            Ut = U / d
            G = np.zeros((kk + j + 1, kk + j))
            G[:kk, :kk] = np.diag(1.0 / d.double().cpu().numpy())
            G[:kk, kk:] = cycle.B[:, :j]
            G[kk:, kk:] = cycle.H[:j + 1, :j]
            VtW = np.zeros_like(G)
            VtW[:kk, :kk] = (C.mT @ Ut).double().cpu().numpy()
            VtW[kk:, :kk] = (V[:, :j + 1].mT @ Ut).double().cpu().numpy()
            VtW[kk:, kk:] = np.eye(j + 1, j)
        P, theta = _harmonic_ritz(G, VtW, self.k)
        if P.shape[1] == 0:
            return None, None, torch.zeros(0, dtype=torch.complex128)
        GP = G @ P
        norms = np.linalg.norm(GP, axis=0)
        norms[norms == 0] = 1.0
        P, GP = P / norms, GP / norms  # unit columns first (as in _fit_to_operator)
        Qs, Rs = np.linalg.qr(GP)
        W, X = _image_basis(Rs, cutoff)
        coeff = torch.from_numpy(P @ X).to(dtype=dtype, device=device)
        Q = torch.from_numpy(Qs @ W).to(dtype=dtype, device=device)
        # U = What coeff and C = Vhat Q, without assembling What = [U D, V_j] and Vhat = [C, V_{j+1}]
        U_new = V[:, :j] @ coeff[kk:]
        C_new = V[:, :j + 1] @ Q[kk:]
        if kk:
            U_new = U_new + Ut @ coeff[:kk]
            C_new = C_new + C @ Q[:kk]
        return U_new, C_new, torch.from_numpy(theta)


def _harmonic_ritz(G: np.ndarray, VtW: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Real basis ``P`` (p, <=k) of the k harmonic Ritz vectors with the smallest ``|theta|``, and those theta.

    ``G^T G p = theta G^T VtW p`` is solved as the standard problem ``G^+ VtW p = (1/theta) p``
    (``G`` has full column rank), so the wanted pairs have the largest ``|1/theta|``. A complex pair
    contributes its real and imaginary parts.
    """
    mu, vecs = np.linalg.eig(np.linalg.lstsq(G, VtW, rcond=None)[0])
    order = np.argsort(-np.abs(mu), kind="stable")
    cols, thetas = [], []
    for i in order:
        if len(cols) >= k or not np.isfinite(mu[i]) or mu[i] == 0:
            break
        v = vecs[:, i]
        if abs(mu[i].imag) > 1e-12 * abs(mu[i]):
            if mu[i].imag < 0:  # its conjugate partner adds the same two real directions
                continue
            cols += [v.real, v.imag]
            thetas += [1 / mu[i], 1 / np.conj(mu[i])]
        else:
            cols.append(v.real)
            thetas.append(1 / mu[i].real + 0j)
    cols, thetas = cols[:k], thetas[:k]  # the k-th may be the real half of a complex pair
    if not cols:
        return np.zeros((G.shape[1], 0)), np.zeros(0, dtype=complex)
    return np.stack(cols, axis=1), np.asarray(thetas, dtype=complex)


@dataclass
class _Cycle:
    """One Arnoldi cycle: basis ``V`` (n, j+1), Hessenberg ``H`` (j+1, j), projections ``B = C^T A M V_j``,
    least-squares coefficients ``z`` of ``min ||beta e1 - H z||``, and the step count ``j``."""

    V: torch.Tensor
    H: np.ndarray
    B: np.ndarray
    z: np.ndarray
    steps: int
    finite: bool


def _arnoldi(apply, r: torch.Tensor, beta: float, m: int, C: torch.Tensor | None, stop_at: float,
             history: list[float], denom: float) -> _Cycle:
    """Up to ``m`` steps of Arnoldi for ``(I - C C^T) A M`` from ``r``, keeping the Hessenberg matrix unrotated.

    Gram-Schmidt is classical (against ``C`` and the basis), with a second sweep only when the first
    removed most of the vector (its norm fell below ``1/sqrt(2)`` of what it was: the Daniel-Gragg-
    Kaufman-Stewart criterion), which keeps the basis orthogonal to working precision at about half
    the cost of always sweeping twice. Givens rotations of a copy of the Hessenberg column give the
    residual estimate after each step (appended to ``history`` divided by ``denom``). Stops early once
    the estimate is at most ``stop_at``, or on breakdown.
    """
    n = r.shape[0]
    V = torch.empty(n, m + 1, dtype=r.dtype, device=r.device)
    H = np.zeros((m + 1, m))
    kc = 0 if C is None else C.shape[1]
    B = np.zeros((kc, m))
    R = np.zeros((m + 1, m))
    cs, sn = np.zeros(m), np.zeros(m)
    g = np.zeros(m + 1)
    g[0] = beta
    V[:, 0] = r / beta
    j_done = 0
    for j in range(m):
        w = apply(V[:, j])
        before = float(w.norm())
        if not math.isfinite(before):
            return _Cycle(V, H, B, np.zeros(0), j, False)
        basis = V[:, :j + 1]
        h = torch.zeros(j + 1, dtype=torch.float64)
        for _ in range(2):
            if kc:
                c = C.mT @ w
                w = w - C @ c
                B[:, j] += c.double().cpu().numpy()
            hj = basis.mT @ w
            w = w - basis @ hj
            h += hj.double().cpu()
            hn = float(w.norm())
            if hn > before / math.sqrt(2):
                break
            before = hn
        H[:j + 1, j] = h.numpy()
        H[j + 1, j] = hn
        col = H[:j + 2, j].copy()
        for i in range(j):
            a, c2 = col[i], col[i + 1]
            col[i], col[i + 1] = cs[i] * a + sn[i] * c2, -sn[i] * a + cs[i] * c2
        rho = math.hypot(col[j], col[j + 1])
        cs[j], sn[j] = (col[j] / rho, col[j + 1] / rho) if rho > 0 else (1.0, 0.0)
        col[j], col[j + 1] = rho, 0.0
        R[:j + 2, j] = col
        g[j + 1] = -sn[j] * g[j]
        g[j] = cs[j] * g[j]
        j_done = j + 1
        res = abs(g[j + 1])
        history.append(res / denom)
        breakdown = hn <= 1e-14 * max(1.0, float(np.abs(H[:j + 1, j]).max()))
        # the next basis vector is set even on the last step: the recycling update uses all j + 1 of them
        V[:, j + 1] = 0.0 if breakdown else w / hn
        if breakdown or res <= stop_at:
            break
    z = _solve_upper(R[:j_done, :j_done], g[:j_done])
    return _Cycle(V, H, B, z, j_done, bool(np.isfinite(z).all()))


def _solve_upper(R: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Back substitution for the small rotated Hessenberg system (a zero pivot gives a non-finite result)."""
    z = np.zeros_like(g)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(g) - 1, -1, -1):
            z[i] = (g[i] - R[i, i + 1:] @ z[i + 1:]) / R[i, i]
    return z


class RecycledCG(LinearSolver):
    """Deflated conjugate gradients (def-CG) with a recycled subspace refreshed by harmonic Ritz vectors.

    With an A-orthonormal basis ``W`` of the recycled space (``W^T A W = I``), the initial guess is
    corrected by ``W W^T r0`` so the residual is orthogonal to ``W``, and every search direction is
    made A-orthogonal to ``W``: ``p = M r + beta p - W (A W)^T M r``. CG then runs on the operator with
    the eigenvalues that ``W`` captures removed. The first ``directions`` search directions ``P`` (and
    ``A P``, which CG computes anyway) are kept; after the solve the harmonic Ritz problem on
    ``Z = [W, P]``,

        ``(A Z)^T M (A Z) y = theta (Z^T A Z) y``,

    gives the k pairs of smallest theta (approximate smallest eigenvalues of ``M A``), and the new
    ``W = Z Y`` is returned as the state. Without a state the first solve is plain (P)CG that harvests
    its directions. Per iteration this adds ``O(n k)`` work to CG; the harvest costs ``O(n (k+l)^2)``
    plus one application of ``M`` to k+l vectors. If the operator changes, ``A W`` is recomputed (one
    product with the k vectors) and ``W`` A-orthonormalised for the new operator.

    Args:
        k: dimension of the recycled subspace (``k=0`` is plain CG).
        directions: how many of the first search directions enter the harvest (default ``2 k``).
        rtol, atol: stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (recursively updated residual,
            as in :class:`~neuralnumerics.linalg.CG`).
        max_iters: iteration cap (default ``10 n``).

    Raises:
        ValueError: on a negative ``k`` or ``directions``; (from the solve) a ``state`` made by another
            solver or for another size, dtype or device.
        NotPositiveDefiniteError: (from the solve) when a search direction has ``p^T A p <= 0``.

    References:
        Saad, Yeung, Erhel, Guyomarc'h. "A deflated version of the conjugate gradient algorithm",
        SIAM J. Sci. Comput. 21(5), 2000 (Algorithm 2.1, harmonic Ritz update of Sec. 4).
        Wang et al. "Accelerating data generation for neural operators via Krylov subspace
        recycling", ICLR 2024 (the sorted sequences this is meant for; the paper itself uses GCRO-DR).
    """

    needs_symmetric = True
    needs_positive_definite = True

    def __init__(self, *, k: int = 20, directions: int | None = None, rtol: float = 1e-6, atol: float = 0.0,
                 max_iters: int | None = None) -> None:
        super().__init__(rtol=rtol, atol=atol, max_iters=max_iters)
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise ValueError(f"RecycledCG: k must be a non-negative integer, got {k!r}")
        if directions is None:
            directions = 2 * int(k)
        if isinstance(directions, bool) or int(directions) != directions or directions < 0:
            raise ValueError(f"RecycledCG: directions must be a non-negative integer, got {directions!r}")
        self.k, self.directions = int(k), int(directions)

    def __repr__(self) -> str:
        return (f"RecycledCG(k={self.k}, directions={self.directions}, rtol={self.rtol:g}, atol={self.atol:g}, "
                f"max_iters={self.max_iters})")

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        state = _check_state(state, "RecycledCG", b)
        cutoff = _cutoff(b.dtype)
        x, r, rnorm, threshold, denom = self._start(op, b, x0, stats)
        if rnorm <= threshold:
            return x, Status.SUCCESS, state

        W = AW = None
        ritz = torch.zeros(0, dtype=torch.float64)
        if state is not None and self.k > 0:
            W, AW, ritz = state.U, state.C, state.ritz_values
            if not state.made_for(op, None):
                W, AW = _a_orthonormalise(W, op.mv(W), cutoff)
                stats.matvecs += 1
                stats.extra["recycle_recomputed"] = True
        if W is not None and W.shape[1] > 0:
            c = W.mT @ r
            x = x + W @ c
            r = r - AW @ c
            rnorm = float(r.norm())
            stats.extra["projected_residual"] = rnorm / denom
            if rnorm <= threshold:
                stats.residual_history.append(rnorm / denom)
                return x, Status.SUCCESS, _make_space(W, AW, ritz, "RecycledCG", op, None)
        else:
            W = AW = None

        def deflate(z):
            return z - W @ (AW.mT @ z) if W is not None else z

        keep = self.directions if self.k > 0 else 0
        P_kept, AP_kept = [], []
        z = M.mv(r) if M is not None else r
        rz = float(r @ z) if M is not None else rnorm ** 2
        if rz < 0:
            raise NotPositiveDefiniteError("RecycledCG: r^T M r < 0 for the initial residual: the preconditioner M "
                                           "is not positive definite")
        p = deflate(z).clone()
        status = Status.MAX_ITERS
        for it in range(self.iteration_cap(b.shape[0])):
            ap = op.mv(p)
            stats.matvecs += 1
            pap = float(p @ ap)
            if not pap > 0:
                if math.isnan(pap):
                    stats.iterations = it + 1
                    status = Status.DIVERGED
                    break
                if pap == 0 and float(p.norm()) == 0:  # M r lies in the deflated space: no direction is left
                    status = Status.STAGNATED
                    break
                raise NotPositiveDefiniteError(
                    f"RecycledCG: p^T A p = {pap:.3g} <= 0 at iteration {it + 1}: the operator is not positive "
                    "definite (or not symmetric). Use GCRODR for indefinite or nonsymmetric systems.")
            if len(P_kept) < keep:
                P_kept.append(p.clone())
                AP_kept.append(ap)
            alpha = rz / pap
            x.add_(p, alpha=alpha)
            r.add_(ap, alpha=-alpha)
            rnorm = float(r.norm())
            stats.iterations = it + 1
            stats.residual_history.append(rnorm / denom)
            if not math.isfinite(rnorm):
                status = Status.DIVERGED
                break
            if rnorm <= threshold:
                status = Status.SUCCESS
                break
            z = M.mv(r) if M is not None else r
            rz_new = float(r @ z) if M is not None else rnorm ** 2
            if not rz_new > 0:
                if M is not None:
                    raise NotPositiveDefiniteError("RecycledCG: r^T M r <= 0: the preconditioner M is not positive "
                                                   "definite")
                status = Status.STAGNATED
                break
            p.mul_(rz_new / rz).add_(deflate(z))
            rz = rz_new
        if status is Status.DIVERGED:
            return x, status, state
        if keep and P_kept:
            W, AW, ritz = self._harvest(W, AW, P_kept, AP_kept, M, cutoff)
        return x, status, _make_space(W, AW, ritz, "RecycledCG", op, None)

    def _harvest(self, W, AW, P_kept, AP_kept, M, cutoff: float):
        """The k harmonic Ritz vectors of span([W, P]) with the smallest values (Saad et al. 2000, Sec. 4)."""
        Z = torch.stack(P_kept, dim=1)
        AZ = torch.stack(AP_kept, dim=1)
        if W is not None:
            Z, AZ = torch.cat([W, Z], dim=1), torch.cat([AW, AZ], dim=1)
        Q, AQ = _a_orthonormalise(Z, AZ, cutoff)  # Q^T A Q = I
        if Q.shape[1] == 0:
            return None, None, torch.zeros(0, dtype=torch.float64)
        MAQ = M.mv(AQ) if M is not None else AQ
        F = (AQ.mT @ MAQ).double().cpu()
        theta, Y = torch.linalg.eigh((F + F.mT) / 2)  # ascending: the smallest harmonic Ritz values first
        Y = Y[:, :self.k].to(dtype=Q.dtype, device=Q.device)
        return Q @ Y, AQ @ Y, theta[:self.k]


def _a_orthonormalise(Z: torch.Tensor, AZ: torch.Tensor, cutoff: float):
    """``(Q, A Q)`` with ``Q = Z T`` spanning ``Z``'s well-conditioned part and ``Q^T A Q = I``.

    Directions of ``Z^T A Z`` with eigenvalues below ``cutoff`` times the largest (dependent columns, or
    directions where a new operator is not positive definite) are dropped.
    """
    # unit A-norm columns first, so the cutoff judges directions, not their lengths
    d = (Z * AZ).sum(dim=0)
    d = torch.where(d > 0, d, torch.ones_like(d)).sqrt()
    Z, AZ = Z / d, AZ / d
    K = (Z.mT @ AZ).double().cpu()
    lam, V = torch.linalg.eigh((K + K.mT) / 2)
    if lam.numel() == 0 or not bool(torch.isfinite(lam).all()) or float(lam[-1]) <= 0:
        return Z[:, :0], AZ[:, :0]
    keep = lam > cutoff * float(lam[-1])
    T = (V[:, keep] / lam[keep].sqrt()).to(dtype=Z.dtype, device=Z.device)
    return Z @ T, AZ @ T

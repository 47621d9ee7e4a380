"""Solving a sequence of linear systems in a good order, carrying the solver's state from one to the next.

This is the SKR recipe (Sorting Krylov Recycling, Wang et al., ICLR 2024): :func:`sort_systems` orders
the systems so that neighbours are similar (greedy nearest neighbour on their parameters), and
:func:`solve_sequence` solves them in that order with a recycling solver
(:class:`~neuralnumerics.linalg.recycling.GCRODR` or :class:`~neuralnumerics.linalg.recycling.RecycledCG`),
handing each solve the recycled subspace of the one before. Results come back in the original order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._status import Status
from .operators import FunctionOperator, LinearOperator, as_operator
from .solve import LinearSolveError, LinearSolver, Solution, SolveStats, linear_solve

__all__ = ["SequenceResult", "solve_sequence", "sort_systems"]


@dataclass
class SequenceResult:
    """Result of :func:`solve_sequence`; everything per system is in the original order of ``systems``.

    Attributes:
        solutions: one :class:`~neuralnumerics.linalg.Solution` per system (``None`` for systems not
            reached when ``throw=True`` stopped the sequence).
        order: the order the systems were solved in (indices into ``systems``).
        stats: totals over the sequence: ``iterations`` and ``matvecs`` summed, ``seconds`` the wall
            time including sorting, ``residual_history`` holding the worst final relative residual, and
            ``extra`` with ``sort_seconds``, ``solve_seconds`` and the per-system ``iterations`` list.
        status: ``Status.SUCCESS`` if every system converged, else the first other status in solving order.
        messages: one line per system that did not converge, naming it and what to change.
    """

    solutions: list[Solution | None]
    order: list[int]
    stats: SolveStats
    status: Status
    messages: list[str] = field(default_factory=list)

    @property
    def x(self) -> torch.Tensor:
        """The solutions stacked: ``(N, n)`` (or ``(N, n, k)`` for batched right-hand sides)."""
        missing = [i for i, s in enumerate(self.solutions) if s is None]
        if missing:
            raise ValueError(f"systems {missing[:5]}{'...' if len(missing) > 5 else ''} were not solved (the "
                             "sequence stopped at an error); use .solutions for the ones that were")
        return torch.stack([s.x for s in self.solutions])

    @property
    def iterations(self) -> list[int]:
        """Iterations per system, in the original order (0 for systems not solved)."""
        return [0 if s is None else s.stats.iterations for s in self.solutions]

    def __len__(self) -> int:
        return len(self.solutions)

    def __getitem__(self, i: int) -> Solution | None:
        return self.solutions[i]


def sort_systems(systems_or_features, *, start: int | str = "extreme", fft_modes: int | None = None) -> list[int]:
    """Order systems so that consecutive ones are similar: greedy nearest neighbour (SKR's sorting).

    Starting from one system, repeatedly append the unsorted system nearest (Euclidean/Frobenius
    distance) to the last one appended. The distance is taken between per-system features: the PDE
    parameters that made each system (coefficient fields, wavenumbers, ...) when given, else the
    systems' matrices (entrywise, i.e. ``||A_i - A_j||_F``); if all matrices are equal, the right-hand
    sides. Cost: ``O(N^2 d)`` for N systems with d features (``O(N^2)`` sparse subtractions for matrices
    with differing sparsity patterns).

    Args:
        systems_or_features: a list of ``(A, b)`` pairs, or features: a tensor/array of shape
            ``(N, ...)`` or a list of N tensors/arrays of one shape.
        start: the first system: an index, or ``"extreme"`` for the system farthest from the mean of
            the features (an end of the family: for a one-parameter family the greedy path then runs
            from one end to the other without doubling back). The paper starts from the first system,
            ``start=0``.
        fft_modes: keep only the ``fft_modes`` lowest frequencies per axis of each feature array (its
            trailing axes, all but the system axis) before measuring distances, the reduction the
            authors' code applies to large parameter fields. ``None`` uses the features as they are.

    Returns:
        The order, a list of the N indices.

    Raises:
        ValueError: on an empty input, features of unequal shapes or with non-finite values, an
            out-of-range ``start``, matrices of different shapes, or a matrix-free operator (which has
            no entries to compare: pass its parameters as features).

    References:
        Wang et al. "Accelerating data generation for neural operators via Krylov subspace recycling",
        ICLR 2024, Sec. 4 (greedy sorting by the distance of the parameter matrices); the truncated FFT
        follows the authors' released code (github.com/wanghong1700/NO-DataGen-SKR).
    """
    if _looks_like_systems(systems_or_features):
        return _greedy(_system_distances(list(systems_or_features)), len(systems_or_features), start)
    F = _feature_matrix(systems_or_features, fft_modes)
    return _greedy(_euclidean_rows(F), F.shape[0], start)


def solve_sequence(systems, solver: LinearSolver, *, sort: bool | Sequence[int] = True, features=None, x0=None,
                   M=None, throw: bool = False, progress: bool = False) -> SequenceResult:
    """Solve ``A_i x_i = b_i`` for a list of systems, in a sorted order, passing the solver's state along.

    With a recycling solver (:class:`~neuralnumerics.linalg.recycling.GCRODR`,
    :class:`~neuralnumerics.linalg.recycling.RecycledCG`) and ``sort=True`` this is SKR: sort the
    systems by similarity, then let each solve start from the subspace recycled by the previous one.
    With any other solver the systems are solved independently (in the chosen order).

    Args:
        systems: a non-empty list of ``(A, b)`` pairs; ``A`` is anything
            :func:`~neuralnumerics.linalg.as_operator` accepts (SciPy sparse included) or a
            LinearOperator, ``b`` a tensor ``(n,)`` or ``(n, k)`` of the operator's dtype and device.
            All systems must have the same size n.
        solver: a configured solver instance, e.g. ``GCRODR(m=40, k=20, rtol=1e-6)``.
        sort: ``True`` to order the systems with :func:`sort_systems` (by ``features`` if given, else by
            the matrices), ``False`` to keep the given order, or an explicit order (a permutation of
            ``range(N)``).
        features: per-system parameters to sort by (see :func:`sort_systems`), e.g. the coefficient
            fields the systems were assembled from.
        x0: initial guesses: one tensor for all systems, or a list with one per system (original order);
            default zero.
        M: preconditioner: one operator for all systems, a list with one per system, or a callable
            ``M(op) -> operator`` called on each system's operator (e.g. ``M=Jacobi``).
        throw: stop at the first system that does not converge and raise
            :class:`~neuralnumerics.linalg.LinearSolveError` (its ``result`` is the partial
            :class:`SequenceResult`); otherwise every system is solved and its status recorded.
        progress: show a tqdm progress bar (needs ``tqdm``).

    Returns:
        A :class:`SequenceResult`; ``result.x`` stacks the solutions in the original order,
        ``result.solutions[i]`` is system i's :class:`~neuralnumerics.linalg.Solution`.

    Raises:
        ValueError: on an empty or malformed ``systems`` list, systems of different sizes, a bad
            ``sort`` permutation, ``features`` not one per system, ``x0``/``M`` lists of the wrong length,
            or (naming the system) any input :func:`~neuralnumerics.linalg.linear_solve` refuses.
        LinearSolveError: with ``throw=True``, when a system does not converge.
        ImportError: ``progress=True`` without tqdm installed.

    References:
        Wang et al. "Accelerating data generation for neural operators via Krylov subspace recycling",
        ICLR 2024.
    """
    start = time.perf_counter()
    if not isinstance(solver, LinearSolver):
        raise ValueError(f"solver must be a LinearSolver instance (e.g. GCRODR()), got {type(solver).__name__}")
    ops, rhs = _check_systems(systems)
    n_sys = len(ops)
    x0s = _per_system(x0, n_sys, "x0")
    Ms = M if callable(M) and not isinstance(M, (LinearOperator, torch.Tensor)) else _per_system(M, n_sys, "M")

    t_sort = time.perf_counter()
    if sort is True:
        order = sort_systems(features if features is not None else list(zip(ops, rhs)))
        if len(order) != n_sys:
            raise ValueError(f"features has {len(order)} rows for {n_sys} systems; give one per system")
    elif sort is False:
        order = list(range(n_sys))
    else:
        order = [int(i) for i in sort]
        if sorted(order) != list(range(n_sys)):
            raise ValueError(f"sort must be True, False or a permutation of range({n_sys}); got {list(sort)[:10]}")
    sort_seconds = time.perf_counter() - t_sort if sort is True else 0.0

    solutions: list[Solution | None] = [None] * n_sys
    totals = SolveStats()
    status = Status.SUCCESS
    state: Any = None
    bar = _progress_bar(n_sys, type(solver).__name__) if progress else None
    result = SequenceResult(solutions, order, totals, status)
    try:
        for position, i in enumerate(order):
            Mi = Ms(ops[i]) if callable(Ms) else Ms[i]
            try:
                sol = linear_solve(ops[i], rhs[i], solver, x0=x0s[i], M=Mi, state=state, throw=False)
            except ValueError as err:
                raise ValueError(f"system {i} (solved {position + 1}th of {n_sys}): {err}") from err
            solutions[i] = sol
            state = sol.state
            totals.iterations += sol.stats.iterations
            totals.matvecs += sol.stats.matvecs
            if sol.status is not Status.SUCCESS:
                status = sol.status if status is Status.SUCCESS else status
                result.messages.append(f"system {i}: {sol.message}")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(iters=sol.stats.iterations)
            if throw and sol.status is not Status.SUCCESS:
                _finish(result, status, sort_seconds, start)
                raise LinearSolveError(f"solve_sequence: system {i} (solved {position + 1}th of {n_sys}) did not "
                                       f"converge: {sol.message} (relative residual {sol.stats.residual:.3g} after "
                                       f"{sol.stats.iterations} iterations)", sol.status, result)
    finally:
        if bar is not None:
            bar.close()
    return _finish(result, status, sort_seconds, start)


def _finish(result: SequenceResult, status: Status, sort_seconds: float, start: float) -> SequenceResult:
    done = [s for s in result.solutions if s is not None]
    result.status = status
    result.stats.seconds = time.perf_counter() - start
    result.stats.residual_history = [max(s.stats.residual for s in done)] if done else []
    result.stats.extra.update(sort_seconds=sort_seconds,
                              solve_seconds=sum(s.stats.seconds for s in done),
                              iterations=result.iterations)
    return result


# --------------------------------------------------------------------------- #
# input checks
# --------------------------------------------------------------------------- #
def _looks_like_systems(obj) -> bool:
    return (isinstance(obj, (list, tuple)) and len(obj) > 0
            and all(isinstance(s, tuple) and len(s) == 2 for s in obj))


def _check_systems(systems) -> tuple[list[LinearOperator], list[torch.Tensor]]:
    if not isinstance(systems, (list, tuple)):
        raise ValueError(f"systems must be a list of (A, b) pairs, got {type(systems).__name__}")
    if len(systems) == 0:
        raise ValueError("systems is empty: solve_sequence needs at least one (A, b) pair")
    ops, rhs = [], []
    for i, s in enumerate(systems):
        if not (isinstance(s, (tuple, list)) and len(s) == 2):
            raise ValueError(f"system {i} is a {type(s).__name__}; each system must be an (A, b) pair")
        try:
            op = as_operator(s[0])
        except ValueError as err:
            raise ValueError(f"system {i}: {err}") from err
        if not op.is_square:
            raise ValueError(f"system {i}: the matrix is {op.shape[0]}x{op.shape[1]}; it must be square")
        if ops and op.shape != ops[0].shape:
            raise ValueError(f"system {i} is {op.shape[0]}x{op.shape[1]} but system 0 is "
                             f"{ops[0].shape[0]}x{ops[0].shape[1]}: a sequence must have one size (a recycled "
                             "subspace is a set of n-vectors); solve systems of other sizes separately")
        b = s[1]
        if not isinstance(b, torch.Tensor):
            raise ValueError(f"system {i}: b must be a torch tensor, got {type(b).__name__}")
        if b.ndim not in (1, 2) or b.shape[0] != op.shape[0]:
            raise ValueError(f"system {i}: b has shape {tuple(b.shape)} but the matrix is {op.shape[0]}x"
                             f"{op.shape[1]}; b must be ({op.shape[0]},) or ({op.shape[0]}, k)")
        ops.append(op)
        rhs.append(b)
    return ops, rhs


def _per_system(value, n: int, name: str) -> list:
    if value is None or isinstance(value, (torch.Tensor, LinearOperator)):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} systems; give one per system (in the "
                             "original order) or a single one for all")
        return list(value)
    if name == "M":
        return [value] * n  # anything else as_operator accepts (a SciPy matrix); linear_solve checks it
    raise ValueError(f"{name} must be None, a tensor or a list of tensors (one per system), got "
                     f"{type(value).__name__}")


def _progress_bar(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError("progress=True needs tqdm: pip install tqdm (or pip install 'neuralnumerics[cli]')") from err
    return tqdm(total=total, desc=desc, unit="system")


# --------------------------------------------------------------------------- #
# sorting
# --------------------------------------------------------------------------- #
def _feature_matrix(features, fft_modes: int | None) -> torch.Tensor:
    """``(N, d)`` float64 CPU rows, optionally reduced to their lowest Fourier modes."""
    if isinstance(features, (list, tuple)):
        if len(features) == 0:
            raise ValueError("sort_systems: no features (an empty list)")
        rows = [torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f) for f in features]
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) > 1:
            raise ValueError(f"sort_systems: the features have different shapes {sorted(shapes)[:3]}; give one "
                             "array of one shape per system")
        F = torch.stack(rows)
    elif isinstance(features, (torch.Tensor, np.ndarray)):
        F = torch.as_tensor(features)
        if F.ndim == 0 or F.shape[0] == 0:
            raise ValueError(f"sort_systems: features must have shape (N, ...) with N >= 1, got {tuple(F.shape)}")
    else:
        raise ValueError(f"sort_systems: expected a list of (A, b) pairs or features of shape (N, ...), got "
                         f"{type(features).__name__}")
    F = F.detach().cpu()
    if F.ndim == 1:
        F = F[:, None]
    if F.is_complex():
        F = torch.cat([F.real, F.imag], dim=-1)
    F = F.to(torch.float64)
    if not bool(torch.isfinite(F).all()):
        raise ValueError("sort_systems: the features contain NaN or infinite values")
    if fft_modes is not None:
        F = _low_modes(F, fft_modes)
    return F.reshape(F.shape[0], -1)


def _low_modes(F: torch.Tensor, modes: int) -> torch.Tensor:
    """The ``modes`` lowest frequencies per trailing axis of each feature array, real and imaginary parts."""
    if isinstance(modes, bool) or int(modes) != modes or modes < 1:
        raise ValueError(f"sort_systems: fft_modes must be a positive integer, got {modes!r}")
    dims = list(range(1, F.ndim))
    spec = torch.fft.fftn(F, dim=dims, norm="ortho")
    for d in dims:
        size = spec.shape[d]
        if modes < size:
            freqs = torch.fft.fftfreq(size) * size
            keep = torch.argsort(freqs.abs(), stable=True)[:modes]  # 0, then +-1, +-2, ...
            spec = spec.index_select(d, keep.sort().values)
    return torch.cat([spec.real.reshape(F.shape[0], -1), spec.imag.reshape(F.shape[0], -1)], dim=1)


def _euclidean_rows(F: torch.Tensor) -> Callable[[int, list[int]], torch.Tensor]:
    def dist(i: int, candidates: list[int]) -> torch.Tensor:
        return (F[candidates] - F[i]).norm(dim=1)

    dist.centre_distances = lambda: (F - F.mean(dim=0)).norm(dim=1)  # type: ignore[attr-defined]
    return dist


def _system_distances(systems: list) -> Callable[[int, list[int]], torch.Tensor]:
    """Distances between systems through their matrices, or their right-hand sides if the matrices agree."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import norm as sparse_norm

    mats = []
    for i, (A, _) in enumerate(systems):
        if isinstance(A, FunctionOperator):
            raise ValueError(f"sort_systems: system {i} is a matrix-free FunctionOperator; comparing its entries would "
                             "mean assembling it, so pass the parameters it was built from as features=")
        try:
            M = A.to_scipy() if isinstance(A, LinearOperator) else as_operator(A).to_scipy()
        except ValueError as err:
            raise ValueError(f"sort_systems: system {i}: {err}") from err
        M = sp.csr_matrix(M, dtype=np.float64)
        M.sum_duplicates()
        M.sort_indices()
        if mats and M.shape != mats[0].shape:
            raise ValueError(f"sort_systems: system {i} is {M.shape[0]}x{M.shape[1]}, system 0 "
                             f"{mats[0].shape[0]}x{mats[0].shape[1]}")
        mats.append(M)
    same_pattern = all(np.array_equal(M.indptr, mats[0].indptr) and np.array_equal(M.indices, mats[0].indices)
                       for M in mats)
    if same_pattern:
        F = torch.from_numpy(np.stack([M.data for M in mats]))
        if bool((F == F[0]).all()):  # one operator: only the right-hand sides differ
            F = torch.stack([torch.as_tensor(b).detach().cpu().to(torch.float64).reshape(-1) for _, b in systems])
        return _euclidean_rows(F)

    def dist(i: int, candidates: list[int]) -> torch.Tensor:
        return torch.tensor([sparse_norm(mats[j] - mats[i]) for j in candidates], dtype=torch.float64)

    mean = sum(mats[1:], mats[0]) / len(mats)
    dist.centre_distances = lambda: torch.tensor(  # type: ignore[attr-defined]
        [sparse_norm(M - mean) for M in mats], dtype=torch.float64)
    return dist


def _greedy(dist, n: int, start: int | str) -> list[int]:
    if n == 0:
        raise ValueError("sort_systems: nothing to sort (no systems)")
    if start == "extreme":
        first = int(torch.argmax(dist.centre_distances()))
    elif isinstance(start, (int, np.integer)) and not isinstance(start, bool) and 0 <= start < n:
        first = int(start)
    else:
        raise ValueError(f"sort_systems: start must be 'extreme' or an index in [0, {n}), got {start!r}")
    order = [first]
    remaining = [i for i in range(n) if i != first]
    while remaining:
        d = dist(order[-1], remaining)
        if not bool(torch.isfinite(d).all()):
            raise ValueError("sort_systems: a distance is NaN or infinite; check the systems for non-finite entries")
        order.append(remaining.pop(int(torch.argmin(d))))  # ties: the lowest index
    return order

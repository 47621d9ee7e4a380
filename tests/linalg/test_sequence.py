"""solve_sequence and sort_systems: original order, sorting, totals, recycling along the sequence, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from neuralnumerics import Status
from neuralnumerics.linalg import GMRES, FunctionOperator, Jacobi, LinearSolveError
from neuralnumerics.linalg.recycling import GCRODR
from neuralnumerics.linalg.sequence import SequenceResult, solve_sequence, sort_systems

F64 = torch.float64


def laplacian(g: int) -> sp.csr_matrix:
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(g, g))
    return ((sp.kron(T, sp.identity(g)) + sp.kron(sp.identity(g), T)) * (g + 1) ** 2).tocsr()


def shifted_family(params, g=12, seed=0):
    """``A(s) = L - s I`` (indefinite for s above ~2 pi^2): one parameter, so the right order is by s."""
    L = laplacian(g)
    b = torch.randn(g * g, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return [((L - float(s) * sp.identity(g * g)).tocsr(), b.clone()) for s in params]


def shuffled(n, seed=1):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


# sort_systems ----------------------------------------------------------------------------------------------------

def test_sorting_puts_a_shuffled_one_parameter_family_back_in_order():
    values = torch.linspace(0.0, 1.0, 25, dtype=F64)
    perm = shuffled(25)
    order = sort_systems(values[perm])
    recovered = values[perm][order]
    assert torch.all(recovered.diff() > 0) or torch.all(recovered.diff() < 0)
    # the same through the matrices themselves (Frobenius distance of A(s))
    params = np.linspace(0.0, 60.0, 15)[shuffled(15)]
    order = sort_systems(shifted_family(params))
    assert np.all(np.diff(params[order]) > 0) or np.all(np.diff(params[order]) < 0)


def test_sorting_fields_uses_the_paper_s_fft_reduction():
    x = torch.linspace(0, 1, 32, dtype=F64)
    t = torch.rand(20, generator=torch.Generator().manual_seed(3), dtype=F64)
    fields = torch.sin(np.pi * (x[None, :, None] + t[:, None, None])) * torch.cos(np.pi * x[None, None, :])
    fields = fields + 0.01 * torch.sin(29 * np.pi * x)[None, None, :]  # a fine-scale part every field shares
    order_full = sort_systems(fields)
    order_low = sort_systems(fields, fft_modes=4)
    for order in (order_full, order_low):
        assert torch.all(t[order].diff() > 0) or torch.all(t[order].diff() < 0)
    # lists of per-system arrays work too
    assert sort_systems([f.numpy() for f in fields]) == order_full


def test_sorting_starts_where_asked():
    values = torch.tensor([0.5, 0.0, 1.0, 0.25, 0.75], dtype=F64)
    assert sort_systems(values, start=0) == [0, 3, 1, 4, 2]  # the paper's choice: greedy from the first system
    assert sort_systems(values) in ([1, 3, 0, 4, 2], [2, 4, 0, 3, 1])  # "extreme": from an end of the family


def test_sorting_systems_with_one_matrix_uses_the_right_hand_sides():
    A = laplacian(6)
    bs = [torch.full((36,), float(v), dtype=F64) for v in (3.0, 1.0, 2.0, 0.0)]
    order = sort_systems([(A, b) for b in bs])
    assert [float(bs[i][0]) for i in order] in ([0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0])


def test_sorting_matrices_with_different_patterns():
    A = laplacian(5)
    mats = [A + s * sp.diags(np.r_[np.ones(5), np.zeros(20)]) for s in (2.0, 0.0, 3.0, 1.0)]
    mats[1] = A  # no explicit zeros: a different sparsity pattern from the others
    order = sort_systems([(M, torch.ones(25, dtype=F64)) for M in mats])
    assert order in ([1, 3, 0, 2], [2, 0, 3, 1])


@pytest.mark.parametrize("arg, match", [
    ([], "nothing to sort|no features"),
    (torch.zeros(0, 3), r"N >= 1"),
    ([torch.zeros(3), torch.zeros(4)], "different shapes"),
    (torch.tensor([1.0, float("nan")]), "NaN or infinite"),
    ("abc", "expected a list of"),
])
def test_sort_systems_rejects_bad_features(arg, match):
    with pytest.raises(ValueError, match=match):
        sort_systems(arg)


def test_sort_systems_rejects_bad_start_and_matrix_free_systems():
    with pytest.raises(ValueError, match=r"start must be 'extreme' or an index in \[0, 3\)"):
        sort_systems(torch.arange(3.0), start=3)
    with pytest.raises(ValueError, match="fft_modes must be a positive integer"):
        sort_systems(torch.zeros(3, 8), fft_modes=0)
    op = FunctionOperator(lambda v: 2 * v, (4, 4))
    with pytest.raises(ValueError, match="matrix-free FunctionOperator.*features="):
        sort_systems([(op, torch.ones(4, dtype=F64)), (op, torch.ones(4, dtype=F64))])


# solve_sequence --------------------------------------------------------------------------------------------------

def test_solutions_come_back_in_the_original_order():
    params = np.linspace(0.0, 40.0, 8)[shuffled(8)]
    systems = shifted_family(params)
    result = solve_sequence(systems, GCRODR(m=20, k=5, rtol=1e-10))
    assert isinstance(result, SequenceResult) and result.status is Status.SUCCESS
    assert sorted(result.order) == list(range(8)) and result.order != list(range(8))
    assert result.x.shape == (8, 144) and len(result) == 8
    for i, (A, b) in enumerate(systems):
        ref = torch.from_numpy(spla.spsolve(A.tocsc(), b.numpy()))
        torch.testing.assert_close(result.x[i], ref, rtol=1e-8, atol=1e-10)
        assert result[i].status is Status.SUCCESS
    assert result.stats.iterations == sum(result.iterations) == sum(s.stats.iterations for s in result.solutions)
    assert result.stats.extra["iterations"] == result.iterations
    assert result.stats.seconds >= result.stats.extra["solve_seconds"] > 0
    assert result.stats.residual <= 1e-10


def test_an_explicit_order_is_followed():
    systems = shifted_family([0.0, 10.0, 20.0])
    result = solve_sequence(systems, GCRODR(m=20, k=5, rtol=1e-8), sort=[2, 0, 1])
    assert result.order == [2, 0, 1]
    # system 2 went first: only it has no recycled space to start from
    assert "projected_residual" not in result[2].stats.extra
    assert "projected_residual" in result[0].stats.extra and "projected_residual" in result[1].stats.extra


def test_recycling_along_the_sequence_beats_independent_gmres():
    systems = shifted_family(np.linspace(25.0, 45.0, 10)[shuffled(10)], g=16)
    skr = solve_sequence(systems, GCRODR(m=20, k=8, rtol=1e-8))
    independent = solve_sequence(systems, GMRES(restart=20, rtol=1e-8, max_iters=5000), sort=False)
    assert skr.status is Status.SUCCESS
    torch.testing.assert_close(skr.x, independent.x, rtol=1e-5, atol=1e-8)
    assert skr.stats.iterations < 0.5 * independent.stats.iterations


def rotating_family(params, n=150, speed=0.02, seed=0):
    """``Q(s) diag(lam) Q(s)^T`` with ``Q(s) = exp(s K)``: six tiny eigenvalues whose eigenvectors turn with s."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.cat([torch.logspace(-4, -2, 6, dtype=F64), 1 + 0.5 * torch.rand(n - 6, generator=g, dtype=F64)])
    K = torch.randn(n, n, generator=g, dtype=F64)
    K = speed * (K - K.T) / n ** 0.5
    b = torch.randn(n, generator=g, dtype=F64)
    systems = []
    for s in params:
        Q = torch.linalg.matrix_exp(float(s) * K)
        systems.append(((Q * lam) @ Q.T, b))
    return systems


def test_sorting_helps_when_neighbours_in_the_given_order_differ():
    params = np.linspace(0.0, 1.0, 16)[shuffled(16)]
    systems = rotating_family(params)
    solver = GCRODR(m=20, k=6, rtol=1e-8)
    sorted_ = solve_sequence(systems, solver, features=torch.from_numpy(params))
    unsorted = solve_sequence(systems, solver, sort=False)
    torch.testing.assert_close(sorted_.x, unsorted.x, rtol=1e-5, atol=1e-8)
    assert sorted_.stats.iterations < 0.85 * unsorted.stats.iterations
    # sorting by the matrices themselves finds the same path
    assert sort_systems(systems) in (sorted_.order, sorted_.order[::-1])


def test_initial_guesses_and_preconditioners_per_system():
    systems = shifted_family([0.0, 5.0, 10.0])
    exact = [torch.from_numpy(spla.spsolve(A.tocsc(), b.numpy())) for A, b in systems]
    result = solve_sequence(systems, GCRODR(m=20, k=5, rtol=1e-10), x0=exact, M=Jacobi, sort=False)
    assert result.iterations == [0, 0, 0]
    result = solve_sequence(systems, GCRODR(m=20, k=5, rtol=1e-10), M=Jacobi)
    for x, ref in zip(result.x, exact):
        torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-10)


def test_throw_stops_at_the_first_failure_with_the_partial_result():
    systems = shifted_family([0.0, 10.0, 20.0])
    with pytest.raises(LinearSolveError, match=r"system 0 \(solved 1th of 3\) did not converge") as info:
        solve_sequence(systems, GCRODR(m=5, k=2, rtol=1e-12, max_iters=3), sort=False, throw=True)
    partial = info.value.result
    assert isinstance(partial, SequenceResult) and partial.status is Status.MAX_ITERS
    assert partial.solutions[1] is None
    with pytest.raises(ValueError, match=r"systems \[1, 2\] were not solved"):
        partial.x
    # without throw every system is attempted and the failures are listed
    result = solve_sequence(systems, GCRODR(m=5, k=2, rtol=1e-12, max_iters=3), sort=False)
    assert result.status is Status.MAX_ITERS and len(result.messages) == 3 and result.messages[0].startswith("system 0")


def test_progress_bar_and_its_install_hint(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    systems = shifted_family([0.0, 10.0])
    solve_sequence(systems, GCRODR(m=20, k=5), progress=True)
    assert "GCRODR" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match="progress=True needs tqdm: pip install tqdm"):
        solve_sequence(systems, GCRODR(m=20, k=5), progress=True)


@pytest.mark.parametrize("systems, match", [
    ([], "systems is empty"),
    ("AB", "must be a list of"),
    ([(laplacian(3),)], "system 0 is a tuple; each system must be an"),
    ([(laplacian(3), torch.ones(9, dtype=F64)), (laplacian(4), torch.ones(16, dtype=F64))],
     "system 1 is 16x16 but system 0 is 9x9"),
    ([(laplacian(3), torch.ones(8, dtype=F64))], r"system 0: b has shape \(8,\) but the matrix is 9x9"),
    ([(laplacian(3), np.ones(9))], "system 0: b must be a torch tensor"),
    ([(sp.random(3, 4, format="csr"), torch.ones(3, dtype=F64))], "must be square"),
    ([(laplacian(3), torch.ones(9, dtype=torch.float32))], "system 0 .*float32 and the operator torch.float64"),
    ([("nope", torch.ones(9, dtype=F64))], "system 0: as_operator: cannot make"),
])
def test_bad_sequences_are_refused_with_the_system_named(systems, match):
    with pytest.raises(ValueError, match=match):
        solve_sequence(systems, GCRODR(m=5, k=2), sort=False)


def test_bad_options_are_refused():
    systems = shifted_family([0.0, 10.0])
    with pytest.raises(ValueError, match="solver must be a LinearSolver instance"):
        solve_sequence(systems, "gmres")
    with pytest.raises(ValueError, match=r"permutation of range\(2\)"):
        solve_sequence(systems, GCRODR(m=5, k=2), sort=[0, 0])
    with pytest.raises(ValueError, match="features has 3 rows for 2 systems"):
        solve_sequence(systems, GCRODR(m=5, k=2), features=torch.arange(3.0))
    with pytest.raises(ValueError, match="x0 has 3 entries for 2 systems"):
        solve_sequence(systems, GCRODR(m=5, k=2), x0=[None] * 3)
    with pytest.raises(ValueError, match="M has 1 entries for 2 systems"):
        solve_sequence(systems, GCRODR(m=5, k=2), M=[None])

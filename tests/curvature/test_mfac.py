"""StaticMFAC and SlidingMFAC against dense float64 solves with the damped empirical Fisher, their operator
structure, float32 accuracy with small dampening, checkpoints and error messages."""

from __future__ import annotations

import copy

import pytest
import torch

from neuralnumerics.curvature import SlidingMFAC, StaticMFAC
from neuralnumerics.curvature.mfac import _inverse_factor
from neuralnumerics.linalg import CG, DenseOperator, LinearOperator, linear_solve

F64 = torch.float64


def gradients(m, d, seed=0, correlated=False, dtype=F64):
    """``(m, d)`` gradients: i.i.d. normal, or correlated (singular values from 1 down to 1e-3, as for
    consecutive training gradients), with mean squared entry about 1."""
    g = torch.Generator().manual_seed(seed)
    if not correlated:
        return torch.randn(m, d, dtype=F64, generator=g).to(dtype)
    U, _ = torch.linalg.qr(torch.randn(m, m, dtype=F64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(d, m, dtype=F64, generator=g))
    s = torch.logspace(0, -3, m, dtype=F64) * (d / (torch.logspace(0, -3, m, dtype=F64) ** 2).mean()) ** 0.5
    return ((U * s) @ V.T / m ** 0.5).to(dtype)


def vectors(d, k=None, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    shape = (d,) if k is None else (d, k)
    return torch.randn(*shape, dtype=F64, generator=g).to(dtype)


def fisher(G, damp):
    """The oracle's matrix, float64: ``damp I + G^T G / m``."""
    G = G.to(F64)
    return damp * torch.eye(G.shape[1], dtype=F64) + G.T @ G / G.shape[0]


def block_fisher(G, damp, B):
    F = torch.zeros(G.shape[1], G.shape[1], dtype=F64)
    for s in range(0, G.shape[1], B):
        F[s:s + B, s:s + B] = fisher(G[:, s:s + B], damp)
    return F


def rel_err(a, b):
    return float((a.to(F64) - b).norm() / b.norm())


# StaticMFAC ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m, d", [(12, 80), (30, 20)])  # fewer and more gradients than weights
@pytest.mark.parametrize("k", [None, 3])
def test_static_mv_matches_the_dense_solve(m, d, k):
    G, damp = gradients(m, d), 0.05
    x = vectors(d, k)
    op = StaticMFAC(G, damp=damp)
    torch.testing.assert_close(op.mv(x), torch.linalg.solve(fisher(G, damp), x), rtol=1e-10, atol=1e-10)
    assert op.mv(x).shape == x.shape and (op @ x).shape == x.shape


def test_static_diag_element_and_to_dense_match_the_dense_inverse():
    G, damp = gradients(10, 50), 0.2
    inv = torch.linalg.inv(fisher(G, damp))
    op = StaticMFAC(G, damp=damp)
    torch.testing.assert_close(op.diag(), inv.diagonal(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.diagonal(), inv.diagonal(), rtol=1e-12, atol=1e-12)
    for i, j in [(0, 0), (3, 17), (17, 3), (49, 0), (25, 25)]:
        e = op.element(i, j)
        assert e.ndim == 0 and e.dtype == F64
        assert float(e) == pytest.approx(float(inv[i, j]), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(op.to_dense(), inv, rtol=1e-10, atol=1e-12)


def test_static_equals_the_recursive_sherman_morrison_inverse():
    # the paper's construction, densely: F_0 = damp I, F_i = F_{i-1} + g_i g_i^T / m, one rank-one update each
    G, damp = gradients(8, 30, seed=3), 0.1
    H = torch.eye(30, dtype=F64) / damp
    for g in G:
        v = H @ g
        H -= torch.outer(v, v) / (G.shape[0] + g @ v)
    torch.testing.assert_close(StaticMFAC(G, damp=damp).to_dense(), H, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("B", [1, 7, 10, 50, 80])
def test_blocks_give_the_block_diagonal_fisher(B):
    G, damp = gradients(12, 50, seed=2), 0.1
    dense = torch.linalg.inv(block_fisher(G, damp, B))
    op = StaticMFAC(G, damp=damp, blocks=B)
    assert op.block_size == min(B, 50)
    x = vectors(50, 2)
    torch.testing.assert_close(op.mv(x), dense @ x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.diag(), dense.diagonal(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-10, atol=1e-12)
    for i, j in [(0, 1), (0, 6), (6, 7), (48, 49), (49, 0), (13, 13)]:
        assert float(op.element(i, j)) == pytest.approx(float(dense[i, j]), rel=1e-10, abs=1e-13)


def test_small_work_chunks_give_the_same_answers(monkeypatch):
    # large problems are processed in chunks of blocks and columns; force many tiny chunks here
    from neuralnumerics.curvature import mfac

    monkeypatch.setattr(mfac, "_chunk_elements", lambda device: 16)
    G, damp, x = gradients(6, 50, seed=16), 0.1, vectors(50, 2)
    for B in (None, 7):
        dense = torch.linalg.inv(fisher(G, damp) if B is None else block_fisher(G, damp, B))
        torch.testing.assert_close(StaticMFAC(G, damp=damp, blocks=B).mv(x), dense @ x, rtol=1e-10, atol=1e-12)
    win = SlidingMFAC(50, 4, damp=damp, dtype=torch.float32)
    for g in G.float():
        win.update(g)
    torch.testing.assert_close(win.mv(x.float()).double(), torch.linalg.solve(fisher(G.float()[-4:], damp), x),
                               rtol=1e-5, atol=1e-6)


def test_blocks_of_7_have_a_shorter_last_block_and_no_coupling_across_blocks():
    G = gradients(6, 50, seed=4)
    op = StaticMFAC(G, damp=0.1, blocks=7)  # 7 blocks of 7, then one of 1
    assert float(op.element(6, 7)) == 0.0 and float(op.element(49, 48)) == 0.0
    assert float(op.element(5, 6)) != 0.0
    assert float(op.element(49, 49)) == pytest.approx(1 / (0.1 + float((G[:, 49] ** 2).mean())), rel=1e-12)


# SlidingMFAC ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 5, 7])  # any m, not only multiples of 32
def test_sliding_window_after_more_than_3m_updates(m):
    d, damp = 40, 0.05
    G = gradients(3 * m + 4, d, seed=5)
    win = SlidingMFAC(d, m, damp=damp, dtype=F64)
    for g in G:
        win.update(g)
    assert win.size == m and win.num_updates == 3 * m + 4
    x = vectors(d, 2)
    expect = torch.linalg.solve(fisher(G[-m:], damp), x)
    torch.testing.assert_close(win.mv(x), expect, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(win.mv(x[:, 0]), expect[:, 0], rtol=1e-10, atol=1e-12)


def test_a_partly_filled_window_is_the_fisher_of_the_gradients_it_holds():
    d, m, damp = 30, 6, 0.1
    G = gradients(m, d, seed=6)
    win = SlidingMFAC(d, m, damp=damp, dtype=F64)
    x = vectors(d)
    torch.testing.assert_close(win.mv(x), x / damp)  # empty: F = damp I
    for n in range(1, m):
        win.update(G[n - 1])
        assert win.size == n
        expect = torch.linalg.solve(fisher(G[:n], damp), x)
        torch.testing.assert_close(win.mv(x), expect, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(win.mv(x), StaticMFAC(G[:n], damp=damp).mv(x), rtol=1e-10, atol=1e-12)


def test_update_mv_is_the_inverse_fisher_of_the_new_window_times_the_new_gradient():
    d, m, damp = 25, 4, 0.03
    G = gradients(11, d, seed=7)
    win = SlidingMFAC(d, m, damp=damp, dtype=F64)
    for t, g in enumerate(G):
        u = win.update_mv(g.clone().requires_grad_(t % 2 == 0))  # the window keeps no autograd graph
        assert not u.requires_grad and not win.grads.requires_grad
        expect = torch.linalg.solve(fisher(G[max(0, t - m + 1):t + 1], damp), g)
        torch.testing.assert_close(u, expect, rtol=1e-10, atol=1e-12)


def _s_matrix(win):
    n = win.size
    return win._gram[:n, :n] + n * win.damp * torch.eye(n, dtype=F64)


def test_replacing_gradients_updates_the_small_inverse_by_woodbury_and_rebuilds_it_every_m():
    # white-box: once the window is full, S^{-1} is updated in O(m^2) (not refactored) and must equal the
    # inverse of S before any refinement touches it; after m replacements it is rebuilt
    d, m = 80, 6
    G = gradients(10 * m, d, seed=17, correlated=True)
    damp = 1e-4 * float(G.square().mean())
    win = SlidingMFAC(d, m, damp=damp, dtype=F64)
    replacements = []
    for t, g in enumerate(G):
        if t < m:
            win.update(g)
            continue
        u = win.update_mv(g)
        assert win._inv is not None, "a full window keeps its inverse across replacements"
        torch.testing.assert_close(win._inv, torch.linalg.inv(_s_matrix(win)), rtol=1e-7, atol=0)
        assert rel_err(u, torch.linalg.solve(fisher(G[t + 1 - m:t + 1], damp), g)) < 1e-10
        replacements.append(win._replacements)
    assert replacements[:m + 2] == list(range(m + 1)) + [0]  # rebuilt at the solve after m replacements
    x = vectors(d)
    assert rel_err(win.mv(x), torch.linalg.solve(fisher(G[-m:], damp), x)) < 1e-10


def test_a_drifted_inverse_is_repaired_by_refinement_or_rebuilt():
    d, m, damp = 30, 5, 0.05
    G = gradients(2 * m, d, seed=18)
    win = SlidingMFAC(d, m, damp=damp, dtype=F64)
    for g in G:
        win.update(g)
    x = vectors(d)
    expect = torch.linalg.solve(fisher(G[-m:], damp), x)
    exact = torch.linalg.inv(_s_matrix(win))
    drift = 1e-7 * vectors(m, m, seed=3)
    win._inv, win._replacements = exact * (1 + drift + drift.T), 3  # as if 3 Woodbury updates had drifted
    torch.testing.assert_close(win.mv(x), expect, rtol=1e-11, atol=0)  # one refinement step removes it
    assert win._replacements == 3
    win._inv = exact * 1.5  # far off: the residual check rebuilds it
    torch.testing.assert_close(win.mv(x), expect, rtol=1e-11, atol=0)
    assert win._replacements == 0


def test_reset_empties_the_window():
    win = SlidingMFAC(10, 3, damp=0.5, dtype=F64)
    for g in gradients(4, 10):
        win.update(g)
    win.reset()
    x = vectors(10)
    assert win.size == 0 and win.num_updates == 0
    torch.testing.assert_close(win.mv(x), x / 0.5)


def test_sliding_state_dict_round_trip_continues_bit_for_bit():
    d, m = 20, 4
    G = gradients(15, d, seed=8, dtype=torch.float32)
    a = SlidingMFAC(d, m, damp=1e-3, dtype=torch.float32)
    for g in G[:9]:
        a.update(g)
    saved = copy.deepcopy(a.state_dict())
    b = SlidingMFAC(d, m, damp=1e-3, dtype=torch.float32)
    b.load_state_dict(saved)
    saved["grads"].zero_()  # loading copied it
    x = vectors(d, dtype=torch.float32)
    assert torch.equal(a.mv(x), b.mv(x))
    for g in G[9:]:
        assert torch.equal(a.update_mv(g), b.update_mv(g))
        assert torch.equal(a.mv(x), b.mv(x))
    assert a.state_dict()["inverse"] is not None  # saved mid-sequence: the updated inverse travels with it
    e = SlidingMFAC(d, m, damp=1e-3, dtype=torch.float32)
    e.load_state_dict(copy.deepcopy(a.state_dict()))
    for g in G[:5]:
        assert torch.equal(a.update_mv(g), e.update_mv(g))
    older = copy.deepcopy(a.state_dict())
    del older["inverse"]  # a checkpoint from before the inverse was kept: rebuilt, equal to rounding
    c = SlidingMFAC(d, m, damp=1e-3, dtype=torch.float32)
    c.load_state_dict(older)
    torch.testing.assert_close(c.mv(x), a.mv(x), rtol=1e-5, atol=0)


# the operator ---------------------------------------------------------------------------------------------------

def _operators():
    G = gradients(9, 40, seed=9)
    win = SlidingMFAC(40, 5, damp=0.01, dtype=F64)
    for g in G:
        win.update(g)
    return [StaticMFAC(G, damp=0.01), StaticMFAC(G, damp=0.01, blocks=6), win]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["static", "blocks", "sliding"])
def test_the_inverse_fisher_is_a_symmetric_positive_definite_operator(which):
    op = _operators()[which]
    assert isinstance(op, LinearOperator) and op.symmetric and op.positive_definite
    assert op.shape == (40, 40) and op.dtype == F64
    X, Y = vectors(40, 8, seed=10), vectors(40, 8, seed=11)
    FX, FY = op.mv(X), op.mv(Y)
    assert bool(((X * FX).sum(0) > 0).all())
    torch.testing.assert_close((FX * Y).sum(0), (X * FY).sum(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(op.rmv(X), FX)
    dense = op.to_dense()
    torch.testing.assert_close(dense, dense.T, rtol=1e-12, atol=1e-14)
    eig = torch.linalg.eigvalsh(dense)
    assert float(eig.min()) > 0 and float(eig.max()) <= 1 / 0.01 * (1 + 1e-12)


def test_it_preconditions_cg_in_the_linalg_slot():
    # M = F^{-1} exactly: preconditioned CG on F x = b converges in one iteration (two with rounding)
    G, damp = gradients(10, 60, seed=12, correlated=True), 1e-3
    F = fisher(G, damp)
    b = vectors(60)
    plain = linear_solve(DenseOperator(F, positive_definite=True), b, CG(rtol=1e-10, max_iters=2000))
    pre = linear_solve(DenseOperator(F, positive_definite=True), b, CG(rtol=1e-10), M=StaticMFAC(G, damp=damp))
    assert pre.status.ok and pre.stats.iterations <= 2 < plain.stats.iterations
    torch.testing.assert_close(pre.x, torch.linalg.solve(F, b), rtol=1e-8, atol=1e-10)


# float32 with small dampening ------------------------------------------------------------------------------------

def _sherman_morrison_float32(G, damp, x):
    """The paper's static algorithm as written (rank-one Woodbury updates), run in float32: the baseline."""
    m = G.shape[0]
    V, den = torch.zeros_like(G), torch.zeros(m, dtype=G.dtype)
    for i, g in enumerate(G):
        v = g / damp - V[:i].T @ ((V[:i] @ g) / den[:i])
        V[i], den[i] = v, m + g @ v
    return x / damp - V.T @ ((V @ x) / den)


@pytest.mark.parametrize("correlated", [False, True], ids=["iid", "correlated"])
def test_float32_with_small_damping_matches_the_float64_dense_solve(correlated):
    m, d = 16, 120
    G64 = gradients(m, d, seed=13, correlated=correlated)
    damp = 1e-6 * float(G64.square().mean())
    G = G64.float()
    F = fisher(G, damp)  # of the float32 gradients, in float64
    x = vectors(d, dtype=torch.float32)
    expect = torch.linalg.solve(F, x.to(F64))
    op = StaticMFAC(G, damp=damp)
    ours = rel_err(op.mv(x), expect)
    baseline = rel_err(_sherman_morrison_float32(G, damp, x), expect)
    assert ours < 1e-5
    assert ours <= 1.5 * baseline if not correlated else ours < baseline / 10  # float64 Gram: 100x better
    assert rel_err(op.diag(), torch.linalg.inv(F).diagonal()) < 1e-5
    win = SlidingMFAC(d, m, damp=damp, dtype=torch.float32)
    for g in G[:-1]:
        win.update(g)
    step = win.update_mv(G[-1])  # F^{-1} g for g in the window: no cancellation
    assert rel_err(step, torch.linalg.solve(F, G[-1].to(F64))) < 1e-4
    assert rel_err(_sherman_morrison_float32(G, damp, G[-1]), torch.linalg.solve(F, G[-1].to(F64))) > 1e-3
    assert rel_err(win.mv(x), expect) < 2e-5
    # the optimiser's default, float32 Gram entries: its step direction still beats the float32 recursion
    fast = SlidingMFAC(d, m, damp=damp, dtype=torch.float32, gram_dtype=None)
    for g in G[:-1]:
        fast.update(g)
    u_star = torch.linalg.solve(F, G[-1].to(F64))
    assert rel_err(fast.update_mv(G[-1]), u_star) < rel_err(_sherman_morrison_float32(G, damp, G[-1]), u_star) / 2


def test_a_float32_gram_matrix_is_less_accurate_but_correct_on_well_conditioned_gradients():
    G = gradients(12, 60, seed=14, dtype=torch.float32)
    x = vectors(60, dtype=torch.float32)
    expect = torch.linalg.solve(fisher(G, 1e-2), x.to(F64))
    assert rel_err(StaticMFAC(G, damp=1e-2, gram_dtype=None).mv(x), expect) < 1e-5
    win = SlidingMFAC(60, 12, damp=1e-2, dtype=torch.float32, gram_dtype=None)
    for g in G:
        win.update(g)
    assert rel_err(win.mv(x), expect) < 1e-5


def test_an_indefinite_rounded_gram_matrix_falls_back_to_clipped_eigenvalues():
    Q, _ = torch.linalg.qr(vectors(3, 3, seed=15))
    gram = (Q * torch.tensor([1.0, 1e-3, -1e-12], dtype=F64)) @ Q.T  # PSD up to rounding-size negatives
    shift = 1e-14
    assert int(torch.linalg.cholesky_ex(gram + shift * torch.eye(3, dtype=F64))[1]) != 0
    expect = 1 / (torch.tensor([1.0, 1e-3, 0.0], dtype=F64) + shift)  # S^{-1} with the negative eigenvalue clipped
    for batch in (gram, torch.stack([gram, torch.eye(3, dtype=F64)])):
        T = _inverse_factor(batch, shift)
        T = T if T.ndim == 2 else T[0]
        assert bool(torch.isfinite(T).all())
        torch.testing.assert_close((Q.T @ T.T @ T @ Q).diagonal(), expect, rtol=1e-6, atol=0)


# errors ----------------------------------------------------------------------------------------------------------

def test_static_rejects_bad_input_with_the_fix():
    G = gradients(4, 10)
    with pytest.raises(ValueError, match=r"grads must be a 2D tensor of shape \(m, d\).*single gradient g is g"):
        StaticMFAC(G[0])
    with pytest.raises(ValueError, match="is empty; it needs at least one gradient"):
        StaticMFAC(G[:0])
    with pytest.raises(ValueError, match=r"real floating tensor, got dtype torch.int64; convert it"):
        StaticMFAC(torch.ones(3, 4, dtype=torch.int64))
    bad = G.clone()
    bad[2, 5] = float("nan")
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"grads has 2 non-finite \(NaN or inf\) entries, the first at index \(2, 5\)"):
        StaticMFAC(bad)
    for damp in (0.0, -1.0, float("nan"), float("inf"), True, "1e-5"):
        with pytest.raises(ValueError, match="damp must be a positive finite number"):
            StaticMFAC(G, damp=damp)
    for blocks in (0, -3, 2.5):
        with pytest.raises(ValueError, match="blocks must be a positive integer"):
            StaticMFAC(G, blocks=blocks)
    with pytest.raises(ValueError, match="gram_dtype must be a real floating torch.dtype"):
        StaticMFAC(G, gram_dtype=torch.int32)


def test_products_and_entries_reject_bad_input_with_the_fix():
    op = StaticMFAC(gradients(4, 10), damp=0.1)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(10,\) or \(10, k\), got a torch.float64 "
                                         r"tensor of shape \(9,\)"):
        op.mv(vectors(9))
    with pytest.raises(ValueError, match=r"shape \(10,\) or \(10, k\)"):
        op.mv(vectors(10).reshape(2, 5, 1))
    with pytest.raises(ValueError, match=r"x has dtype torch.float32 but the operator works in torch.float64; pass"):
        op.mv(vectors(10, dtype=torch.float32))
    with pytest.raises(IndexError, match=r"j = 10 is outside \[0, 10\)"):
        op.element(0, 10)
    with pytest.raises(IndexError, match=r"i = -1 is outside"):
        op.element(-1, 0)
    with pytest.raises(IndexError, match="i must be an integer, got float"):
        op.element(1.0, 0)


def test_sliding_rejects_bad_input_with_the_fix_and_keeps_its_window():
    for kwargs, match in [(dict(dim=0, m=3), "dim must be a positive integer"),
                          (dict(dim=5, m=0), "m must be a positive integer, got 0"),
                          (dict(dim=5, m=2.5), "m must be a positive integer, got 2.5"),
                          (dict(dim=5, m=3, damp=0), "damp must be a positive finite number"),
                          (dict(dim=5, m=3, dtype=torch.int64), "dtype must be a real floating")]:
        with pytest.raises(ValueError, match=match):
            SlidingMFAC(**kwargs)
    win = SlidingMFAC(6, 3, damp=0.1, dtype=F64)
    win.update(vectors(6))
    x = vectors(6, seed=2)
    before = win.mv(x)
    with pytest.raises(ValueError, match=r"g must be a gradient of shape \(6,\), got .*\(2, 3\).*flatten it with "
                                         r"g.reshape\(-1\)"):
        win.update(vectors(6).reshape(2, 3))
    with pytest.raises(ValueError, match=r"g must be a gradient of shape \(6,\), got .*\(7,\)"):
        win.update(vectors(7))
    with pytest.raises(ValueError, match=r"g is torch.float32 on cpu but the window holds torch.float64"):
        win.update(vectors(6, dtype=torch.float32))
    bad = vectors(6)
    bad[4] = float("nan")
    with pytest.raises(ValueError, match=r"the gradient has 1 non-finite \(NaN or inf\) entries, the first at index 4"):
        win.update_mv(bad)
    assert win.num_updates == 1 and torch.equal(win.mv(x), before)
    small = SlidingMFAC(3, 2, damp=0.1, dtype=torch.float32, gram_dtype=None)
    with pytest.raises(ValueError, match=r"the gradient is finite but its inner products overflow torch.float32 "
                                         r"\(\|g\|\^2 = inf\); the window is unchanged"):
        small.update(torch.tensor([1e20, 0.0, 1.0]))
    assert small.num_updates == 0
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(6,\)"):
        win.mv(vectors(5))
    other = SlidingMFAC(6, 4, dtype=F64)
    with pytest.raises(ValueError, match="holds m=4 gradients of dimension 6; this window has m=3, dim=6"):
        win.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="expected a dict with 'grads', 'gram' and 'num_updates'"):
        win.load_state_dict({"grads": other.state_dict()["grads"]})

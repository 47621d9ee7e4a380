"""The MFAC optimiser: its steps against dense float64 solves with the window's Fisher, per-group options,
bit-for-bit resumption from a state dict, a least-squares fit, and error messages."""

from __future__ import annotations

import io
import math

import pytest
import torch

from neuralnumerics.curvature import MFAC, SlidingMFAC

F64 = torch.float64


def fisher(G, damp):
    G = torch.stack(G).to(F64)
    return damp * torch.eye(G.shape[1], dtype=F64) + G.T @ G / G.shape[0]


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def regression(seed=0, n=8, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g).to(dtype), torch.randn(n, 3, generator=g).to(dtype)


def model(seed=0, dtype=F64):
    torch.manual_seed(seed)  # tests only: nn.Linear initialises from the global generator
    return torch.nn.Linear(5, 3).to(dtype)


def backward(net, X, y):
    net.zero_grad()
    loss = ((net(X) - y) ** 2).mean()
    loss.backward()
    return loss


def test_the_first_step_is_minus_lr_times_the_inverse_fisher_of_one_gradient():
    net, (X, y) = model(), regression()
    opt = MFAC(net.parameters(), lr=0.3, m=4, damp=0.05)
    backward(net, X, y)
    w, g = flat(net.parameters()).detach().clone(), flat(p.grad for p in net.parameters())
    opt.step()
    # F = damp I + g g^T, so F^{-1} g = g / (damp + |g|^2)
    torch.testing.assert_close(flat(net.parameters()).detach(), w - 0.3 * g / (0.05 + g @ g), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.5, 0.1)])
def test_steps_match_dense_solves_with_the_sliding_window(momentum, weight_decay):
    net, (X, y) = model(1), regression(1)
    lr, m, damp = 0.2, 3, 0.02
    opt = MFAC(net.parameters(), lr=lr, m=m, damp=damp, momentum=momentum, weight_decay=weight_decay)
    window, v = [], torch.zeros(18, dtype=F64)
    for t in range(8):  # the window fills, then slides
        backward(net, X + 0.1 * t, y)
        w = flat(net.parameters()).detach().clone()
        g = flat(p.grad for p in net.parameters()) + weight_decay * w
        window = (window + [g])[-m:]
        u = torch.linalg.solve(fisher(window, damp), g)
        v = momentum * v + (1 - momentum) * u if momentum else u
        opt.step()
        torch.testing.assert_close(flat(net.parameters()).detach(), w - lr * v, rtol=1e-10, atol=1e-12)
    assert opt.window.size == m and opt.window.num_updates == 8


def test_per_group_learning_rates_and_parameters_without_gradients():
    torch.manual_seed(2)
    a, b = torch.nn.Parameter(torch.randn(4, dtype=F64)), torch.nn.Parameter(torch.randn(3, dtype=F64))
    unused = torch.nn.Parameter(torch.randn(2, dtype=F64))
    opt = MFAC([{"params": [a]}, {"params": [b, unused], "lr": 0.0}], lr=0.5, m=2, damp=0.1)
    window = []
    for t in range(3):
        opt.zero_grad()
        ((a * (t + 1)).sum() ** 2 + (b ** 3).sum()).backward()
        assert unused.grad is None
        g = torch.cat([a.grad, b.grad, torch.zeros(2, dtype=F64)])  # no gradient counts as zero
        window = (window + [g])[-2:]
        u = torch.linalg.solve(fisher(window, 0.1), g)
        before = [p.detach().clone() for p in (a, b, unused)]
        opt.step()
        torch.testing.assert_close(a.detach(), before[0] - 0.5 * u[:4], rtol=1e-10, atol=1e-12)
        assert torch.equal(b.detach(), before[1]) and torch.equal(unused.detach(), before[2])


def test_the_closure_is_evaluated_with_gradients_and_its_loss_returned():
    net, (X, y) = model(3), regression(3)
    opt = MFAC(net.parameters(), lr=0.1, m=2, damp=0.1)
    loss = opt.step(lambda: backward(net, X, y))
    assert isinstance(loss, torch.Tensor) and loss.requires_grad and opt.window.num_updates == 1


def test_the_window_is_a_linear_operator_for_the_current_gradients():
    net, (X, y) = model(4), regression(4)
    opt = MFAC(net.parameters(), lr=0.1, m=2, damp=0.1)
    assert isinstance(opt.window, SlidingMFAC) and opt.window.shape == (18, 18) and opt.window.positive_definite
    backward(net, X, y)
    g = flat(p.grad for p in net.parameters())
    opt.step()
    torch.testing.assert_close(opt.window.mv(g), torch.linalg.solve(fisher([g], 0.1), g), rtol=1e-10, atol=1e-12)


def _train(net, opt, steps, first):
    """``steps`` steps on batches that depend only on the step index; the parameters after each step."""
    out = []
    for t in range(first, first + steps):
        X, y = regression(100 + t, dtype=torch.float32)
        backward(net, X, y)
        opt.step()
        out.append(flat(net.parameters()).detach().clone())
    return out


def test_a_state_dict_round_trip_continues_bit_for_bit():
    kwargs = dict(lr=0.05, m=3, damp=1e-3, momentum=0.9, weight_decay=0.01)
    net = model(5, dtype=torch.float32)
    opt = MFAC(net.parameters(), **kwargs)
    _train(net, opt, 5, 0)
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    expected = _train(net, opt, 6, 5)

    buffer.seek(0)
    saved = torch.load(buffer)
    net2 = model(6, dtype=torch.float32)  # another initialisation, overwritten by the checkpoint
    net2.load_state_dict(saved["model"])
    opt2 = MFAC(net2.parameters(), **kwargs)
    opt2.load_state_dict(saved["opt"])
    got = _train(net2, opt2, 6, 5)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_loading_copies_so_two_optimisers_do_not_share_buffers():
    kwargs = dict(lr=0.05, m=2, damp=1e-3, momentum=0.5)
    net = model(7, dtype=torch.float32)
    opt = MFAC(net.parameters(), **kwargs)
    _train(net, opt, 3, 0)
    net2 = model(7, dtype=torch.float32)
    net2.load_state_dict(net.state_dict())
    opt2 = MFAC(net2.parameters(), **kwargs)
    opt2.load_state_dict(opt.state_dict())  # no copy taken by the caller
    for t in range(3, 6):  # interleaved: in-place updates of one must not reach the other
        a, b = _train(net, opt, 1, t), _train(net2, opt2, 1, t)
        assert torch.equal(a[0], b[0])


def test_training_a_least_squares_problem_decreases_the_loss():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(32, 8, dtype=F64, generator=g) * torch.logspace(0, 1, 8, dtype=F64)  # Hessian eigenvalues ~1..200
    b = A @ torch.randn(8, dtype=F64, generator=g)
    b = b / b.square().mean().sqrt()

    def fit(make_opt, steps=30):
        w = torch.zeros(8, dtype=F64, requires_grad=True)
        opt = make_opt([w])
        for _ in range(steps):
            opt.zero_grad()
            ((A @ w - b) ** 2).mean().backward()
            opt.step()
        return float(((A @ w.detach() - b) ** 2).mean())

    initial = float(b.square().mean())
    final = fit(lambda p: MFAC(p, lr=0.1, m=3, damp=1.0))
    assert final < 0.25 * initial
    # the same learning rate without the curvature diverges (lr > 2 / largest Hessian eigenvalue)
    sgd = fit(lambda p: torch.optim.SGD(p, lr=0.1))
    assert not math.isfinite(sgd) or sgd > 1e3 * initial


# errors ----------------------------------------------------------------------------------------------------------

def test_bad_hyperparameters_are_refused_with_the_fix():
    params = list(model().parameters())
    for kwargs, match in [(dict(lr=-1.0), "lr must be >= 0"), (dict(m=0), "m must be a positive integer, got 0"),
                          (dict(m=1.5), "m must be a positive integer"),
                          (dict(damp=0.0), "damp must be a positive finite number"),
                          (dict(damp=-1e-5), "damp must be a positive finite number"),
                          (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
                          (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
                          (dict(lr=float("nan")), "lr must be a finite number")]:
        with pytest.raises(ValueError, match=match):
            MFAC(params, **kwargs)
    with pytest.raises(ValueError, match="'m' applies to the single gradient window of all parameters"):
        MFAC([{"params": params, "m": 4}])
    with pytest.raises(ValueError, match="empty parameter list"):
        MFAC([])


def test_mixed_dtypes_and_later_groups_are_refused():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="must share a dtype and device; got torch.float32 on cpu and torch.float64"):
        MFAC([a, b])
    opt = MFAC([a])
    with pytest.raises(ValueError, match="cannot be added after construction; build a new MFAC"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})


def test_step_without_gradients_or_with_non_finite_ones_says_so_and_changes_nothing():
    net, (X, y) = model(8), regression(8)
    opt = MFAC(net.parameters(), lr=0.1, m=2)
    with pytest.raises(ValueError, match=r"no parameter has a gradient; call loss.backward\(\) before step\(\)"):
        opt.step()
    backward(net, X, y)
    net.bias.grad[1] = float("inf")
    before = flat(net.parameters()).detach().clone()
    with pytest.raises(ValueError, match=r"1 non-finite \(NaN or inf\) entries, the first in parameter 1 of group 0 "
                                         r"\(shape \(3,\)\); the window and the parameters are unchanged"):
        opt.step()
    assert torch.equal(flat(net.parameters()).detach(), before) and opt.window.num_updates == 0


def test_loading_a_foreign_or_mismatched_state_dict_is_refused():
    params = list(model().parameters())
    opt = MFAC(params, m=2)
    with pytest.raises(ValueError, match="has no 'mfac' entry with the gradient window"):
        opt.load_state_dict(torch.optim.SGD(params, lr=0.1).state_dict())
    with pytest.raises(ValueError, match="the saved window holds m=3 gradients but this optimiser has m=2"):
        opt.load_state_dict(MFAC(params, m=3).state_dict())


def test_the_window_accumulates_gram_entries_in_the_parameters_dtype_unless_asked():
    net = model(9, dtype=torch.float32)
    assert MFAC(net.parameters(), m=3).window.gram_dtype == torch.float32  # the optimiser's default: speed
    assert MFAC(net.parameters(), m=3, gram_dtype=F64).window.gram_dtype == F64
    assert SlidingMFAC(4, 2, dtype=torch.float32).gram_dtype == F64  # the operator's default: accuracy

"""M-FAC pruning: OBS saliencies and corrections against dense float64 inverses and constrained quadratic
minimisation, gradual pruning against a dense re-implementation with analytic gradients, exact sparsity and
masks, M-FAC against magnitude pruning on a small classifier, and error messages."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from neuralnumerics.curvature import (OBSResult, StaticMFAC, apply_masks, magnitude_prune, mfac_prune, obs_prune)
from neuralnumerics.linalg import DenseOperator

F64 = torch.float64


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def randn(*shape, seed=0):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def fisher(G, damp, B=None):
    """The oracle's damped empirical Fisher, float64, optionally block diagonal with blocks of ``B``."""
    G = G.to(F64)
    d = G.shape[1]
    B = d if B is None else B
    out = torch.zeros(d, d, dtype=F64)
    for s in range(0, d, B):
        g = G[:, s:s + B]
        out[s:s + B, s:s + B] = damp * torch.eye(g.shape[1], dtype=F64) + g.T @ g / G.shape[0]
    return out


def dense_obs(w, Finv, count):
    """OBS with an explicit inverse: the ``count`` lowest saliencies, the summed single-weight corrections."""
    diag = Finv.diagonal()
    sal = w ** 2 / (2 * diag)
    drop = torch.argsort(sal)[:count]
    new = w - Finv[:, drop] @ (w[drop] / diag[drop])
    new[drop] = 0
    return new, drop, sal


def removal_cost(F_, w, q):
    """min over w' with w'_q = 0 of (w' - w)^T F (w' - w) / 2, by solving the reduced system (no inverse of
    F, no OBS formula); returns (cost, minimiser)."""
    d = w.numel()
    rest = torch.tensor([i for i in range(d) if i != q])
    delta = torch.zeros(d, dtype=F64)
    delta[q] = -w[q]
    delta[rest] = torch.linalg.solve(F_[rest][:, rest], F_[rest, q] * w[q])
    return 0.5 * delta @ F_ @ delta, w + delta


# obs_prune -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m, d", [(6, 30), (40, 12)])  # fewer and more gradients than weights
@pytest.mark.parametrize("blocks", [None, 7])
@pytest.mark.parametrize("count", [1, 5])
def test_obs_saliencies_and_update_match_the_dense_inverse(m, d, blocks, count):
    G, w, damp = randn(m, d, seed=1), randn(d, seed=2), 0.03
    Finv = torch.linalg.inv(fisher(G, damp, blocks))
    new, drop, sal = dense_obs(w, Finv, count)
    out = obs_prune(w, StaticMFAC(G, damp, blocks=blocks), count)
    assert isinstance(out, OBSResult)
    torch.testing.assert_close(out.saliency, sal, rtol=1e-10, atol=0)
    assert sorted(out.pruned.nonzero().squeeze(1).tolist()) == sorted(drop.tolist())
    torch.testing.assert_close(out.weights, new, rtol=1e-10, atol=1e-12)
    assert bool((out.weights[drop] == 0).all()) and int((out.weights == 0).sum()) == count


def test_removing_one_weight_costs_its_saliency_and_is_the_constrained_minimum():
    G, w, damp = randn(8, 15, seed=3), randn(15, seed=4), 0.05
    F_ = fisher(G, damp)
    out = obs_prune(w, StaticMFAC(G, damp), 1)
    costs = torch.stack([removal_cost(F_, w, q)[0] for q in range(15)])
    torch.testing.assert_close(out.saliency, costs, rtol=1e-10, atol=0)
    q = int(out.pruned.nonzero())
    assert q == int(costs.argmin())
    torch.testing.assert_close(out.weights, removal_cost(F_, w, q)[1], rtol=1e-10, atol=1e-12)


def test_obs_prune_takes_any_operator_and_count_zero_changes_nothing():
    G, w, damp = randn(5, 9, seed=5), randn(9, seed=6), 0.1
    Finv = torch.linalg.inv(fisher(G, damp))
    dense, mfac = obs_prune(w, DenseOperator(Finv), 3), obs_prune(w, StaticMFAC(G, damp), 3)
    torch.testing.assert_close(dense.weights, mfac.weights, rtol=1e-10, atol=1e-12)
    none = obs_prune(w, StaticMFAC(G, damp), 0)
    assert torch.equal(none.weights, w) and not bool(none.pruned.any())


# mfac_prune against a dense re-implementation ----------------------------------------------------------------

def regression(seed=0, n=48, d_in=6, k=3):
    X = randn(n, d_in, seed=seed)
    Y = X @ randn(d_in, k, seed=seed + 1) + 0.3 * randn(n, k, seed=seed + 2)
    return [(X[i:i + 8], Y[i:i + 8]) for i in range(0, n, 8)]  # 6 batches of 8


def linear(seed=0, d_in=6, k=3):
    torch.manual_seed(seed)  # tests only: nn.Linear initialises from the global generator
    return torch.nn.Linear(d_in, k).to(F64)


def squared_error(net, batch):
    X, Y = batch
    return 0.5 * ((net(X) - Y) ** 2).sum(1).mean()


def analytic_gradients(W, b, batches):
    """Rows ``vec(dL/dW)`` of the squared error per batch, by hand: ``R^T X / n`` with ``R = X W^T + b - Y``."""
    return torch.stack([((X @ W.T + b - Y).T @ X / X.shape[0]).reshape(-1) for X, Y in batches])


def dense_gradual(W, b, batches, sparsity, steps, damp, blocks=None):
    """mfac_prune's specification, densely: geometric schedule, fresh analytic gradients at each step over the
    weights left, an explicit inverse Fisher, OBS."""
    w, keep = W.reshape(-1).clone(), torch.ones(W.numel(), dtype=torch.bool)
    d = w.numel()
    target = d - round(sparsity * d)
    for j in range(1, steps + 1):
        goal = target if j == steps else round(d * (target / d) ** (j / steps))
        idx = keep.nonzero().squeeze(1)
        if goal >= idx.numel():
            continue
        G = analytic_gradients(w.reshape(W.shape), b, batches)[:, idx]
        new, drop, _ = dense_obs(w[idx], torch.linalg.inv(fisher(G, damp, blocks)), idx.numel() - goal)
        w[idx] = new
        keep[idx[drop]] = False
    return w.reshape(W.shape), keep.reshape(W.shape)


@pytest.mark.parametrize("steps, blocks", [(1, None), (3, None), (3, 5)])
def test_gradual_pruning_matches_the_dense_obs_with_fresh_gradients(steps, blocks):
    net, batches, damp = linear(), regression(), 1e-3
    W0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    expect_w, expect_keep = dense_gradual(W0, b0, batches, 0.5, steps, damp, blocks)
    masks = mfac_prune(net, squared_error, batches, 0.5, damp=damp, blocks=blocks, steps=steps)
    assert list(masks) == ["weight"]  # the bias is left alone by default
    assert torch.equal(masks["weight"], expect_keep)
    torch.testing.assert_close(net.weight.detach(), expect_w, rtol=1e-9, atol=1e-12)
    assert torch.equal(net.bias.detach(), b0)


def test_stale_gradients_would_give_another_answer():
    # the oracle above is sensitive to the re-estimation: reusing the first step's gradients changes the weights
    net, batches, damp = linear(), regression(), 1e-3
    W0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    mfac_prune(net, squared_error, batches, 0.5, damp=damp, steps=3)
    w, keep = W0.reshape(-1).clone(), torch.ones(18, dtype=torch.bool)
    G_all = analytic_gradients(W0, b0, batches)
    for goal in (round(18 * 0.5 ** (1 / 3)), round(18 * 0.5 ** (2 / 3)), 9):
        idx = keep.nonzero().squeeze(1)
        new, drop, _ = dense_obs(w[idx], torch.linalg.inv(fisher(G_all[:, idx], damp)), idx.numel() - goal)
        w[idx] = new
        keep[idx[drop]] = False
    assert float((net.weight.detach().reshape(-1) - w).abs().max()) > 1e-6


def test_pruning_one_weight_of_a_quadratic_raises_it_by_the_saliency():
    # loss_fn(net, a) = a . w has gradient a, so F = damp I + A^T A / m is the Hessian of
    # Q(v) = (v - w)^T F (v - w) / 2, minimal at the current weights w
    d, damp = 20, 0.02
    A, w = randn(7, d, seed=8), randn(d, seed=9)
    net = torch.nn.Linear(d, 1, bias=False).to(F64)
    with torch.no_grad():
        net.weight.copy_(w)
    mfac_prune(net, lambda n, a: n(a).sum(), list(A), 1 / d, damp=damp, steps=1)
    v = net.weight.detach().reshape(-1)
    F_ = fisher(A, damp)
    costs = torch.stack([removal_cost(F_, w, q)[0] for q in range(d)])
    assert int((v == 0).sum()) == 1 and int((v == 0).nonzero()) == int(costs.argmin())
    torch.testing.assert_close(0.5 * (v - w) @ F_ @ (v - w), costs.min(), rtol=1e-10, atol=0)


# sparsity and masks ------------------------------------------------------------------------------------------

def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.LayerNorm(12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 5)).to(dtype)  # 96 + 60 = 156 prunable weights


def mlp_batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(10, 8, generator=g), torch.randint(5, (10,), generator=g)) for _ in range(n)]


def cross_entropy(net, batch):
    return F.cross_entropy(net(batch[0]), batch[1])


def prune(method, net, sparsity, **kw):
    if method == "magnitude":
        return magnitude_prune(net, sparsity, **kw)
    return mfac_prune(net, cross_entropy, mlp_batches(), sparsity, damp=1e-4, steps=4, **kw)


@pytest.mark.parametrize("method", ["magnitude", "mfac"])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_sparsity_is_exact_and_pruned_weights_are_zero(method, sparsity):
    net = mlp()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    masks = prune(method, net, sparsity)
    assert list(masks) == ["0.weight", "3.weight"]
    assert sum(int((~mk).sum()) for mk in masks.values()) == round(sparsity * 156)
    params = dict(net.named_parameters())
    for n, mk in masks.items():
        assert mk.dtype == torch.bool and mk.shape == params[n].shape
        assert bool((params[n].detach()[~mk] == 0).all())
    for n in ("0.bias", "1.weight", "1.bias", "3.bias"):  # biases and the norm are not pruned nor changed
        assert torch.equal(params[n].detach(), before[n])
    if sparsity == 0.0:
        assert all(torch.equal(params[n].detach(), before[n]) for n in masks)


def test_magnitude_prune_removes_the_globally_smallest_weights():
    net = mlp(1)
    w = torch.cat([net[0].weight.detach().reshape(-1), net[3].weight.detach().reshape(-1)])
    masks = magnitude_prune(net, 0.4)
    kept = torch.cat([masks["0.weight"].reshape(-1), masks["3.weight"].reshape(-1)])
    threshold = w.abs().sort().values[round(0.4 * 156) - 1]
    assert bool((w[~kept].abs() <= threshold).all()) and bool((w[kept].abs() > threshold).all())


@pytest.mark.parametrize("method", ["magnitude", "mfac"])
def test_continuing_from_masks_keeps_earlier_pruning_and_apply_masks_holds_zeros(method):
    net = mlp(2)
    first = prune(method, net, 0.3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for batch in mlp_batches(4, seed=1):  # fine-tune with the masks re-applied after each step
        opt.zero_grad()
        cross_entropy(net, batch).backward()
        opt.step()
        apply_masks(net, first)
    assert all(bool((p.detach()[~first[n]] == 0).all()) for n, p in net.named_parameters() if n in first)
    second = prune(method, net, 0.6, masks=first)
    for n, mk in second.items():
        assert not bool((mk & ~first[n]).any())  # what was pruned stays pruned
    assert sum(int((~mk).sum()) for mk in second.values()) == round(0.6 * 156)
    # without apply_masks, momentum moves the pruned weights away from zero (the check above can fail)
    opt.zero_grad()
    cross_entropy(net, mlp_batches(1, seed=2)[0]).backward()
    opt.step()
    assert any(bool((p.detach()[~second[n]] != 0).any()) for n, p in net.named_parameters() if n in second)


def test_named_parameters_blocks_and_generators():
    net = mlp(3)
    masks = mfac_prune(net, cross_entropy, iter(mlp_batches(6)), 0.5, m=3, steps=2, blocks=16,
                       params=["3.weight", "3.bias"], damp=1e-4)
    assert list(masks) == ["3.weight", "3.bias"] and sum(int((~mk).sum()) for mk in masks.values()) == 32
    with pytest.raises(ValueError, match="yielded no batch"):  # a generator of 3 batches serves one step of 3
        mfac_prune(mlp(3), cross_entropy, iter(mlp_batches(3)), 0.5, m=3, steps=2, damp=1e-4)


def test_gradients_leave_grad_fields_and_mode_alone():
    net = mlp(4).eval()
    mfac_prune(net, cross_entropy, mlp_batches(), 0.5, damp=1e-4, steps=2)
    assert all(p.grad is None for p in net.parameters()) and not net.training


# a small classifier --------------------------------------------------------------------------------------------

def clusters(seed=0, n=2000, dim=64, classes=10, latent=12):
    """Ten Gaussian classes in a 12-dimensional latent space, seen through a random 64-dimensional map plus
    noise (a stand-in for 8x8 digits)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(latent, dim, generator=g) / latent ** 0.5
    means = 1.2 * torch.randn(classes, latent, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    x = (means[y] + torch.randn(n, latent, generator=g)) @ A + 0.3 * torch.randn(n, dim, generator=g)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def test_mfac_keeps_a_classifier_far_more_accurate_than_magnitude_at_90_percent():
    xtr, ytr, xte, yte = clusters()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(xtr), ytr).backward()
        opt.step()

    def accuracy(model):
        with torch.no_grad():
            return float((model(xte).argmax(1) == yte).float().mean())

    batches = [(xtr[i:i + 16], ytr[i:i + 16]) for i in range(0, 1000, 16)]  # 63 gradients per step
    dense = accuracy(net)
    magnitude, mfac, mfac_blocks = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    magnitude_prune(magnitude, 0.9)
    mfac_prune(mfac, cross_entropy, batches, 0.9, damp=1e-5, steps=16)
    mfac_prune(mfac_blocks, cross_entropy, batches, 0.9, damp=1e-5, steps=16, blocks=128)
    # measured (seed 0, float32, one thread): dense 0.934, magnitude 0.312, M-FAC 0.777, blocks of 128 0.824;
    # over seeds 0-3, float32 and float64, M-FAC beat magnitude by 0.34 to 0.58
    assert dense > 0.9
    assert accuracy(mfac) > accuracy(magnitude) + 0.2 and accuracy(mfac) > 0.6
    assert accuracy(mfac_blocks) > accuracy(magnitude) + 0.2


# errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity, match", [(1.0, "remove every weight"), (90, "percentage"), (-0.1, r"\[0, 1\)"),
                                             (float("nan"), r"\[0, 1\)"), (True, r"\[0, 1\)")])
def test_bad_sparsity(sparsity, match):
    with pytest.raises(ValueError, match=match):
        magnitude_prune(mlp(), sparsity)
    with pytest.raises(ValueError, match=match):
        mfac_prune(mlp(), cross_entropy, mlp_batches(), sparsity)


@pytest.mark.parametrize("kwargs, match", [
    (dict(m=0), "m must be a positive integer"),
    (dict(m=10), "6 batches but m=10"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(blocks=0), "blocks must be a positive integer"),
    (dict(damp=0.0), "damp must be a positive"),
    (dict(params=["nope"]), "no parameter named 'nope'"),
    (dict(params="0.weight"), r"for one parameter pass \['0.weight'\]"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mfac_prune(mlp(), cross_entropy, mlp_batches(), 0.5, **kwargs)


def test_bad_batches_and_losses():
    net = mlp()
    with pytest.raises(ValueError, match="batches is empty"):
        mfac_prune(net, cross_entropy, [], 0.0)
    with pytest.raises(ValueError, match="yielded no batch"):
        mfac_prune(net, cross_entropy, iter([]), 0.5)
    with pytest.raises(ValueError, match="yielded 2 batches but m=3"):
        mfac_prune(net, cross_entropy, iter(mlp_batches(2)), 0.5, m=3)
    with pytest.raises(ValueError, match="iterable of batches"):
        mfac_prune(net, cross_entropy, torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scalar tensor"):
        mfac_prune(net, lambda n, b: n(b[0]), mlp_batches(), 0.5)
    with pytest.raises(ValueError, match="does not depend"):
        mfac_prune(net, lambda n, b: cross_entropy(n, b).detach(), mlp_batches(), 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        mfac_prune(net, lambda n, b: cross_entropy(n, b) * float("inf"), mlp_batches(), 0.5)


def test_bad_masks_and_models():
    net = mlp()
    masks = magnitude_prune(net, 0.5)
    with pytest.raises(ValueError, match="already prune 78 of 156"):
        magnitude_prune(net, 0.3, masks=masks)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        apply_masks(net, {"0.weight": masks["0.weight"].float()})
    with pytest.raises(ValueError, match="masks has entries"):
        magnitude_prune(net, 0.6, params=["0.weight"], masks=masks)
    with pytest.raises(ValueError, match="no parameter with two or more dimensions"):
        magnitude_prune(torch.nn.LayerNorm(4), 0.5)
    frozen = mlp()
    frozen[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="does not require gradients"):
        mfac_prune(frozen, cross_entropy, mlp_batches(), 0.5)
    with pytest.raises(ValueError, match="count must be an integer in"):
        obs_prune(randn(4), StaticMFAC(randn(2, 4), 0.1), 5)
    with pytest.raises(ValueError, match="shape"):
        obs_prune(randn(5), StaticMFAC(randn(2, 4), 0.1), 1)

"""Bandit-tuned SOR: Tsallis-INF and ChebCB against the best fixed / instance-optimal omega in hindsight.

The learners are tested on synthetic cost tables (thousands of rounds in milliseconds), the solvers on
short sequences of shifted Poisson systems solved for real. Each learning test also checks that
picking omega uniformly at random would fail the same bound, so the bound measures learning.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import brentq

from neuralnumerics._status import Status
from neuralnumerics.linalg.bandit import (DEFAULT_OMEGAS, BanditSOR, ChebCB, ChebCBState, ContextualBanditSOR,
                                          TsallisINF, TsallisINFState, WithContext, tsallis_probabilities)
from neuralnumerics.linalg.operators import SparseOperator
from neuralnumerics.linalg.solve import linear_solve
from neuralnumerics.linalg.sor import SOR
from neuralnumerics.linalg.stencil import PoissonGrid

F64 = torch.float64
OMEGAS = (1.0, 1.2, 1.4, 1.6, 1.8, 1.95)


def shifted_poisson(c: float, shape=(8, 8)) -> SparseOperator:
    """The 5-point Laplacian (diagonal 4) on a grid, shifted by c I: the paper's diagonally shifted family."""
    A = PoissonGrid(shape, boundary="dirichlet").to_scipy() + c * sp.eye(shape[0] * shape[1])
    return SparseOperator.from_scipy(A, symmetric=True, positive_definite=True)


def sequence(T: int, seed: int, low=-0.1, high=0.5, shape=(8, 8)):
    """T shifted systems (c uniform in [low, high]) with random right-hand sides."""
    g = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    cs = (low + (high - low) * torch.rand(T, dtype=F64, generator=g)).tolist()
    return [(c, shifted_poisson(c, shape), torch.randn(n, dtype=F64, generator=g)) for c in cs]


# --------------------------------------------------------------------------- #
# Tsallis-INF
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("eta", [0.05, 0.5, 2.0])
def test_tsallis_probabilities_solve_the_normalisation(eta):
    g = np.random.default_rng(0)
    losses = g.uniform(0, 50, size=12)
    p = tsallis_probabilities(losses, eta)
    # oracle: the root x < min L of sum 4 / (eta (L - x))^2 = 1, by bracketing
    x = brentq(lambda x: np.sum(4 / (eta * (losses - x)) ** 2) - 1, losses.min() - 1e6, losses.min() - 1e-12,
               xtol=1e-14)
    np.testing.assert_allclose(p, 4 / (eta * (losses - x)) ** 2, rtol=1e-9, atol=1e-14)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert int(np.argmax(p)) == int(np.argmin(losses))
    np.testing.assert_allclose(tsallis_probabilities(np.full(5, 3.0), eta), np.full(5, 0.2))


def stochastic_costs(T: int, seed: int) -> np.ndarray:
    """(T, 8) iteration counts: a convex profile in omega times a common heavy-tailed factor per round."""
    g = np.random.default_rng(seed)
    omegas = np.linspace(1.0, 1.9, 8)
    profile = 30 + 400 * (omegas - 1.65) ** 2
    return np.round(profile[None, :] * g.lognormal(0.0, 0.4, size=(T, 1)) + g.integers(0, 5, size=(T, 8)))


def test_tsallis_inf_approaches_the_best_fixed_arm():
    costs = stochastic_costs(3000, seed=1)
    learner = TsallisINF(np.linspace(1.0, 1.9, 8))
    g = torch.Generator().manual_seed(0)
    state, total = None, 0.0
    for row in costs:
        arm = learner.choose(state, g)
        state = learner.update(state, arm, row[arm])
        total += row[arm]
    best, uniform = costs.sum(0).min(), costs.mean(1).sum()
    assert uniform > 1.5 * best  # the bound below is far from what random play gets
    assert total <= 1.35 * best  # 1.07-1.25 over generator seeds 0-3
    assert state.rounds == 3000 and sum(state.plays) == 3000
    assert int(np.argmax(state.plays)) == int(np.argmin(costs.sum(0)))


def test_tsallis_inf_with_a_cost_bound_normalises_by_it():
    learner = TsallisINF([1.0, 1.5], cost_bound=101)
    state = learner.update(learner.update(None, 0, 51.0), 1, 11.0)
    # first round uniform (p = 1/2): estimate 50 / 0.5; the second arm's probability came from that estimate
    p1 = tsallis_probabilities(np.array([100.0, 0.0]) / 100.0, 2 / math.sqrt(2))[1]
    assert state.loss_estimates == pytest.approx((100.0, 10.0 / p1))
    np.testing.assert_allclose(learner.probabilities(state),
                               tsallis_probabilities(np.array(state.loss_estimates) / 100.0, 2 / math.sqrt(3)))


# --------------------------------------------------------------------------- #
# ChebCB
# --------------------------------------------------------------------------- #
def contextual_costs(T: int, seed: int):
    """Contexts in [0, 1] and (T, 8) costs whose best arm moves with the context."""
    g = np.random.default_rng(seed)
    omegas = np.linspace(1.0, 1.9, 8)
    c = g.uniform(0.0, 1.0, size=T)
    best_omega = 1.85 - 0.7 * c  # the instance-optimal omega falls as the context grows
    costs = 20 + 300 * (omegas[None, :] - best_omega[:, None]) ** 2 + g.integers(0, 3, size=(T, 8))
    return c, np.round(costs), omegas


def test_chebcb_approaches_the_instance_optimal_policy():
    c, costs, omegas = contextual_costs(1500, seed=2)
    learner = ChebCB(omegas, context_range=(0.0, 1.0))
    g = torch.Generator().manual_seed(0)
    state, total = None, 0.0
    for ct, row in zip(c, costs):
        arm = learner.choose(state, ct, g)
        state = learner.update(state, ct, arm, row[arm])
        total += row[arm]
    instance, best_fixed, uniform = costs.min(1).sum(), costs.sum(0).min(), costs.mean(1).sum()
    assert best_fixed > 1.5 * instance and uniform > 1.5 * best_fixed
    assert total <= 1.15 * instance  # 1.06-1.07 over seeds 0-3; far below the best fixed arm: the context is used
    # the fitted cost model puts its minimum where the true one is, across the context range
    for ctx in (0.05, 0.5, 0.95):
        assert abs(omegas[np.argmin(learner.predict(state, ctx))] - (1.85 - 0.7 * ctx)) <= 0.15


def test_chebcb_rejects_contexts_outside_its_range():
    learner = ChebCB(OMEGAS, context_range=(-0.1, 0.5))
    with pytest.raises(ValueError, match="outside context_range"):
        learner.probabilities(None, 0.7)
    with pytest.raises(ValueError, match="low < high"):
        ChebCB(OMEGAS, context_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="degree"):
        ChebCB(OMEGAS, context_range=(0, 1), degree=-1)


# --------------------------------------------------------------------------- #
# the solvers on real shifted Poisson systems
# --------------------------------------------------------------------------- #
def test_bandit_sor_approaches_the_best_fixed_omega_on_shifted_poisson_systems():
    systems = sequence(150, seed=3)
    table = np.array([[linear_solve(op, b, SOR(w, rtol=1e-6)).stats.iterations for w in OMEGAS]
                      for _, op, b in systems])
    bandit = BanditSOR(OMEGAS, generator=torch.Generator().manual_seed(0), rtol=1e-6)
    state, total = None, 0
    for t, (_, op, b) in enumerate(systems):
        sol = linear_solve(op, b, bandit, state=state)
        state = sol.state
        omega = sol.stats.extra["omega"]
        assert sol.status is Status.SUCCESS and sol.stats.residual <= 1e-6
        assert sol.stats.iterations == table[t, OMEGAS.index(omega)]  # the chosen omega, solved as SOR(omega)
        total += sol.stats.iterations
    best, uniform = table.sum(0).min(), table.mean(1).sum()
    assert uniform > 1.6 * best
    assert total <= best + 0.45 * (uniform - best)  # 0.23-0.31 of the gap over generator seeds 0-3


def test_contextual_bandit_sor_learns_the_best_omega_across_the_shifts():
    systems = sequence(300, seed=4)
    solver = ContextualBanditSOR(OMEGAS, context_range=(-0.1, 0.5), generator=torch.Generator().manual_seed(0),
                                 rtol=1e-6)
    state = None
    for c, op, b in systems:
        sol = linear_solve(op, b, solver, state=WithContext(state, c))
        assert sol.status is Status.SUCCESS and sol.stats.extra["context"] == c
        state = sol.state
    assert isinstance(state, ChebCBState) and state.rounds == 300
    # oracle: the iterations of every omega of the grid at both ends and the middle of the range
    for c in (-0.1, 0.2, 0.5):
        cost = [linear_solve(shifted_poisson(c), systems[0][2], SOR(w, rtol=1e-6)).stats.iterations for w in OMEGAS]
        chosen = int(np.argmin(solver.learner.predict(state, c)))  # the omega the model now favours at c
        assert cost[chosen] <= 1.2 * min(cost)
    # the best omega moves with the shift (so a fixed omega cannot match this)
    best = {c: OMEGAS[int(np.argmin([linear_solve(shifted_poisson(c), systems[0][2], SOR(w, rtol=1e-6))
                                     .stats.iterations for w in OMEGAS]))] for c in (-0.1, 0.5)}
    assert best[-0.1] > best[0.5]


def test_ssor_cg_variant_solves_and_records_omega():
    c, op, b = sequence(1, seed=5)[0]
    for solver, st in ((BanditSOR(OMEGAS, solver="ssor-cg", rtol=1e-8), None),
                       (ContextualBanditSOR(OMEGAS, context_range=(-0.1, 0.5), solver="ssor-cg", rtol=1e-8),
                        WithContext(None, c))):
        sol = linear_solve(op, b, solver, state=st)
        torch.testing.assert_close(sol.x, torch.linalg.solve(op.to_dense(), b), rtol=1e-6, atol=1e-8)
        assert sol.stats.extra["omega"] in OMEGAS and sol.stats.iterations < 40  # CG, not SOR, counts
    with pytest.raises(ValueError, match="not tagged positive_definite"):
        linear_solve(op.to_dense(), b, BanditSOR(solver="ssor-cg"))


def test_a_batch_is_one_round_with_one_omega():
    _, op, _ = sequence(1, seed=6)[0]
    B = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    sol = linear_solve(op, B, BanditSOR(OMEGAS, generator=torch.Generator().manual_seed(1)))
    assert sol.state.rounds == 1
    cols = [linear_solve(op, B[:, j], SOR(sol.stats.extra["omega"])).stats.iterations for j in range(3)]
    assert sol.stats.iterations == max(cols)
    assert sol.state.total_cost == max(cols)


# --------------------------------------------------------------------------- #
# state, randomness
# --------------------------------------------------------------------------- #
def run(solver, systems, state, contextual: bool):
    omegas = []
    for c, op, b in systems:
        sol = linear_solve(op, b, solver, state=WithContext(state, c) if contextual else state)
        omegas.append(sol.stats.extra["omega"])
        state = sol.state
    return omegas, state


@pytest.mark.parametrize("contextual", [False, True], ids=["BanditSOR", "ContextualBanditSOR"])
def test_state_round_trips_through_json_and_the_sequence_resumes_identically(contextual):
    systems = sequence(8, seed=7)

    def make(generator):
        if contextual:
            return ContextualBanditSOR(OMEGAS, context_range=(-0.1, 0.5), generator=generator)
        return BanditSOR(OMEGAS, generator=generator)

    whole, whole_state = run(make(torch.Generator().manual_seed(5)), systems, None, contextual)
    g = torch.Generator().manual_seed(5)
    first, state = run(make(g), systems[:4], None, contextual)
    rng_state = g.get_state()
    data = json.loads(json.dumps(dataclasses.asdict(state)))  # e.g. a checkpoint
    restored = (ChebCBState if contextual else TsallisINFState)(**data)
    assert restored == state
    g2 = torch.Generator()
    g2.set_state(rng_state)
    second, final = run(make(g2), systems[4:], restored, contextual)
    assert first + second == whole
    assert final == whole_state


def test_draws_come_only_from_the_given_generator():
    systems = sequence(5, seed=8)
    before = torch.get_rng_state()
    a, _ = run(BanditSOR(OMEGAS, generator=torch.Generator().manual_seed(3)), systems, None, False)
    b, _ = run(BanditSOR(OMEGAS, generator=torch.Generator().manual_seed(3)), systems, None, False)
    assert a == b
    assert torch.equal(torch.get_rng_state(), before)  # the global generator was not touched


# --------------------------------------------------------------------------- #
# failures
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kwargs, match", [
    ({"omegas": ()}, "omegas is empty"),
    ({"omegas": (1.0, 2.0)}, r"open interval \(0, 2\)"),
    ({"omegas": (1.0, 1.0)}, "repeated"),
    ({"omegas": 1.5}, "sequence of numbers"),
    ({"solver": "gmres"}, "solver must be one of"),
    ({"generator": 0}, "torch.Generator"),
    ({"cost_bound": 1.0}, "greater than 1"),
])
def test_bad_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BanditSOR(**kwargs)


def test_bad_states_and_contexts_are_rejected():
    c, op, b = sequence(1, seed=9)[0]
    state = linear_solve(op, b, BanditSOR(OMEGAS)).state
    with pytest.raises(ValueError, match="built for the arms"):
        linear_solve(op, b, BanditSOR(DEFAULT_OMEGAS), state=state)
    with pytest.raises(ValueError, match="TsallisINFState"):
        linear_solve(op, b, BanditSOR(OMEGAS), state={"rounds": 3})
    contextual = ContextualBanditSOR(OMEGAS, context_range=(-0.1, 0.5))
    with pytest.raises(ValueError, match=r"state=WithContext\(previous_state, context\)"):
        linear_solve(op, b, contextual, state=None)
    with pytest.raises(ValueError, match="outside context_range"):
        linear_solve(op, b, contextual, state=WithContext(None, 0.9))
    with pytest.raises(ValueError, match="context must be a real number"):
        linear_solve(op, b, contextual, state=WithContext(None, "0.1"))
    with pytest.raises(ValueError, match="ChebCBState"):
        linear_solve(op, b, contextual, state=WithContext(state, c))
    with pytest.raises(ValueError, match="takes no preconditioner"):
        linear_solve(op, b, BanditSOR(OMEGAS), M=torch.eye(64, dtype=F64))
    with pytest.raises(ValueError, match="rounds=2 but the play counts sum to 0"):
        TsallisINFState(OMEGAS, (0.0,) * 6, (0,) * 6, rounds=2)


def test_learners_reject_bad_arms_and_costs_and_a_solved_system_costs_one():
    with pytest.raises(ValueError, match="at least 1"):
        TsallisINF(OMEGAS).update(None, 0, 0.5)
    with pytest.raises(ValueError, match="index in"):
        ChebCB(OMEGAS, context_range=(0, 1)).update(None, 0.5, 6, 10.0)
    _, op, b = sequence(1, seed=11)[0]
    x = torch.linalg.solve(op.to_dense(), b)
    sol = linear_solve(op, b, BanditSOR(OMEGAS), x0=x)  # x0 already solves it: no iteration
    assert sol.stats.iterations == 0 and sol.state.total_cost == 1


def test_a_solve_that_hits_the_cap_costs_the_cap():
    _, op, b = sequence(1, seed=10)[0]
    sol = linear_solve(op, b, BanditSOR((1.0,), rtol=1e-12, max_iters=7), throw=False)
    assert sol.status is Status.MAX_ITERS and "charged the cap" in sol.message
    assert sol.state.total_cost == 7

"""Learning to relax: bandits that choose SOR's ``omega`` for each system of a sequence from iteration counts.

Khodak, Chow, Balcan and Talwalkar (ICLR 2024) solve a sequence of linear systems ``A_t x = b_t`` with
SOR (or SSOR-preconditioned CG) and choose the relaxation parameter of each solve online, seeing
only the number of iterations each solve took:

* :class:`BanditSOR` runs Tsallis-INF (:class:`TsallisINF`), an adversarial multi-armed bandit,
  over a grid of ``omega`` values; its total cost approaches that of the best fixed ``omega`` in
  hindsight.
* :class:`ContextualBanditSOR` runs ChebCB (:class:`ChebCB`) for systems that come with a scalar
  context, such as the shift ``c`` of ``A + c I``: a SquareCB-style contextual bandit whose cost
  model per ``omega`` is a Chebyshev polynomial in the context. It approaches the instance-optimal
  policy (the best ``omega`` for each ``c``).

Both are :class:`~neuralnumerics.linalg.LinearSolver` s; the bandit statistics travel in the
``state`` of :func:`~neuralnumerics.linalg.linear_solve`, so a loop that feeds each solution's
``state`` into the next call learns::

    bandit = BanditSOR(generator=torch.Generator().manual_seed(0), rtol=1e-8)
    state = None
    for A, b in systems:
        sol = linear_solve(A, b, bandit, state=state)
        state = sol.state                    # sol.stats.extra["omega"]: the omega used

    contextual = ContextualBanditSOR(context_range=(-0.15, 0.45), generator=torch.Generator().manual_seed(0))
    state = None
    for c, A_c, b in shifted_systems:        # A_c = A + c I
        sol = linear_solve(A_c, b, contextual, state=WithContext(state, c))
        state = sol.state

The states are frozen dataclasses of plain numbers: ``dataclasses.asdict`` gives a JSON-serialisable
dict, and ``TsallisINFState(**d)`` / ``ChebCBState(**d)`` rebuild them. Randomness comes only from the
``generator`` given to the solver (torch's default generator when it is None); nothing is seeded.

References:
    Khodak, Chow, Balcan, Talwalkar. "Learning to Relax: Setting Solver Parameters Across a Sequence
    of Linear System Instances", ICLR 2024 (arXiv:2310.02246); the authors' code is
    github.com/mkhodak/learning-to-relax (MATLAB).
    Zimmert, Seldin. "Tsallis-INF: An optimal algorithm for stochastic and adversarial bandits", JMLR 22 (2021).
    Foster, Rakhlin. "Beyond UCB: optimal and efficient contextual bandits with regression oracles",
    ICML 2020 (SquareCB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .._status import Status
from .cg import CG
from .solve import LinearSolver, SolveStats
from .sor import SOR, SSORPreconditioner, check_omega

__all__ = ["DEFAULT_OMEGAS", "TsallisINF", "TsallisINFState", "tsallis_probabilities", "ChebCB", "ChebCBState",
           "WithContext", "BanditSOR", "ContextualBanditSOR"]

#: The grid of the paper's experiments: 20 values evenly spaced in [1, 1.95].
DEFAULT_OMEGAS: tuple[float, ...] = tuple(float(w) for w in np.round(np.linspace(1.0, 1.95, 20), 12))

_INNER_SOLVERS = ("sor", "ssor-cg")


# --------------------------------------------------------------------------- #
# Tsallis-INF
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class TsallisINFState:
    """What :class:`TsallisINF` has learned: one entry per arm, plus totals.

    Attributes:
        arms: the arm values (for SOR: the omegas), to check the state belongs to the learner.
        loss_estimates: per arm, the sum over rounds it was played of ``(cost - 1) / p`` (``p`` its
            probability in that round): an unbiased estimate of the arm's cumulative excess cost.
        plays: how often each arm was played.
        rounds: rounds played so far.
        total_cost: sum of the observed costs (iteration counts).
    """

    arms: tuple[float, ...]
    loss_estimates: tuple[float, ...]
    plays: tuple[int, ...]
    rounds: int = 0
    total_cost: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(float(a) for a in self.arms))
        object.__setattr__(self, "loss_estimates", tuple(float(v) for v in self.loss_estimates))
        object.__setattr__(self, "plays", tuple(int(v) for v in self.plays))
        d = len(self.arms)
        if len(self.loss_estimates) != d or len(self.plays) != d:
            raise ValueError(f"TsallisINFState: {d} arms but {len(self.loss_estimates)} loss estimates and "
                             f"{len(self.plays)} play counts; they must match")
        if self.rounds != sum(self.plays):
            raise ValueError(f"TsallisINFState: rounds={self.rounds} but the play counts sum to {sum(self.plays)}")


class TsallisINF:
    """The 1/2-Tsallis-INF bandit over a finite set of arms, as a pure function of its state.

    In round ``t`` (1-based) arm ``i`` is drawn with probability ``p_i = 4 / (eta_t (Lhat_i - x))^2``,
    with ``eta_t = 2 / sqrt(t)``, ``Lhat`` the normalised cumulative loss estimates and ``x`` the
    normaliser making the probabilities sum to 1 (found by Newton's method from above, where it
    converges monotonically). After playing arm ``i`` with probability ``p_i`` and paying ``cost``
    (an iteration count, at least 1), ``Lhat_i`` grows by the importance-weighted excess ``(cost - 1) / p_i``.

    Losses are normalised by ``cost_bound - 1`` when a bound on the costs is given (the setting of
    the regret analysis, which needs losses in [0, 1]: the expected regret against the best arm is
    then at most ``(4 sqrt(d T) + 1) (cost_bound - 1)`` iterations, Zimmert and Seldin's Theorem 1),
    and otherwise by the running mean of the observed costs minus 1 (what the authors' experiments
    do: it adapts to the scale of the iteration counts, which is rarely known in advance; here it is
    kept at least 1).

    Args:
        arms: the arm values (e.g. the omegas), at least one.
        cost_bound: optional upper bound on the costs, greater than 1; costs above it are clipped.

    Raises:
        ValueError: on an empty ``arms``, non-finite arm values or a ``cost_bound`` not above 1.

    References:
        Zimmert, Seldin. "Tsallis-INF: An optimal algorithm for stochastic and adversarial bandits",
        JMLR 22 (2021), Algorithm 1 with alpha = 1/2. Khodak et al., ICLR 2024.
    """

    def __init__(self, arms: Sequence[float], *, cost_bound: float | None = None) -> None:
        arms = tuple(float(a) for a in arms)
        if not arms or not all(math.isfinite(a) for a in arms):
            raise ValueError(f"TsallisINF: arms must be a non-empty sequence of finite numbers, got {arms!r}")
        if cost_bound is not None and not (isinstance(cost_bound, (int, float)) and 1 < cost_bound < math.inf):
            raise ValueError(f"TsallisINF: cost_bound must be a finite number greater than 1 (iteration counts are "
                             f"at least 1), got {cost_bound!r}; or None to normalise by the running mean")
        self.arms = arms
        self.cost_bound = None if cost_bound is None else float(cost_bound)

    def init(self) -> TsallisINFState:
        """The state before the first round."""
        d = len(self.arms)
        return TsallisINFState(self.arms, (0.0,) * d, (0,) * d)

    def check(self, state) -> TsallisINFState:
        """``state``, or the initial state for None; a ValueError if it belongs to other arms."""
        if state is None:
            return self.init()
        if not isinstance(state, TsallisINFState):
            raise ValueError(f"TsallisINF: state must be a TsallisINFState (the .state of the previous solution) or "
                             f"None, got {type(state).__name__}")
        if state.arms != self.arms:
            raise ValueError(f"TsallisINF: the state was built for the arms {state.arms}, this learner has "
                             f"{self.arms}; start from state=None or use the same grid")
        return state

    def scale(self, state: TsallisINFState) -> float:
        """The normaliser of the losses: ``cost_bound - 1``, or ``max(mean cost - 1, 1)``."""
        if self.cost_bound is not None:
            return self.cost_bound - 1.0
        if state.rounds == 0:
            return 1.0
        return max(state.total_cost / state.rounds - 1.0, 1.0)

    def probabilities(self, state: TsallisINFState | None) -> np.ndarray:
        """The distribution over arms for the next round, shape ``(d,)``."""
        state = self.check(state)
        eta = 2.0 / math.sqrt(state.rounds + 1)
        return tsallis_probabilities(np.asarray(state.loss_estimates) / self.scale(state), eta)

    def choose(self, state: TsallisINFState | None, generator: torch.Generator | None = None) -> int:
        """Draw the arm of the next round (its index)."""
        return _draw(self.probabilities(state), generator)

    def update(self, state: TsallisINFState | None, arm: int, cost: float) -> TsallisINFState:
        """The state after playing ``arm`` (drawn from :meth:`probabilities` of ``state``) at ``cost``.

        Raises:
            ValueError: on an arm index out of range or a cost that is not a finite number of at least 1.
        """
        state = self.check(state)
        arm = _check_arm(arm, len(self.arms), "TsallisINF")
        cost = _check_cost(cost, "TsallisINF")
        p = float(self.probabilities(state)[arm])
        excess = cost - 1.0
        if self.cost_bound is not None:
            excess = min(excess, self.cost_bound - 1.0)
        estimates = list(state.loss_estimates)
        estimates[arm] += excess / p
        plays = list(state.plays)
        plays[arm] += 1
        return TsallisINFState(self.arms, tuple(estimates), tuple(plays), state.rounds + 1, state.total_cost + cost)


def tsallis_probabilities(losses: np.ndarray, eta: float) -> np.ndarray:
    """The 1/2-Tsallis-INF distribution ``p_i = 4 / (eta (L_i - x))^2`` with ``x < min L`` such that ``sum p = 1``.

    Args:
        losses: cumulative loss estimates, shape ``(d,)``, finite.
        eta: learning rate, positive.

    Returns:
        The probabilities, shape ``(d,)``, summing to 1.

    Raises:
        ValueError: on non-finite losses or a non-positive eta.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1 or losses.size == 0 or not np.isfinite(losses).all():
        raise ValueError(f"tsallis_probabilities: losses must be a non-empty finite 1D array, got {losses!r}")
    if not (eta > 0 and math.isfinite(eta)):
        raise ValueError(f"tsallis_probabilities: eta must be positive, got {eta!r}")
    gaps = losses - losses.min()
    # f(x) = sum_i 4 / (eta (g_i - x))^2 - 1 is convex and increasing for x < 0 = min g. At x = -2 / eta the
    # term of the best arm is 1, so f >= 0: from there Newton's iterates decrease monotonically to the root
    # (convexity keeps every tangent's zero to the right of it), never crossing the pole at x = 0.
    x = -2.0 / eta
    for _ in range(100):
        w = eta * (gaps - x)
        p = 4.0 / (w * w)
        f = p.sum() - 1.0
        if f <= 1e-13:
            break
        x -= f / (eta * np.sum(p ** 1.5))
    return p / p.sum()


# --------------------------------------------------------------------------- #
# ChebCB
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ChebCBState:
    """What :class:`ChebCB` has seen and fitted.

    Attributes:
        arms: the arm values (for SOR: the omegas).
        context_range: ``(low, high)``, the interval the contexts lie in.
        degree: degree of the Chebyshev cost model.
        contexts, actions, costs: the history, one entry per round (context, arm index, cost).
        predicted: per round, the cost the model predicted for the played arm when it was chosen.
        theta: per arm, the Chebyshev coefficients of its normalised cost model, ``(d, degree + 1)``.
        scale: the normaliser of the costs of the current fit (0 before the first round).
        eta: the current learning rate (0 before the first round: uniform play).
    """

    arms: tuple[float, ...]
    context_range: tuple[float, float]
    degree: int
    contexts: tuple[float, ...] = ()
    actions: tuple[int, ...] = ()
    costs: tuple[float, ...] = ()
    predicted: tuple[float, ...] = ()
    theta: tuple[tuple[float, ...], ...] = ()
    scale: float = 0.0
    eta: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "arms", tuple(float(a) for a in self.arms))
        set_(self, "context_range", tuple(float(v) for v in self.context_range))
        set_(self, "degree", int(self.degree))
        set_(self, "contexts", tuple(float(v) for v in self.contexts))
        set_(self, "actions", tuple(int(v) for v in self.actions))
        set_(self, "costs", tuple(float(v) for v in self.costs))
        set_(self, "predicted", tuple(float(v) for v in self.predicted))
        theta = tuple(tuple(float(v) for v in row) for row in self.theta) or \
            tuple((0.0,) * (self.degree + 1) for _ in self.arms)
        set_(self, "theta", theta)
        t = len(self.contexts)
        if not (len(self.actions) == len(self.costs) == len(self.predicted) == t):
            raise ValueError("ChebCBState: contexts, actions, costs and predicted must have one entry per round, got "
                             f"{t}, {len(self.actions)}, {len(self.costs)}, {len(self.predicted)}")
        if len(theta) != len(self.arms) or any(len(row) != self.degree + 1 for row in theta):
            raise ValueError(f"ChebCBState: theta must be {len(self.arms)} x {self.degree + 1} (arms x degree + 1)")

    @property
    def rounds(self) -> int:
        return len(self.contexts)


@dataclass(frozen=True)
class WithContext:
    """The ``state`` argument of a contextual solve: the previous state and the context of this system.

    Attributes:
        state: the ``state`` of the previous solution (None for the first system).
        context: the context of the system about to be solved (for ``A + c I``: ``c``).
    """

    state: Any
    context: float


class ChebCB:
    """ChebCB: a contextual bandit over a finite set of arms with a scalar context in a known interval.

    Each arm's cost, as a function of the context ``c``, is modelled by a Chebyshev expansion with
    ``m = degree + 1`` coefficients in ``z = 2 (c - low) / (high - low) - 1``, fitted by least squares to the rounds the arm
    was played (the online regression oracle). Arms are drawn SquareCB-style by inverse-gap
    weighting: with ``yhat`` the predicted normalised costs and ``i*`` their argmin, every other arm
    gets ``p_i = 1 / (d + eta (yhat_i - yhat_i*))`` and ``i*`` the rest.

    The normalisation and the learning rate follow the authors' implementation, which estimates the
    constants of the algorithm (a bound on the costs, their spread over the contexts) from the costs
    seen so far: with ``K`` the largest cost seen and
    ``S`` the spread (largest minus smallest), costs are normalised as ``(cost - 1) / (K N)``,
    ``N = 2 + 4 S / K (1 + log m)``; coefficients are bounded (``|theta_0| <= 1 / N``,
    ``|theta_j| <= 2 S / (K N j)``, the decay of Chebyshev coefficients of a Lipschitz function) and
    refitted within the bounds when the unconstrained fit leaves them; and
    ``eta_t = 2 t sqrt(d t / (R_t + 2 alpha^2 t))``, where ``R_t`` is the regression oracle's regret
    so far (its online squared error minus that of the per-arm fits in hindsight) and ``alpha`` the
    approximation error of degree-``m`` Chebyshev expansions of a function with that spread. Two
    deliberate differences from that code: the online errors are measured in the current
    normalisation (it compares predictions made under earlier ones), and the hindsight error is
    summed over all arms (it subtracts that of the last bounded refit only).

    Args:
        arms: the arm values (e.g. the omegas), at least one.
        context_range: ``(low, high)`` with ``low < high``; contexts must lie in it.
        degree: degree of the Chebyshev model (default 5: six coefficients, the authors' setting).

    Raises:
        ValueError: on an empty or non-finite ``arms``, an empty ``context_range`` or a negative degree.

    References:
        Khodak, Chow, Balcan, Talwalkar. ICLR 2024 (ChebCB). Foster, Rakhlin, ICML 2020 (SquareCB).
    """

    def __init__(self, arms: Sequence[float], *, context_range: tuple[float, float], degree: int = 5) -> None:
        arms = tuple(float(a) for a in arms)
        if not arms or not all(math.isfinite(a) for a in arms):
            raise ValueError(f"ChebCB: arms must be a non-empty sequence of finite numbers, got {arms!r}")
        try:
            low, high = (float(v) for v in context_range)
        except (TypeError, ValueError):
            raise ValueError(f"ChebCB: context_range must be a pair (low, high), got {context_range!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"ChebCB: context_range must satisfy low < high (both finite), got {context_range!r}")
        if isinstance(degree, bool) or int(degree) != degree or degree < 0:
            raise ValueError(f"ChebCB: degree must be a non-negative integer, got {degree!r}")
        self.arms = arms
        self.context_range = (low, high)
        self.degree = int(degree)

    def init(self) -> ChebCBState:
        """The state before the first round."""
        return ChebCBState(self.arms, self.context_range, self.degree)

    def check(self, state) -> ChebCBState:
        """``state``, or the initial state for None; a ValueError if it belongs to another learner."""
        if state is None:
            return self.init()
        if not isinstance(state, ChebCBState):
            raise ValueError(f"ChebCB: state must be a ChebCBState (the .state of the previous solution) or None, "
                             f"got {type(state).__name__}")
        if (state.arms, state.context_range, state.degree) != (self.arms, self.context_range, self.degree):
            raise ValueError(f"ChebCB: the state was built for arms {state.arms}, context_range "
                             f"{state.context_range} and degree {state.degree}; this learner has {self.arms}, "
                             f"{self.context_range} and {self.degree}. Start from None or use the same settings")
        return state

    def features(self, contexts) -> np.ndarray:
        """Chebyshev features ``T_0(z), ..., T_m(z)`` of the contexts, shape ``(len(contexts), degree + 1)``.

        Raises:
            ValueError: when a context is not finite or lies outside ``context_range``.
        """
        c = np.atleast_1d(np.asarray(contexts, dtype=np.float64))
        low, high = self.context_range
        slack = 1e-9 * (high - low)
        bad = ~np.isfinite(c) | (c < low - slack) | (c > high + slack)
        if bad.any():
            raise ValueError(f"ChebCB: context {float(c[bad][0])!r} lies outside context_range {self.context_range}; "
                             "the Chebyshev model is only valid there. Widen context_range to cover every context")
        z = np.clip(2.0 * (c - low) / (high - low) - 1.0, -1.0, 1.0)
        return np.polynomial.chebyshev.chebvander(z, self.degree)

    def predict(self, state: ChebCBState | None, context: float) -> np.ndarray:
        """Predicted costs (iteration counts) of every arm at ``context``, shape ``(d,)``."""
        state = self.check(state)
        return 1.0 + state.scale * (np.asarray(state.theta) @ self.features(context)[0])

    def probabilities(self, state: ChebCBState | None, context: float) -> np.ndarray:
        """The distribution over arms at ``context``, shape ``(d,)``."""
        state = self.check(state)
        yhat = np.asarray(state.theta) @ self.features(context)[0]
        d = len(self.arms)
        best = int(np.argmin(yhat))
        p = 1.0 / (d + state.eta * (yhat - yhat[best]))
        p[best] = 0.0
        p[best] = 1.0 - p.sum()
        return p

    def choose(self, state: ChebCBState | None, context: float, generator: torch.Generator | None = None) -> int:
        """Draw the arm (index) for a system with this context."""
        return _draw(self.probabilities(state, context), generator)

    def update(self, state: ChebCBState | None, context: float, arm: int, cost: float) -> ChebCBState:
        """The state after playing ``arm`` at ``context`` and paying ``cost`` (an iteration count).

        Raises:
            ValueError: on an arm index out of range, a context outside the range or a cost that is not a
                finite number of at least 1.
        """
        state = self.check(state)
        arm = _check_arm(arm, len(self.arms), "ChebCB")
        cost = _check_cost(cost, "ChebCB")
        predicted = float(self.predict(state, context)[arm])
        contexts = state.contexts + (float(context),)
        actions = np.asarray(state.actions + (arm,))
        costs = np.asarray(state.costs + (cost,))
        preds = np.asarray(state.predicted + (predicted,))
        F = self.features(contexts)
        m = self.degree + 1
        K = float(costs.max())
        spread = float(costs.max() - costs.min())
        N = 2.0 + 4.0 * spread / K * (1.0 + math.log(m))
        scale = K * N
        bound = np.concatenate([[1.0 / N], 2.0 * spread / scale / np.arange(1, m)])
        targets = (costs - 1.0) / scale
        theta = np.asarray(state.theta, dtype=np.float64).copy()
        refit = range(len(self.arms)) if scale != state.scale else (arm,)
        for i in refit:
            rows = actions == i
            if rows.any():
                theta[i] = _bounded_lstsq(F[rows], targets[rows], bound)
        t = len(contexts)
        online = float(np.sum(((preds - costs) / scale) ** 2))
        hindsight = float(np.sum((np.einsum("tm,tm->t", F, theta[actions]) - targets) ** 2))
        lebesgue = math.pi + 2.0 / math.pi * math.log(2 * m + 1)
        alpha = lebesgue * spread / (2.0 * scale * (m + 1))
        denom = max(online - hindsight + 2.0 * alpha * alpha * t, 1e-300)
        eta = 2.0 * t * math.sqrt(len(self.arms) * t / denom)
        return ChebCBState(self.arms, self.context_range, self.degree, contexts, tuple(actions.tolist()),
                           tuple(costs.tolist()), tuple(preds.tolist()), tuple(map(tuple, theta)), scale,
                           min(eta, 1e300))


def _bounded_lstsq(F: np.ndarray, y: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Least squares ``min ||F theta - y||`` (minimum norm), refitted within ``|theta| <= bound`` if it leaves it."""
    theta = np.zeros(F.shape[1])
    free = bound > 0
    if not free.any():
        return theta
    sol = np.linalg.lstsq(F[:, free], y, rcond=None)[0]
    if np.any(np.abs(sol) > bound[free]):
        from scipy.optimize import lsq_linear

        sol = lsq_linear(F[:, free], y, bounds=(-bound[free], bound[free]), method="bvls").x
    theta[free] = sol
    return theta


# --------------------------------------------------------------------------- #
# the solvers
# --------------------------------------------------------------------------- #
def _check_arm(arm, d: int, owner: str) -> int:
    if isinstance(arm, bool) or int(arm) != arm or not 0 <= arm < d:
        raise ValueError(f"{owner}: arm must be an index in [0, {d}), got {arm!r}")
    return int(arm)


def _check_cost(cost, owner: str) -> float:
    if not (isinstance(cost, (int, float, np.integer, np.floating)) and math.isfinite(cost) and cost >= 1):
        raise ValueError(f"{owner}: cost must be a finite number of at least 1 (an iteration count; the bandit "
                         f"solvers count a solve that needed no iteration as 1), got {cost!r}")
    return float(cost)


def _draw(p: np.ndarray, generator: torch.Generator | None) -> int:
    """An index drawn from the distribution ``p`` with one uniform number from ``generator``."""
    device = generator.device if generator is not None else "cpu"
    u = float(torch.rand((), generator=generator, dtype=torch.float64, device=device))
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(p) - 1))


class _BanditSolver(LinearSolver):
    """Shared by the bandit solvers: the omega grid, the inner solver and the cost of one solve."""

    accepts_preconditioner = False
    supports_batch = True  # a batch is one round: one omega for every column

    def __init__(self, omegas: Sequence[float] | None, solver: str, generator: torch.Generator | None, *,
                 rtol: float, atol: float, max_iters: int | None) -> None:
        super().__init__(rtol=rtol, atol=atol, max_iters=max_iters)
        name = type(self).__name__
        omegas = DEFAULT_OMEGAS if omegas is None else omegas
        try:
            omegas = tuple(check_omega(w, name) for w in omegas)
        except TypeError:
            raise ValueError(f"{name}: omegas must be a sequence of numbers in (0, 2), got {omegas!r}") from None
        if not omegas:
            raise ValueError(f"{name}: omegas is empty; give at least one omega in (0, 2)")
        if len(set(omegas)) != len(omegas):
            raise ValueError(f"{name}: omegas has repeated values {omegas}; each omega must appear once")
        if solver not in _INNER_SOLVERS:
            raise ValueError(f"{name}: solver must be one of {_INNER_SOLVERS}, got {solver!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"{name}: generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.omegas = omegas
        self.solver = solver
        self.generator = generator
        if solver == "ssor-cg":  # CG needs an SPD operator; linear_solve checks the tags
            self.needs_symmetric = True
            self.needs_positive_definite = True

    def _run(self, op, b, x0, omega: float, stats: SolveStats):
        """Solve with ``omega``; return ``(x, status, cost)``: the iterations (at least 1), the cap if it did not converge.

        For a batch ``b`` the columns are solved together and ``stats.iterations`` (the cost) is the most
        any column took.
        """
        if self.solver == "sor":
            inner = SOR(omega, rtol=self.rtol, atol=self.atol, max_iters=self.max_iters)
            x, status, _ = inner._solve(op, b, x0, None, None, stats)
        else:
            inner = CG(rtol=self.rtol, atol=self.atol, max_iters=self.max_iters)
            x, status, _ = inner._solve(op, b, x0, SSORPreconditioner(op, omega), None, stats)
        # the learners' costs are at least 1: a right-hand side already solved by x0 counts as one iteration
        cost = max(stats.iterations, 1) if status is Status.SUCCESS else inner.iteration_cap(b.shape[0])
        return x, status, cost

    def messages(self) -> dict[Status, str]:
        out = super().messages()
        out[Status.MAX_ITERS] = ("the solve with the omega the bandit chose (stats.extra['omega']) stopped at its "
                                 "iteration cap; raise max_iters or loosen rtol (pass throw=False to keep a sequence "
                                 "going). The bandit was charged the cap as the cost of that omega and will play it "
                                 "less.")
        out[Status.DIVERGED] = ("the solve with the omega the bandit chose produced NaN or infinity; SOR converges for "
                                "every omega in (0, 2) when the matrix is symmetric positive definite: check the "
                                "operator. The bandit was charged the iteration cap.")
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(omegas={len(self.omegas)} in [{min(self.omegas):g}, {max(self.omegas):g}], "
                f"solver={self.solver!r}, rtol={self.rtol:g}, atol={self.atol:g}, max_iters={self.max_iters})")


class BanditSOR(_BanditSolver):
    """SOR (or SSOR-preconditioned CG) whose ``omega`` Tsallis-INF chooses anew for every system.

    Each call of :func:`~neuralnumerics.linalg.linear_solve` is one round: ``omega`` is drawn from the
    Tsallis-INF distribution of the ``state`` passed in (None: uniform), the system is solved with it,
    and the returned ``Solution.state`` is the :class:`TsallisINFState` updated with the iteration
    count. Pass it to the next call. Over a sequence of systems the total iteration count approaches
    that of the best fixed ``omega`` of the grid in hindsight (see :class:`TsallisINF` for the regret
    bound; the paper extends it to the best ``omega`` of a whole interval through a Lipschitz
    surrogate of the iteration count). A batch ``b`` of shape ``(n, k)`` is one round: its columns are solved together
    with one omega, and the cost is the iteration count of the slowest column.

    Args:
        omegas: the grid of relaxation parameters, each in ``(0, 2)`` (default :data:`DEFAULT_OMEGAS`:
            20 values in [1, 1.95], the paper's experiments).
        solver: ``"sor"`` (default) or ``"ssor-cg"`` (CG preconditioned by :class:`SSORPreconditioner`;
            needs an operator tagged symmetric positive definite).
        cost_bound: optional bound on the iteration counts for normalising the losses (see
            :class:`TsallisINF`); default: the running mean.
        generator: the torch.Generator the draws come from (default: torch's global generator).
        rtol, atol, max_iters: the inner solver's stopping rule; a solve that reaches the cap costs the cap.

    Raises:
        ValueError: from the constructor, on an empty grid, an omega outside ``(0, 2)``, repeated omegas,
            an unknown ``solver`` or a ``generator`` that is not a torch.Generator; from
            :func:`~neuralnumerics.linalg.linear_solve`, on a ``state`` that is not a
            :class:`TsallisINFState` for the same grid, and on what the inner solver rejects.

    ``stats.extra`` holds ``"omega"`` (the omega used) and ``"probability"`` (its probability).

    References:
        Khodak, Chow, Balcan, Talwalkar. "Learning to Relax: Setting Solver Parameters Across a Sequence
        of Linear System Instances", ICLR 2024 (arXiv:2310.02246).
    """

    def __init__(self, omegas: Sequence[float] | None = None, *, solver: str = "sor",
                 cost_bound: float | None = None, generator: torch.Generator | None = None,
                 rtol: float = 1e-6, atol: float = 0.0, max_iters: int | None = None) -> None:
        super().__init__(omegas, solver, generator, rtol=rtol, atol=atol, max_iters=max_iters)
        self.learner = TsallisINF(self.omegas, cost_bound=cost_bound)

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        state = self.learner.check(state)
        p = self.learner.probabilities(state)
        arm = _draw(p, self.generator)
        omega = self.omegas[arm]
        x, status, cost = self._run(op, b, x0, omega, stats)
        stats.extra.update(omega=omega, probability=float(p[arm]))
        return x, status, self.learner.update(state, arm, cost)


class ContextualBanditSOR(_BanditSolver):
    """SOR (or SSOR-preconditioned CG) whose ``omega`` ChebCB chooses from a scalar context per system.

    Made for sequences ``A + c_t I`` of diagonally shifted systems, with the shift ``c_t`` as context,
    but any scalar known before the solve on which the best ``omega`` depends smoothly will do. Pass
    the context with the previous state as ``state=WithContext(previous_state, c)`` (previous_state is
    None for the first system); the returned ``Solution.state`` is the updated :class:`ChebCBState`.
    Over a sequence the total iteration count approaches that of the instance-optimal policy (the
    best omega of the grid for each context). A batch ``b`` of shape ``(n, k)`` is one round, as in
    :class:`BanditSOR`.

    Args:
        omegas: the grid of relaxation parameters (default :data:`DEFAULT_OMEGAS`).
        context_range: ``(low, high)``, an interval containing every context.
        degree: degree of the Chebyshev cost model per omega (default 5).
        solver: ``"sor"`` (default) or ``"ssor-cg"``.
        generator: the torch.Generator the draws come from (default: torch's global generator).
        rtol, atol, max_iters: the inner solver's stopping rule; a solve that reaches the cap costs the cap.

    Raises:
        ValueError: from the constructor, as :class:`BanditSOR` and on a bad ``context_range`` or
            ``degree``; from :func:`~neuralnumerics.linalg.linear_solve`, when ``state`` is not a
            :class:`WithContext`, its state is not a :class:`ChebCBState` for the same settings, or the
            context lies outside ``context_range``.

    ``stats.extra`` holds ``"omega"``, ``"probability"`` and ``"context"``.

    References:
        Khodak, Chow, Balcan, Talwalkar. ICLR 2024 (arXiv:2310.02246), the ChebCB algorithm.
    """

    def __init__(self, omegas: Sequence[float] | None = None, *, context_range: tuple[float, float],
                 degree: int = 5, solver: str = "sor", generator: torch.Generator | None = None,
                 rtol: float = 1e-6, atol: float = 0.0, max_iters: int | None = None) -> None:
        super().__init__(omegas, solver, generator, rtol=rtol, atol=atol, max_iters=max_iters)
        self.learner = ChebCB(self.omegas, context_range=context_range, degree=degree)

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        if not isinstance(state, WithContext):
            raise ValueError(f"ContextualBanditSOR needs the context of each system: pass state=WithContext("
                             f"previous_state, context) (previous_state None at first), got {type(state).__name__}")
        context = state.context
        if isinstance(context, bool) or not isinstance(context, (int, float, np.integer, np.floating)):
            raise ValueError(f"ContextualBanditSOR: the context must be a real number, got {context!r}")
        context = float(context)
        learner_state = self.learner.check(state.state)
        p = self.learner.probabilities(learner_state, context)
        arm = _draw(p, self.generator)
        omega = self.omegas[arm]
        x, status, cost = self._run(op, b, x0, omega, stats)
        stats.extra.update(omega=omega, probability=float(p[arm]), context=context)
        return x, status, self.learner.update(learner_state, context, arm, cost)

"""Fit a neural field's weights so that a set of residuals vanishes (one INSR time step).

The per-step problem of INSR is a small nonlinear least-squares problem in the weights ``theta``:

    minimise  L(theta) = sum_g  w_g * mean_i |r_g(u_theta, x_gi)|^2

over residual terms ``g`` (the time-integrator residual in the interior, boundary conditions, ...).
Three optimisers are offered:

* ``"adam"``: the paper's optimiser. Fresh uniform samples every iteration, Adam with learning-rate
  decay on plateau (factor 0.1, patience 500) and early stop once the rate falls below 1.1e-8.
* ``"lbfgs"``: L-BFGS with a strong-Wolfe line search on fixed quasi-random points.
* ``"lm"``: Levenberg-Marquardt (damped Gauss-Newton) on fixed quasi-random points. The residual
  Jacobian comes per point from :func:`torch.func.vmap` over :func:`torch.func.jacrev`, the normal
  equations are formed and solved in float64. From the previous step's weights it converges in a
  few iterations.

:func:`fit_field` has no side effects beyond updating the given module's weights: no printing, no
files. It returns a :class:`FitReport`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .._status import Status
from ..fields import (SIREN, Field, SirenJet, flat_params, functional_field, load_flat_params, param_count,
                      unflatten_params)

__all__ = ["ResidualTerm", "FitConfig", "FitReport", "fit_field", "OPTIMIZERS"]

OPTIMIZERS = {
    "lm": "Levenberg-Marquardt on fixed quasi-random points (default; few iterations per step)",
    "lbfgs": "L-BFGS with strong-Wolfe line search on fixed quasi-random points",
    "adam": "Adam + decay on plateau + early stop, fresh samples each iteration (the INSR paper's)",
}


@dataclass(frozen=True)
class ResidualTerm:
    """One group of residuals ``r(u, x)``, pointwise in ``x``, weighted by ``weight`` in the loss.

    Attributes:
        name: label used in reports (``"pde"``, ``"boundary"``, ...).
        fn: ``fn(u, x) -> (n, k)``, where ``u`` is the field being fitted and ``x`` has shape ``(n, d)``.
            Row ``i`` may depend on ``x[i]`` only.
        sample: ``sample(generator, quasi) -> (n, d)`` draws the points of this term.
        weight: weight ``w`` of ``mean_i |r_i|^2`` in the loss.
        coords: when the points carry per-point data after their coordinates (targets, normals, ... computed
            once per draw), the number of leading columns that are coordinates; ``fn`` then receives the
            whole rows and must pass only ``x[:, :coords]`` to the field. ``None``: every column is a coordinate.
        energy: ``fn`` returns energy densities ``(n,)`` (or ``(n, 1)``) instead of residuals, and the term adds
            ``weight * mean_i e_i`` to the loss (not squared): the fit then minimises an energy, as INSR's
            elasticity does. Only ``"lbfgs"`` and ``"adam"`` take energy terms; Levenberg-Marquardt needs
            least-squares residuals.
        affine: ``fn`` is affine in the field (as every integrator's residual of a linear PDE is): its
            derivatives with respect to the field's value and spatial derivatives at each point do not
            depend on the field, and Levenberg-Marquardt computes them once per fit instead of at every
            Jacobian. A wrong ``True`` makes the fit's Jacobian wrong; leave it ``False`` when unsure.
    """

    name: str
    fn: Callable[[Field, torch.Tensor], torch.Tensor]
    sample: Callable[[torch.Generator | None, bool], torch.Tensor]
    weight: float = 1.0
    coords: int | None = None
    energy: bool = False
    affine: bool = False


@dataclass(frozen=True)
class FitConfig:
    """Configuration of a per-step fit.

    Attributes:
        optimizer: ``"lm"``, ``"lbfgs"`` or ``"adam"`` (see :data:`OPTIMIZERS`).
        max_iters: iteration cap; ``None`` picks 100 (lm), 2000 (lbfgs), 20000 (adam).
        rtol, atol: lm and lbfgs stop once the root-mean-square residual ``sqrt(loss)`` is at most
            ``atol + rtol * scale``, where ``scale`` is the size of the quantities the residual compares
            (``fit_field``'s ``scale``; :func:`~neuralnumerics.pde.evolve` passes the RMS of the
            previous field divided by ``dt``).
        ftol: lm and lbfgs also stop when an iteration lowers the loss by less than ``ftol`` times the loss.
        lr: Adam's initial learning rate (the paper's 1e-4).
        patience: Adam's plateau patience, in iterations.
        min_lr: Adam stops once its learning rate is at most this.
        damping: initial Levenberg-Marquardt damping (relative to the Gauss-Newton diagonal).
        warmup_iters: Adam iterations (at ``warmup_lr``, no decay) run before a lm/lbfgs fit; useful
            from a random initialisation, where Gauss-Newton steps can stall far from a good fit.
        warmup_lr: learning rate of the warm-up.
        reuse_jacobian: lm takes extra "chord" steps with the last Jacobian (and its factorisation)
            while each lowers the loss by the factor ``chord_ratio``; a chord step costs one residual
            evaluation, a small fraction of a new Jacobian and its Gram matrix.
        chord_ratio: a chord step is kept when it multiplies the loss by less than this (in (0, 1)).
    """

    optimizer: str = "lm"
    max_iters: int | None = None
    rtol: float = 1e-5
    atol: float = 0.0
    ftol: float = 1e-4
    lr: float = 1e-4
    patience: int = 500
    min_lr: float = 1.1e-8
    damping: float = 1e-6
    warmup_iters: int = 0
    warmup_lr: float = 1e-3
    reuse_jacobian: bool = True
    chord_ratio: float = 0.8

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        if self.max_iters is not None and int(self.max_iters) < 1:
            raise ValueError(f"max_iters must be a positive integer, got {self.max_iters}")
        for name in ("rtol", "atol", "ftol", "lr", "min_lr", "damping", "warmup_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"FitConfig.{name} must be a finite non-negative number, got {v}")
        if not 0 < self.chord_ratio < 1:
            raise ValueError(f"FitConfig.chord_ratio must lie in (0, 1), got {self.chord_ratio}")

    @property
    def iters(self) -> int:
        if self.max_iters is not None:
            return int(self.max_iters)
        return {"lm": 100, "lbfgs": 2000, "adam": 20000}[self.optimizer]


@dataclass
class FitReport:
    """What a fit did.

    Attributes:
        status: how it ended (:class:`~neuralnumerics.Status`).
        loss: final loss.
        losses: final loss per residual term.
        iters: optimiser iterations (Jacobian evaluations for lm).
        seconds: wall-clock time.
        history: loss after each iteration.
        target: the loss the fit aimed for, ``(atol + rtol * scale)^2`` (0 for adam, which has no tolerance).
    """

    status: Status
    loss: float
    losses: dict[str, float]
    iters: int
    seconds: float
    history: list[float] = field(default_factory=list)
    target: float = 0.0


def _term_losses(module: nn.Module, theta: torch.Tensor, terms: Sequence[ResidualTerm],
                 points: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    u = functional_field(module, theta)
    out: dict[str, torch.Tensor] = {}
    for term, x in zip(terms, points):
        r = term.fn(u, x)
        value = r.mean() if term.energy else r.square().sum(dim=-1).mean()
        out[term.name] = out.get(term.name, 0.0) + term.weight * value
    return out


def _check_finite(losses: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in losses.values())


def fit_field(field: nn.Module, terms: Sequence[ResidualTerm], config: FitConfig = FitConfig(), *,
              generator: torch.Generator | None = None, scale: float = 1.0,
              candidates: Sequence[torch.Tensor] = ()) -> FitReport:
    """Fit the weights of ``field`` so that the residual terms vanish; updates ``field`` in place.

    Args:
        field: the neural field (an ``nn.Module``); its current weights are the starting point.
        terms: residual terms (:class:`ResidualTerm`).
        config: optimiser and tolerances (:class:`FitConfig`).
        generator: drives the sampling of points (fixed points for lm/lbfgs, fresh ones for adam).
        scale: magnitude of the compared quantities, for the relative tolerance ``rtol``.
        candidates: other starting weights (flat vectors, see :func:`~neuralnumerics.fields.flat_params`).
            The fit starts from whichever of these and the field's own weights has the lowest loss on
            the fit's first points. :func:`~neuralnumerics.pde.evolve` starts from an extrapolation of
            the last two steps and passes the last step's weights as the safe alternative.

    Returns:
        A :class:`FitReport`. On a non-finite loss the report's status is ``DIVERGED`` and the
        field keeps the last finite weights.
    """
    if not terms:
        raise ValueError("fit_field needs at least one residual term")
    energies = [t.name for t in terms if t.energy]
    if energies and config.optimizer == "lm":
        raise ValueError(f"Levenberg-Marquardt fits least-squares residuals, and the term(s) {energies} are energies; "
                         "use optimizer 'lbfgs' or 'adam'")
    start = time.perf_counter()
    if candidates:
        _start_from_best(field, terms, candidates, generator)
    warm_iters = 0
    if config.warmup_iters and config.optimizer != "adam":
        warm = replace(config, optimizer="adam", max_iters=config.warmup_iters, lr=config.warmup_lr,
                       patience=config.warmup_iters + 1, warmup_iters=0)
        warm_report = _fit_adam(field, list(terms), warm, generator)
        if warm_report.status is Status.DIVERGED:
            warm_report.seconds = time.perf_counter() - start
            return warm_report
        warm_iters = warm_report.iters
    fitter = {"lm": _fit_lm, "lbfgs": _fit_lbfgs, "adam": _fit_adam}[config.optimizer]
    target = (config.atol + config.rtol * scale) ** 2 if config.optimizer != "adam" else 0.0
    if energies:
        target = -math.inf  # an energy has no known minimum value: stop on ftol or max_iters
    report = fitter(field, list(terms), config, generator, target)
    report.target = target
    report.iters += warm_iters
    report.seconds = time.perf_counter() - start
    return report


def _start_from_best(module: nn.Module, terms: Sequence[ResidualTerm], candidates: Sequence[torch.Tensor],
                     generator: torch.Generator | None) -> None:
    """Load into ``module`` the lowest-loss weights among its own and ``candidates``.

    The loss is taken on the points the fit itself draws first (the generator's state is restored).
    """
    theta = flat_params(module)
    state = generator.get_state() if generator is not None else None
    points = _fixed_points(terms, generator, theta)
    if generator is not None:
        generator.set_state(state)
    best, best_loss = theta, math.inf
    with torch.no_grad():
        for w in (theta, *candidates):
            w = w.detach().to(theta)
            if w.shape != theta.shape:
                raise ValueError(f"candidate starting weights have shape {tuple(w.shape)}, the field has "
                                 f"{theta.numel()} weights")
            loss = float(sum(_term_losses(module, w, terms, points).values()))
            if loss < best_loss:  # a NaN loss never wins
                best, best_loss = w, loss
    if best is not theta:
        load_flat_params(module, best)


def _fixed_points(terms: Sequence[ResidualTerm], generator, like: torch.Tensor) -> list[torch.Tensor]:
    return [t.sample(generator, True).to(dtype=like.dtype, device=like.device) for t in terms]


_CHUNK_BYTES = 16 * 2**20
_BLAS_GRAM = True  # on the CPU, form J^T J with SciPy's dsyrk (else torch's blocked products, as on GPUs)


def _jet_coefficients(fn, x: torch.Tensor, value: torch.Tensor, grad: torch.Tensor, lap: torch.Tensor | None = None,
                      coords: int | None = None):
    """Derivatives of a pointwise residual with respect to the field's value, gradient (and Laplacian).

    The residual is evaluated on a *local polynomial field* per point, ``y -> v + g (y - x_i)``, plus
    ``lap / (2 d) |y - x_i|^2`` when ``lap`` is given, whose value, gradient (and Laplacian) at ``x_i``
    are the current field's. Returns ``a = dr/dv`` of shape ``(n, m, c)``, ``b = dr/dg`` of shape
    ``(n, m, c, d)`` and ``c = dr/d(lap)`` of shape ``(n, m, c)`` (``None`` without ``lap``). Exact for
    residuals that see the field only through these quantities at ``x_i``. With ``coords``, only the first
    ``coords`` columns of ``x`` are coordinates (the rest is data the residual reads).
    """
    n = x.shape[0]
    d = grad.shape[-1]
    k = coords if coords is not None else x.shape[1]
    if lap is None:
        def local(v, g, xi):
            return fn(lambda y: v + (y - xi[:k]) @ g.mT, xi[None])[0]

        a, b = vmap(jacrev(local, argnums=(0, 1)))(value, grad, x)
        c = None
    else:
        def local(v, g, lp, xi):
            return fn(lambda y: v + (y - xi[:k]) @ g.mT + (y - xi[:k]).square().sum(-1, keepdim=True) * (lp / (2 * d)),
                      xi[None])[0]

        a, b, c = vmap(jacrev(local, argnums=(0, 1, 2)))(value, grad, lap, x)
        c = c.reshape(n, -1, value.shape[1])
    return a.reshape(n, -1, value.shape[1]), b.reshape(n, -1, value.shape[1], d), c


class _NormalEquations:
    """Gauss-Newton linearisation of the stacked, weighted residuals at fixed points.

    The residual Jacobian ``J`` (rows: points x residual components, columns: weights) is kept
    transposed, as row chunks ``J_c^T`` of at most ``_CHUNK_BYTES``: chunks stay in the allocator's
    heap and in cache while their contribution to ``J^T J`` is accumulated. The Gram matrix is formed
    block-triangularly and then mirrored.

    ``J`` comes in closed form where it can: for a :class:`~neuralnumerics.fields.SIREN` and a residual
    that sees the field only through its value and first derivatives at each point,
    ``J = dr/d(jet) . d(jet)/d(weights)`` with the jet's weight Jacobian from
    :class:`~neuralnumerics.fields.SirenJet` and ``dr/d(jet)`` from the residual on a local linear
    field; likewise for residuals that also see the Laplacian (a local quadratic field with the same
    Laplacian). Whether a term qualifies, and with which jet, is checked once, on a few of its points,
    against the generic ``vmap(jacrev)`` Jacobian (which catches residuals that use other second
    derivatives or evaluate the field elsewhere); terms that do not qualify use the generic path.
    """

    def __init__(self, module: nn.Module, terms: Sequence[ResidualTerm], points: Sequence[torch.Tensor],
                 scales: Sequence[float]) -> None:
        self.module = module
        self.terms, self.points, self.scales = list(terms), list(points), list(scales)
        self.names = [name for name, _ in module.named_parameters()]
        self.p = param_count(module)
        # column blocks of the Gram matrix: products of at least ~128 columns keep the kernels efficient
        k = max(1, min(8, self.p // 128))
        self.edges = [round(i * self.p / k) for i in range(k + 1)]
        # per term, decided at the first linearisation: 0 generic, 1 first-order jet, 2 jet with Laplacian
        self.closed_form: list[int] | None = None
        # jet coefficients of affine terms, per (term, chunk): they do not change during the fit
        self._coefficients: dict[tuple[int, int], tuple] = {}

    def residual(self, th: torch.Tensor) -> torch.Tensor:
        u = functional_field(self.module, th)
        with torch.no_grad():
            return torch.cat([(t.fn(u, x) * s).reshape(-1)
                              for t, x, s in zip(self.terms, self.points, self.scales)])

    def _generic(self, params, fn, xs: torch.Tensor) -> torch.Tensor:
        # Differentiate with respect to the named weight tensors, not slices of the flat vector: under
        # vmap(jacrev), slicing a flat vector costs a p-sized scatter per output and is ~10x slower.
        module, names = self.module, self.names

        def point_residual(pr, xi):
            return fn(lambda y: functional_call(module, pr, (y,)), xi[None])[0]

        jac = vmap(jacrev(point_residual), in_dims=(None, 0))(params, xs)  # {name: (n, k, *shape)}
        n, k = xs.shape[0], jac[names[0]].shape[1]
        return torch.cat([jac[name].reshape(n * k, -1) for name in names], dim=1).mT

    def _closed(self, params, fn, xs: torch.Tensor, order: int = 1, coords: int | None = None,
                key: tuple[int, int] | None = None) -> torch.Tensor:
        jet = SirenJet(self.module, params, xs if coords is None else xs[:, :coords], laplacian=order == 2)
        coefficients = self._coefficients.get(key) if key is not None else None
        if coefficients is None:
            coefficients = _jet_coefficients(fn, xs, jet.value, jet.grad, jet.lap, coords)
            if key is not None:
                self._coefficients[key] = coefficients
        return jet.weight_jacobian_t(*coefficients)

    def _decide(self, params) -> list[int]:
        if not isinstance(self.module, SIREN):
            return [0] * len(self.terms)
        decisions = []
        for t, x in zip(self.terms, self.points):
            xs = x[:8]
            generic = self._generic(params, t.fn, xs)
            # a residual the closed form cannot stand in for differs at the size of the entries; round-off
            # grows with the weights (1e-12 relative late in a long advection run), so the test is loose
            tol = math.sqrt(torch.finfo(x.dtype).eps) * max(1.0, float(generic.abs().max()))
            order = 0
            for trial in (1, 2):
                try:
                    closed = self._closed(params, t.fn, xs, trial, t.coords)
                except Exception:  # the residual does something the local polynomial field cannot stand in for
                    continue
                if closed.shape == generic.shape and float((closed - generic).abs().max()) <= tol:
                    order = trial
                    break
            decisions.append(order)
        return decisions

    def _jacobian_chunks(self, th: torch.Tensor):
        params = unflatten_params(self.module, th)
        if self.closed_form is None:
            self.closed_form = self._decide(params)
        for i, (t, x, s, order) in enumerate(zip(self.terms, self.points, self.scales, self.closed_form)):
            # chunks of equal size, each at most _CHUNK_BYTES (k times that with k residual components)
            pieces = -(-x.shape[0] // max(1, _CHUNK_BYTES // (8 * self.p)))
            for j, xs in enumerate(x.split(-(-x.shape[0] // pieces))):
                if order:
                    Jt = self._closed(params, t.fn, xs, order, t.coords, (i, j) if t.affine else None)
                else:
                    Jt = self._generic(params, t.fn, xs)
                yield Jt.to(torch.float64).mul_(s)

    def linearize(self, th: torch.Tensor, r: torch.Tensor):
        """``(chunks of J^T, J^T J, J^T r)`` at weights ``th`` with residual ``r``, in float64."""
        chunks = []
        if th.device.type == "cpu" and _BLAS_GRAM:
            # On the CPU the symmetric rank-k update of SciPy's BLAS (dsyrk) computes one triangle of each
            # chunk's J_c^T J_c: half the products of a matrix product, and faster than torch's blocked
            # products even where those skip most of the other triangle
            from scipy.linalg.blas import dsyrk

            G = None
            for Jt in self._jacobian_chunks(th):
                a = Jt.detach().numpy().T  # (points, weights), Fortran order: dsyrk reads it without a copy
                G = dsyrk(1.0, a, trans=1, lower=1) if G is None else \
                    dsyrk(1.0, a, beta=1.0, c=G, trans=1, lower=1, overwrite_c=1)
                chunks.append(Jt)
            A = torch.from_numpy(G)
        else:
            A = torch.zeros(self.p, self.p, dtype=torch.float64, device=th.device)
            e = self.edges
            for Jt in self._jacobian_chunks(th):
                for i in range(len(e) - 1):
                    # lower block column i: rows e[i]: of column block i
                    A[e[i]:, e[i]:e[i + 1]].addmm_(Jt[e[i]:], Jt[e[i]:e[i + 1]].mT)
                chunks.append(Jt)
        A = A.tril() + A.tril(-1).mT
        return chunks, A, self.jt(chunks, r)

    @staticmethod
    def jt(chunks, r: torch.Tensor) -> torch.Tensor:
        """``J^T r`` from the chunks of ``J^T``."""
        r = r.to(torch.float64)
        out, i = None, 0
        for Jt in chunks:
            part = Jt @ r[i:i + Jt.shape[1]]
            out = part if out is None else out + part
            i += Jt.shape[1]
        return out


def _fit_lm(module: nn.Module, terms, config: FitConfig, generator, target: float) -> FitReport:
    theta = flat_params(module)
    points = _fixed_points(terms, generator, theta)
    scales = [math.sqrt(t.weight / x.shape[0]) for t, x in zip(terms, points)]
    ne = _NormalEquations(module, terms, points, scales)
    residual_vector = ne.residual

    r = residual_vector(theta)
    loss = float(r.double().square().sum())
    history = [loss]
    if not math.isfinite(loss):
        return FitReport(Status.DIVERGED, loss, {}, 0, 0.0, history)
    lam = config.damping
    status = Status.MAX_ITERS
    iters = slow = stalled = 0
    while iters < config.iters:
        if loss <= target:
            status = Status.SUCCESS
            break
        iters += 1
        outer_start = loss
        # the normal equations are formed and solved in float64: in float32, J^T J loses the small
        # singular directions and the iteration needs several times more steps
        J, A, g = ne.linearize(theta, r)
        diag = A.diagonal().clamp_min(1e-12 * float(A.diagonal().max()) + 1e-300)
        accepted = False
        while lam < 1e16:
            L, info = torch.linalg.cholesky_ex(A + torch.diag(lam * diag))
            if int(info) != 0:
                lam *= 10.0
                continue
            delta = torch.cholesky_solve(-g[:, None], L)[:, 0]
            trial = theta + delta.to(theta.dtype)
            r_trial = residual_vector(trial)
            new_loss = float(r_trial.double().square().sum())
            if math.isfinite(new_loss) and new_loss < loss:
                # shrink the damping when the quadratic model predicted the decrease well
                predicted = float(-(g @ delta) - 0.5 * delta @ (A @ delta))
                rho = (loss - new_loss) / max(predicted, 1e-300)
                lam = max(lam * (0.1 if rho > 0.75 else 0.5 if rho > 0.25 else 1.0), 1e-15)
                accepted = True
                break
            lam *= 10.0
        if not accepted:
            status = Status.STAGNATED
            break
        decrease = loss - new_loss
        theta, r, loss = trial, r_trial, new_loss
        history.append(loss)
        # Chord steps: reuse this Jacobian and its factorisation with the new residual (g = J^T r costs
        # O(N p), a fraction of a new Jacobian and J^T J) while each step lowers the loss by chord_ratio.
        # (On 1D advection, 0.8 needs ~17% fewer Jacobians than 0.5 over 240 steps; 0.9 is worse again.)
        while config.reuse_jacobian and loss > target and iters < config.iters:
            delta = torch.cholesky_solve(-ne.jt(J, r)[:, None], L)[:, 0]
            trial = theta + delta.to(theta.dtype)
            r_trial = residual_vector(trial)
            new_loss = float(r_trial.double().square().sum())
            if not (math.isfinite(new_loss) and new_loss < config.chord_ratio * loss):
                break
            iters += 1
            decrease = loss - new_loss
            theta, r, loss = trial, r_trial, new_loss
            history.append(loss)
        del J
        if loss <= target:
            status = Status.SUCCESS
            break
        if decrease <= config.ftol * loss:
            status = Status.STAGNATED
            break
        # Jacobians in a row that gained little (near the tolerance: two that did not halve the loss;
        # anywhere: five that gained less than 10% each) mean the fit sits on the floor set by the
        # network's capacity and the arithmetic, where more iterations cost much and gain little
        slow = slow + 1 if loss > 0.5 * outer_start else 0
        stalled = stalled + 1 if loss > outer_start / 1.1 else 0
        if (slow >= 2 and loss <= 10.0 * target) or stalled >= 5:
            status = Status.STAGNATED
            break
    load_flat_params(module, theta)
    with torch.no_grad():
        losses = {k: float(v) for k, v in _term_losses(module, theta, terms, points).items()}
    return FitReport(status, loss, losses, iters, 0.0, history)


class _NonFiniteLoss(Exception):
    pass


def _fit_lbfgs(module: nn.Module, terms, config: FitConfig, generator, target: float) -> FitReport:
    theta0 = flat_params(module)
    points = _fixed_points(terms, generator, theta0)
    params = [p for p in module.parameters()]
    chunk = 25  # L-BFGS runs in chunks (its memory persists) so the tolerances are checked regularly
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=chunk, max_eval=int(chunk * 1.25) + 1,
                            tolerance_grad=1e-12, tolerance_change=0.0, history_size=50,
                            line_search_fn="strong_wolfe")
    history: list[float] = []

    def closure():
        opt.zero_grad()
        loss = sum(_term_losses(module, torch.cat([p.reshape(-1) for p in params]), terms, points).values())
        if not torch.isfinite(loss.detach()):
            raise _NonFiniteLoss  # torch's line search would fail obscurely on NaN
        loss.backward()
        return loss

    def current() -> float:
        with torch.no_grad():
            return float(sum(_term_losses(module, flat_params(module), terms, points).values()))

    loss = current()
    loss0 = loss
    status, iters = Status.MAX_ITERS, 0
    while iters < config.iters and math.isfinite(loss):
        if loss <= target:
            status = Status.SUCCESS
            break
        opt.param_groups[0]["max_iter"] = min(chunk, config.iters - iters)
        try:
            opt.step(closure)
        except _NonFiniteLoss:
            load_flat_params(module, theta0)
            return FitReport(Status.DIVERGED, float("nan"), {}, iters, 0.0, history)
        iters = int(opt.state[params[0]].get("n_iter", iters + 1))
        new = current()
        history.append(new)
        # an energy's minimum may be ~0 or negative: its gain is measured against what the fit has gained too
        reference = abs(new) if target > -math.inf else max(abs(new), loss0 - new)
        if math.isfinite(new) and loss - new <= config.ftol * reference:
            loss, status = new, Status.STAGNATED
            break
        loss = new
    if status is Status.MAX_ITERS and loss <= target:
        status = Status.SUCCESS
    with torch.no_grad():
        losses = {k: float(v) for k, v in _term_losses(module, flat_params(module), terms, points).items()}
    if not _check_finite(losses):
        load_flat_params(module, theta0)
        return FitReport(Status.DIVERGED, loss, losses, iters, 0.0, history)
    return FitReport(status, sum(losses.values()), losses, iters, 0.0, history)


def _fit_adam(module: nn.Module, terms, config: FitConfig, generator, target: float = 0.0) -> FitReport:
    params = [p for p in module.parameters()]
    like = params[0]
    opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=config.patience, min_lr=1e-8)
    history: list[float] = []
    status = Status.MAX_ITERS
    last_good = flat_params(module)
    iters = 0
    for iters in range(1, config.iters + 1):
        points = [t.sample(generator, False).to(dtype=like.dtype, device=like.device) for t in terms]
        opt.zero_grad()
        losses = _term_losses(module, torch.cat([p.reshape(-1) for p in params]), terms, points)
        loss = sum(losses.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            load_flat_params(module, last_good)
            return FitReport(Status.DIVERGED, value, {k: float(v.detach()) for k, v in losses.items()}, iters, 0.0,
                             history)
        loss.backward()
        opt.step()
        # the paper steps the plateau scheduler on the main (first) term's loss
        sched.step(float(losses[terms[0].name].detach()))
        history.append(value)
        if iters % 50 == 0:
            last_good = flat_params(module)
        if opt.param_groups[0]["lr"] <= config.min_lr:
            status = Status.SUCCESS
            break
    with torch.no_grad():
        final = {k: float(v) for k, v in _term_losses(module, flat_params(module), terms, points).items()}
    return FitReport(status, sum(final.values()), final, iters, 0.0, history)

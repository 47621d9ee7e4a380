"""Inviscid incompressible flow in 2D (the Euler equations) with neural velocity and pressure fields.

INSR's fluid solver (Chen et al., ICML 2023, Sec. 5.2) advances a neural velocity field ``u`` by
operator splitting. Each time step

1. **advects** the velocity: the new field should equal the old one at the semi-Lagrangian foot
   point, ``u*(x) = u_n(x - dt u_n(x))``;
2. fits a **pressure** field ``p`` to the Poisson equation ``lap p = div u*`` with the wall condition
   ``dp/dn = u* . n``;
3. **projects**: fits ``u_{n+1}(x) = u*(x) - grad p(x)``, with ``u . n = 0`` on the walls.

Two schemes carry this out (:data:`SCHEMES`):

* ``"paper"``: the three fits above, as the paper does them.
* ``"fused"`` (default): ``u*`` is taken *at the fit's points* (the previous field evaluated at the
  foot points) instead of being fitted by a network of its own, so step 1 is exact there and each
  time step has two fits. Its divergence is differentiated through the foot-point map.

Differences from the paper's optimisation, all per step: fixed quasi-random points (scrambled Sobol,
new each step) instead of fresh random points at every iteration; the divergence of ``u*`` computed
once, not in every iteration; the pressure fitted by Levenberg-Marquardt with closed-form Jacobians
(:class:`~neuralnumerics.fields.SirenJet` with the Laplacian) and the velocity by L-BFGS, each
starting from the previous step's weights, instead of thousands of Adam iterations. The paper imposes
``dp/dn = 0``; ``u* . n`` is the condition under which the projected field has no normal flow, and it
is 0 wherever ``u*`` already respects the walls. The pressure carries the time step: the projection
subtracts ``grad p``.

Problems are :class:`IncompressibleFlow2D` instances: a box with no-normal-flow walls, an optional
disc obstacle and an optional jet that drives the flow. :func:`taylor_green`,
:func:`taylor_green_multiscale` and :func:`jet_past_cylinder` build the scenarios.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field as dataclass_field, replace
from typing import Callable

import torch
from torch import nn

from .._status import Status, StepDivergedError
from ..fields import SIREN, divergence, flat_params, functional_field, jacobian, laplacian, load_flat_params
from .domain import Box
from .evolve import StepRecord, step_generator
from .fit import FitConfig, FitReport, ResidualTerm, fit_field
from .problem import relative_l2

__all__ = ["IncompressibleFlow2D", "Jet", "taylor_green", "taylor_green_multiscale", "jet_past_cylinder",
           "taylor_green_velocity", "taylor_green_multiscale_velocity", "FluidStepRecord", "FluidTrajectory",
           "evolve_fluid", "flow_diagnostics", "vorticity", "SCHEMES"]

SCHEMES = {
    "fused": "advected velocity taken at the fit's points, pressure fit, projection fit: 2 fits per step",
    "paper": "advection fit, pressure fit, projection fit: the paper's 3 fits per step",
}

Velocity = Callable[[torch.Tensor], torch.Tensor]


def _taylor_green_unit(x: torch.Tensor) -> torch.Tensor:
    # one Taylor-Green cell pattern on [-1, 1]^2, amplitude 1 (zero normal velocity on the box walls)
    a, b = math.pi * (x[:, 0] + 1), math.pi * (x[:, 1] + 1)
    return torch.stack([torch.sin(a) * torch.cos(b), -torch.cos(a) * torch.sin(b)], dim=1)


def taylor_green_velocity(x: torch.Tensor) -> torch.Tensor:
    """The Taylor-Green vortex on ``[-1, 1]^2`` as INSR sets it up (amplitude ``1/pi``, speed <= 0.32).

    ``u = sin(pi (x+1)) cos(pi (y+1)) / pi``, ``v = -cos(pi (x+1)) sin(pi (y+1)) / pi``: a steady
    solution of the inviscid Euler equations with no flow through the box walls.
    """
    return _taylor_green_unit(x) / math.pi


def taylor_green_multiscale_velocity(x: torch.Tensor, scale: float = 8.0, gap: float = 0.05) -> torch.Tensor:
    """INSR's multi-scale Taylor-Green set-up: a vortex cell on ``[-1, 0]^2`` and one ``scale`` times
    smaller in the top-right corner, each faded out linearly over ``gap`` (resp. ``2 gap / scale``)."""
    out = torch.zeros_like(x)
    big = (x[:, 0] <= gap) & (x[:, 1] <= gap)
    w = 1 - (x[big]).clamp(min=0, max=gap).norm(dim=1) / gap
    out[big] = _taylor_green_unit((2 * x[big] + 1).clamp(-1, 1)) * w[:, None]
    corner, g = 1 - 2 / scale, gap * 2 / scale
    small = (x[:, 0] > corner - g) & (x[:, 1] > corner - g)
    w = 1 - (corner - x[small]).clamp(min=0, max=g).norm(dim=1) / g
    out[small] = _taylor_green_unit((scale * x[small] - scale + 1).clamp(-1, 1)) * w[:, None]
    return out


def _smoothstep(s: torch.Tensor) -> torch.Tensor:
    s = s.clamp(0, 1)
    return s * s * (3 - 2 * s)


@dataclass(frozen=True)
class Jet:
    """A jet entering from the bottom wall: inside the nozzle the advected velocity is replaced by
    ``(0, speed)``, blended smoothly over ``soft`` so that a neural field can represent it.

    Attributes:
        x: centre of the nozzle along the bottom wall.
        width: nozzle width.
        depth: how far above the wall the velocity is imposed.
        speed: jet speed.
        soft: width of the smooth transition at the nozzle's edges.
    """

    x: float = 0.0
    width: float = 0.2
    depth: float = 0.15
    speed: float = 0.5
    soft: float = 0.1

    def weight(self, pts: torch.Tensor, y0: float) -> torch.Tensor:
        """Blend weight in ``[0, 1]``: 1 inside the nozzle, 0 away from it, shape ``(n,)``."""
        across = _smoothstep((self.width / 2 + self.soft - (pts[:, 0] - self.x).abs()) / self.soft)
        up = _smoothstep((y0 + self.depth + self.soft - pts[:, 1]) / self.soft)
        return across * up


class IncompressibleFlow2D:
    """Inviscid incompressible flow in a box with no-normal-flow walls, an optional disc obstacle and
    an optional jet.

    Args:
        initial: initial velocity, a callable from points ``(n, 2)`` to velocities ``(n, 2)``.
        name: scenario-style name.
        lo, hi: corners of the box.
        obstacle: ``(cx, cy, radius)`` of a solid disc inside the box, or ``None``.
        jet: a :class:`Jet` driving the flow from the bottom wall, or ``None``.
        exact: ``exact(x, t)``, the analytic velocity where one exists.
        n_points: interior points per fit (the paper's ``128^2``).
        wall_points: points per box side for the wall conditions (default ``n_points // 100``, the paper's).
        pressure_points: how many of the interior points the pressure fit uses (default ``min(n_points, 4096)``):
            the pressure is smooth, and its Gauss-Newton matrix costs ``O(points x weights^2)``.
        hidden_features, hidden_layers: size of the SIREN of the velocity and of the pressure
            (the paper's 3 hidden layers of 32).
        first_omega: first-layer frequency of the velocity SIREN (the paper's 30).
        pressure_omega: first-layer frequency of the pressure SIREN. The paper uses 30 for it too, with
            fresh random points at every Adam iteration. On fixed points a pressure with frequency 30
            fits the Poisson equation at the points and is rough between them (on an analytic Helmholtz
            decomposition with 1500 points: gradient error 1.0 at 30, 7e-5 at 10, same network size).

    Raises:
        ValueError: on an obstacle outside the box or a non-positive radius, a bad jet, a
            non-callable ``initial`` or one that is not finite or not ``(n, 2)`` on the box.
    """

    channels = 2

    def __init__(self, initial: Velocity, *, name: str = "flow2d", lo=(-1.0, -1.0), hi=(1.0, 1.0),
                 obstacle: tuple[float, float, float] | None = None, jet: Jet | None = None,
                 exact: Callable[[torch.Tensor, float], torch.Tensor] | None = None, n_points: int = 128 ** 2,
                 wall_points: int | None = None, pressure_points: int | None = None,
                 hidden_features: int = 32, hidden_layers: int = 3,
                 first_omega: float = 30.0, pressure_omega: float = 10.0) -> None:
        if not callable(initial):
            raise ValueError(f"IncompressibleFlow2D: initial must be a callable (n, 2) -> (n, 2), got "
                             f"{type(initial).__name__}")
        self.domain = Box(tuple(float(v) for v in lo), tuple(float(v) for v in hi))
        if self.domain.dim != 2:
            raise ValueError(f"IncompressibleFlow2D: lo and hi must be 2D corners, got {lo} and {hi}")
        if obstacle is not None:
            cx, cy, r = (float(v) for v in obstacle)
            (x0, y0), (x1, y1) = self.domain.lo, self.domain.hi
            if not r > 0:
                raise ValueError(f"IncompressibleFlow2D: obstacle radius must be positive, got {r}")
            if not (x0 < cx - r and cx + r < x1 and y0 < cy - r and cy + r < y1):
                raise ValueError(f"IncompressibleFlow2D: the obstacle disc (centre ({cx}, {cy}), radius {r}) "
                                 f"must lie inside the box {self.domain.lo}-{self.domain.hi}")
            obstacle = (cx, cy, r)
        if jet is not None and not (jet.width > 0 and jet.depth > 0 and jet.soft > 0 and math.isfinite(jet.speed)):
            raise ValueError(f"IncompressibleFlow2D: the jet needs positive width, depth and soft and a finite "
                             f"speed, got {jet}")
        if int(n_points) < 16:
            raise ValueError(f"IncompressibleFlow2D: n_points must be at least 16, got {n_points}")
        self.name = name
        self.initial_fn = initial
        self.obstacle = obstacle
        self.jet = jet
        self.exact_fn = exact
        self.n_points = int(n_points)
        self.wall_points = int(wall_points) if wall_points is not None else max(4, self.n_points // 100)
        self.pressure_points = min(self.n_points, int(pressure_points) if pressure_points is not None else 4096)
        if self.pressure_points < 16:
            raise ValueError(f"IncompressibleFlow2D: pressure_points must be at least 16, got {pressure_points}")
        self.hidden_features, self.hidden_layers = int(hidden_features), int(hidden_layers)
        if not (first_omega > 0 and pressure_omega > 0):
            raise ValueError(f"IncompressibleFlow2D: first_omega and pressure_omega must be positive, got "
                             f"{first_omega} and {pressure_omega}")
        self.first_omega, self.pressure_omega = float(first_omega), float(pressure_omega)
        self._check_initial()

    # -- geometry ------------------------------------------------------------------------------------
    def inside(self, x: torch.Tensor) -> torch.Tensor:
        """True where points lie in the fluid (in the box, outside the obstacle), shape ``(n,)``."""
        lo = torch.tensor(self.domain.lo, dtype=x.dtype, device=x.device)
        hi = torch.tensor(self.domain.hi, dtype=x.dtype, device=x.device)
        ok = ((x >= lo) & (x <= hi)).all(dim=1)
        if self.obstacle is not None:
            cx, cy, r = self.obstacle
            ok &= (x[:, 0] - cx) ** 2 + (x[:, 1] - cy) ** 2 > r * r
        return ok

    @property
    def fluid_fraction(self) -> float:
        """Area of the fluid over area of the box."""
        if self.obstacle is None:
            return 1.0
        return 1.0 - math.pi * self.obstacle[2] ** 2 / self.domain.volume

    def sample_fluid(self, n: int, generator: torch.Generator | None = None, quasi: bool = True,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``n`` points in the fluid, shape ``(n, 2)`` (scrambled Sobol when ``quasi``)."""
        m = n if self.obstacle is None else int(n / self.fluid_fraction * 1.1) + 16
        while True:
            x = self.domain.sample(m, generator=generator, quasi=quasi, dtype=dtype)
            x = x[self.inside(x)]
            if x.shape[0] >= n:
                return x[:n]
            m *= 2

    def sample_walls(self, generator: torch.Generator | None = None, quasi: bool = True,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Points on the walls with their outward normals, shape ``(m, 4)``: columns ``x, y, n_x, n_y``.

        ``wall_points`` on each box side, and on the obstacle's circle as many per unit length.
        """
        k = self.wall_points
        (x0, y0), (x1, y1) = self.domain.lo, self.domain.hi
        s = self.domain.sample(k, generator=generator, quasi=quasi, dtype=dtype)
        tx, ty = s[:, 0], s[:, 1]
        zero, one = torch.zeros_like(tx), torch.ones_like(tx)
        rows = [torch.stack([tx, y0 * one, zero, -one], 1), torch.stack([tx, y1 * one, zero, one], 1),
                torch.stack([x0 * one, ty, -one, zero], 1), torch.stack([x1 * one, ty, one, zero], 1)]
        if self.obstacle is not None:
            cx, cy, r = self.obstacle
            kc = max(8, round(k * 2 * math.pi * r / (x1 - x0)))
            phase = float(torch.rand(1, generator=generator, dtype=torch.float64))
            a = 2 * math.pi * (torch.arange(kc, dtype=dtype) + phase) / kc
            # the fluid lies outside the disc: its outward normal points into the disc
            rows.append(torch.stack([cx + r * torch.cos(a), cy + r * torch.sin(a), -torch.cos(a), -torch.sin(a)], 1))
        return torch.cat(rows)

    # -- fields --------------------------------------------------------------------------------------
    def _check_initial(self) -> None:
        x = self.domain.grid(16, dtype=torch.float64)
        try:
            u0 = self.initial_fn(x)
        except Exception as exc:  # a user callable: say which one failed and how
            raise ValueError(f"IncompressibleFlow2D: the initial velocity failed on points of shape "
                             f"{tuple(x.shape)}: {exc}") from exc
        if not isinstance(u0, torch.Tensor) or u0.shape != x.shape:
            shape = tuple(u0.shape) if isinstance(u0, torch.Tensor) else type(u0).__name__
            raise ValueError(f"IncompressibleFlow2D: the initial velocity must map points (n, 2) to (n, 2), "
                             f"got {shape} for n={x.shape[0]}")
        if not torch.isfinite(u0).all():
            raise ValueError("IncompressibleFlow2D: the initial velocity is not finite everywhere on the box")

    def initial(self, x: torch.Tensor) -> torch.Tensor:
        """Initial velocity, zero inside the obstacle."""
        return self.initial_fn(x) * self.inside(x)[:, None].to(x.dtype)

    def exact(self, x: torch.Tensor, t: float) -> torch.Tensor | None:
        """Analytic velocity at ``(x, t)``, or ``None`` when unknown."""
        return None if self.exact_fn is None else self.exact_fn(x, t)

    def force(self, x: torch.Tensor, advected: torch.Tensor) -> torch.Tensor:
        """The advected velocity with the jet imposed in its nozzle (unchanged without a jet)."""
        if self.jet is None:
            return advected
        w = self.jet.weight(x, self.domain.lo[1])[:, None].to(advected)
        target = torch.zeros_like(advected)
        target[:, 1] = self.jet.speed
        return advected + w * (target - advected)

    def default_field(self, channels: int = 2, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype | None = None, device=None) -> nn.Module:
        """A SIREN for the velocity (``channels=2``) or the pressure (``channels=1``)."""
        omega = self.first_omega if channels == 2 else self.pressure_omega
        return SIREN(2, channels, self.hidden_features, self.hidden_layers, first_omega=omega, generator=generator,
                     dtype=dtype, device=device)

    def eval_points(self, n: int = 128, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Cell centres of an ``n x n`` grid of the box that lie in the fluid, shape ``(m, 2)``."""
        x = self.domain.grid(n, dtype=dtype, device=device)
        return x[self.inside(x)]

    def config(self) -> dict:
        return {"name": self.name, "lo": list(self.domain.lo), "hi": list(self.domain.hi),
                "obstacle": None if self.obstacle is None else list(self.obstacle),
                "jet": None if self.jet is None else asdict(self.jet), "n_points": self.n_points,
                "wall_points": self.wall_points, "pressure_points": self.pressure_points,
                "hidden_features": self.hidden_features,
                "hidden_layers": self.hidden_layers, "first_omega": self.first_omega,
                "pressure_omega": self.pressure_omega}


def taylor_green(**kwargs) -> IncompressibleFlow2D:
    """INSR's Taylor-Green vortex on ``[-1, 1]^2`` (steady, so the analytic solution is the initial one)."""
    return IncompressibleFlow2D(taylor_green_velocity, name="fluid-taylor-green",
                                exact=lambda x, t: taylor_green_velocity(x), **kwargs)


def taylor_green_multiscale(scale: float = 8.0, gap: float = 0.05, **kwargs) -> IncompressibleFlow2D:
    """INSR's multi-scale Taylor-Green set-up: vortices of two sizes (no analytic solution).

    The initial field is divergent in the thin gaps where each cell is faded out, so the first pressure
    has narrow features: unless given, the pressure SIREN gets first-layer frequency 30 and all
    ``n_points`` points (``pressure_omega=30``, ``pressure_points=n_points``) instead of 10 and 4096.
    """
    if not scale > 2:
        raise ValueError(f"taylor_green_multiscale: scale must exceed 2, got {scale}")
    if not 0 < gap < 0.5:
        raise ValueError(f"taylor_green_multiscale: gap must lie in (0, 0.5), got {gap}")
    kwargs.setdefault("pressure_omega", 30.0)
    kwargs.setdefault("pressure_points", kwargs.get("n_points", 128 ** 2))
    return IncompressibleFlow2D(lambda x: taylor_green_multiscale_velocity(x, scale, gap),
                                name="fluid-taylor-green-multiscale", **kwargs)


def jet_past_cylinder(*, speed: float = 0.5, width: float = 0.2, obstacle=(0.04, -0.2, 0.2),
                      **kwargs) -> IncompressibleFlow2D:
    """A jet from the bottom wall of a closed box hitting a disc slightly off its axis (fluid at rest first)."""
    if not speed > 0:
        raise ValueError(f"jet_past_cylinder: speed must be positive, got {speed}")
    return IncompressibleFlow2D(lambda x: torch.zeros_like(x), name="fluid-jet-cylinder", obstacle=obstacle,
                                jet=Jet(width=width, speed=speed), **kwargs)


# -- diagnostics -------------------------------------------------------------------------------------

def vorticity(u: Velocity, x: torch.Tensor) -> torch.Tensor:
    """``dv/dx - du/dy`` of a velocity field at points ``x``, shape ``(n,)``."""
    J = jacobian(u, x)
    return J[:, 1, 0] - J[:, 0, 1]


def flow_diagnostics(problem: IncompressibleFlow2D, u: Velocity, x: torch.Tensor, t: float,
                     energy0: float | None = None) -> dict[str, float | None]:
    """``error`` (relative L2 against the analytic velocity, if any), ``rms_divergence``, ``kinetic_energy``
    (mean of ``|u|^2 / 2`` over the fluid times its area) and ``energy_ratio`` (to ``energy0``) at points ``x``."""
    with torch.no_grad():
        values = u(x)
        div = divergence(u, x)
    exact = problem.exact(x, t)
    energy = float(0.5 * values.double().square().sum(1).mean()) * problem.domain.volume * problem.fluid_fraction
    return {"error": None if exact is None else relative_l2(values, exact),
            "rms_divergence": float(div.double().square().mean().sqrt()),
            "kinetic_energy": energy,
            "energy_ratio": None if not energy0 else energy / energy0}


# -- residual helpers --------------------------------------------------------------------------------

def _scalar_gradient(p, x):
    return jacobian(p, x)[:, 0, :]


@dataclass
class FluidStepRecord(StepRecord):
    """Metrics of one fluid time step (one line of ``metrics.jsonl``): a :class:`~neuralnumerics.pde.StepRecord`
    (``loss`` and ``fit_iters`` summed over the stages, ``error`` against the analytic velocity) with the
    flow's RMS divergence, kinetic energy, its ratio to the initial one, and per-stage fit reports."""

    rms_divergence: float | None = None
    kinetic_energy: float | None = None
    energy_ratio: float | None = None
    stages: dict = dataclass_field(default_factory=dict)


class FluidTrajectory:
    """Velocity and pressure weights of a fluid run at its stored steps.

    ``velocity(step)`` and ``pressure(step)`` are callables from points ``(n, 2)`` to ``(n, 2)`` and ``(n, 1)``.
    """

    def __init__(self, velocity_module: nn.Module, pressure_module: nn.Module, dt: float) -> None:
        self.velocity_module, self.pressure_module, self.dt = velocity_module, pressure_module, float(dt)
        self._weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.records: list[FluidStepRecord] = []

    def add(self, step: int, velocity: torch.Tensor, pressure: torch.Tensor) -> None:
        self._weights[int(step)] = (velocity.detach().clone(), pressure.detach().clone())

    @property
    def steps(self) -> list[int]:
        return sorted(self._weights)

    def weights(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(velocity weights, pressure weights)`` at ``step``."""
        if int(step) not in self._weights:
            raise IndexError(f"step {step} is not stored; stored steps are {self.steps}")
        return self._weights[int(step)]

    def velocity(self, step: int) -> Velocity:
        return _no_grad(functional_field(self.velocity_module, self.weights(step)[0]))

    def pressure(self, step: int) -> Velocity:
        return _no_grad(functional_field(self.pressure_module, self.weights(step)[1]))


def _no_grad(f):
    def evaluate(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return f(x)
    return evaluate


def _merge(reports: dict[str, FitReport]) -> tuple[float, int, Status]:
    loss = sum(r.loss for r in reports.values())
    iters = sum(r.iters for r in reports.values())
    bad = [r.status for r in reports.values() if not r.status.ok]
    return loss, iters, (bad[0] if bad else Status.SUCCESS)


def evolve_fluid(problem: IncompressibleFlow2D, *, dt: float, steps: int, scheme: str = "fused",
                 fit: FitConfig | None = None, pressure_fit: FitConfig | None = None,
                 initial_fit: FitConfig | None = None, seed: int = 0, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64,
                 callback: Callable[[FluidStepRecord, FluidTrajectory], None] | None = None,
                 start: tuple[int, torch.Tensor, torch.Tensor] | None = None, keep: str = "all",
                 eval_resolution: int = 128, divergence_weight: float = 0.1) -> FluidTrajectory:
    """March an INSR fluid through ``steps`` time steps of size ``dt`` (see the module docstring).

    Args:
        problem: the flow (:class:`IncompressibleFlow2D`).
        dt, steps: time step and number of steps after the initial fit.
        scheme: ``"fused"`` (2 fits per step) or ``"paper"`` (3 fits), see :data:`SCHEMES`.
        fit: fit configuration of the velocity stages (default L-BFGS, ``rtol=1e-4``, stopping when 25 iterations
            gain less than 1% (``ftol=1e-2``), at the latest after 300). With a divergence penalty, step 1's
            velocity fits may run to 800 iterations (they start from an initial fit made without it).
        pressure_fit: fit configuration of the pressure (default Levenberg-Marquardt, at most 10 Jacobians,
            ``rtol=0.05`` relative to the RMS divergence it removes: well below the divergence the velocity
            fit leaves).
        initial_fit: the fit of the initial velocity (default: L-BFGS, or Adam when ``fit`` is Adam, with at least
            2000 iterations, after a 300-iteration Adam warm-up).
        seed: fixes the initialisation and all sampling.
        device, dtype: of the networks.
        callback: called with each step's record and the trajectory after the step is stored.
        start: ``(step, velocity weights, pressure weights)`` to continue a stored run.
        keep: ``"all"`` stores every step's weights, ``"last"`` only the latest.
        eval_resolution: the diagnostics use the fluid cells of an ``n x n`` grid.
        divergence_weight: weight of a ``div u`` residual added to the projection fit, on the pressure's
            points (0 is the paper's formulation). On Taylor-Green the default 0.1 keeps the RMS divergence
            at about 1.2e-3 where 0 leaves 8.5e-3, at 2-4x the time per step and an error about 10% larger
            after 10 steps; on the multi-scale vortex it is what removes the initial condition's
            divergence (see ``docs/fluids.md``).

    Raises:
        ValueError: on a bad ``dt``, ``steps``, ``scheme`` or ``keep``.
        StepDivergedError: when a fit fails; its ``result`` holds the trajectory up to the last good step.
    """
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown fluid scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    if keep not in ("all", "last"):
        raise ValueError(f"keep must be 'all' or 'last', got {keep!r}")
    if not (math.isfinite(divergence_weight) and divergence_weight >= 0):
        raise ValueError(f"divergence_weight must be a non-negative number, got {divergence_weight!r}")
    fit = fit or FitConfig(optimizer="lbfgs", max_iters=300, rtol=1e-4, ftol=1e-2)
    pressure_fit = pressure_fit or FitConfig(optimizer="lm", max_iters=10, rtol=0.05)
    if initial_fit is None:
        # a regression from a random initialisation: L-BFGS after an Adam warm-up (or the paper's Adam)
        adam = fit.optimizer == "adam"
        initial_fit = FitConfig(optimizer="adam" if adam else "lbfgs", max_iters=max(fit.iters, 2000), rtol=fit.rtol,
                                warmup_iters=0 if adam else 300)
    gen = torch.Generator().manual_seed(int(seed))
    velocity = problem.default_field(2, generator=gen, dtype=dtype, device=device)
    pressure = problem.default_field(1, generator=gen, dtype=dtype, device=device)
    frozen_u = copy.deepcopy(velocity).requires_grad_(False)
    frozen_p = copy.deepcopy(pressure).requires_grad_(False)
    traj = FluidTrajectory(frozen_u, frozen_p, dt)
    dev = next(velocity.parameters()).device
    eval_x = problem.eval_points(eval_resolution, dtype=dtype, device=dev)
    # kinetic energy of the initial condition, the reference of every step's energy_ratio (None when it is 0)
    energy0 = flow_diagnostics(problem, problem.initial, eval_x, 0.0)["kinetic_energy"] or None
    with torch.no_grad():
        initial_scale = _rms(problem.initial(eval_x))

    def finish(step: int, reports: dict[str, FitReport], seconds: float) -> None:
        wu, wp = flat_params(velocity), flat_params(pressure)
        loss, iters, status = _merge(reports)
        diag = flow_diagnostics(problem, functional_field(frozen_u, wu), eval_x, step * dt, energy0)
        record = FluidStepRecord(step=step, t=step * dt, loss=loss, fit_iters=iters, seconds=seconds,
                                 status=status.value, **diag,
                                 stages={k: {"loss": r.loss, "iters": r.iters, "seconds": r.seconds,
                                             "status": r.status.value} for k, r in reports.items()})
        if not status.ok:
            raise StepDivergedError(f"time step {step} (t={step * dt:g}) failed: {status.message()}", status, traj)
        if keep == "last":
            traj._weights.clear()
        traj.add(step, wu, wp)
        traj.records.append(record)
        if callback is not None:
            callback(record, traj)

    if start is None:
        first = 0
        t0 = time.perf_counter()
        generator = step_generator(seed, 0)
        points = problem.sample_fluid(problem.n_points, generator, True, dtype).to(dev)
        term = _term("initial", _matches, torch.cat([points, problem.initial(points)], 1))
        report = fit_field(velocity, [term], initial_fit, generator=generator, scale=initial_scale)
        finish(0, {"initial": report}, time.perf_counter() - t0)
    else:
        first = int(start[0])
        load_flat_params(velocity, start[1])
        load_flat_params(pressure, start[2])
        traj.add(first, start[1], start[2])
    stepper = _step_fused if scheme == "fused" else _step_paper
    # the first pressure fit starts from the network's initialisation (Gauss-Newton moves a SIREN's rough
    # output much better than a zero or small one, whose hidden weights hardly enter the Jacobian) and gets
    # more iterations; later ones start from the previous pressure, which changes little from step to step
    first_pressure_fit = replace(pressure_fit, max_iters=max(pressure_fit.iters, 40))
    # likewise the first penalised projection starts from the initial fit, which knew nothing of the
    # penalty: on Taylor-Green 800 iterations instead of 300 take step 1 from error 2.4e-3 and RMS
    # divergence 2.6e-3 to 1.4e-3 and 1.2e-3, for 43 s once
    first_fit = replace(fit, max_iters=max(fit.iters, 800)) if divergence_weight > 0 else fit
    for step in range(first + 1, steps + 1):
        t0 = time.perf_counter()
        generator = step_generator(seed, step)
        points = problem.sample_fluid(problem.n_points, generator, True, dtype).to(dev)
        walls = problem.sample_walls(generator, True, dtype).to(dev)
        advected = _advected(problem, functional_field(frozen_u, flat_params(velocity)), dt)
        fits = (first_fit, first_pressure_fit) if step == 1 else (fit, pressure_fit)
        reports = stepper(problem, velocity, pressure, advected, points, walls, fits, generator, divergence_weight)
        finish(step, reports, time.perf_counter() - t0)
    return traj


def _rms(values: torch.Tensor) -> float:
    rms = float(values.double().square().sum(1).mean().sqrt())
    return rms if rms > 0 else 1.0


def _advected(problem: IncompressibleFlow2D, u_prev: Velocity, dt: float) -> Velocity:
    """``x -> u_prev(x - dt u_prev(x))`` (foot points clamped to the box), with the jet imposed."""
    lo = torch.tensor(problem.domain.lo)
    hi = torch.tensor(problem.domain.hi)

    def advected(x: torch.Tensor) -> torch.Tensor:
        foot = x - dt * u_prev(x)
        foot = torch.minimum(torch.maximum(foot, lo.to(x)), hi.to(x))
        return problem.force(x, u_prev(foot))

    return advected


def _fixed(points: torch.Tensor):
    return lambda generator, quasi: points


def _term(name: str, fn, points: torch.Tensor) -> ResidualTerm:
    """A residual term on fixed points whose columns after the first two are per-point data for ``fn(u, x, d)``."""
    return ResidualTerm(name, lambda u, xd: fn(u, xd[:, :2], xd[:, 2:]), _fixed(points), coords=2)


def _poisson(p, x, d):
    return laplacian(p, x) - d


def _neumann(p, x, d):
    # d = (normal, prescribed flux): grad p . n - flux
    return (_scalar_gradient(p, x) * d[:, :2]).sum(1, keepdim=True) - d[:, 2:3]


def _matches(u, x, d):
    return u(x) - d


def _tangential(u, x, d):
    return (u(x) * d[:, :2]).sum(1, keepdim=True)


def _project(problem, velocity, pressure, target, div_target, points, walls, fits, generator,
             divergence_weight: float = 0.0) -> dict[str, FitReport]:
    """Pressure fit (``lap p = div u*``, ``dp/dn = u* . n``) and projection fit (``u = u* - grad p``, ``u . n = 0``).

    ``target`` is ``u*``, ``div_target`` its divergence, both callables evaluated once at the points. The
    pressure fit uses the first ``problem.pressure_points`` of the points (a scrambled Sobol sequence's first
    ``2^k`` points are a Sobol set themselves). With ``divergence_weight > 0`` the projection fit also
    penalises ``div u`` on those points.
    """
    velocity_fit, pressure_fit = fits
    normals = walls[:, 2:]
    with torch.no_grad():
        a = target(points)
        flux = (target(walls[:, :2]) * normals).sum(1, keepdim=True)
    p_points = points[:problem.pressure_points]
    div = div_target(p_points).detach()
    reports = {}
    p_terms = [_term("poisson", _poisson, torch.cat([p_points, div], 1)),
               _term("neumann", _neumann, torch.cat([walls, flux], 1))]
    reports["pressure"] = fit_field(pressure, p_terms, pressure_fit, generator=generator, scale=_rms(div))
    with torch.no_grad():
        projected = a - _scalar_gradient(functional_field(pressure, flat_params(pressure)), points)
    u_terms = [_term("projection", _matches, torch.cat([points, projected], 1)),
               _term("walls", _tangential, walls)]
    if divergence_weight > 0:
        u_terms.append(ResidualTerm("divergence", divergence, _fixed(p_points), divergence_weight))
    reports["projection"] = fit_field(velocity, u_terms, velocity_fit, generator=generator, scale=_rms(a))
    return reports


def _step_fused(problem, velocity, pressure, advected, points, walls, fits, generator,
                divergence_weight) -> dict[str, FitReport]:
    return _project(problem, velocity, pressure, advected, lambda x: divergence(advected, x), points, walls, fits,
                    generator, divergence_weight)


def _step_paper(problem, velocity, pressure, advected, points, walls, fits, generator,
                divergence_weight) -> dict[str, FitReport]:
    with torch.no_grad():
        a = advected(points)
    terms = [_term("advection", _matches, torch.cat([points, a], 1)), _term("walls", _tangential, walls)]
    reports = {"advection": fit_field(velocity, terms, fits[0], generator=generator, scale=_rms(a))}
    u_star = functional_field(velocity, flat_params(velocity))
    reports.update(_project(problem, velocity, pressure, _no_grad(u_star), lambda x: divergence(u_star, x),
                            points, walls, fits, generator, divergence_weight))
    return reports

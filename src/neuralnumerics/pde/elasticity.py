"""Hyperelastic solids with a neural deformation map (INSR, Chen et al., ICML 2023, Sec. 5.3).

The neural field is the displacement ``u(X)`` of the body's rest points ``X``; the deformed position is
``phi(X) = X + u(X)`` and the deformation gradient ``F = I + du/dX``. Each time step fits the weights so that
``phi_{n+1}`` minimises the implicit-Euler incremental potential

    ``E(phi) = int_body [ rho / (2 dt^2) |phi - phi_hat|^2 + Psi(F) + k/2 depth(phi)^2 ] dX
              + sum_c kappa_c / 2 int_{Gamma_c} |phi - target_c|^2 dS``

with ``phi_hat = phi_n + dt v_n + dt^2 g`` (inertia; gravity ``g`` enters by completing the square, which
changes ``E`` by a constant only), ``v_n = (phi_n - phi_{n-1}) / dt``, the elastic energy density ``Psi``
(:mod:`neuralnumerics.pde.hyperelastic`), a penalty ``k/2 depth^2`` per unit volume against each obstacle
(:mod:`neuralnumerics.pde.obstacles`) and positional constraints as penalties on parts of the boundary. A
*static* problem drops the inertia term (and takes gravity as the potential ``-rho g . (phi - X)``): each
step is then an equilibrium under that step's constraints, as in the paper's stretch example.

The integrals are Monte-Carlo (scrambled Sobol) averages over points of the body times its volume, so the
fit's loss is the incremental potential itself. It is minimised by L-BFGS on fixed points (by default) or
by the paper's Adam on fresh points; every step starts from the previous weights, or from their linear
extrapolation when that is lower.

Differences from the paper's code: the paper sums its terms over samples (so their weights depend on the
number of samples) and uses the collision work ``-dt qdot . (k depth n)``; here every term is an integral
with physical weights (``rho``, ``k``, ``kappa``) and contact is the penalty potential, whose gradient is the
same force ``k depth n``. The paper's ``ratio_kinematics`` ``r`` is ``rho / 2`` and its external force
density ``f`` is ``rho g``; :func:`paper_weights` converts the paper's sample-summed constraint weight.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field as dataclass_field
from typing import Callable, Sequence

import torch
from torch import nn

from .._status import Status, StepDivergedError
from ..fields import SIREN, flat_params, functional_field, jacobian, load_flat_params
from .bodies import Body
from .evolve import StepRecord, step_generator
from .fit import FitConfig, FitReport, ResidualTerm, fit_field
from .hyperelastic import _det, arap_energy, lame_parameters, neo_hookean_energy, volume_energy
from .obstacles import penalty_density

__all__ = ["Elasticity", "Constraint", "ElasticStepRecord", "ElasticTrajectory", "evolve_elastic",
           "MATERIALS", "paper_weights"]

MATERIALS = {
    "arap": "as-rigid-as-possible + volume preservation, arap_weight |F - R|^2 + volume_weight (det F - 1)^2 "
            "(the paper's)",
    "neo-hookean": "stable Neo-Hookean with Lame parameters from young and poisson",
}


def paper_weights(ratio_constraint: float, boundary_samples: int, interior_samples: int, volume: float,
                  boundary_measure: float) -> float:
    """The constraint stiffness ``kappa`` (per unit boundary measure) equivalent to the INSR code's
    ``ratio_constraint`` summed over ``boundary_samples`` points, against energies summed over
    ``interior_samples`` points of a body of ``volume`` whose constrained part has ``boundary_measure``.

    The paper's loss is ``sum_interior Psi + r sum_boundary |phi - target|^2``; per interior sample that is
    ``mean Psi + r (B / N) mean |.|^2``; ours is ``V mean Psi + kappa/2 |Gamma| mean |.|^2``.
    """
    return 2 * ratio_constraint * boundary_samples / interior_samples * volume / boundary_measure


@dataclass(frozen=True)
class Constraint:
    """A positional constraint: the points ``points`` (rest positions on the boundary) should move to
    ``X + offset * ramp``, ``ramp = min(1, step / ramp_steps)`` (1 when ``ramp_steps`` is 0), held by the
    penalty ``stiffness/2 int |phi - target|^2 dS`` over a boundary part of size ``measure``.

    Attributes:
        name: label in reports.
        points: ``(m, d)`` rest points.
        offset: displacement at full load (length ``d``).
        stiffness: penalty stiffness ``kappa`` per unit boundary measure.
        measure: length (2D) or area (3D) the points stand for.
        ramp_steps: steps over which the offset is reached linearly.
        region: ``region(X) -> (n,) bool``, the rest points the constraint holds, for mesh-based solvers
            (the finite-element baseline fixes the vertices in it); ``None``: none.
    """

    name: str
    points: torch.Tensor
    offset: tuple[float, ...]
    stiffness: float
    measure: float
    ramp_steps: int = 0
    region: Callable[[torch.Tensor], torch.Tensor] | None = None

    def target(self, x: torch.Tensor, step: int) -> torch.Tensor:
        ramp = 1.0 if self.ramp_steps <= 0 else min(1.0, step / self.ramp_steps)
        return x + ramp * x.new_tensor(self.offset)


class Elasticity:
    """A hyperelastic body for INSR: material, density, forces, obstacles and constraints.

    Args:
        body: the rest shape (:mod:`neuralnumerics.pde.bodies`).
        material: ``"arap"`` (``arap_weight |F - R|^2 + volume_weight (det F - 1)^2``, the paper's) or
            ``"neo-hookean"`` (stable Neo-Hookean from ``young``, ``poisson``).
        arap_weight, volume_weight: the paper's ``ratio_arap`` and ``ratio_volume`` (energy per unit volume).
        young, poisson: Young's modulus and Poisson's ratio of the Neo-Hookean material.
        density: mass per unit rest volume ``rho`` (the paper's ``2 ratio_kinematics``).
        gravity: acceleration vector (length ``d``) or ``None``.
        force_steps: apply gravity only during the first this many steps (the paper's ``T_ext``); ``None``:
            always.
        initial_velocity: a constant initial velocity (length ``d``) or ``None``.
        obstacles: obstacles of :mod:`neuralnumerics.pde.obstacles`.
        contact_stiffness: penalty ``k`` per unit volume (the paper's ``ratio_collide``).
        constraints: :class:`Constraint` instances.
        static: drop the inertia term: each step is an equilibrium (the paper's stretch example).
        n_points: quadrature points per fit.
        hidden_features, hidden_layers, first_omega: the SIREN of the displacement (the paper's 3 x 68).
        name: scenario-style name.
    """

    def __init__(self, body: Body, *, material: str = "arap", arap_weight: float = 1.0, volume_weight: float = 1e3,
                 young: float = 1e3, poisson: float = 0.45, density: float = 1.0,
                 gravity: Sequence[float] | None = None, force_steps: int | None = None,
                 initial_velocity: Sequence[float] | None = None, obstacles: Sequence = (),
                 contact_stiffness: float = 1e4, constraints: Sequence[Constraint] = (), static: bool = False,
                 n_points: int = 4096, hidden_features: int = 68, hidden_layers: int = 3, first_omega: float = 3.0,
                 name: str = "elasticity"):
        if material not in MATERIALS:
            raise ValueError(f"unknown material {material!r}; choose one of {', '.join(MATERIALS)}")
        d = body.dim
        for label, vec in (("gravity", gravity), ("initial_velocity", initial_velocity)):
            if vec is not None and len(vec) != d:
                raise ValueError(f"{label} must have {d} components for a {d}D body, got {list(vec)}")
        for label, v in (("density", density), ("contact_stiffness", contact_stiffness), ("n_points", n_points)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{label} must be positive, got {v!r}")
        for label, v in (("arap_weight", arap_weight), ("volume_weight", volume_weight)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{label} must be a finite non-negative number, got {v!r}")
        if force_steps is not None and (not isinstance(force_steps, int) or force_steps < 0):
            raise ValueError(f"force_steps must be a non-negative integer or None, got {force_steps!r}")
        for c in constraints:
            if c.points.ndim != 2 or c.points.shape[1] != d or len(c.offset) != d:
                raise ValueError(f"constraint {c.name!r}: points must be (m, {d}) and the offset have {d} components")
        self.body, self.material, self.name = body, material, name
        self.arap_weight, self.volume_weight = float(arap_weight), float(volume_weight)
        self.young, self.poisson = float(young), float(poisson)
        self._lame = lame_parameters(young, poisson) if material == "neo-hookean" else None
        self.density, self.static = float(density), bool(static)
        self.gravity = None if gravity is None else tuple(map(float, gravity))
        self.force_steps = force_steps
        self.initial_velocity = None if initial_velocity is None else tuple(map(float, initial_velocity))
        self.obstacles, self.contact_stiffness = tuple(obstacles), float(contact_stiffness)
        self.constraints = tuple(constraints)
        self.n_points, self.hidden_features, self.hidden_layers = int(n_points), int(hidden_features), int(hidden_layers)
        self.first_omega = float(first_omega)

    @property
    def dim(self) -> int:
        return self.body.dim

    # ----------------------------------------------------------------- energies
    def energy_density(self, F: torch.Tensor) -> torch.Tensor:
        """Elastic energy per unit rest volume of deformation gradients ``(..., d, d)``."""
        if self.material == "arap":
            return self.arap_weight * arap_energy(F) + self.volume_weight * volume_energy(F)
        return neo_hookean_energy(F, *self._lame)

    def default_field(self, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                      device=None) -> nn.Module:
        """The displacement SIREN, its last layer zeroed: the body starts exactly at rest."""
        net = SIREN(self.dim, self.dim, self.hidden_features, self.hidden_layers, first_omega=self.first_omega,
                    generator=generator, dtype=dtype, device=device)
        with torch.no_grad():
            net.layers[-1].weight.zero_()
            net.layers[-1].bias.zero_()
        return net

    def gravity_on(self, step: int) -> bool:
        return self.gravity is not None and (self.force_steps is None or step <= self.force_steps)

    def _deformation(self, u, X):
        phi = X + u(X)
        F = torch.eye(self.dim, dtype=X.dtype, device=X.device) + jacobian(u, X)
        return phi, F

    def _contact_density(self, phi: torch.Tensor) -> torch.Tensor:
        return penalty_density(phi, self.obstacles, self.contact_stiffness)

    def step_terms(self, u_prev: Callable, u_prev2: Callable | None, step: int, dt: float) -> list[ResidualTerm]:
        """The fit's terms for the step ending at ``step``: the body's incremental potential density (an energy
        term weighted by the volume) and one penalty residual per constraint.

        Args:
            u_prev, u_prev2: displacement fields of the two previous steps (``u_prev2`` None at the first step).
            step: index of the step being computed (>= 1).
            dt: time step.
        """
        rho = self.density
        g = self.gravity if self.gravity_on(step) else None

        def body_density(u, X):
            phi, F = self._deformation(u, X)
            e = self.energy_density(F) + self._contact_density(phi)
            if self.static:
                if g is not None:
                    e = e - rho * ((phi - X) * X.new_tensor(g)).sum(1)
                return e
            with torch.no_grad():
                prev = X + u_prev(X)
                if u_prev2 is not None:
                    v = (u_prev(X) - u_prev2(X)) / dt
                elif self.initial_velocity is not None:
                    v = X.new_tensor(self.initial_velocity).expand_as(X)
                else:
                    v = torch.zeros_like(X)
                target = prev + dt * v
                if g is not None:
                    target = target + dt * dt * X.new_tensor(g)
            return e + rho / (2 * dt * dt) * (phi - target).square().sum(1)

        body = self.body
        terms = [ResidualTerm("body", body_density,
                              lambda gen, quasi: body.sample(self.n_points, generator=gen, quasi=quasi),
                              weight=body.volume, energy=True)]
        for c in self.constraints:
            terms.append(ResidualTerm(
                c.name, lambda u, X, c=c: X + u(X) - c.target(X, step), lambda gen, quasi, c=c: c.points,
                weight=0.5 * c.stiffness * c.measure))
        return terms

    # ----------------------------------------------------------------- diagnostics
    def eval_points(self, n: int = 8192, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """Fixed quadrature points for the per-step diagnostics."""
        return self.body.sample(n, generator=torch.Generator().manual_seed(12345), dtype=dtype).to(device)

    def diagnostics(self, u: Callable, u_prev: Callable | None, step: int, dt: float, X: torch.Tensor,
                    surface: torch.Tensor | None = None) -> dict[str, float]:
        """Energies and violations of the displacement ``u`` at ``step`` on the points ``X``.

        Returns a dict with ``elastic_energy`` (``int Psi``), ``kinetic_energy`` (``rho/2 int |v|^2``, ``v``
        from the previous field; 0 for static problems), ``gravity_energy`` (``-rho int g . (phi - X)``
        while gravity acts), ``contact_energy``, ``max_penetration`` (deepest point among ``X`` and the
        ``surface`` points), ``constraint_violation`` (largest ``|phi - target|``), ``volume_change``
        (``int det F / V - 1``), ``min_det_f`` and ``center_of_mass`` (list).
        """
        V = self.body.volume
        Xg = X.detach()
        phi, F = self._deformation(u, Xg)
        phi, F = phi.detach(), F.detach()
        det = _det(F)
        out = {"elastic_energy": V * float(self.energy_density(F).mean()),
               "contact_energy": V * float(self._contact_density(phi).mean())}
        if self.static or u_prev is None:
            out["kinetic_energy"] = 0.0
        else:
            with torch.no_grad():
                v = (phi - Xg - u_prev(Xg)) / dt
            out["kinetic_energy"] = 0.5 * self.density * V * float(v.square().sum(1).mean())
        g = self.gravity if self.gravity_on(max(step, 1)) else None
        out["gravity_energy"] = (0.0 if g is None else
                                 -self.density * V * float(((phi - Xg) * Xg.new_tensor(g)).sum(1).mean()))
        depth = 0.0
        with torch.no_grad():
            pts = phi if surface is None else torch.cat([phi, surface + u(surface.to(Xg))])
            for ob in self.obstacles:
                depth = max(depth, float(ob.penetration(pts)[0].max()))
            out["max_penetration"] = depth
            viol = []
            for c in self.constraints:
                cp = c.points.to(Xg)
                viol.append(float((cp + u(cp) - c.target(cp, step)).norm(dim=1).max()))
        out["constraint_violation"] = max(viol) if viol else 0.0
        out["volume_change"] = float(det.mean()) - 1.0
        out["min_det_f"] = float(det.min())
        out["center_of_mass"] = [float(v) for v in phi.mean(0)]
        return out


@dataclass
class ElasticStepRecord(StepRecord):
    """Metrics of one elasticity step (one line of ``metrics.jsonl``): a
    :class:`~neuralnumerics.pde.evolve.StepRecord` with the :meth:`Elasticity.diagnostics` flattened in."""

    diagnostics: dict = dataclass_field(default_factory=dict)

    def to_dict(self) -> dict:
        row = asdict(self)
        row.update(row.pop("diagnostics"))
        return row


class ElasticTrajectory:
    """Displacement-field weights of an elasticity run at its stored steps.

    ``deformation(step)`` is a callable from rest points ``(n, d)`` to deformed positions ``(n, d)``;
    ``displacement(step)`` gives ``phi(X) - X``.
    """

    def __init__(self, module: nn.Module, dt: float) -> None:
        self.module, self.dt = module, float(dt)
        self._weights: dict[int, torch.Tensor] = {}
        self.records: list[ElasticStepRecord] = []

    def add(self, step: int, weights: torch.Tensor) -> None:
        self._weights[int(step)] = weights.detach().clone()

    @property
    def steps(self) -> list[int]:
        return sorted(self._weights)

    def weights(self, step: int) -> torch.Tensor:
        if int(step) not in self._weights:
            raise IndexError(f"step {step} is not stored; stored steps are {self.steps}")
        return self._weights[int(step)]

    def displacement(self, step: int) -> Callable[[torch.Tensor], torch.Tensor]:
        f = functional_field(self.module, self.weights(step))

        def evaluate(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return f(x.to(self._weights[int(step)].dtype))
        return evaluate

    def deformation(self, step: int) -> Callable[[torch.Tensor], torch.Tensor]:
        u = self.displacement(step)
        return lambda x: x.to(self._weights[int(step)].dtype) + u(x)


def evolve_elastic(problem: Elasticity, *, dt: float, steps: int, fit: FitConfig | None = None, seed: int = 0,
                   field: nn.Module | None = None, device=None, dtype: torch.dtype | str | None = None,
                   callback: Callable[[ElasticStepRecord, ElasticTrajectory], None] | None = None,
                   start: tuple[int, torch.Tensor, torch.Tensor | None] | None = None, keep: str = "all",
                   extrapolate: bool = True) -> ElasticTrajectory:
    """March an elastic body through ``steps`` implicit-Euler (or, for static problems, equilibrium) steps.

    Step 0 is the rest state (the default field's output is exactly zero). Each later step fits the
    displacement field by minimising the step's incremental potential (:meth:`Elasticity.step_terms`).

    Args:
        problem: the :class:`Elasticity` problem.
        dt: time step, positive.
        steps: number of steps.
        fit: per-step fit (default L-BFGS, at most 500 iterations, stopping when 25 iterations gain less than
            1e-6 of the energy).
        seed: fixes the initialisation and the sampling.
        field: the network (default :meth:`Elasticity.default_field`); its weights are overwritten.
        device, dtype: of the field (default float64 for a new field).
        callback: ``callback(record, trajectory)`` after each step, step 0 included.
        start: ``(step, weights, previous weights or None)`` to continue a run.
        keep: ``"all"`` or ``"last"`` (only the two newest steps' weights stay stored).
        extrapolate: start each fit from ``2 w_n - w_{n-1}`` when that has the lower potential.

    Raises:
        ValueError: bad arguments. StepDivergedError: a non-finite fit; its ``result`` is the trajectory up to
            the last good step.
    """
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if keep not in ("all", "last"):
        raise ValueError(f"keep must be 'all' or 'last', got {keep!r}")
    fit = fit or FitConfig(optimizer="lbfgs", max_iters=500, ftol=1e-6)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    if dtype is None:
        dtype = next(field.parameters()).dtype if field is not None else torch.float64
    if field is None:
        field = problem.default_field(generator=torch.Generator().manual_seed(int(seed)), dtype=dtype, device=device)
    else:
        field = field.to(dtype=dtype, device=device) if device is not None else field.to(dtype=dtype)
    frozen = copy.deepcopy(field).requires_grad_(False)
    traj = ElasticTrajectory(frozen, dt)
    dev = next(field.parameters()).device
    X_eval = problem.eval_points(dtype=dtype, device=dev)
    surface = problem.body.surface(512, generator=torch.Generator().manual_seed(54321), dtype=dtype).to(dev)

    def finish(step: int, report: FitReport | None, seconds: float, prev: torch.Tensor | None) -> None:
        weights = flat_params(field)
        if report is not None and not report.status.ok:
            raise StepDivergedError(f"elasticity step {step} (t={step * dt:g}) failed: {report.status.message()}; "
                                    "a smaller --dt or a lower contact stiffness may help", report.status, traj)
        u = functional_field(frozen, weights)
        u_prev = None if prev is None else functional_field(frozen, prev)
        diag = problem.diagnostics(u, u_prev, step, dt, X_eval, surface)
        record = ElasticStepRecord(step=step, t=step * dt, loss=0.0 if report is None else report.loss,
                                   fit_iters=0 if report is None else report.iters, seconds=seconds,
                                   status=Status.SUCCESS.value if report is None else report.status.value,
                                   losses=None if report is None else report.losses, diagnostics=diag)
        if keep == "last":
            for s in [s for s in traj.steps if s < step - 1]:
                del traj._weights[s]
        traj.add(step, weights)
        traj.records.append(record)
        if callback is not None:
            callback(record, traj)

    prev_weights: torch.Tensor | None = None
    if start is None:
        first = 0
        finish(0, None, 0.0, None)
    else:
        first = int(start[0])
        load_flat_params(field, start[1].to(dtype=dtype, device=dev))
        traj.add(first, flat_params(field))
        if len(start) > 2 and start[2] is not None:
            prev_weights = start[2].detach().to(dtype=dtype, device=dev)
    for step in range(first + 1, steps + 1):
        current = flat_params(field)
        u_prev = functional_field(frozen, current)
        u_prev2 = None if prev_weights is None else functional_field(frozen, prev_weights)
        candidates: tuple[torch.Tensor, ...] = ()
        if extrapolate and prev_weights is not None:
            load_flat_params(field, 2 * current - prev_weights)
            candidates = (current,)
        t0 = time.perf_counter()
        terms = problem.step_terms(u_prev, u_prev2 if not problem.static else None, step, dt)
        report = fit_field(field, terms, fit, generator=step_generator(seed, step), candidates=candidates)
        seconds = time.perf_counter() - t0
        finish(step, report, seconds, current)
        prev_weights = current
    return traj

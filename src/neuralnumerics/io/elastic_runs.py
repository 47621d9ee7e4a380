"""Run directories of the elasticity scenarios: INSR (:func:`~neuralnumerics.pde.elasticity.evolve_elastic`) and
the finite-element baseline (:class:`~neuralnumerics.classical.elasticity.ElasticFEM`), with the same per-step
metrics, checkpoints and pictures (2D: the deformed body coloured by strain; 3D: deformed surface points)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .._status import Status, StepDivergedError
from ..fields import jacobian, param_count
from ..pde.bodies import MeshBody
from ..pde.fit import FitConfig
from ..pde.hyperelastic import _det, arap_energy
from ..pde.obstacles import Plane, Sphere, penalty_density
from .plots import plot_deformed_2d, plot_points_3d

__all__ = ["fem_for", "fem_diagnostics", "equal_memory_resolution"]


def _strain(F: torch.Tensor) -> np.ndarray:
    """``|F - R|`` per deformation gradient."""
    return arap_energy(F.detach()).clamp_min(0).sqrt().cpu().numpy()


class _Pictures:
    """Frames of one run with fixed axes: the body is drawn through a display mesh (2D) or surface points (3D)."""

    def __init__(self, problem, dtype):
        self.problem, body = problem, problem.body
        self.dim = body.dim
        if self.dim == 2:
            V, T = body.mesh(48) if not isinstance(body, MeshBody) else body.mesh()
            self.rest, self.tris = V.to(dtype), T
            self.centroids = V[T].mean(1).to(dtype)
        else:
            self.rest = body.surface(3000, generator=torch.Generator().manual_seed(7), dtype=dtype)
        lo, hi = np.array(body.lo, float), np.array(body.hi, float)
        for c in problem.constraints:  # where the constrained points are pulled to
            full = c.points + c.points.new_tensor(c.offset)
            lo, hi = np.minimum(lo, full.min(0).values.numpy()), np.maximum(hi, full.max(0).values.numpy())
        floor = None
        for ob in problem.obstacles:
            if isinstance(ob, Sphere):
                lo = np.minimum(lo, np.array(ob.center[:self.dim]) - ob.radius)
                hi = np.maximum(hi, np.array(ob.center[:self.dim]) + ob.radius)
            elif isinstance(ob, Plane):
                floor = ob.height
                lo[-1] = min(lo[-1], ob.height)
        pad = 0.15 * float((hi - lo).max())
        self.limits = (lo - pad, hi + pad)
        self.floor = floor
        self.vmax = None
        self.fem_surface = None

    def _save(self, path, points, strain, title):
        top = float(np.quantile(strain, 0.98)) if strain.size else 0.0
        if top > 1e-3:  # the colour scale only grows, so frames stay comparable
            self.vmax = max(self.vmax or 0.0, 1.2 * top)
        if self.dim == 2:
            plot_deformed_2d(path, points, self.tris.numpy(), strain, obstacles=self.problem.obstacles,
                             markers=np.concatenate([(c.points + c.points.new_tensor(c.offset)).numpy()
                                                     for c in self.problem.constraints])
                             if self.problem.constraints else None,
                             limits=self.limits, vmax=self.vmax, title=title)
        else:
            plot_points_3d(path, points, strain, floor=self.floor, limits=self.limits, vmax=self.vmax, title=title)

    def insr(self, path, u, title):
        with torch.no_grad():
            points = (self.rest + u(self.rest)).cpu().numpy()
        where = self.centroids if self.dim == 2 else self.rest
        F = torch.eye(self.dim, dtype=where.dtype) + jacobian(u, where).detach()
        self._save(path, points, _strain(F), title)

    def fem(self, path, fem, q, title):
        strain = _strain(fem.deformation_gradients(q))
        if self.dim == 2:
            self.tris = fem.cells
            self._save(path, q.cpu().numpy(), strain, title)
            return
        if self.fem_surface is None:  # the mesh's boundary vertices, found once per run
            self.fem_surface = torch.unique(MeshBody(fem.vertices, fem.cells).boundary_facets())
        surf = self.fem_surface
        per_vertex = torch.zeros(fem.vertices.shape[0], dtype=q.dtype)
        per_vertex.scatter_reduce_(0, fem.cells.reshape(-1), torch.from_numpy(strain).repeat_interleave(4),
                                   reduce="amax")
        self._save(path, q[surf].cpu().numpy(), per_vertex[surf].numpy(), title)


def _fit_from(config) -> FitConfig:
    f = config["fit"]
    return FitConfig(optimizer=f["optimizer"], max_iters=f["max_iters"], rtol=f["rtol"],
                     ftol=f.get("ftol", FitConfig.ftol))


def _resume_start(rd, resume):
    if resume and rd.checkpoint_steps():
        step = rd.checkpoint_steps()[-1]
        rd.truncate_metrics(step)
        return step, rd.load_checkpoint(step)
    if resume:
        rd.truncate_metrics(-1)
    return None, None


def _run_elastic_insr(rd, problem, config, device, dtype, resume, bar) -> None:
    from ..pde.elasticity import evolve_elastic
    from .runner import _peak_memory_mb

    step0, ckpt = _resume_start(rd, resume)
    start = None if ckpt is None else (step0, ckpt["weights"], ckpt.get("prev_weights"))
    pictures = _Pictures(problem, dtype)
    params = param_count(problem.default_field())

    def callback(record, traj) -> None:
        row = record.to_dict()
        row.update(memory_floats=params, peak_memory_mb=_peak_memory_mb(device))
        rd.append_metrics(row)
        s = record.step
        if s % config["checkpoint_every"] == 0 or s == config["steps"]:
            prev = traj.weights(s - 1).cpu() if s - 1 in traj.steps else None
            rd.save_checkpoint(s, {"step": s, "t": record.t, "weights": traj.weights(s).cpu(), "prev_weights": prev,
                                   "config": config})
        if s % config["frame_every"] == 0 or s == config["steps"]:
            pictures.insr(rd.frame_path(s), traj.displacement(s),
                          f"{problem.name}  INSR  step {s}  t = {record.t:.3f}")
        bar.update(row)

    bar.start(0 if start is None else start[0])
    try:
        evolve_elastic(problem, dt=config["dt"], steps=config["steps"], fit=_fit_from(config), seed=config["seed"],
                       device=device, dtype=dtype, callback=callback, start=start, keep="last")
    finally:
        bar.close()


def equal_memory_resolution(body, floats: int, per_vertex: int) -> int:
    """The mesh resolution whose state (``per_vertex`` floats per vertex) is closest to ``floats``."""
    best, best_gap = 2, math.inf
    hi = 2
    while body.mesh(hi)[0].shape[0] * per_vertex < floats and hi < 4096:  # bracket (meshes stay small)
        hi *= 2
    lo = max(2, hi // 2)
    while lo <= hi:  # vertex counts grow with the resolution: bisect, then keep the closest
        mid = (lo + hi) // 2
        n = body.mesh(mid)[0].shape[0] * per_vertex
        if abs(n - floats) < best_gap:
            best, best_gap = mid, abs(n - floats)
        lo, hi = (mid + 1, hi) if n < floats else (lo, mid - 1)
    return best


def fem_for(problem, cells: int = 0):
    """The finite-element model of ``problem``'s body (``cells`` across it; 0: the state -- positions, plus
    velocities when dynamic -- takes as many floats as INSR's SIREN has weights) and the fixed-vertex mask."""
    from ..classical.elasticity import ElasticFEM

    body = problem.body
    if isinstance(body, MeshBody):
        V, C = body.mesh()
    else:
        if not cells:
            per_vertex = body.dim * (1 if problem.static else 2)
            cells = equal_memory_resolution(body, param_count(problem.default_field()), per_vertex)
        V, C = body.mesh(cells)
    fem = ElasticFEM(V, C, problem.energy_density)
    fixed = torch.zeros(V.shape[0], dtype=torch.bool)
    for c in problem.constraints:
        if c.region is not None:
            fixed |= c.region(V)
    return fem, fixed


def _targets(problem, fem, step) -> torch.Tensor:
    out = fem.vertices.clone()
    for c in problem.constraints:
        if c.region is not None:
            mask = c.region(fem.vertices)
            out[mask] = c.target(fem.vertices[mask], step)
    return out


def fem_diagnostics(problem, fem, q, v, step) -> dict:
    """The metrics of :meth:`~neuralnumerics.pde.elasticity.Elasticity.diagnostics` for a finite-element state."""
    F = fem.deformation_gradients(q)
    vol = fem.volumes
    det = _det(F)
    m = fem.lumped_masses(problem.density)
    depth = max((float(ob.penetration(q)[0].max()) for ob in problem.obstacles), default=0.0)
    contact = float((m / problem.density * penalty_density(q, problem.obstacles, problem.contact_stiffness)).sum())
    g = problem.gravity if problem.gravity_on(max(step, 1)) else None
    viol = 0.0
    for c in problem.constraints:
        if c.region is not None:
            mask = c.region(fem.vertices)
            viol = max(viol, float((q[mask] - c.target(fem.vertices[mask], step)).norm(dim=1).max()))
    return {"elastic_energy": float((vol * problem.energy_density(F)).sum()), "contact_energy": contact,
            "kinetic_energy": 0.0 if problem.static else float(0.5 * (m[:, None] * v.square()).sum()),
            "gravity_energy": 0.0 if g is None else -float((m[:, None] * (q - fem.vertices) * q.new_tensor(g)).sum()),
            "max_penetration": depth, "constraint_violation": viol,
            "volume_change": float((vol * det).sum() / vol.sum()) - 1.0, "min_det_f": float(det.min()),
            "center_of_mass": [float(x) for x in (m[:, None] * q).sum(0) / m.sum()]}


def _run_elastic_fem(rd, problem, config, device, dtype, resume, bar) -> None:
    from .runner import _peak_memory_mb

    opts = config["options"]
    fem, fixed = fem_for(problem, opts.get("fem_cells", 0))
    dt, substeps = config["dt"], max(1, opts.get("fem_substeps", 1)) if problem.static else 1
    step0, ckpt = _resume_start(rd, resume)
    q, v = fem.vertices.clone(), torch.zeros_like(fem.vertices)
    if problem.initial_velocity is not None:
        v[:] = v.new_tensor(problem.initial_velocity)
    if ckpt is not None:
        q, v = ckpt["q"].to(q.dtype), ckpt["v"].to(q.dtype)
    pictures = _Pictures(problem, torch.float64)
    floats = fem.dof * (1 if problem.static else 2)

    def record(step, seconds, iters, converged):
        row = {"step": step, "t": step * dt, "loss": None, "fit_iters": iters, "seconds": seconds,
               "status": (Status.SUCCESS if converged else Status.MAX_ITERS).value, "error": None,
               **fem_diagnostics(problem, fem, q, v, step), "memory_floats": floats,
               "vertices": int(fem.vertices.shape[0]), "elements": int(fem.cells.shape[0]),
               "peak_memory_mb": _peak_memory_mb(device)}
        rd.append_metrics(row)
        if step % config["checkpoint_every"] == 0 or step == config["steps"]:
            rd.save_checkpoint(step, {"step": step, "q": q.cpu(), "v": v.cpu(), "config": config})
        if step % config["frame_every"] == 0 or step == config["steps"]:
            pictures.fem(rd.frame_path(step), fem, q, f"{problem.name}  FEM ({fem.vertices.shape[0]} vertices)  "
                                                     f"step {step}  t = {step * dt:.3f}")
        bar.update(row)

    first = 0 if step0 is None else step0
    bar.start(first)
    try:
        if step0 is None:
            record(0, 0.0, 0, True)
        for step in range(first + 1, config["steps"] + 1):
            t0 = time.perf_counter()
            iters, converged = 0, True
            before, after = _targets(problem, fem, step - 1), _targets(problem, fem, step)
            g = problem.gravity if problem.gravity_on(step) else None
            q_start = q
            for k in range(1, substeps + 1):
                targets = before + (after - before) * (k / substeps)
                q, _, res = fem.step(q, v, dt, density=problem.density, gravity=g, obstacles=problem.obstacles,
                                         contact_stiffness=problem.contact_stiffness, fixed=fixed, targets=targets,
                                         static=problem.static, tol=1e-9, max_iters=100,
                                         newton="damped" if problem.static else "projected")
                iters += res.iterations
                converged &= res.converged
            v = torch.zeros_like(q) if problem.static else (q - q_start) / dt
            if not bool(torch.isfinite(q).all()):
                raise StepDivergedError(f"FEM step {step}: non-finite positions; lower --dt", Status.DIVERGED)
            record(step, time.perf_counter() - t0, iters, converged)
    finally:
        bar.close()

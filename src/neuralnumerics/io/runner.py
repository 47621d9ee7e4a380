"""Run a scenario into a run directory: the layer behind ``neuralnumerics run``.

Writes ``config.json`` before the first step, one line of ``metrics.jsonl`` and a checkpoint per
step, frames and an animation, and ``summary.json`` at the end. ``resume=True`` continues from the
last checkpoint and reproduces, on the CPU, exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

from .._status import Status, StepDivergedError
from ..fields import param_count
from ..pde.evolve import StepRecord, Trajectory, evolve
from ..pde.fit import FitConfig
from ..pde.integrators import get_integrator
from ..scenarios import get_scenario
from .elastic_runs import _run_elastic_fem, _run_elastic_insr
from .plots import plot_field_1d, write_animation
from .rundir import RunDir, RunDirError

__all__ = ["run_scenario", "resolve_config"]

# config keys that may change when a run is resumed (they do not change the computed results)
_RESUMABLE_CHANGES = {"steps", "frame_every"}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but this PyTorch sees no CUDA device; use --device cpu "
                         "or install a CUDA build of torch")
    return dev


def resolve_config(scenario: str, *, steps: int | None = None, dt: float | None = None, seed: int = 0,
                   device: str | None = None, dtype: str = "float64", method: str | None = None,
                   integrator: str | None = None, optimizer: str | None = None, max_fit_iters: int | None = None,
                   rtol: float | None = None, frame_every: int | None = None, checkpoint_every: int | None = None,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The complete, checked configuration of a run (what ``config.json`` holds).

    ``method`` defaults to the scenario's first, ``checkpoint_every`` to the scenario's default (1 step for
    simulations). For a gradient flow (scenario kind ``"ot-flow"``) ``dt`` is the Euler step of the flow and
    there is no per-step fit (``fit`` is None; ``optimizer``, ``max_fit_iters`` and ``rtol`` are refused).

    Raises:
        ValueError: naming the bad value: unknown scenario, option, method, integrator or optimizer, or a
            non-positive ``dt``/``steps``.
    """
    sc = get_scenario(scenario)
    d = sc.defaults
    steps = d.get("steps", 100) if steps is None else steps
    dt = d.get("dt", 0.01) if dt is None else dt
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"--steps must be a non-negative integer, got {steps!r}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"--dt must be a positive number, got {dt!r}")
    method = sc.methods[0] if method is None else method
    if method not in sc.methods:
        raise ValueError(f"scenario {scenario!r} has no method {method!r}; choose one of {list(sc.methods)}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    fixed = {"fluid": ("operator-splitting", "advances by operator splitting (advect, pressure, project)"),
             "ot-flow": ("explicit-euler", "moves its point clouds by explicit Euler steps of the gradient flow"),
             "elasticity": ("implicit-euler", "minimises the implicit-Euler incremental potential at every step")}
    if sc.kind in fixed:
        if integrator is not None:
            raise ValueError(f"scenario {scenario!r} {fixed[sc.kind][1]}; --integrator does not apply to it")
        integrator = fixed[sc.kind][0]
    else:
        integrator = integrator or d.get("integrator", "midpoint")
        get_integrator(integrator)  # raises on an unknown name
    if sc.kind == "ot-flow":
        given = [name for name, v in (("--optimizer", optimizer), ("--max-fit-iters", max_fit_iters), ("--rtol", rtol))
                 if v is not None]
        if given:
            raise ValueError(f"scenario {scenario!r} has no per-step fit; {', '.join(given)} do(es) not apply to it")
        fit_config = None
    else:
        if sc.kind == "elasticity" and optimizer == "lm":
            raise ValueError(f"scenario {scenario!r} minimises an energy, which Levenberg-Marquardt cannot; use "
                             "--optimizer lbfgs or adam")
        rtol = d.get("rtol") if rtol is None else rtol
        ftol = d.get("ftol")
        fit = FitConfig(optimizer=optimizer or d.get("optimizer", "lm"),
                        max_iters=d.get("max_fit_iters") if max_fit_iters is None else max_fit_iters,
                        **({} if rtol is None else {"rtol": rtol}), **({} if ftol is None else {"ftol": ftol}))
        fit_config = {"optimizer": fit.optimizer, "max_iters": fit.iters, "rtol": fit.rtol,
                      **({} if ftol is None else {"ftol": fit.ftol})}
    checkpoint_every = d.get("checkpoint_every", 1) if checkpoint_every is None else checkpoint_every
    if checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    frame_every = frame_every or max(1, steps // 60)
    return {
        "scenario": scenario, "method": method, "steps": steps, "dt": float(dt), "seed": int(seed),
        "device": str(_pick_device(device)), "dtype": dtype, "integrator": integrator,
        "fit": fit_config,
        "frame_every": int(frame_every), "checkpoint_every": int(checkpoint_every),
        "options": sc.resolve(options), "torch": str(torch.__version__),
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _check_resume(stored: dict[str, Any], config: dict[str, Any]) -> None:
    old, new = _flatten(stored), _flatten(config)
    diffs = [f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if k not in _RESUMABLE_CHANGES and k != "torch" and old.get(k) != new.get(k)]
    if diffs:
        raise RunDirError("cannot resume: the run was started with another configuration ("
                          + "; ".join(diffs) + "); resume with the same settings or use --overwrite")


def run_scenario(scenario: str, *, out: str | None = None, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, log: Callable[[str], None] | None = None, **settings: Any) -> dict[str, Any]:
    """Run ``scenario`` into the run directory ``out`` and return the summary.

    Args:
        scenario: a name from :data:`neuralnumerics.scenarios.SCENARIOS`.
        out: run directory (default ``runs/<scenario>``).
        resume: continue the run in ``out`` from its last checkpoint.
        overwrite: replace whatever is in ``out``.
        progress: show a progress bar over time steps (tqdm when installed).
        log: where progress lines go when tqdm is missing (default: stderr).
        **settings: the keyword arguments of :func:`resolve_config`.

    Returns:
        The summary dict also written to ``summary.json``.

    Raises:
        ValueError, RunDirError: on bad settings or an unusable run directory (nothing is written).
        StepDivergedError: when a step fails; everything up to the last good step stays on disk and
            ``summary.json`` records the failure.
    """
    config = resolve_config(scenario, **settings)
    sc = get_scenario(scenario)
    problem = sc.build(config["options"])  # bad option values fail here, before anything is written
    rd = RunDir(out or f"runs/{scenario}", resume=resume, overwrite=overwrite)
    if resume:
        _check_resume(rd.read_config(), config)
    rd.write_config(config)
    device = _pick_device(config["device"])
    dtype = getattr(torch, config["dtype"])
    runner = {("pde", "insr"): _run_insr, ("pde", "grid"): _run_grid,
              ("fluid", "insr"): _run_fluid, ("fluid", "grid"): _run_fluid_grid,
              ("ot-flow", "sliced-flow"): _run_sliced_flow,
              ("elasticity", "insr"): _run_elastic_insr, ("elasticity", "fem"): _run_elastic_fem}[sc.kind, config["method"]]
    started = time.perf_counter()
    summary: dict[str, Any] = {"scenario": scenario, "method": config["method"], "run_dir": str(rd.path)}
    try:
        runner(rd, problem, config, device, dtype, resume, _progress(config, progress, log))
        summary["status"] = "completed"
    except StepDivergedError as exc:
        summary.update(status="diverged", message=str(exc))
        raise
    finally:
        metrics = rd.read_metrics()
        summary.update(_summarise(metrics, config, device))
        summary["wall_seconds_this_session"] = time.perf_counter() - started
        frames = rd.frames()
        if frames:
            anim = write_animation(frames, rd.path / "animation.gif", fps=10)
            summary["animation"] = str(anim)
        rd.write_summary(summary)
    return summary


def _summarise(metrics: list[dict], config: dict, device: torch.device) -> dict[str, Any]:
    stepped = [m for m in metrics if m["step"] > 0]
    last = metrics[-1] if metrics else {}
    return {
        "steps": last.get("step", 0), "t_final": last.get("t", 0.0),
        "final_error": last.get("error"), "final_loss": last.get("loss"),
        "seconds_per_step": float(np.mean([m["seconds"] for m in stepped])) if stepped else None,
        "fit_iters_per_step": float(np.mean([m["fit_iters"] for m in stepped])) if stepped else None,
        "initial_fit_seconds": metrics[0]["seconds"] if metrics else None,
        "peak_memory_mb": _peak_memory_mb(device),
        "integrator": config["integrator"], "dt": config["dt"],
        **{f"final_{k}": last[k] for k in ("rms_divergence", "energy_ratio", "elastic_energy", "kinetic_energy",
                                            "max_penetration", "constraint_violation", "volume_change") if k in last},
        **{f"final_{k}": v for k, v in last.items() if k.startswith("w2_") and v is not None},
    }


class _progress:
    """A progress bar over time steps showing the current loss (tqdm, or plain lines without it)."""

    def __init__(self, config: dict, enabled: bool, log: Callable[[str], None] | None) -> None:
        self.total, self.enabled = config["steps"], enabled
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.bar = None

    def start(self, initial: int) -> None:
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.log(f"running {self.total} steps (pip install tqdm for a progress bar)")
            return
        self.bar = tqdm(total=self.total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, record: dict) -> None:
        if not self.enabled:
            return
        err = record.get("error")
        loss = record.get("loss")
        text = ("" if loss is None else f"loss={loss:.2e}") + (f" err={err:.2e}" if err is not None else "")
        if self.bar is not None:
            if record["step"] > 0:
                self.bar.update(1)
            self.bar.set_postfix_str(text)
        elif record["step"] % max(1, self.total // 20) == 0 or record["step"] == self.total:
            self.log(f"step {record['step']}/{self.total} {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _frame(rd: RunDir, problem, step: int, t: float, field, ylim, label: str) -> None:
    x = problem.eval_points(dtype=torch.float64)
    values = field(x).double()
    exact = problem.exact(x, t)
    plot_field_1d(rd.frame_path(step), x[:, 0].numpy(), values[:, 0].cpu().numpy(),
                  exact=None if exact is None else exact[:, 0].numpy(), ylim=ylim, label=label,
                  title=f"{problem.name}  step {step}  t = {t:.3f}")


def _ylim(problem) -> tuple[float, float]:
    u0 = problem.initial(problem.eval_points(dtype=torch.float64))
    lo, hi = float(u0.min()), float(u0.max())
    pad = 0.15 * max(hi - lo, 1e-6)
    return lo - pad, hi + pad


def _run_insr(rd: RunDir, problem, config, device, dtype, resume, bar) -> None:
    start = None
    if resume and rd.checkpoint_steps():
        step = rd.checkpoint_steps()[-1]
        ckpt = rd.load_checkpoint(step)
        start = (int(ckpt["step"]), ckpt["weights"], ckpt.get("prev_weights"))
        rd.truncate_metrics(step)
    elif resume:
        rd.truncate_metrics(-1)
    ylim = _ylim(problem)
    fit = FitConfig(optimizer=config["fit"]["optimizer"], max_iters=config["fit"]["max_iters"],
                    rtol=config["fit"]["rtol"])
    last_weights: dict[int, torch.Tensor] = {}
    if start is not None:
        last_weights[start[0]] = start[1]

    def callback(record: StepRecord, traj: Trajectory) -> None:
        row = record.to_dict()
        row["peak_memory_mb"] = _peak_memory_mb(device)
        rd.append_metrics(row)
        w = traj.weights(record.step)
        prev = last_weights.get(record.step - 1)
        if record.step % config["checkpoint_every"] == 0 or record.step == config["steps"]:
            rd.save_checkpoint(record.step, {"step": record.step, "t": record.t, "weights": w.cpu(),
                                             "prev_weights": None if prev is None else prev.cpu(),
                                             "config": config})
        last_weights.clear()
        last_weights[record.step] = w
        if record.step % config["frame_every"] == 0 or record.step == config["steps"]:
            _frame(rd, problem, record.step, record.t, traj.field(record.step), ylim, "INSR")
        bar.update(row)

    bar.start(0 if start is None else start[0])
    try:
        evolve(problem, dt=config["dt"], steps=config["steps"], integrator=config["integrator"], fit=fit,
               seed=config["seed"], device=device, dtype=dtype, callback=callback, start=start, keep="last")
    finally:
        bar.close()


def _run_grid(rd: RunDir, problem, config, device, dtype, resume, bar) -> None:
    # The grid baseline is cheap and deterministic: a resumed run recomputes it from the start.
    from ..classical.advection import GridAdvection1D

    rd.truncate_metrics(-1)
    opts = config["options"]
    cells = opts.get("grid_cells") or param_count(problem.default_field())
    solver = GridAdvection1D(problem, cells, scheme=opts.get("grid_scheme", "semi-lagrangian"),
                             dtype=dtype, device=device)
    bar.start(0)
    try:
        traj = solver.run(dt=config["dt"], steps=config["steps"])
        errors = traj.errors(problem)
        ylim = _ylim(problem)
        for step in range(config["steps"] + 1):
            row = {"step": step, "t": step * config["dt"], "loss": 0.0, "fit_iters": 0,
                   "seconds": traj.seconds[step - 1] if step > 0 else 0.0, "status": "success",
                   "error": errors[step], "memory_bytes": traj.memory_bytes,
                   "peak_memory_mb": _peak_memory_mb(device)}
            rd.append_metrics(row)
            if step % config["checkpoint_every"] == 0 or step == config["steps"]:
                rd.save_checkpoint(step, {"step": step, "values": traj.values[step].cpu(), "config": config})
            if step % config["frame_every"] == 0 or step == config["steps"]:
                _frame(rd, problem, step, step * config["dt"], traj.field(step), ylim,
                       f"grid ({cells} cells, {solver.scheme})")
            bar.update(row)
    finally:
        bar.close()


def _fluid_frame(rd: RunDir, problem, step: int, t: float, vort: np.ndarray, label: str) -> None:
    from .plots import plot_grid_field

    n = vort.shape[0]
    solid = ~problem.inside(problem.domain.grid(n, dtype=torch.float64)).reshape(n, n).numpy()
    plot_grid_field(rd.frame_path(step), vort, mask=solid, label="vorticity",
                    title=f"{problem.name}  {label}  step {step}  t = {t:.3f}")


def _run_fluid(rd: RunDir, problem, config, device, dtype, resume, bar) -> None:
    from ..pde.fluid import evolve_fluid, vorticity

    start = None
    if resume and rd.checkpoint_steps():
        step = rd.checkpoint_steps()[-1]
        ckpt = rd.load_checkpoint(step)
        start = (int(ckpt["step"]), ckpt["velocity"], ckpt["pressure"])
        rd.truncate_metrics(step)
    elif resume:
        rd.truncate_metrics(-1)
    fit = FitConfig(optimizer=config["fit"]["optimizer"], max_iters=config["fit"]["max_iters"],
                    rtol=config["fit"]["rtol"], ftol=config["fit"].get("ftol", FitConfig.ftol))
    frame_x = problem.domain.grid(128, dtype=dtype, device=device)

    def callback(record, traj) -> None:
        row = record.to_dict()
        row["peak_memory_mb"] = _peak_memory_mb(device)
        rd.append_metrics(row)
        wu, wp = traj.weights(record.step)
        if record.step % config["checkpoint_every"] == 0 or record.step == config["steps"]:
            rd.save_checkpoint(record.step, {"step": record.step, "t": record.t, "velocity": wu.cpu(),
                                             "pressure": wp.cpu(), "config": config})
        if record.step % config["frame_every"] == 0 or record.step == config["steps"]:
            vort = vorticity(traj.velocity(record.step), frame_x).reshape(128, 128).cpu().numpy()
            _fluid_frame(rd, problem, record.step, record.t, vort, "INSR")
        bar.update(row)

    bar.start(0 if start is None else start[0])
    try:
        evolve_fluid(problem, dt=config["dt"], steps=config["steps"], scheme=config["options"]["scheme"], fit=fit,
                     seed=config["seed"], device=device, dtype=dtype, callback=callback, start=start, keep="last",
                     divergence_weight=config["options"]["divergence_weight"])
    finally:
        bar.close()


def equal_memory_cells(weights: int) -> int:
    """Cells across a square MAC grid whose state (``u``, ``v``, pressure: ``3 n^2 + 2 n`` floats) is closest
    to ``weights`` floats."""
    n = int((-2 + math.sqrt(4 + 12 * weights)) / 6)
    return max(4, min((n, n + 1), key=lambda k: abs(3 * k * k + 2 * k - weights)))


def _run_fluid_grid(rd: RunDir, problem, config, device, dtype, resume, bar) -> None:
    # The grid baseline is cheap and deterministic: a resumed run recomputes it from the start.
    from ..classical.fluid import StableFluids2D
    from ..pde.fluid import flow_diagnostics
    from ..pde.problem import relative_l2

    rd.truncate_metrics(-1)
    weights = param_count(problem.default_field(2)) + param_count(problem.default_field(1))
    cells = config["options"]["grid_cells"] or equal_memory_cells(weights)
    sim = StableFluids2D(cells, initial=problem.initial, lo=problem.domain.lo, hi=problem.domain.hi,
                         obstacle=problem.obstacle, force=problem.force if problem.jet is not None else None,
                         dtype=dtype, device=device)
    eval_x = problem.eval_points(128, dtype=dtype, device=device)
    energy0 = flow_diagnostics(problem, problem.initial, eval_x, 0.0)["kinetic_energy"] or None
    area = problem.domain.volume * problem.fluid_fraction
    bar.start(0)
    try:
        for step in range(config["steps"] + 1):
            if step > 0:
                sim.step(config["dt"])
            t = step * config["dt"]
            values = sim.velocity(eval_x)
            exact = problem.exact(eval_x, t)
            energy = float(0.5 * values.double().square().sum(1).mean()) * area
            row = {"step": step, "t": t, "loss": 0.0,
                   "fit_iters": sim.pressure_iterations[-1] if step > 0 else 0,
                   "seconds": sim.step_seconds[-1] if step > 0 else 0.0, "status": "success",
                   "error": None if exact is None else relative_l2(values, exact),
                   "rms_divergence": sim.rms_divergence(), "kinetic_energy": energy,
                   "energy_ratio": None if energy0 is None else energy / energy0,
                   "memory_bytes": sim.memory_bytes, "peak_memory_mb": _peak_memory_mb(device)}
            rd.append_metrics(row)
            if step % config["checkpoint_every"] == 0 or step == config["steps"]:
                rd.save_checkpoint(step, {"step": step, "u": sim.u.cpu(), "v": sim.v.cpu(),
                                          "pressure": sim.pressure.cpu(), "config": config})
            if step % config["frame_every"] == 0 or step == config["steps"]:
                _fluid_frame(rd, problem, step, t, sim.vorticity().cpu().numpy(), f"grid {sim.nx}x{sim.ny}")
            bar.update(row)
    finally:
        bar.close()


def _run_sliced_flow(rd: RunDir, problem, config, device, dtype, resume, bar) -> None:
    """Sliced Wasserstein gradient flows of one source cloud, one per estimator, towards one target cloud."""
    from ..gallery.clouds import point_cloud
    from ..ot.flow import SlicedFlow, exact_wasserstein
    from .plots import plot_clouds_3d, plot_error_curve

    o = config["options"]
    gen = torch.Generator().manual_seed(config["seed"])
    half = o["separation"] / (2 * math.sqrt(3))
    source = point_cloud(o["source"], o["n_points"], generator=gen, dtype=dtype, center=(-half,) * 3).to(device)
    target = point_cloud(o["target"], o["n_points"], generator=gen, dtype=dtype, center=(half,) * 3).to(device)
    estimators = problem["estimators"]
    flow = SlicedFlow(source, target, estimators=estimators, step_size=config["dt"], n_projections=o["n_projections"],
                      p=o["p"], directions=o["directions"], generator=gen)
    start = 0
    if resume and rd.checkpoint_steps():
        start = rd.checkpoint_steps()[-1]
        flow.load_state_dict(rd.load_checkpoint(start)["flow"])
        rd.truncate_metrics(start)
    elif resume:
        rd.truncate_metrics(-1)
    lo = torch.minimum(source.min(0).values, target.min(0).values).cpu().numpy()
    hi = torch.maximum(source.max(0).values, target.max(0).values).cpu().numpy()
    target_np = target.cpu().numpy()

    def frame(step: int, w2: dict) -> None:
        clouds = {f"{name}: W2 {w2[name]:.3g}" if name in w2 else name: c.cpu().numpy()
                  for name, c in flow.clouds.items()}
        plot_clouds_3d(rd.frame_path(step), clouds, target_np, limits=(lo, hi),
                       title=f"sliced Wasserstein flows, L = {o['n_projections']}, step {step}")

    def record(step: int, losses: dict, seconds: float) -> None:
        evaluate = step % o["eval_every"] == 0 or step == config["steps"]
        w2 = {name: exact_wasserstein(c, target) for name, c in flow.clouds.items()} if evaluate else {}
        row = {"step": step, "t": step * config["dt"], "loss": losses.get(estimators[0]), "fit_iters": 0,
               "seconds": seconds, "status": "success", "error": None,
               **{f"sw_{name}": losses.get(name) for name in estimators},
               **{f"w2_{name}": w2.get(name) for name in estimators},
               "peak_memory_mb": _peak_memory_mb(device)}
        rd.append_metrics(row)
        if step % config["checkpoint_every"] == 0 or step == config["steps"]:
            rd.save_checkpoint(step, {"step": step, "flow": flow.state_dict(), "config": config})
        if step % config["frame_every"] == 0 or step == config["steps"]:
            frame(step, w2)
        bar.update(row)

    bar.start(start)
    try:
        if start == 0:
            record(0, {}, 0.0)
        for step in range(start + 1, config["steps"] + 1):
            t0 = time.perf_counter()
            losses = flow.step()
            if not all(math.isfinite(v) for v in losses.values()):
                raise StepDivergedError(f"step {step}: a sliced Wasserstein estimate is not finite ({losses}); lower "
                                        "--dt", Status.DIVERGED)
            record(step, losses, time.perf_counter() - t0)
    finally:
        bar.close()
        metrics = [m for m in rd.read_metrics() if any(m.get(f"w2_{e}") is not None for e in estimators)]
        if metrics:
            curves = {e: ([m["step"] for m in metrics if m.get(f"w2_{e}") is not None],
                          [m[f"w2_{e}"] for m in metrics if m.get(f"w2_{e}") is not None]) for e in estimators}
            plot_error_curve(rd.path / "w2.png", curves, xlabel="step", ylabel="exact W2 to the target",
                             title=f"{o['source']} -> {o['target']}, {o['n_points']} points, L = {o['n_projections']}")


"""Benchmark: INSR 2D fluid, Taylor-Green vortex (Chen et al., ICML 2023), neuralnumerics vs. the paper's code.

    python benchmarks/insr_fluid.py [--quick] [--reference PATH] [--threads N] [--steps N] [--ref-steps M]
        [--ref-timeout S] [--ref-max-iters K] [--n-points P] [--scheme fused|paper]
        [--divergence-weights W [W ...]] [--no-grid] [--grid-fine N] [--out-md PATH]

What it does, in one invocation (so the ratio is taken under the same machine load):

1. pins the thread count (``--threads``, default 1) here and in the reference's subprocess;
2. runs ours: ``evolve_fluid(taylor_green(n_points=...), dt=0.05, steps=--steps, scheme=--scheme, seed=0,
   divergence_weight=W)`` with the paper's network (SIREN, 3 hidden layers of 32, for the velocity and for
   the pressure), once per weight ``W`` of ``--divergence-weights`` (default ``0 0.1``: the paper's
   projection fit, and the one with a divergence penalty that trades time for a lower divergence);
3. runs the reference (``--reference``, a local checkout of github.com/honglin-c/INSR-PDE) through
   ``benchmarks/_insr_fluid_reference.py``, which copies and patches it (the patches are printed) and
   drives its ``Fluid2DModel`` with the ``scripts/fluid2Dtlgn.sh`` configuration for ``--ref-steps`` steps;
4. runs the grid baseline :class:`~neuralnumerics.classical.StableFluids2D` (plain CG pressure solves) at
   equal memory (cells ``n`` whose state ``(n+1) n + n (n+1) + n^2`` floats is closest to our velocity +
   pressure parameter count) and on a finer grid (``--grid-fine``, default 128), for as many steps of the
   same dt as either INSR run took;
5. prints a Markdown report and writes it to ``--out-md``: per-step seconds, error, RMS divergence and
   energy ratio of ours beside the reference at matching steps; the reference / ours ratio of mean
   seconds per step over the steps both ran (initial fit excluded); per-stage iterations and seconds;
   and the error of every solver after the same simulated time (the paper compares INSR and a grid at
   equal memory by their error after a fixed time).

Every diagnostic is taken on the cell centres of a 128 x 128 grid of [-1, 1]^2: relative L2 error
against the analytic (steady) Taylor-Green velocity, RMS divergence (autograd for the networks, the
discrete cell divergence for the grid), and kinetic energy over that of the analytic initial field.

``--quick`` (a few minutes): ours 2 steps with 4096 points, the reference 1 step with every training loop
capped at 50 Adam iterations (``--ref-max-iters 50``, the reference's own ``--max_n_iters``; a smoke
test of the harness, not the reference's configuration), and the report goes to a temporary file unless
``--out-md`` is given. The real run (the defaults) takes hours on one core: the reference's loops run
thousands of Adam iterations each.

The reference imports ``tensorboardX``, ``tqdm``, ``matplotlib``, ``scipy`` and ``PIL``; if the
interpreter cannot import one, the report says so and the rest of the benchmark still runs.
The exit status is 1 when our run fails (diverges, or a step's error is not finite).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402

from neuralnumerics.io.runner import equal_memory_cells  # noqa: E402

from _common import (REPO_ROOT, finite, fmt_bytes, fmt_error, fmt_seconds, log, machine_header,  # noqa: E402
                     markdown_table, pin_threads, write_markdown)

TITLE = "INSR 2D fluid (Taylor-Green vortex): neuralnumerics vs. the INSR reference implementation"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "insr_fluid.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "neuralnumerics-benchmarks" / "insr_fluid.quick.md"
DT = 0.05
SEED = 0
EVAL_RESOLUTION = 128
DTYPE = torch.float64



# --------------------------------------------------------------------------- #
# results
# --------------------------------------------------------------------------- #
@dataclass
class Step:
    """One solver call: the initial fit (step 0) or a time step, with its diagnostics and stages."""

    step: int
    t: float
    seconds: float | None
    error: float | None
    rms_divergence: float | None = None
    energy_ratio: float | None = None
    stages: dict[str, dict] = field(default_factory=dict)  # name -> {"seconds", "iters", "note"}

    @property
    def ok(self) -> bool:
        return self.error is not None and finite(self.error)


@dataclass
class Run:
    """One INSR run: its records by step and how it ended."""

    name: str
    requested: int = 0                 # time steps asked for (initial fit not counted)
    steps: dict[int, Step] = field(default_factory=dict)
    failure: str | None = None         # why the run stopped early

    @property
    def last(self) -> Step | None:
        return self.steps[max(self.steps)] if self.steps else None


@dataclass
class GridRun:
    label: str
    n: int
    floats: int
    memory_bytes: int
    steps: dict[int, Step] = field(default_factory=dict)
    seconds_per_step: float | None = None  # median of the steps' wall times
    failure: str | None = None


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def grid_floats(n: int) -> int:
    """Floats of a :class:`StableFluids2D` state on an ``n x n`` grid: u, v and the pressure."""
    return (n + 1) * n + n * (n + 1) + n * n


# --------------------------------------------------------------------------- #
# ours
# --------------------------------------------------------------------------- #
def run_ours(args, weight: float) -> tuple[Run, dict]:
    """``evolve_fluid`` on the Taylor-Green problem with ``divergence_weight=weight``; returns the run and
    facts about the networks."""
    from neuralnumerics._status import StepDivergedError
    from neuralnumerics.pde.fluid import evolve_fluid, taylor_green

    problem = taylor_green(n_points=args.n_points, hidden_features=32, hidden_layers=3)
    velocity = problem.default_field(2, dtype=DTYPE)
    pressure = problem.default_field(1, dtype=DTYPE)
    facts = {"problem": problem, "config": problem.config(), "velocity_params": n_params(velocity),
             "pressure_params": n_params(pressure), "itemsize": torch.empty((), dtype=DTYPE).element_size()}
    run = Run(name=f"ours ({args.scheme}, div weight {weight:g})", requested=args.steps)
    log(f"ours: Taylor-Green, SIREN 3x32 velocity ({facts['velocity_params']} weights) + pressure "
        f"({facts['pressure_params']}), {args.n_points} points, scheme {args.scheme}, divergence weight {weight:g}, "
        f"{args.steps} step(s)")

    def callback(rec, traj):
        stages = {name: {"seconds": s.get("seconds"), "iters": s.get("iters"), "note": f"status {s.get('status')}"}
                  for name, s in rec.stages.items()}
        run.steps[rec.step] = Step(rec.step, rec.t, rec.seconds, rec.error, rec.rms_divergence, rec.energy_ratio,
                                   stages)
        detail = ", ".join(f"{k} {v['iters']} it {v['seconds']:.1f} s" for k, v in stages.items()
                           if v["seconds"] is not None)
        log(f"  [{run.name}] step {rec.step:3d}  t={rec.t:5.2f}  {rec.seconds:7.1f} s  error={fmt_error(rec.error)}  "
            f"div={rec.rms_divergence:.2e}  E/E0={rec.energy_ratio:.4f}  ({detail})")

    try:
        evolve_fluid(problem, dt=DT, steps=args.steps, scheme=args.scheme, seed=SEED, dtype=DTYPE,
                     callback=callback, keep="last", eval_resolution=EVAL_RESOLUTION, divergence_weight=weight)
    except StepDivergedError as exc:
        run.failure = f"diverged: {exc}"
    except Exception as exc:  # report, do not crash: the table still shows what happened
        run.failure = f"{type(exc).__name__}: {exc}"
    if run.failure:
        log(f"  [{run.name}] {run.failure}")
    return run, facts


# --------------------------------------------------------------------------- #
# reference
# --------------------------------------------------------------------------- #
def run_reference(args) -> tuple[Run, object]:
    import _insr_fluid_reference as ref

    run = Run(name="reference (INSR-PDE)", requested=args.ref_steps)
    capped = f", every training loop capped at {args.ref_max_iters} iterations" if args.ref_max_iters else ""
    log(f"reference: {args.reference}, {args.ref_steps} step(s), {args.threads} thread(s){capped}")

    def on_record(r: dict) -> None:
        stages = {}
        for name, s in r.get("stages", {}).items():
            cap = args.ref_max_iters or 20000
            note = "iteration cap" if s.get("iters") == cap else "early stop"
            if s.get("lr") is not None:
                note += f" (final lr {s['lr']:.3g})"
            stages[name] = {"seconds": s.get("seconds"), "iters": s.get("iters"), "note": note}
        run.steps[r["step"]] = Step(r["step"], r["t"], r["seconds"], r.get("error"), r.get("rms_divergence"),
                                    r.get("energy_ratio"), stages)
        detail = ", ".join(f"{k} {v['iters']} it {v['seconds']:.1f} s" for k, v in stages.items())
        log(f"  [reference] step {r['step']:3d}  t={r['t']:5.2f}  {r['seconds']:7.1f} s  "
            f"error={fmt_error(r.get('error'))}  div={r.get('rms_divergence', float('nan')):.2e}  "
            f"E/E0={r.get('energy_ratio', float('nan')):.4f}  ({detail})")

    result = None
    try:
        result = ref.run_reference_fluid(args.reference, args.ref_steps, threads=args.threads,
                                         timeout=args.ref_timeout, max_iters=args.ref_max_iters,
                                         eval_resolution=EVAL_RESOLUTION, progress=on_record)
        run.failure = result.failure()
    except Exception as exc:
        run.failure = f"{type(exc).__name__}: {exc}"
    if run.failure:
        log(f"  [reference] {run.failure}")
    if result is not None:
        for p in result.patches:
            log(f"  [reference] patch: {p}")
    return run, result


# --------------------------------------------------------------------------- #
# grid baseline
# --------------------------------------------------------------------------- #
def run_grid(label: str, n: int, steps: int, problem) -> GridRun:
    """:class:`StableFluids2D` with plain CG for ``steps`` steps of ``DT``, diagnosed at every step."""
    from neuralnumerics.classical import StableFluids2D
    from neuralnumerics.pde import relative_l2
    from neuralnumerics.pde.fluid import taylor_green_velocity

    x = problem.eval_points(EVAL_RESOLUTION, dtype=DTYPE)
    exact = problem.exact(x, 0.0)
    energy0 = 0.5 * float(exact.square().sum(1).mean()) * problem.domain.volume
    out = GridRun(label, n, grid_floats(n), 0)

    def diagnose(g) -> None:
        u = g.velocity(x)
        energy = 0.5 * float(u.square().sum(1).mean()) * problem.domain.volume
        secs = g.step_seconds[-1] if g.step_seconds else None
        out.steps[g.steps] = Step(g.steps, g.t, secs, relative_l2(u, exact), g.rms_divergence(), energy / energy0)

    log(f"grid: {label}, {n}x{n} cells, {steps} step(s)")
    try:
        g = StableFluids2D(n, initial=taylor_green_velocity, solver="cg", dtype=DTYPE)
        out.memory_bytes = g.memory_bytes
        diagnose(g)
        g.run(steps, DT, callback=diagnose)
        if g.step_seconds:
            out.seconds_per_step = statistics.median(g.step_seconds)
    except Exception as exc:
        out.failure = f"{type(exc).__name__}: {exc}"
        log(f"  [grid] {out.failure}")
    return out


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #
def fmt_ratio(x: float | None) -> str | None:
    return None if x is None else (f"{x:.3g}×" if x < 1000 else f"{x:.0f}×")


def fmt_float(x: float | None, spec: str) -> str | None:
    return None if x is None else (format(x, spec) if finite(x) else str(float(x)))


def span(steps: list[int]) -> str:
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
    return ", ".join(map(str, steps))


def common_steps(a: Run, b: Run) -> list[int]:
    """Time steps (initial fit excluded) both runs completed with a finite error."""
    return sorted(k for k in a.steps if k >= 1 and k in b.steps and a.steps[k].ok and b.steps[k].ok)


def seconds_cell(s: Step | None) -> str | None:
    if s is None:
        return None
    return fmt_seconds(s.seconds) if s.ok else f"✗ (error {fmt_error(s.error)})"


def step_table(runs: list[Run]) -> str:
    """One row per step and run (runs in the given order within a step; a run that stopped earlier
    leaves no row)."""
    top = max(r.requested for r in runs)
    headers = ["step", "t", "run", "seconds", "error", "RMS div", "E/E0"]
    rows = []
    for k in range(top + 1):
        for r in runs:
            s = r.steps.get(k)
            if s is None:
                continue
            rows.append(["0 (initial fit)" if k == 0 else str(k), f"{k * DT:g}", r.name, seconds_cell(s),
                         fmt_error(s.error), fmt_float(s.rms_divergence, ".3e"), fmt_float(s.energy_ratio, ".4f")])
    return markdown_table(headers, rows, align=["l", "r", "l", "r", "r", "r", "r"])


def stage_table(ours: list[Run], ref: Run | None) -> str:
    """Per-stage iterations and seconds at the steps the reference ran (all of ours if there is no
    reference), and each stage's mean over all of a run's time steps."""
    headers = ["run", "step", "stage", "iterations", "seconds", "s / iteration", "stopped by"]
    rows = []
    runs = ours + ([ref] if ref is not None else [])
    for r in runs:
        shown = sorted(set(r.steps) & set(ref.steps)) if ref is not None else sorted(r.steps)
        for k in shown:
            for name, st in r.steps[k].stages.items():
                it, sec = st.get("iters"), st.get("seconds")
                rows.append([r.name, "0 (initial fit)" if k == 0 else str(k), name, it, fmt_seconds(sec),
                             fmt_seconds(sec / it) if it and sec is not None else None, st.get("note")])
        later = [s for k, s in sorted(r.steps.items()) if k >= 1]
        names = list(dict.fromkeys(n for s in later for n in s.stages))
        for name in names:
            vals = [s.stages[name] for s in later if name in s.stages and s.stages[name].get("seconds") is not None]
            if len(vals) < 2:
                continue
            it = statistics.fmean(v["iters"] for v in vals)
            sec = statistics.fmean(v["seconds"] for v in vals)
            rows.append([r.name, f"mean of {span([s.step for s in later])}", name, f"{it:.0f}", fmt_seconds(sec),
                         fmt_seconds(sec / it) if it else None, None])
    return markdown_table(headers, rows, align=["l", "l", "l", "r", "r", "r", "l"])


def grid_table(ours: list[Run], ref: Run | None, grids: list[GridRun], facts: dict) -> tuple[str, list[int]]:
    """Error (and divergence, energy) of every solver at the final steps of the INSR runs."""
    finals = sorted({r.last.step for r in ours + [ref] if r is not None and r.last is not None and r.last.step > 0})
    insr_floats = facts["velocity_params"] + facts["pressure_params"]
    headers = ["solver", "state", "memory"] + [f"error at t={k * DT:g}" for k in finals]
    if finals:
        headers += [f"RMS div at t={finals[-1] * DT:g}", f"E/E0 at t={finals[-1] * DT:g}"]
    headers.append("s/step")
    rows = []

    def row(name, state, memory, steps: dict[int, Step], per_step):
        last = steps.get(finals[-1]) if finals else None
        cells = [name, state, memory] + [fmt_error(steps[k].error) if k in steps else None for k in finals]
        if finals:
            cells += [fmt_float(last.rms_divergence, ".3e") if last else None,
                      fmt_float(last.energy_ratio, ".4f") if last else None]
        cells.append(per_step)
        rows.append(cells)

    for r, itemsize in [(o, facts["itemsize"]) for o in ours] + [(ref, 4)]:
        if r is None:
            continue
        secs = [s.seconds for k, s in r.steps.items() if k >= 1 and s.ok]
        row(f"INSR, {r.name}", f"{insr_floats} weights", fmt_bytes(insr_floats * itemsize), r.steps,
            fmt_seconds(statistics.fmean(secs)) + " (mean)" if secs else None)
    for g in grids:
        state = f"{g.n}x{g.n} cells, {g.floats} floats"
        per = fmt_seconds(g.seconds_per_step) + " (median)" if g.seconds_per_step is not None else g.failure
        row(f"grid, {g.label}", state, fmt_bytes(g.memory_bytes) if g.memory_bytes else None, g.steps, per)
    return markdown_table(headers, rows, align=["l", "r", "r"] + ["r"] * (len(headers) - 3)), finals


def ratio_lines(ref: Run, ours: Run) -> list[str]:
    """The reference / ours seconds per step over the steps both ran, and of the initial fit; the
    reference / ours RMS divergence at the last of those steps."""
    common = common_steps(ref, ours)
    if not common:
        return [f"- Reference / {ours.name}: no time step that both completed, so no ratio."]
    rs = [ref.steps[k].seconds for k in common]
    os_ = [ours.steps[k].seconds for k in common]
    lines = [f"- Reference / {ours.name}, mean seconds per step over steps {span(common)} (both ran; initial "
             f"fit excluded): {fmt_seconds(statistics.fmean(rs))} / {fmt_seconds(statistics.fmean(os_))}"
             f" = **{fmt_ratio(statistics.fmean(rs) / statistics.fmean(os_))}**."]
    k = common[-1]
    rd, od = ref.steps[k].rms_divergence, ours.steps[k].rms_divergence
    if rd is not None and od:
        lines.append(f"  RMS divergence at step {k}: {rd:.3e} / {od:.3e} = {fmt_ratio(rd / od)}; error "
                     f"{fmt_error(ref.steps[k].error)} / {fmt_error(ours.steps[k].error)}.")
    if 0 in ref.steps and 0 in ours.steps and ref.steps[0].seconds and ours.steps[0].seconds:
        r0, o0 = ref.steps[0].seconds, ours.steps[0].seconds
        lines.append(f"  Initial fit (step 0): {fmt_seconds(r0)} / {fmt_seconds(o0)} = {fmt_ratio(r0 / o0)}.")
    return lines


def build_report(args, threads, ours: list[Run], facts: dict, ref: Run | None, ref_result, grids: list[GridRun]) -> str:
    cfg = facts["config"]
    insr_floats = facts["velocity_params"] + facts["pressure_params"]
    extra = ["Device: CPU for all solvers (the harness patches the reference to the CPU)"]
    out = [machine_header(TITLE, threads=threads, extra=extra)]
    if args.quick:
        out += [f"> **This is a `--quick` run** (ours {args.steps} step(s) with {args.n_points} points"
                + (f", the reference {args.ref_steps} step(s)" if ref is not None else ", no reference")
                + "). It checks the harness; it is not the benchmark's result. Regenerate the real table "
                "with `python benchmarks/insr_fluid.py --reference PATH` on a quiet machine.", ""]
    if ref is not None and args.ref_max_iters:
        out += [f"> **The reference's training loops were capped at {args.ref_max_iters} Adam iterations** "
                "(`--ref-max-iters`, its own `--max_n_iters`). That is not the reference's configuration "
                "(up to 20000 per loop, stopped early only when its learning rate has decayed to 1e-8): its "
                "seconds per step and its errors below are those of a smoke test, and so is the ratio.", ""]

    out += ["## Setup", "",
            "- Problem (the paper's, `scripts/fluid2Dtlgn.sh`): inviscid incompressible flow in the closed box "
            "[-1, 1]^2, initial velocity the Taylor-Green vortex u = sin(π(x+1)) cos(π(y+1)) / π, "
            "v = -cos(π(x+1)) sin(π(y+1)) / π, a steady solution, so the exact velocity at every t is the "
            f"initial one. dt {DT}.",
            f"- Ours: `evolve_fluid(taylor_green(n_points={args.n_points}), dt={DT}, scheme=\"{args.scheme}\", "
            f"seed={SEED}, divergence_weight=W)` in float64, once per W in "
            f"{', '.join(f'{w:g}' for w in args.divergence_weights)} (W > 0 adds W · div u to the residuals of "
            f"the projection fit on the pressure's points): SIREN velocity ({facts['velocity_params']} weights) and pressure "
            f"({facts['pressure_params']} weights), 3 hidden layers of 32, {cfg['n_points']} fixed quasi-random "
            f"points per step ({cfg['wall_points']} per wall); pressure by Levenberg-Marquardt, velocity by "
            "L-BFGS (see `neuralnumerics.pde.fluid`). Seconds per step are the fits' wall time "
            "(`FluidStepRecord.seconds`, diagnostics excluded).",
            "- Reference: the authors' code (github.com/honglin-c/INSR-PDE, `scripts/fluid2Dtlgn.sh`: 3 hidden "
            "layers of 32, 128^2 = 16384 fresh random points at every iteration, dt 0.05) in float32, driven step "
            "by step by `benchmarks/_insr_fluid_reference.py`. Each step is three Adam loops (advection, pressure, "
            "projection; lr 1e-4, reduced 10× after 500 iterations without a new best loss, stopped when it "
            "reaches 1e-8 or after 20000 iterations). Its seconds per step are the wall time of `model.step()` "
            "as written, including its tensorboard logging, figures every 1000 iterations and checkpoint write "
            "(`main.py`'s per-step `write_output` is not called).",
            f"- Diagnostics on the cell centres of a {EVAL_RESOLUTION}x{EVAL_RESOLUTION} grid: relative L2 error "
            "of the velocity against the analytic one, RMS divergence (networks: autograd; grid: its discrete "
            "cell divergence), kinetic energy 0.5·mean|u|²·4 over that of the analytic field (1/π²).",
            ""]
    if ref is not None:
        patches = ref_result.patches if ref_result is not None else []
        out += ["Patches applied to a scratch copy of the reference (the checkout itself is not modified):", ""]
        out += [f"- {p}" for p in patches] or ["- none (the run did not get that far)"]
        out.append("")

    out += ["## Seconds and diagnostics per step", "",
            f"Ours: {args.steps} step(s)"
            + "".join(f" ({o.name} stopped: {o.failure})" for o in ours if o.failure)
            + ("; reference: " + f"{ref.requested} step(s)" + (f" — stopped: {ref.failure}" if ref.failure else "")
               if ref is not None else "; no reference run (pass `--reference PATH`)") + ".", "",
            step_table(ours + ([ref] if ref is not None else []))]

    if ref is not None:
        lines = []
        for o in ours:
            lines += ratio_lines(ref, o)
        if args.n_points != 128 ** 2:
            lines.append(f"- Ours used {args.n_points} points per step, the reference 16384 per iteration.")
        if ref_result is not None and ref_result.wall_seconds is not None:
            lines.append(f"- Reference subprocess wall time, start-up and evaluations included: "
                         f"{fmt_seconds(ref_result.wall_seconds)}.")
        out += lines + [""]

    out += ["## Per stage", "",
            "Iterations and wall time of each fit. Ours: `initial` (Adam warm-up then L-BFGS), `pressure` "
            "(Levenberg-Marquardt steps) and `projection` (L-BFGS iterations); the `paper` scheme adds "
            "`advection`; \"stopped by\" is the fit's status. Reference: one Adam loop per stage (`initialize`, "
            "`advect`, `pressure`, `projection`); \"stopped by\" says whether it ended by its early stop (learning "
            "rate decayed to 1e-8, after at least four plateaus of 500 iterations) or at the iteration cap.", "",
            stage_table(ours, ref)]

    if grids:
        table, finals = grid_table(ours, ref, grids, facts)
        out += ["## Grid baseline at equal memory", "",
                f"`StableFluids2D` (MAC grid, RK2 semi-Lagrangian advection, plain CG pressure solve) in float64, "
                f"dt {DT}, run for as many steps as the longest INSR run. \"Equal memory\": the grid whose state "
                f"(n+1)·n + n·(n+1) + n² floats is closest to the INSR velocity + pressure weights ({insr_floats}); "
                "the finer grid shows where the grid's error goes with resolution. The errors are after the same "
                f"simulated time{'s' if len(finals) > 1 else ''}"
                + (" (the last step of each INSR run)" if finals else "")
                + "; the grid's velocity is interpolated bilinearly to the evaluation points.", "",
                table]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: ours 2 steps with 4096 points, the reference 1 step with its loops capped at "
                         "50 iterations; report to a temporary file")
    ap.add_argument("--reference", metavar="PATH", help="local checkout of github.com/honglin-c/INSR-PDE")
    ap.add_argument("--steps", type=int, default=None, help="our time steps (default 10; --quick 2)")
    ap.add_argument("--ref-steps", type=int, default=None, help="reference time steps (default 1: about an hour on one core)")
    ap.add_argument("--ref-timeout", type=float, default=None,
                    help="seconds before the reference is stopped (default none); completed steps are kept")
    ap.add_argument("--ref-max-iters", type=int, default=None,
                    help="cap every reference training loop at this many Adam iterations (smoke tests only; "
                         "default: the reference's own 20000; --quick 50)")
    ap.add_argument("--threads", type=int, default=1, help="threads for every solver (default 1)")
    ap.add_argument("--n-points", type=int, default=None,
                    help="our points per fit (default 16384 = the reference's 128^2; --quick 4096)")
    ap.add_argument("--scheme", choices=("fused", "paper"), default="fused", help="our scheme (default fused)")
    ap.add_argument("--divergence-weights", type=float, nargs="+", default=None, metavar="W",
                    help="run ours once per divergence_weight (default 0 0.1; --quick 0)")
    ap.add_argument("--no-grid", action="store_true", help="skip the grid baseline")
    ap.add_argument("--grid-fine", type=int, default=128, help="cells per axis of the finer grid (default 128)")
    ap.add_argument("--out-md", metavar="PATH", default=None,
                    help=f"where to write the report (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; "
                         f"--quick: {QUICK_OUT})")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 10
    if args.ref_steps is None:
        args.ref_steps = 1
    if args.divergence_weights is None:
        args.divergence_weights = [0.0] if args.quick else [0.0, 0.1]
    if any(not (w >= 0 and w < float("inf")) for w in args.divergence_weights):
        ap.error(f"--divergence-weights must be non-negative numbers, got {args.divergence_weights}")
    if args.n_points is None:
        args.n_points = 4096 if args.quick else 128 ** 2
    if args.ref_max_iters is None and args.quick:
        args.ref_max_iters = 50
    if args.steps < 0 or args.ref_steps < 0:
        ap.error("--steps and --ref-steps must be non-negative")
    if args.ref_max_iters is not None and args.ref_max_iters < 1:
        ap.error("--ref-max-iters must be positive")
    if args.n_points < 16:
        ap.error("--n-points must be at least 16")
    if args.grid_fine < 4:
        ap.error("--grid-fine must be at least 4")
    if args.reference and not Path(args.reference).is_dir():
        ap.error(f"--reference: {args.reference} is not a directory")
    args.out_md = Path(args.out_md) if args.out_md else (QUICK_OUT if args.quick else DEFAULT_OUT)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = pin_threads(args.threads)
    log(f"threads: {threads['intra_op']} intra-op, {threads['interop']} inter-op (reference subprocess: "
        f"{args.threads}); torch {torch.__version__}")

    ours: list[Run] = []
    for weight in args.divergence_weights:
        t0 = time.perf_counter()
        run, facts = run_ours(args, weight)
        ours.append(run)
        log(f"{run.name} done in {time.perf_counter() - t0:.0f} s")
    ref, ref_result = (None, None)
    if args.reference:
        ref, ref_result = run_reference(args)
    grids: list[GridRun] = []
    if not args.no_grid:
        insr_floats = facts["velocity_params"] + facts["pressure_params"]
        n_eq = equal_memory_cells(insr_floats)
        top = max([o.last.step for o in ours if o.last] + ([ref.last.step] if ref is not None and ref.last else []) + [0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            grids.append(run_grid(f"equal memory (n={n_eq})", n_eq, top, facts["problem"]))
            if args.grid_fine != n_eq:
                grids.append(run_grid(f"fine (n={args.grid_fine})", args.grid_fine, top, facts["problem"]))

    report = build_report(args, threads, ours, facts, ref, ref_result, grids)
    print(report, flush=True)
    path = write_markdown(args.out_md, report)
    log(f"report written to {path}")
    failed = any(bool(o.failure) or any(not s.ok for s in o.steps.values()) or len(o.steps) < args.steps + 1
                 for o in ours)
    if failed:
        log("FAILED: our run did not complete every step with a finite error (see the table)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

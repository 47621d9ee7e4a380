"""Benchmark: INSR 1D advection (Chen et al., ICML 2023), neuralnumerics vs. the paper's own code.

    python benchmarks/insr_advection.py [--quick] [--reference PATH] [--device cpu|cuda] [--threads N]
        [--steps N] [--ref-steps N] [--ref-restarts K1,K2,..] [--ref-window N]
        [--integrators midpoint,gauss-legendre2] [--out-md PATH]

What it does, in one invocation (so the ratios are taken under the same machine load):

1. pins the thread count (``--threads``, default 1) here and in the reference's subprocess;
2. runs ours with the paper's configuration (:class:`~neuralnumerics.pde.Advection1D` defaults: SIREN
   2x20 = 901 weights, 5000 samples per fit, dt 0.05, Levenberg-Marquardt fits): one initial fit per
   dtype, shared by the integrators in ``--integrators`` that use it, then ``--steps`` steps each;
3. runs the reference (``--reference``, a local checkout of github.com/honglin-c/INSR-PDE) through
   ``benchmarks/_insr_reference.py``, which copies and patches it (the patches are printed): first
   ``--ref-steps`` steps from its own initial fit, then, since its full run takes seven to ten hours,
   ``--ref-window`` steps from each of ``--ref-restarts``, each window started from our midpoint field
   (same SIREN; weights copied into its network) at the step before;
4. runs the classical grid baseline (:class:`~neuralnumerics.classical.GridAdvection1D`) at equal
   memory (as many cells as our network has weights) and, by a doubling/bisection search, with the
   cells needed to match each of our runs' final error;
5. prints a Markdown report (per-step seconds and errors at matching steps, totals, the reference/ours
   ratio, the grid table) and writes it to ``--out-md``.

Correctness first: every step's relative L2 error against the exact solution (2000-point grid) must be
finite and at most ``--max-error``; a step that fails this shows its error instead of a time and is left
out of the ratios, and a run that diverges shows where and why. The exit status is 1 when one of our
runs fails the check (the reference's result does not change it).

``--quick`` (a couple of minutes without the reference): 10 steps, reference 1 step, and the report
goes to a temporary file unless ``--out-md`` is given, so the real table is never overwritten by it.
"""

from __future__ import annotations

import argparse
import math
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

from _common import (REPO_ROOT, finite, fmt_bytes, fmt_error, fmt_seconds, log, machine_header,  # noqa: E402
                     markdown_table, median_time, pin_threads, resolve_device, write_markdown)

TITLE = "INSR 1D advection: neuralnumerics vs. the INSR reference implementation"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "insr_advection.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "neuralnumerics-benchmarks" / "insr_advection.quick.md"
TABLE_STEPS = (1, 2, 5, 10, 20, 60, 120, 240)
DT = 0.05
SEED = 0



# --------------------------------------------------------------------------- #
# results
# --------------------------------------------------------------------------- #
@dataclass
class Step:
    step: int
    t: float
    seconds: float
    error: float | None
    iters: int | None = None


@dataclass
class Run:
    """One solver run: its initial fit (``init``), its steps 1..n, and how it ended."""

    name: str
    init: Step | None = None
    steps: list[Step] = field(default_factory=list)
    requested: int = 0
    wall_seconds: float | None = None  # stepping only (initial fit excluded), including per-step evaluation
    failure: str | None = None         # why the run stopped early (divergence, exception, timeout)
    notes: list[str] = field(default_factory=list)
    restarted: set[int] = field(default_factory=set)  # reference steps run from our weights (--ref-restarts)

    def by_step(self) -> dict[int, Step]:
        out = {s.step: s for s in self.steps}
        if self.init is not None:
            out[0] = self.init
        return out

    @property
    def last(self) -> Step | None:
        return self.steps[-1] if self.steps else self.init


def is_ok(s: Step | None, max_error: float) -> bool:
    return s is not None and s.error is not None and finite(s.error) and s.error <= max_error


# --------------------------------------------------------------------------- #
# ours
# --------------------------------------------------------------------------- #
def run_ours(integrators: list[str], steps: int, *, device: torch.device, dtype: str) -> tuple[list[Run], dict]:
    """The shared initial fit, then ``steps`` steps per integrator. Returns the runs and network facts."""
    from neuralnumerics._status import StepDivergedError
    from neuralnumerics.pde import Advection1D, FitConfig, evolve

    problem = Advection1D()
    fit = FitConfig(optimizer="lm")
    probe = problem.default_field(dtype=getattr(torch, dtype))
    n_weights = sum(p.numel() for p in probe.parameters())
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    facts = {"problem": problem, "weights": n_weights, "itemsize": itemsize, "config": problem.config(),
             "fit": fit}

    def progress(tag):
        def cb(rec, traj):
            log(f"  [ours {tag}] step {rec.step:4d}  t={rec.t:6.2f}  error={fmt_error(rec.error)}  "
                f"iters={rec.fit_iters:3d}  {rec.seconds:7.3f} s")
        return cb

    def to_step(rec) -> Step:
        return Step(rec.step, rec.t, rec.seconds, rec.error, rec.fit_iters)

    inits: dict[str, tuple[Step | None, torch.Tensor | None, str | None]] = {}

    def initial_fit(run_dtype: str):
        """The initial fit in ``run_dtype``, computed once and shared by the integrators using that dtype."""
        if run_dtype not in inits:
            log(f"ours: initial fit (SIREN {problem.hidden_layers}x{problem.hidden_features}, {n_weights} "
                f"weights, {problem.n_points} samples, {run_dtype}, {device})")
            try:
                traj0 = evolve(problem, dt=DT, steps=0, fit=fit, seed=SEED, device=device, dtype=run_dtype,
                               callback=progress(f"initial fit {run_dtype}"))
                inits[run_dtype] = (to_step(traj0.records[0]), traj0.weights(0), None)
            except Exception as exc:  # report, do not crash: the table still shows what happened
                failure = f"initial fit failed: {type(exc).__name__}: {exc}"
                log("  " + failure)
                inits[run_dtype] = (None, None, failure)
        return inits[run_dtype]

    runs = []
    for entry in integrators:
        name, _, run_dtype = entry.partition(":")
        run_dtype = run_dtype or dtype
        init, w0, init_failure = initial_fit(run_dtype)
        run = Run(name=f"ours, {name}" + (f" ({run_dtype})" if run_dtype != dtype else ""), init=init,
                  requested=steps)
        runs.append(run)
        if w0 is None:
            run.failure = init_failure
            continue
        t0 = time.perf_counter()
        try:
            traj = evolve(problem, dt=DT, steps=steps, integrator=name, fit=fit, seed=SEED, device=device,
                          dtype=run_dtype, start=(0, w0), keep="all", callback=progress(entry))
            run.steps = [to_step(r) for r in traj.records]
            if name == "midpoint" and "midpoint" not in facts:  # the reference's restarts start from these
                facts["midpoint"] = traj
        except StepDivergedError as exc:
            run.steps = [to_step(r) for r in getattr(exc.result, "records", [])]
            run.failure = f"diverged: {exc}"
            log(f"  [ours {name}] {run.failure}")
        except Exception as exc:
            run.failure = f"{type(exc).__name__}: {exc}"
            log(f"  [ours {name}] failed: {run.failure}")
        run.wall_seconds = time.perf_counter() - t0
    return runs, facts


# --------------------------------------------------------------------------- #
# reference
# --------------------------------------------------------------------------- #
def reference_steps(recs: list[dict], caught, tag: str) -> list[Step]:
    """The reference driver's records as :class:`Step` objects, each logged (with any warnings first)."""
    for w in caught:
        log(f"  [{tag}] warning: {w.message}")
    steps = []
    for r in recs:
        s = Step(r["step"], r["t"], r["seconds"], r["error"], r.get("iters"))
        log(f"  [{tag}] step {s.step:4d}  t={s.t:6.2f}  error={s.error:.3e}  iters={s.iters}  {s.seconds:7.2f} s")
        steps.append(s)
    return steps


def run_reference(path: str, steps: int, threads: int, timeout: float | None) -> tuple[Run, list[str]]:
    import _insr_reference as ref

    run = Run(name="reference (INSR-PDE)", requested=steps)
    log(f"reference: {path}, {steps} step(s), {threads} thread(s) (initial fit ~80 s, 100-200 s per step "
        "on one core)")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            recs = ref.run_reference_advection(path, steps=steps, threads=threads, timeout=timeout)
        except Exception as exc:
            recs = []
            run.failure = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    patches = list(ref.last_patches)
    info = ref.last_run_info
    for s in reference_steps(recs, caught, "reference"):
        if s.step == 0:
            run.init = s
        else:
            run.steps.append(s)
    run.wall_seconds = wall - (run.init.seconds if run.init else 0.0)
    if run.failure is None and (info.get("timed_out") or info.get("returncode", 0) != 0):
        how = "timed out" if info.get("timed_out") else f"exited with code {info.get('returncode')}"
        tail = [ln for ln in str(info.get("log_tail", "")).splitlines() if ln.strip()][-3:]
        run.failure = f"driver {how} after {len(recs)} of {steps + 1} call(s)" + (
            f"; log: {' / '.join(tail)}" if tail else "")
    if run.failure:
        log(f"  [reference] {run.failure}")
    return run, patches


def reference_state(facts: dict, step: int) -> dict[str, list]:
    """Our midpoint weights at ``step`` as a state dict of the reference's MLP (same SIREN, float32).

    Our ``SIREN.layers[i]`` is the reference's ``net[2 i]`` (the sines sit between the linear layers);
    both compute sin(30 (W h + b)) in every hidden layer and a linear output.
    """
    from neuralnumerics.fields import unflatten_params

    traj = facts["midpoint"]
    probe = facts["problem"].default_field(dtype=torch.float64)
    params = unflatten_params(probe, traj.weights(step).to(torch.float64))
    state = {}
    for name, value in params.items():
        _, i, kind = name.split(".")
        state[f"net.{2 * int(i)}.{kind}"] = value.detach().cpu().tolist()
    return state


def run_reference_restarts(path: str, starts: list[int], window: int, facts: dict, threads: int,
                           timeout: float | None, ref: Run) -> None:
    """The reference's own step fits at ``start ... start + window - 1``, from our midpoint field at ``start - 1``.

    Adds the steps to ``ref`` (marked in ``ref.restarted``); steps it already has are not repeated.
    """
    import _insr_reference as ref_mod

    if "midpoint" not in facts:
        log("reference restarts: skipped (they start from our midpoint run, which did not complete)")
        return
    have = set(ref.by_step())
    plan = [(k, window, reference_state(facts, k - 1)) for k in starts
            if k >= 1 and k - 1 < len(facts["midpoint"].records) and k not in have]
    if not plan:
        return
    log(f"reference restarts: {window} step(s) from our midpoint field at steps {[k - 1 for k, _, _ in plan]}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            recs = ref_mod.run_reference_advection(path, steps=0, threads=threads, timeout=timeout, restarts=plan)
        except Exception as exc:
            recs = []
            log(f"  [reference restarts] failed: {type(exc).__name__}: {exc}")
    for s in reference_steps(recs, caught, "reference restart"):
        if s.step not in have:
            ref.steps.append(s)
            ref.restarted.add(s.step)
    ref.steps.sort(key=lambda s: s.step)


# --------------------------------------------------------------------------- #
# grid baseline
# --------------------------------------------------------------------------- #
@dataclass
class GridResult:
    label: str
    scheme: str
    n_cells: int
    memory_bytes: int
    error: float | None
    seconds: float | None  # median total seconds of the run (all steps)
    steps: int
    note: str = ""


def grid_final_error(problem, scheme: str, n: int, steps: int, dtype: torch.dtype) -> tuple[float, object]:
    from neuralnumerics.classical import GridAdvection1D
    from neuralnumerics.pde import relative_l2

    g = GridAdvection1D(problem, n, scheme=scheme, dtype=dtype)
    traj = g.run(dt=DT, steps=steps)
    x = problem.eval_points(dtype=dtype)
    return relative_l2(traj.field(steps)(x), problem.exact(x, steps * DT)), g


def time_grid(problem, scheme: str, n: int, steps: int, dtype: torch.dtype, label: str, note: str = "") -> GridResult:
    from neuralnumerics.classical import GridAdvection1D
    from neuralnumerics.pde import relative_l2

    g = GridAdvection1D(problem, n, scheme=scheme, dtype=dtype)
    try:
        med, _, traj = median_time(lambda: g.run(dt=DT, steps=steps), repeats=3, warmup=1)
        x = problem.eval_points(dtype=dtype)
        err = relative_l2(traj.field(steps)(x), problem.exact(x, steps * DT))
    except Exception as exc:
        return GridResult(label, scheme, n, g.memory_bytes, None, None, steps, f"failed: {exc}")
    return GridResult(label, scheme, n, g.memory_bytes, err, med, steps, note)


def cells_to_match(problem, scheme: str, target: float, steps: int, dtype: torch.dtype,
                   cache: dict, n_start: int = 64, n_max: int = 1 << 17) -> tuple[int | None, str]:
    """Fewest cells (doubling, then bisection to 2 %) whose final error is at most ``target``.

    Stops early, returning ``None`` and why, when the error stops falling with the cell count (the time
    step's error dominates) or ``n_max`` cells do not suffice.
    """
    def err(n: int) -> float:
        if (scheme, n) not in cache:
            cache[(scheme, n)] = grid_final_error(problem, scheme, n, steps, dtype)[0]
        return cache[(scheme, n)]

    n, prev, stalls = n_start, math.inf, 0
    while err(n) > target:
        e = err(n)
        stalls = stalls + 1 if e > 0.8 * prev else 0
        if stalls >= 2:
            return None, (f"not reached: the error stalls near {e:.2e} from {n // 4} to {n} cells "
                          f"(the time-step error at dt={DT} dominates)")
        if n >= n_max:
            return None, f"not reached with {n} cells (error {e:.2e})"
        prev, n = e, n * 2
    if n == n_start:
        return n, ""
    lo, hi = n // 2, n
    while hi - lo > max(1, hi // 50):
        mid = (lo + hi) // 2
        if err(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, ""


def run_grid(facts: dict, ours: list[Run], steps: int, dtype: torch.dtype, max_error: float) -> list[GridResult]:
    problem = facts["problem"]
    n_eq = facts["weights"]
    results = []
    cache: dict = {}
    for scheme in ("semi-lagrangian", "crank-nicolson"):
        log(f"grid: {scheme}, {n_eq} cells (equal memory)")
        results.append(time_grid(problem, scheme, n_eq, steps, dtype, f"grid {scheme}, equal memory"))
        for run in ours:
            last = run.last
            if run.failure or last is None or last.step != steps or not is_ok(last, max_error):
                continue
            log(f"grid: {scheme}, searching the cells that match {run.name} (error {last.error:.3e})")
            n, why = cells_to_match(problem, scheme, last.error, steps, dtype, cache)
            label = f"grid {scheme}, matching {run.name.removeprefix('ours, ')}"
            if n is None:
                results.append(GridResult(label, scheme, 0, 0, None, None, steps, why))
            else:
                results.append(time_grid(problem, scheme, n, steps, dtype, label,
                                         f"target error {last.error:.2e}"))
    return results


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #
def time_cell(s: Step | None, run: Run, step: int, max_error: float) -> str | None:
    if s is None:
        if run.failure and step <= run.requested and (run.last is None or step > run.last.step):
            first_missing = (run.last.step + 1) if run.last is not None else 0
            return f"failed at step {first_missing}" if step == first_missing else "✗"
        return None
    if is_ok(s, max_error):
        return fmt_seconds(s.seconds)
    return f"✗ wrong (error {fmt_error(s.error)})"


def common_ratio(ref: Run, ours: Run, max_error: float) -> tuple[float | None, float | None, list[int]]:
    """(mean ratio, median ratio, steps) of reference/ours seconds per step over the steps both got right."""
    r, o = ref.by_step(), ours.by_step()
    common = sorted(k for k in r if k >= 1 and k in o and is_ok(r[k], max_error) and is_ok(o[k], max_error))
    if not common:
        return None, None, []
    rs = [r[k].seconds for k in common]
    os_ = [o[k].seconds for k in common]
    return (statistics.fmean(rs) / statistics.fmean(os_), statistics.median(rs) / statistics.median(os_), common)


def span(steps: list[int]) -> str:
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
    return ", ".join(map(str, steps))


def fmt_ratio(x: float | None) -> str | None:
    return None if x is None else (f"{x:.3g}×" if x < 1000 else f"{x:.0f}×")


def build_report(args, threads, runs: list[Run], ref: Run | None, patches: list[str], grids: list[GridResult],
                 facts: dict, device: torch.device) -> tuple[str, bool]:
    max_error = args.max_error
    cfg = facts["config"]
    extra = [f"Device: ours {device}; reference cpu (the harness patches it to the CPU); grid baseline cpu"]
    out = [machine_header(TITLE, threads=threads, extra=extra)]
    if args.quick:
        out += [f"> **This is a `--quick` run** (reduced: {args.steps} steps of ours"
                + (f", {args.ref_steps} of the reference" if ref is not None else ", no reference")
                + "). It is not the benchmark's result: regenerate the real table with "
                "`python benchmarks/insr_advection.py --reference PATH` on a quiet machine.", ""]

    out += ["## Setup", "",
            f"- Problem (the paper's, `Advection1D()` defaults): u_t + {cfg['velocity']} u_x = 0 on "
            f"[-{cfg['length'] / 2:g}, {cfg['length'] / 2:g}], u = 0 at both ends, initial Gaussian pulse "
            f"(centre -1.5, width 0.1); SIREN {cfg['hidden_layers']}x{cfg['hidden_features']} "
            f"({facts['weights']} weights), {cfg['n_points']} samples per fit, dt {DT}, {args.dtype}.",
            f"- Ours: `evolve(Advection1D(), dt={DT}, integrator=..., fit=FitConfig(optimizer=\"lm\"), "
            f"seed={SEED}, dtype=...)`, in {args.dtype} unless the run's name says otherwise; one initial "
            "fit (step 0) per dtype, shared by the integrators using it (`start=(0, w0)`), so each "
            "integrator's total is that fit plus its own steps. Seconds per step "
            "are the fit's wall time (`StepRecord.seconds`).",
            "- Reference: the authors' code (github.com/honglin-c/INSR-PDE, `scripts/advect1D.sh` settings: "
            "Adam, up to 20000 iterations per fit) driven step by step by `benchmarks/_insr_reference.py`; "
            "its seconds per step are the wall time of `model.initialize()` / `model.step()` as written, "
            "including the reference's own tensorboard logging, figures and checkpoint writes. It integrates "
            "with the midpoint rule, so `midpoint` is the like-for-like comparison.",
            f"- Error: relative L2 against the exact solution on a uniform 2000-point grid. Correctness "
            f"check: finite and at most {max_error:g}; a step that fails shows its error instead of a time "
            "and is left out of the ratios.",
            ""]
    if ref is not None:
        out += ["Patches applied to a scratch copy of the reference (the checkout itself is not modified):", ""]
        out += [f"- {p}" for p in patches] or ["- none"]
        out.append("")

    # per-step table
    all_runs = runs + ([ref] if ref is not None else [])
    top = max([r.requested for r in all_runs] + [0])
    rows_steps = [0] + [k for k in TABLE_STEPS if k <= top]
    for r in all_runs:  # always show each run's last requested step, and the reference's restarts
        if r.requested and r.requested not in rows_steps:
            rows_steps.append(r.requested)
        rows_steps += [k for k in r.restarted if k <= top or k <= args.steps]
    rows_steps = sorted(set(rows_steps))
    headers = ["step", "t"]
    for r in all_runs:
        short = r.name.removeprefix("ours, ") if r is not ref else "reference"
        headers += [f"{short} s", f"{short} error"]
    rows = []
    for k in rows_steps:
        row = ["0 (initial fit)" if k == 0 else str(k), f"{k * DT:g}"]
        for r in all_runs:
            s = r.by_step().get(k)
            cell = time_cell(s, r, k, max_error)
            if k in r.restarted and cell is not None:
                cell += " ↺"
            row += [cell, fmt_error(s.error) if s else None]
        rows.append(row)
    out += ["## Seconds and error per step", "",
            ("Ours: " + ", ".join(r.name.removeprefix("ours, ") for r in runs)
             + (f"; reference: {ref.requested} step(s) from its own initial fit" if ref is not None else
                "; no reference run (pass `--reference PATH`)")
             + (f", and its own fits at steps {span(sorted(ref.restarted))} (marked ↺), each window started "
                "from our midpoint field at the step before (`--ref-restarts`): the reference's cost per step "
                "later in the run, where its own run would take hours to arrive." if ref is not None
                and ref.restarted else ".")), "",
            markdown_table(headers, rows)]

    # summary
    sheaders = ["run", "initial fit", "steps done", "mean s/step", "median s/step", "total", "final error",
                "reference / ours (mean s/step)", "reference / ours (median s/step)", "common steps"]
    srows = []
    any_fail = False
    for r in all_runs:
        ok_steps = [s for s in r.steps if is_ok(s, max_error)]
        bad = len(r.steps) - len(ok_steps)
        if r is not ref and (r.failure or bad or not is_ok(r.init, max_error) or len(r.steps) < r.requested):
            any_fail = True
        secs = [s.seconds for s in ok_steps]
        total = None
        if r.init is not None and r.wall_seconds is not None:
            total = r.init.seconds + r.wall_seconds
        own = [s for s in r.steps if s.step not in r.restarted]
        final = own[-1] if own else r.init
        done = f"{len(own)}/{r.requested}" + (f" ({bad} wrong)" if bad else "")
        if r.restarted:
            done += f" + {len(r.restarted)} restarted"
        if r.failure:
            done += f" — {r.failure}"
        init_cell = (fmt_seconds(r.init.seconds) if is_ok(r.init, max_error)
                     else (f"✗ wrong (error {fmt_error(r.init.error)})" if r.init else None))
        mean_r = med_r = None
        common: list[int] = []
        if ref is not None and r is not ref:
            mean_r, med_r, common = common_ratio(ref, r, max_error)
        srows.append([r.name, init_cell, done,
                      fmt_seconds(statistics.fmean(secs)) if secs else None,
                      fmt_seconds(statistics.median(secs)) if secs else None,
                      fmt_seconds(total) if total is not None and not r.failure and not bad else
                      (f"({fmt_seconds(total)}, incomplete)" if total is not None else None),
                      fmt_error(final.error) if final else None,
                      fmt_ratio(mean_r), fmt_ratio(med_r), span(common) if ref is not None and r is not ref else None])
    out += ["## Totals and ratio", "",
            "Total = initial fit + wall time of the steps (for ours, including the per-step error evaluation). "
            "The ratios compare seconds per step over the steps both solved correctly (step 0, the initial "
            "fit, excluded).", "",
            markdown_table(sheaders, srows)]
    if ref is not None and ref.restarted:
        lines = []
        for r in runs:
            if r.name != "ours, midpoint":
                continue
            for label, keep in (("its own run", lambda k: k not in ref.restarted),
                                ("the restarts", lambda k: k in ref.restarted)):
                sub = Run(ref.name, steps=[s for s in ref.steps if keep(s.step)])
                mean_r, med_r, common = common_ratio(sub, r, max_error)
                if common:
                    lines.append(f"- Reference / ours (midpoint) over {label}, steps {span(common)}: "
                                 f"{fmt_ratio(mean_r)} (mean s/step), {fmt_ratio(med_r)} (median).")
        out += lines + ([""] if lines else [])
    if ref is not None and ref.init is not None:
        lines = []
        for r in runs:
            if r.init is not None and is_ok(r.init, max_error) and is_ok(ref.init, max_error):
                lines.append(f"Initial fit, reference / ours: {fmt_ratio(ref.init.seconds / r.init.seconds)}.")
                break
        out += lines + ([""] if lines else [])
    if args.quick and ref is not None:
        out += [f"Note: `--quick` runs the reference for only {ref.requested} step(s), so the ratio rests on "
                "that many samples; with other jobs on the machine the seconds are rough.", ""]

    # grid table
    if grids:
        gheaders = ["solver", "state", "memory", f"error at t={args.steps * DT:g}", "total (median of 3)",
                    "s/step", "note"]
        grows = []
        mem = facts["weights"] * facts["itemsize"]
        for r in runs:
            if r.last is None or r.last.step != args.steps:
                continue
            secs = [s.seconds for s in r.steps]
            ok = is_ok(r.last, max_error)
            grows.append([f"INSR {r.name.removeprefix('ours, ')} (ours)", f"{facts['weights']} weights",
                          fmt_bytes(mem), fmt_error(r.last.error),
                          fmt_seconds(r.wall_seconds) if ok else "✗ wrong",
                          fmt_seconds(statistics.fmean(secs)) if ok and secs else None,
                          "steps only, initial fit excluded"])
        for g in grids:
            ok = g.error is not None and finite(g.error)
            grows.append([g.label, f"{g.n_cells} cells" if g.n_cells else None,
                          fmt_bytes(g.memory_bytes) if g.n_cells else None, fmt_error(g.error),
                          fmt_seconds(g.seconds) if ok else None,
                          fmt_seconds(g.seconds / g.steps) if ok and g.steps else None, g.note or None])
        out += ["## Grid baseline", "",
                f"`GridAdvection1D` in {args.dtype} on the CPU, same dt and final time. \"Equal memory\": as "
                f"many cells as the SIREN has weights ({facts['weights']} x {facts['itemsize']} bytes). "
                "\"Matching\": the fewest cells (doubling, then bisection to 2 %) whose final error is at most "
                "that run's. The grid's error includes linear interpolation to the 2000 evaluation points.", "",
                markdown_table(gheaders, grows, align=["l", "r", "r", "r", "r", "r", "l"])]
    return "\n".join(out).rstrip() + "\n", any_fail


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced run (10 steps, reference 1 step), report to a temp file")
    ap.add_argument("--reference", metavar="PATH", help="local checkout of github.com/honglin-c/INSR-PDE")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of our runs (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="threads for ours and the reference (default 1)")
    ap.add_argument("--steps", type=int, default=None, help="our time steps (default 240 = t 12; --quick 10)")
    ap.add_argument("--ref-steps", type=int, default=None, help="reference time steps (default 10; --quick 1)")
    ap.add_argument("--ref-timeout", type=float, default=None, help="seconds before the reference is stopped")
    ap.add_argument("--ref-restarts", default=None, metavar="STEPS",
                    help="comma-separated steps k where the reference also runs --ref-window steps from our "
                         "midpoint field at k-1, to measure its cost late in the run (default 60,120,180,239; "
                         "--quick and '' none)")
    ap.add_argument("--ref-window", type=int, default=2, help="reference steps per restart (default 2)")
    ap.add_argument("--integrators", default="midpoint,gauss-legendre2",
                    help="comma-separated integrators of ours, each optionally NAME:DTYPE to override --dtype "
                         "(default midpoint,gauss-legendre2)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                    help="dtype of ours and the grid (default float64, the library's default: the fits "
                         "converge in fewer iterations than in float32, the reference's dtype)")
    ap.add_argument("--max-error", type=float, default=0.2,
                    help="largest relative L2 error counted as correct (default 0.2: a sanity bound that "
                         "catches divergence and broken fits; midpoint's time error alone reaches ~5e-2 at t 12)")
    ap.add_argument("--no-grid", action="store_true", help="skip the grid baseline")
    ap.add_argument("--out-md", metavar="PATH", default=None,
                    help=f"where to write the report (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; "
                         f"--quick: {QUICK_OUT})")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 10 if args.quick else 240
    if args.ref_steps is None:
        args.ref_steps = 1 if args.quick else 10
    if args.ref_restarts is None:
        args.ref_restarts = "" if args.quick else "60,120,180,239"
    try:
        args.ref_restarts = sorted({int(k) for k in args.ref_restarts.split(",") if k.strip()})
    except ValueError:
        ap.error(f"--ref-restarts: expected comma-separated step numbers, got {args.ref_restarts!r}")
    if any(k < 1 or k > args.steps for k in args.ref_restarts):
        ap.error(f"--ref-restarts: steps must lie in 1..{args.steps} (--steps)")
    if args.ref_window < 1:
        ap.error("--ref-window must be at least 1")
    if args.steps < 0 or args.ref_steps < 0:
        ap.error("--steps and --ref-steps must be non-negative")
    args.integrators = [s.strip() for s in args.integrators.split(",") if s.strip()]
    if not args.integrators:
        ap.error("--integrators: give at least one")
    from neuralnumerics.pde import INTEGRATORS
    unknown = [s for s in args.integrators if s.partition(":")[0] not in INTEGRATORS
               or s.partition(":")[2] not in ("", "float32", "float64")]
    if unknown:
        ap.error(f"--integrators: unknown {unknown}; choose from {sorted(INTEGRATORS)}, each optionally "
                 f"with :float32 or :float64")
    if args.reference and not Path(args.reference).is_dir():
        ap.error(f"--reference: {args.reference} is not a directory")
    if not (args.max_error > 0):
        ap.error("--max-error must be positive")
    args.out_md = Path(args.out_md) if args.out_md else (QUICK_OUT if args.quick else DEFAULT_OUT)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = pin_threads(args.threads)
    device = resolve_device(args.device)
    log(f"threads: {threads['intra_op']} intra-op, {threads['interop']} inter-op (reference subprocess: "
        f"{args.threads}); device {device}; torch {torch.__version__}")
    if args.quick and args.reference:
        log(f"--quick: the reference runs {args.ref_steps} step(s) only (its initial fit alone takes ~80 s)")

    runs, facts = run_ours(args.integrators, args.steps, device=device, dtype=args.dtype)
    grids = [] if args.no_grid else run_grid(facts, runs, args.steps, getattr(torch, args.dtype), args.max_error)
    ref, patches = (None, [])
    if args.reference:
        ref, patches = run_reference(args.reference, args.ref_steps, args.threads, args.ref_timeout)
        for p in patches:
            log(f"  [reference] patch: {p}")
        if args.ref_restarts:
            run_reference_restarts(args.reference, args.ref_restarts, args.ref_window, facts, args.threads,
                                   args.ref_timeout, ref)

    report, any_fail = build_report(args, threads, runs, ref, patches, grids, facts, device)
    print(report, flush=True)
    path = write_markdown(args.out_md, report)
    log(f"report written to {path}")
    if any_fail:
        log("FAILED: at least one of our runs did not pass the correctness check (see the table)")
    return 1 if any_fail else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: SKR (sorting + Krylov subspace recycling) on sequences of PDE systems vs. independent solves.

    python benchmarks/skr.py [--quick] [--threads N] [--device cpu|cuda] [--systems N] [--grid G]
        [--rtol R] [--m M] [--k K] [--families darcy,poisson,helmholtz,heat] [--out-md PATH]

For each PDE family of :mod:`neuralnumerics.gallery.pde_systems` (N systems on a G x G grid, drawn in
random order), every method solves the whole sequence to relative residual ``--rtol`` from a zero
initial guess, in one process, one after another:

- SKR (ours): :func:`~neuralnumerics.linalg.sequence.solve_sequence` with
  :class:`~neuralnumerics.linalg.recycling.GCRODR` (m, k) on the sorted sequence (sorting time included);
- recycling without sorting: the same on the given (random) order;
- ours, SPD families only: deflated CG (:class:`~neuralnumerics.linalg.recycling.RecycledCG`), sorted;
- independent GMRES(m): ``scipy.sparse.linalg.gmres`` (the paper's baseline);
- the strongest practical alternatives: a sparse LU per system (``scipy.sparse.linalg.splu``, also the
  reference solution), ``scipy.sparse.linalg.cg`` for SPD families, and PyAMG smoothed aggregation as a
  preconditioner of CG (SPD) or GMRES (Helmholtz) when ``pyamg`` is installed.

Correctness first: every solution's true relative residual must be at most ``2 rtol`` and its error
against the direct solution is printed; a method that fails on any system shows how many failed
instead of a time. Iterative solvers are capped at ``--max-iters`` iterations per system. Timing:
each method runs once on the first system untimed (warm-up), then the whole sequence is timed
``--repeats`` times (default 3) and the median reported; a method that failed is not repeated. Our
operators are built from the SciPy matrices inside the timed region.

``--quick`` (well under a minute): 8 systems on a 24 x 24 grid; the report goes to a temporary file
unless ``--out-md`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import numpy as np  # noqa: E402

from _common import (REPO_ROOT, fmt_error, fmt_seconds, log, machine_header, markdown_table, pin_threads,  # noqa: E402
                     resolve_device, write_markdown)

TITLE = "SKR (sorting + Krylov subspace recycling) on sequences of PDE systems vs. independent solves"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "skr.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "neuralnumerics-benchmarks" / "skr.quick.md"
SEED = 0
PAPER = ("Wang et al. (ICLR 2024) report SKR up to **13.9x** faster than GMRES (wall clock) on their Darcy, "
         "thermal, Poisson and Helmholtz sets: GCRO-DR(40, 20) against GMRES(40), both PETSc/HPDDM in C, "
         "over several preconditioners and tolerances 1e-1 ... 1e-8, about 100 systems per set of up to ~10^5 "
         "unknowns (settings from the authors' scripts, github.com/wanghong1700/NO-DataGen-SKR). The paper "
         "does not compare against sparse direct solvers or multigrid.")



def log_progress(msg: str, t0: float) -> None:
    log(f"  [{time.perf_counter() - t0:6.1f} s] {msg}")


@dataclass
class Outcome:
    method: str
    seconds: float | None
    iterations: int | None
    failures: int
    max_residual: float
    max_error: float
    note: str = ""


# --------------------------------------------------------------------------- #
# families
# --------------------------------------------------------------------------- #
def make_family(name: str, n_systems: int, grid: int):
    from neuralnumerics.gallery import darcy_flow, heat, helmholtz, poisson

    makers = {
        "darcy": lambda: darcy_flow(n_systems, grid, seed=SEED),
        "poisson": lambda: poisson(n_systems, grid, seed=SEED),
        "helmholtz": lambda: helmholtz(n_systems, grid, seed=SEED),
        "heat": lambda: heat(n_systems, grid, dt=0.05, seed=SEED),
    }
    return makers[name]()


DESCRIPTIONS = {
    "darcy": "Darcy flow, log-normal permeability exp(GRF(2.5, 7)), f = 1 (SPD)",
    "poisson": "Poisson, random source, coefficient exp(0.1 GRF) (SPD)",
    "helmholtz": "Helmholtz -div(a grad u) - k^2 u = 1, a = exp(GRF), k ~ U(4, 8) (symmetric indefinite)",
    "heat": "heat, one implicit-Euler step (dt 0.05) at a random time of a moving conductivity (SPD)",
}


# --------------------------------------------------------------------------- #
# methods: each returns (solutions as numpy arrays, total iterations or None, note)
# --------------------------------------------------------------------------- #
def scipy_gmres(fam, args):
    import scipy.sparse.linalg as spla

    xs, total = [], 0
    for A, b in fam.systems:
        count = [0]
        x, _ = spla.gmres(A, b.numpy(), rtol=args.rtol, atol=0.0, restart=args.m,
                             maxiter=-(-args.max_iters // args.m), callback_type="pr_norm",
                             callback=lambda _: count.__setitem__(0, count[0] + 1))
        xs.append(x)
        total += count[0]
    return xs, total, ""


def scipy_cg(fam, args):
    import scipy.sparse.linalg as spla

    xs, total = [], 0
    for A, b in fam.systems:
        count = [0]
        x, _ = spla.cg(A, b.numpy(), rtol=args.rtol, atol=0.0, maxiter=args.max_iters,
                       callback=lambda _: count.__setitem__(0, count[0] + 1))
        xs.append(x)
        total += count[0]
    return xs, total, ""


def scipy_splu(fam, args):
    import scipy.sparse.linalg as spla

    return [spla.splu(A.tocsc()).solve(b.numpy()) for A, b in fam.systems], None, ""


def pyamg_krylov(fam, args):
    import pyamg

    accel = "cg" if fam.positive_definite else "gmres"
    xs, total = [], 0
    for A, b in fam.systems:
        ml = pyamg.smoothed_aggregation_solver(A)
        res: list[float] = []
        xs.append(ml.solve(b.numpy(), tol=args.rtol, accel=accel, maxiter=args.max_iters, residuals=res))
        total += max(len(res) - 1, 0)
    return xs, total, f"setup per system + {accel.upper()}"


def ours_sequence(solver_factory, *, sort: bool):
    def run(fam, args):
        from neuralnumerics.linalg.sequence import solve_sequence

        systems = fam.as_operators(device=args.device)
        result = solve_sequence(systems, solver_factory(args), sort=sort, features=fam.features if sort else None)
        return [x.cpu().numpy() for x in result.x], result.stats.iterations, ""
    return run


def gcrodr(args):
    from neuralnumerics.linalg.recycling import GCRODR

    return GCRODR(m=args.m, k=args.k, rtol=args.rtol, max_iters=args.max_iters)


def recycled_cg(args):
    from neuralnumerics.linalg.recycling import RecycledCG

    return RecycledCG(k=args.k, rtol=args.rtol, max_iters=args.max_iters)


def methods_for(fam, args, have_amg: bool):
    out = [
        ("SKR: sorted + GCRO-DR (ours)", ours_sequence(gcrodr, sort=True)),
        ("GCRO-DR, unsorted (ours)", ours_sequence(gcrodr, sort=False)),
    ]
    if fam.positive_definite:
        out.append(("sorted + deflated CG (ours)", ours_sequence(recycled_cg, sort=True)))
    out.append(("GMRES, independent (SciPy)", scipy_gmres))
    if fam.positive_definite:
        out.append(("CG, independent (SciPy)", scipy_cg))
    if have_amg:
        out.append(("AMG-preconditioned Krylov (PyAMG)", pyamg_krylov))
    out.append(("sparse LU per system (SciPy splu)", scipy_splu))
    return out


# --------------------------------------------------------------------------- #
# running and checking
# --------------------------------------------------------------------------- #
def check(fam, xs, reference, rtol: float) -> tuple[int, float, float]:
    """(systems failing the residual check, worst relative residual, worst relative error vs direct)."""
    failures, worst_res, worst_err = 0, 0.0, 0.0
    for (A, b), x, ref in zip(fam.systems, xs, reference):
        bn = b.numpy()
        res = float(np.linalg.norm(bn - A @ x) / np.linalg.norm(bn))
        err = float(np.linalg.norm(x - ref) / np.linalg.norm(ref))
        if not np.isfinite(res) or res > 2 * rtol:
            failures += 1
        worst_res, worst_err = max(worst_res, res), max(worst_err, err)
    return failures, worst_res, worst_err


def run_family(name: str, args, have_amg: bool, t0: float) -> tuple[object, list[Outcome]]:
    fam = make_family(name, args.systems, args.grid)
    reference = scipy_splu(fam, args)[0]
    outcomes = []
    for label, method in methods_for(fam, args, have_amg):
        method(dataclasses.replace(fam, systems=fam.systems[:1], features=fam.features[:1]), args)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            xs, iters, note = method(fam, args)
            times.append(time.perf_counter() - start)
            failures, res, err = check(fam, xs, reference, args.rtol)
            if failures:  # a failed method shows its failures, not a time: no point repeating it
                break
        outcomes.append(Outcome(label, statistics.median(times), iters, failures, res, err, note))
        log_progress(f"{name}: {label}: {times[-1]:.2f} s, {iters} iterations, {failures} failed, "
                     f"error {err:.1e}", t0)
    return fam, outcomes


def family_table(name: str, fam, outcomes: list[Outcome], args) -> str:
    base = next(o for o in outcomes if o.method.startswith("GMRES, independent (SciPy)"))
    base_ok = base.failures == 0
    rows = []
    for o in outcomes:
        ok = o.failures == 0
        time_cell = fmt_seconds(o.seconds) if ok else f"✗ {o.failures}/{len(fam)} not converged"
        ratio = f"{base.seconds / o.seconds:.2f}x" if ok and base_ok else None
        iters = None if o.iterations is None else f"{o.iterations} ({o.iterations / len(fam):.0f}/system)"
        rows.append([o.method, time_cell, iters, ratio, f"{o.max_residual:.1e}", fmt_error(o.max_error),
                     o.note or None])
    head = (f"### {name}: {DESCRIPTIONS[name]}\n\n{len(fam)} systems, {fam.grid}x{fam.grid} grid "
            f"({fam.grid ** 2} unknowns), rtol {args.rtol:g}, GMRES/GCRO-DR restart m = {args.m}, recycled k = "
            f"{args.k}.\n\n")
    table = markdown_table(["method", "total time", "iterations", "speedup vs SciPy GMRES", "worst residual",
                            "worst error vs LU", "note"], rows)
    return head + table


def verdict(name: str, outcomes: list[Outcome]) -> str:
    by = {o.method: o for o in outcomes}
    skr = by["SKR: sorted + GCRO-DR (ours)"]
    unsorted = by["GCRO-DR, unsorted (ours)"]
    gm = by["GMRES, independent (SciPy)"]
    lu = by["sparse LU per system (SciPy splu)"]
    ok = lambda o: o.failures == 0  # noqa: E731
    parts = []
    if not ok(skr):
        return f"- **{name}**: SKR did not converge on {skr.failures} systems."
    if ok(gm):
        ratio = gm.seconds / skr.seconds
        speed = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        parts.append(f"SKR is {speed} than SciPy GMRES(m) and takes {gm.iterations / skr.iterations:.1f}x fewer "
                     "iterations")
    else:
        parts.append(f"SciPy GMRES(m) fails to converge on {gm.failures} of the systems within the cap; SKR "
                     "converges on all")
    if ok(unsorted):
        parts.append(f"sorting changes the iterations by {100 * (skr.iterations / unsorted.iterations - 1):+.0f}% "
                     "against recycling in the given order")
    rivals = [o for o in outcomes if ok(o) and o.method not in (skr.method, unsorted.method)
              and o.seconds < skr.seconds]
    if rivals:
        best = min(rivals, key=lambda o: o.seconds)
        parts.append(f"but {best.method} is faster still ({skr.seconds / best.seconds:.1f}x less time than SKR)")
        if best is not lu and ok(lu) and lu.seconds < skr.seconds:
            parts.append(f"the sparse LU takes {skr.seconds / lu.seconds:.1f}x less time than SKR")
    else:
        parts.append("and no other method here is faster")
    return f"- **{name}**: " + "; ".join(parts) + "."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 systems on a 24x24 grid; report to a temp file")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch, SciPy and PyAMG (default 1)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of our solvers (default cpu)")
    ap.add_argument("--systems", type=int, default=None, help="systems per family (default 50; --quick 8)")
    ap.add_argument("--grid", type=int, default=None, help="grid points per side (default 64; --quick 24)")
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative residual tolerance (default 1e-6)")
    ap.add_argument("--m", type=int, default=40, help="GMRES restart / GCRO-DR cycle length (default 40, as SKR)")
    ap.add_argument("--k", type=int, default=20, help="recycled dimension (default 20, as SKR)")
    ap.add_argument("--max-iters", type=int, default=4000, help="iteration cap per system (default 4000)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per method, median reported (default 3; --quick 1)")
    ap.add_argument("--families", default="darcy,poisson,helmholtz,heat", help="comma-separated families")
    ap.add_argument("--out-md", metavar="PATH", default=None,
                    help=f"where to write the report (default {DEFAULT_OUT}; --quick: {QUICK_OUT})")
    args = ap.parse_args(argv)
    args.systems = args.systems or (8 if args.quick else 50)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.grid = args.grid or (24 if args.quick else 64)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in DESCRIPTIONS]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {list(DESCRIPTIONS)}")
    out_md = Path(args.out_md) if args.out_md else (QUICK_OUT if args.quick else DEFAULT_OUT)
    threads = pin_threads(args.threads)
    args.device = resolve_device(args.device)
    have_amg = importlib.util.find_spec("pyamg") is not None
    if not have_amg:
        log("pyamg is not installed: the AMG rows are skipped (pip install pyamg)")

    t0 = time.perf_counter()
    sections, verdicts = [], []
    for name in families:
        log(f"{name}: {args.systems} systems, grid {args.grid} ...")
        fam, outcomes = run_family(name, args, have_amg, t0)
        sections.append(family_table(name, fam, outcomes, args))
        verdicts.append(verdict(name, outcomes))

    header = machine_header(TITLE, threads=threads, extra=[
        f"Device: ours {args.device}; SciPy and PyAMG on the CPU"
        + ("" if have_amg else "; PyAMG is not installed, so the AMG rows are missing"),
        f"Stopping rule: relative residual {args.rtol:g} from x0 = 0; check: true relative residual at most "
        f"{2 * args.rtol:g} on every system, else the time is replaced by the number of failures; iterations "
        f"capped at {args.max_iters} per system",
        "Times: whole sequence, after one warm-up system"
        + ("" if args.repeats == 1 else f", median of {args.repeats} runs")
        + "; SKR's time includes sorting; our SciPy-to-torch conversion is inside the timed region",
    ])
    out = [header]
    if args.quick:
        out.append(f"> **This is a `--quick` run** ({args.systems} systems, {args.grid}x{args.grid} grid); the "
                   "ratios on such small systems say little.\n")
    out.append("## The paper's figures\n\n" + PAPER + "\n")
    out.append("## Summary\n\n" + "\n".join(verdicts) + "\n")
    out.append("## Per family\n\n" + "\n\n".join(sections))
    text = "\n".join(out)
    print(text)
    path = write_markdown(out_md, text)
    log(f"written to {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

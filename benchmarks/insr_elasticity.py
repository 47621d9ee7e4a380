"""Benchmark: INSR 2D elasticity, the paper's stretch (Chen et al., ICML 2023, Sec. 5.3): neuralnumerics vs. the
paper's code, and INSR vs. finite elements at equal memory.

    python benchmarks/insr_elasticity.py [--quick] [--reference PATH] [--threads N] [--ref-timeout S]
        [--ref-max-iters K] [--fem-fine N] [--configs NAME ...] [--out-md PATH]

The problem (``elasticity-stretch-2d``): the square [-1, 1]^2, its left side held in place and its right side
pulled 2 to the right, ARAP energy (weight 1) plus the volume term (weight 1e3), static equilibrium.

What it does, in one invocation (so every time is taken under the same machine load):

1. pins the thread count (``--threads``, default 1) here and in the reference's subprocess;
2. computes the **converged FEM solution**: crossed linear triangles (four per cell, see
   :func:`~neuralnumerics.classical.elasticity.rectangle_mesh`; plain triangles lock under the strong
   volume term) on ``--fem-fine`` cells per side (default 48) and on half as many, each by 20 load
   increments of damped Newton. The half-resolution solution's distance from it is printed: it bounds how
   far the "converged" solution itself may be from the exact one;
3. runs ours (:func:`~neuralnumerics.pde.elasticity.evolve_elastic`, one static step, L-BFGS) in the
   configurations ``--configs`` (default: the paper's network, SIREN 3 x 68, and a SIREN 3 x 32);
4. runs the reference (``--reference``, a local checkout of github.com/honglin-c/INSR-PDE) through
   ``benchmarks/_insr_elasticity_reference.py`` with ``scripts/elasticity2Dstretch.sh``'s configuration;
5. runs FEM at equal memory: plain and crossed triangles whose vertex positions take as many floats as the
   paper's SIREN has weights;
6. prints a Markdown report and writes it to ``--out-md``: for every solver the seconds of the step, and the
   deviation from the converged FEM solution: the relative L2 difference of the displacement ``phi(X) - X``
   over 4096 scrambled-Sobol rest points of the square (FEM solutions are interpolated linearly), the
   elastic energy ``int Psi`` (by each solver's own quadrature) and the largest constraint violation.

``--quick`` (a few minutes): FEM at 12 and 24 cells, ours with 200 L-BFGS iterations, the reference's loop
capped at 200 Adam iterations (a smoke test of the harness, not the reference's configuration); the report
goes to a temporary file unless ``--out-md`` is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402

from neuralnumerics.classical.elasticity import ElasticFEM, rectangle_mesh  # noqa: E402
from neuralnumerics.fields import param_count  # noqa: E402
from neuralnumerics.io.elastic_runs import fem_diagnostics  # noqa: E402
from neuralnumerics.pde.bodies import BoxBody  # noqa: E402
from neuralnumerics.pde.elasticity import evolve_elastic  # noqa: E402
from neuralnumerics.pde.fit import FitConfig  # noqa: E402
from neuralnumerics.scenarios import get_scenario  # noqa: E402

from _common import (REPO_ROOT, fmt_seconds, log, machine_header, markdown_table, pin_threads,  # noqa: E402
                     write_markdown)

TITLE = "INSR 2D elasticity (stretch): neuralnumerics vs. the INSR reference implementation and FEM"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "insr_elasticity.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "neuralnumerics-benchmarks" / "insr_elasticity.quick.md"
F64 = torch.float64

#: Our configurations: name -> (scenario options, L-BFGS iteration cap)
CONFIGS = {
    "ours-68": ({"hidden_features": 68}, 3000),
    "ours-32": ({"hidden_features": 32}, 3000),
}


@dataclass
class Result:
    name: str
    seconds: float | None
    displacement: torch.Tensor | None  # phi(X) - X at the probe points
    elastic_energy: float | None = None
    constraint_violation: float | None = None
    memory_floats: int | None = None
    iterations: int | None = None
    note: str = ""


def probe_points() -> torch.Tensor:
    return BoxBody().sample(4096, generator=torch.Generator().manual_seed(2024), dtype=F64)


def problem(options: dict | None = None):
    sc = get_scenario("elasticity-stretch-2d")
    return sc.build(sc.resolve(options or {}))


def solve_fem(cells: int, crossed: bool, increments: int = 20) -> tuple[ElasticFEM, torch.Tensor, float, int, bool]:
    """Load-stepped damped Newton on a rectangle mesh; returns ``(fem, q, seconds, iterations, converged)``."""
    p = problem()
    t0 = time.perf_counter()
    V, C = rectangle_mesh(cells, cells, crossed=crossed)
    fem = ElasticFEM(V, C, p.energy_density)
    fixed = V[:, 0].abs() > 1 - 1e-9
    target = V.clone()
    target[V[:, 0] > 1 - 1e-9, 0] += 2.0
    q, v, iters, converged = V.clone(), torch.zeros_like(V), 0, True
    for k in range(1, increments + 1):
        q, _, res = fem.step(q, v, 1.0, fixed=fixed, targets=V + (target - V) * (k / increments), static=True,
                             tol=1e-9, max_iters=300, newton="damped")
        iters += res.iterations
        converged &= res.converged
    return fem, q, time.perf_counter() - t0, iters, converged


def fem_result(name: str, cells: int, crossed: bool, probe: torch.Tensor) -> tuple[Result, ElasticFEM, torch.Tensor]:
    fem, q, seconds, iters, converged = solve_fem(cells, crossed)
    d = fem_diagnostics(problem(), fem, q, torch.zeros_like(q), 1)
    r = Result(name, seconds, fem.interpolate(q, probe) - probe, d["elastic_energy"], 0.0, fem.dof, iters,
               "" if converged else "Newton did not converge in every increment")
    log(f"{name}: {seconds:.1f} s, {iters} Newton iterations, energy {d['elastic_energy']:.4f}")
    return r, fem, q


def run_ours(name: str, options: dict, max_iters: int, probe: torch.Tensor) -> Result:
    p = problem(options)
    t0 = time.perf_counter()
    traj = evolve_elastic(p, dt=1.0, steps=1, fit=FitConfig(optimizer="lbfgs", max_iters=max_iters, ftol=1e-7, rtol=0.0),
                          seed=0)
    seconds = time.perf_counter() - t0
    rec = traj.records[-1]
    disp = traj.displacement(1)(probe)
    log(f"{name}: {seconds:.1f} s, {rec.fit_iters} iterations, energy {rec.diagnostics['elastic_energy']:.4f}")
    return Result(name, seconds, disp, rec.diagnostics["elastic_energy"], rec.diagnostics["constraint_violation"],
                  param_count(p.default_field()), rec.fit_iters, f"L-BFGS, {p.n_points} points, stopped: {rec.status}")


def run_reference(args, probe: torch.Tensor) -> tuple[Result, object]:
    from _insr_elasticity_reference import run_reference_elasticity

    log("reference: starting (its step runs up to 100000 Adam iterations; --ref-timeout stops it earlier)")
    run = run_reference_elasticity(args.reference, threads=args.threads, timeout=args.ref_timeout,
                                   max_iters=args.ref_max_iters, init_max_iters=args.ref_init_iters, seed=0,
                                   points=probe.numpy(), snapshot_every=args.ref_snapshot_every,
                                   progress=lambda r: log(f"reference {r['call']}: {r['iters']} iterations, "
                                                          f"{r['seconds']:.0f} s"))
    step = run.record("step")
    if step is not None and run.deformed is not None:
        disp = torch.as_tensor(run.deformed, dtype=F64) - probe
        energy = 4.0 * (step["arap_density"] + 1e3 * step["volume_density"])  # area 4, the paper's weights
        return Result("reference", step["seconds"], disp, energy,
                      max(step["left_violation"], step["right_violation"]), run_params(), step["iters"],
                      f"Adam, final lr {step['lr']:.1e}"), run
    if run.snapshots:  # stopped by the timeout: its last snapshot
        iters, seconds, q = run.snapshots[-1]
        return Result("reference", seconds, torch.as_tensor(q, dtype=F64) - probe, None, None, run_params(), iters,
                      f"stopped by --ref-timeout at iteration {iters} (lr still falling: not its own stop)"), run
    return Result("reference", None, None, note=run.failure() or "no result"), run


def run_params() -> int:
    """Weights of the reference's network, the same SIREN 3 x 68 as our default."""
    return param_count(problem().default_field())


def time_to_reach(run, probe: torch.Tensor, converged: torch.Tensor, target: float) -> tuple[float | None, float]:
    """Seconds of the reference's step until its deviation first fell to ``target`` (None: never), and the best
    deviation it reached among its snapshots and its final state."""
    best, first = float("inf"), None
    states = [(s, torch.as_tensor(q, dtype=F64)) for _, s, q in run.snapshots]
    step = run.record("step")
    if step is not None and run.deformed is not None:
        states.append((step["seconds"], torch.as_tensor(run.deformed, dtype=F64)))
    for seconds, q in states:
        dev = float((q - probe - converged).norm() / converged.norm())
        best = min(best, dev)
        if first is None and dev <= target:
            first = seconds
    return first, best


def deviation(r: Result, converged: torch.Tensor) -> float | None:
    if r.displacement is None:
        return None
    return float((r.displacement - converged).norm() / converged.norm())


def build_report(args, threads, results: list[Result], converged: Result, check: Result, ref_run,
                 probe: torch.Tensor) -> str:
    ours = [r for r in results if r.name.startswith("ours")]
    ref = next((r for r in results if r.name == "reference"), None)
    rows = []
    for r in results:
        dev = deviation(r, converged.displacement)
        rows.append([r.name, r.memory_floats, fmt_seconds(r.seconds), r.iterations,
                     None if dev is None else f"{dev:.2e}",
                     None if r.elastic_energy is None else f"{r.elastic_energy:.4f}",
                     None if r.constraint_violation is None else f"{r.constraint_violation:.2e}", r.note])
    table = markdown_table(["solver", "state floats", "seconds", "iterations", "deviation from converged FEM",
                            "elastic energy", "max constraint violation", "note"], rows)
    lines = [machine_header(TITLE, threads=threads), "",
             "Static stretch of the square [-1, 1]^2 (left side held, right side pulled by 2; ARAP + 1e3 volume "
             "term). Deviation: relative L2 difference of the displacement from the converged FEM solution over "
             "4096 rest points.", "",
             f"Converged FEM: {converged.name}, energy {converged.elastic_energy:.4f}, {fmt_seconds(converged.seconds)}. "
             f"Its distance from the half-resolution solution ({check.name}): "
             f"{deviation(check, converged.displacement):.2e}.", "", table, ""]
    if ref is not None and ref_run is not None and ref.seconds:
        lines += ["Time to equal accuracy: the reference's step seconds until its deviation first fell to ours "
                  f"(snapshots every {args.ref_snapshot_every} iterations):", ""]
        for o in ours:
            if not o.seconds:
                continue
            target = deviation(o, converged.displacement)
            first, best = time_to_reach(ref_run, probe, converged.displacement, target)
            if first is not None:
                lines.append(f"- {o.name} (deviation {target:.2e}, {o.seconds:.1f} s): the reference reached it after "
                             f"{first:.0f} s: **{first / o.seconds:.1f}x** our time")
            else:
                lines.append(f"- {o.name} (deviation {target:.2e}, {o.seconds:.1f} s): the reference did not reach it "
                             f"in {ref.seconds:.0f} s (best {best:.2e}): **more than {ref.seconds / o.seconds:.1f}x** "
                             "our time")
        rows = [[it, f"{sec:.0f}", f"{float((torch.as_tensor(q, dtype=F64) - probe - converged.displacement).norm() / converged.displacement.norm()):.2e}"]
                for it, sec, q in ref_run.snapshots]
        lines += ["", "The reference's deviation during its step:", "",
                  markdown_table(["Adam iterations", "seconds", "deviation"], rows)]
    if ref_run is not None and getattr(ref_run, "patches", None):
        lines += ["", "Patches applied to the reference's scratch copy: " + "; ".join(ref_run.patches)]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test (a few minutes); report to a temporary file")
    ap.add_argument("--reference", metavar="PATH", help="local checkout of github.com/honglin-c/INSR-PDE")
    ap.add_argument("--threads", type=int, default=1, help="threads for every solver (default 1)")
    ap.add_argument("--ref-timeout", type=float, default=None, help="seconds before the reference is stopped")
    ap.add_argument("--ref-max-iters", type=int, default=None,
                    help="cap the reference's Adam loop (smoke tests only; default: its own 100000; --quick 200)")
    ap.add_argument("--ref-init-iters", type=int, default=50,
                    help="cap the reference's initial fit of u = 0 (500000 points per iteration, ~2.7 s each here; "
                         "default 50; it is not part of the step's time)")
    ap.add_argument("--ref-snapshot-every", type=int, default=500,
                    help="evaluate the reference's deformation every this many iterations of its step (default 500)")
    ap.add_argument("--no-fem-equal", action="store_true", help="skip the FEM runs at equal memory")
    ap.add_argument("--fem-fine", type=int, default=None, help="cells per side of the converged FEM (default 48)")
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None, help="our configurations")
    ap.add_argument("--out-md", metavar="PATH", default=None, help="where to write the report")
    args = ap.parse_args(argv)
    args.fem_fine = args.fem_fine or (24 if args.quick else 48)
    if args.fem_fine < 4 or args.fem_fine % 2:
        ap.error("--fem-fine must be an even number of at least 4")
    args.configs = args.configs or sorted(CONFIGS)
    if args.quick and args.ref_max_iters is None:
        args.ref_max_iters = 200
    if args.quick:
        args.ref_init_iters = min(args.ref_init_iters, 5)
        args.ref_snapshot_every = min(args.ref_snapshot_every, 50)
    if args.reference and not Path(args.reference).is_dir():
        ap.error(f"--reference: {args.reference} is not a directory")
    args.out_md = Path(args.out_md) if args.out_md else (QUICK_OUT if args.quick else DEFAULT_OUT)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = pin_threads(args.threads)
    probe = probe_points()
    converged, _, _ = fem_result(f"FEM crossed {args.fem_fine}x{args.fem_fine}", args.fem_fine, True, probe)
    check, _, _ = fem_result(f"FEM crossed {args.fem_fine // 2}x{args.fem_fine // 2}", args.fem_fine // 2, True, probe)
    results: list[Result] = []
    for name in args.configs:
        options, iters = CONFIGS[name]
        results.append(run_ours(name, options, 200 if args.quick else iters, probe))
    ref_run = None
    if args.reference:
        ref, ref_run = run_reference(args, probe)
        results.append(ref)
    params = param_count(problem().default_field())
    if args.no_fem_equal:
        report = build_report(args, threads, results, converged, check, ref_run, probe)
        print(report, flush=True)
        log(f"report written to {write_markdown(args.out_md, report)}")
        return 0
    n_plain = max(2, round((params / 2) ** 0.5) - 1)  # (n+1)^2 vertices x 2 floats
    n_crossed = max(2, round(((params / 2) / 2) ** 0.5))  # ~2 n^2 vertices x 2 floats
    for name, n, crossed in ((f"FEM plain {n_plain}x{n_plain} (equal memory)", n_plain, False),
                             (f"FEM crossed {n_crossed}x{n_crossed} (equal memory)", n_crossed, True)):
        results.append(fem_result(name, n, crossed, probe)[0])
    report = build_report(args, threads, results, converged, check, ref_run, probe)
    print(report, flush=True)
    path = write_markdown(args.out_md, report)
    log(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

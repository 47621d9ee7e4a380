"""Benchmark: Learning to Relax (Khodak et al., ICLR 2024): bandit-tuned SOR on diagonally shifted Poisson systems.

    python benchmarks/learning_to_relax.py [--quick] [--threads N] [--instances T] [--trials K] [--seed S]
        [--families high,low,ssor-cg] [--out-md PATH]

The paper's experiment, as its authors' scripts (github.com/mkhodak/learning-to-relax, ``scripts/learning.m``
and ``scripts/contextual.m``) set it up: ``A = delsq(numgrid('S', 12))``, the 5-point Laplacian (diagonal 4)
on the 10 x 10 interior of a square grid (100 unknowns; :class:`PoissonGrid` ``(10, 10)`` with Dirichlet
walls is the same matrix up to a relabelling that is a symmetry of the grid), a sequence of systems
``(A + c_t I) x = b_t`` with ``c_t = -0.15 + 0.6 Beta(0.5, 1.5)`` ("high variance") or
``-0.15 + 0.6 Beta(2, 6)`` ("low variance"), ``b_t`` a standard Gaussian radially truncated to norm
``sqrt(n)``, ``x0 = 0``, SOR to relative residual ``1e-8`` (cap 10000), and the omega grid
``linspace(1, 1.95, 20)``. Families:

* ``high``, ``low``: SOR, the two shift distributions above;
* ``ssor-cg``: the high-variance shifts solved by CG preconditioned with SSOR(omega), the paper's second
  solver; this family is our addition (the authors' scripts run SSOR-CG on a heat equation).

For each family it solves every system with every omega of the grid (the table behind the hindsight
comparators), then runs ``BanditSOR`` (Tsallis-INF) and ``ContextualBanditSOR`` (ChebCB, context ``c_t``,
context range the support [-0.15, 0.45]) through ``linear_solve`` on the same sequence, ``--trials``
times with different generator seeds. It reports total iterations against omega = 1, a uniformly random
omega, the best fixed omega in hindsight, the instance-optimal omega of the grid, and (SOR families)
Young's asymptotically optimal omega for each instance, which is what the authors' ``contextual.m`` calls
"Instance-Optimal".

Correctness first: every solve must reach the tolerance; every bandit solve must cost exactly the table's
count for the omega it chose (the same SOR / SSOR-CG solve) and its solution must match
``scipy.sparse.linalg.spsolve`` to ``1e-5``; the closed-form Jacobi radius used for Young's omega is checked
against a dense eigenvalue computation. A failed check is printed and the exit status is 1.

``--quick``: 200 instances, 2 trials, report to a temporary file unless ``--out-md`` is given.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
from scipy.sparse.linalg import spsolve  # noqa: E402

from _common import (REPO_ROOT, fmt_seconds, log, machine_header, markdown_table, pin_threads,  # noqa: E402
                     write_markdown)
from neuralnumerics._status import Status  # noqa: E402
from neuralnumerics.linalg.bandit import DEFAULT_OMEGAS, BanditSOR, ContextualBanditSOR, WithContext  # noqa: E402
from neuralnumerics.linalg.cg import CG  # noqa: E402
from neuralnumerics.linalg.operators import SparseOperator  # noqa: E402
from neuralnumerics.linalg.solve import linear_solve  # noqa: E402
from neuralnumerics.linalg.sor import SOR, SSORPreconditioner, optimal_omega  # noqa: E402
from neuralnumerics.linalg.stencil import PoissonGrid  # noqa: E402

TITLE = "Learning to Relax: bandit-tuned SOR on diagonally shifted Poisson systems"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "learning_to_relax.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "neuralnumerics-benchmarks" / "learning_to_relax.quick.md"
GRID = 10                     # interior points per side: numgrid('S', 12)
RTOL = 1e-8                   # the authors' epsilon
CAP = 10000                   # the authors' iteration cap
CONTEXT_RANGE = (-0.15, 0.45)  # the support of c_t
FAMILIES = {
    "high": dict(solver="sor", beta=(0.5, 1.5), label="high-variance shifts, SOR"),
    "low": dict(solver="sor", beta=(2.0, 6.0), label="low-variance shifts, SOR"),
    "ssor-cg": dict(solver="ssor-cg", beta=(0.5, 1.5), label="high-variance shifts, SSOR-preconditioned CG"),
}
# What the authors' scripts state about these settings. Their paper shows the totals only as curves
# (total iterations against instances remaining, T = 5000, 40 trials); we found no table of numbers.
PAPER_BEST_FIXED = {
    "high": "≈ 1.8 (legend of scripts/learning.m and contextual.m: 'ω=1.8 (≈ω*)')",
    "low": "≈ 1.6 (legend of scripts/learning.m and contextual.m: 'ω=1.6 (≈ω*)')",
    "ssor-cg": None,
}



@dataclass
class FamilyResult:
    name: str
    instances: int
    table: np.ndarray                       # (T, d) iterations per system and omega
    table_seconds: np.ndarray               # (d,) wall seconds of each omega's solves
    young: np.ndarray | None = None         # (T,) iterations with Young's omega*(A_t)
    young_seconds: float | None = None
    runs: dict[str, list[np.ndarray]] = field(default_factory=dict)   # method -> per-trial iteration sequences
    omegas_played: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- #
# the problem
# --------------------------------------------------------------------------- #
def jacobi_radius(c: float) -> float:
    """Jacobi spectral radius of delsq + c I on the 10 x 10 grid: 4 cos(pi h) / (4 + c), h = 1/11."""
    return 4.0 * math.cos(math.pi / (GRID + 1)) / (4.0 + c)


def make_sequence(T: int, beta: tuple[float, float], rng: np.random.Generator):
    base = PoissonGrid((GRID, GRID), boundary="dirichlet").to_scipy().tocsr()
    n = base.shape[0]
    out = []
    for _ in range(T):
        c = -0.15 + 0.6 * rng.beta(*beta)
        while True:  # radially truncated standard Gaussian, by rejection (the authors' truncated_normal.m)
            b = rng.standard_normal(n)
            if np.linalg.norm(b) <= math.sqrt(n):
                break
        A = (base + c * sp.eye(n, format="csr")).tocsr()
        out.append((float(c), A, SparseOperator.from_scipy(A, symmetric=True, positive_definite=True),
                    torch.from_numpy(b)))
    return out


def solve_fixed(op, b, omega: float, solver: str):
    if solver == "sor":
        return linear_solve(op, b, SOR(omega, rtol=RTOL, max_iters=CAP), throw=False)
    return linear_solve(op, b, CG(rtol=RTOL, max_iters=CAP), M=SSORPreconditioner(op, omega), throw=False)


# --------------------------------------------------------------------------- #
# one family
# --------------------------------------------------------------------------- #
def run_family(name: str, T: int, trials: int, seed: int) -> FamilyResult:
    spec = FAMILIES[name]
    solver = spec["solver"]
    rng = np.random.default_rng(seed)
    systems = make_sequence(T, spec["beta"], rng)
    d = len(DEFAULT_OMEGAS)
    res = FamilyResult(name, T, np.zeros((T, d), dtype=np.int64), np.zeros(d))

    # correctness of the closed-form Jacobi radius (used for Young's omega) on the first system
    A0 = systems[0][1].toarray()
    dense_beta = float(np.abs(np.linalg.eigvals(np.eye(A0.shape[0]) - A0 / np.diag(A0)[:, None])).max())
    if abs(dense_beta - jacobi_radius(systems[0][0])) > 1e-10:
        res.failures.append(f"Jacobi radius: closed form {jacobi_radius(systems[0][0]):.12f}, dense {dense_beta:.12f}")

    solve_fixed(systems[0][2], systems[0][3], 1.5, solver)  # warm-up (imports, first SuperLU call)
    log(f"[{name}] table: {T} systems x {d} omegas ({solver})")
    for t, (c, _, op, b) in enumerate(systems):
        for j, w in enumerate(DEFAULT_OMEGAS):
            t0 = time.perf_counter()
            sol = solve_fixed(op, b, w, solver)
            res.table_seconds[j] += time.perf_counter() - t0
            if sol.status is not Status.SUCCESS:
                res.failures.append(f"system {t} (c={c:.4f}), omega={w:g}: {sol.status.value} after "
                                    f"{sol.stats.iterations} iterations")
            res.table[t, j] = sol.stats.iterations
        if (t + 1) % max(1, T // 5) == 0:
            log(f"[{name}]   {t + 1}/{T}")

    if solver == "sor":
        res.young = np.zeros(T, dtype=np.int64)
        t0 = time.perf_counter()
        for t, (c, _, op, b) in enumerate(systems):
            sol = linear_solve(op, b, SOR(optimal_omega(jacobi_radius(c)), rtol=RTOL, max_iters=CAP), throw=False)
            if sol.status is not Status.SUCCESS:
                res.failures.append(f"system {t}, Young's omega: {sol.status.value}")
            res.young[t] = sol.stats.iterations
        res.young_seconds = time.perf_counter() - t0

    for trial in range(trials):
        for method in ("Tsallis-INF", "ChebCB"):
            g = torch.Generator().manual_seed(1000 * seed + trial)
            if method == "Tsallis-INF":
                bandit = BanditSOR(DEFAULT_OMEGAS, solver=solver, generator=g, rtol=RTOL, max_iters=CAP)
            else:
                bandit = ContextualBanditSOR(DEFAULT_OMEGAS, context_range=CONTEXT_RANGE, solver=solver,
                                             generator=g, rtol=RTOL, max_iters=CAP)
            iters, played = np.zeros(T, dtype=np.int64), np.zeros(T)
            state = None
            t0 = time.perf_counter()
            for t, (c, A, op, b) in enumerate(systems):
                sol = linear_solve(op, b, bandit, state=WithContext(state, c) if method == "ChebCB" else state,
                                   throw=False)
                state = sol.state
                iters[t], played[t] = sol.stats.iterations, sol.stats.extra["omega"]
                if trial == 0:  # correctness checks, on the first trial
                    j = DEFAULT_OMEGAS.index(played[t])
                    if sol.status is not Status.SUCCESS or iters[t] != res.table[t, j]:
                        res.failures.append(f"{method}, system {t}: {sol.status.value}, {iters[t]} iterations; the "
                                            f"table has {res.table[t, j]} for omega={played[t]:g}")
                    exact = spsolve(A.tocsc(), b.numpy())
                    err = np.linalg.norm(sol.x.numpy() - exact) / np.linalg.norm(exact)
                    if not err <= 1e-5:
                        res.failures.append(f"{method}, system {t}: relative error {err:.3e} against spsolve")
            res.seconds.setdefault(method, []).append(time.perf_counter() - t0)
            res.runs.setdefault(method, []).append(iters)
            res.omegas_played.setdefault(method, []).append(played)
        log(f"[{name}] trial {trial + 1}/{trials}: Tsallis-INF {res.runs['Tsallis-INF'][-1].sum()}, "
            f"ChebCB {res.runs['ChebCB'][-1].sum()} iterations")
    return res


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #
def mean_sd(values) -> str:
    values = [float(v) for v in values]
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.mean(values):,.0f} ± {statistics.stdev(values):,.0f}"


def family_section(res: FamilyResult) -> str:
    spec = FAMILIES[res.name]
    T, table = res.instances, res.table
    sums = table.sum(0)
    jbest = int(np.argmin(sums))
    best, instance = float(sums[jbest]), float(table.min(1).sum())
    rows = []

    def row(label, omega, totals, seconds=None, paper=None):
        mean_total = statistics.mean(float(v) for v in totals)
        rows.append([label, omega, mean_sd(totals), f"{mean_total / T:.1f}", f"{mean_total / best:.3f}",
                     f"{mean_total / instance:.3f}", fmt_seconds(seconds) if seconds is not None else None, paper])

    row("ω = 1 (Gauss-Seidel)" if spec["solver"] == "sor" else "ω = 1 (SGS-preconditioned CG)", "1",
        [sums[0]], res.table_seconds[0])
    row("uniformly random ω (expected)", "grid", [table.mean(1).sum()])
    row("best fixed ω in hindsight", f"{DEFAULT_OMEGAS[jbest]:g}", [best], res.table_seconds[jbest],
        PAPER_BEST_FIXED[res.name])
    ts = res.runs["Tsallis-INF"]
    row("BanditSOR (Tsallis-INF)", "learned", [r.sum() for r in ts], statistics.mean(res.seconds["Tsallis-INF"]),
        "approaches best fixed ω (curves)")
    cb = res.runs["ChebCB"]
    row("ContextualBanditSOR (ChebCB)", "learned, per c", [r.sum() for r in cb], statistics.mean(res.seconds["ChebCB"]),
        "approaches instance-optimal (curves)")
    row("instance-optimal ω of the grid (oracle)", "per system", [instance])
    if res.young is not None:
        row("Young's ω*(A_t) (authors' \"Instance-Optimal\")", "per system", [res.young.sum()], res.young_seconds)
    headers = ["method", "ω", "total iterations", "per system", "/ best fixed", "/ instance-optimal",
               "seconds (all systems)", "paper / authors' scripts"]
    out = [f"## {spec['label']} (`{res.name}`)", "",
           f"{T} systems; shifts c = -0.15 + 0.6 Beta{spec['beta']}; the learners' totals are the mean ± sd over "
           f"{len(ts)} generator seed(s) on the same sequence. Seconds: wall time of that method's solves "
           "(for the learners including their own bookkeeping).", "",
           markdown_table(headers, rows, align=["l", "l", "r", "r", "r", "r", "r", "l"])]
    # learning curves: the mean cost per system in each quarter of the sequence
    q = [(i * T // 4, (i + 1) * T // 4) for i in range(4)]
    crow = [["best fixed ω", *[f"{table[a:b, jbest].mean():.1f}" for a, b in q]],
            ["BanditSOR (Tsallis-INF)", *[f"{np.mean([r[a:b].mean() for r in ts]):.1f}" for a, b in q]],
            ["ContextualBanditSOR (ChebCB)", *[f"{np.mean([r[a:b].mean() for r in cb]):.1f}" for a, b in q]],
            ["instance-optimal ω of the grid", *[f"{table[a:b].min(1).mean():.1f}" for a, b in q]]]
    out += ["Iterations per system in each quarter of the sequence (learners: mean over seeds):", "",
            markdown_table(["method", *[f"systems {a + 1}–{b}" for a, b in q]], crow)]
    late = [p[3 * T // 4:] for p in res.omegas_played["Tsallis-INF"]]
    counts = np.bincount(np.concatenate([np.searchsorted(DEFAULT_OMEGAS, p) for p in late]), minlength=len(DEFAULT_OMEGAS))
    top = np.argsort(counts)[::-1][:3]
    out += ["Tsallis-INF's most played ω in the last quarter: "
            + ", ".join(f"{DEFAULT_OMEGAS[i]:g} ({counts[i] / counts.sum():.0%})" for i in top) + ".", ""]
    if res.failures:
        out += ["**Correctness check failed:**", ""] + [f"- {f}" for f in res.failures[:20]]
        if len(res.failures) > 20:
            out.append(f"- ... and {len(res.failures) - 20} more")
        out.append("")
    else:
        out += ["Correctness: every solve reached the tolerance; every bandit solve cost exactly the table's count "
                "for its ω and matched `spsolve` to 1e-5.", ""]
    return "\n".join(out)


def build_report(args, threads, results: list[FamilyResult]) -> str:
    extra = [f"Setup: {GRID}x{GRID} 5-point Laplacian (diagonal 4, {GRID * GRID} unknowns) + c I; relative residual "
             f"{RTOL:g}, cap {CAP}, x0 = 0; ω grid linspace(1, 1.95, 20); ChebCB degree 5 on c in "
             f"[{CONTEXT_RANGE[0]}, {CONTEXT_RANGE[1]}]; seed {args.seed}"]
    out = [machine_header(TITLE, threads=threads, extra=extra).rstrip(), ""]
    if args.quick:
        out += [f"This is a `--quick` run ({args.instances} systems, {args.trials} trial(s)): the learners have "
                "little time to learn, so their ratios are pessimistic.", ""]
    out += ["Paper: Khodak, Chow, Balcan, Talwalkar, \"Learning to Relax: Setting Solver Parameters Across a "
            "Sequence of Linear System Instances\", ICLR 2024 (arXiv:2310.02246). Its experiments (T = 5000 "
            "systems, 40 trials) are plotted as total iterations against instances remaining; we could not read "
            "numbers off the paper here, so the last column quotes what the authors' scripts "
            "(github.com/mkhodak/learning-to-relax) state: the fixed ω their legends mark as ≈ best, and the "
            "qualitative claims of the abstract. The reference is MATLAB and is not run here.", ""]
    for res in results:
        out.append(family_section(res))
    return "\n".join(out).rstrip() + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 systems, 2 trials, report to a temp file")
    ap.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    ap.add_argument("--instances", type=int, default=None, help="systems per family (default 2000; --quick 200)")
    ap.add_argument("--trials", type=int, default=None, help="generator seeds per learner (default 3; --quick 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the system sequences and the learners (default 0)")
    ap.add_argument("--families", default="high,low,ssor-cg", help=f"comma-separated, from {sorted(FAMILIES)}")
    ap.add_argument("--out-md", metavar="PATH", default=None,
                    help=f"where to write the report (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; --quick: {QUICK_OUT})")
    args = ap.parse_args(argv)
    args.instances = args.instances if args.instances is not None else (200 if args.quick else 2000)
    args.trials = args.trials if args.trials is not None else (2 if args.quick else 3)
    if args.instances < 4 or args.trials < 1:
        ap.error("--instances must be at least 4 and --trials at least 1")
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown or not args.families:
        ap.error(f"--families: unknown {unknown}; choose from {sorted(FAMILIES)}")
    args.out_md = Path(args.out_md) if args.out_md else (QUICK_OUT if args.quick else DEFAULT_OUT)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = pin_threads(args.threads)
    log(f"threads: {threads['intra_op']} intra-op; torch {torch.__version__}")
    results = [run_family(name, args.instances, args.trials, args.seed) for name in args.families]
    report = build_report(args, threads, results)
    print(report, flush=True)
    path = write_markdown(args.out_md, report)
    log(f"report written to {path}")
    failed = [r.name for r in results if r.failures]
    if failed:
        log(f"FAILED: correctness checks failed for {failed} (see the report)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: CG and preconditioned CG on fluid-pressure Poisson systems, neuralnumerics vs. SciPy and PyAMG.

    python benchmarks/linalg_poisson.py [--quick] [--threads N] [--device cpu|cuda] [--out-md PATH]

Systems: the pressure Poisson equation of a fluid tank (walls on every side but an open top, a round
obstacle in the middle: a disc in 2D, a ball in 3D), on cell grids of several sizes, with a random
right-hand side (zero in the obstacle). Each solver runs to relative residual 1e-6:

- ours: :class:`~neuralnumerics.linalg.CG` on the matrix-free :class:`~neuralnumerics.linalg.PoissonGrid`,
  plain and with the Jacobi, IC(0) and AMG (PyAMG smoothed aggregation) preconditioners;
- SciPy: ``scipy.sparse.linalg.cg`` on the assembled CSR matrix, plain and with the same PyAMG
  V-cycle as preconditioner; and a sparse direct solve (``splu``), which is also the reference solution.

Correctness first: each solution's true relative residual must be at most 2e-6 and its error against the
direct solution is printed; a solver that fails shows that instead of a time. Setup (factorisation,
AMG hierarchy, assembly) and solve are timed separately (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import (REPO_ROOT, fmt_error, fmt_seconds, machine_header, markdown_table, median_time,  # noqa: E402
                     pin_threads, resolve_device, write_markdown)

TITLE = "CG and preconditioned CG on Poisson pressure systems: neuralnumerics vs. SciPy and PyAMG"
DEFAULT_OUT = REPO_ROOT / "docs" / "benchmarks" / "linalg_poisson.md"
QUICK_OUT = Path(tempfile.gettempdir()) / "neuralnumerics-benchmarks" / "linalg_poisson.quick.md"
RTOL = 1e-6
CHECK = 2e-6


def tank(shape: tuple[int, ...]) -> np.ndarray:
    """Solid mask: a disc/ball of radius 0.2 (in units of the first side) at the centre."""
    axes = np.meshgrid(*[(np.arange(s) + 0.5) / shape[0] for s in shape], indexing="ij")
    centre = [0.5 * s / shape[0] for s in shape]
    r2 = sum((a - c) ** 2 for a, c in zip(axes, centre))
    return r2 < 0.2 ** 2


def problem(shape, device):
    from neuralnumerics.linalg import PoissonGrid

    solid = tank(shape)
    boundary = ["neumann"] * (len(shape) - 1) + [("neumann", "dirichlet")]  # open top
    op = PoissonGrid(shape, boundary=boundary, solid=solid, spacing=1.0 / shape[0], device=device)
    g = torch.Generator().manual_seed(0)
    b = torch.randn(op.shape[0], dtype=torch.float64, generator=g)
    b[torch.from_numpy(solid.reshape(-1))] = 0
    return op, b.to(device)


def run_case(shape, device, repeats: int, have_amg: bool) -> list[list]:
    import scipy.sparse.linalg as spla

    from neuralnumerics.linalg import AMG, CG, IncompleteCholesky, Jacobi, linear_solve

    op, b = problem(shape, device)
    A = op.to_scipy()
    bn = b.cpu().numpy()
    t_lu, _, lu = median_time(lambda: spla.splu(A.tocsc()), repeats=repeats, warmup=0)
    t_lu_solve, _, x_ref = median_time(lambda: lu.solve(bn), repeats=repeats, warmup=0)
    bnorm = np.linalg.norm(bn)
    rows = []

    def record(name, setup_s, solve_s, iters, x):
        x = np.asarray(x)
        res = np.linalg.norm(bn - A @ x) / bnorm
        err = np.linalg.norm(x - x_ref) / np.linalg.norm(x_ref)
        ok = np.isfinite(res) and res <= CHECK
        rows.append([f"{'x'.join(map(str, shape))}", name, iters,
                     fmt_seconds(setup_s) if ok else None, fmt_seconds(solve_s) if ok else f"residual {res:.2e}",
                     fmt_seconds((setup_s or 0) + solve_s) if ok else None, fmt_error(err)])

    record("scipy splu (direct)", t_lu, t_lu_solve, None, x_ref)

    def ours(M=None):
        return linear_solve(op, b, CG(rtol=RTOL), M=M)

    preconds = [("ours CG", None), ("ours PCG Jacobi", lambda: Jacobi(op)), ("ours PCG IC(0)", lambda: IncompleteCholesky(op))]
    if have_amg:
        preconds.append(("ours PCG AMG", lambda: AMG(op)))
    for name, make in preconds:
        if make is None:
            setup_s, M = 0.0, None
        else:
            setup_s, _, M = median_time(make, repeats=1 if name.endswith("IC(0)") else repeats, warmup=0)
        solve_s, _, sol = median_time(lambda: ours(M), repeats=repeats)
        record(name, setup_s if make else None, solve_s, sol.stats.iterations, sol.x.cpu().numpy())

    def scipy_cg(M=None):
        count = [0]
        x, info = spla.cg(A, bn, rtol=RTOL, atol=0.0, M=M, maxiter=20 * A.shape[0],
                          callback=lambda _: count.__setitem__(0, count[0] + 1))
        return x, count[0]

    solve_s, _, (x, it) = median_time(scipy_cg, repeats=repeats)
    record("scipy cg", None, solve_s, it, x)
    if have_amg:
        import pyamg

        setup_s, _, ml = median_time(lambda: pyamg.smoothed_aggregation_solver(A), repeats=repeats, warmup=0)
        M = ml.aspreconditioner(cycle="V")
        solve_s, _, (x, it) = median_time(lambda: scipy_cg(M), repeats=repeats)
        record("scipy cg + pyamg", setup_s, solve_s, it, x)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grids only (seconds)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-md", type=Path, default=None)
    args = parser.parse_args(argv)
    threads = pin_threads(args.threads)
    device = resolve_device(args.device)
    try:
        import pyamg  # noqa: F401

        have_amg = True
    except ImportError:
        have_amg = False
    shapes = [(32, 32), (16, 16, 16)] if args.quick else [(64, 64), (128, 128), (256, 256), (16, 16, 16), (32, 32, 32)]
    repeats = 1 if args.quick else args.repeats
    rows = []
    for shape in shapes:
        print(f"  {'x'.join(map(str, shape))} ...", file=sys.stderr, flush=True)
        rows += run_case(shape, device, repeats, have_amg)
    header = machine_header(TITLE, threads=threads, extra=[
        f"Device: ours {device}; SciPy and PyAMG on the CPU",
        f"Stopping rule: relative residual {RTOL:g} (recursive residual for the CG variants); check: true "
        f"relative residual at most {CHECK:g}, else the time is replaced by the residual",
        "Times: median of the repeats; setup = preconditioner construction or factorisation"
        + ("" if have_amg else "; PyAMG is not installed, so the AMG rows are missing"),
    ])
    table = markdown_table(["grid", "solver", "iterations", "setup", "solve", "total", "error vs direct"], rows)
    text = header + "\n" + table
    print(text)
    out = args.out_md or (QUICK_OUT if args.quick else DEFAULT_OUT)
    write_markdown(out, text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

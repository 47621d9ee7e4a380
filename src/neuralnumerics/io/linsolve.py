"""``neuralnumerics solve``: solve a pressure system (tank or smoke) with several solvers, write a summary and pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["SOLVERS", "PRECONDITIONERS", "PROBLEMS", "parse_solver_specs", "solve_tank", "solve_system", "grid_shape",
           "FAMILIES",
           "SEQUENCE_SOLVERS", "solve_family"]


def _solvers(model=None) -> dict[str, Callable]:
    from ..linalg import CG, GMRES
    from ..linalg.dcdm import DCDM

    return {"cg": lambda rtol, cap: CG(rtol=rtol, max_iters=cap),
            "gmres": lambda rtol, cap: GMRES(rtol=rtol, max_iters=cap),
            "dcdm": lambda rtol, cap: DCDM(model, rtol=rtol, max_iters=cap)}


def _preconditioners() -> dict[str, Callable]:
    from ..linalg import AMG, IncompleteCholesky, Jacobi

    return {"jacobi": Jacobi, "ic": IncompleteCholesky, "amg": AMG}


SOLVERS = ("cg", "gmres", "dcdm")
PROBLEMS = ("tank", "smoke")
PRECONDITIONERS = ("jacobi", "ic", "amg")


def parse_solver_specs(text: str) -> list[tuple[str, str | None]]:
    """``"cg,cg+amg,gmres"`` -> ``[("cg", None), ("cg", "amg"), ("gmres", None)]``.

    Raises:
        ValueError: naming an unknown solver or preconditioner and listing the known ones.
    """
    specs = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, pre = item.partition("+")
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; choose from {', '.join(SOLVERS)} "
                             f"(optionally +{'|+'.join(PRECONDITIONERS)})")
        if pre and pre not in PRECONDITIONERS:
            raise ValueError(f"unknown preconditioner {pre!r} in {item!r}; choose from {', '.join(PRECONDITIONERS)}")
        specs.append((name, pre or None))
    if not specs:
        raise ValueError("no solver given; e.g. --solver cg,cg+amg")
    return specs


def solve_tank(grid: tuple[int, ...], **kwargs) -> dict:
    """:func:`solve_system` on the tank problem (kept for existing callers)."""
    return solve_system("tank", grid, **kwargs)


def solve_system(problem: str, grid: tuple[int, ...], *, solvers: str = "cg,cg+jacobi,cg+ic,gmres",
                 obstacle: str | None = None, open_top: bool = True, rtol: float = 1e-6,
                 max_iters: int | None = None, seed: int = 0, step: int = 10, model: str | Path | None = None,
                 device: str | None = None, out: str | Path | None = None, plots: bool = True) -> dict:
    """Solve one pressure system with each solver and compare them.

    Args:
        problem: ``"tank"`` (:func:`~neuralnumerics.gallery.tanks.tank_system`: a smooth random right-hand
            side) or ``"smoke"`` (the pressure system of step ``step`` of a smoke plume rising past the
            obstacle, :func:`~neuralnumerics.gallery.smoke.smoke_systems`).
        grid: cells per axis.
        solvers: comma-separated ``SOLVER[+PRECONDITIONER]`` (:func:`parse_solver_specs`).
        obstacle: tank: ``disc``, ``box`` or ``none`` (default disc); smoke: ``sphere``, ``box``, ``blob``
            or ``none`` (default sphere).
        open_top, rtol, max_iters, seed: the system and the solves.
        step: the smoke step whose system is solved.
        model: the DCDM model file, needed by the ``dcdm`` solver.
        device: ``cpu`` (default) or ``cuda``.
        out: folder for ``summary.json`` and the pictures.

    Returns a summary (problem, and per solver: status, iterations, seconds, setup seconds, final relative
    residual, relative difference to the first solution that converged); with ``out``, writes ``summary.json``,
    ``residuals.png`` (residual histories) and ``solution.png`` (the pressure of the first solve that
    converged, or of the first solve when none did; the middle slice in 3D).
    Failed solves are reported with their status, never dropped.

    Raises:
        ValueError: on an unknown problem, solver, preconditioner or obstacle, or ``dcdm`` without a model.
        FileNotFoundError: when the model file does not exist.
    """
    import time

    from .._status import Status
    from ..linalg import linear_solve
    from ..linalg.dcdm import load_dcdm_model

    specs = parse_solver_specs(solvers)
    if any(name == "dcdm" for name, _ in specs):
        if model is None:
            raise ValueError("the dcdm solver needs a trained model: pass --model PATH (make one with "
                             "`neuralnumerics train dcdm --out DIR`, which writes DIR/model.pt)")
        if any(name == "dcdm" and pre for name, pre in specs):
            raise ValueError("dcdm takes no preconditioner: its network is the preconditioner")
        model = load_dcdm_model(model)
    device = device or "cpu"
    op, b = _system(problem, grid, obstacle=obstacle, open_top=open_top, seed=seed, step=step, device=device)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"problem": {"kind": problem, "grid": list(grid), "unknowns": op.shape[0],
                                 "obstacle": obstacle or _DEFAULT_OBSTACLE[problem], "open_top": open_top,
                                 "singular": op.singular, "rtol": rtol, "seed": seed,
                                 **({"step": step} if problem == "smoke" else {})},
                     "solves": []}
    histories, reference = {}, None
    makers, preconds = _solvers(model), _preconditioners()
    for i, (name, pre) in enumerate(specs):
        label = name + (f"+{pre}" if pre else "")
        t0 = time.perf_counter()
        M = preconds[pre](op) if pre else None
        setup = time.perf_counter() - t0
        sol = linear_solve(op, b, makers[name](rtol, max_iters), M=M, throw=False)
        x = sol.x.detach().cpu().numpy()
        if i == 0:
            first = x
        if reference is None and sol.status is Status.SUCCESS:
            reference = x
        err = float(np.linalg.norm(x - reference) / max(np.linalg.norm(reference), 1e-300)) \
            if reference is not None else None
        summary["solves"].append({"solver": label, "status": sol.status.value, "iterations": sol.stats.iterations,
                                  "seconds": sol.stats.seconds, "setup_seconds": setup,
                                  "relative_residual": sol.stats.residual, "difference_to_first": err,
                                  "message": sol.message})
        histories[label] = (list(range(len(sol.stats.residual_history))), sol.stats.residual_history)
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if plots:
            from .plots import plot_error_curve, plot_grid_field

            plot_error_curve(out_dir / "residuals.png", histories, xlabel="iteration",
                             ylabel="relative residual", title=f"{problem} {'x'.join(map(str, grid))}, rtol {rtol:g}")
            field = (reference if reference is not None else first).reshape(grid)
            solid = op.solid.cpu().numpy()
            if len(grid) == 3:
                field, solid = field[:, :, grid[2] // 2], solid[:, :, grid[2] // 2]
            plot_grid_field(out_dir / "solution.png", field, mask=solid, title="pressure",
                            label="p")
    return summary


_DEFAULT_OBSTACLE = {"tank": "disc", "smoke": "sphere"}


def _system(problem: str, grid, *, obstacle, open_top, seed, step, device):
    if problem == "tank":
        from ..gallery.tanks import tank_system

        return tank_system(grid, obstacle=obstacle or "disc", open_top=open_top, seed=seed, device=device)
    if problem == "smoke":
        from ..gallery.smoke import smoke_systems

        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"--step must be a positive integer, got {step!r}")
        return smoke_systems(grid, obstacle=obstacle or "sphere", steps=step, open_top=open_top, seed=seed,
                             device=device)[-1]
    raise ValueError(f"unknown problem {problem!r}; choose from {', '.join(PROBLEMS)}")


def grid_shape(text: str) -> tuple[int, ...]:
    """``"128x128"`` -> ``(128, 128)``."""
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--grid must look like 128x128 or 32x32x32, got {text!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise ValueError(f"--grid must have 2 or 3 sizes of at least 2, got {text!r}")
    return shape



FAMILIES = ("darcy", "poisson", "helmholtz", "heat")
SEQUENCE_SOLVERS = ("gcrodr", "recycled-cg", "gmres", "cg", "bandit-sor")


def solve_family(family: str, *, count: int = 50, grid: int = 32, solvers: str = "gcrodr,gmres",
                 sort: bool = True, rtol: float = 1e-6, seed: int = 0, out: str | Path | None = None,
                 progress: bool = False) -> dict:
    """Solve a generated sequence of PDE systems (:mod:`neuralnumerics.gallery.pde_systems`) with each solver.

    Recycling solvers (``gcrodr``, ``recycled-cg``) and ``bandit-sor`` carry their state along the sequence,
    in the SKR order when ``sort`` (greedy nearest neighbour on the systems' parameters); ``gmres`` and
    ``cg`` solve each system afresh. Returns a summary (per solver: status, total iterations and seconds,
    iterations per system in the original order); with ``out``, writes ``summary.json`` and
    ``iterations.png`` (iterations per system in solving order).

    Raises:
        ValueError: on an unknown family or solver, or a solver that needs SPD systems on a family that
            is not (``cg``, ``recycled-cg`` and ``bandit-sor`` on ``helmholtz``).
    """
    import torch

    from .. import gallery
    from ..linalg import CG, GCRODR, GMRES, BanditSOR, RecycledCG, solve_sequence

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    names = [s.strip() for s in solvers.split(",") if s.strip()]
    unknown = [s for s in names if s not in SEQUENCE_SOLVERS]
    if unknown or not names:
        raise ValueError(f"unknown solver {unknown[0] if unknown else ''!r}; choose from {', '.join(SEQUENCE_SOLVERS)}")
    makers = {"gcrodr": lambda: GCRODR(m=40, k=20, rtol=rtol), "recycled-cg": lambda: RecycledCG(k=20, rtol=rtol),
              "gmres": lambda: GMRES(restart=40, rtol=rtol, max_iters=4000), "cg": lambda: CG(rtol=rtol),
              "bandit-sor": lambda: BanditSOR(rtol=rtol, generator=torch.Generator().manual_seed(seed))}
    fam = getattr(gallery, {"darcy": "darcy_flow"}.get(family, family))(count, grid, seed=seed)
    spd_only = {"cg", "recycled-cg", "bandit-sor"}
    if not fam.positive_definite and spd_only & set(names):
        bad = sorted(spd_only & set(names))
        raise ValueError(f"{', '.join(bad)} {'needs' if len(bad) == 1 else 'need'} symmetric positive definite "
                         f"systems and the {family} family is not; use gcrodr or gmres")
    systems = fam.as_operators()
    summary: dict = {"family": family, "count": count, "grid": grid, "unknowns": systems[0][0].shape[0],
                     "sorted": sort, "rtol": rtol, "seed": seed, "solves": []}
    curves = {}
    for name in names:
        result = solve_sequence(systems, makers[name](), sort=sort and name not in ("gmres", "cg"),
                                features=fam.features, progress=progress)
        summary["solves"].append({"solver": name, "status": result.status.value,
                                  "iterations": result.stats.iterations, "seconds": result.stats.seconds,
                                  "iterations_per_system": result.iterations, "order": result.order,
                                  "messages": result.messages})
        curves[name] = (list(range(1, count + 1)), [result.iterations[i] for i in result.order])
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        from .plots import plot_error_curve

        plot_error_curve(out_dir / "iterations.png", curves, xlabel="system (in solving order)",
                         ylabel="iterations", title=f"{family}, {count} systems on a {grid}x{grid} grid")
    return summary

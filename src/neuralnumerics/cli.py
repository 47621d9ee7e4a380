"""Command line: ``neuralnumerics list``, ``run``, ``solve``, ``sequence`` and ``train``.

A thin layer over :func:`neuralnumerics.io.run_scenario`, :func:`neuralnumerics.io.linsolve.solve_system`,
:func:`neuralnumerics.io.linsolve.solve_family` and :func:`neuralnumerics.io.dcdm_runs.train_dcdm_run`;
``python -m neuralnumerics`` is the same.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__

__all__ = ["main"]


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuralnumerics", description="Neural and classical numerical methods.")
    parser.add_argument("--version", action="version", version=f"neuralnumerics {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list scenarios, integrators and optimizers")
    run = sub.add_parser("run", help="run a scenario into a run directory",
                         description="Run a scenario. Scenario options (see `neuralnumerics list`) go after "
                                     "the scenario name as --option value.")
    run.add_argument("scenario")
    run.add_argument("--steps", type=int, help="number of time steps (default: the scenario's)")
    run.add_argument("--dt", type=float, help="time step (default: the scenario's)")
    run.add_argument("--seed", type=int, default=0, help="fixes the whole run (default 0)")
    run.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    run.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                     help="of the fields (default float64: the per-step fits converge in fewer iterations)")
    run.add_argument("--method", help="insr, or a classical baseline such as grid (default: the scenario's first)")
    run.add_argument("--integrator", help="time integrator (default: the scenario's)")
    run.add_argument("--optimizer", help="per-step optimizer: lm, lbfgs or adam (default: the scenario's)")
    run.add_argument("--max-fit-iters", type=int, help="iteration cap of each per-step fit")
    run.add_argument("--rtol", type=float, help="relative residual tolerance of each fit (default 1e-5)")
    run.add_argument("--frame-every", type=int, help="write a frame every N steps (default: about 60 frames)")
    run.add_argument("--checkpoint-every", type=int,
                     help="checkpoint every N steps (default: the scenario's; 1 for simulations)")
    run.add_argument("--threads", type=_threads, help="CPU threads for torch and BLAS")
    run.add_argument("--out", help="run directory (default runs/SCENARIO)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")

    solve = sub.add_parser("solve", help="solve a linear system with several solvers and compare them",
                           description="Solve a pressure Poisson system (tank: walls, an open top, an obstacle and "
                                       "a smooth random right-hand side; smoke: a step of a smoke plume rising "
                                       "past an obstacle) with each listed solver; print a summary and, with "
                                       "--out, write summary.json, residuals.png and solution.png.")
    solve.add_argument("problem", choices=["tank", "smoke"], help="the system to solve")
    solve.add_argument("--grid", default="128x128", help="cells per axis, e.g. 128x128 or 32x32x32")
    solve.add_argument("--obstacle", choices=["disc", "sphere", "box", "blob", "none"],
                       help="tank: disc, box or none (default disc); smoke: sphere, box, blob or none (default "
                            "sphere)")
    solve.add_argument("--step", type=int, default=10, help="smoke: the time step whose system is solved")
    solve.add_argument("--model", help="the DCDM model file for --solver dcdm (from `neuralnumerics train dcdm`)")
    solve.add_argument("--closed", action="store_true", help="no open top (a singular, consistent system)")
    solve.add_argument("--solver", default="cg,cg+jacobi,cg+ic,gmres",
                       help="comma-separated SOLVER[+PRECONDITIONER] (solvers: cg, gmres, dcdm; "
                            "preconditioners: jacobi, ic, amg)")
    solve.add_argument("--rtol", type=float, default=1e-6, help="relative residual tolerance (default 1e-6)")
    solve.add_argument("--max-iters", type=int, help="iteration cap of each solve")
    solve.add_argument("--seed", type=int, default=0, help="fixes the right-hand side")
    solve.add_argument("--device", choices=["cpu", "cuda"], help="default cpu")
    solve.add_argument("--threads", type=_threads, help="CPU threads for torch and BLAS")
    solve.add_argument("--out", help="folder for summary.json and the pictures")

    seq = sub.add_parser("sequence", help="solve a generated sequence of PDE systems (SKR, bandit SOR, ...)",
                         description="Generate a family of related PDE linear systems and solve the sequence with "
                                     "each listed solver: recycling ones (gcrodr, recycled-cg) and bandit-sor carry "
                                     "their state from system to system, in SKR's sorted order unless --no-sort.")
    seq.add_argument("family", choices=["darcy", "poisson", "helmholtz", "heat"])
    seq.add_argument("--count", type=int, default=50, help="number of systems (default 50)")
    seq.add_argument("--grid", type=int, default=32, help="cells per side of the square grid (default 32)")
    seq.add_argument("--solver", default="gcrodr,gmres",
                     help="comma-separated: gcrodr, recycled-cg, gmres, cg, bandit-sor (default gcrodr,gmres)")
    seq.add_argument("--no-sort", action="store_true", help="solve in the generated order")
    seq.add_argument("--rtol", type=float, default=1e-6)
    seq.add_argument("--seed", type=int, default=0, help="fixes the family")
    seq.add_argument("--threads", type=_threads, help="CPU threads for torch and BLAS")
    seq.add_argument("--out", help="folder for summary.json and iterations.png")
    seq.add_argument("--quiet", action="store_true", help="no progress bar")

    train = sub.add_parser("train", help="train a learned solver (dcdm) into a run directory",
                           description="Train DCDM's network on the pressure matrix of the smoke box (walls, open "
                                       "top) from Ritz-vector right-hand sides, with checkpoints and --resume; "
                                       "OUT/model.pt is loadable with DCDM(model=...) and `solve --model`.")
    train.add_argument("method", choices=["dcdm"])
    train.add_argument("--grid", default="64x64", help="training grid, e.g. 64x64 or 16x16x16 (default 64x64)")
    train.add_argument("--eval-grid", help="evaluate each epoch at this larger grid of the same scene (e.g. "
                       "128x128) and keep the epoch that solves it best as model.pt (the last is model_last.pt)")
    train.add_argument("--obstacle", default="none", choices=["none", "sphere", "box", "blob"],
                       help="obstacle in the training matrix (default none: the paper's empty box)")
    train.add_argument("--closed", action="store_true", help="closed top (a singular training matrix)")
    train.add_argument("--epochs", type=int, help="passes over the training set (default 1)")
    train.add_argument("--minutes", type=float, help="stop after this many minutes (resumable with --resume)")
    train.add_argument("--samples", type=int, help="size of the fixed training set (paper 20000; 0: a fresh "
                                                   "vector for every batch entry, epochs of 1000 batches)")
    train.add_argument("--batch-size", type=int, help="batch size (paper 10)")
    train.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3; the paper's 1e-4 is slow on a CPU)")
    train.add_argument("--lr-schedule", choices=["constant", "cosine"],
                       help="constant (the paper's) or cosine decay to lr/100 over the epochs")
    train.add_argument("--lanczos-steps", type=int, help="Lanczos steps for the Ritz basis (default min(n, 1000))")
    train.add_argument("--theta", type=int, help="the lowest steps/2 + theta Ritz vectors get 9x weight "
                                                 "(default 5%% of the steps)")
    train.add_argument("--width", type=int, help="channels of the network (paper 16)")
    train.add_argument("--large", action="store_true", help="the paper's deeper '128' network (3/5/3 blocks)")
    train.add_argument("--init", help="start from this saved model (fine-tuning)")
    train.add_argument("--checkpoint-every", type=int, default=200, help="batches between checkpoints")
    train.add_argument("--seed", type=int, default=0, help="fixes data, order and initial weights")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    train.add_argument("--threads", type=_threads, help="CPU threads for torch and BLAS")
    train.add_argument("--out", help="run directory (default runs/dcdm-GRID)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _set_threads(n: int) -> None:
    """``--threads``: torch's intra-op threads, and SciPy's BLAS (the fits' Gram matrices) as well."""
    from ._threads import set_threads

    set_threads(n)


def _eval_grid(text: str) -> tuple[int, ...]:
    from .io.linsolve import grid_shape

    try:
        return grid_shape(text)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--grid", "--eval-grid")) from None


def _train(parser, args, extra) -> int:
    from .io import RunDirError
    from .io.dcdm_runs import train_dcdm_run
    from .io.linsolve import grid_shape
    from .linalg.dcdm_training import DCDMTrainConfig

    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.threads:
        _set_threads(args.threads)
    try:
        grid = grid_shape(args.grid)
        fields = {"epochs": args.epochs, "samples": args.samples, "batch_size": args.batch_size, "lr": args.lr,
                  "lr_schedule": args.lr_schedule,
                  "lanczos_steps": args.lanczos_steps, "theta": args.theta, "width": args.width}
        if args.large:
            fields.update(pre_blocks=3, mid_blocks=5, post_blocks=3)
        config = DCDMTrainConfig(**{k: v for k, v in fields.items() if v is not None})
        out = args.out or f"runs/dcdm-{args.grid}"
        summary = train_dcdm_run(out, grid=grid, obstacle=args.obstacle, open_top=not args.closed, config=config,
                                 seed=args.seed, minutes=args.minutes, checkpoint_every=args.checkpoint_every,
                                 init=args.init, device=args.device, resume=args.resume, overwrite=args.overwrite,
                                 progress=not args.quiet,
                                 eval_grid=None if args.eval_grid is None else _eval_grid(args.eval_grid))
    except (ValueError, RunDirError, FileNotFoundError, ImportError) as exc:
        print(f"neuralnumerics: error: {exc}", file=sys.stderr)
        return 2
    ev = summary["evaluation"]
    state = "finished" if summary["finished"] else "stopped by --minutes (continue with --resume)"
    print(f"dcdm {args.grid}: {summary['epochs_done']}/{summary['epochs']} epochs, {state}; validation loss "
          f"{summary['final_validation_loss']}")
    print("  evaluation system to rtol {:g}: ".format(ev["rtol"])
          + ", ".join(f"{k} {v['iterations']} iterations" for k, v in ev.items() if isinstance(v, dict)))
    if summary["model"]:
        print(f"written: {summary['model']} (use: neuralnumerics solve smoke --solver dcdm --model {summary['model']})")
    return 0


def _scenario_options(scenario, extra: list[str]) -> dict:
    """Parse ``--name value`` pairs against the scenario's options."""
    parser = argparse.ArgumentParser(prog=f"neuralnumerics run {scenario.name}", add_help=False)
    for opt in scenario.options:
        parser.add_argument("--" + opt.name.replace("_", "-"), dest=opt.name, type=opt.type, choices=opt.choices,
                            default=argparse.SUPPRESS, help=opt.help)
    values, unknown = parser.parse_known_args(extra)
    if unknown:
        names = ", ".join("--" + o.name.replace("_", "-") for o in scenario.options) or "(none)"
        raise ValueError(f"unknown argument(s) {' '.join(unknown)} for scenario {scenario.name!r}; "
                         f"its options are {names}")
    return vars(values)


def _list() -> None:
    from .pde.fit import OPTIMIZERS
    from .pde.integrators import INTEGRATORS
    from .scenarios import SCENARIOS

    print("scenarios:")
    for sc in SCENARIOS.values():
        print(f"  {sc.name:<22} {sc.description}")
        print(f"  {'':<22} methods: {', '.join(sc.methods)}; defaults: "
              + ", ".join(f"{k}={v}" for k, v in sc.defaults.items()))
        for opt in sc.options:
            choices = f" {{{', '.join(opt.choices)}}}" if opt.choices else ""
            print(f"  {'':<24}--{opt.name.replace('_', '-'):<18} {opt.help} (default {opt.default}){choices}")
    print("integrators:")
    for name, cls in INTEGRATORS.items():
        print(f"  {name:<22} order {cls.order}  {cls.description}")
    print("optimizers:")
    for name, text in OPTIMIZERS.items():
        print(f"  {name:<22} {text}")


def _solve(parser, args, extra) -> int:
    from .io.linsolve import grid_shape, solve_system

    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.threads:
        _set_threads(args.threads)
    try:
        summary = solve_system(args.problem, grid_shape(args.grid), solvers=args.solver, obstacle=args.obstacle,
                               open_top=not args.closed, rtol=args.rtol, max_iters=args.max_iters, seed=args.seed,
                               step=args.step, model=args.model, device=args.device, out=args.out)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"neuralnumerics: error: {exc}", file=sys.stderr)
        return 2
    p = summary["problem"]
    print(f"{args.problem} {args.grid}: {p['unknowns']} unknowns, obstacle {p['obstacle']}, "
          f"{'open top' if p['open_top'] else 'closed (singular)'}, rtol {p['rtol']:g}")
    print(f"  {'solver':<14}{'status':<11}{'iterations':>11}{'setup s':>10}{'solve s':>10}{'residual':>11}")
    for s in summary["solves"]:
        print(f"  {s['solver']:<14}{s['status']:<11}{s['iterations']:>11}{s['setup_seconds']:>10.3f}"
              f"{s['seconds']:>10.3f}{s['relative_residual']:>11.2e}")
    if args.out:
        print(f"written: {args.out}/summary.json, residuals.png, solution.png")
    return 0 if all(s["status"] == "success" for s in summary["solves"]) else 1


def _sequence(parser, args, extra) -> int:
    from .io.linsolve import solve_family

    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.threads:
        _set_threads(args.threads)
    try:
        summary = solve_family(args.family, count=args.count, grid=args.grid, solvers=args.solver,
                               sort=not args.no_sort, rtol=args.rtol, seed=args.seed, out=args.out,
                               progress=not args.quiet)
    except (ValueError, ImportError) as exc:
        print(f"neuralnumerics: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.family}: {summary['count']} systems of {summary['unknowns']} unknowns, "
          f"{'sorted' if summary['sorted'] else 'generated order'}, rtol {summary['rtol']:g}")
    print(f"  {'solver':<14}{'status':<11}{'iterations':>11}{'per system':>12}{'seconds':>10}")
    for s in summary["solves"]:
        print(f"  {s['solver']:<14}{s['status']:<11}{s['iterations']:>11}{s['iterations'] / summary['count']:>12.1f}"
              f"{s['seconds']:>10.2f}")
        for line in s["messages"][:3]:
            print(f"    {line}")
    if args.out:
        print(f"written: {args.out}/summary.json, iterations.png")
    return 0 if all(s["status"] == "success" for s in summary["solves"]) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuralnumerics`` command; returns the exit code."""
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "list":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        _list()
        return 0


    if args.command == "solve":
        return _solve(parser, args, extra)
    if args.command == "sequence":
        return _sequence(parser, args, extra)
    if args.command == "train":
        return _train(parser, args, extra)

    from ._status import StepDivergedError
    from .io import RunDirError, run_scenario
    from .scenarios import get_scenario

    try:
        scenario = get_scenario(args.scenario)
        options = _scenario_options(scenario, extra)
        if args.threads:
            _set_threads(args.threads)
        summary = run_scenario(
            args.scenario, out=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
            steps=args.steps, dt=args.dt, seed=args.seed, device=args.device, dtype=args.dtype,
            method=args.method, integrator=args.integrator, optimizer=args.optimizer,
            max_fit_iters=args.max_fit_iters, rtol=args.rtol, frame_every=args.frame_every,
            checkpoint_every=args.checkpoint_every, options=options)
    except (ValueError, RunDirError, FileNotFoundError, ImportError) as exc:
        print(f"neuralnumerics: error: {exc}", file=sys.stderr)
        return 2
    except StepDivergedError as exc:
        print(f"neuralnumerics: {exc}\nThe steps before it are kept in the run directory.", file=sys.stderr)
        return 1
    if not args.quiet:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

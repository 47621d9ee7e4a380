"""Command line: ``neuralnumerics list`` and ``neuralnumerics run SCENARIO [...]``.

A thin layer over :func:`neuralnumerics.io.run_scenario`; ``python -m neuralnumerics`` is the same.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__

__all__ = ["main"]


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
    run.add_argument("--method", default="insr", help="insr, or a classical baseline such as grid")
    run.add_argument("--integrator", help="time integrator (default: the scenario's)")
    run.add_argument("--optimizer", help="per-step optimizer: lm, lbfgs or adam (default: the scenario's)")
    run.add_argument("--max-fit-iters", type=int, help="iteration cap of each per-step fit")
    run.add_argument("--rtol", type=float, help="relative residual tolerance of each fit (default 1e-5)")
    run.add_argument("--frame-every", type=int, help="write a frame every N steps (default: about 60 frames)")
    run.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint every N steps (default 1)")
    run.add_argument("--threads", type=int, help="CPU threads for torch")
    run.add_argument("--out", help="run directory (default runs/SCENARIO)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuralnumerics`` command; returns the exit code."""
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "list":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        _list()
        return 0

    import torch

    from ._status import StepDivergedError
    from .io import RunDirError, run_scenario
    from .scenarios import get_scenario

    try:
        scenario = get_scenario(args.scenario)
        options = _scenario_options(scenario, extra)
        if args.threads:
            torch.set_num_threads(args.threads)
        summary = run_scenario(
            args.scenario, out=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
            steps=args.steps, dt=args.dt, seed=args.seed, device=args.device, dtype=args.dtype,
            method=args.method, integrator=args.integrator, optimizer=args.optimizer,
            max_fit_iters=args.max_fit_iters, rtol=args.rtol, frame_every=args.frame_every,
            checkpoint_every=args.checkpoint_every, options=options)
    except (ValueError, RunDirError) as exc:
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

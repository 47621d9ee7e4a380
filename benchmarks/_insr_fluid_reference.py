"""Run the INSR reference implementation's 2D Taylor-Green fluid example for benchmarking.

The reference is the authors' code for Chen et al., ICML 2023 ("Implicit Neural Spatial
Representations for Time-dependent PDEs"), github.com/honglin-c/INSR-PDE. As for the advection
benchmark (``_insr_reference.py``), none of its code lives in this repository: the caller supplies the
path of a local checkout, which is copied into a scratch directory, patched there for a CPU-only
PyTorch by :func:`_insr_reference.patch_reference_copy`, and driven in a subprocess by a small driver
script generated below.

Public entry point: :func:`run_reference_fluid`, returning a :class:`ReferenceFluidRun`.

What the driver measures, after the initial fit (step 0) and after each time step, on the reference's
own velocity network (float32, as the reference runs) at the cell centres of an ``n x n`` grid of
``[-1, 1]^2`` (``n = 128`` by default; the same points and definitions as
:func:`neuralnumerics.pde.fluid.flow_diagnostics` on the Taylor-Green problem, which has no obstacle):

``error``
    ``||u - u_TG||_2 / ||u_TG||_2`` over all points and both components, with the analytic steady
    Taylor-Green velocity ``u_TG = (sin(pi(x+1)) cos(pi(y+1)), -cos(pi(x+1)) sin(pi(y+1))) / pi``
    (the reference's ``taylorgreen_velocity(..., rescale=True)``);
``rms_divergence``
    root mean square of ``du/dx + dv/dy`` of the network, by autograd;
``kinetic_energy``
    ``0.5 * mean(|u|^2) * 4`` (the box's area is 4);
``energy_ratio``
    ``kinetic_energy / (1 / pi^2)``, the analytic energy of the initial condition.

Wall times: ``seconds`` is the wall time of the reference's ``model.initialize()`` or ``model.step()``
as written (``time.perf_counter``), so it includes the reference's per-iteration tensorboard scalars,
its matplotlib figures at the first and every 1000th iteration, and its checkpoint write; the driver's
evaluation is timed separately (``eval_seconds``). Per stage (``stages``), the driver wraps the
model's own training-loop methods on the instance (``_initialize``, ``_advect_velocity``,
``_solve_pressure``, ``_projection``; the reference's source is not changed for this) and records each
loop's wall time, its Adam iteration count (``model.train_step``), its final learning rate and its
last ``main`` loss.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from _insr_reference import (DRIVER_PREAMBLE, check_checkout, manual_parser, missing_modules,  # noqa: E402
                             patch_reference_copy, run_driver, scratch_copy)

__all__ = ["run_reference_fluid", "ReferenceFluidRun", "reference_argv", "REFERENCE_CONFIG",
           "REFERENCE_DEPENDENCIES", "ANALYTIC_ENERGY"]

#: The command line of the reference's ``scripts/fluid2Dtlgn.sh`` (less ``--tag``, ``-g``, which this
#: harness sets itself, and ``-T``, the number of steps). ``-sr 128`` means 128^2 = 16384 fresh random
#: points at every Adam iteration; ``-vr 32`` is the resolution of its tensorboard figures.
REFERENCE_CONFIG: dict[str, Any] = {
    "init_cond": "taylorgreen",
    "num_hidden_layers": 3,
    "hidden_features": 32,
    "sample_resolution": 128,
    "vis_resolution": 32,
    "dt": 0.05,
}

#: Modules the reference imports on the way to its fluid model (besides torch and numpy).
REFERENCE_DEPENDENCIES = ("tensorboardX", "tqdm", "matplotlib", "scipy", "PIL")

#: Kinetic energy of the analytic Taylor-Green field on [-1, 1]^2: 0.5 * (1 / (2 pi^2)) * 4.
ANALYTIC_ENERGY = 1.0 / math.pi ** 2

_SCRIPT_NAME = "_neuralnumerics_fluid_driver.py"
_TAG = "fluid2d_tlgn"


@dataclass
class ReferenceFluidRun:
    """What :func:`run_reference_fluid` returns.

    Attributes:
        records: one dict per completed call, step 0 being the initial fit::

            {"step": int, "t": float, "seconds": float, "eval_seconds": float,
             "error": float, "rms_divergence": float, "kinetic_energy": float, "energy_ratio": float,
             "stages": {name: {"seconds": float, "iters": int, "lr": float, "loss": float}}}

            with stage names ``initialize`` (step 0) or ``advect``, ``pressure``, ``projection``.
        requested: calls asked for (``steps + 1``).
        patches: one human-readable line per patch applied to the scratch copy.
        argv: the reference's command line as the driver passed it to its ``Config``.
        max_iters: the per-loop iteration cap passed as ``--max_n_iters`` (``None``: the reference's
            default, 20000).
        returncode: the driver's exit status (``None`` if it never started).
        timed_out: whether ``timeout`` stopped it.
        wall_seconds: wall time of the whole subprocess (start-up, every call and every evaluation).
        log_tail: the last few thousand characters of its stdout/stderr (configuration dump, tqdm bars).
        workdir: the kept scratch directory, or ``None`` when a temporary one was removed.
        error: why the run could not start (missing dependency, ...), else ``None``.
    """

    records: list[dict] = field(default_factory=list)
    requested: int = 0
    patches: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    max_iters: int | None = None
    returncode: int | None = None
    timed_out: bool = False
    wall_seconds: float | None = None
    log_tail: str = ""
    workdir: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the driver ran every requested call and exited normally."""
        return (self.error is None and not self.timed_out and self.returncode == 0
                and len(self.records) == self.requested)

    def failure(self) -> str | None:
        """One line saying why the run stopped early, or ``None``."""
        if self.error is not None:
            return self.error
        if self.ok:
            return None
        how = "timed out" if self.timed_out else f"exited with code {self.returncode}"
        tail = [ln.strip() for ln in self.log_tail.replace("\r", "\n").splitlines() if ln.strip()][-3:]
        return (f"driver {how} after {len(self.records)} of {self.requested} call(s)"
                + (f"; log: {' / '.join(tail)}" if tail else ""))


def reference_argv(proj_dir: str, steps: int, max_iters: int | None = None) -> list[str]:
    """The reference's command line: ``scripts/fluid2Dtlgn.sh`` with ``-T steps`` and ``--proj_dir``.

    ``-g 0`` only sets ``CUDA_VISIBLE_DEVICES`` (the patched copy runs on the CPU either way).
    ``max_iters`` adds ``--max_n_iters`` (the reference's own option; default 20000 per loop).
    """
    c = REFERENCE_CONFIG
    argv = ["fluid", "--proj_dir", str(proj_dir), "--tag", _TAG,
            "--init_cond", c["init_cond"],
            "--num_hidden_layers", str(c["num_hidden_layers"]),
            "--hidden_features", str(c["hidden_features"]),
            "-sr", str(c["sample_resolution"]),
            "-vr", str(c["vis_resolution"]),
            "--dt", repr(float(c["dt"])),
            "-T", str(steps),
            "-g", "0"]
    if max_iters is not None:
        argv += ["--max_n_iters", str(int(max_iters))]
    return argv


# --------------------------------------------------------------------------- #
# driver (our own code, written into the scratch directory)
# --------------------------------------------------------------------------- #
_DRIVER = '''"""Generated by neuralnumerics benchmarks/_insr_fluid_reference.py: drive the INSR reference's
2D Taylor-Green fluid example step by step and log timings and flow diagnostics as JSON lines."""
''' + DRIVER_PREAMBLE + textwrap.dedent(
    '''\
    from fluid import Fluid2DModel

    cfg = Config("train")
    model = Fluid2DModel(cfg)

    # -- per-stage instrumentation: wrap the model's training loops on the instance ------------------
    stages = {}
    last_loss = {}

    def wrap_update(orig):
        def update(loss_dict):
            last_loss["main"] = loss_dict["main"]
            return orig(loss_dict)
        return update

    model._update_network = wrap_update(model._update_network)

    def wrap_stage(name, orig):
        def stage(*args, **kwargs):
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            stages[name] = {
                "seconds": time.perf_counter() - t0,
                "iters": int(model.train_step),
                "lr": float(model.optimizer.param_groups[0]["lr"]),
                "loss": float(last_loss["main"]) if "main" in last_loss else None,
            }
            return out
        return stage

    for method, name in (("_initialize", "initialize"), ("_advect_velocity", "advect"),
                         ("_solve_pressure", "pressure"), ("_projection", "projection")):
        setattr(model, method, wrap_stage(name, getattr(model, method)))

    # -- diagnostics on the cell centres of an n x n grid of [-1, 1]^2 -------------------------------
    n = spec["eval_resolution"]
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1).reshape(-1, 2)
    a, b = math.pi * (grid[:, 0] + 1), math.pi * (grid[:, 1] + 1)
    exact = torch.stack([torch.sin(a) * torch.cos(b), -torch.cos(a) * torch.sin(b)], dim=1) / math.pi
    energy0 = 1.0 / math.pi ** 2

    def diagnostics():
        x = grid.to(dtype=torch.float32, device=model.device).requires_grad_(True)
        u = model.velocity_field(x)
        div = 0.0
        for i in range(2):
            g = torch.autograd.grad(u[:, i].sum(), x, retain_graph=(i == 0))[0]
            div = div + g[:, i]
        u = u.detach().double().cpu()
        div = div.detach().double().cpu()
        energy = float(0.5 * u.square().sum(1).mean() * 4.0)
        return {
            "error": float((u - exact).norm() / exact.norm()),
            "rms_divergence": float(div.square().mean().sqrt()),
            "kinetic_energy": energy,
            "energy_ratio": energy / energy0,
        }

    with open(spec["out"], "a") as out:
        for k in range(spec["steps"] + 1):
            stages.clear()
            t0 = time.perf_counter()
            if k == 0:
                model.initialize()
            else:
                model.step()
            seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            rec = {"step": model.timestep, "t": model.timestep * cfg.dt, "seconds": seconds,
                   "stages": dict(stages)}
            rec.update(diagnostics())
            rec["eval_seconds"] = time.perf_counter() - t1
            out.write(json.dumps(rec) + "\\n")
            out.flush()
            os.fsync(out.fileno())
    '''
)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def missing_dependencies(python: str = sys.executable, env: dict[str, str] | None = None) -> list[str]:
    """The modules of :data:`REFERENCE_DEPENDENCIES` that ``python`` (with ``env``) cannot import."""
    return missing_modules(REFERENCE_DEPENDENCIES, python, env)


def _check_checkout(ref_path: Path) -> None:
    needed = ("base/baseModel.py", "fluid/model.py", "fluid/examples.py", "config.py")
    check_checkout(ref_path, needed)


# --------------------------------------------------------------------------- #
# public entry point
# --------------------------------------------------------------------------- #
def run_reference_fluid(
    ref_path: str | os.PathLike,
    steps: int,
    *,
    threads: int = 1,
    timeout: float | None = None,
    max_iters: int | None = None,
    workdir: str | os.PathLike | None = None,
    seed: int | None = None,
    eval_resolution: int = 128,
    python: str = sys.executable,
    progress: Callable[[dict], None] | None = None,
    poll_seconds: float = 2.0,
) -> ReferenceFluidRun:
    """Run the reference's Taylor-Green fluid example (``scripts/fluid2Dtlgn.sh``) step by step.

    The checkout at ``ref_path`` is never modified: it is copied to ``<workdir>/INSR-PDE``
    (``workdir`` defaults to a temporary directory removed afterwards; pass one to keep the copy, the
    driver, the JSON lines ``steps.jsonl`` and the log ``driver.log``) and the copy is patched by
    :func:`_insr_reference.patch_reference_copy` (the device, ``net.cuda()`` in ``save_ckpt`` and, on a
    torch that rejects it, the ``verbose`` keyword of ``ReduceLROnPlateau``; the fluid model itself
    needs no change: it creates every network and sample through ``BaseModel.device``).

    A generated driver builds the reference's ``Config`` / ``Fluid2DModel`` from the command line of
    ``scripts/fluid2Dtlgn.sh`` (:func:`reference_argv`: 3 hidden layers of 32, ``-sr 128``, ``-vr 32``,
    dt 0.05, Adam with lr 1e-4 and the reference's plateau schedule and early stop, up to 20000
    iterations per loop), calls ``model.initialize()`` and then ``model.step()`` ``steps`` times
    (advection, pressure and projection loops), and after each call appends one JSON line (see
    :class:`ReferenceFluidRun` and the module docstring). ``main.py``'s ``write_output`` (figures and a
    ``.npy`` of each step) is not called.

    Args:
        ref_path: local checkout of github.com/honglin-c/INSR-PDE.
        steps: time steps after the initial fit.
        threads: ``torch.set_num_threads`` in the driver, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.
        timeout: seconds for the whole run; on expiry the driver's process group is killed and the
            calls completed so far are returned (``timed_out`` set).
        max_iters: cap every training loop at this many Adam iterations (the reference's own
            ``--max_n_iters``). For smoke tests only: it is not the reference's configuration.
        workdir: keep the scratch copy and logs there (created; a previous ``checkpoints`` folder in it
            is removed, since the reference would otherwise ask on stdin whether to overwrite it).
        seed: optionally ``torch.manual_seed`` before the model is built (the reference does not seed).
        eval_resolution: the diagnostics use the cell centres of this ``n x n`` grid.
        python: interpreter for the driver; it must import torch and :data:`REFERENCE_DEPENDENCIES`.
        progress: called with each record as it arrives (the driver is polled every ``poll_seconds``).

    Returns:
        A :class:`ReferenceFluidRun`. A missing dependency is reported in its ``error`` (no exception),
        so that a benchmark can still print its other results.

    Raises:
        FileNotFoundError: if ``ref_path`` is not an INSR-PDE checkout.
        ValueError: on a negative ``steps`` or a non-positive ``max_iters``.
        RuntimeError: if a patch does not apply (the checkout differs from the one this was written for).
    """
    ref_path = Path(ref_path).resolve()
    _check_checkout(ref_path)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if max_iters is not None and int(max_iters) < 1:
        raise ValueError(f"max_iters must be positive, got {max_iters!r}")
    run = ReferenceFluidRun(requested=steps + 1, max_iters=None if max_iters is None else int(max_iters))

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1")
    missing = missing_dependencies(python, env)
    if missing:
        run.error = (f"the reference needs {', '.join(missing)}, which {python} cannot import "
                     f"(install with `pip install {' '.join(missing)}`, or put them on PYTHONPATH)")
        return run

    tmp, work, copy_dir, proj_dir = scratch_copy(ref_path, workdir, "insr_fluid_ref_")
    try:
        run.patches = patch_reference_copy(copy_dir, python=python)
        run.argv = reference_argv(str(proj_dir), steps, max_iters)

        out_path, log_path = work / "steps.jsonl", work / "driver.log"
        spec_path, driver_path = work / "driver_spec.json", work / _SCRIPT_NAME
        out_path.write_text("")
        driver_path.write_text(_DRIVER)
        spec_path.write_text(json.dumps({"ref_dir": str(copy_dir), "argv": run.argv, "steps": steps,
                                         "threads": threads, "seed": seed, "eval_resolution": eval_resolution,
                                         "out": str(out_path)}))

        run.returncode, run.timed_out, run.wall_seconds, run.records = run_driver(
            python, driver_path, spec_path, copy_dir, env, out_path, log_path, timeout=timeout,
            poll_seconds=poll_seconds, progress=progress)
        run.log_tail = log_path.read_text(errors="replace")[-4000:]
        run.workdir = None if tmp is not None else str(work)
        return run
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":  # small manual entry point
    ap = manual_parser(__doc__.splitlines()[0], steps=1)
    ap.add_argument("--max-iters", type=int, default=None)
    a = ap.parse_args()
    res = run_reference_fluid(a.ref_path, a.steps, threads=a.threads, max_iters=a.max_iters, workdir=a.workdir,
                              timeout=a.timeout, progress=lambda r: print(json.dumps(r), file=sys.stderr))
    print(json.dumps({"patches": res.patches, "argv": res.argv, "returncode": res.returncode,
                      "timed_out": res.timed_out, "error": res.error, "records": res.records}, indent=2))

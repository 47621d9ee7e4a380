"""Run the INSR reference implementation's 2D stretch elasticity example for benchmarking.

The reference is the authors' code for Chen et al., ICML 2023 ("Implicit Neural Spatial
Representations for Time-dependent PDEs"), github.com/honglin-c/INSR-PDE. As for the advection and
fluid benchmarks (``_insr_reference.py``, ``_insr_fluid_reference.py``), none of its code lives in this
repository: the caller supplies the path of a local checkout, which is copied into a scratch directory,
patched there for a CPU-only PyTorch (:func:`_insr_reference.patch_reference_copy` plus the elasticity
patches of :func:`patch_elasticity_copy`), and driven in a subprocess by a small driver script generated
below.

Public entry point: :func:`run_reference_elasticity`, returning a :class:`ReferenceElasticityRun`.

The example (the reference's ``scripts/elasticity2Dstretch.sh``, :data:`REFERENCE_CONFIG`): the square
``[-1, 1]^2`` is stretched quasi-statically by pinning its left edge (``u = 0``) and moving its right edge
by ``(2, 0)``. The reference represents the displacement ``u(X)`` by a SIREN (3 hidden layers of 68) and
takes one time step (``-T 1``): ``model.initialize()`` fits ``u = 0``, then ``model.step()`` minimises
the sum over sample points of ``(sigma_1 - 1)^2 + (sigma_2 - 1)^2`` (ARAP, weight 1) and
``1e3 (sigma_1 sigma_2 - 1)^2`` (volume), plus ``1e4`` times the summed squared constraint violations on
both edges, where ``sigma_i`` are the singular values of ``dq/dX`` with ``q = X + u(X)`` (the energy
terms are *sums*, not means, over the points). Each is an Adam loop (lr 1e-4) of up to 100000
iterations with the reference's ``ReduceLROnPlateau`` schedule (factor 0.1, patience 500) and early stop
once the learning rate reaches its floor.

Points per Adam iteration (``-sr 100``, the reference's default ``--sample_pattern random uniform``):
the step uses ``100^2`` fresh uniformly random points plus the ``100 x 100`` cell-centred grid (20000)
for the energies and ``100`` random plus ``100`` evenly spaced points on each of the two pinned edges;
the initial fit ignores ``-sr`` in 2D and uses ``500^2`` random points plus the ``500 x 500`` grid
(500000 points per iteration).

What the driver records, for ``initialize()`` and for the one ``step()`` (see
:class:`ReferenceElasticityRun`): the wall time of the reference's call as written
(``time.perf_counter``; it includes the reference's per-iteration tensorboard scalars, its matplotlib
figure at the first and every 1000th iteration of the step, and its checkpoint write), the Adam
iterations it ran (``model.train_step``), the final learning rate, the last ``main`` loss (the summed loss
of the last iteration, evaluated before that iteration's update on its own random points), when the
learning rate was reduced, and the plateau scheduler's state at the end. Every value of the loss is read
by wrapping ``model._update_network`` on the instance; the reference's source is not changed for this.

After the step the driver measures, on the reference's displacement network (float32, as the reference
runs), *our* diagnostics (our definitions, not the reference's, which logs only its summed loss):

``deformed``
    ``q = X + u(X)`` at the caller's ``points``;
``arap_density``
    mean over the cell centres of a uniform ``100 x 100`` grid of ``[-1, 1]^2`` of
    ``sum_i (sigma_i - 1)^2``, with ``sigma_i`` the singular values of the autograd Jacobian ``dq/dX``
    (the reference's ARAP integrand without its weight);
``volume_density``
    mean over the same grid of ``(sigma_1 sigma_2 - 1)^2`` (the reference's volume integrand without
    its weight);
``min_det``
    the smallest ``det(dq/dX)`` on that grid (negative: an inverted element);
``left_violation`` / ``right_violation``
    the largest ``|q - target|`` (Euclidean) over 200 evenly spaced points (cell centres in ``y``) of the
    left edge ``x = -1`` (target ``X``) and of the right edge ``x = 1`` (target ``X + (2, 0)``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from _insr_reference import (DRIVER_PREAMBLE, _read_jsonl, _substitute, check_checkout, manual_parser,  # noqa: E402
                             missing_modules, patch_reference_copy, run_driver, scratch_copy)

__all__ = ["run_reference_elasticity", "ReferenceElasticityRun", "reference_argv", "REFERENCE_CONFIG",
           "REFERENCE_DEPENDENCIES", "patch_elasticity_copy", "default_points", "missing_dependencies"]

#: The command line of the reference's ``scripts/elasticity2Dstretch.sh`` (less ``--tag`` and ``-g``,
#: which this harness sets itself; the script's ``--max_n_iter`` is argparse's abbreviation of
#: ``--max_n_iters``). ``-sr 100`` means 100^2 = 10000 fresh random points plus the 100 x 100 grid at every
#: Adam iteration of the step (see the module docstring); ``-vr 100`` is the resolution of its figures.
REFERENCE_CONFIG: dict[str, Any] = {
    "num_hidden_layers": 3,
    "hidden_features": 68,
    "sample_resolution": 100,
    "vis_resolution": 100,
    "n_timesteps": 1,
    "max_n_iters": 100000,
    "lr": 1e-4,
    "dim": 2,
    "energy": ("arap", "constraint", "constraint_right", "volume"),
    "ratio_volume": 1e3,
    "ratio_arap": 1e0,
    "ratio_constraint": 1e4,
    "constraint_right_offset_x": 2.0,
}

#: Modules the reference imports on the way to its elasticity model (besides torch and numpy).
#: ``open3d`` is not among them: the patched copy imports it only if available (see
#: :func:`patch_elasticity_copy`). ``sklearn`` is imported (unused) by its ``elasticity/visualize.py``.
REFERENCE_DEPENDENCIES = ("tensorboardX", "tqdm", "matplotlib", "PIL", "meshio", "sklearn")

#: Right-edge displacement of the stretch (``--constraint_right_offset_x 2.0``).
STRETCH = (2.0, 0.0)

_SCRIPT_NAME = "_neuralnumerics_elasticity_driver.py"
_TAG = "elasticity2D_stretch"
_POINTS_NAME = "eval_points.npy"
_DEFORMED_NAME = "deformed_points.npy"


def default_points(n: int = 100) -> np.ndarray:
    """Cell centres of a uniform ``n x n`` grid of ``[-1, 1]^2``, shape ``(n * n, 2)``, ``x`` slowest."""
    c = (np.arange(n, dtype=np.float64) + 0.5) / n * 2 - 1
    return np.stack(np.meshgrid(c, c, indexing="ij"), axis=-1).reshape(-1, 2)


@dataclass
class ReferenceElasticityRun:
    """What :func:`run_reference_elasticity` returns.

    Attributes:
        records: one dict per completed call, ``initialize`` first::

            {"call": "initialize" | "step", "timestep": int, "seconds": float, "iters": int,
             "lr": float, "loss": float,
             "lr_drops": [[iteration, new_lr], ...],   # 1-based Adam iteration after which lr fell
             "scheduler_best": float, "scheduler_bad_iters": int,
             "loss_trace": [[iteration, loss], ...]}   # every 100th iteration and the last

            and, for the step only, ``eval_seconds``, ``arap_density``, ``volume_density``, ``min_det``,
            ``left_violation``, ``right_violation`` (see the module docstring).
        snapshots: ``(iterations, seconds, q at points)`` taken during the step (``snapshot_every``).
        points: the ``(n, 2)`` points at which ``deformed`` was evaluated (float64).
        deformed: ``q = X + u(X)`` of the reference's network at ``points`` after the step, ``(n, 2)``
            float32, or ``None`` if the step did not complete.
        requested: calls asked for (2: the initial fit and one step).
        patches: one human-readable line per patch applied to the scratch copy.
        argv: the reference's command line as the driver passed it to its ``Config``.
        max_iters: the per-loop iteration cap passed as ``--max_n_iters`` (``None``: the configuration's
            100000).
        init_max_iters: the initial fit's own cap, if one was given (``None``: the same as the step's).
        returncode: the driver's exit status (``None`` if it never started).
        timed_out: whether ``timeout`` stopped it.
        wall_seconds: wall time of the whole subprocess (start-up, both calls and the evaluation).
        log_tail: the last few thousand characters of its stdout/stderr (configuration dump, tqdm bars).
        workdir: the kept scratch directory, or ``None`` when a temporary one was removed.
        error: why the run could not start (missing dependency, ...), else ``None``.
    """

    records: list[dict] = field(default_factory=list)
    snapshots: list = field(default_factory=list)
    points: np.ndarray | None = None
    deformed: np.ndarray | None = None
    requested: int = 2
    patches: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    max_iters: int | None = None
    init_max_iters: int | None = None
    returncode: int | None = None
    timed_out: bool = False
    wall_seconds: float | None = None
    log_tail: str = ""
    workdir: str | None = None
    error: str | None = None

    def record(self, call: str) -> dict | None:
        """The record of ``"initialize"`` or ``"step"``, or ``None`` if that call did not complete."""
        return next((r for r in self.records if r.get("call") == call), None)

    @property
    def ok(self) -> bool:
        """True when the driver ran both calls, wrote the deformed points and exited normally."""
        return (self.error is None and not self.timed_out and self.returncode == 0
                and len(self.records) == self.requested and self.deformed is not None)

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


def reference_argv(proj_dir: str, max_iters: int | None = None) -> list[str]:
    """The reference's command line: ``scripts/elasticity2Dstretch.sh`` with ``--proj_dir``.

    ``-g 0`` (the script says ``-g 1``) only sets ``CUDA_VISIBLE_DEVICES``; the patched copy runs on the
    CPU either way. ``max_iters`` replaces the configuration's ``--max_n_iters 100000`` (the cap of each of
    the two Adam loops).
    """
    c = REFERENCE_CONFIG
    return ["elasticity", "--proj_dir", str(proj_dir), "--tag", _TAG,
            "--num_hidden_layers", str(c["num_hidden_layers"]),
            "--hidden_features", str(c["hidden_features"]),
            "-sr", str(c["sample_resolution"]),
            "-vr", str(c["vis_resolution"]),
            "-T", str(c["n_timesteps"]),
            "-g", "0",
            "--max_n_iters", str(c["max_n_iters"] if max_iters is None else int(max_iters)),
            "--lr", repr(float(c["lr"])),
            "--dim", str(c["dim"]),
            "--energy", *c["energy"],
            "--ratio_volume", repr(float(c["ratio_volume"])),
            "--ratio_arap", repr(float(c["ratio_arap"])),
            "--ratio_constraint", repr(float(c["ratio_constraint"])),
            "--constraint_right_offset_x", repr(float(c["constraint_right_offset_x"]))]


# --------------------------------------------------------------------------- #
# patches specific to the elasticity model
# --------------------------------------------------------------------------- #
def patch_elasticity_copy(copy_dir: str | os.PathLike) -> list[str]:
    """Patch a *copy* of the reference's ``elasticity`` package for a CPU-only torch; return descriptions.

    Applied after :func:`_insr_reference.patch_reference_copy` (which sets ``BaseModel.device`` to the
    CPU). Each is an exact text substitution that raises ``RuntimeError`` unless the expected text occurs
    exactly as often as stated:

    1. ``elasticity/model.py``, ``_init_params``: the external force, the right-edge offset and the
       collision circle's centre are built with ``torch.tensor([...])[0:self.dim].cuda()`` (3 places);
       ``.cuda()`` becomes ``.to(self.device)``.
    2. ``elasticity/model.py``, ``_sample_fixed_in_training``: the pinned-edge samples are created on
       ``self.device`` and then moved with ``.cuda()`` (4 places); that becomes ``.to(self.device)``.
    3. ``elasticity/visualize.py``: ``import open3d as o3d`` becomes an import that leaves ``o3d = None``
       when open3d is absent. open3d is used only by ``write_pointcloud_to_file`` (``main.py``'s
       ``write_output``), which the driver does not call.

    The ``.cuda()`` calls on the mesh path (``use_mesh``) and in the collision losses are not reached by
    this configuration and are left alone. Nothing else is changed.
    """
    ela = Path(copy_dir) / "elasticity"
    model, vis = ela / "model.py", ela / "visualize.py"
    patches: list[str] = []

    _substitute(model, "[0:self.dim].cuda()", "[0:self.dim].to(self.device)", count=3)
    patches.append(
        "elasticity/model.py: _init_params moves the external force, the right-edge offset and the circle "
        "centre to the GPU with .cuda() (3 places); replaced by .to(self.device) (no CUDA on this machine).")

    _substitute(model, "_fixed_samples.cuda().requires_grad_(True))",
                "_fixed_samples.to(self.device).requires_grad_(True))", count=2)
    _substitute(model, "_fixed_samples_right.cuda().requires_grad_(True))",
                "_fixed_samples_right.to(self.device).requires_grad_(True))", count=2)
    patches.append(
        "elasticity/model.py: _sample_fixed_in_training moves the left/right edge samples to the GPU with "
        ".cuda() (4 places); replaced by .to(self.device).")

    _substitute(vis, "import open3d as o3d\n",
                "try:  # patched by neuralnumerics: open3d is optional here\n"
                "    import open3d as o3d\n"
                "except ImportError:\n"
                "    o3d = None\n")
    patches.append(
        "elasticity/visualize.py: `import open3d` made optional (o3d = None when absent); open3d is only "
        "used to write .ply point clouds in write_output, which the driver does not call.")
    return patches


# --------------------------------------------------------------------------- #
# driver (our own code, written into the scratch directory)
# --------------------------------------------------------------------------- #
_DRIVER = '''"""Generated by neuralnumerics benchmarks/_insr_elasticity_reference.py: drive the INSR reference's
2D stretch elasticity example (initial fit and one step) and log timings and diagnostics as JSON lines."""
''' + DRIVER_PREAMBLE + textwrap.dedent(
    '''\
    import numpy as np
    from elasticity import ElasticityModel

    cfg = Config("train")
    model = ElasticityModel(cfg)

    # -- instrumentation: wrap the model's update on the instance ------------------------------------
    trace = {}

    def reset_trace():
        trace.update(loss=None, lr_drops=[], loss_trace=[], snap_every=0, eval_time=0.0, t0=time.perf_counter())

    def wrap_update(orig):
        def update(loss_dict):
            before = model.optimizer.param_groups[0]["lr"]
            out = orig(loss_dict)
            it = model.train_step + 1  # the loop increments train_step after this call
            loss = float(loss_dict["main"])
            trace["loss"] = loss
            after = model.optimizer.param_groups[0]["lr"]
            if after != before:
                trace["lr_drops"].append([it, after])
            if it % 100 == 0:
                trace["loss_trace"].append([it, loss])
            if trace["snap_every"] and it % trace["snap_every"] == 0:
                # the deformation so far, at the caller's points; its cost is kept out of the step's time
                t1 = time.perf_counter()
                np.save(os.path.join(spec["snapshots"], "snap_%07d.npy" % it), deform(points).numpy())
                with open(os.path.join(spec["snapshots"], "snapshots.jsonl"), "a") as f:
                    f.write(json.dumps({"iters": it, "seconds": t1 - trace["t0"] - trace["eval_time"]}) + "\\n")
                trace["eval_time"] += time.perf_counter() - t1
            return out
        return update

    model._update_network = wrap_update(model._update_network)

    # -- our diagnostics ----------------------------------------------------------------------------
    points = torch.from_numpy(np.load(spec["points"]).astype(np.float32)).reshape(-1, 2)
    n = 100
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1).reshape(-1, 2)
    m = 200
    y = ((torch.arange(m, dtype=torch.float64) + 0.5) / m * 2 - 1).reshape(-1, 1)
    left = torch.cat([-torch.ones_like(y), y], dim=1)
    right = torch.cat([torch.ones_like(y), y], dim=1)
    offset = torch.tensor(spec["stretch"], dtype=torch.float64)

    def deform(x):
        x = x.to(dtype=torch.float32, device=model.device)
        with torch.no_grad():
            return (x + model.deformation_field(x)).cpu()

    def diagnostics():
        x = grid.to(dtype=torch.float32, device=model.device).requires_grad_(True)
        q = x + model.deformation_field(x)
        rows = [torch.autograd.grad(q[:, i].sum(), x, retain_graph=(i == 0))[0] for i in range(2)]
        jac = torch.stack(rows, dim=1).detach().double().cpu()  # (N, 2, 2): jac[k, i, j] = dq_i / dX_j
        sv = torch.linalg.svdvals(jac)
        return {
            "arap_density": float((sv - 1).square().sum(1).mean()),
            "volume_density": float((sv.prod(1) - 1).square().mean()),
            "min_det": float(torch.linalg.det(jac).min()),
            "left_violation": float((deform(left).double() - left).norm(dim=1).max()),
            "right_violation": float((deform(right).double() - (right + offset)).norm(dim=1).max()),
        }

    with open(spec["out"], "a") as out:
        for call in ("initialize", "step"):
            reset_trace()
            # the training loop reads its cap from the instance; the initial fit may have its own
            cap = spec["init_max_iters"] if call == "initialize" else None
            model.max_n_iters = cfg.max_n_iters if cap is None else cap
            trace["snap_every"] = spec["snapshot_every"] if call == "step" else 0
            t0 = trace["t0"] = time.perf_counter()
            if call == "initialize":
                model.initialize()
            else:
                model.step()
            seconds = time.perf_counter() - t0 - trace["eval_time"]
            last = trace["loss_trace"][-1][0] if trace["loss_trace"] else None
            if trace["loss"] is not None and last != model.train_step:
                trace["loss_trace"].append([int(model.train_step), trace["loss"]])
            sched = model.scheduler
            rec = {"call": call, "timestep": model.timestep, "seconds": seconds,
                   "iters": int(model.train_step), "lr": float(model.optimizer.param_groups[0]["lr"]),
                   "loss": trace["loss"], "lr_drops": trace["lr_drops"],
                   "scheduler_best": float(sched.best) if sched is not None else None,
                   "scheduler_bad_iters": int(sched.num_bad_epochs) if sched is not None else None,
                   "loss_trace": trace["loss_trace"], "snapshot_seconds": trace["eval_time"]}
            if call == "step":
                t1 = time.perf_counter()
                np.save(spec["deformed"], deform(points).numpy().astype(np.float32))
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
    needed = ("base/baseModel.py", "elasticity/model.py", "elasticity/losses.py", "elasticity/visualize.py",
              "config.py")
    check_checkout(ref_path, needed)


def _as_points(points) -> np.ndarray:
    arr = default_points() if points is None else np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
        raise ValueError(f"points must be an (n, 2) array with n >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("points must be finite")
    return arr


# --------------------------------------------------------------------------- #
# public entry point
# --------------------------------------------------------------------------- #
def run_reference_elasticity(
    ref_path: str | os.PathLike,
    *,
    threads: int = 1,
    timeout: float | None = None,
    max_iters: int | None = None,
    init_max_iters: int | None = None,
    workdir: str | os.PathLike | None = None,
    seed: int | None = None,
    points=None,
    snapshot_every: int = 0,
    python: str = sys.executable,
    progress: Callable[[dict], None] | None = None,
    poll_seconds: float = 2.0,
) -> ReferenceElasticityRun:
    """Run the reference's 2D stretch example (``scripts/elasticity2Dstretch.sh``): initial fit and one step.

    The checkout at ``ref_path`` is never modified: it is copied to ``<workdir>/INSR-PDE`` (``workdir``
    defaults to a temporary directory removed afterwards; pass one to keep the copy, the driver, the JSON
    lines ``steps.jsonl``, the points, the deformed points and the log ``driver.log``) and the copy is
    patched by :func:`_insr_reference.patch_reference_copy` (device, ``net.cuda()`` in ``save_ckpt`` and,
    on a torch that rejects it, the ``verbose`` keyword of ``ReduceLROnPlateau``) and by
    :func:`patch_elasticity_copy` (the elasticity model's own ``.cuda()`` calls and its open3d import).

    A generated driver builds the reference's ``Config`` / ``ElasticityModel`` from
    :func:`reference_argv`, calls ``model.initialize()`` and ``model.step()`` (``main.py``'s
    ``write_output``, figures and a ``.ply``, is not called), appends one JSON line per call and, after the
    step, saves ``q = X + u(X)`` at ``points`` (see :class:`ReferenceElasticityRun` and the module
    docstring).

    Args:
        ref_path: local checkout of github.com/honglin-c/INSR-PDE.
        threads: ``torch.set_num_threads`` in the driver, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.
        timeout: seconds for the whole run; on expiry the driver's process group is killed and the calls
            completed so far are returned (``timed_out`` set).
        max_iters: cap both Adam loops at this many iterations (the reference's own ``--max_n_iters``,
            100000 in this configuration). Below 2005 the reference's early stop cannot trigger (four
            learning-rate reductions, the first after at least 502 iterations and each next after 501 more).
        init_max_iters: cap the initial fit (``initialize()``) at this many iterations instead; the driver
            sets the model's ``max_n_iters`` attribute before each call (the reference's source is not
            changed). Not the reference's configuration either: the initial fit (500000 points per
            iteration) costs about ten times as much per iteration as the step, so a benchmark of the step
            may want to shorten it. ``None``: the same cap as the step.
        workdir: keep the scratch copy and logs there (created; a previous ``checkpoints`` folder in it is
            removed, since the reference would otherwise ask on stdin whether to overwrite it).
        seed: optionally ``torch.manual_seed`` before the model is built (the reference does not seed).
        points: ``(n, 2)`` array of reference positions ``X`` at which to return ``q = X + u(X)``
            (default :func:`default_points`, the cell centres of a ``100 x 100`` grid).
        python: interpreter for the driver; it must import torch, numpy and :data:`REFERENCE_DEPENDENCIES`.
        progress: called with each record as it arrives (the driver is polled every ``poll_seconds``).
        snapshot_every: every this many Adam iterations of the step, save ``q`` at ``points`` (the run's
            ``snapshots``: ``(iterations, seconds, q)``, with ``seconds`` the step's time so far less the
            snapshots' own cost, which is also left out of the step's ``seconds``); 0: none. Snapshots taken
            before a timeout are kept, so a benchmark can read how accurate the reference was after how long.

    Returns:
        A :class:`ReferenceElasticityRun`. A missing dependency is reported in its ``error`` (no exception),
        so that a benchmark can still print its other results.

    Raises:
        FileNotFoundError: if ``ref_path`` is not an INSR-PDE checkout.
        ValueError: on a non-positive ``threads``, ``max_iters``, ``init_max_iters``, ``timeout`` or
            ``poll_seconds``, or
            ``points`` that are not a finite ``(n, 2)`` array.
        RuntimeError: if a patch does not apply (the checkout differs from the one this was written for).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    for name, cap in (("max_iters", max_iters), ("init_max_iters", init_max_iters)):
        if cap is not None and (isinstance(cap, bool) or int(cap) != cap or int(cap) < 1):
            raise ValueError(f"{name} must be a positive integer, got {cap!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if not poll_seconds > 0:
        raise ValueError(f"poll_seconds must be positive, got {poll_seconds!r}")
    if isinstance(snapshot_every, bool) or int(snapshot_every) != snapshot_every or snapshot_every < 0:
        raise ValueError(f"snapshot_every must be a non-negative integer, got {snapshot_every!r}")
    pts = _as_points(points)
    ref_path = Path(ref_path).resolve()
    _check_checkout(ref_path)
    run = ReferenceElasticityRun(points=pts, max_iters=None if max_iters is None else int(max_iters),
                                 init_max_iters=None if init_max_iters is None else int(init_max_iters))

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1")
    missing = missing_dependencies(python, env)
    if missing:
        run.error = (f"the reference needs {', '.join(missing)}, which {python} cannot import "
                     f"(install with `pip install {' '.join(missing)}`, or put them on PYTHONPATH)")
        return run

    tmp, work, copy_dir, proj_dir = scratch_copy(ref_path, workdir, "insr_elasticity_ref_")
    try:
        run.patches = patch_reference_copy(copy_dir, python=python) + patch_elasticity_copy(copy_dir)
        run.argv = reference_argv(str(proj_dir), max_iters)

        out_path, log_path = work / "steps.jsonl", work / "driver.log"
        spec_path, driver_path = work / "driver_spec.json", work / _SCRIPT_NAME
        points_path, deformed_path = work / _POINTS_NAME, work / _DEFORMED_NAME
        out_path.write_text("")
        if deformed_path.exists():
            deformed_path.unlink()
        np.save(points_path, pts)
        snap_dir = work / "snapshots"
        if snap_dir.exists():
            shutil.rmtree(snap_dir)
        snap_dir.mkdir()
        driver_path.write_text(_DRIVER)
        spec_path.write_text(json.dumps({"ref_dir": str(copy_dir), "argv": run.argv, "threads": threads,
                                         "seed": seed, "init_max_iters": run.init_max_iters,
                                         "points": str(points_path),
                                         "deformed": str(deformed_path), "stretch": list(STRETCH),
                                         "snapshots": str(snap_dir), "snapshot_every": int(snapshot_every),
                                         "out": str(out_path)}))

        run.returncode, run.timed_out, run.wall_seconds, run.records = run_driver(
            python, driver_path, spec_path, copy_dir, env, out_path, log_path, timeout=timeout,
            poll_seconds=poll_seconds, progress=progress)
        if run.record("step") is not None and deformed_path.is_file():
            run.deformed = np.load(deformed_path)
        for row in _read_jsonl(snap_dir / "snapshots.jsonl") if (snap_dir / "snapshots.jsonl").is_file() else []:
            path = snap_dir / ("snap_%07d.npy" % row["iters"])
            if path.is_file():
                run.snapshots.append((int(row["iters"]), float(row["seconds"]), np.load(path)))
        run.log_tail = log_path.read_text(errors="replace")[-4000:]
        run.workdir = None if tmp is not None else str(work)
        return run
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":  # small manual entry point
    ap = manual_parser(__doc__.splitlines()[0], steps=1)
    ap.add_argument("--max-iters", type=int, default=None)
    ap.add_argument("--init-max-iters", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    if a.steps != 1:
        ap.error("the stretch example is one step (-T 1); --steps must be 1")
    res = run_reference_elasticity(a.ref_path, threads=a.threads, max_iters=a.max_iters,
                                   init_max_iters=a.init_max_iters, workdir=a.workdir,
                                   timeout=a.timeout, seed=a.seed,
                                   progress=lambda r: print(json.dumps(r), file=sys.stderr))
    print(json.dumps({"patches": res.patches, "argv": res.argv, "returncode": res.returncode,
                      "timed_out": res.timed_out, "error": res.error, "wall_seconds": res.wall_seconds,
                      "records": res.records,
                      "deformed_shape": None if res.deformed is None else list(res.deformed.shape)}, indent=2))

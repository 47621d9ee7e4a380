"""Run the INSR reference implementation's 1D advection example for benchmarking.

The reference is the authors' code for Chen et al., ICML 2023 ("Implicit Neural
Spatial Representations for Time-dependent PDEs"), github.com/honglin-c/INSR-PDE.
None of its code lives in this repository: the caller supplies the path of a
local checkout (``ref_path``), which is copied into a scratch directory, patched
there with the few text substitutions needed to run it on a CPU-only PyTorch,
and driven in a subprocess by a small driver script generated below.

Public entry point: :func:`run_reference_advection`.

After each call the module-level attributes below describe the run:

``last_patches``
    list of human-readable strings, one per patch applied to the scratch copy.
``last_run_info``
    dict with ``patches``, ``returncode``, ``timed_out``, ``workdir`` (``None``
    when a temporary directory was used and removed), ``log_tail`` (the last
    few thousand characters of the driver's stdout/stderr, which include the
    reference's tqdm bars) and ``torch_accepts_verbose``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = [
    "run_reference_advection",
    "patch_reference_copy",
    "exact_solution",
    "default_eval_points",
    "last_patches",
    "last_run_info",
]

#: Patches applied by the most recent call (see module docstring).
last_patches: list[str] = []
#: Details of the most recent call (see module docstring).
last_run_info: dict[str, Any] = {}

# Problem constants of the reference's advection example ("example1"):
# velocity 0.25 (config default --vel), domain [-2, 2] (config default -L 4),
# initial Gaussian centred at -1.5 with sigma 0.1 (advection/examples.py).
VELOCITY = 0.25
HALF_LENGTH = 2.0
MU = -1.5
SIGMA = 0.1

_SCRIPT_NAME = "_neuralnumerics_driver.py"


# --------------------------------------------------------------------------- #
# exact solution / evaluation grid
# --------------------------------------------------------------------------- #
def default_eval_points(n: int = 2000) -> list[float]:
    """Uniform cell-centred grid of ``n`` points on [-2, 2]."""
    h = 2 * HALF_LENGTH / n
    return [-HALF_LENGTH + (i + 0.5) * h for i in range(n)]


def exact_solution(x: Sequence[float], t: float) -> list[float]:
    """u(x, t) = exp(-(x - 0.25 t + 1.5)^2 / (2 * 0.1^2)), zero where
    x - 0.25 t < -2 (material that entered through the inflow boundary)."""
    out = []
    for xi in x:
        xi0 = xi - VELOCITY * t
        if xi0 < -HALF_LENGTH:
            out.append(0.0)
        else:
            out.append(math.exp(-((xi0 - MU) ** 2) / (2 * SIGMA**2)))
    return out


def _relative_l2(values: Sequence[float], exact: Sequence[float]) -> float:
    num = math.fsum((v - e) ** 2 for v, e in zip(values, exact))
    den = math.fsum(e * e for e in exact)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


# --------------------------------------------------------------------------- #
# patching
# --------------------------------------------------------------------------- #
def _substitute(path: Path, old: str, new: str, count: int = 1, *, reference: str = "INSR") -> None:
    """Replace ``old`` by ``new`` in ``path``; raise unless it occurs exactly ``count`` times."""
    text = path.read_text()
    found = text.count(old)
    if found != count:
        raise RuntimeError(
            f"{reference} reference patch failed: expected {count} occurrence(s) of {old!r} "
            f"in {path}, found {found}. The reference checkout differs from the one "
            "this harness was written against; review the patches before proceeding."
        )
    path.write_text(text.replace(old, new))


def _torch_accepts_verbose(python: str) -> bool:
    """Ask the interpreter that will run the reference whether its
    ``ReduceLROnPlateau`` still takes the ``verbose`` keyword (removed in newer torch)."""
    probe = (
        "import inspect, torch\n"
        "p = inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau.__init__).parameters\n"
        "print('yes' if 'verbose' in p else 'no')\n"
    )
    res = subprocess.run(
        [python, "-c", probe], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True
    )
    return res.stdout.strip().endswith("yes")


def patch_reference_copy(copy_dir: str | os.PathLike, python: str = sys.executable) -> list[str]:
    """Apply the minimal CPU patches to a *copy* of the reference; return their descriptions.

    Every patch is an exact text substitution that raises ``RuntimeError`` if the
    expected text is not found exactly once. The patches, and why each is needed:

    1. ``base/baseModel.py``: ``self.device = torch.device("cuda:0")`` becomes
       ``torch.device("cpu")``. The reference hard-codes the first CUDA device
       (its ``-g`` flag only sets CUDA_VISIBLE_DEVICES, and its help text says
       "CPU not supported"); a CPU-only torch cannot create CUDA tensors.
    2. ``base/baseModel.py``: in ``save_ckpt`` the network is moved to the CPU to
       save its state dict and then moved back with ``net.cuda()``; this becomes
       ``net.to(self.device)``, which is the same thing on a GPU and a no-op on the CPU.
       ``save_ckpt`` runs at the end of every ``initialize()``/``step()``.
    3. ``base/baseModel.py`` (only when the target torch rejects it): drop
       ``verbose=True`` from the ``ReduceLROnPlateau`` constructor. The keyword
       was deprecated in torch 2.2 and later removed; it only printed a line
       whenever the learning rate was reduced and has no numerical effect.

    Nothing else is changed: the network, initialisation, sampling, losses,
    optimiser, learning-rate schedule, early stop, tensorboard logging, periodic
    matplotlib figures and checkpoint writing all run as in the original.
    """
    base_model = Path(copy_dir) / "base" / "baseModel.py"
    patches: list[str] = []

    _substitute(base_model, 'self.device = torch.device("cuda:0")', 'self.device = torch.device("cpu")')
    patches.append(
        'base/baseModel.py: BaseModel.__init__ hard-codes torch.device("cuda:0"); '
        'replaced by torch.device("cpu") (CPU-only torch has no CUDA device).'
    )

    _substitute(base_model, "            net.cuda()\n", "            net.to(self.device)\n")
    patches.append(
        "base/baseModel.py: save_ckpt moves each network back with net.cuda() after "
        "saving; replaced by net.to(self.device) (no CUDA on this machine)."
    )

    accepts = _torch_accepts_verbose(python)
    last_run_info["torch_accepts_verbose"] = accepts
    if not accepts:
        _substitute(
            base_model,
            "min_lr=min_lr, patience=patience, verbose=True)",
            "min_lr=min_lr, patience=patience)",
        )
        patches.append(
            "base/baseModel.py: _reset_optimizer passes verbose=True to "
            "ReduceLROnPlateau, which this torch no longer accepts; removed "
            "(it only printed learning-rate reductions)."
        )
    return patches


# --------------------------------------------------------------------------- #
# driver (our own code, written into the scratch directory)
# --------------------------------------------------------------------------- #
#: Start of every generated driver: read the JSON spec given as argv[1], pin threads and seed, and make
#: the reference's checkout importable with its command line (``spec["argv"]``) in ``sys.argv``.
DRIVER_PREAMBLE = textwrap.dedent(
    '''\
    import json, math, os, sys, time

    with open(sys.argv[1]) as f:
        spec = json.load(f)

    import torch
    torch.set_num_threads(spec["threads"])
    if spec["seed"] is not None:
        torch.manual_seed(spec["seed"])

    sys.path.insert(0, spec["ref_dir"])
    os.chdir(spec["ref_dir"])
    sys.argv = ["main.py"] + spec["argv"]

    from config import Config
    ''')

_DRIVER = '''"""Generated by neuralnumerics benchmarks/_insr_reference.py: drive the INSR
reference 1D advection example step by step and log timings/values as JSON lines."""
''' + DRIVER_PREAMBLE + textwrap.dedent(
    '''\
    from advection import Advection1DModel

    cfg = Config("train")
    model = Advection1DModel(cfg)
    points = torch.tensor(spec["eval_points"], dtype=torch.float32).reshape(-1, 1)

    # calls: ("initialize" | "step", weights to load first or None); a restart loads given weights into
    # the field, sets the step counter to the step they belong to, and steps on from there
    calls = [("initialize", None, None)] + [("step", None, None)] * spec["steps"]
    if spec.get("restarts"):
        calls = []
        for r in spec["restarts"]:
            calls.append(("step", r["state"], r["start"] - 1))
            calls += [("step", None, None)] * (r["count"] - 1)

    with open(spec["out"], "a") as out:
        for kind, state, timestep in calls:
            if state is not None:
                model.field.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()})
                model.timestep = timestep
            t0 = time.perf_counter()
            if kind == "initialize":
                model.initialize()
            else:
                model.step()
            seconds = time.perf_counter() - t0
            n = model.timestep
            with torch.no_grad():
                values = model.field(points.to(model.device)).reshape(-1).cpu().tolist()
            rec = {
                "step": n,
                "t": n * cfg.dt,
                "seconds": seconds,
                "iters": int(model.train_step),
                "lr": float(model.optimizer.param_groups[0]["lr"]),
                "values": values,
            }
            out.write(json.dumps(rec) + "\\n")
            out.flush()
            os.fsync(out.fileno())
    '''
)


def _read_jsonl(path: Path) -> list[dict]:
    recs: list[dict] = []
    if not path.exists():
        return recs
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return recs


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the driver (started in its own session) and its children by process-group id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --------------------------------------------------------------------------- #
# public entry point
# --------------------------------------------------------------------------- #
def missing_modules(modules: Sequence[str], python: str = sys.executable, env: dict[str, str] | None = None) -> list[str]:
    """The ``modules`` that ``python`` (with ``env``) cannot import."""
    probe = (
        "import importlib.util, sys\n"
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))\n"
    )
    res = subprocess.run([python, "-c", probe, *modules], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, env=env, check=True)
    return res.stdout.split()


def check_checkout(ref_path: Path, needed: Sequence[str]) -> None:
    """Raise FileNotFoundError unless ``ref_path`` holds every file of ``needed`` (an INSR-PDE checkout)."""
    missing = [p for p in needed if not (ref_path / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{ref_path} does not look like an INSR-PDE checkout (missing {missing})")


def run_driver(python: str, driver_path: Path, spec_path: Path, cwd: Path, env: dict, out_path: Path,
               log_path: Path, *, timeout: float | None, poll_seconds: float,
               progress: Callable[[dict], None] | None) -> tuple[int | None, bool, float, list[dict]]:
    """Run a generated driver script in its own process group, logging to ``log_path``, and follow the JSON
    lines it appends to ``out_path`` (each passed to ``progress`` as it arrives).

    Returns:
        ``(returncode, timed_out, wall_seconds, records)``; on ``timeout`` the process group is killed and the
        records written so far are returned. Any exception here (e.g. KeyboardInterrupt) kills the driver too.
    """
    t_start = time.perf_counter()
    seen, timed_out = 0, False
    with open(log_path, "w") as log:
        proc = subprocess.Popen([python, str(driver_path), str(spec_path)], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while True:
                try:
                    proc.wait(timeout=poll_seconds)
                    finished = True
                except subprocess.TimeoutExpired:
                    finished = False
                recs = _read_jsonl(out_path)
                if progress is not None:
                    for r in recs[seen:]:
                        progress(r)
                seen = len(recs)
                if finished:
                    break
                if timeout is not None and time.perf_counter() - t_start > timeout:
                    timed_out = True
                    _kill_group(proc)
                    break
        except BaseException:  # e.g. KeyboardInterrupt: do not leave the driver running
            _kill_group(proc)
            raise
    wall = time.perf_counter() - t_start
    records = _read_jsonl(out_path)
    if progress is not None:
        for r in records[seen:]:
            progress(r)
    return proc.returncode, timed_out, wall, records


def scratch_copy(ref_path: Path, workdir: str | os.PathLike | None, prefix: str):
    """A fresh copy of the reference checkout in a scratch directory (``workdir``, or a temporary one).

    Returns ``(tmp, work, copy_dir, proj_dir)``: the ``TemporaryDirectory`` to clean up (``None`` for a
    given ``workdir``), the scratch directory, the copy, and the (removed) directory the reference will
    write its checkpoints to (it would otherwise prompt on stdin about an existing one).
    """
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
        work = Path(tmp.name)
    else:
        work = Path(workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        copy_dir = work / "INSR-PDE"
        if copy_dir.exists():
            shutil.rmtree(copy_dir)
        shutil.copytree(ref_path, copy_dir, ignore=shutil.ignore_patterns(".git", "checkpoints", "__pycache__"))
        proj_dir = work / "checkpoints"
        if proj_dir.exists():
            shutil.rmtree(proj_dir)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return tmp, work, copy_dir, proj_dir


def run_reference_advection(
    ref_path: str | os.PathLike,
    *,
    steps: int,
    threads: int = 1,
    sample_resolution: int = 5000,
    dt: float = 0.05,
    hidden_features: int = 20,
    num_hidden_layers: int = 2,
    max_n_iters: int = 20000,
    eval_points: Sequence[float] | None = None,
    python: str = sys.executable,
    workdir: str | os.PathLike | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    restarts: Sequence[tuple[int, int, dict[str, list]]] | None = None,
) -> list[dict]:
    """Run the reference's 1D advection example (scripts/advect1D.sh) and time each step.

    The reference checkout at ``ref_path`` is never modified: it is copied to
    ``<workdir>/INSR-PDE`` (``workdir`` defaults to a temporary directory that
    is removed afterwards; pass one to keep the copy, the driver, the JSON
    lines ``steps.jsonl`` and the log ``driver.log``). The copy is patched by
    :func:`patch_reference_copy` (see its docstring for each patch and why).

    A generated driver then builds the reference's ``Config``/``Advection1DModel``
    from the same command line as ``scripts/advect1D.sh``
    (``advection --tag advect1D_ex1 --init_cond example1 --num_hidden_layers 2
    --hidden_features 20 -sr 5000 --dt 0.05 -T <steps> -g 0``, with the
    overridable values taken from the arguments and ``--proj_dir`` pointing into
    ``workdir``), calls ``model.initialize()`` and then ``model.step()`` ``steps``
    times, and after each call writes one JSON line with the wall time of that
    call (``time.perf_counter``), the number of Adam iterations it ran
    (``model.train_step``) and the field's values at ``eval_points``.
    The timed call is the reference's call as is, so it includes the
    reference's own per-iteration tensorboard scalar logging, its matplotlib
    figure every 1000 iterations, and its checkpoint write.

    The driver runs as a subprocess with stdin closed, ``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` set to ``threads`` and ``torch.set_num_threads(threads)``;
    its stdout/stderr (configuration dump and tqdm bars) go to ``driver.log``.
    If ``timeout`` (seconds, whole run) expires, or the driver dies, the steps
    completed so far are still returned (a warning says what happened; see
    :data:`last_run_info`). ``seed`` (not in the reference, which does not seed)
    optionally calls ``torch.manual_seed`` before the model is built.

    Returns a list with one dict per completed step, ``step`` 0 being the
    initial-condition fit::

        {"step": int, "t": float, "seconds": float, "iters": int,
         "error": float}   # relative L2 error vs. the exact solution on eval_points

    ``restarts`` (instead of a run from the initial condition): a list of ``(start, count, state)``.
    For each, the reference's field is set to ``state`` (a state dict of its ``MLP``, ``net.0.weight``
    ... ``net.6.bias``, as nested lists), its step counter to ``start - 1``, and it runs ``count``
    steps from there: its own per-step fit at steps ``start ... start + count - 1`` of a trajectory
    given by someone else (for a benchmark: ours). ``steps`` is then ignored.

    The exact solution is u(x, t) = exp(-(x - 0.25 t + 1.5)^2 / (2 * 0.1^2)),
    zero where x - 0.25 t < -2 (inflow boundary). The patches applied are left
    in the module attribute :data:`last_patches`.
    """
    global last_patches, last_run_info
    last_patches = []
    last_run_info = {}

    ref_path = Path(ref_path).resolve()
    if not (ref_path / "base" / "baseModel.py").is_file() or not (ref_path / "advection").is_dir():
        raise FileNotFoundError(f"{ref_path} does not look like an INSR-PDE checkout")
    if steps < 0:
        raise ValueError("steps must be >= 0")
    n_calls = sum(int(c) for _, c, _ in restarts) if restarts else steps + 1
    points = [float(x) for x in (default_eval_points() if eval_points is None else eval_points)]

    tmp, work, copy_dir, proj_dir = scratch_copy(ref_path, workdir, "insr_ref_")
    try:

        patches = patch_reference_copy(copy_dir, python=python)
        last_patches = list(patches)
        last_run_info["patches"] = list(patches)

        out_path = work / "steps.jsonl"
        log_path = work / "driver.log"
        spec_path = work / "driver_spec.json"
        driver_path = work / _SCRIPT_NAME
        out_path.write_text("")
        driver_path.write_text(_DRIVER)
        argv = [
            "advection",
            "--proj_dir", str(proj_dir),
            "--tag", "advect1D_ex1",
            "--init_cond", "example1",
            "--num_hidden_layers", str(num_hidden_layers),
            "--hidden_features", str(hidden_features),
            "-sr", str(sample_resolution),
            "--dt", repr(float(dt)),
            "-T", str(max([steps] + [int(a) + int(c) - 1 for a, c, _ in (restarts or [])])),
            "-g", "0",
            "--max_n_iters", str(max_n_iters),
        ]
        spec_path.write_text(
            json.dumps(
                {
                    "ref_dir": str(copy_dir),
                    "argv": argv,
                    "steps": steps,
                    "threads": threads,
                    "seed": seed,
                    "restarts": [{"start": int(a), "count": int(c), "state": st} for a, c, st in (restarts or [])],
                    "eval_points": points,
                    "out": str(out_path),
                }
            )
        )

        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            MPLBACKEND="Agg",
            PYTHONUNBUFFERED="1",
        )
        timed_out = False
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [python, str(driver_path), str(spec_path)],
                cwd=copy_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:  # e.g. KeyboardInterrupt: do not leave the driver running
                _kill_group(proc)
                raise

        raw = _read_jsonl(out_path)
        log_text = log_path.read_text(errors="replace")
        last_run_info.update(
            returncode=proc.returncode,
            timed_out=timed_out,
            workdir=None if tmp is not None else str(work),
            log_tail=log_text[-4000:],
        )
        if timed_out or proc.returncode != 0:
            warnings.warn(
                f"INSR reference driver {'timed out' if timed_out else 'exited with code ' + str(proc.returncode)}"
                f" after {len(raw)} of {n_calls} call(s); log tail:\n{log_text[-2000:]}",
                RuntimeWarning,
                stacklevel=2,
            )

        records = []
        for r in raw:
            exact = exact_solution(points, r["t"])
            records.append(
                {
                    "step": r["step"],
                    "t": r["t"],
                    "seconds": r["seconds"],
                    "iters": r["iters"],
                    "error": _relative_l2(r["values"], exact),
                }
            )
        return records
    finally:
        if tmp is not None:
            tmp.cleanup()


def manual_parser(description: str, steps: int):
    """Command-line parser of the reference modules' manual entry points (path, steps, threads, scratch
    directory, timeout)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("ref_path", help="local checkout of github.com/honglin-c/INSR-PDE")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="keep the patched copy here (default: a temporary directory)")
    ap.add_argument("--timeout", type=float, default=None)
    return ap


if __name__ == "__main__":  # small manual entry point
    ap = manual_parser(__doc__.splitlines()[0], steps=2)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    recs = run_reference_advection(
        a.ref_path, steps=a.steps, threads=a.threads, workdir=a.workdir, timeout=a.timeout, seed=a.seed
    )
    print(json.dumps({"patches": last_patches, "records": recs}, indent=2))

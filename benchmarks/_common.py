"""Helpers shared by the benchmarks in this folder (see HOUSE.md, "Benchmarks").

- :func:`pin_threads`: fix the thread count of this process and of the subprocesses it starts;
- :func:`machine_header`: the Markdown header every benchmark table starts with (date, machine,
  torch version, exact command);
- :func:`markdown_table`: a GitHub-flavoured Markdown table from rows of cells;
- :func:`median_time`: warm-up, then the median of several timed repeats;
- :func:`fmt_seconds`, :func:`fmt_error`, :func:`fmt_bytes`: cell formatting;
- :func:`write_markdown`: write the report, creating folders.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from neuralnumerics._threads import set_threads

__all__ = [
    "REPO_ROOT", "pin_threads", "cpu_model", "gpu_names", "machine_info", "machine_header", "command_line",
    "markdown_table", "median_time", "fmt_seconds", "fmt_error", "fmt_bytes", "finite", "write_markdown",
    "resolve_device",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- #
# threads and devices
# --------------------------------------------------------------------------- #
def log(msg: str) -> None:
    """Progress goes to stderr; the report goes to stdout."""
    print(msg, file=sys.stderr, flush=True)


def pin_threads(n: int) -> dict[str, int]:
    """Use ``n`` threads here and in every subprocess started afterwards.

    Sets ``torch.set_num_threads(n)`` (intra-op), tries ``torch.set_num_interop_threads(n)`` (which
    torch only allows before its first parallel operation) and exports ``OMP_NUM_THREADS``,
    ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` so child processes inherit the same count; with
    threadpoolctl installed (the ``bench`` extra), the BLAS libraries already loaded here are limited too.
    Returns the counts actually in effect: ``{"intra_op": ..., "interop": ...}``, plus ``"blas"`` (the
    largest thread count among the loaded BLAS libraries) when threadpoolctl is there.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    blas = set_threads(n)  # torch intra-op, OPENBLAS_NUM_THREADS and the loaded BLAS libraries
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already started; leave it
        pass
    out = {"intra_op": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}
    if blas is not None:
        out["blas"] = blas
    return out


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` or ``"cuda"`` as a device; exits with a clear message if CUDA is asked for and missing."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch build sees no CUDA device "
                         f"(torch {torch.__version__}, cuda {torch.version.cuda}); use --device cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- #
# machine description
# --------------------------------------------------------------------------- #
def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (falls back to :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_names() -> list[str]:
    """Names of the CUDA devices torch sees (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _git_describe() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, stdin=subprocess.DEVNULL)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        return rev.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# the revision of the code a benchmark runs, taken when the script starts (a long run may end after the
# checkout has moved on)
_GIT_AT_IMPORT = _git_describe()


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed, ``python <script> <args>``, shell-quoted."""
    argv = list(sys.argv if argv is None else argv)
    script = argv[0] if argv else ""
    try:  # show the script relative to the repository when it lives inside it
        script = str(Path(script).resolve().relative_to(REPO_ROOT))
    except ValueError:
        pass
    return shlex.join(["python", script, *argv[1:]])


def machine_info() -> dict[str, Any]:
    """Date, CPU model, core counts, GPUs, Python/torch/neuralnumerics versions and git revision."""
    try:
        import neuralnumerics
        nn_version = getattr(neuralnumerics, "__version__", "?")
    except ImportError:
        nn_version = "not importable"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "gpus": gpu_names(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "neuralnumerics": nn_version,
        "git": _GIT_AT_IMPORT,
        "platform": platform.platform(),
    }


def machine_header(title: str, *, threads: dict[str, int] | int | None = None,
                   extra: Sequence[str] = (), argv: Sequence[str] | None = None) -> str:
    """The Markdown header of a benchmark report: title, date, machine, versions, threads, command.

    ``extra`` lines are appended to the bullet list as they are.
    """
    info = machine_info()
    gpus = ", ".join(info["gpus"]) if info["gpus"] else "none"
    cores = f"{info['cores']} logical cores"
    if info["usable_cores"] != info["cores"]:
        cores += f" ({info['usable_cores']} usable by this process)"
    lines = [f"# {title}", "",
             f"- Date: {info['date']}",
             f"- Machine: {info['cpu']}, {cores}; GPU: {gpus}; {info['platform']}",
             f"- Software: Python {info['python']}, torch {info['torch']}"
             + (f" (CUDA {info['cuda']})" if info["cuda"] else "")
             + f", neuralnumerics {info['neuralnumerics']}"
             + (f", git {info['git']}" if info["git"] else "")]
    if threads is not None:
        if isinstance(threads, int):
            lines.append(f"- Threads: {threads}")
        else:
            blas = f", BLAS {threads['blas']} (threadpoolctl)" if "blas" in threads else ""
            lines.append(f"- Threads: {threads['intra_op']} intra-op, {threads['interop']} inter-op{blas} "
                         "(torch.set_num_threads; OMP/MKL/OPENBLAS_NUM_THREADS exported to subprocesses)")
    lines.extend(f"- {line}" for line in extra)
    lines.append(f"- Command: `{command_line(argv)}`")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# tables and formatting
# --------------------------------------------------------------------------- #
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A Markdown table; ``align`` holds ``"l"``, ``"r"`` or ``"c"`` per column (default: first left, rest right).

    Cells are converted with ``str``; ``None`` becomes an em dash and ``|`` is escaped.
    """
    n = len(headers)
    if align is None:
        align = ["l"] + ["r"] * (n - 1)
    if len(align) != n:
        raise ValueError(f"align has {len(align)} entries for {n} columns")
    marks = {"l": ":---", "r": "---:", "c": ":---:"}

    def cell(v: Any) -> str:
        return "—" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "|" + "|".join(marks[a] for a in align) + "|"]
    for row in rows:
        if len(row) != n:
            raise ValueError(f"a row has {len(row)} cells for {n} columns: {row!r}")
        out.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(out) + "\n"


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_seconds(s: float | None) -> str | None:
    """Seconds with 3 significant digits (milliseconds/microseconds below 1 s)."""
    if s is None or not finite(s):
        return None
    if s >= 1:
        return f"{s:.3g} s" if s < 1000 else f"{s:.0f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fmt_error(e: float | None) -> str | None:
    """A relative error in scientific notation (``nan``/``inf`` shown as such)."""
    if e is None:
        return None
    return f"{e:.3e}" if finite(e) else str(float(e))


def fmt_bytes(n: int | None) -> str | None:
    if n is None:
        return None
    if n < 10_000:
        return f"{n} B"
    if n < 10_000_000:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- #
# timing
# --------------------------------------------------------------------------- #
def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
                sync: Callable[[], None] | None = None) -> tuple[float, list[float], Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns ``(median seconds, all timed seconds, the last result)``. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before each clock read so asynchronous work is counted.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    result = None
    for _ in range(warmup):
        result = fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def write_markdown(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` (folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

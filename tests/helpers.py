"""Helpers shared by the tests: the small command-line run used by the run-directory tests, and metric loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

# A small, fast advection run (about 1 s per step on one core): 400 points, SIREN 2x12, at most 10 LM
# iterations per step. Append --steps and --out.
SMALL_RUN = ["run", "advection1d", "--n-points", "400", "--hidden-features", "12", "--max-fit-iters", "10",
             "--quiet", "--threads", "1", "--seed", "0"]

# metrics that measure the machine, not the computation: they legitimately differ between two runs
TIMING_KEYS = {"seconds", "peak_memory_mb"}


def small_run(out: Path, steps: int, *extra: str) -> list[str]:
    """The argument list of :data:`SMALL_RUN` for ``steps`` steps into ``out``."""
    return SMALL_RUN + ["--steps", str(steps), "--out", str(out), *extra]


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``, one per line (every line must be valid JSON)."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _untimed(d):
    if not isinstance(d, dict):
        return d
    return {k: _untimed(v) for k, v in d.items() if k not in TIMING_KEYS}


def computed_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` without the timing keys, also in nested records such as the per-stage
    reports of a fluid step (what must be reproducible)."""
    return [_untimed(m) for m in read_metrics(run_dir)]


def snapshot(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """``{relative path: (mtime_ns, contents)}`` of every file under ``run_dir``."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            p = Path(root) / name
            out[str(p.relative_to(run_dir))] = (p.stat().st_mtime_ns, p.read_bytes())
    return out

"""Every benchmark runs in ``--quick`` mode (HOUSE.md, "Benchmarks"), so none of them rots.

Slow (a couple of minutes each): run with ``pytest -m slow tests/test_benchmarks.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def _run_quick(script: str, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    out_md = tmp_path / f"{Path(script).stem}.md"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--out-md", str(out_md), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    return proc, out_md


@pytest.mark.slow
def test_insr_advection_quick(tmp_path):
    proc, out_md = _run_quick("insr_advection.py", tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    out = proc.stdout
    # header: machine, versions, threads, the exact command
    assert out.startswith("# INSR 1D advection")
    for needle in ("- Machine:", "torch ", "- Threads: 1 intra-op", "- Command: `python benchmarks/insr_advection.py --quick"):
        assert needle in out, needle
    assert "This is a `--quick` run" in out
    # the per-step table: header row, then step 0 (initial fit) and the last quick step, with errors
    assert "| step | t | midpoint s | midpoint error | gauss-legendre2 s | gauss-legendre2 error |" in out
    assert "| 0 (initial fit) |" in out
    assert any(line.startswith("| 10 | 0.5 |") for line in out.splitlines())
    assert "✗" not in out  # no step failed the correctness check
    # totals and the grid baseline at equal memory
    assert "## Totals and ratio" in out and "| ours, midpoint |" in out
    assert "| grid semi-lagrangian, equal memory | 901 cells | 3604 B |" in out
    # the same report is written to --out-md
    assert out_md.read_text().strip() == out.strip()


def _check_quick_report(proc, out_md, title: str, script: str) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert out.startswith(f"# {title}")
    for needle in ("- Machine:", "torch ", f"- Command: `python benchmarks/{script} --quick"):
        assert needle in out, needle
    assert out_md.read_text().strip() in out
    return out


@pytest.mark.slow
def test_linalg_poisson_quick(tmp_path):
    proc, out_md = _run_quick("linalg_poisson.py", tmp_path)
    out = _check_quick_report(proc, out_md, "CG and preconditioned CG", "linalg_poisson.py")
    for row in ("| 32x32 | ours CG |", "| 32x32 | scipy cg |", "| 16x16x16 | ours PCG IC(0) |"):
        assert row in out, row
    assert "residual " not in out.split("| grid |", 1)[1]  # every solver passed the residual check


@pytest.mark.slow
def test_skr_quick(tmp_path):
    proc, out_md = _run_quick("skr.py", tmp_path)
    out = _check_quick_report(proc, out_md, "SKR (sorting + Krylov subspace recycling)", "skr.py")
    # the PyAMG row on Helmholtz fails by design, so no "no failure" check here; ours are there for each family
    assert out.count("| SKR: sorted + GCRO-DR (ours) |") == 4


@pytest.mark.slow
def test_learning_to_relax_quick(tmp_path):
    proc, out_md = _run_quick("learning_to_relax.py", tmp_path)
    out = _check_quick_report(proc, out_md, "Learning to Relax: bandit-tuned SOR", "learning_to_relax.py")
    assert "| BanditSOR (Tsallis-INF) |" in out and "| best fixed ω in hindsight |" in out

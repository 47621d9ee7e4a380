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
    assert "| grid semi-lagrangian, equal memory | 901 cells | 7208 B |" in out
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
def test_dcdm_quick(tmp_path):
    """A model trained for seconds by the CLI, then the quick benchmark: every solver reaches its tolerance."""
    from neuralnumerics.cli import main

    run = tmp_path / "run"
    assert main(["train", "dcdm", "--grid", "16x16", "--samples", "3000", "--lr", "1e-3", "--lanczos-steps", "120",
                 "--quiet", "--threads", "1", "--out", str(run)]) == 0
    proc, out_md = _run_quick("dcdm.py", tmp_path, "--model-2d", str(run / "model.pt"))
    out = _check_quick_report(proc, out_md, "DCDM on smoke pressure systems", "dcdm.py")
    for row in ("| 32x32 | sphere | DCDM |", "| 32x32 | blob | IC(0)-PCG |", "| 16x16x16 | blob | deflated PCG |"):
        assert row in out, row
    assert "✗" not in out.split("| grid |", 1)[1]  # every solve passed the true-residual check
    assert "DCDM 3D: no model given" in out


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


def test_insr_reference_state_maps_our_siren_onto_the_reference_mlp():
    """The reference restarts load our weights into the reference's network (nn.Sequential of Linear layers
    with sin(30 x) between them): the mapped network must compute our field."""
    import torch
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import insr_advection as bench
    finally:
        sys.path.pop(0)
    from neuralnumerics.pde import Advection1D, evolve

    problem = Advection1D(n_points=200)
    traj = evolve(problem, dt=0.05, steps=1, seed=0)
    state = bench.reference_state({"midpoint": traj, "problem": problem}, 1)

    class Sine(nn.Module):
        def forward(self, x):
            return torch.sin(30 * x)

    width = problem.hidden_features
    layers = [nn.Linear(1, width), Sine()]
    for _ in range(problem.hidden_layers):
        layers += [nn.Linear(width, width), Sine()]
    mlp = nn.Module()
    mlp.net = nn.Sequential(*layers, nn.Linear(width, 1))
    mlp.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()})
    x = torch.linspace(-2, 2, 101, dtype=torch.float64)[:, None]
    ours = traj.field(1)(x)
    with torch.no_grad():
        theirs = mlp.net(x.float()).double()
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    assert ours.abs().max() > 0.5  # a pulse, not a blank field


@pytest.mark.slow
def test_insr_fluid_quick(tmp_path):
    proc, out_md = _run_quick("insr_fluid.py", tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "- Command: `python benchmarks/insr_fluid.py --quick" in out
    assert "| 0 (initial fit) |" in out
    assert "(n=47)" in out and out_md.exists()


def _reference_from_env(var: str) -> tuple[str | None, list[str]]:
    """The reference checkout named by environment variable ``var`` (or None), and the benchmark arguments for it."""
    import os

    reference = os.environ.get(var)
    return reference, (["--reference", reference] if reference else [])


@pytest.mark.slow
def test_mfac_quick(tmp_path):
    """M-FAC benchmark in --quick mode; with the reference when NEURALNUMERICS_MFAC_REFERENCE names a checkout of
    github.com/IST-DASLab/M-FAC."""
    import importlib.util

    pytest.importorskip("sklearn", reason="benchmarks/mfac.py needs scikit-learn: pip install -e .[bench]")
    reference, extra = _reference_from_env("NEURALNUMERICS_MFAC_REFERENCE")
    proc, out_md = _run_quick("mfac.py", tmp_path, *extra)
    out = _check_quick_report(proc, out_md, "M-FAC: neuralnumerics vs. the reference implementation", "mfac.py")
    assert "This is a `--quick` run" in out
    for needle in ("### d = 20,000: products", "### d = 20,000: optimiser steps", "## 2. Accuracy",
                   "| Gaussian, d = 500 | 16 |", "## 3. Training", "| M-FAC (ours) |", "## 4. Pruning", "| 50% |",
                   "| 90% |"):
        assert needle in out, needle
    assert "✗" not in out  # every product passed its residual check before being timed
    if reference:
        assert "Patches applied:" in out and "| 64 |" in out and "ours/ref" in out
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "mfac_digits.png").stat().st_size > 0


@pytest.mark.slow
def test_sliced_wasserstein_quick(tmp_path):
    """Sliced Wasserstein benchmark in --quick mode; with the reference when NEURALNUMERICS_CVSW_REFERENCE names a
    checkout of github.com/khainb/CV-SW."""
    pytest.importorskip("ot", reason="benchmarks/sliced_wasserstein.py compares against POT: pip install -e .[ot]")
    reference, extra = _reference_from_env("NEURALNUMERICS_CVSW_REFERENCE")
    proc, out_md = _run_quick("sliced_wasserstein.py", tmp_path, *extra)
    out = _check_quick_report(proc, out_md, "Sliced Wasserstein with control variates", "sliced_wasserstein.py")
    assert "This is a `--quick` run" in out
    for needle in ("## 1. Variance", "| ours UCV-SW, QMC |", "## 2. Time per estimate", "## 3. Gradient flow",
                   "Gaussians, 200 samples each, d = 784", "seconds per step"):
        assert needle in out, needle
    if reference:
        assert "| ref LCV-SW |" in out and "Ours / reference variance (same directions)" in out


@pytest.mark.slow
def test_dcdm_layout_quick(tmp_path):
    proc, out_md = _run_quick("dcdm_layout.py", tmp_path)
    out = _check_quick_report(proc, out_md, "DCDM network on the CPU", "dcdm_layout.py")
    for row in ("| 16x16 |", "| 8x8x8 |"):
        assert row in out, row
    assert "✗" not in out  # both layouts gave the same outputs

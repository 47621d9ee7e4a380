"""Fluid scenarios from the command line: INSR and the grid baseline write a full run directory and resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from neuralnumerics.cli import main
from neuralnumerics.io.runner import equal_memory_cells, resolve_config, run_scenario

from ..helpers import computed_metrics, read_metrics

# a tiny INSR fluid: 768 points, SIREN 2x12, short fits (a few seconds per step on one core)
FLUID_RUN = ["run", "fluid-taylor-green", "--n-points", "768", "--hidden-features", "12", "--hidden-layers", "2",
             "--max-fit-iters", "100", "--quiet", "--threads", "1"]


def test_insr_fluid_run_writes_its_metrics_and_resumes_exactly(tmp_path, one_thread):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(FLUID_RUN + ["--steps", "2", "--out", str(full)]) == 0
    rows = read_metrics(full)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert set(r["stages"]) == {"pressure", "projection"}
        assert r["error"] < 0.1 and r["rms_divergence"] < 0.5 and r["energy_ratio"] < 1.01
    assert len(list((full / "frames").glob("*.png"))) == 3 and (full / "animation.gif").exists()
    summary = json.loads((full / "summary.json").read_text())
    assert summary["final_error"] == rows[-1]["error"] and "final_rms_divergence" in summary
    # a run stopped after step 1 and resumed writes the same metrics as the uninterrupted one
    shutil.copytree(full, cut)
    (cut / "checkpoints/step_000002.pt").unlink()
    assert main(FLUID_RUN + ["--steps", "2", "--out", str(cut), "--resume"]) == 0
    assert computed_metrics(cut) == computed_metrics(full)
    a = torch.load(cut / "checkpoints/step_000002.pt", weights_only=True)
    b = torch.load(full / "checkpoints/step_000002.pt", weights_only=True)
    assert torch.equal(a["velocity"], b["velocity"]) and torch.equal(a["pressure"], b["pressure"])


def test_grid_fluid_runs_at_equal_memory_and_respects_the_obstacle(tmp_path):
    out = tmp_path / "jet"
    assert main(["run", "fluid-jet-cylinder", "--method", "grid", "--steps", "10", "--out", str(out), "--quiet"]) == 0
    rows = read_metrics(out)
    assert rows[-1]["rms_divergence"] < 1e-6 and rows[-1]["kinetic_energy"] > 0
    # two SIRENs 32x3 hold 3330 + 3297 weights; 47^2 cells hold u, v and p in 3 * 47^2 + 2 * 47 = 6721 floats
    assert equal_memory_cells(3330 + 3297) == 47
    assert rows[-1]["memory_bytes"] == 8 * (3 * 47 ** 2 + 2 * 47)
    tg = tmp_path / "tg"
    assert main(["run", "fluid-taylor-green", "--method", "grid", "--steps", "10", "--out", str(tg), "--quiet",
                 "--grid-cells", "32"]) == 0
    assert 0 < read_metrics(tg)[-1]["error"] < 0.1


def test_fluid_scenarios_refuse_integrators_and_bad_options(tmp_path):
    with pytest.raises(ValueError, match="operator splitting"):
        resolve_config("fluid-taylor-green", integrator="midpoint")
    with pytest.raises(ValueError, match="scheme"):
        run_scenario("fluid-taylor-green", out=str(tmp_path / "a"), progress=False, options={"scheme": "weak"})
    with pytest.raises(ValueError, match="n_points"):
        run_scenario("fluid-taylor-green", out=str(tmp_path / "b"), progress=False, options={"n_points": 2})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

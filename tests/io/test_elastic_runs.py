"""Elasticity scenarios from the command line: INSR and the finite-element baseline write a full run directory
(config, per-step metrics with the elasticity diagnostics, checkpoints, frames, animation, summary), resume a
killed run exactly, take a user's mesh file, and refuse Levenberg-Marquardt and missing meshes clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from neuralnumerics.cli import main
from neuralnumerics.io.runner import resolve_config, run_scenario

from ..helpers import computed_metrics, read_metrics

meshio = pytest.importorskip("meshio")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:Sparse invariant checks")]

# tiny runs of the collision example: a SIREN 3x16 on 256 points with 20 L-BFGS iterations per step, and the
# FEM baseline on an 8 x 8 mesh (about a second each on one core)
INSR = ["--hidden-features", "16", "--n-points", "256", "--max-fit-iters", "20", "--quiet", "--threads", "1"]
FEM = ["--method", "fem", "--fem-cells", "8", "--quiet", "--threads", "1"]
COLLIDE = ["run", "elasticity-collide-2d", "--steps", "2"]

DIAGNOSTICS = {"elastic_energy", "kinetic_energy", "max_penetration", "constraint_violation", "volume_change",
               "contact_energy", "gravity_energy", "min_det_f", "center_of_mass"}


def simulate_kill(run, last_kept: int) -> None:
    """Leave ``run`` as a kill while writing step ``last_kept + 1`` would: its checkpoint missing, its metrics
    line cut in the middle, no summary."""
    for p in (run / "checkpoints").glob("step_*.pt"):
        if int(p.stem.split("_")[1]) > last_kept:
            p.unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:last_kept + 1]) + lines[last_kept + 1][:40])
    (run / "summary.json").unlink()


def check_run_dir(out, steps: int, method: str) -> list[dict]:
    config = json.loads((out / "config.json").read_text())
    assert config["scenario"].startswith("elasticity-") and config["method"] == method
    assert config["integrator"] == "implicit-euler" and config["steps"] == steps
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(steps + 1))
    for r in rows:
        assert {"step", "t", "loss", "fit_iters", "seconds", "status", "memory_floats"} <= set(r)
        assert DIAGNOSTICS <= set(r), DIAGNOSTICS - set(r)
        assert r["t"] == pytest.approx(r["step"] * config["dt"])
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [f"step_{s:06d}.pt" for s in
                                                                          range(steps + 1)]
    assert len(list((out / "frames").glob("step_*.png"))) == steps + 1
    assert (out / "animation.gif").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == steps and summary["method"] == method
    for key in ("elastic_energy", "kinetic_energy", "max_penetration", "constraint_violation", "volume_change"):
        assert summary[f"final_{key}"] == rows[-1][key]
    return rows


@pytest.mark.parametrize("method", ["insr", "fem"])
def test_collide_run_writes_its_run_dir_and_resumes_exactly(tmp_path, method):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = COLLIDE + (INSR if method == "insr" else FEM)
    assert main(args + ["--out", str(full)]) == 0
    rows = check_run_dir(full, 2, method)
    assert rows[0]["kinetic_energy"] == 0.0 and rows[0]["max_penetration"] == 0.0
    for r in rows[1:]:
        # falling onto the disc: kinetic energy grows (gravity acts for two steps), the disc is entered a little
        assert r["kinetic_energy"] > 20 and 0 < r["max_penetration"] < 0.3 and r["contact_energy"] > 0
        assert r["center_of_mass"][1] < 0 and abs(r["volume_change"]) < 0.05
        assert r["fit_iters"] > 0
    assert rows[2]["center_of_mass"][1] < rows[1]["center_of_mass"][1]
    if method == "insr":
        assert all(r["fit_iters"] <= 20 and r["loss"] is not None for r in rows[1:])
    else:
        assert rows[0]["vertices"] == 81 and rows[0]["elements"] == 128 and rows[0]["loss"] is None
    # killed while writing step 2, then resumed: the same metrics as the uninterrupted run (all but timings)
    shutil.copytree(full, cut)
    simulate_kill(cut, 1)
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    assert computed_metrics(cut) == computed_metrics(full)
    a = torch.load(cut / "checkpoints/step_000002.pt", weights_only=True)
    b = torch.load(full / "checkpoints/step_000002.pt", weights_only=True)
    for key in (("weights", "prev_weights") if method == "insr" else ("q", "v")):
        assert torch.equal(a[key], b[key]), key
    assert json.loads((cut / "summary.json").read_text())["status"] == "completed"


def test_stretch_runs_follow_the_ramped_pull(tmp_path):
    insr, fem = tmp_path / "insr", tmp_path / "fem"
    common = ["run", "elasticity-stretch-2d", "--steps", "2", "--ramp-steps", "2", "--offset", "0.4"]
    assert main(common + INSR + ["--constraint-points", "10", "--out", str(insr)]) == 0
    assert main(common + FEM + ["--fem-substeps", "2", "--out", str(fem)]) == 0
    for out, method in ((insr, "insr"), (fem, "fem")):
        rows = check_run_dir(out, 2, method)
        for r, pulled in zip(rows[1:], (0.2, 0.4)):
            # the right side moves by the ramped offset, the left stays: the centre moves by about half of it
            assert r["kinetic_energy"] == 0.0 and r["elastic_energy"] > 0
            assert r["center_of_mass"][0] == pytest.approx(pulled / 2, abs=0.05)
    assert max(r["constraint_violation"] for r in read_metrics(fem)) < 1e-12  # FEM holds the vertices exactly


def test_levenberg_marquardt_is_refused(tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(COLLIDE + INSR + ["--optimizer", "lm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "elasticity-collide-2d" in err and "Levenberg-Marquardt" in err and "lbfgs" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="minimises an energy"):
        resolve_config("elasticity-drop-3d", optimizer="lm")


def test_a_missing_mesh_file_is_refused_and_nothing_is_written(tmp_path):
    out, missing = tmp_path / "run", tmp_path / "missing.msh"
    with pytest.raises(FileNotFoundError, match="missing.msh"):
        run_scenario("elasticity-drop-3d", out=str(out), progress=False, steps=1, options={"mesh": str(missing)})
    assert not out.exists()


def test_the_command_line_reports_a_missing_mesh_file(tmp_path, capsys):
    out, missing = tmp_path / "run", tmp_path / "missing.msh"
    assert main(["run", "elasticity-drop-3d", "--steps", "1", "--mesh", str(missing), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing.msh" in err and "Traceback" not in err
    assert not out.exists()


def test_a_triangle_mesh_is_refused_for_the_3d_drop(tmp_path):
    from neuralnumerics.classical.elasticity import rectangle_mesh

    V, T = rectangle_mesh(2, 2)
    path = tmp_path / "flat.vtu"
    meshio.write_points_cells(str(path), V.numpy(), [("triangle", T.numpy())])
    with pytest.raises(ValueError, match="tetrahedral"):
        run_scenario("elasticity-drop-3d", out=str(tmp_path / "run"), progress=False, steps=1,
                     options={"mesh": str(path)})
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def box_vtu(tmp_path_factory):
    """A 2 x 1 x 1 box of 48 tetrahedra as a .vtu file (after normalisation: [-1, 1] x [-0.5, 0.5]^2, volume 2)."""
    from neuralnumerics.classical.elasticity import box_mesh

    V, T = box_mesh(2, 2, 2, lo=(0.0, 0.0, 0.0), hi=(2.0, 1.0, 1.0))
    path = tmp_path_factory.mktemp("meshes") / "box.vtu"
    meshio.write_points_cells(str(path), V.numpy(), [("tetra", T.numpy())])
    return path


@pytest.mark.parametrize("method", ["insr", "fem"])
def test_a_user_mesh_runs_with_both_methods(tmp_path, box_vtu, method):
    out = tmp_path / method
    args = ["run", "elasticity-drop-3d", "--steps", "1", "--mesh", str(box_vtu), "--out", str(out)]
    assert main(args + (INSR if method == "insr" else ["--method", "fem", "--quiet", "--threads", "1"])) == 0
    rows = check_run_dir(out, 1, method)
    assert json.loads((out / "config.json").read_text())["options"]["mesh"] == str(box_vtu)
    if method == "fem":
        assert rows[1]["vertices"] == 27 and rows[1]["elements"] == 48  # the file's mesh, as it is
    # one step of free fall from rest (the floor is 0.3 below): kinetic energy rho V (g dt)^2 / 2
    g, dt = 9.8, 0.02
    assert rows[1]["kinetic_energy"] == pytest.approx(0.5 * 2.0 * (g * dt) ** 2, rel=0.02 if method == "insr" else 1e-9)
    assert rows[1]["max_penetration"] == 0.0


def test_the_3d_drop_runs_a_torus(tmp_path):
    out = tmp_path / "torus"
    assert main(["run", "elasticity-drop-3d", "--shape", "torus", "--steps", "1", "--out", str(out)] + INSR) == 0
    rows = check_run_dir(out, 1, "insr")
    volume = 2 * 3.141592653589793 ** 2 * 0.7 * 0.3 ** 2
    assert rows[1]["kinetic_energy"] == pytest.approx(0.5 * volume * (9.8 * 0.02) ** 2, rel=0.02)
    assert rows[1]["center_of_mass"][2] - rows[0]["center_of_mass"][2] == pytest.approx(-9.8 * 0.02 ** 2, rel=0.02)

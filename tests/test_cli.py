"""The command line: what ``neuralnumerics run`` writes, its refusals and exit codes, and ``list``."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from neuralnumerics.cli import main
from neuralnumerics.pde import INTEGRATORS, OPTIMIZERS, Advection1D, relative_l2
from neuralnumerics.scenarios import SCENARIOS

from tests.helpers import computed_metrics, read_metrics, small_run, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

METRIC_KEYS = {"step", "t", "loss", "fit_iters", "seconds", "error", "status", "losses", "peak_memory_mb"}


def test_run_writes_the_run_directory(run3):
    files = {p.relative_to(run3).as_posix() for p in run3.rglob("*") if p.is_file()}
    assert files == {"config.json", "metrics.jsonl", "summary.json", "animation.gif",
                     *(f"checkpoints/step_{s:06d}.pt" for s in range(4)),
                     *(f"frames/step_{s:06d}.png" for s in range(4))}

    config = json.loads((run3 / "config.json").read_text())
    assert config["scenario"] == "advection1d" and config["steps"] == 3 and config["seed"] == 0
    assert config["options"]["n_points"] == 400 and config["options"]["hidden_features"] == 12
    assert config["fit"] == {"optimizer": "lm", "max_iters": 10, "rtol": 1e-5}
    assert config["integrator"] == "midpoint" and config["dt"] == 0.05

    metrics = read_metrics(run3)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    for m in metrics:
        assert METRIC_KEYS <= set(m)
        assert m["t"] == m["step"] * config["dt"]
        assert math.isfinite(m["loss"]) and m["fit_iters"] >= 1 and m["seconds"] > 0 and m["peak_memory_mb"] > 0
    assert all(0 < m["fit_iters"] <= 10 for m in metrics[1:])
    # the errors are the relative L2 errors of the checkpointed fields against the exact solution
    problem = Advection1D(n_points=400, hidden_features=12)
    x = problem.eval_points()
    for m in metrics:
        ckpt = torch.load(run3 / f"checkpoints/step_{m['step']:06d}.pt", weights_only=True)
        dtype = getattr(torch, config["dtype"])
        field = problem.default_field(dtype=dtype)
        torch.nn.utils.vector_to_parameters(ckpt["weights"], field.parameters())
        with torch.no_grad():
            err = relative_l2(field(x.to(dtype)), problem.exact(x, m["t"]))
        assert m["error"] == pytest.approx(err, rel=1e-3, abs=2e-6)  # float32 would differ by a few ulp
        assert m["error"] < 2e-3  # measured 1.6e-4 .. 6.8e-4 (step 3: the midpoint rule's own error is 6.6e-4)

    summary = json.loads((run3 / "summary.json").read_text())
    assert summary["scenario"] == "advection1d" and summary["status"] == "completed"
    assert summary["steps"] == 3 and summary["final_error"] == metrics[-1]["error"]
    assert summary["seconds_per_step"] == pytest.approx(sum(m["seconds"] for m in metrics[1:]) / 3)
    assert summary["peak_memory_mb"] > 0

    with open(run3 / "animation.gif", "rb") as fh:
        assert fh.read(6) in (b"GIF87a", b"GIF89a")
    from PIL import Image

    with Image.open(run3 / "animation.gif") as gif:
        assert gif.n_frames == 4


def test_an_existing_directory_is_refused_and_left_untouched(run3, copy_run, capsys):
    run = copy_run(run3)
    before = snapshot(run)
    capsys.readouterr()
    assert main(small_run(run, 3)) == 2
    err = capsys.readouterr().err
    assert f"run directory {run} already exists" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before


def test_overwrite_replaces_the_run(run3, copy_run):
    run = copy_run(run3)
    (run / "stray.txt").write_text("left from before")
    assert main(small_run(run, 0, "--overwrite")) == 0
    assert not (run / "stray.txt").exists()
    assert [m["step"] for m in read_metrics(run)] == [0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000000.pt"]
    # step 0 of the same seed is recomputed identically
    assert computed_metrics(run)[0] == computed_metrics(run3)[0]


def test_resume_and_overwrite_together_are_refused(run3, copy_run, capsys):
    run = copy_run(run3)
    before = snapshot(run)
    assert main(small_run(run, 3, "--resume", "--overwrite")) == 2
    assert "contradict" in capsys.readouterr().err
    assert snapshot(run) == before


def test_resume_with_another_configuration_is_refused(run3, copy_run, capsys):
    run = copy_run(run3)
    before = snapshot(run)
    capsys.readouterr()
    assert main(small_run(run, 5, "--resume", "--velocity", "0.3")) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "options" in err and "0.3" in err and "--overwrite" in err
    assert snapshot(run) == before

    assert main(small_run(run, 5, "--resume", "--seed", "1")) == 2
    assert "seed: stored 0, now 1" in capsys.readouterr().err
    assert main(small_run(run, 5, "--resume", "--integrator", "trapezoidal")) == 2
    assert "integrator: stored 'midpoint', now 'trapezoidal'" in capsys.readouterr().err
    assert snapshot(run) == before


def test_resume_with_another_option_names_that_option(run3, copy_run, capsys):
    run = copy_run(run3)
    capsys.readouterr()
    assert main(small_run(run, 5, "--resume", "--velocity", "0.3")) == 2
    err = capsys.readouterr().err
    assert "velocity: stored 0.25, now 0.3" in err and "width" not in err


def test_resume_of_a_directory_without_a_run(tmp_path, capsys):
    assert main(small_run(tmp_path / "nothing", 2, "--resume")) == 2
    assert "holds no run (no config.json)" in capsys.readouterr().err


def test_unknown_scenario(tmp_path, capsys):
    assert main(["run", "advection9d", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'advection9d'" in err and "advection1d" in err
    assert not (tmp_path / "x").exists()


def test_unknown_option(tmp_path, capsys):
    assert main(["run", "advection1d", "--velocty", "0.3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--velocty" in err and "'advection1d'" in err and "--velocity" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,message", [
    (["--dt", "0"], "--dt must be a positive number, got 0.0"),
    (["--steps", "-2"], "--steps must be a non-negative integer, got -2"),
    (["--integrator", "rk4"], "unknown integrator 'rk4'"),
    (["--optimizer", "sgd"], "unknown optimizer 'sgd'"),
    (["--method", "spectral"], "has no method 'spectral'; choose one of ['insr', 'grid']"),
    (["--grid-scheme", "weno"], "invalid choice: 'weno'"),
    (["--width", "wide"], "invalid float value: 'wide'"),
])
def test_bad_settings_exit_2_naming_them(tmp_path, capsys, args, message):
    argv = ["run", "advection1d", "--out", str(tmp_path / "x"), *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (choices, types) exit 2 by themselves
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_diverging_run_exits_1_and_keeps_the_good_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Advection1D, "rhs", lambda self, u, x, t: u(x) * math.nan)
    run = tmp_path / "diverged"
    assert main(small_run(run, 3)) == 1
    err = capsys.readouterr().err
    assert "time step 1" in err and "failed" in err and "kept in the run directory" in err
    assert [m["step"] for m in read_metrics(run)] == [0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000000.pt"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and "time step 1" in summary["message"] and summary["steps"] == 0


def test_grid_method_writes_metrics_with_errors(tmp_path):
    run = tmp_path / "grid"
    assert main(small_run(run, 4, "--method", "grid", "--grid-cells", "300")) == 0
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    errors = [m["error"] for m in metrics]
    assert all(0 < e < 4e-3 for e in errors)  # measured 1.40e-3 .. 1.42e-3 (300 cells, semi-Lagrangian)
    assert torch.load(run / "checkpoints/step_000004.pt", weights_only=True)["values"].shape == (300,)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "grid" and summary["final_error"] == errors[-1]
    assert len(list((run / "frames").glob("*.png"))) == 5 and (run / "animation.gif").is_file()


def _check_list_output(out: str) -> None:
    assert "scenarios:" in out and "integrators:" in out and "optimizers:" in out
    for name in SCENARIOS:
        assert name in out
    expected_orders = {"explicit-euler": 1, "implicit-euler": 1, "midpoint": 2, "trapezoidal": 2,
                       "gauss-legendre2": 4}
    lines = out.splitlines()
    for name, cls in INTEGRATORS.items():
        line = next(li for li in lines if li.split()[:1] == [name])
        assert f"order {cls.order}" in line
        if name in expected_orders:
            assert cls.order == expected_orders[name]
    assert set(expected_orders) <= set(INTEGRATORS)
    for name in OPTIMIZERS:
        assert any(li.split()[:1] == [name] for li in lines)
    for opt in ("--velocity", "--n-points", "--grid-scheme"):
        assert opt in out


def test_list(capsys):
    assert main(["list"]) == 0
    _check_list_output(capsys.readouterr().out)


def test_list_rejects_extra_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list", "--all"])
    assert info.value.code == 2 and "unrecognized arguments: --all" in capsys.readouterr().err


def test_python_dash_m_list():
    proc = subprocess.run([sys.executable, "-m", "neuralnumerics", "list"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    _check_list_output(proc.stdout)


def test_python_dash_m_reports_errors_with_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "neuralnumerics", "run", "nope", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown scenario 'nope'" in proc.stderr


# neuralnumerics solve ----------------------------------------------------------------------------------------------

def test_solve_tank_compares_solvers_and_writes_pictures(tmp_path, capsys, one_thread):
    import numpy as np
    import scipy.sparse.linalg as spla

    from neuralnumerics.gallery.tanks import tank_system

    out = tmp_path / "solve"
    assert main(["solve", "tank", "--grid", "24x20", "--solver", "cg,cg+ic,gmres", "--rtol", "1e-8",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tank 24x20: 480 unknowns" in text and "cg+ic" in text
    summary = json.loads((out / "summary.json").read_text())
    assert [s["solver"] for s in summary["solves"]] == ["cg", "cg+ic", "gmres"]
    assert all(s["status"] == "success" and s["relative_residual"] <= 1e-8 for s in summary["solves"])
    assert all(s["difference_to_first"] < 1e-6 for s in summary["solves"])
    # preconditioning pays: fewer iterations with IC(0)
    assert summary["solves"][1]["iterations"] < summary["solves"][0]["iterations"]
    assert (out / "residuals.png").stat().st_size > 0 and (out / "solution.png").stat().st_size > 0
    # the oracle: a sparse direct solve of the same system agrees with what every solver found
    op, b = tank_system((24, 20))
    x = spla.spsolve(op.to_scipy().tocsc(), b.numpy())
    assert np.linalg.norm(op.to_scipy() @ x - b.numpy()) / np.linalg.norm(b.numpy()) < 1e-10


def test_solve_reports_a_solver_that_hits_its_cap(capsys):
    assert main(["solve", "tank", "--grid", "16x16", "--solver", "cg", "--max-iters", "3"]) == 1
    assert "max_iters" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--solver", "bicgstab"], "unknown solver 'bicgstab'; choose from cg, gmres"),
    (["--solver", "cg+ilu"], "unknown preconditioner 'ilu' in 'cg+ilu'"),
    (["--grid", "12"], "--grid must have 2 or 3 sizes"),
    (["--grid", "axb"], "--grid must look like 128x128"),
])
def test_solve_bad_arguments(args, message, capsys):
    assert main(["solve", "tank", *args]) == 2
    assert message in capsys.readouterr().err


# neuralnumerics sequence -------------------------------------------------------------------------------------------

def test_sequence_recycling_beats_independent_solves_and_writes_a_summary(tmp_path, capsys, one_thread):
    import numpy as np
    import scipy.sparse.linalg as spla

    from neuralnumerics.gallery import darcy_flow

    out = tmp_path / "seq"
    assert main(["sequence", "darcy", "--count", "8", "--grid", "16", "--solver", "gcrodr,gmres,recycled-cg",
                 "--rtol", "1e-8", "--quiet", "--out", str(out)]) == 0
    assert "darcy: 8 systems of 256 unknowns, sorted" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    by = {s["solver"]: s for s in summary["solves"]}
    assert all(s["status"] == "success" for s in by.values())
    assert by["gcrodr"]["iterations"] < by["gmres"]["iterations"]
    assert sorted(by["gcrodr"]["order"]) == list(range(8))
    assert (out / "iterations.png").stat().st_size > 0
    # the family is what the summary says: the oracle solves one of its systems directly
    A, b = darcy_flow(8, 16, seed=0).systems[3]
    x = spla.spsolve(A.tocsc(), b.numpy())
    assert np.linalg.norm(A @ x - b.numpy()) < 1e-8 * np.linalg.norm(b.numpy())


@pytest.mark.parametrize("args,message", [
    (["helmholtz", "--solver", "cg"], "cg needs symmetric positive definite systems and the helmholtz family"),
    (["darcy", "--solver", "minres"], "unknown solver 'minres'; choose from gcrodr"),
])
def test_sequence_bad_arguments(args, message, capsys):
    assert main(["sequence", *args, "--count", "3", "--grid", "8", "--quiet"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_threads_must_be_a_positive_integer(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["run", "advection1d", "--threads", value, "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert f"--threads: must be a positive integer, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_set_threads_limits_torch_and_the_loaded_blas():
    from neuralnumerics._threads import set_threads

    before = torch.get_num_threads()
    try:
        blas = set_threads(1)
        assert torch.get_num_threads() == 1
        threadpoolctl = pytest.importorskip("threadpoolctl")
        assert blas == 1
        assert all(info["num_threads"] == 1 for info in threadpoolctl.threadpool_info()
                   if info["user_api"] == "blas")
    finally:
        torch.set_num_threads(before)

"""``neuralnumerics train dcdm`` and ``solve smoke --solver dcdm``: run directory, exact resume, refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import scipy.sparse.linalg as spla
import torch

from neuralnumerics.cli import main
from neuralnumerics.gallery import smoke_systems
from neuralnumerics.linalg import DCDM, CG, linear_solve, load_dcdm_model

# 16x16 training grid, 4 batches per epoch, 3 epochs: a few seconds on one core
TRAIN = ["train", "dcdm", "--grid", "16x16", "--samples", "40", "--batch-size", "10", "--epochs", "3",
         "--lr", "1e-3", "--lanczos-steps", "120", "--checkpoint-every", "1", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 16x16 model trained for 100 batches (about 8 s): enough to converge, slower than CG."""
    run = tmp_path_factory.mktemp("dcdm") / "run"
    before = torch.get_num_threads()
    try:
        assert main(TRAIN + ["--samples", "1000", "--epochs", "1", "--checkpoint-every", "50", "--out", str(run)]) == 0
    finally:
        torch.set_num_threads(before)
    return run / "model.pt"


def _untimed(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_a_run_directory_and_resumes_exactly(tmp_path, one_thread, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(TRAIN + ["--out", str(full)]) == 0
    assert "written:" in capsys.readouterr().out
    for name in ("config.json", "metrics.jsonl", "model.pt", "summary.json", "loss.png"):
        assert (full / name).is_file(), name
    rows = _metrics(full)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["validation_loss"] < rows[0]["validation_loss"] < 1.5
    summary = json.loads((full / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 3
    assert summary["evaluation"]["cg"]["status"] == "success"
    config = json.loads((full / "config.json").read_text())
    assert config["grid"] == [16, 16] and config["config"]["samples"] == 40
    # only the last two checkpoints are kept: batches 11 and 12
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step_000011.pt", "step_000012.pt"]

    # killed inside the last epoch (after batch 11), resumed: same metrics and bitwise the same weights
    shutil.copytree(full, cut)
    (cut / "checkpoints" / "step_000012.pt").unlink()
    assert main(TRAIN + ["--out", str(cut), "--resume"]) == 0
    assert _untimed(_metrics(cut)) == _untimed(rows)
    a, b = load_dcdm_model(full / "model.pt"), load_dcdm_model(cut / "model.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_train_refusals(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(TRAIN + ["--epochs", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(TRAIN + ["--epochs", "2", "--out", str(out), "--resume"]) == 2
    assert "other settings (config)" in capsys.readouterr().err
    assert (out / "model.pt").is_file()  # nothing was lost
    for args, message in ((["--grid", "16"], "--grid must"), (["--lr", "-1"], "lr must be a positive"),
                          (["--minutes", "0"], "--minutes must be positive"),
                          (["--init", str(tmp_path / "nope.pt")], "does not exist")):
        assert main(TRAIN + args + ["--out", str(tmp_path / "x"), "--overwrite"]) == 2
        assert message in capsys.readouterr().err, message


def test_solve_smoke_with_a_trained_dcdm_matches_a_direct_solve(trained, tmp_path, one_thread, capsys):
    out = tmp_path / "solve"
    code = main(["solve", "smoke", "--grid", "24x24", "--step", "3", "--solver", "cg,dcdm", "--model",
                 str(trained), "--max-iters", "3000", "--rtol", "1e-8", "--threads", "1", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, summary
    assert [s["solver"] for s in summary["solves"]] == ["cg", "dcdm"]
    assert summary["problem"]["kind"] == "smoke" and summary["problem"]["obstacle"] == "sphere"
    assert all(s["difference_to_first"] < 1e-6 for s in summary["solves"])
    # the oracle: a sparse direct solve of the same system
    op, b = smoke_systems((24, 24), obstacle="sphere", steps=3)[-1]
    x = torch.as_tensor(spla.spsolve(op.to_scipy().tocsc(), b.numpy()))
    sol = linear_solve(op, b, DCDM(trained, rtol=1e-10, max_iters=5000))
    assert float((sol.x - x).norm() / x.norm()) < 1e-8


@pytest.mark.parametrize("args, message", [
    (["--solver", "dcdm"], "needs a trained model"),
    (["--solver", "dcdm", "--model", "/nonexistent/model.pt"], "does not exist"),
    (["--solver", "dcdm+ic", "--model", "x"], "dcdm takes no preconditioner"),
    (["--obstacle", "disc"], "unknown obstacle kind"),
])
def test_solve_smoke_refusals(args, message, capsys):
    assert main(["solve", "smoke", "--grid", "16x16", "--step", "2", *args]) == 2
    assert message in capsys.readouterr().err


def test_smoke_runs_with_dcdm_as_its_pressure_solver(one_thread):
    """The grid fluid baseline takes DCDM as its pressure solver and makes the same flow as with CG."""
    from neuralnumerics.classical import Smoke
    from neuralnumerics.gallery import obstacle_mask

    solid = obstacle_mask((20, 20), "sphere")
    runs = {}
    for name, solver in (("cg", CG(rtol=1e-10)), ("dcdm", DCDM(rtol=1e-10))):
        sim = Smoke((20, 20), solid=solid, solver=solver)
        sim.run(4, 0.1)
        runs[name] = sim
    assert runs["dcdm"].rms_divergence() < 1e-8
    assert torch.allclose(runs["dcdm"].density, runs["cg"].density, atol=1e-7)


def test_stable_fluids_takes_dcdm_as_its_pressure_solver(one_thread):
    """The INSR fluids' grid baseline with DCDM (identity network: CG's iterates) matches its built-in CG."""
    from neuralnumerics.classical import StableFluids2D
    from neuralnumerics.pde.fluid import taylor_green_velocity

    initial = taylor_green_velocity
    a = StableFluids2D(16, initial=initial, obstacle=(0.3, 0.2, 0.3), solver="cg", rtol=1e-10)
    b = StableFluids2D(16, initial=initial, obstacle=(0.3, 0.2, 0.3), solver=DCDM(rtol=1e-10))
    a.run(3, 0.05)
    b.run(3, 0.05)
    assert b.solver_name == "DCDM" and b.rms_divergence() < 1e-8
    assert torch.allclose(a.u, b.u, atol=1e-8) and torch.allclose(a.v, b.v, atol=1e-8)
    with pytest.raises(ValueError, match="rtol is the solver's own"):
        StableFluids2D(16, initial=initial, solver=DCDM(), rtol=1e-6)


def test_train_with_a_larger_evaluation_grid_keeps_the_best_epoch(tmp_path, one_thread, capsys):
    from neuralnumerics.io.dcdm_runs import training_operator

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(TRAIN + ["--eval-grid", "32x32", "--out", str(full)]) == 0
    rows = _metrics(full)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["eval_grid"] == [32, 32] and json.loads((full / "config.json").read_text())["eval_grid"] == [32, 32]
    # the rule, written out: converged first, then fewest iterations, then lowest residual, latest on ties
    best = min(rows, key=lambda r: (r["eval_status"] != "success", r["eval_iterations"], r["eval_residual"],
                                    -r["epoch"]))
    assert summary["selected_epoch"] == best["epoch"]
    kept, last = load_dcdm_model(full / "model.pt"), load_dcdm_model(full / "model_last.pt")
    same = all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), last.state_dict().values()))
    assert same == (best["epoch"] == rows[-1]["epoch"])
    # replay: each kept network solves the 32x32 evaluation system in the iterations its epoch recorded
    op = training_operator((32, 32), seed=0)
    ckpt = sorted((full / "checkpoints").iterdir())[-1]
    b = torch.load(ckpt, weights_only=False)["eval_rhs"]
    assert b.shape == (32 * 32,)
    for model, row in ((kept, best), (last, rows[-1])):
        sol = linear_solve(op, b, DCDM(model, rtol=1e-4, max_iters=500), throw=False)
        assert sol.stats.iterations == row["eval_iterations"]
    assert summary["evaluation"]["dcdm"]["iterations"] == best["eval_iterations"]

    # resumed from inside the last epoch: the same metrics
    shutil.copytree(full, cut)
    (cut / "checkpoints" / "step_000012.pt").unlink()
    assert main(TRAIN + ["--eval-grid", "32x32", "--out", str(cut), "--resume"]) == 0
    assert _untimed(_metrics(cut)) == _untimed(rows)
    capsys.readouterr()
    assert main(TRAIN + ["--eval-grid", "32x32x32", "--out", str(tmp_path / "x")]) == 2
    assert "--eval-grid 32x32x32 has 3 dimensions, the training grid 2" in capsys.readouterr().err
    assert main(TRAIN + ["--eval-grid", "32", "--out", str(tmp_path / "x")]) == 2
    assert "--eval-grid must have 2 or 3 sizes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

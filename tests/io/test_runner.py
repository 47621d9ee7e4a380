"""Resuming a killed run reproduces the uninterrupted run exactly (CPU), and the run-directory failure paths.

A kill is simulated on a copy of a finished 3-step run: the checkpoints after some step are deleted and
``metrics.jsonl`` is cut after that step's line, possibly in the middle of the next line (a write cut
short). Resuming to 5 steps must give exactly the metrics of an uninterrupted 5-step run with the same seed,
every key but the timings.
"""

from __future__ import annotations

import json

import pytest
import torch

from neuralnumerics.cli import main
from neuralnumerics.io import RunDir, RunDirError, resolve_config, run_scenario
from neuralnumerics.io.runner import _check_resume

from tests.helpers import computed_metrics, read_metrics, small_run

pytestmark = pytest.mark.usefixtures("one_thread")


def simulate_kill(run, last_kept: int, partial_line: bool) -> None:
    """Leave ``run`` as a kill during step ``last_kept + 1`` would: its checkpoint missing, its line cut."""
    for p in (run / "checkpoints").glob("step_*.pt"):
        if int(p.stem.split("_")[1]) > last_kept:
            p.unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    text = "".join(lines[:last_kept + 1])
    if partial_line:
        text += lines[last_kept + 1][: len(lines[last_kept + 1]) // 2]
    (run / "metrics.jsonl").write_text(text)
    (run / "summary.json").unlink()


@pytest.mark.parametrize("last_kept,partial_line", [(2, False), (2, True), (0, True)],
                         ids=["killed-in-step-3", "killed-writing-step-3", "killed-writing-step-1"])
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(run3, run5, copy_run, last_kept, partial_line):
    run = copy_run(run3)
    simulate_kill(run, last_kept, partial_line)
    if partial_line:
        with pytest.raises(json.JSONDecodeError):
            read_metrics(run)
    assert main(small_run(run, 5, "--resume")) == 0
    assert computed_metrics(run) == computed_metrics(run5)
    assert [m["step"] for m in read_metrics(run)] == [0, 1, 2, 3, 4, 5]
    assert RunDir(run, resume=True).checkpoint_steps() == [0, 1, 2, 3, 4, 5]
    for step in range(6):
        a = torch.load(run / f"checkpoints/step_{step:06d}.pt", weights_only=True)["weights"]
        b = torch.load(run5 / f"checkpoints/step_{step:06d}.pt", weights_only=True)["weights"]
        assert torch.equal(a, b)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 5
    assert summary["final_error"] == read_metrics(run5)[-1]["error"]
    assert json.loads((run / "config.json").read_text())["steps"] == 5


def test_resuming_a_finished_run_extends_it(run3, run5, copy_run):
    run = copy_run(run3)
    assert main(small_run(run, 5, "--resume")) == 0
    assert computed_metrics(run) == computed_metrics(run5)


def test_the_metrics_are_not_trivially_equal(run3, run5):
    """The resume comparison can fail: runs that differ (here only in length) differ in their metrics."""
    five, three = computed_metrics(run5), computed_metrics(run3)
    assert five[:4] == three  # the same seed gives the same first steps
    assert len({m["loss"] for m in five}) == 6 and len({m["error"] for m in five}) == 6


def test_resume_from_an_unreadable_checkpoint_names_it(run3, copy_run, capsys):
    run = copy_run(run3)
    (run / "checkpoints/step_000003.pt").write_bytes(b"not a checkpoint")
    assert main(small_run(run, 5, "--resume")) == 2
    err = capsys.readouterr().err
    assert "step_000003.pt cannot be read" in err and "delete it to resume from the one before" in err


def test_resume_may_extend_steps_without_restating_frame_every():
    """frame_every defaults to steps // 60: extending a run changes it, which must not block the resume."""
    stored = resolve_config("advection1d", steps=60, device="cpu")
    _check_resume(stored, resolve_config("advection1d", steps=120, device="cpu"))
    with pytest.raises(RunDirError, match=r"dt: stored 0.05, now 0.1"):
        _check_resume(stored, resolve_config("advection1d", steps=120, dt=0.1, device="cpu"))


def test_run_scenario_refusals_write_nothing(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(ValueError, match=r"scenario 'advection1d' has no option 'speed'; its options are .*velocity"):
        run_scenario("advection1d", out=str(out), progress=False, options={"speed": 1.0})
    with pytest.raises(ValueError, match=r"option 'n_points' of scenario 'advection1d' needs a int, got 'many'"):
        run_scenario("advection1d", out=str(out), progress=False, options={"n_points": "many"})
    with pytest.raises(ValueError, match=r"--checkpoint-every must be at least 1, got 0"):
        run_scenario("advection1d", out=str(out), progress=False, checkpoint_every=0)
    assert not out.exists()


def test_rundir_failure_paths(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="exists and is not a directory"):
        RunDir(tmp_path / "file")
    with pytest.raises(RunDirError, match="contradict"):
        RunDir(tmp_path / "a", resume=True, overwrite=True)
    # an empty directory is not a run: it may be used without flags
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty")
    rd = RunDir(tmp_path / "b")
    rd.write_config({"k": 1})
    with pytest.raises(RunDirError, match="already exists"):
        RunDir(tmp_path / "b")
    rd.config_path.write_text("{broken")
    with pytest.raises(RunDirError, match="is not valid JSON"):
        RunDir(tmp_path / "b", resume=True).read_config()
    with pytest.raises(RunDirError, match="step_000007.pt is missing"):
        rd.load_checkpoint(7)


def test_rundir_metrics_stop_at_a_cut_line_and_truncate(tmp_path):
    rd = RunDir(tmp_path / "m")
    for step in range(4):
        rd.append_metrics({"step": step, "loss": step / 10})
    with open(rd.metrics_path, "a") as fh:
        fh.write('{"step": 4, "lo')
    assert [m["step"] for m in rd.read_metrics()] == [0, 1, 2, 3]
    assert [m["step"] for m in rd.truncate_metrics(1)] == [0, 1]
    assert [json.loads(li)["step"] for li in rd.metrics_path.read_text().splitlines()] == [0, 1]
    assert rd.truncate_metrics(-1) == [] and rd.metrics_path.read_text() == ""

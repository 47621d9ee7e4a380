"""The harness that runs the INSR reference's 2D stretch elasticity example (benchmarks/_insr_elasticity_reference.py).

The fast tests need no reference. The slow one runs the reference with its Adam loops capped at 2 and 3 iterations when
NEURALNUMERICS_INSR_REFERENCE names a checkout of github.com/honglin-c/INSR-PDE (and the interpreter can import the
reference's dependencies, e.g. with PYTHONPATH pointing at them); otherwise it is skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ..test_benchmarks import _reference_from_env

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
try:
    import _insr_elasticity_reference as ela
finally:
    sys.path.pop(0)


def test_reference_argv_is_the_stretch_script():
    argv = ela.reference_argv("/tmp/proj")
    assert argv[0] == "elasticity"

    def value(flag):
        return argv[argv.index(flag) + 1]

    assert value("--proj_dir") == "/tmp/proj"
    assert value("--num_hidden_layers") == "3" and value("--hidden_features") == "68"
    assert value("-sr") == "100" and value("-vr") == "100" and value("-T") == "1"
    assert value("--max_n_iters") == "100000" and float(value("--lr")) == 1e-4 and value("--dim") == "2"
    i = argv.index("--energy")
    assert argv[i + 1:i + 5] == ["arap", "constraint", "constraint_right", "volume"]
    assert float(value("--ratio_volume")) == 1e3 and float(value("--ratio_arap")) == 1.0
    assert float(value("--ratio_constraint")) == 1e4 and float(value("--constraint_right_offset_x")) == 2.0
    capped = ela.reference_argv("/tmp/proj", max_iters=7)
    assert capped[capped.index("--max_n_iters") + 1] == "7" and capped.count("--max_n_iters") == 1


def test_default_points_are_cell_centres():
    p = ela.default_points(4)
    assert p.shape == (16, 2)
    np.testing.assert_allclose(np.unique(p[:, 0]), [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(p[1], [-0.75, -0.25])  # x slowest
    assert ela.default_points().shape == (10000, 2)


@pytest.mark.parametrize("kwargs", [
    {"threads": 0}, {"threads": 1.5}, {"threads": True},
    {"max_iters": 0}, {"max_iters": -3}, {"max_iters": 2.5}, {"max_iters": True},
    {"init_max_iters": 0}, {"init_max_iters": 1.5},
    {"timeout": 0}, {"timeout": -1.0}, {"poll_seconds": 0},
    {"points": np.zeros((3, 3))}, {"points": np.zeros(4)}, {"points": np.zeros((0, 2))},
    {"points": [[0.0, float("nan")]]},
])
def test_bad_arguments_are_rejected_before_anything_runs(tmp_path, kwargs):
    # the path does not exist: the arguments are checked first
    with pytest.raises(ValueError):
        ela.run_reference_elasticity(tmp_path / "nowhere", **kwargs)


def test_a_directory_that_is_not_a_checkout_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="INSR-PDE checkout"):
        ela.run_reference_elasticity(tmp_path)


def test_patches_fail_loudly_on_an_unexpected_checkout(tmp_path):
    (tmp_path / "elasticity").mkdir()
    (tmp_path / "elasticity" / "model.py").write_text("# not the reference\n")
    (tmp_path / "elasticity" / "visualize.py").write_text("# not the reference\n")
    with pytest.raises(RuntimeError, match="patch failed"):
        ela.patch_elasticity_copy(tmp_path)


def test_driver_is_valid_python():
    compile(ela._DRIVER, ela._SCRIPT_NAME, "exec")


def test_result_reports_why_it_stopped():
    run = ela.ReferenceElasticityRun(records=[{"call": "initialize", "iters": 3}], returncode=1,
                                     log_tail="a\nb\nTraceback\nboom\n")
    assert not run.ok and run.record("initialize")["iters"] == 3 and run.record("step") is None
    assert run.failure().startswith("driver exited with code 1 after 1 of 2 call(s)") and "boom" in run.failure()
    assert ela.ReferenceElasticityRun(error="no tensorboardX").failure() == "no tensorboardX"
    done = ela.ReferenceElasticityRun(records=[{"call": "initialize"}, {"call": "step"}], returncode=0,
                                      deformed=np.zeros((1, 2), np.float32))
    assert done.ok and done.failure() is None


def test_missing_dependencies_lists_module_names():
    missing = ela.missing_dependencies()
    assert isinstance(missing, list) and set(missing) <= set(ela.REFERENCE_DEPENDENCIES)


@pytest.mark.slow
def test_reference_stretch_runs_a_few_iterations(tmp_path):
    reference, _ = _reference_from_env("NEURALNUMERICS_INSR_REFERENCE")
    if not reference or not Path(reference).is_dir():
        pytest.skip("set NEURALNUMERICS_INSR_REFERENCE to a checkout of github.com/honglin-c/INSR-PDE")
    missing = ela.missing_dependencies()
    if missing:
        pytest.skip(f"the reference needs {', '.join(missing)} (pip install them, or put them on PYTHONPATH)")
    points = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.5]])
    run = ela.run_reference_elasticity(reference, threads=1, max_iters=3, init_max_iters=2, seed=0, points=points,
                                       workdir=tmp_path / "work", timeout=600)
    assert run.ok, run.failure()
    assert len(run.patches) in (5, 6)  # 2 or 3 shared (the third depends on torch) + 3 elasticity patches
    init, step = run.record("initialize"), run.record("step")
    assert init["iters"] == 2 and step["iters"] == 3 and init["timestep"] == 0 and step["timestep"] == 1
    assert init["seconds"] > 0 and step["seconds"] > 0 and init["lr"] == step["lr"] == 1e-4
    assert np.isfinite(init["loss"]) and np.isfinite(step["loss"])
    assert run.deformed.shape == (3, 2) and run.deformed.dtype == np.float32
    # two tiny Adam loops from a near-zero displacement: q is still close to X
    assert np.abs(run.deformed - points).max() < 0.5
    assert step["right_violation"] > 1.0  # the right edge has not moved its 2 units yet
    for key in ("arap_density", "volume_density", "min_det", "left_violation", "eval_seconds"):
        assert np.isfinite(step[key]), key
    assert (tmp_path / "work" / "steps.jsonl").is_file()  # kept workdir

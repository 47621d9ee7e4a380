"""Sliced Wasserstein gradient flows: the exact W2 against POT, the flow's resumption, the procedural clouds,
and the ``sw-flow`` scenario end to end from the command line."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from neuralnumerics.cli import main
from neuralnumerics.gallery.clouds import CLOUD_SHAPES, point_cloud
from neuralnumerics.ot.flow import ESTIMATORS, SlicedFlow, exact_wasserstein

from tests.helpers import computed_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_exact_wasserstein_matches_pots_network_simplex():
    ot = pytest.importorskip("ot", reason="POT is the oracle (pip install pot)")
    x = torch.randn(60, 3, dtype=F64, generator=gen(1))
    y = torch.randn(60, 3, dtype=F64, generator=gen(2)) * 0.7 + 1.0
    w2sq = ot.emd2(torch.full((60,), 1 / 60, dtype=F64), torch.full((60,), 1 / 60, dtype=F64), ot.dist(x, y))
    assert exact_wasserstein(x, y) == pytest.approx(math.sqrt(float(w2sq)), rel=1e-10)
    assert exact_wasserstein(x, x) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        exact_wasserstein(x, y[:50])


def test_clouds_lie_on_their_shapes():
    g = gen(3)
    sphere = point_cloud("sphere", 500, generator=g, dtype=F64, center=(1.0, 2.0, 3.0), scale=2.0)
    torch.testing.assert_close((sphere - torch.tensor([1.0, 2.0, 3.0], dtype=F64)).norm(dim=1),
                               torch.full((500,), 2.0, dtype=F64), rtol=1e-12, atol=0)
    cube = point_cloud("cube", 500, generator=g, dtype=F64)
    torch.testing.assert_close(cube.abs().max(dim=1).values, torch.full((500,), 0.8, dtype=F64), rtol=1e-12, atol=0)
    torus = point_cloud("torus", 500, generator=g, dtype=F64)
    ring = torch.sqrt(torus[:, 0] ** 2 + torus[:, 1] ** 2)
    torch.testing.assert_close((ring - 1) ** 2 + torus[:, 2] ** 2, torch.full((500,), 0.35 ** 2, dtype=F64),
                               rtol=1e-10, atol=0)
    for shape in CLOUD_SHAPES:
        pts = point_cloud(shape, 64, generator=gen(4))
        assert pts.shape == (64, 3) and bool(torch.isfinite(pts).all())
        assert torch.equal(pts, point_cloud(shape, 64, generator=gen(4)))
    with pytest.raises(ValueError, match="unknown shape 'bunny'"):
        point_cloud("bunny", 10)


def test_every_estimator_flows_the_cloud_to_the_target_and_resumes_bit_for_bit():
    source = point_cloud("sphere", 200, generator=gen(5), dtype=F64, center=(-1.5,) * 3)
    target = point_cloud("cube", 200, generator=gen(6), dtype=F64, center=(1.5,) * 3)
    start = exact_wasserstein(source, target)
    a = SlicedFlow(source, target, step_size=0.05, generator=gen(7))
    for _ in range(150):
        a.step()
    saved = a.state_dict()
    for _ in range(150):
        a.step()
    for name, cloud in a.clouds.items():
        assert exact_wasserstein(cloud, target) < start / 10, name
    b = SlicedFlow(source, target, step_size=0.05, generator=gen(99))
    b.load_state_dict(saved)
    for _ in range(150):
        b.step()
    for name in ESTIMATORS:
        assert torch.equal(a.clouds[name], b.clouds[name])
    with pytest.raises(ValueError, match="unknown estimators"):
        SlicedFlow(source, target, estimators=("sw", "mc"))


def test_the_sw_flow_scenario_writes_its_run_directory_and_resumes(tmp_path, capsys):
    args = ["run", "sw-flow", "--steps", "40", "--n-points", "120", "--eval-every", "10", "--frame-every", "20",
            "--checkpoint-every", "10", "--quiet", "--seed", "3"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(args + ["--out", str(full)]) == 0
    files = {p.relative_to(full).as_posix() for p in full.rglob("*") if p.is_file()}
    assert {"config.json", "metrics.jsonl", "summary.json", "animation.gif", "w2.png"} <= files
    assert {f"frames/step_{s:06d}.png" for s in (0, 20, 40)} <= files
    config = json.loads((full / "config.json").read_text())
    assert config["method"] == "sliced-flow" and config["integrator"] == "explicit-euler" and config["fit"] is None
    rows = computed_metrics(full)
    assert [r["step"] for r in rows] == list(range(41))
    assert rows[10]["w2_sw"] is not None and rows[11]["w2_sw"] is None
    assert rows[40]["w2_lcv-sw"] < rows[0]["w2_lcv-sw"]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["final_w2_ucv-sw"] == pytest.approx(rows[40]["w2_ucv-sw"])
    # a run of 20 steps, extended to 40: the same numbers as the run of 40
    assert main(args[:3] + ["20"] + args[4:] + ["--out", str(part)]) == 0
    assert main(args + ["--out", str(part), "--resume"]) == 0
    assert computed_metrics(part) == rows


@pytest.mark.parametrize("extra, message", [
    (["--optimizer", "lm"], "has no per-step fit; --optimizer do"),
    (["--integrator", "midpoint"], "explicit Euler steps of the gradient flow; --integrator does not apply"),
    (["--source", "bunny"], "unknown shape 'bunny'"),
    (["--estimators", "sw,mc"], "option 'estimators': unknown \\['mc'\\]"),
    (["--n-points", "0"], "'n_points' must be at least 1"),
])
def test_the_sw_flow_scenario_refuses_bad_settings(tmp_path, capsys, extra, message):
    assert main(["run", "sw-flow", "--steps", "2", "--quiet", "--out", str(tmp_path / "r")] + extra) == 2
    assert re.search(message, capsys.readouterr().err)

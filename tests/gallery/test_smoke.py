"""Smoke pressure systems: obstacles, and flow-dependent, consistent right-hand sides checked by direct solves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from scipy import ndimage

from neuralnumerics.classical import Smoke
from neuralnumerics.gallery import OBSTACLE_KINDS, obstacle_mask, smoke_systems
from neuralnumerics.linalg import CG, SOR, LinearSolver, PoissonGrid

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(32, 32), (16, 24), (12, 12, 12)])
@pytest.mark.parametrize("kind", OBSTACLE_KINDS)
def test_obstacles_sit_above_the_default_source_and_leave_the_fluid_connected(shape, kind):
    solid = obstacle_mask(shape, kind, seed=1)
    assert solid.dtype == torch.bool and tuple(solid.shape) == shape
    assert bool(solid.any()) == (kind != "none")
    source = Smoke(shape).source
    assert not bool((solid & source).any())
    if kind != "none":
        h = 1.0 / shape[0]
        heights = (solid.nonzero()[:, -1].double() + 0.5) * h
        assert float(heights.min()) > float(((source.nonzero()[:, -1].double() + 0.5) * h).max())
    # one fluid region (no sealed pocket): an open-top tank around it is SPD
    assert ndimage.label((~solid).numpy())[1] == 1


def test_sphere_and_box_have_the_documented_size():
    h = 1 / 64
    sphere = obstacle_mask((64, 64), "sphere")
    assert abs(int(sphere.sum()) * h ** 2 - np.pi * 0.15 ** 2) < 0.02 * np.pi * 0.15 ** 2
    box = obstacle_mask((64, 64, 64), "box")
    assert abs(int(box.sum()) * h ** 3 - 0.24 ** 3) < 0.1 * 0.24 ** 3


def test_the_blob_is_fixed_by_the_seed_and_varies_with_it():
    a = obstacle_mask((48, 48), "blob", seed=5)
    assert torch.equal(a, obstacle_mask((48, 48), "blob", seed=5))
    assert not torch.equal(a, obstacle_mask((48, 48), "blob", seed=6))
    assert torch.equal(obstacle_mask((48, 48), "sphere", seed=5), obstacle_mask((48, 48), "sphere", seed=6))


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 4)])
def test_coarse_grids_still_get_an_obstacle(shape):
    for kind in OBSTACLE_KINDS[1:]:
        assert bool(obstacle_mask(shape, kind).any())


def test_bad_obstacle_arguments():
    with pytest.raises(ValueError, match="unknown obstacle kind 'bunny'; choose one of none, sphere, box, blob"):
        obstacle_mask((16, 16), "bunny")
    with pytest.raises(ValueError, match="2 or 3 integer cell counts"):
        obstacle_mask((16,), "sphere")


@pytest.mark.parametrize("shape, obstacle", [((24, 32), "sphere"), ((24, 24), "blob"), ((10, 10, 12), "box")])
def test_open_tank_systems_are_spd_flow_dependent_and_solvable(shape, obstacle):
    systems = smoke_systems(shape, obstacle=obstacle, steps=6, seed=2)
    assert len(systems) == 6
    op = systems[0][0]
    assert isinstance(op, PoissonGrid) and all(A is op for A, _ in systems)
    assert op.grid_shape == shape and op.positive_definite and not op.singular
    assert torch.equal(op.solid, obstacle_mask(shape, obstacle, seed=2))
    A = op.to_scipy().tocsc()
    previous = None
    for _, b in systems:
        assert b.shape == (int(np.prod(shape)),) and b.dtype == torch.float64
        assert bool(torch.isfinite(b).all()) and float(b.norm()) > 0
        assert float(b[op.solid.reshape(-1)].abs().max()) == 0.0
        # structured: many cells carry a right-hand side, not a single spike
        assert int((b.abs() > 1e-3 * b.abs().max()).sum()) > 0.05 * b.numel()
        x = spla.spsolve(A, b.numpy())
        assert np.linalg.norm(A @ x - b.numpy()) <= 1e-10 * np.linalg.norm(b.numpy())
        if previous is not None:  # the flow moves on: every step's system is new
            assert float((b - previous).norm()) > 1e-3 * float(b.norm())
        previous = b


def test_closed_tank_systems_are_singular_and_consistent():
    systems = smoke_systems((16, 16), obstacle="sphere", steps=4, open_top=False)
    op = systems[0][0]
    assert op.singular
    z = op.nullspace()
    assert z.shape[1] == 1
    for _, b in systems:
        assert float((z.mT @ b).abs().max()) < 1e-12 * float(b.norm())
        x = spla.lsqr(op.to_scipy(), b.numpy(), atol=1e-14, btol=1e-14, iter_lim=20000)[0]
        assert np.linalg.norm(op.to_scipy() @ x - b.numpy()) < 1e-8 * float(b.norm())


def test_every_warmup_and_seed_select_the_systems():
    full = smoke_systems((12, 12), steps=6, seed=3)
    thinned = smoke_systems((12, 12), steps=6, every=2, seed=3)
    assert len(thinned) == 3
    for (_, b), (_, c) in zip(thinned, full[1::2]):
        assert torch.equal(b, c)
    late = smoke_systems((12, 12), steps=2, warmup=5, seed=3)
    assert len(late) == 2 and torch.equal(late[-1][1], full[-1][1])
    # without warm-up the first system is the first step's, from rest: the source's injection alone
    first = smoke_systems((12, 12), steps=1, warmup=0, seed=3)[0][1]
    assert 0 < int((first != 0).sum()) < 0.1 * first.numel()
    assert not torch.equal(smoke_systems((12, 12), steps=1, seed=4)[0][1], full[0][1])


def test_the_given_solver_drives_the_simulation():
    class Counting(CG):
        calls = 0

        def _solve(self, *args):
            Counting.calls += 1
            return super()._solve(*args)

    systems = smoke_systems((8, 8, 8), steps=3, solver=Counting(rtol=1e-5), dtype=torch.float32)
    assert Counting.calls == 4 and isinstance(Counting(), LinearSolver)  # one warm-up step, three recorded
    assert systems[0][1].dtype == torch.float32


def test_the_automatic_preconditioner_changes_the_speed_not_the_systems():
    fast = smoke_systems((16, 20), steps=3, seed=1)
    plain = smoke_systems((16, 20), steps=3, seed=1, preconditioner=None)
    for (_, b), (_, c) in zip(fast, plain):
        assert float((b - c).norm()) < 1e-4 * float(c.norm())
    # a solver without a preconditioner slot gets none
    sor = smoke_systems((8, 8), steps=2, solver=SOR(1.5, rtol=1e-8))
    assert len(sor) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(preconditioner="lu"), "preconditioner must be 'auto'"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(every=0), "every must be an integer >= 1"),
    (dict(warmup=-1), "warmup must be an integer >= 0"),
    (dict(dt=0.0), "dt must be a positive finite number"),
    (dict(obstacle="teapot"), "unknown obstacle kind"),
    (dict(shape=(3, 16)), "at least 4"),
])
def test_bad_generator_arguments(kwargs, match):
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (16, 16))
    with pytest.raises(ValueError, match=match):
        smoke_systems(shape, **kwargs)

"""Tank pressure systems: structure of the operator and consistency of the right-hand side."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from neuralnumerics.gallery import tank_system


@pytest.mark.parametrize("shape", [(20, 16), (8, 8, 6)])
@pytest.mark.parametrize("obstacle", ["disc", "box", "none"])
def test_open_tanks_are_spd_with_zero_rhs_in_the_obstacle(shape, obstacle):
    op, b = tank_system(shape, obstacle=obstacle)
    solid = op.solid.reshape(-1)
    assert op.positive_definite and not op.singular
    assert (obstacle == "none") == (not bool(solid.any()))
    assert torch.equal(b[solid], torch.zeros_like(b[solid]))
    assert float(b.norm()) > 0
    A = op.to_scipy()
    assert np.linalg.eigvalsh(A.toarray()).min() > 0


def test_a_closed_tank_is_singular_and_its_rhs_consistent():
    op, b = tank_system((16, 12), open_top=False)
    assert op.singular
    z = op.nullspace()
    assert z.shape[1] == 1 and float((z.mT @ b).abs().max()) < 1e-12
    # consistent: a least-squares solve leaves no residual
    x = spla.lsqr(op.to_scipy(), b.numpy(), atol=1e-14, btol=1e-14, iter_lim=20000)[0]
    assert np.linalg.norm(op.to_scipy() @ x - b.numpy()) / np.linalg.norm(b.numpy()) < 1e-8


def test_the_seed_fixes_the_rhs():
    assert torch.equal(tank_system((10, 10), seed=3)[1], tank_system((10, 10), seed=3)[1])
    assert not torch.equal(tank_system((10, 10), seed=3)[1], tank_system((10, 10), seed=4)[1])


@pytest.mark.parametrize("kwargs,message", [
    ({"shape": (10,)}, "shape must be 2 or 3 sizes"),
    ({"shape": (10, 10), "obstacle": "star"}, "unknown obstacle 'star'; choose one of disc, box, none"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tank_system(**kwargs)

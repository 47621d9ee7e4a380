"""DCDM (Kaneda et al. 2023): the solver against CG and dense solves, the network, the loss, saved models, training."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from neuralnumerics import Status
from neuralnumerics.gallery.smoke import obstacle_mask
from neuralnumerics.gallery.tanks import tank_system
from neuralnumerics.linalg import CG, DenseOperator, FunctionOperator, Jacobi, LinearSolveError, PoissonGrid, linear_solve
from neuralnumerics.linalg.dcdm import DCDM, DCDMNet, dcdm_loss, load_dcdm_model, save_dcdm_model
from neuralnumerics.linalg.dcdm_training import DCDMTrainConfig, DCDMTrainer, ritz_rhs

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


# helpers ---------------------------------------------------------------------------------------------------------

def dense_solution(op, b):
    """The solution by a dense solve; for a singular (consistent) system the minimum-norm one, which is what a
    Krylov method started from 0 converges to."""
    A = op.to_dense()
    if getattr(op, "singular", False):
        x, *_ = np.linalg.lstsq(A.numpy(), b.numpy(), rcond=None)
        return torch.from_numpy(x)
    return torch.linalg.solve(A, b)


def rel(x, y):
    return float((x - y).norm() / y.norm())


def a_norm(A, e):
    return math.sqrt(max(float(e @ A @ e), 0.0))


def sphere_system():
    """A 3D box open on every side, a ball obstacle, a random right-hand side zero in the obstacle."""
    solid = obstacle_mask((8, 8, 8), "sphere")
    op = PoissonGrid((8, 8, 8), boundary="dirichlet", solid=solid)
    b = torch.randn(512, generator=torch.Generator().manual_seed(0), dtype=F64) * (~solid).reshape(-1)
    return op, b


SYSTEMS = {
    "tank2d": lambda: tank_system((12, 12)),
    "tank3d": lambda: tank_system((7, 7, 7)),
    "sphere3d": sphere_system,
    "closed_box2d": lambda: tank_system((10, 10), obstacle="box", open_top=False),  # singular, consistent
}


def random_net(dim, seed=0, **kw):
    torch.manual_seed(seed)
    return DCDMNet(dim, **kw)


class ExactInverse(nn.Module):
    """``c A^{-1} x`` by a dense solve: the ideal DCDM network (up to the scale c)."""

    def __init__(self, op, c):
        super().__init__()
        self.dim = len(op.grid_shape)
        self.c = nn.Parameter(torch.tensor(float(c), dtype=F64))  # also sets the dtype DCDM feeds the model
        self.register_buffer("A", op.to_dense())

    def forward(self, x):
        return self.c * torch.linalg.solve(self.A, x.reshape(-1)).reshape(x.shape)


class ConstantModel(nn.Module):
    """Returns ``value`` everywhere (0: no new direction; NaN: a broken network)."""

    def __init__(self, dim, value):
        super().__init__()
        self.dim, self.value = dim, value
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.full_like(x, self.value)


# DCDM with the identity is CG ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SYSTEMS))
def test_identity_dcdm_has_cg_iterates(name):
    op, b = SYSTEMS[name]()
    assert bool(op.solid.any())
    cg = linear_solve(op, b, CG(rtol=1e-6))
    h_cg = np.array(cg.stats.residual_history)
    # the recursive residual is the one CG updates: the histories agree to round-off
    rec = linear_solve(op, b, DCDM(rtol=1e-6, true_residual=False))
    assert rec.stats.iterations == cg.stats.iterations > 10
    np.testing.assert_allclose(rec.stats.residual_history, h_cg, rtol=1e-10, atol=0)
    # the recomputed residual b - A x differs from it only by the rounding of the updates
    true = linear_solve(op, b, DCDM(rtol=1e-6))
    assert true.stats.iterations == cg.stats.iterations
    np.testing.assert_allclose(true.stats.residual_history, h_cg, rtol=1e-9, atol=0)
    assert true.stats.matvecs == 2 * true.stats.iterations and rec.stats.matvecs == rec.stats.iterations
    torch.testing.assert_close(true.x, cg.x, rtol=0, atol=1e-8 * float(cg.x.abs().max()))
    # and both reach the dense solution
    tight = linear_solve(op, b, DCDM(rtol=1e-10))
    assert tight.status is Status.SUCCESS
    assert rel(tight.x, dense_solution(op, b)) < 1e-7
    assert float((b - op.mv(tight.x)).norm() / b.norm()) <= 1e-10


def test_any_operator_with_a_grid_shape_is_accepted():
    op, b = tank_system((10, 10), obstacle="none")
    wrapped = FunctionOperator(op.mv, op.shape, symmetric=True, positive_definite=True)
    wrapped.grid_shape = op.grid_shape  # no solid mask: every cell is an unknown
    sol = linear_solve(wrapped, b, DCDM(random_net(2), n_orth=100, rtol=1e-10))
    assert sol.stats.iterations <= 100
    assert rel(sol.x, dense_solution(op, b)) < 1e-8


# the ideal network and finite termination ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 12), (6, 6, 6)])
@pytest.mark.parametrize("c", [1.0, 1e-3, -250.0])
def test_an_exact_inverse_at_any_scale_converges_in_one_iteration(shape, c):
    op, b = tank_system(shape)
    sol = linear_solve(op, b, DCDM(ExactInverse(op, c), rtol=1e-10))
    assert sol.status is Status.SUCCESS and sol.stats.iterations == 1
    assert rel(sol.x, torch.linalg.solve(op.to_dense(), b)) < 1e-10
    assert len(sol.stats.residual_history) == 2 and sol.stats.residual_history[-1] < 1e-10


@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6)])
def test_random_network_with_full_orthogonalisation_terminates_within_the_unknowns(shape):
    # a conjugate-direction method over the fluid cells ends after at most as many steps as there are fluid cells,
    # whatever the directions (the network's are linearly independent in practice)
    op, b = tank_system(shape)
    n_fluid = int((~op.solid).sum())
    sol = linear_solve(op, b, DCDM(random_net(len(shape)), n_orth=op.shape[0], rtol=1e-10, max_iters=3 * n_fluid))
    assert sol.status is Status.SUCCESS
    assert sol.stats.iterations <= n_fluid
    assert rel(sol.x, torch.linalg.solve(op.to_dense(), b)) < 1e-8
    # true_residual=False: the same method with the updated residual; it converges too (checked independently)
    rec = linear_solve(op, b, DCDM(random_net(len(shape)), n_orth=op.shape[0], true_residual=False, rtol=1e-10,
                                   max_iters=3 * n_fluid))
    assert rec.status is Status.SUCCESS and rec.stats.iterations <= n_fluid
    assert float((b - op.mv(rec.x)).norm() / b.norm()) < 1e-8
    assert rel(rec.x, torch.linalg.solve(op.to_dense(), b)) < 1e-7


def test_first_step_is_the_exact_line_search_along_the_masked_network_output():
    op, b = tank_system((8, 8))
    net = random_net(2, seed=3)
    sol = linear_solve(op, b, DCDM(net, max_iters=1), throw=False)
    with torch.no_grad():
        q = net((b / b.norm()).float().reshape(1, 1, 8, 8)).reshape(-1).double()
    q = q * (~op.solid).reshape(-1)
    A = op.to_dense()
    x1 = (q @ b) / (q @ A @ q) * q
    torch.testing.assert_close(sol.x, x1, rtol=1e-12, atol=1e-14)
    assert sol.stats.residual_history[1] == pytest.approx(float((b - A @ x1).norm() / b.norm()), rel=1e-10)


def test_a_norm_error_never_grows_with_the_papers_n_orth():
    # any direction with an exact line search lowers ||x - x*||_A or keeps it; an untrained network with n_orth=2
    # progresses slowly (it is known to stall far from the solution), but never goes backwards
    op, b = tank_system((8, 8))
    A = op.to_dense()
    xs = torch.linalg.solve(A, b)
    net = random_net(2, seed=1)
    errors = [a_norm(A, xs)]
    for k in range(1, 16):
        sol = linear_solve(op, b, DCDM(net, n_orth=2, max_iters=k), throw=False)
        assert sol.stats.iterations == k
        errors.append(a_norm(A, sol.x - xs))
    errors = np.array(errors)
    assert np.all(np.diff(errors) <= 1e-12 * errors[0])
    assert errors[-1] < errors[1] < errors[0]


# solid cells ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6)])
def test_solution_is_zero_on_solid_cells(shape):
    op, b = tank_system(shape)
    solid = op.solid.reshape(-1)
    assert bool(solid.any()) and float(b[solid].abs().max()) == 0.0
    net = random_net(len(shape), seed=2)
    with torch.no_grad():  # the raw network output leaks into the obstacle: the solver must mask it
        raw = net((b / b.norm()).float().reshape(1, 1, *shape)).reshape(-1)
    assert float(raw[solid].abs().max()) > 0
    for solver in (DCDM(net, max_iters=5), DCDM(net, n_orth=op.shape[0], rtol=1e-10), DCDM(max_iters=5)):
        sol = linear_solve(op, b, solver, throw=False)
        assert float(sol.x[solid].abs().max()) == 0.0
        assert float(sol.x.abs().max()) > 0


# a trained network ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(one_thread):
    """A network briefly trained on the empty 16x16 tank (walls, open top), as the paper trains on one matrix."""
    op = PoissonGrid((16, 16), boundary=("neumann", ("neumann", "dirichlet")))
    config = DCDMTrainConfig(lanczos_steps=200, samples=0, lr=1e-3, validation=20)
    trainer = DCDMTrainer(op, config, seed=0)
    coeffs = torch.randn(32, trainer.ritz_vectors.shape[1], generator=torch.Generator().manual_seed(99))
    probe = ritz_rhs(trainer.ritz_vectors, coeffs, trainer.low, config.low_weight)  # held-out vectors
    with torch.no_grad():
        before = float(trainer.loss(probe))
    losses = [trainer.train_batch() for _ in range(200)]
    with torch.no_grad():
        after = float(trainer.loss(probe))
    return {"trainer": trainer, "model": trainer.model, "before": before, "after": after, "losses": losses}


def test_training_lowers_the_held_out_loss(trained):
    assert trained["after"] < 0.3 * trained["before"]
    assert all(math.isfinite(v) for v in trained["losses"])
    assert np.mean(trained["losses"][-20:]) < 0.5 * np.mean(trained["losses"][:5])
    assert trained["trainer"].batch == 200 and trained["trainer"].epoch == 0


def test_trained_network_beats_cg_and_reaches_the_dense_solution(trained):
    # on a tank with an obstacle the training never saw; with n_orth=16 the margin over CG is wide for any seed
    # (with the paper's n_orth=2 a briefly trained network is erratic, from about CG's count to twice it)
    op, b = tank_system((16, 16))
    xs = torch.linalg.solve(op.to_dense(), b)
    cg = linear_solve(op, b, DCDM(rtol=1e-6))
    sol = linear_solve(op, b, DCDM(trained["model"], n_orth=16, rtol=1e-6))
    assert sol.status is Status.SUCCESS
    assert sol.stats.iterations < 0.6 * cg.stats.iterations
    assert float((b - op.mv(sol.x)).norm() / b.norm()) <= 1e-6
    assert rel(sol.x, xs) < 1e-4
    assert float(sol.x[op.solid.reshape(-1)].abs().max()) == 0.0
    for kw in ({"n_orth": 2}, {"n_orth": 16, "true_residual": False}):
        other = linear_solve(op, b, DCDM(trained["model"], rtol=1e-8, **kw))
        assert other.status is Status.SUCCESS and rel(other.x, xs) < 1e-6


def test_trained_network_applies_at_another_resolution(trained):
    # fully convolutional: the 16x16 weights on a 32x32 tank
    op, b = tank_system((32, 32))
    cg = linear_solve(op, b, CG(rtol=1e-6))
    sol = linear_solve(op, b, DCDM(trained["model"], n_orth=64, rtol=1e-6))
    assert sol.status is Status.SUCCESS
    assert sol.stats.iterations < cg.stats.iterations
    assert rel(sol.x, torch.linalg.solve(op.to_dense(), b)) < 1e-4


# statuses and errors ----------------------------------------------------------------------------------------------

def test_max_iters_status_and_error():
    op, b = tank_system((8, 8))
    sol = linear_solve(op, b, DCDM(max_iters=3), throw=False)
    assert sol.status is Status.MAX_ITERS
    assert sol.stats.iterations == 3 and len(sol.stats.residual_history) == 4
    assert "iteration cap" in sol.message and "max_iters" in sol.message
    # three identity-DCDM steps are three CG steps
    cg = linear_solve(op, b, CG(max_iters=3), throw=False)
    torch.testing.assert_close(sol.x, cg.x, rtol=1e-10, atol=1e-14)
    with pytest.raises(LinearSolveError, match="iteration cap") as info:
        linear_solve(op, b, DCDM(max_iters=3))
    assert info.value.status is Status.MAX_ITERS
    assert "after 3 iterations" in str(info.value)
    assert info.value.result.stats.iterations == 3


def test_a_network_with_no_new_direction_stagnates_and_a_broken_one_diverges():
    op, b = tank_system((8, 8))
    sol = linear_solve(op, b, DCDM(ConstantModel(2, 0.0)), throw=False)
    assert sol.status is Status.STAGNATED and sol.stats.iterations == 1
    assert float(sol.x.abs().max()) == 0.0 and "network" in sol.message
    with pytest.raises(LinearSolveError) as info:
        linear_solve(op, b, DCDM(ConstantModel(2, 0.0)))
    assert info.value.status is Status.STAGNATED
    sol = linear_solve(op, b, DCDM(ConstantModel(2, float("nan"))), throw=False)
    assert sol.status is Status.DIVERGED


def test_an_operator_without_a_grid_is_refused():
    op, b = tank_system((6, 6))
    dense = DenseOperator(op.to_dense(), positive_definite=True)
    with pytest.raises(ValueError, match="grid"):
        linear_solve(dense, b, DCDM())
    dense.grid_shape = (4, 4)  # 16 cells for a 36x36 operator
    with pytest.raises(ValueError, match="cells"):
        linear_solve(dense, b, DCDM())


def test_a_model_for_the_wrong_dimension_is_refused():
    op, b = tank_system((8, 8))
    with pytest.raises(ValueError, match="3D"):
        linear_solve(op, b, DCDM(random_net(3)))
    op3, b3 = tank_system((6, 6, 6))
    with pytest.raises(ValueError, match="2D"):
        linear_solve(op3, b3, DCDM(random_net(2)))


@pytest.mark.parametrize("n_orth", [-1, 1.5, True, "2", None])
def test_bad_n_orth(n_orth):
    with pytest.raises(ValueError, match="n_orth"):
        DCDM(n_orth=n_orth)


def test_n_orth_zero_is_allowed():
    # no A-orthogonalisation at all: steepest descent in the A-norm along the network's directions
    op, b = tank_system((6, 6))
    sol = linear_solve(op, b, DCDM(ExactInverse(op, 2.0), n_orth=0))
    assert sol.stats.iterations == 1


def test_dcdm_takes_no_preconditioner():
    op, b = tank_system((8, 8))
    with pytest.raises(ValueError, match="no preconditioner"):
        linear_solve(op, b, DCDM(), M=Jacobi(op))


@pytest.mark.parametrize("model", [42, object(), torch.zeros(3)])
def test_a_model_of_the_wrong_type_is_refused(model):
    with pytest.raises(ValueError, match="model"):
        DCDM(model=model)


def test_a_parameter_free_model_is_usable():
    class Identity(nn.Module):
        dim = 2

        def forward(self, x):
            return x

    op, b = tank_system((8, 8))
    sol = linear_solve(op, b, DCDM(Identity(), rtol=1e-6))
    assert sol.stats.iterations == linear_solve(op, b, CG(rtol=1e-6)).stats.iterations


# the network ------------------------------------------------------------------------------------------------------

def n_params(dim, width=16, pre=2, mid=3, post=2):
    k = 3 ** dim
    hidden = 2 * (pre + mid + post)
    return (k * width + width) + hidden * (k * width * width + width) + (width + 1)


def test_parameter_count_of_the_papers_model():
    assert sum(p.numel() for p in DCDMNet(3).parameters()) == 97457 == n_params(3)
    assert sum(p.numel() for p in DCDMNet(2).parameters()) == n_params(2)
    big = DCDMNet(3, pre_blocks=3, mid_blocks=5, post_blocks=3)  # the paper's "128" model
    assert sum(p.numel() for p in big.parameters()) == n_params(3, pre=3, mid=5, post=3)
    small = DCDMNet(2, width=4, pre_blocks=1, mid_blocks=0, post_blocks=0)
    assert sum(p.numel() for p in small.parameters()) == n_params(2, 4, 1, 0, 0)
    small(torch.randn(1, 1, 6, 6))  # the smallest configuration runs


@pytest.mark.parametrize("grid", [(8, 8), (7, 9), (5, 6), (1, 3), (6, 6, 6), (5, 7, 6), (3, 3, 3)])
@pytest.mark.parametrize("channel", [True, False])
def test_output_shape_equals_input_shape(grid, channel):
    net = random_net(len(grid))
    x = torch.randn(2, *((1,) if channel else ()), *grid)
    y = net(x)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())


def test_batch_entries_are_independent():
    net = random_net(2, seed=4)
    x = torch.randn(3, 1, 9, 7)
    y = net(x)
    for i in range(3):
        torch.testing.assert_close(net(x[i:i + 1]), y[i:i + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim,shape", [(2, (8,)), (2, (8, 8)), (2, (1, 1, 1, 8, 8)), (2, (2, 2, 8, 8)),
                                       (3, (8, 8, 8)), (3, (2, 3, 6, 6, 6))])
def test_bad_input_shape(dim, shape):
    with pytest.raises(ValueError, match="expected input"):
        DCDMNet(dim)(torch.randn(*shape))


@pytest.mark.parametrize("kw", [{"dim": 1}, {"dim": 4}, {"width": 0}, {"width": True}, {"pre_blocks": 0},
                                {"mid_blocks": -1}, {"post_blocks": 1.5}])
def test_bad_constructor_arguments(kw):
    args = {"dim": 2, **kw}
    with pytest.raises(ValueError):
        DCDMNet(args.pop("dim"), **args)


def test_initialisation_is_glorot_uniform_with_zero_biases():
    net = random_net(3, seed=5)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 1 + 2 * (2 + 3 + 2) + 1
    for m in convs:
        assert float(m.bias.detach().abs().max()) == 0.0
        fan_in = m.in_channels * 27 if m.kernel_size == (3, 3, 3) else m.in_channels
        fan_out = m.out_channels * (27 if m.kernel_size == (3, 3, 3) else 1)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        largest = float(m.weight.detach().abs().max())
        assert 0.5 * bound < largest <= bound


def test_untrained_network_is_positively_homogeneous_and_fully_convolutional():
    # zero biases and ReLUs: f(0) = 0 and f(c x) = c f(x) for c > 0; a compactly supported input gives a
    # compactly supported output, which moves with the input (by even shifts: the network pools by 2)
    net = random_net(2, seed=6)
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        assert float(net(torch.zeros(1, 1, 12, 12)).abs().max()) == 0.0
        torch.testing.assert_close(net(3.5 * x), 3.5 * net(x), rtol=1e-5, atol=1e-6)
        d1 = torch.zeros(1, 1, 64, 64)
        d1[0, 0, 30, 30] = 1.0
        d2 = torch.roll(d1, (2, 4), dims=(2, 3))
        y1, y2 = net(d1), net(d2)
    support = y1[0, 0].abs() > 0
    rows, cols = support.nonzero(as_tuple=True)
    assert int(rows.min()) > 0 and int(rows.max()) < 59 and int(cols.min()) > 0 and int(cols.max()) < 59
    torch.testing.assert_close(y2, torch.roll(y1, (2, 4), dims=(2, 3)), rtol=1e-5, atol=1e-7)


def test_config_rebuilds_the_architecture():
    net = DCDMNet(3, width=8, pre_blocks=1, mid_blocks=2, post_blocks=0)
    again = DCDMNet(**net.config())
    assert again.config() == net.config()
    again.load_state_dict(net.state_dict())  # same parameter names and shapes


# the loss ---------------------------------------------------------------------------------------------------------

def loss_closed_form(A, b, q):
    A, b, q = (np.asarray(t, dtype=np.float64) for t in (A, b, q))
    out = []
    for bi, qi in zip(b, q):
        aq = A @ qi
        qaq = qi @ aq
        alpha = (qi @ bi) / qaq if qaq > 0 else 0.0
        out.append(np.sum((bi - alpha * aq) ** 2))
    return float(np.mean(out))


def test_loss_equals_its_closed_form_on_a_dense_spd_matrix():
    g = torch.Generator().manual_seed(0)
    q0, _ = torch.linalg.qr(torch.randn(20, 20, dtype=F64, generator=g))
    A = (q0 * torch.logspace(0, 2, 20, dtype=F64)) @ q0.T
    b = torch.randn(5, 20, dtype=F64, generator=g)
    q = torch.randn(5, 20, dtype=F64, generator=g)
    q[3] = 0.0  # no direction: nothing moves, the loss of that row is ||b||^2
    loss = dcdm_loss(DenseOperator(A), b, q)
    assert loss.ndim == 0
    assert float(loss) == pytest.approx(loss_closed_form(A, b, q), rel=1e-12)
    only_zero = dcdm_loss(DenseOperator(A), b[3:4], q[3:4])
    assert float(only_zero) == pytest.approx(float(b[3] @ b[3]), rel=1e-14)


def test_loss_is_differentiable():
    op, _ = tank_system((8, 8))
    b = torch.randn(3, 64, dtype=F64, generator=torch.Generator().manual_seed(1))
    q = torch.randn(3, 64, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    dcdm_loss(op, b, q).backward()
    assert q.grad is not None and bool(torch.isfinite(q.grad).all()) and float(q.grad.abs().max()) > 0
    # the gradient is orthogonal to each q_i: the loss does not change along the scale of q_i
    torch.testing.assert_close((q.grad * q.detach()).sum(1), torch.zeros(3, dtype=F64), rtol=0, atol=1e-10)


def test_loss_is_invariant_to_scaling_each_direction_and_the_operator():
    op, _ = tank_system((10, 10))
    g = torch.Generator().manual_seed(3)
    fluid = (~op.solid).reshape(-1).to(F64)
    b = torch.randn(4, 100, dtype=F64, generator=g) * fluid
    q = torch.randn(4, 100, dtype=F64, generator=g)
    base = float(dcdm_loss(op, b, q))
    assert base == pytest.approx(loss_closed_form(op.to_dense(), b, q), rel=1e-12)
    scales = torch.tensor([2.0, -0.5, 1e3, -7e-4], dtype=F64)
    assert float(dcdm_loss(op, b, q * scales[:, None])) == pytest.approx(base, rel=1e-12)
    # the same grid with another spacing: A scaled by 1/h^2
    other = PoissonGrid(op.grid_shape, boundary=[tuple(k) for k in op.boundary], solid=op.solid,
                        spacing=op.spacing * 7.3)
    torch.testing.assert_close(other.to_dense() * 7.3 ** 2, op.to_dense(), rtol=1e-12, atol=1e-9)
    assert float(dcdm_loss(other, b, q)) == pytest.approx(base, rel=1e-12)


def test_loss_vanishes_at_the_inverse():
    op, _ = tank_system((10, 10))
    b = torch.randn(3, 100, dtype=F64, generator=torch.Generator().manual_seed(4)) * (~op.solid).reshape(-1)
    q = torch.linalg.solve(op.to_dense(), b.T).T
    assert float(dcdm_loss(op, b, q)) < 1e-24 * float((b ** 2).sum(1).mean())
    assert float(dcdm_loss(op, b, -3.0 * q)) < 1e-24 * float((b ** 2).sum(1).mean())
    assert float(dcdm_loss(op, b, b)) > 1e-3  # and not elsewhere


@pytest.mark.parametrize("bshape,qshape", [((3, 100), (3, 99)), ((3, 99), (3, 99)), ((100,), (100,)),
                                           ((3, 100), (2, 100)), ((1, 3, 100), (1, 3, 100))])
def test_loss_shape_errors(bshape, qshape):
    op, _ = tank_system((10, 10))
    with pytest.raises(ValueError, match="batch"):
        dcdm_loss(op, torch.zeros(bshape, dtype=F64), torch.ones(qshape, dtype=F64))


# saved models -----------------------------------------------------------------------------------------------------

def perturbed_net(dim=2, **kw):
    net = random_net(dim, seed=8, **kw)
    with torch.no_grad():  # nonzero biases, so that they must survive the round trip too
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                m.bias.uniform_(-0.1, 0.1)
    return net


@pytest.mark.parametrize("dim", [2, 3])
def test_save_load_round_trip(tmp_path, dim):
    net = perturbed_net(dim, width=8, pre_blocks=1, mid_blocks=1, post_blocks=1)
    meta = {"grid": [16, 16], "note": "brief", "loss": 0.25}
    path = save_dcdm_model(net, tmp_path / "deep" / "dir" / "model.pt", metadata=meta)
    assert path == tmp_path / "deep" / "dir" / "model.pt" and path.is_file()
    assert not path.with_name("model.pt.tmp").exists()
    loaded, got_meta = load_dcdm_model(path, return_metadata=True)
    assert isinstance(loaded, DCDMNet) and not loaded.training
    assert loaded.config() == net.config() and got_meta == meta
    for (k1, v1), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(2, 1, *([7] * dim))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert load_dcdm_model(path).config() == net.config()  # without metadata: the model alone


def test_dcdm_accepts_a_saved_model_path(tmp_path):
    net = perturbed_net(2)
    path = save_dcdm_model(net, tmp_path / "model.pt")
    op, b = tank_system((8, 8))
    ref = linear_solve(op, b, DCDM(net, n_orth=64, rtol=1e-10))
    for model in (path, str(path)):
        solver = DCDM(model=model, n_orth=64, rtol=1e-10)
        assert isinstance(solver.model, DCDMNet)
        sol = linear_solve(op, b, solver)
        assert sol.stats.iterations == ref.stats.iterations
        torch.testing.assert_close(sol.x, ref.x, rtol=0, atol=0)
        assert rel(sol.x, torch.linalg.solve(op.to_dense(), b)) < 1e-8


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        load_dcdm_model(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="train"):
        DCDM(model=str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError):
        load_dcdm_model(tmp_path)  # a directory is not a model file


def test_files_that_are_not_saved_models(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="not a readable DCDM model"):
        load_dcdm_model(garbage)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError):
        load_dcdm_model(text)
    net = perturbed_net(2)
    for i, payload in enumerate([{"a": 1}, net.state_dict(), [1, 2, 3],
                                 {"format": "something.else", "config": net.config(),
                                  "state_dict": net.state_dict()}]):
        p = tmp_path / f"headerless{i}.pt"
        torch.save(payload, p)
        with pytest.raises(ValueError, match="header"):
            load_dcdm_model(p)


def test_a_newer_format_or_a_mismatched_architecture_is_refused(tmp_path):
    net = perturbed_net(2)
    path = save_dcdm_model(net, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    newer = dict(payload, version=99)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="newer"):
        load_dcdm_model(tmp_path / "newer.pt")
    wrong = dict(payload, config=dict(payload["config"], width=8))
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_dcdm_model(tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="DCDMNet"):
        save_dcdm_model(nn.Linear(2, 2), tmp_path / "linear.pt")


# training ---------------------------------------------------------------------------------------------------------

def small_trainer(op=None, seed=0, **config):
    op = op if op is not None else PoissonGrid((8, 8), boundary=("neumann", ("neumann", "dirichlet")))
    kw = {"lanczos_steps": 30, "samples": 0, "batch_size": 4, "lr": 1e-3, "validation": 8, "width": 8,
          "pre_blocks": 1, "mid_blocks": 1, "post_blocks": 1, **config}
    return DCDMTrainer(op, DCDMTrainConfig(**kw), seed=seed)


def test_ritz_rhs_closed_form():
    g = torch.Generator().manual_seed(0)
    V, _ = torch.linalg.qr(torch.randn(30, 6, generator=g))
    c = torch.randn(4, 6, generator=g)
    b = ritz_rhs(V, c, 2, 9.0)
    w = np.array([9.0, 9.0, 1.0, 1.0, 1.0, 1.0])
    expect = (c.numpy() * w) @ V.numpy().T
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(b.numpy(), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.norm(dim=1).numpy(), np.ones(4), rtol=1e-6)


def test_training_vectors_are_unit_and_zero_on_solid_cells():
    op, _ = tank_system((8, 8))
    trainer = small_trainer(op)
    solid = op.solid.reshape(-1)
    V = trainer.ritz_vectors
    assert V.dtype == torch.float32 and float(V[solid].abs().max()) == 0.0
    # the Ritz basis: orthonormal, ascending values inside the spectrum of the fluid block
    torch.testing.assert_close(V.T @ V, torch.eye(V.shape[1]), rtol=0, atol=1e-5)
    vals = trainer.ritz_values.numpy()
    fluid_block = op.to_dense()[~solid][:, ~solid].numpy()
    eig = np.linalg.eigvalsh(fluid_block)
    assert np.all(np.diff(vals) > 0) and vals[0] >= eig[0] * (1 - 1e-9) and vals[-1] <= eig[-1] * (1 + 1e-9)
    b = ritz_rhs(V, torch.randn(16, V.shape[1], generator=torch.Generator().manual_seed(1)), trainer.low, 9.0)
    assert float(b[:, solid].abs().max()) == 0.0
    np.testing.assert_allclose(b.norm(dim=1).numpy(), np.ones(16), rtol=1e-6)


def test_trainer_loss_is_dcdm_loss_of_the_network_output():
    trainer = small_trainer()
    V = trainer.ritz_vectors
    b = ritz_rhs(V, torch.randn(5, V.shape[1], generator=torch.Generator().manual_seed(2)), trainer.low, 9.0)
    with torch.no_grad():
        loss = float(trainer.loss(b))
        q = trainer.model(b.reshape(5, 1, 8, 8)).reshape(5, -1)
    A = PoissonGrid((8, 8), boundary=("neumann", ("neumann", "dirichlet"))).to_dense()
    assert loss == pytest.approx(loss_closed_form(A, b, q), rel=1e-4)


@pytest.mark.parametrize("samples", [0, 40])
def test_exact_resume_from_a_saved_state(samples):
    op = PoissonGrid((8, 8), boundary=("neumann", ("neumann", "dirichlet")))
    original = small_trainer(op, seed=5, samples=samples)
    before = [original.train_batch() for _ in range(3)]
    buffer = io.BytesIO()  # through bytes, as a checkpoint file is written and read
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = DCDMTrainer.from_state(op, torch.load(buffer, weights_only=True))
    assert (restored.epoch, restored.batch, restored.seed) == (0, 3, 5)
    assert restored.config == original.config
    assert torch.equal(restored.ritz_vectors, original.ritz_vectors)
    more = 4 if samples == 0 else original.batches_per_epoch - 3  # with samples: to the end of the epoch
    a = [original.train_batch() for _ in range(more)]
    b = [restored.train_batch() for _ in range(more)]
    assert a == b
    for p, q in zip(original.model.parameters(), restored.model.parameters()):
        assert torch.equal(p, q)
    if samples:
        # the epoch's mean training loss counts the batches from before the checkpoint too
        assert original.end_of_epoch() and restored.end_of_epoch()
        first, second = original.finish_epoch(), restored.finish_epoch()
        assert first["train_loss"] == second["train_loss"] == pytest.approx(np.mean(before + a), rel=1e-12)
        assert first["validation_loss"] == second["validation_loss"]
        assert first["eval_iterations"] == second["eval_iterations"]


def test_exact_resume_in_memory():
    op = PoissonGrid((8, 8), boundary=("neumann", ("neumann", "dirichlet")))
    original = small_trainer(op, seed=5)
    for _ in range(3):
        original.train_batch()
    restored = DCDMTrainer.from_state(op, original.state_dict())
    a = [original.train_batch() for _ in range(3)]
    b = [restored.train_batch() for _ in range(3)]
    assert a == b


def test_the_epoch_ends_until_finish_epoch():
    trainer = small_trainer(samples=20, batch_size=10)
    assert trainer.batches_per_epoch == 2
    losses = [trainer.train_batch()]
    assert not trainer.end_of_epoch()
    losses.append(trainer.train_batch())
    assert trainer.end_of_epoch()
    with pytest.raises(RuntimeError, match="finish_epoch"):
        trainer.train_batch()
    with pytest.raises(RuntimeError, match="finish_epoch"):
        trainer.train_batch()
    assert trainer.batch == 2
    record = trainer.finish_epoch()
    assert record["epoch"] == 1 and record["train_loss"] == pytest.approx(np.mean(losses), rel=1e-12)
    assert record["seconds"] > 0
    assert math.isfinite(record["validation_loss"]) and record["validation_loss"] > 0
    assert 1 <= record["eval_iterations"] <= 500 and record["eval_status"] in {s.value for s in Status}
    assert (trainer.epoch, trainer.batch, trainer.history) == (1, 0, [record])
    assert not trainer.end_of_epoch()
    assert math.isfinite(trainer.train_batch())


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"samples": -1}, {"epochs": 0}, {"validation": 0},
                                {"width": True}, {"pre_blocks": 0}, {"mid_blocks": -1}, {"lanczos_steps": 0},
                                {"theta": -1}, {"lanczos_steps": 2.5}, {"lr": 0.0}, {"lr": float("nan")},
                                {"low_weight": -9.0}, {"low_weight": "9"}, {"eval_rtol": float("inf")},
                                {"samples": 10.0}])
def test_config_validation(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        DCDMTrainConfig(**kw)


def test_config_dict_round_trip_and_unknown_keys():
    config = DCDMTrainConfig(lanczos_steps=50, theta=0, lr=3e-4, samples=0)
    assert DCDMTrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bogus"):
        DCDMTrainConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_trainer_refuses_other_operators_and_models():
    op, _ = tank_system((6, 6))
    with pytest.raises(ValueError, match="PoissonGrid"):
        DCDMTrainer(DenseOperator(op.to_dense(), positive_definite=True), DCDMTrainConfig(lanczos_steps=10))
    with pytest.raises(ValueError, match="3D"):
        DCDMTrainer(op, DCDMTrainConfig(lanczos_steps=10), model=DCDMNet(3))
    trainer = small_trainer(op)
    with pytest.raises(ValueError, match="rows"):
        DCDMTrainer.from_state(PoissonGrid((8, 8)), trainer.state_dict())
    with pytest.raises(ValueError, match="evaluation operator must be a 2D PoissonGrid"):
        DCDMTrainer(op, DCDMTrainConfig(lanczos_steps=10), eval_op=PoissonGrid((4, 4, 4)))
    with pytest.raises(ValueError, match="eval_rhs has shape \\(36,\\), the evaluation operator has 144 cells"):
        DCDMTrainer(op, DCDMTrainConfig(lanczos_steps=10), eval_op=PoissonGrid((12, 12)), eval_rhs=torch.ones(36))


def test_trainer_evaluates_on_its_evaluation_operator_and_ranks_epochs():
    op = PoissonGrid((8, 8), boundary=("neumann", ("neumann", "dirichlet")))
    big = PoissonGrid((16, 16), boundary=("neumann", ("neumann", "dirichlet")))
    trainer = DCDMTrainer(op, DCDMTrainConfig(lanczos_steps=30, samples=0, batch_size=4, validation=8, width=8,
                                              pre_blocks=1, mid_blocks=1, post_blocks=1), seed=0, eval_op=big)
    assert trainer.eval_rhs.shape == (256,) and trainer.best_epoch() is None
    record = trainer.evaluate()
    oracle = linear_solve(big, trainer.eval_rhs, DCDM(trainer.model, rtol=1e-4, max_iters=500), throw=False)
    assert record["eval_iterations"] == oracle.stats.iterations
    trainer.history = [
        {"epoch": 1, "eval_status": "success", "eval_iterations": 30, "eval_residual": 1e-5},
        {"epoch": 2, "eval_status": "stagnated", "eval_iterations": 12, "eval_residual": 1e-2},
        {"epoch": 3, "eval_status": "success", "eval_iterations": 25, "eval_residual": 9e-5},
        {"epoch": 4, "eval_status": "success", "eval_iterations": 25, "eval_residual": 2e-5},
        {"epoch": 5, "train_loss": 0.1},  # not evaluated
    ]
    assert trainer.best_epoch() == 4
    trainer.history[3]["eval_residual"] = 9e-5
    assert trainer.best_epoch() == 4  # ties go to the later epoch
    trainer.history[3]["eval_status"] = "max_iters"
    assert trainer.best_epoch() == 3


def test_a_stalled_iteration_stops_as_stagnated():
    """An untrained network with the paper's n_orth=2 stalls; DCDM says so instead of running to the cap."""
    op, b = tank_system((8, 8))
    torch.manual_seed(0)
    net = DCDMNet(2)
    sol = linear_solve(op, b, DCDM(net, rtol=1e-8, max_iters=1000, stall_iters=50), throw=False)
    assert sol.status is Status.STAGNATED and sol.stats.iterations < 1000
    best = sol.stats.extra["stalled_after"]
    assert sol.stats.iterations == best + 50
    h = sol.stats.residual_history
    assert min(h[best + 1:]) >= 0.99 * h[best]  # truly no progress after the best iterate
    assert "n_orth" in sol.message
    with pytest.raises(ValueError, match="stall_iters"):
        DCDM(stall_iters=0)


def test_cosine_schedule_decays_the_learning_rate_to_a_hundredth():
    op = PoissonGrid((8, 8), boundary=("neumann", ("neumann", "dirichlet")))
    cfg = DCDMTrainConfig(lanczos_steps=30, samples=40, batch_size=10, lr=2e-3, epochs=2, validation=4,
                          lr_schedule="cosine")
    trainer = DCDMTrainer(op, cfg, seed=1)
    lrs = []
    for _ in range(2):
        while not trainer.end_of_epoch():
            trainer.train_batch()
            lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.finish_epoch()
    total = 8
    expected = [2e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * k / total))) for k in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(2e-3) and lrs == sorted(lrs, reverse=True)
    with pytest.raises(ValueError, match="lr_schedule"):
        DCDMTrainConfig(lr_schedule="step")


def test_finish_epoch_can_skip_the_evaluation_solve():
    op = PoissonGrid((8, 8), boundary=("neumann", ("neumann", "dirichlet")))
    trainer = DCDMTrainer(op, DCDMTrainConfig(lanczos_steps=30, samples=20, batch_size=10, validation=4), seed=2)
    while not trainer.end_of_epoch():
        trainer.train_batch()
    record = trainer.finish_epoch(evaluate=False)
    assert set(record) == {"epoch", "train_loss", "seconds"} and trainer.epoch == 1 and trainer.batch == 0


@pytest.mark.parametrize("dim,n", [(2, 12), (3, 6)])
def test_channels_last_weights_are_the_same_network(dim, n, tmp_path):
    """The faster CPU layout changes strides only: same outputs as the default layout, saved and reloaded."""
    fmt = torch.channels_last if dim == 2 else torch.channels_last_3d
    torch.manual_seed(0)
    plain = DCDMNet(dim)
    for p in plain.parameters():  # nonzero biases, so that a bias mix-up would show
        p.data.add_(0.01 * torch.randn_like(p))
    fast = DCDMNet(dim)
    fast.load_state_dict(plain.state_dict())
    assert fast.channels_last() is fast
    assert fast.pre[0].weight.is_contiguous(memory_format=fmt)
    assert not plain.pre[0].weight.is_contiguous(memory_format=fmt)
    x = torch.randn(3, 1, *(n,) * dim)
    with torch.no_grad():
        want = plain(x)
        torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast(x[:1, 0]), want[:1, 0], rtol=1e-5, atol=1e-6)  # batch 1, no channel axis
        reloaded = load_dcdm_model(save_dcdm_model(fast, tmp_path / "m.pt"))
        torch.testing.assert_close(reloaded(x), want, rtol=1e-5, atol=1e-6)


def test_solver_and_trainer_store_cpu_weights_channels_last():
    op = PoissonGrid((8, 8, 8))
    net = DCDMNet(3)
    sol = linear_solve(op, torch.ones(op.shape[0], dtype=torch.float64), DCDM(net, rtol=1e-6), throw=False)
    assert sol.stats.iterations > 0
    assert net.pre[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    trainer = DCDMTrainer(PoissonGrid((8, 8)), DCDMTrainConfig(samples=20, validation=2, lanczos_steps=20))
    assert trainer.model.pre[0].weight.is_contiguous(memory_format=torch.channels_last)

"""Training a DCDM network: Ritz-vector right-hand sides and the unsupervised line-search loss.

The paper's recipe (Kaneda et al. 2023, Sec. 3 and its code): one training matrix ``A`` (the pressure
Poisson matrix of the empty domain); ``m`` Lanczos steps with full reorthogonalisation from ``A g`` give
Ritz pairs; every training vector is ``b = sum_i c_i v_i / ||.||`` with ``c_i ~ 9 N(0, 1)`` on the lowest
``m/2 + theta`` Ritz vectors and ``c_i ~ N(0, 1)`` on the rest, so the data lean toward the smooth modes
that slow Krylov methods down while keeping some of every frequency; Adam minimises :func:`dcdm_loss`
over a fixed set of such vectors. Nothing is downloaded: the data set is a seed and the Ritz basis.

:class:`DCDMTrainer` holds one training run (model, optimizer, the Ritz basis, position in the data) and
can be saved and restored exactly; it does no I/O. ``neuralnumerics train dcdm`` drives it with a run
directory, checkpoints, progress and pictures (:mod:`neuralnumerics.io.dcdm_runs`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .dcdm import DCDM, DCDMNet, dcdm_loss
from .lanczos import ritz_pairs
from .solve import linear_solve
from .stencil import PoissonGrid

__all__ = ["DCDMTrainConfig", "DCDMTrainer", "ritz_rhs"]


@dataclass
class DCDMTrainConfig:
    """What a DCDM training run does (the paper's values in brackets; defaults are scaled to a CPU).

    Attributes:
        lanczos_steps: Lanczos steps for the Ritz basis [10000 at 64^3]; default ``min(n, 1000)``.
        theta: the lowest ``lanczos_steps / 2 + theta`` Ritz vectors get the large coefficients [500];
            default 5% of ``lanczos_steps``.
        low_weight: ratio of the coefficients' standard deviations, low modes to the rest [9].
        samples: size of the fixed training set [20000]; 0 draws a fresh vector for every batch entry.
        batch_size: [10].
        lr: Adam learning rate [1e-4; 1e-4 trains too slowly for a CPU budget of minutes].
        lr_schedule: ``"constant"`` [paper], or ``"cosine"``: from ``lr`` down to ``lr / 100`` over all epochs.
        epochs: passes over the training set (with ``samples=0``: blocks of 1000 batches).
        validation: held-out vectors on which the loss is reported after each epoch.
        width, pre_blocks, mid_blocks, post_blocks: the network (:class:`DCDMNet`; the defaults are the
            paper's "64" model).
        eval_rtol: the relative residual at which each epoch's DCDM solve of the evaluation system stops.
    """

    lanczos_steps: int | None = None
    theta: int | None = None
    low_weight: float = 9.0
    samples: int = 20000
    batch_size: int = 10
    lr: float = 1e-3
    lr_schedule: str = "constant"
    epochs: int = 1
    validation: int = 100
    width: int = 16
    pre_blocks: int = 2
    mid_blocks: int = 3
    post_blocks: int = 2
    eval_rtol: float = 1e-4

    def __post_init__(self) -> None:
        ints = {"samples": 0, "batch_size": 1, "epochs": 1, "validation": 1, "width": 1, "pre_blocks": 1,
                "mid_blocks": 0, "post_blocks": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"DCDMTrainConfig: {name} must be an integer >= {low}, got {v!r}")
        for name in ("lanczos_steps", "theta"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "lanczos_steps"
                                                                                         else 0)):
                raise ValueError(f"DCDMTrainConfig: {name} must be a positive integer or None, got {v!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"DCDMTrainConfig: lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        for name in ("low_weight", "lr", "eval_rtol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"DCDMTrainConfig: {name} must be a positive number, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DCDMTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"DCDMTrainConfig: unknown field(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**d)


def ritz_rhs(vectors: torch.Tensor, coefficients: torch.Tensor, low: int, low_weight: float) -> torch.Tensor:
    """Training vectors from Ritz vectors: ``b = V (w * c) / ||.||`` with ``w = low_weight`` on the first ``low``.

    Args:
        vectors: Ritz vectors ``(n, k)``, ascending Ritz values.
        coefficients: standard normal draws ``(batch, k)``.
        low: how many of the lowest Ritz vectors get the weight ``low_weight`` (the rest get 1).
        low_weight: the paper's 9.

    Returns:
        Unit vectors ``(batch, n)``.
    """
    w = torch.ones(vectors.shape[1], dtype=coefficients.dtype, device=coefficients.device)
    w[:low] = low_weight
    b = (coefficients * w) @ vectors.mT
    return b / b.norm(dim=1, keepdim=True)


class DCDMTrainer:
    """One DCDM training run on one operator; resumable, free of I/O.

    Args:
        op: the training matrix, a :class:`~neuralnumerics.linalg.PoissonGrid` (2D or 3D).
        config: a :class:`DCDMTrainConfig`.
        model: a network to continue training (default: a new :class:`DCDMNet` from ``config``).
        seed: fixes the Ritz basis' start, the data set, its order and the initial weights.
        eval_rhs: the right-hand side of the evaluation solve run after each epoch, one entry per cell of
            the evaluation operator (default: a smooth random field, :func:`~neuralnumerics.gallery.tank_system`'s
            kind, made consistent).
        eval_op: the operator of the evaluation solve (default ``op``). A larger grid of the same scene
            measures what matters when the model will be used at larger sizes, which the training loss
            does not predict.
        ritz: precomputed ``(values, vectors)`` (e.g. from a checkpoint), instead of running Lanczos.

    Attributes:
        model, optimizer, op, config, epoch (completed epochs), batch (batches done in the current epoch),
        history (one dict per completed epoch), ritz_values, ritz_vectors (float32, on the operator's device),
        lanczos_seconds.
    """

    def __init__(self, op: PoissonGrid, config: DCDMTrainConfig | None = None, *, model: DCDMNet | None = None,
                 seed: int = 0, eval_rhs: torch.Tensor | None = None,
                 ritz: tuple[torch.Tensor, torch.Tensor] | None = None, eval_op: PoissonGrid | None = None) -> None:
        if not isinstance(op, PoissonGrid):
            raise ValueError(f"DCDMTrainer: the training operator must be a PoissonGrid, got {type(op).__name__}")
        eval_op = op if eval_op is None else eval_op
        if not isinstance(eval_op, PoissonGrid) or len(eval_op.grid_shape) != len(op.grid_shape):
            raise ValueError(f"DCDMTrainer: the evaluation operator must be a {len(op.grid_shape)}D PoissonGrid, "
                             f"got {eval_op!r}")
        self.config = config = config or DCDMTrainConfig()
        self.seed = int(seed)
        dim = len(op.grid_shape)
        n = op.shape[0]
        self.op64 = op if op.dtype == torch.float64 else _recast(op, torch.float64)
        self.op = _recast(op, torch.float32)
        if model is None:
            with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's generator
                torch.manual_seed(self.seed)
                model = DCDMNet(dim, width=config.width, pre_blocks=config.pre_blocks, mid_blocks=config.mid_blocks,
                                post_blocks=config.post_blocks)
        elif model.dim != dim:
            raise ValueError(f"DCDMTrainer: the model is {model.dim}D and the operator {dim}D")
        self.model = model.to(op.device).float().channels_last()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        start = time.perf_counter()
        m = min(config.lanczos_steps or 1000, n)  # Lanczos steps (the basis may come from a checkpoint)
        if ritz is None:
            fluid = (~op.solid).reshape(-1).to(torch.float64)
            g = torch.randn(n, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
            v0 = self.op64.mv(g.to(op.device) * fluid)
            values, vectors = ritz_pairs(self.op64, m, v0=v0)
            if op.solid.any():  # Lanczos from a fluid-only start never leaves the fluid cells; round-off aside
                vectors = vectors * fluid[:, None]
            ritz = (values, vectors)
        self.ritz_values = ritz[0].to(torch.float64)
        self.ritz_vectors = ritz[1].to(device=op.device, dtype=torch.float32)
        self.lanczos_seconds = time.perf_counter() - start
        k = self.ritz_vectors.shape[1]
        theta = config.theta if config.theta is not None else max(1, m // 20)
        self.low = min(k, m // 2 + theta)
        self.eval_op64 = eval_op if eval_op.dtype == torch.float64 else _recast(eval_op, torch.float64)
        if eval_rhs is None:
            eval_rhs = _smooth_rhs(eval_op, self.seed)
        if eval_rhs.shape != (eval_op.shape[0],):
            raise ValueError(f"DCDMTrainer: eval_rhs has shape {tuple(eval_rhs.shape)}, the evaluation operator "
                             f"has {eval_op.shape[0]} cells")
        self.eval_rhs = eval_rhs.to(device=op.device, dtype=torch.float64)
        self.epoch = 0
        self.batch = 0
        self.history: list[dict[str, Any]] = []
        self._epoch_loss, self._epoch_seconds = 0.0, 0.0  # sums over the current epoch's batches
        self._validation = self._vectors(torch.arange(config.validation), stream=1)

    # -- data --------------------------------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        c = self.config
        return math.ceil(c.samples / c.batch_size) if c.samples else 1000

    def _vectors(self, index: torch.Tensor, stream: int = 0) -> torch.Tensor:
        """The training vectors with these indices: each index seeds its own coefficients (no storage)."""
        k = self.ritz_vectors.shape[1]
        coeffs = torch.empty(len(index), k)
        for row, i in enumerate(index.tolist()):
            g = torch.Generator().manual_seed((self.seed * 2_147_483_647 + stream * 1_000_000_007 + int(i))
                                              % 2 ** 63)
            coeffs[row] = torch.randn(k, generator=g)
        coeffs = coeffs.to(self.ritz_vectors.device)
        return ritz_rhs(self.ritz_vectors, coeffs, self.low, self.config.low_weight)

    def training_vectors(self, index: torch.Tensor) -> torch.Tensor:
        """The training vectors with these indices ``(k,)``, as unit rows ``(k, n)`` in float32.

        With ``samples > 0`` the training set is the indices ``0 .. samples - 1`` (e.g. to hand the very same
        data to another implementation).
        """
        return self._vectors(torch.as_tensor(index).reshape(-1))

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        c = self.config
        if c.samples:
            return torch.randperm(c.samples, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        start = 10 ** 9 + epoch * self.batches_per_epoch * c.batch_size  # fresh indices, disjoint from validation
        return torch.arange(start, start + self.batches_per_epoch * c.batch_size)

    # -- training ----------------------------------------------------------------------------------------
    def loss(self, b: torch.Tensor) -> torch.Tensor:
        """:func:`dcdm_loss` of the current network on vectors ``b`` ``(batch, n)``."""
        q = self.model(b.reshape(b.shape[0], 1, *self.op.grid_shape)).reshape(b.shape[0], -1)
        return dcdm_loss(self.op, b, q)

    def train_batch(self) -> float:
        """One Adam step on the next batch; returns its loss."""
        c = self.config
        if self.end_of_epoch():
            raise RuntimeError("DCDMTrainer.train_batch: the epoch is complete; call finish_epoch() first")
        start = time.perf_counter()
        order = self._epoch_order(self.epoch)
        index = order[self.batch * c.batch_size:(self.batch + 1) * c.batch_size]
        b = self._vectors(index)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(b)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DCDM training: the loss became {float(loss)} at epoch {self.epoch + 1}, "
                                     f"batch {self.batch + 1}; lower the learning rate (now {c.lr:g})")
        loss.backward()
        if c.lr_schedule == "cosine":
            done = (self.epoch * self.batches_per_epoch + self.batch) / (c.epochs * self.batches_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = c.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
        self.optimizer.step()
        self.batch += 1
        value = float(loss.detach())
        self._epoch_loss += value
        self._epoch_seconds += time.perf_counter() - start
        return value

    def end_of_epoch(self) -> bool:
        return self.batch >= self.batches_per_epoch

    def evaluate(self) -> dict[str, Any]:
        """Validation loss and the DCDM solve of the evaluation system with the current network."""
        self.model.eval()
        with torch.no_grad():
            val = float(sum(float(self.loss(chunk)) * len(chunk) for chunk in self._validation.split(50))
                        / len(self._validation))
        sol = linear_solve(self.eval_op64, self.eval_rhs, DCDM(self.model, rtol=self.config.eval_rtol, max_iters=500),
                           throw=False)
        return {"validation_loss": val, "eval_iterations": sol.stats.iterations,
                "eval_status": sol.status.value, "eval_residual": sol.stats.residual}

    def best_epoch(self) -> int | None:
        """The completed epoch whose evaluation solve went best: converged first, then fewest iterations,
        then lowest residual (the latest on ties); ``None`` before any evaluated epoch."""
        scored = [(r["eval_status"] != "success", r["eval_iterations"], r["eval_residual"], -r["epoch"])
                  for r in self.history if "eval_iterations" in r]
        return -min(scored)[3] if scored else None

    def finish_epoch(self, *, evaluate: bool = True) -> dict[str, Any]:
        """Record the epoch that just ended (mean training loss, seconds and, with ``evaluate``,
        :meth:`evaluate`); start the next."""
        record = {"epoch": self.epoch + 1, "train_loss": self._epoch_loss / max(self.batch, 1),
                  "seconds": self._epoch_seconds, **(self.evaluate() if evaluate else {})}
        self.epoch += 1
        self.batch = 0
        self._epoch_loss, self._epoch_seconds = 0.0, 0.0
        self.history.append(record)
        return record

    # -- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, position, history, Ritz basis."""
        return {"model": copy.deepcopy(self.model.state_dict()), "model_config": self.model.config(),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "epoch": self.epoch, "batch": self.batch,
                "history": list(self.history), "epoch_sums": [self._epoch_loss, self._epoch_seconds],
                "config": self.config.to_dict(), "seed": self.seed,
                "ritz_values": self.ritz_values.cpu(), "ritz_vectors": self.ritz_vectors.cpu(),
                "eval_rhs": self.eval_rhs.cpu()}

    @classmethod
    def from_state(cls, op: PoissonGrid, state: dict[str, Any], *, eval_op: PoissonGrid | None = None) -> DCDMTrainer:
        """Rebuild a trainer saved with :meth:`state_dict` (on the same operator and evaluation operator)."""
        config = DCDMTrainConfig.from_dict(state["config"])
        model = DCDMNet(**state["model_config"])
        model.load_state_dict(state["model"])
        if state["ritz_vectors"].shape[0] != op.shape[0]:
            raise ValueError(f"DCDMTrainer: the saved Ritz basis has {state['ritz_vectors'].shape[0]} rows, the "
                             f"operator {op.shape[0]}")
        trainer = cls(op, config, model=model, seed=state["seed"], eval_rhs=state["eval_rhs"],
                      ritz=(state["ritz_values"], state["ritz_vectors"]), eval_op=eval_op)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.epoch, trainer.batch = int(state["epoch"]), int(state["batch"])
        trainer.history = list(state["history"])
        trainer._epoch_loss, trainer._epoch_seconds = (float(v) for v in state["epoch_sums"])
        return trainer


def _recast(op: PoissonGrid, dtype: torch.dtype) -> PoissonGrid:
    boundary = [tuple(b) for b in op.boundary]
    return PoissonGrid(op.grid_shape, boundary=boundary, solid=op.solid, spacing=op.spacing, dtype=dtype,
                       device=op.device)


def _smooth_rhs(op: PoissonGrid, seed: int) -> torch.Tensor:
    from ..gallery.tanks import smooth_field

    b = smooth_field(op.grid_shape, seed=seed + 12345).reshape(-1).to(torch.float64) * (~op.solid).reshape(-1)
    return op.project_out_nullspace(b.to(op.device)) if op.singular else b.to(op.device)

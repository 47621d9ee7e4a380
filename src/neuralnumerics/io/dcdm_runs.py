"""``neuralnumerics train dcdm``: a DCDM training run in a run directory, resumable, with pictures.

The directory holds ``config.json`` (written first), ``metrics.jsonl`` (one line per epoch: training and
validation loss, the evaluation solve's iterations, seconds), ``checkpoints/`` (the whole trainer: weights,
Adam state, position in the data, Ritz basis), ``model.pt`` (the network after the last finished epoch,
loadable with ``DCDM(model=...)``), ``loss.png`` and ``summary.json`` at the end. A killed run continues
with ``--resume`` from its last checkpoint and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .rundir import RunDir, RunDirError, _atomic_write

__all__ = ["train_dcdm_run", "training_operator"]


def training_operator(grid: tuple[int, ...], *, obstacle: str = "none", open_top: bool = True, seed: int = 0,
                      device: str | torch.device = "cpu"):
    """The training matrix: the pressure operator of the smoke box (walls, open top) with an optional obstacle.

    The paper trains on the empty box (``obstacle="none"``) and applies the network to scenes with
    obstacles; see :func:`~neuralnumerics.gallery.smoke.obstacle_mask` for the other kinds.
    """
    from ..gallery.smoke import obstacle_mask
    from ..linalg import PoissonGrid

    solid = obstacle_mask(grid, obstacle, seed=seed)
    boundary = ["neumann"] * (len(grid) - 1) + [("neumann", "dirichlet" if open_top else "neumann")]
    return PoissonGrid(grid, boundary=boundary, solid=solid, spacing=1.0 / grid[0], dtype=torch.float64,
                       device=device)


def train_dcdm_run(out: str | Path, *, grid: tuple[int, ...], obstacle: str = "none", open_top: bool = True,
                   config=None, seed: int = 0, minutes: float | None = None, checkpoint_every: int = 200,
                   init: str | Path | None = None, device: str | None = None, resume: bool = False,
                   overwrite: bool = False, progress: bool = True, eval_grid: tuple[int, ...] | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a DCDM network on the smoke box's pressure matrix and keep everything in ``out``.

    Args:
        out: the run directory.
        grid: training grid, e.g. ``(64, 64)`` or ``(16, 16, 16)``.
        obstacle, open_top: the training matrix (:func:`training_operator`).
        config: a :class:`~neuralnumerics.linalg.dcdm_training.DCDMTrainConfig` (default: its defaults).
        seed: fixes the data, the initial weights and the order.
        minutes: stop (checkpointed, resumable) after this much training time in this invocation.
        checkpoint_every: batches between checkpoints inside an epoch (one is also written after every epoch).
        init: start from a saved model (fine-tuning) instead of random weights.
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        resume: continue the run in ``out``; its configuration must match.
        overwrite: replace ``out``.
        progress: a progress bar over batches (tqdm) with the running loss.
        log: where plain progress lines go (default stderr).
        eval_grid: evaluate each epoch on the same scene at this (larger) grid instead of the training grid,
            and keep as ``model.pt`` the epoch whose evaluation solve went best (``model_last.pt`` holds the
            last epoch). Which epoch generalises to larger grids varies and the training loss does not tell.

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        RunDirError: on an existing directory without ``resume``/``overwrite``, or a resume with another
            configuration.
        ValueError: on bad options.
    """
    from ..linalg.dcdm import load_dcdm_model, save_dcdm_model
    from ..linalg.dcdm_training import DCDMTrainConfig, DCDMTrainer

    config = config or DCDMTrainConfig()
    if minutes is not None and not minutes > 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be a positive integer, got {checkpoint_every!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolved = {"method": "dcdm", "grid": list(grid), "obstacle": obstacle, "open_top": open_top, "seed": seed,
                "init": None if init is None else str(init), "config": config.to_dict()}
    if eval_grid is not None:
        eval_grid = tuple(int(k) for k in eval_grid)
        if len(eval_grid) != len(grid):
            raise ValueError(f"--eval-grid {'x'.join(map(str, eval_grid))} has {len(eval_grid)} dimensions, the "
                             f"training grid {len(grid)}")
        resolved["eval_grid"] = list(eval_grid)
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    rd = RunDir(out, resume=resume, overwrite=overwrite)
    op = training_operator(tuple(grid), obstacle=obstacle, open_top=open_top, seed=seed, device=dev)
    eval_op = None if eval_grid is None else training_operator(eval_grid, obstacle=obstacle, open_top=open_top,
                                                               seed=seed, device=dev)
    if resume:
        stored = rd.read_config()
        if stored != resolved:
            diff = sorted(k for k in set(stored) | set(resolved) if stored.get(k) != resolved.get(k))
            raise RunDirError(f"cannot resume {rd.path}: it was started with other settings ({', '.join(diff)}); "
                              "pass the same options, or start a new run with --overwrite")
        steps = rd.checkpoint_steps()
        if steps:
            trainer = DCDMTrainer.from_state(op, rd.load_checkpoint(steps[-1]), eval_op=eval_op)
        else:
            trainer = None
    else:
        rd.write_config(resolved)
        trainer = None
    if trainer is None:
        model = load_dcdm_model(init, device=dev) if init is not None else None
        if model is not None:
            model.train()
        trainer = DCDMTrainer(op, config, model=model, seed=seed, eval_op=eval_op)
        rd.save_checkpoint(0, trainer.state_dict())
    # keep exactly the epochs the checkpoint covers
    _rewrite_metrics(rd, trainer.history)
    total = config.epochs * trainer.batches_per_epoch
    done = trainer.epoch * trainer.batches_per_epoch + trainer.batch
    bar = _Bar(total, done, progress, log)
    start = time.perf_counter()
    stopped_early = False
    try:
        while trainer.epoch < config.epochs:
            if minutes is not None and time.perf_counter() - start > 60 * minutes:
                stopped_early = True
                break
            bar.update(trainer.train_batch())
            done += 1
            if trainer.end_of_epoch():
                record = trainer.finish_epoch()
                rd.append_metrics(record)
                if eval_grid is None:
                    save_dcdm_model(trainer.model, rd.path / "model.pt", metadata=_metadata(resolved, trainer))
                else:
                    save_dcdm_model(trainer.model, rd.path / "model_last.pt", metadata=_metadata(resolved, trainer))
                    if trainer.best_epoch() == record["epoch"]:
                        save_dcdm_model(trainer.model, rd.path / "model.pt", metadata=_metadata(resolved, trainer))
                rd.save_checkpoint(done, trainer.state_dict())
                bar.epoch(record)
            elif trainer.batch % checkpoint_every == 0:
                rd.save_checkpoint(done, trainer.state_dict())
    finally:
        bar.close()
    if stopped_early and trainer.batch:
        rd.save_checkpoint(done, trainer.state_dict())
    _prune_checkpoints(rd, keep=2)
    summary = _summary(rd, trainer, resolved, stopped_early)
    rd.write_summary(summary)
    _plot(rd, trainer)
    return summary


def _metadata(resolved: dict[str, Any], trainer) -> dict[str, Any]:
    last = trainer.history[-1] if trainer.history else {}
    out = {"trained_grid": resolved["grid"], "obstacle": resolved["obstacle"], "open_top": resolved["open_top"],
           "epochs": trainer.epoch, "validation_loss": last.get("validation_loss"), "seed": resolved["seed"],
           "config": resolved["config"]}
    if "eval_grid" in resolved:
        out.update(eval_grid=resolved["eval_grid"], eval_iterations=last.get("eval_iterations"),
                   eval_status=last.get("eval_status"))
    return out


def _rewrite_metrics(rd: RunDir, history: list[dict[str, Any]]) -> None:
    """Keep exactly the epochs a checkpoint covers (a killed run may have written more)."""
    _atomic_write(rd.metrics_path, "".join(json.dumps(r) + "\n" for r in history).encode())


def _prune_checkpoints(rd: RunDir, keep: int) -> None:
    for step in rd.checkpoint_steps()[:-keep]:
        rd.checkpoint_path(step).unlink(missing_ok=True)


def _summary(rd: RunDir, trainer, resolved, stopped_early: bool) -> dict[str, Any]:
    """Epochs, losses, and the evaluation system solved by the kept model (``model.pt``) beside CG and IC(0)-PCG."""
    from ..linalg import CG, IncompleteCholesky, linear_solve
    from ..linalg.dcdm import DCDM, load_dcdm_model

    rtol = trainer.config.eval_rtol
    b = trainer.eval_rhs
    op64 = trainer.eval_op64
    kept = rd.path / "model.pt"
    model = load_dcdm_model(kept, device=b.device) if kept.exists() else trainer.model
    solves = {}
    for name, solver, M in (("dcdm", DCDM(model, rtol=rtol, max_iters=500), None),
                            ("cg", CG(rtol=rtol), None), ("cg+ic", CG(rtol=rtol), "ic")):
        if M == "ic":
            if op64.singular:
                continue
            M = IncompleteCholesky(op64)
        sol = linear_solve(op64, b, solver, M=M, throw=False)
        solves[name] = {"iterations": sol.stats.iterations, "status": sol.status.value,
                        "seconds": sol.stats.seconds}
    last = trainer.history[-1] if trainer.history else {}
    return {"method": "dcdm", "grid": resolved["grid"], "epochs_done": trainer.epoch,
            "epochs": trainer.config.epochs, "finished": trainer.epoch >= trainer.config.epochs,
            "stopped_by_time_budget": stopped_early, "batch_in_epoch": trainer.batch,
            "final_validation_loss": last.get("validation_loss"),
            "training_seconds": sum(r["seconds"] for r in trainer.history),
            "lanczos_seconds": trainer.lanczos_seconds,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "model": str(kept) if kept.exists() else None,
            "eval_grid": list(op64.grid_shape), "selected_epoch": _selected_epoch(trainer, resolved),
            "evaluation": {"rtol": rtol, **solves}}


def _selected_epoch(trainer, resolved) -> int | None:
    """The epoch ``model.pt`` holds: the best evaluated one with ``eval_grid``, else the last."""
    if "eval_grid" in resolved:
        return trainer.best_epoch()
    return trainer.epoch or None


def _plot(rd: RunDir, trainer) -> None:
    if not trainer.history:
        return
    try:
        from .plots import plot_error_curve
    except ImportError:  # pragma: no cover - plots are optional
        return
    epochs = [r["epoch"] for r in trainer.history]
    try:
        plot_error_curve(rd.path / "loss.png",
                         {"training loss": (epochs, [r["train_loss"] for r in trainer.history]),
                          "validation loss": (epochs, [r["validation_loss"] for r in trainer.history])},
                         xlabel="epoch", ylabel="loss (residual after one DCDM step)",
                         title=f"DCDM training, grid {'x'.join(map(str, trainer.op.grid_shape))}")
    except ImportError:
        pass


class _Bar:
    """A tqdm bar over batches with the running loss, or a plain line per epoch without tqdm."""

    def __init__(self, total: int, done: int, enabled: bool, log) -> None:
        self.enabled, self.log, self.bar, self.avg = enabled, log, None, None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            log(f"training {total - done} batches (pip install tqdm for a progress bar)")
            return
        self.bar = tqdm(total=total, initial=done, unit="batch", dynamic_ncols=True)

    def update(self, loss: float) -> None:
        self.avg = loss if self.avg is None else 0.98 * self.avg + 0.02 * loss
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss={self.avg:.3e}")

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        text = (f"epoch {record['epoch']}: train {record['train_loss']:.3e}, validation "
                f"{record['validation_loss']:.3e}, DCDM {record['eval_iterations']} iterations")
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.log(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

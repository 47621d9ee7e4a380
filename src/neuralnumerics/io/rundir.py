"""Run directories: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``frames/``, ``summary.json``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunDir", "RunDirError"]


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked (exists, missing, or holds another configuration)."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunDir:
    """A directory holding one run.

    Args:
        path: the directory.
        resume: continue the run stored there (it must exist and hold ``config.json``).
        overwrite: delete whatever is there first.

    Raises:
        RunDirError: if the directory exists and neither ``resume`` nor ``overwrite`` is given, if
            ``resume`` finds no run to continue, or if both flags are given.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        if resume and overwrite:
            raise RunDirError("--resume and --overwrite contradict each other; pass one of them")
        exists = self.path.exists() and any(self.path.iterdir()) if self.path.is_dir() else self.path.exists()
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} exists and is not a directory; choose another --out")
        if resume:
            if not (self.path / "config.json").is_file():
                raise RunDirError(f"cannot resume: {self.path} holds no run (no config.json); "
                                  f"start it without --resume")
        elif exists:
            if not overwrite:
                raise RunDirError(f"run directory {self.path} already exists; pass --resume to continue it "
                                  f"or --overwrite to replace it (or choose another --out)")
            shutil.rmtree(self.path)
        for sub in ("", "checkpoints", "frames"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    # config -------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def write_config(self, config: dict[str, Any]) -> None:
        _atomic_write(self.config_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_path.read_text())
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{self.config_path} is not valid JSON ({exc}); the run cannot be resumed") from exc

    # metrics ------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: it and anything after it are recomputed
        return out

    def truncate_metrics(self, last_step: int) -> list[dict[str, Any]]:
        """Keep the metrics of steps ``<= last_step`` (those a checkpoint covers); return them."""
        kept = [m for m in self.read_metrics() if m["step"] <= last_step]
        _atomic_write(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept).encode())
        return kept

    # checkpoints --------------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step:06d}.pt"

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.checkpoint_path(step)
        _atomic_write(path, buf.getvalue())
        return path

    def checkpoint_steps(self) -> list[int]:
        steps = []
        for p in (self.path / "checkpoints").glob("step_*.pt"):
            try:
                steps.append(int(p.stem.split("_")[1]))
            except ValueError:
                continue
        return sorted(steps)

    def load_checkpoint(self, step: int) -> dict[str, Any]:
        path = self.checkpoint_path(step)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RunDirError(f"checkpoint {path} is missing") from None
        except Exception as exc:  # a truncated or foreign file
            raise RunDirError(f"checkpoint {path} cannot be read ({exc}); delete it to resume from the one "
                              f"before") from exc

    # frames and summary -------------------------------------------------------------------------
    def frame_path(self, step: int) -> Path:
        return self.path / "frames" / f"step_{step:06d}.png"

    def frames(self) -> list[Path]:
        return sorted((self.path / "frames").glob("step_*.png"))

    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write(self.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())

"""Axis-aligned boxes: sampling (random or scrambled Sobol), uniform grids and boundary points."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Box"]


@dataclass(frozen=True)
class Box:
    """The box ``[lo_0, hi_0] x ... x [lo_{d-1}, hi_{d-1}]``."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.lo) != len(self.hi) or not self.lo:
            raise ValueError(f"Box: lo and hi need the same non-zero length, got {self.lo} and {self.hi}")
        if any(not (h > l) for l, h in zip(self.lo, self.hi)):
            raise ValueError(f"Box: every hi must exceed its lo, got lo={self.lo}, hi={self.hi}")

    @property
    def dim(self) -> int:
        return len(self.lo)

    @property
    def volume(self) -> float:
        v = 1.0
        for l, h in zip(self.lo, self.hi):
            v *= h - l
        return v

    def _scale(self, unit: torch.Tensor) -> torch.Tensor:
        lo = torch.tensor(self.lo, dtype=unit.dtype, device=unit.device)
        hi = torch.tensor(self.hi, dtype=unit.dtype, device=unit.device)
        return lo + unit * (hi - lo)

    def sample(self, n: int, *, generator: torch.Generator | None = None, quasi: bool = False,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """``n`` points in the box, shape ``(n, dim)``.

        ``quasi=True`` draws a scrambled Sobol sequence (seeded from ``generator``), which covers the
        box more evenly than independent uniform draws; otherwise points are i.i.d. uniform.
        """
        if n < 1:
            raise ValueError(f"need at least one sample point, got n={n}")
        if quasi:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            engine = torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=seed)
            unit = engine.draw(n, dtype=torch.float64).to(dtype)
        else:
            unit = torch.rand(n, self.dim, generator=generator, dtype=torch.float64).to(dtype)
        return self._scale(unit).to(device)

    def grid(self, n: int | tuple[int, ...], *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
        """Cell-centred uniform grid with ``n`` cells per axis, flattened to ``(prod(n), dim)`` (``ij`` order)."""
        ns = (n,) * self.dim if isinstance(n, int) else tuple(n)
        axes = [l + (torch.arange(k, dtype=torch.float64) + 0.5) * (h - l) / k
                for l, h, k in zip(self.lo, self.hi, ns)]
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)
        return mesh.to(dtype=dtype, device=device)

"""Model problems with known structure, generated procedurally (nothing is downloaded)."""

from .tanks import OBSTACLES, tank_system

__all__ = ["tank_system", "OBSTACLES"]

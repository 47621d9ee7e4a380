"""Run directories, checkpoints, plots and animations (plotting dependencies are imported lazily)."""

from .plots import plot_error_curve, plot_field_1d, plot_grid_field, write_animation
from .rundir import RunDir, RunDirError
from .runner import resolve_config, run_scenario

__all__ = ["RunDir", "RunDirError", "run_scenario", "resolve_config", "plot_field_1d", "plot_error_curve",
           "plot_grid_field", "write_animation"]

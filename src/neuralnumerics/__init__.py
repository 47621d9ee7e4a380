"""neuralnumerics: neural networks and classical numerical methods, side by side."""

from importlib.metadata import PackageNotFoundError, version

from ._status import ConvergenceWarning, NumericalError, Status, StepDivergedError

try:
    __version__ = version("neuralnumerics")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "Status", "NumericalError", "StepDivergedError", "ConvergenceWarning"]

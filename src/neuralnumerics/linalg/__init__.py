"""Linear operators and solvers: one entry point, :func:`linear_solve`, for every solver.

Operators (:class:`LinearOperator`) wrap dense tensors, torch sparse matrices, SciPy sparse matrices,
matrix-free callables and grid stencils (:class:`PoissonGrid`). Solvers are configured objects
(:class:`CG`, :class:`GMRES`, :class:`SOR`, :class:`BanditSOR`, :class:`GCRODR`, :class:`DCDM`, ...);
:func:`linear_solve` validates the input, runs the solver and returns a
:class:`Solution` with ``x``, ``status``, ``stats`` and a ``state`` for the next system of a sequence.
"""

from .bandit import BanditSOR, ContextualBanditSOR, WithContext
from .cg import CG, NotPositiveDefiniteError
from .dcdm import DCDM, DCDMNet, dcdm_loss, load_dcdm_model, save_dcdm_model
from .dcdm_training import DCDMTrainConfig, DCDMTrainer, ritz_rhs
from .gmres import GMRES
from .lanczos import lanczos, ritz_pairs
from .operators import DenseOperator, DiagonalOperator, FunctionOperator, LinearOperator, SparseOperator, as_operator
from .preconditioners import AMG, IncompleteCholesky, Jacobi
from .recycling import GCRODR, RecycledCG, RecycleSpace
from .sequence import SequenceResult, solve_sequence, sort_systems
from .solve import LinearSolveError, LinearSolver, Solution, SolveStats, linear_solve
from .sor import SOR, SSOR, SSORPreconditioner
from .stencil import PoissonGrid

__all__ = [
    "LinearOperator", "DenseOperator", "SparseOperator", "FunctionOperator", "DiagonalOperator", "PoissonGrid",
    "as_operator", "linear_solve", "LinearSolver", "Solution", "SolveStats", "LinearSolveError",
    "NotPositiveDefiniteError", "CG", "GMRES", "Jacobi", "IncompleteCholesky", "AMG",
    "SOR", "SSOR", "SSORPreconditioner", "BanditSOR", "ContextualBanditSOR", "WithContext",
    "GCRODR", "RecycledCG", "RecycleSpace", "solve_sequence", "sort_systems", "SequenceResult",
    "DCDM", "DCDMNet", "dcdm_loss", "save_dcdm_model", "load_dcdm_model", "DCDMTrainConfig", "DCDMTrainer",
    "ritz_rhs", "lanczos", "ritz_pairs",
]

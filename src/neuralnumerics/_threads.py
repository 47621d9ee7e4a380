"""One thread count for torch and for SciPy's BLAS (the LM fits' Gram matrices run in SciPy's dsyrk)."""

from __future__ import annotations

import os
from importlib import import_module

import torch

_LIMITS: list = []  # keeps threadpoolctl's limits in force for the life of the process


def set_threads(n: int) -> int | None:
    """Use ``n`` CPU threads in torch (intra-op) and in SciPy's and NumPy's OpenBLAS.

    OpenBLAS keeps its own thread pool and reads ``OPENBLAS_NUM_THREADS`` only when it loads, so the
    variable is exported and, with threadpoolctl installed, the copies already loaded are limited too.
    Returns the largest thread count among the loaded BLAS libraries, or ``None`` without threadpoolctl.
    """
    torch.set_num_threads(n)
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    try:
        import_module("scipy.linalg")  # load SciPy's BLAS now, so that the limit reaches it
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return None
    _LIMITS.append(threadpool_limits(n))
    return max((info["num_threads"] for info in threadpool_info()), default=n)

"""Load the M-FAC reference implementation (github.com/IST-DASLab/M-FAC) from a local checkout, for benchmarking.

None of the reference's code lives in this repository. :func:`load_reference` copies the checkout's
``optim.py`` (the dynamic algorithm ``HInvFastUpMulti``, the optimiser ``MFAC`` and the naive
``HInvSlow``) into a scratch directory, applies there the few text substitutions any user needs to run it
on a machine without CUDA, imports the patched copy under a private module name and returns it with the
list of patches. The checkout itself is never modified.

What the reference needs on a CPU (torch 2.x, no CUDA):

- ``torch.lu(A, pivot=False)`` (its setup step, an unpivoted LU of ``m I + G G^T / damp``) raises
  "LU without pivoting is not implemented on the CPU". It is replaced by :data:`SHIM_SOURCE`'s
  ``_nn_lu_nopivot``: the same packed ``L\\U`` factors, from a Cholesky factorisation when the matrix is
  numerically positive definite (``A = C C^T`` gives ``U = diag(C) C^T``, ``L = C diag(C)^{-1}``, the
  unique unpivoted LU), else from a blocked unpivoted LU in plain PyTorch.
- ``nn.parallel.parallel_apply`` (its gradient storage is split across a list of GPUs) asks
  ``torch.accelerator`` for the current stream and fails without an accelerator. With one device it only
  calls each function in turn, so it is replaced by a loop doing that.
- The custom CUDA kernels (``hinv_cuda``, built by its ``setup_cuda.py``) are optional: when the module
  does not import, the reference uses its own pure-PyTorch fallback loops for the coefficient matrix
  ``B`` and for the ``m``-step recursion of a product. No patch is needed; if ``hinv_cuda`` were
  importable on a CPU run, ``USE_CUDA`` is switched off (its kernels take CUDA tensors only).

On CUDA no patch is applied.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["Reference", "load_reference", "check_lu_shim", "SHIM_SOURCE"]

#: Source inserted into the scratch copy of ``optim.py`` (after its ``import torch.nn as nn``) on the CPU.
SHIM_SOURCE = '''
# ---- neuralnumerics benchmark shims (CPU only; see benchmarks/_mfac_reference.py) -------------------------
_NN_SHIM_CALLS = {"lu_cholesky": 0, "lu_blocked": 0, "parallel_apply": 0}


def _nn_lu_blocked(A, block=64):
    """Packed unpivoted LU (unit lower L below the diagonal, U on and above), right-looking, blocked."""
    A = A.clone()
    n = A.shape[-1]
    for k in range(0, n, block):
        e = min(k + block, n)
        for j in range(k, e):
            A[j + 1:, j] /= A[j, j]
            A[j + 1:, j + 1:e] -= torch.outer(A[j + 1:, j], A[j, j + 1:e])
        if e < n:
            A[k:e, e:] = torch.linalg.solve_triangular(A[k:e, k:e], A[k:e, e:], upper=False, unitriangular=True)
            A[e:, e:] -= A[e:, k:e] @ A[k:e, e:]
    return A


def _nn_lu_nopivot(A):
    """torch.lu(A, pivot=False)[0] on the CPU: via Cholesky when A is numerically SPD, else blocked LU."""
    C, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        _NN_SHIM_CALLS["lu_cholesky"] += 1
        c = C.diagonal()
        return torch.tril(C / c, -1) + c[:, None] * C.mT
    _NN_SHIM_CALLS["lu_blocked"] += 1
    return _nn_lu_blocked(A)


def _nn_parallel_apply(fns, inputs):
    """nn.parallel.parallel_apply for one device: call each function on its input, in order."""
    _NN_SHIM_CALLS["parallel_apply"] += 1
    return [f(x) for f, x in zip(fns, inputs)]
# ---- end of shims ------------------------------------------------------------------------------------------
'''

_LU_OLD = "torch.lu(self.giHig + diag, pivot=False)[0]"
_LU_NEW = "_nn_lu_nopivot(self.giHig + diag)"
_PA_OLD = "nn.parallel.parallel_apply("
_PA_NEW = "_nn_parallel_apply("
_ANCHOR = "import torch.nn as nn\n"


@dataclass
class Reference:
    """The imported, patched reference: ``module`` is its ``optim.py`` (``HInvFastUpMulti``, ``MFAC``,
    ``HInvSlow``); ``patches`` one line per change made to the scratch copy; ``notes`` what runs unpatched."""

    module: ModuleType
    path: Path
    revision: str | None
    patches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def shim_calls(self) -> dict[str, int]:
        """How often each shim ran so far (empty without shims)."""
        return dict(getattr(self.module, "_NN_SHIM_CALLS", {}))


def _substitute(text: str, old: str, new: str, count: int, where: Path) -> str:
    found = text.count(old)
    if found != count:
        raise RuntimeError(f"M-FAC reference patch failed: expected {count} occurrence(s) of {old!r} in {where}, found "
                           f"{found}. The checkout differs from the one this harness was written against "
                           "(github.com/IST-DASLab/M-FAC, commit 8116367); review the patches")
    return text.replace(old, new)


def _revision(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %cs"], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def load_reference(path: str | Path, device: torch.device | str = "cpu") -> Reference:
    """Copy ``path/optim.py`` to a scratch directory, patch it for ``device`` and import it.

    Raises:
        SystemExit: ``path`` is not a checkout of the reference (no ``optim.py`` with ``HInvFastUpMulti``).
        RuntimeError: a patch does not apply (a different revision of the reference).
    """
    path = Path(path).expanduser().resolve()
    source = path / "optim.py"
    if not source.is_file() or "class HInvFastUpMulti" not in source.read_text(errors="replace"):
        raise SystemExit(f"--reference {path}: no optim.py with HInvFastUpMulti there; pass a checkout of "
                         "github.com/IST-DASLab/M-FAC (git clone https://github.com/IST-DASLab/M-FAC)")
    device = torch.device(device)
    scratch = Path(tempfile.mkdtemp(prefix="mfac-reference-"))
    atexit.register(shutil.rmtree, scratch, True)
    target = scratch / "optim.py"
    text = source.read_text()
    patches: list[str] = []
    notes: list[str] = []
    if device.type == "cpu":
        text = _substitute(text, _LU_OLD, _LU_NEW, 1, source)
        patches.append("optim.py, `HInvFastUpMulti.setup`: `torch.lu(..., pivot=False)` raises \"LU without pivoting "
                       "is not implemented on the CPU\"; replaced by a pure-PyTorch unpivoted LU with the same packed "
                       "L\\U output (from a Cholesky factorisation when the matrix is numerically SPD, which "
                       "`m I + G G^T / damp` is; else a blocked unpivoted LU)")
        n = text.count(_PA_OLD)
        text = _substitute(text, _PA_OLD, _PA_NEW, n if n >= 1 else 1, source)
        patches.append(f"optim.py, `HInvFastUpMulti` ({n} calls): `nn.parallel.parallel_apply` fails without an "
                       "accelerator (torch.accelerator has no device); replaced by a loop calling each function on "
                       "its input in turn, what parallel_apply does for a single device")
        text = _substitute(text, _ANCHOR, _ANCHOR + SHIM_SOURCE, 1, source)
    target.write_text(text)
    spec = importlib.util.spec_from_file_location("_neuralnumerics_mfac_reference_optim", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if device.type == "cpu":
        if module.USE_CUDA:
            module.USE_CUDA = False
            patches.append("optim.py: `hinv_cuda` imports here but its kernels take CUDA tensors; `USE_CUDA` set to "
                           "False, so the reference's own pure-PyTorch loops run")
        else:
            notes.append("The CUDA kernels (`hinv_cuda`, built by `setup_cuda.py`) are not importable here, so the "
                         "reference runs its own pure-PyTorch fallback (`USE_CUDA = False`): a Python loop over "
                         "rows `last..m-1` of B in `setup` and an `m`-step loop in `mul`. No patch needed for that.")
    else:
        notes.append(f"CUDA kernels (`hinv_cuda`) {'in use' if module.USE_CUDA else 'not built: pure-PyTorch fallback'}")
    return Reference(module=module, path=path, revision=_revision(path), patches=patches, notes=notes)


def check_lu_shim(ref: Reference, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Relative residuals ``||L U - A|| / ||A||`` of the LU shim on an SPD and a non-symmetric matrix
    (float64); empty when no shim was applied."""
    lu = getattr(ref.module, "_nn_lu_nopivot", None)
    blocked = getattr(ref.module, "_nn_lu_blocked", None)
    if lu is None:
        return {}
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    spd = B @ B.T + n * torch.eye(n, dtype=torch.float64)
    general = B + 3 * n ** 0.5 * torch.eye(n, dtype=torch.float64)
    out = {}
    for name, fn, A in (("cholesky path (SPD)", lu, spd), ("blocked path (SPD)", blocked, spd),
                        ("blocked path (non-symmetric)", blocked, general)):
        P = fn(A)
        L = torch.tril(P, -1) + torch.eye(n, dtype=torch.float64)
        out[name] = float((L @ torch.triu(P) - A).norm() / A.norm())
    ref.module._NN_SHIM_CALLS.update(lu_cholesky=0, lu_blocked=0)
    return out

"""DCDM: the deep conjugate direction method (Kaneda et al., ICML 2023).

A small convolutional network ``f`` maps a residual on the cell grid to an approximation of ``A^{-1} r``
up to scale. Each iteration takes ``q = f(r / ||r||)``, A-orthogonalises it against the last few search
directions, moves ``x`` to the minimum of the A-norm error along it (exact line search) and recomputes the
residual. With ``f`` the identity this is conjugate gradients; with ``f = c A^{-1}`` it ends in one
iteration. The network is trained, without solutions, on the loss of that first step (:func:`dcdm_loss`);
see :mod:`neuralnumerics.linalg.dcdm_training`.
"""

from __future__ import annotations

import math
import os
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._status import Status
from .operators import LinearOperator
from .solve import LinearSolver, SolveStats

__all__ = ["DCDM", "DCDMNet", "dcdm_loss", "save_dcdm_model", "load_dcdm_model"]

_FORMAT = "neuralnumerics.dcdm"
_VERSION = 1


class DCDMNet(nn.Module):
    """The DCDM network: a one-level convolutional U-Net with residual blocks, in 2D or 3D.

    Layers (all convolutions ``3^d`` with ``width`` channels, zero padding, bias), following the paper's
    code: a linear convolution of the input; ``pre_blocks`` residual pairs at full resolution
    (``a = relu(conv(x))``, ``b = relu(conv(a))``, then ``a = relu(conv(b)) + a``, ``b = relu(conv(a))``
    repeated); 2x average pooling; ``mid_blocks`` residual blocks ``c = relu(conv(relu(conv(c)))) + c``;
    nearest-neighbour 2x upsampling plus the full-resolution ``b``; ``post_blocks`` residual blocks; a
    per-cell linear map to one channel. Weights start Glorot-uniform and biases at zero, as in Keras. The
    defaults are the paper's "64" model (97,457 parameters in 3D); ``pre_blocks=3, mid_blocks=5,
    post_blocks=3`` is its "128" model. The network is fully convolutional, so weights trained on one grid
    apply to any other (odd sizes are padded by one zero cell and cropped).

    Args:
        dim: 2 or 3.
        width: channels of every hidden layer.
        pre_blocks, mid_blocks, post_blocks: residual blocks before pooling, at half resolution, after
            upsampling (``pre_blocks >= 1``, the others ``>= 0``).

    Input and output: ``(batch, 1, *grid)`` or ``(batch, *grid)`` (then the output has no channel axis).
    """

    def __init__(self, dim: int = 2, *, width: int = 16, pre_blocks: int = 2, mid_blocks: int = 3,
                 post_blocks: int = 2) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"DCDMNet: dim must be 2 or 3, got {dim!r}")
        for name, v, low in (("width", width, 1), ("pre_blocks", pre_blocks, 1), ("mid_blocks", mid_blocks, 0),
                             ("post_blocks", post_blocks, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"DCDMNet: {name} must be an integer >= {low}, got {v!r}")
        self.dim, self.width = dim, width
        self.pre_blocks, self.mid_blocks, self.post_blocks = pre_blocks, mid_blocks, post_blocks
        conv = nn.Conv2d if dim == 2 else nn.Conv3d

        def layer(cin: int = width) -> nn.Module:
            return conv(cin, width, 3, padding=1)

        self.inp = layer(1)
        self.pre = nn.ModuleList(layer() for _ in range(2 * pre_blocks))
        self.mid = nn.ModuleList(layer() for _ in range(2 * mid_blocks))
        self.post = nn.ModuleList(layer() for _ in range(2 * post_blocks))
        self.out = conv(width, 1, 1)
        for m in self.modules():  # the paper's (Keras) initialisation: Glorot-uniform weights, zero biases
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def config(self) -> dict[str, int]:
        """The constructor arguments (what :func:`save_dcdm_model` stores to rebuild the network)."""
        return {"dim": self.dim, "width": self.width, "pre_blocks": self.pre_blocks,
                "mid_blocks": self.mid_blocks, "post_blocks": self.post_blocks}

    def channels_last(self) -> DCDMNet:
        """Store the weights channels-last if they are on the CPU (same values); returns ``self``.

        oneDNN's CPU convolutions are mostly faster on channels-last tensors. For this network, one thread:
        inference 1.1-1.5x from 64x64 and 8^3 up (0.93x at 32x32); a training step 1.2-1.7x in 2D and
        0.96-1.3x in 3D (``benchmarks/dcdm_layout.py``, docs/benchmarks/dcdm_layout.md). :meth:`forward`
        then hands its input over in the same layout.
        :class:`DCDM` and :class:`~neuralnumerics.linalg.DCDMTrainer` call this; other devices are left as
        they are.
        """
        weight = self.pre[0].weight
        if weight.device.type == "cpu" and not weight.is_contiguous(memory_format=self._channels_last):
            self.to(memory_format=self._channels_last)
        return self

    @property
    def _channels_last(self) -> torch.memory_format:
        return torch.channels_last if self.dim == 2 else torch.channels_last_3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == self.dim + 1
        if squeeze:
            x = x.unsqueeze(1)
        if x.ndim != self.dim + 2 or x.shape[1] != 1:
            raise ValueError(f"DCDMNet({self.dim}D): expected input (batch, 1, *grid) or (batch, *grid) with "
                             f"{self.dim} grid axes, got shape {tuple(x.shape)}")
        grid = x.shape[2:]
        pad = [s % 2 for s in grid]
        if any(pad):  # F.pad takes the last axis first
            x = F.pad(x, [p for s in reversed(pad) for p in (0, s)])
        if self.pre[0].weight.is_contiguous(memory_format=self._channels_last):  # see channels_last()
            x = x.contiguous(memory_format=self._channels_last)
        a = F.relu(_conv(self.pre[0], _conv(self.inp, x)))
        b = F.relu(_conv(self.pre[1], a))
        for i in range(2, len(self.pre), 2):
            a = F.relu(_conv(self.pre[i], b)) + a
            b = F.relu(_conv(self.pre[i + 1], a))
        pool = F.avg_pool2d if self.dim == 2 else F.avg_pool3d
        c = _residual_blocks(self.mid, pool(b, 2))
        c = F.interpolate(c, scale_factor=2, mode="nearest") + b
        c = _residual_blocks(self.post, c)
        y = _conv(self.out, c)
        if any(pad):
            y = y[(slice(None), slice(None)) + tuple(slice(0, s) for s in grid)]
        return y.squeeze(1) if squeeze else y


def _residual_blocks(layers: nn.ModuleList, c: torch.Tensor) -> torch.Tensor:
    for i in range(0, len(layers), 2):
        c = F.relu(_conv(layers[i + 1], F.relu(_conv(layers[i], c)))) + c
    return c


def _conv(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, sidestepping PyTorch's slow CPU kernel for one small sample.

    On the CPU, PyTorch sends a float32 convolution with a 3-wide kernel to oneDNN only when the batch has
    more than one sample or ``N C D H`` exceeds 20480; otherwise a generic kernel runs, about 10x slower
    for 3D grids up to 32^3 (DCDM solves one residual at a time). Two copies of the sample take the fast
    path; the first output is the same.
    """
    if x.device.type == "cpu" and x.shape[0] == 1 and x.dtype == torch.float32 and x.ndim == 5 \
            and math.prod(x.shape[:4]) <= 20480:
        return layer(x.expand(2, *x.shape[1:]))[:1]
    return layer(x)


def dcdm_loss(op: LinearOperator, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """DCDM's unsupervised loss: the residual left by one exact line search along each network output.

    ``mean_i || b_i - (q_i^T b_i / q_i^T A q_i) A q_i ||^2`` over the batch. It is unchanged when any
    ``q_i`` is scaled by a nonzero number (the network learns ``A^{-1}`` up to scale) and when ``A`` is
    scaled; it is 0 exactly when ``q_i`` is a multiple of ``A^{-1} b_i``.

    Args:
        op: the SPD operator ``n x n`` (its ``mv`` takes ``(n, k)`` blocks).
        b: right-hand sides ``(batch, n)``.
        q: network outputs ``(batch, n)``, differentiable.

    Returns:
        The scalar loss.

    References:
        Kaneda et al., "A deep conjugate direction method for iteratively solving linear systems", ICML
        2023 (the training loss).
    """
    if b.shape != q.shape or b.ndim != 2 or b.shape[1] != op.shape[0]:
        raise ValueError(f"dcdm_loss: b and q must both be (batch, {op.shape[0]}), got {tuple(b.shape)} and "
                         f"{tuple(q.shape)}")
    aq = op.mv(q.mT).mT
    qaq = (q * aq).sum(1)
    alpha = (q * b).sum(1) / torch.where(qaq > 0, qaq, torch.ones_like(qaq))
    return ((b - alpha[:, None] * aq) ** 2).sum(1).mean()


class DCDM(LinearSolver):
    """The deep conjugate direction method for SPD systems on a cell grid (fluid pressure systems).

    Iteration ``k``: ``q = f(r / ||r||)`` (zeroed on solid cells); ``q <- q - sum_j p_j (q^T A p_j) /
    (p_j^T A p_j)`` over the last ``n_orth`` directions; ``x <- x + p (p^T r) / (p^T A p)`` with ``p = q``;
    ``r = b - A x`` (recomputed, or updated recursively with ``true_residual=False``). Stops when
    ``||r|| <= max(rtol ||b||, atol)``. Any ``f`` gives a valid conjugate-direction method (the A-norm
    error never grows), a good one converges in few iterations nearly independently of the grid size;
    ``model=None`` uses the identity, which is CG in exact arithmetic.

    The operator must live on a cell grid: a :class:`~neuralnumerics.linalg.PoissonGrid`, or any operator
    with a ``grid_shape`` attribute (and optionally a boolean ``solid`` mask). The network runs in its own
    dtype (float32 as trained) on the operator's device; the iteration runs in the operator's dtype.

    Args:
        model: a :class:`DCDMNet`, the path of a model saved by :func:`save_dcdm_model` (or by
            ``neuralnumerics train dcdm``), or None (identity: CG).
        n_orth: previous directions each new one is A-orthogonalised against (the paper's 2).
        true_residual: recompute ``r = b - A x`` every iteration, as the paper's code does (one more
            operator product; keeps the stopping test honest when the network's directions are poor).
        rtol, atol: stopping tolerances on ``||b - A x||``.
        max_iters: iteration cap (default 1000).
        stall_iters: stop with ``STAGNATED`` when the residual has not fallen below 0.99 of its best value for
            this many iterations (a network whose directions have stopped helping; not in the paper, which
            caps the iteration at 100); None never stops early.

    Raises (from :func:`~neuralnumerics.linalg.linear_solve`):
        ValueError: on an operator without a grid, or a model for the wrong dimension.

    References:
        A. Kaneda, O. Akar, J. Chen, V. A. T. Kala, D. Hyde, J. Teran. "A deep conjugate direction method
        for iteratively solving linear systems", ICML 2023.
    """

    needs_symmetric = True
    needs_positive_definite = True
    accepts_preconditioner = False

    def __init__(self, model: DCDMNet | str | os.PathLike | None = None, *, n_orth: int = 2,
                 true_residual: bool = True, rtol: float = 1e-6, atol: float = 0.0,
                 max_iters: int | None = None, stall_iters: int | None = 200) -> None:
        super().__init__(rtol=rtol, atol=atol, max_iters=max_iters)
        if isinstance(n_orth, bool) or not isinstance(n_orth, int) or n_orth < 0:
            raise ValueError(f"DCDM: n_orth must be a non-negative integer, got {n_orth!r}")
        if stall_iters is not None and (isinstance(stall_iters, bool) or not isinstance(stall_iters, int)
                                        or stall_iters < 1):
            raise ValueError(f"DCDM: stall_iters must be a positive integer or None, got {stall_iters!r}")
        self.stall_iters = stall_iters
        if isinstance(model, (str, os.PathLike)):
            model = load_dcdm_model(model)
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"DCDM: model must be a DCDMNet, a saved model's path or None, got "
                             f"{type(model).__name__}")
        self.model = model
        self.n_orth = n_orth
        self.true_residual = bool(true_residual)

    def iteration_cap(self, n: int) -> int:
        return self.max_iters if self.max_iters is not None else 1000

    def __repr__(self) -> str:
        name = "identity" if self.model is None else type(self.model).__name__
        return (f"DCDM(model={name}, n_orth={self.n_orth}, rtol={self.rtol:g}, atol={self.atol:g}, "
                f"max_iters={self.max_iters})")

    def messages(self) -> dict[Status, str]:
        out = super().messages()
        out[Status.MAX_ITERS] = (f"DCDM stopped at its iteration cap before reaching rtol={self.rtol:g}; a model "
                                 "trained longer (or on this grid's boundary conditions) needs fewer iterations; "
                                 "raise max_iters or use CG with a preconditioner.")
        out[Status.STAGNATED] = ("DCDM stopped making progress: its network's directions have become (nearly) "
                                 "A-orthogonal to the error. Train the model longer, keep more directions "
                                 "(n_orth=16), or check it was trained for this dimension and kind of boundary.")
        return out

    def direction(self, r: torch.Tensor, grid_shape: Sequence[int], fluid: torch.Tensor | None) -> torch.Tensor:
        """The network's search direction for residual ``r`` ``(n,)`` (before A-orthogonalisation)."""
        rnorm = r.norm()
        if self.model is None:
            q = r / rnorm
        else:
            param = next(self.model.parameters(), None)
            if param is not None and param.device != r.device:
                self.model.to(r.device)
                param = next(self.model.parameters())
            if isinstance(self.model, DCDMNet):
                self.model.channels_last()
            dtype = r.dtype if param is None else param.dtype
            with torch.inference_mode():
                inp = (r / rnorm).to(dtype).reshape(1, 1, *grid_shape)
                q = self.model(inp).reshape(-1).to(r.dtype)
            q = q.clone()  # leave inference mode
        if fluid is not None:
            q = q * fluid
        return q

    def _solve(self, op, b, x0, M, state, stats: SolveStats):
        grid_shape, fluid = _grid_of(op, self.model)
        x, r, rnorm, threshold, denom = self._start(op, b, x0, stats)
        if rnorm <= threshold:
            return x, Status.SUCCESS, state
        previous: deque[tuple[torch.Tensor, torch.Tensor, float]] = deque(maxlen=max(self.n_orth, 1))
        best, best_it = rnorm, 0
        for it in range(self.iteration_cap(b.shape[0])):
            q = self.direction(r, grid_shape, fluid)
            if self.n_orth:
                for p, ap, pap in previous:
                    q = q - p * (float(q @ ap) / pap)
            aq = op.mv(q)
            stats.matvecs += 1
            qaq = float(q @ aq)
            stats.iterations = it + 1
            if not math.isfinite(qaq):
                return x, Status.DIVERGED, state
            if not qaq > 0:
                return x, Status.STAGNATED, state
            alpha = float(q @ r) / qaq
            x = x + alpha * q
            if self.true_residual:
                r = b - op.mv(x)
                stats.matvecs += 1
            else:
                r = r - alpha * aq
            previous.append((q, aq, qaq))
            rnorm = float(r.norm())
            stats.residual_history.append(rnorm / denom)
            if not math.isfinite(rnorm):
                return x, Status.DIVERGED, state
            if rnorm <= threshold:
                return x, Status.SUCCESS, state
            if rnorm < 0.99 * best:
                best, best_it = rnorm, it + 1
            elif self.stall_iters is not None and it + 1 - best_it >= self.stall_iters:
                stats.extra["stalled_after"] = best_it
                return x, Status.STAGNATED, state
        return x, Status.MAX_ITERS, state


def _grid_of(op: LinearOperator, model) -> tuple[tuple[int, ...], torch.Tensor | None]:
    """The operator's grid shape and its fluid-cell indicator (None when every cell is an unknown)."""
    grid_shape = getattr(op, "grid_shape", None)
    if grid_shape is None:
        raise ValueError(f"DCDM needs an operator on a cell grid (a PoissonGrid, or a LinearOperator with a "
                         f"grid_shape attribute); this {type(op).__name__} has none")
    grid_shape = tuple(int(s) for s in grid_shape)
    if math.prod(grid_shape) != op.shape[0]:
        raise ValueError(f"DCDM: the operator's grid_shape {grid_shape} has {math.prod(grid_shape)} cells but the "
                         f"operator is {op.shape[0]}x{op.shape[1]}")
    if model is not None and getattr(model, "dim", len(grid_shape)) != len(grid_shape):
        raise ValueError(f"DCDM: the model is {model.dim}D but the grid {grid_shape} is {len(grid_shape)}D; train "
                         f"a {len(grid_shape)}D model (neuralnumerics train dcdm --grid ...)")
    solid = getattr(op, "solid", None)
    if solid is None or not bool(solid.any()):
        return grid_shape, None
    return grid_shape, (~solid.to(op.device)).reshape(-1).to(op.dtype)


def save_dcdm_model(model: DCDMNet, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Save a :class:`DCDMNet` (architecture, weights, and optional JSON-like metadata) to ``path``.

    Returns:
        The path written. Load it with :func:`load_dcdm_model` or ``DCDM(model=path)``.
    """
    if not isinstance(model, DCDMNet):
        raise ValueError(f"save_dcdm_model: expected a DCDMNet, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": _FORMAT, "version": _VERSION, "config": model.config(), "state_dict": state,
               "metadata": dict(metadata or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_dcdm_model(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                    return_metadata: bool = False):
    """Load a model saved by :func:`save_dcdm_model`.

    Returns:
        The :class:`DCDMNet` in eval mode (and its metadata dict with ``return_metadata``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a saved DCDM model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DCDM model {path} does not exist; train one with `neuralnumerics train dcdm "
                                f"--out DIR` (it writes DIR/model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path} is not a readable DCDM model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a DCDM model saved by neuralnumerics (no {_FORMAT!r} header)")
    if payload.get("version", 0) > _VERSION:
        raise ValueError(f"{path} was saved by a newer neuralnumerics (format version {payload['version']}); "
                         "upgrade to load it")
    try:
        model = DCDMNet(**payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: the stored DCDM model does not match its architecture ({exc})") from exc
    model.to(device).eval()
    return (model, payload.get("metadata", {})) if return_metadata else model

"""M-FAC: products with the inverse of a damped empirical Fisher matrix, without forming a ``d x d`` matrix.

For ``n`` gradients ``g_1 .. g_n`` of dimension ``d`` (the rows of ``G``, shape ``(n, d)``) and a
dampening ``damp = lambda > 0``, the damped empirical Fisher is

    ``F = lambda I + (1/n) G^T G``.

Its inverse follows from the Woodbury identity through one ``n x n`` matrix,

    ``F^{-1} = (1/lambda) (I - G^T S^{-1} G)``,  ``S = n lambda I + G G^T``,

and ``F G^T = G^T (lambda I + G G^T / n)`` gives, for vectors in the span of the gradients,

    ``F^{-1} G^T c = n G^T S^{-1} c``.

With ``S = L L^T`` (Cholesky) and ``W = L^{-1} G``, ``F^{-1} = (I - W^T W) / lambda``: ``W`` holds, up to
scaling, the vectors of the paper's recursive rank-one Woodbury updates (row ``i`` of ``W`` is the
``i``-th Sherman-Morrison vector ``F_{i-1}^{-1} g_i`` divided by ``sqrt((n + g_i^T F_{i-1}^{-1} g_i) /
lambda)``), so a product costs ``O(d n)``, the diagonal ``O(d n)`` and one entry ``O(n)``.

:class:`StaticMFAC` precomputes ``W`` for a fixed set of gradients (the paper's static algorithm, for
pruning). :class:`SlidingMFAC` keeps a sliding window of the last ``m`` gradients and their Gram matrix
``G G^T``: replacing the oldest gradient costs one ``O(d m)`` Gram row and an ``O(m^2)`` Woodbury update
of the inverse of the small matrix, and a product costs ``O(d m + m^2)`` (the paper's dynamic algorithm,
for optimisation).

Precision. The ``n x n`` algebra is done in float64 whatever the gradients' dtype, and by default the
operators accumulate the Gram entries ``g_i . g_j`` in float64 as well (``gram_dtype``): with small dampening and
correlated gradients (consecutive training gradients are), the small eigenvalues of ``G G^T`` decide the
answer, and float32 inner products lose them. Products with ``d``-vectors stay in the gradients' dtype.
For a vector ``x`` lying mostly in the span of the gradients, ``x - G^T S^{-1} G x`` cancels: in float32
the relative error of ``F^{-1} x`` grows like ``eps * max_eig(G^T G / n) / lambda``, inherent to any
method that works in float32 on the ``d``-vectors (the reference implementation's too).
:meth:`SlidingMFAC.update_mv`, the optimiser's product with the newest gradient, uses the span formula
instead, which does not cancel.

References:
    Frantar, Kurtic, Alistarh. "M-FAC: Efficient Matrix-Free Approximations of Second-Order
    Information", NeurIPS 2021.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch

from ..linalg.operators import LinearOperator

__all__ = ["StaticMFAC", "SlidingMFAC"]


def _chunk_elements(device: torch.device) -> int:
    """Elements of the temporary upcast copies made while accumulating Gram matrices: on the CPU small enough
    to stay in cache (512 KiB in float64; larger ones are several times slower), on accelerators large enough
    to keep the number of kernel launches low (128 MiB)."""
    return 1 << 16 if device.type == "cpu" else 1 << 24


# -- validation ------------------------------------------------------------------------------------------------

def _check_damp(damp, who: str) -> float:
    if isinstance(damp, bool) or not isinstance(damp, numbers.Real) or not math.isfinite(damp) or damp <= 0:
        raise ValueError(f"{who}: damp must be a positive finite number (the lambda of F = lambda I + G^T G / m), "
                         f"got {damp!r}; the paper uses 1e-5. It is absolute: scale it with the squared gradient "
                         "entries")
    return float(damp)


def _check_count(value, name: str, who: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}; {hint}")
    return int(value)


def _check_gram_dtype(gram_dtype, dtype: torch.dtype, who: str) -> torch.dtype:
    if gram_dtype is None:
        return dtype
    if not isinstance(gram_dtype, torch.dtype) or not gram_dtype.is_floating_point:
        raise ValueError(f"{who}: gram_dtype must be a real floating torch.dtype (e.g. torch.float64) or None "
                         f"for the gradients' dtype, got {gram_dtype!r}")
    return gram_dtype


def _check_finite(t: torch.Tensor, what: str, who: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        where = first[0] if len(first) == 1 else first
        raise ValueError(f"{who}: {what} has {int(bad.sum())} non-finite (NaN or inf) entries, the first at index "
                         f"{where}; the inverse Fisher of such gradients is meaningless. Check the loss for "
                         "overflow (lower the learning rate, use float64 or clip gradients) before passing them")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return type(x).__name__


def _check_vector(op: LinearOperator, x, who: str) -> torch.Tensor:
    """``x`` must be ``(d,)`` or ``(d, k)`` with the operator's dtype and device."""
    d = op.shape[1]
    if not isinstance(x, torch.Tensor) or x.ndim not in (1, 2) or x.shape[0] != d:
        raise ValueError(f"{who}: x must be a tensor of shape ({d},) or ({d}, k), got {_describe(x)}")
    if x.dtype != op.dtype:
        raise ValueError(f"{who}: x has dtype {x.dtype} but the operator works in {op.dtype}; pass "
                         f"x.to({op.dtype}) (or build the operator from {x.dtype} gradients)")
    if x.device != op.device:
        raise ValueError(f"{who}: x is on {x.device} but the operator is on {op.device}; pass x.to('{op.device}')")
    return x


# -- the small (n x n) algebra ---------------------------------------------------------------------------------

def _inverse_factor(gram: torch.Tensor, shift: float) -> torch.Tensor:
    """``T`` with ``T^T T = (gram + shift I)^{-1}``, float64, for ``gram`` of shape ``(..., n, n)``.

    ``T = L^{-1}`` for the Cholesky factor ``L`` of ``gram + shift I``. Where rounding made that matrix
    indefinite (a float32 Gram matrix with a tiny shift), ``gram``'s eigenvalues are clipped at zero (it
    is positive semidefinite in exact arithmetic) and ``T = D^{-1/2} Q^T`` from ``Q D Q^T``.
    """
    gram = gram.to(torch.float64)
    n = gram.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + shift * eye)
    T = torch.linalg.solve_triangular(chol, eye.expand_as(gram), upper=False)
    bad = info != 0
    if bool(bad.any()):
        evals, evecs = torch.linalg.eigh(gram[bad] if gram.ndim > 2 else gram)
        t = (evecs / (evals.clamp_min(0) + shift).sqrt().unsqueeze(-2)).mT
        if gram.ndim > 2:
            T[bad] = t
        else:
            T = t
    return T


def _gram_rows(rows: torch.Tensor, g: torch.Tensor, gram_dtype: torch.dtype) -> torch.Tensor:
    """``rows @ g`` accumulated in ``gram_dtype``, returned in float64; ``rows`` ``(n, d)``, ``g`` ``(d,)``.

    Chunked over ``d`` so that the upcast copies stay small. Cost ``O(d n)``.
    """
    if gram_dtype == rows.dtype:
        return (rows @ g).to(torch.float64)
    n, d = rows.shape
    acc = torch.zeros(n, dtype=gram_dtype, device=rows.device)
    step = max(1, _chunk_elements(rows.device) // n)
    for s in range(0, d, step):
        acc += rows[:, s:s + step].to(gram_dtype) @ g[s:s + step].to(gram_dtype)
    return acc.to(torch.float64)


def _inverse(gram: torch.Tensor, shift: float) -> tuple[torch.Tensor, bool]:
    """``((gram + shift I)^{-1}, exact)`` in float64 for a symmetric ``(n, n)`` ``gram``, ``O(n^3)``.

    From the Cholesky factor (``exact`` True); where rounding made ``gram + shift I`` indefinite, from
    ``gram``'s eigendecomposition with its eigenvalues clipped at zero (``exact`` False: the inverse of a
    nearby positive definite matrix, not of ``gram + shift I``).
    """
    n = gram.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + shift * eye)
    if int(info) == 0:
        return torch.cholesky_inverse(chol), True
    evals, evecs = torch.linalg.eigh(gram)
    return (evecs / (evals.clamp_min(0) + shift)) @ evecs.mT, False


# -- static ----------------------------------------------------------------------------------------------------

class StaticMFAC(LinearOperator):
    """The inverse of the damped empirical Fisher of a fixed set of gradients, as a linear operator.

    ``F = damp I + (1/m) sum_i g_i g_i^T`` for the rows ``g_i`` of ``grads``; the operator is
    ``F^{-1}`` (symmetric positive definite, tagged so), usable wherever :mod:`neuralnumerics.linalg`
    takes an operator, e.g. as the ``M=`` preconditioner of :func:`~neuralnumerics.linalg.linear_solve`.

    With ``blocks=B``, ``F`` is block diagonal: the weights are cut into consecutive blocks of ``B``
    (the last one may be shorter) and each block gets the Fisher of its slice of the gradients, as the
    paper does for large models. Blocks cost the same ``O(d m^2)`` precomputation but no ``m x m``
    coupling across blocks, and the entries of ``F^{-1}`` between two blocks are zero.

    The precomputation (``O(d m^2)``, the paper's recursive Woodbury in its Cholesky form, see the module
    docstring) forms the ``m x m`` Gram matrix of each block in ``gram_dtype``, factors it in float64 and
    stores ``W = L^{-1} G`` (``(m, d)``, the gradients' dtype); ``grads`` itself is not kept.

    Args:
        grads: ``(m, d)``, one gradient per row, a real floating dtype; the operator takes its dtype and
            device.
        damp: the dampening ``lambda > 0`` (absolute, in the units of ``g g^T``).
        blocks: block size ``B`` (a positive integer; ``B >= d`` is one block), or None for the full Fisher.
        gram_dtype: dtype in which the Gram entries ``g_i . g_j`` and ``W`` are computed (float64 by
            default; None for the gradients' own dtype, faster and less accurate with small ``damp``).

    Attributes:
        damp, gram_dtype: as given.
        num_grads: ``m``.
        block_size: ``B`` (``d`` without blocks).

    Raises:
        ValueError: ``grads`` not a 2D real floating tensor with at least one row and column, non-finite
            entries, ``damp <= 0``, a block size below 1.

    Complexity:
        construction ``O(d m^2)`` time and ``O(d m)`` memory; :meth:`mv` ``O(d m k)`` for ``k`` vectors;
        :meth:`diag` ``O(d m)``; :meth:`element` ``O(m)``.

    References:
        Frantar, Kurtic, Alistarh. "M-FAC: Efficient Matrix-Free Approximations of Second-Order
        Information", NeurIPS 2021 (the static algorithm).
    """

    def __init__(self, grads: torch.Tensor, damp: float = 1e-5, *, blocks: int | None = None,
                 gram_dtype: torch.dtype | None = torch.float64) -> None:
        who = "StaticMFAC"
        if not isinstance(grads, torch.Tensor) or grads.ndim != 2:
            raise ValueError(f"{who}: grads must be a 2D tensor of shape (m, d), one gradient per row, got "
                             f"{_describe(grads)}; stack gradients with torch.stack(list_of_flat_gradients) "
                             "(a single gradient g is g[None])")
        m, d = grads.shape
        if m < 1 or d < 1:
            raise ValueError(f"{who}: grads of shape {tuple(grads.shape)} is empty; it needs at least one gradient "
                             "(row) of at least one weight (column)")
        if not grads.is_floating_point():
            raise ValueError(f"{who}: grads must be a real floating tensor, got dtype {grads.dtype}; convert it with "
                             ".to(torch.float32) or .to(torch.float64)")
        self.damp = _check_damp(damp, who)
        if blocks is not None:
            blocks = _check_count(blocks, "blocks", who, "it is the number of consecutive weights per block "
                                  "(None for one block of all d weights)")
        gram_dtype = _check_gram_dtype(gram_dtype, grads.dtype, who)
        _check_finite(grads, "grads", who)
        super().__init__((d, d), grads.dtype, grads.device, symmetric=True, positive_definite=True)
        self.num_grads = m
        self.block_size = d if blocks is None else min(blocks, d)
        self.gram_dtype = gram_dtype
        # groups of equally sized blocks: (first weight, W of shape (blocks, m, block size))
        B = self.block_size
        full = d // B
        self._groups: list[tuple[int, torch.Tensor]] = []
        grads = grads.detach()
        if full:
            view = grads[:, :full * B].reshape(m, full, B).transpose(0, 1)  # (full, m, B), no copy
            self._groups.append((0, self._precompute(view)))
        if full * B < d:
            self._groups.append((full * B, self._precompute(grads[None, :, full * B:])))

    def _precompute(self, G: torch.Tensor) -> torch.Tensor:
        """``W = L^{-1} G`` per block for ``G`` of shape ``(nb, m, B)``; batched over blocks, chunked over
        blocks and columns so that temporaries stay near :func:`_chunk_elements` elements."""
        nb, m, B = G.shape
        W = torch.empty((nb, m, B), dtype=self.dtype, device=self.device)
        budget = _chunk_elements(self.device)
        per_batch = max(1, min(nb, budget // (m * m)))
        for b0 in range(0, nb, per_batch):
            Gb = G[b0:b0 + per_batch]
            cols = max(1, min(B, budget // (Gb.shape[0] * m)))
            gram = torch.zeros((Gb.shape[0], m, m), dtype=self.gram_dtype, device=self.device)
            for c0 in range(0, B, cols):
                chunk = Gb[:, :, c0:c0 + cols].to(self.gram_dtype)
                gram.baddbmm_(chunk, chunk.mT)
            T = _inverse_factor(gram, m * self.damp).to(self.gram_dtype)
            for c0 in range(0, B, cols):
                W[b0:b0 + per_batch, :, c0:c0 + cols] = T @ Gb[:, :, c0:c0 + cols].to(self.gram_dtype)
        return W

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        """``F^{-1} x``.

        Args:
            x: ``(d,)`` or ``(d, k)``, the operator's dtype and device.

        Returns:
            Shaped like ``x``. Cost ``O(d m k)``.
        """
        x = _check_vector(self, x, "StaticMFAC.mv")
        X = x if x.ndim == 2 else x[:, None]
        k = X.shape[1]
        out = torch.empty_like(X)
        for start, W in self._groups:
            nb, _, B = W.shape
            xs = X[start:start + nb * B].reshape(nb, B, k)
            y = torch.sub(xs, W.mT @ (W @ xs)).mul_(1.0 / self.damp)
            out[start:start + nb * B] = y.reshape(nb * B, k)
        return out if x.ndim == 2 else out[:, 0]

    def diag(self) -> torch.Tensor:
        """The diagonal of ``F^{-1}``, shape ``(d,)``, in ``O(d m)``: ``(1 - sum_i W_ij^2) / damp``."""
        parts = [((1.0 - W.square().sum(1)) / self.damp).reshape(-1) for _, W in self._groups]
        return torch.cat(parts)

    def diagonal(self) -> torch.Tensor:
        """Same as :meth:`diag` (the :class:`~neuralnumerics.linalg.LinearOperator` name)."""
        return self.diag()

    def element(self, i: int, j: int) -> torch.Tensor:
        """The entry ``(F^{-1})_{ij}`` as a 0-dimensional tensor, in ``O(m)``.

        Raises:
            IndexError: ``i`` or ``j`` outside ``[0, d)``.
        """
        d = self.shape[0]
        loc = []
        for name, idx in (("i", i), ("j", j)):
            try:
                idx = operator.index(idx)
            except TypeError:
                raise IndexError(f"StaticMFAC.element: {name} must be an integer, got {type(idx).__name__}") from None
            if not 0 <= idx < d:
                raise IndexError(f"StaticMFAC.element: {name} = {idx} is outside [0, {d}) (the operator is {d} x {d})")
            loc.append(self._locate(idx))
        (gi, bi, ci), (gj, bj, cj) = loc
        if (gi, bi) != (gj, bj):  # different blocks of a block-diagonal Fisher
            return torch.zeros((), dtype=self.dtype, device=self.device)
        W = self._groups[gi][1][bi]
        value = -(W[:, ci] @ W[:, cj])
        if ci == cj:
            value = value + 1.0
        return value / self.damp

    def _locate(self, idx: int) -> tuple[int, int, int]:
        """(group, block within the group, column within the block) of weight ``idx``."""
        for g, (start, W) in enumerate(self._groups):
            nb, _, B = W.shape
            if idx < start + nb * B:
                block, col = divmod(idx - start, B)
                return g, block, col
        raise AssertionError("unreachable: idx was checked against d")  # pragma: no cover

    def to_dense(self) -> torch.Tensor:
        """``F^{-1}``, shape ``(d, d)``, assembled block by block in ``O(d B m)`` (``B`` the block size)."""
        d = self.shape[0]
        out = torch.zeros((d, d), dtype=self.dtype, device=self.device)
        for start, W in self._groups:
            nb, _, B = W.shape
            eye = torch.eye(B, dtype=self.dtype, device=self.device)
            for b in range(nb):
                s = start + b * B
                out[s:s + B, s:s + B] = (eye - W[b].mT @ W[b]) / self.damp
        return out


# -- sliding window --------------------------------------------------------------------------------------------

class SlidingMFAC(LinearOperator):
    """The inverse damped empirical Fisher of a sliding window of the last ``m`` gradients.

    ``F = damp I + (1/n) sum_i g_i g_i^T`` over the ``n = min(updates, m)`` gradients held: a partly
    filled window is the Fisher of what it holds (the reference implementation instead divides by ``m``,
    as if the empty slots held zero gradients), and an empty window is ``F = damp I``. The operator is
    ``F^{-1}`` (symmetric positive definite, tagged so) for the window as it is when :meth:`mv` is
    called: it changes with every :meth:`update`.

    The window is a ring buffer of gradients (``(m, d)``, ``dtype``) with their Gram matrix ``G G^T``
    (``(m, m)``, float64, entries accumulated in ``gram_dtype``) and the inverse of the small matrix
    ``S = n damp I + G G^T`` (float64). :meth:`update` computes the new gradient's Gram row, ``O(d m)``,
    and, once the window is full, updates ``S^{-1}`` for the replaced row and column by the Woodbury
    identity (a rank-2 change), ``O(m^2)``; ``S^{-1}`` is rebuilt from a Cholesky factorisation,
    ``O(m^3)``, while the window fills (``n`` and the shift ``n damp`` change with every gradient) and
    after every ``m`` replacements, so that rounding does not accumulate. Every solve with ``S`` takes one
    step of iterative refinement against ``S`` itself (``O(m^2)``), which removes what error the updated
    inverse has gathered. A product then costs ``O(d m + m^2)``. Any ``m`` works, on any device, in plain
    PyTorch.

    Args:
        dim: ``d``, the length of a gradient.
        m: the window size (the most gradients held).
        damp: the dampening ``lambda > 0`` (absolute, in the units of ``g g^T``).
        dtype, device: of the gradients and of the vectors the operator acts on (default: torch's default
            dtype, CPU).
        gram_dtype: dtype in which Gram entries ``g_i . g_j`` are accumulated: float64 (the default) or None
            for ``dtype``. With float32 gradients, float32 entries make an update 2-4x cheaper on the CPU (the
            ``O(d m)`` Gram row dominates) and, with small ``damp`` and strongly correlated gradients,
            :meth:`mv` up to 70x less accurate (relative error 5.6e-4 against 8.0e-6 in
            ``docs/benchmarks/mfac.md``); :meth:`update_mv` loses less. The :class:`~neuralnumerics.curvature.MFAC` optimiser, which only calls
            :meth:`update_mv`, defaults to None.

    Attributes:
        m, damp, gram_dtype: as given.
        size, num_updates, grads: the gradients held, the gradients added, the window ``(size, d)``.

    Raises:
        ValueError: ``dim < 1``, ``m < 1``, ``damp <= 0``, a dtype that is not real floating.

    Complexity:
        memory ``O(d m + m^2)``; :meth:`update` ``O(d m + m^2)`` once the window is full (``O(d m + m^3)``
        while it fills and once every ``m`` updates); :meth:`mv` ``O(d m k + m^2 k)`` for ``k`` vectors;
        :meth:`update_mv` as :meth:`update` plus ``O(d m)``.

    References:
        Frantar, Kurtic, Alistarh. "M-FAC: Efficient Matrix-Free Approximations of Second-Order
        Information", NeurIPS 2021 (the dynamic algorithm).
    """

    def __init__(self, dim: int, m: int, damp: float = 1e-5, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None,
                 gram_dtype: torch.dtype | None = torch.float64) -> None:
        who = "SlidingMFAC"
        dim = _check_count(dim, "dim", who, "it is the number of weights, the length of one gradient")
        m = _check_count(m, "m", who, "it is the number of gradients the window holds (the paper uses up to 1024)")
        self.damp = _check_damp(damp, who)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"{who}: dtype must be a real floating torch.dtype, got {dtype!r}")
        super().__init__((dim, dim), dtype, "cpu" if device is None else device, symmetric=True,
                         positive_definite=True)
        self.m = m
        self.gram_dtype = _check_gram_dtype(gram_dtype, dtype, who)
        self._grads = torch.zeros((m, dim), dtype=dtype, device=self.device)
        self._gram = torch.zeros((m, m), dtype=torch.float64, device=self.device)
        self._updates = 0
        self._drop_inverse()

    # -- the window ----------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """``n``, the number of gradients held (``min(updates, m)``)."""
        return min(self._updates, self.m)

    @property
    def num_updates(self) -> int:
        """Gradients added since construction (or the last :meth:`reset`)."""
        return self._updates

    @property
    def grads(self) -> torch.Tensor:
        """The gradients held, ``(n, d)`` (a view in ring-buffer order, not oldest first; do not modify)."""
        return self._grads[:self.size]

    def reset(self) -> None:
        """Empty the window (``F = damp I``)."""
        self._grads.zero_()
        self._gram.zero_()
        self._updates = 0
        self._drop_inverse()

    def update(self, g: torch.Tensor) -> None:
        """Add gradient ``g``, replacing the oldest one once ``m`` are held. ``O(d m + m^2)``.

        Args:
            g: ``(d,)``, the window's dtype and device.

        Raises:
            ValueError: wrong shape, dtype or device, or non-finite entries (the window is then unchanged).
        """
        self._insert(g, "SlidingMFAC.update")

    def update_mv(self, g: torch.Tensor) -> torch.Tensor:
        """Add gradient ``g`` (as :meth:`update`) and return ``F^{-1} g`` for the new window.

        ``g`` is then a row of ``G``, so ``F^{-1} g = n G^T S^{-1} e_g``: one ``O(m^2)`` solve and one
        ``O(d m)`` product, free of the cancellation of the general formula (see the module docstring),
        so accurate in float32 even with small ``damp``. This is the M-FAC optimiser's step direction.

        Args:
            g: ``(d,)``, the window's dtype and device.

        Returns:
            ``(d,)``. Cost ``O(d m + m^2)`` (``O(d m + m^3)`` while the window fills).
        """
        return self._update_mv(g, "SlidingMFAC.update_mv")

    def _update_mv(self, g: torch.Tensor, who: str, on_nonfinite=None) -> torch.Tensor:
        # update_mv; the optimiser passes on_nonfinite to name the parameter with the bad entries
        slot = self._insert(g, who, on_nonfinite)
        n = self.size
        e = torch.zeros(n, dtype=torch.float64, device=self.device)
        e[slot] = 1.0
        coef = (n * self._solve(e)).to(self.dtype)
        return self._grads[:n].mT @ coef

    def _insert(self, g, who: str, on_nonfinite=None) -> int:
        d = self.shape[0]
        if not isinstance(g, torch.Tensor) or g.shape != (d,):
            hint = " (flatten it with g.reshape(-1))" if isinstance(g, torch.Tensor) and g.numel() == d else ""
            raise ValueError(f"{who}: g must be a gradient of shape ({d},), got {_describe(g)}{hint}")
        if g.dtype != self.dtype or g.device != self.device:
            raise ValueError(f"{who}: g is {g.dtype} on {g.device} but the window holds {self.dtype} on "
                             f"{self.device}; pass g.to(dtype={self.dtype}, device='{self.device}')")
        g = g.detach()
        slot = self._updates % self.m
        n = min(self._updates + 1, self.m)
        # the new Gram row, before anything changes (row `slot` still holds the outgoing gradient or zeros);
        # g . g is finite exactly when g is (short of overflow), so it doubles as the check for NaN and inf
        row = _gram_rows(self._grads[:n], g, self.gram_dtype)
        row[slot] = _gram_rows(g[None], g, self.gram_dtype)[0]
        if not bool(torch.isfinite(row).all()):
            if on_nonfinite is not None:
                on_nonfinite(g)
            _check_finite(g, "the gradient", who)
            raise ValueError(f"{who}: the gradient is finite but its inner products overflow {self.gram_dtype} "
                             f"(|g|^2 = {float(row[slot]):g}); the window is unchanged. Scale the loss down or "
                             "use gram_dtype=torch.float64")
        outgoing = self._gram[:n, slot].clone() if self._updates >= self.m else None
        self._grads[slot] = g
        self._gram[slot, :n] = row
        self._gram[:n, slot] = row
        self._updates += 1
        if outgoing is not None and self._inv is not None and self._replacements < self.m:
            self._replace_in_inverse(slot, row - outgoing)
        else:
            self._drop_inverse()
        return slot

    # -- the small (n x n) system S z = b ------------------------------------------------------------------------
    def _drop_inverse(self) -> None:
        self._inv: torch.Tensor | None = None  # S^{-1} (n x n, float64), or None: rebuilt at the next solve
        self._exact = True  # _inv inverts S itself (False: S had clipped eigenvalues, see _inverse)
        self._replacements = 0  # Woodbury updates of _inv since it was rebuilt

    def _rebuild_inverse(self) -> None:
        n = self.size
        self._inv, self._exact = _inverse(self._gram[:n, :n], n * self.damp)
        self._replacements = 0

    def _replace_in_inverse(self, s: int, change: torch.Tensor) -> None:
        """``S^{-1}`` after row and column ``s`` of ``S`` changed by ``change`` (``(n,)``), ``O(n^2)``.

        The change is ``e_s a^T + a e_s^T`` with ``a = change`` but ``a_s = change_s / 2``, i.e. ``U C U^T``
        with ``U = [e_s, a]`` and ``C = [[0, 1], [1, 0]] = C^{-1}``; Woodbury:
        ``S'^{-1} = S^{-1} - X K^{-1} X^T`` with ``X = S^{-1} U`` and ``K = C + U^T S^{-1} U`` (2 x 2).
        """
        A = self._inv
        a = change.clone()
        a[s] *= 0.5
        X = torch.stack([A[:, s], A @ a], dim=1)  # (n, 2)
        k11, k12, k22 = X[s, 0], 1.0 + X[s, 1], a @ X[:, 1]
        det = k11 * k22 - k12 * k12
        scale = k11.abs() * k22.abs() + k12 * k12
        if not bool(torch.isfinite(det)) or not bool(det.abs() > 1e-12 * scale):
            self._drop_inverse()  # the 2 x 2 system is too ill-conditioned to trust: rebuild at the next solve
            return
        Kinv = torch.stack([torch.stack([k22, -k12]), torch.stack([-k12, k11])]) / det
        A.addmm_(X @ Kinv, X.mT, alpha=-1.0)
        self._replacements += 1

    def _solve(self, b: torch.Tensor) -> torch.Tensor:
        """``S^{-1} b`` (float64, ``b`` ``(n,)`` or ``(n, k)``): the stored inverse and one refinement step."""
        n = self.size
        if self._inv is None:
            self._rebuild_inverse()
        z = self._inv @ b
        if not self._exact:
            return z
        shift = n * self.damp
        residual = b - (self._gram[:n, :n] @ z + shift * z)
        if self._replacements and bool(residual.norm() > 1e-6 * b.norm()):
            self._rebuild_inverse()  # the updated inverse drifted (or broke down): start afresh
            return self._solve(b)
        return z + self._inv @ residual

    # -- the operator ----------------------------------------------------------------------------------------
    def mv(self, x: torch.Tensor) -> torch.Tensor:
        """``F^{-1} x`` for the current window.

        Args:
            x: ``(d,)`` or ``(d, k)``, the window's dtype and device.

        Returns:
            Shaped like ``x``. Cost ``O(d m k + m^2 k)`` (plus ``O(m^3)`` once after an update that rebuilt
            ``S^{-1}``).
        """
        x = _check_vector(self, x, "SlidingMFAC.mv")
        n = self.size
        if n == 0:
            return x / self.damp
        G = self._grads[:n]
        z = self._solve((G @ x).to(torch.float64))
        return torch.sub(x, G.mT @ z.to(self.dtype)).mul_(1.0 / self.damp)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The window: ``{"grads": (m, d), "gram": (m, m) float64, "num_updates": int, "inverse": ...}``.

        ``"inverse"`` is the maintained ``S^{-1}`` (``{"matrix", "exact", "replacements"}``, or None when it
        is due to be rebuilt). As with torch's ``state_dict``, the tensors are the live buffers: save it
        (``torch.save``) or ``copy.deepcopy`` it before further updates. ``damp`` is not part of it (the
        window does not depend on it).
        """
        inverse = None if self._inv is None else {"matrix": self._inv, "exact": self._exact,
                                                  "replacements": self._replacements}
        return {"grads": self._grads, "gram": self._gram, "num_updates": self._updates, "inverse": inverse}

    def load_state_dict(self, state: dict) -> None:
        """Restore a window saved by :meth:`state_dict` (copied: the argument is not aliased).

        Products after loading are bit-for-bit those the saved window would have given (a state without
        ``"inverse"`` rebuilds ``S^{-1}`` at the first product, equal to rounding).

        Raises:
            ValueError: missing entries, or a window of another ``m`` or ``dim``.
        """
        who = "SlidingMFAC.load_state_dict"
        if not isinstance(state, dict) or not {"grads", "gram", "num_updates"} <= state.keys():
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{who}: expected a dict with 'grads', 'gram' and 'num_updates' (from "
                             f"SlidingMFAC.state_dict()), got {keys}")
        grads, gram, updates = state["grads"], state["gram"], state["num_updates"]
        if not isinstance(grads, torch.Tensor) or not isinstance(gram, torch.Tensor) or grads.ndim != 2:
            raise ValueError(f"{who}: 'grads' and 'gram' must be tensors, got {_describe(grads)} and {_describe(gram)}")
        m, d = grads.shape
        if (m, d) != (self.m, self.shape[0]) or tuple(gram.shape) != (m, m):
            raise ValueError(f"{who}: the saved window holds m={m} gradients of dimension {d}; this window has "
                             f"m={self.m}, dim={self.shape[0]}. Construct SlidingMFAC with the same dim and m")
        if isinstance(updates, bool) or not isinstance(updates, numbers.Integral) or updates < 0:
            raise ValueError(f"{who}: 'num_updates' must be a non-negative integer, got {updates!r}")
        inverse = state.get("inverse")
        n = min(int(updates), m)
        if inverse is not None:
            mat = inverse.get("matrix") if isinstance(inverse, dict) else None
            if not isinstance(mat, torch.Tensor) or tuple(mat.shape) != (n, n):
                raise ValueError(f"{who}: 'inverse' must be None or a dict whose 'matrix' is a ({n}, {n}) tensor for a "
                                 f"window of {n} gradients, got {_describe(mat)}")
        self._grads.copy_(grads)
        self._gram.copy_(gram)
        self._updates = int(updates)
        self._drop_inverse()
        if inverse is not None:
            self._inv = inverse["matrix"].to(dtype=torch.float64, device=self.device, copy=True)
            self._exact = bool(inverse.get("exact", True))
            self._replacements = int(inverse.get("replacements", 0))

"""The p-Wasserstein distance between 1D measures, batched over leading dimensions, differentiable."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["wasserstein_1d"]


def _sort_last(t: torch.Tensor, need_indices: bool = False):
    """Sorted values along the last dimension (differentiable), and the sorting indices when asked.

    On the CPU the sort is NumPy's (vectorised sorts on x86 and ARM), 4-20x faster than ``torch.sort``
    for the many short rows of projected clouds; the values are gathered with the indices so that gradients
    flow as through ``torch.sort``. Elsewhere (accelerators, other dtypes, tensors that are not plain CPU
    tensors, e.g. under ``torch.func`` transforms) it is ``torch.sort``.
    """
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        try:
            a = t.detach().numpy()
        except (RuntimeError, TypeError):  # a functorch/compile wrapper: no NumPy view
            a = None
        if a is not None:
            if not (need_indices or t.requires_grad):
                return torch.from_numpy(np.sort(a, axis=-1)), None
            idx = torch.from_numpy(np.argsort(a, axis=-1))
            return torch.gather(t, -1, idx), idx
    values, idx = torch.sort(t, dim=-1)
    return values, idx


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, *, p: float = 2.0, u_weights: torch.Tensor | None = None,
                   v_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``W_p^p`` between the 1D measures with atoms ``u`` and ``v`` (the last dimension), batched.

    ``W_p^p(mu, nu) = int_0^1 |F_mu^{-1}(t) - F_nu^{-1}(t)|^p dt`` with the quantile functions ``F^{-1}``.
    With equal numbers of atoms and uniform weights this is the mean of ``|sort(u) - sort(v)|^p``;
    otherwise the integral is summed exactly over the merged breakpoints of the two cumulative weight
    sequences. Differentiable in the atoms (through the sort) and in the weights.

    Args:
        u: ``(..., n)`` atoms of the first measure.
        v: ``(..., m)`` atoms of the second; leading dimensions broadcast with ``u``'s.
        p: the order, ``>= 1``.
        u_weights, v_weights: ``(..., n)`` and ``(..., m)`` non-negative weights summing to 1 along the last
            dimension, or None for uniform weights. Not checked here (see
            :func:`~neuralnumerics.ot.sliced_wasserstein`, which validates and normalises them).

    Returns:
        ``(...)``: ``W_p^p`` (not its ``p``-th root).

    Equivalent to ``ot.lp.wasserstein_1d(u, v, u_weights, v_weights, p)`` of POT, batched over leading
    dimensions instead of over a trailing one.
    """
    if u_weights is None and v_weights is None and u.shape[-1] == v.shape[-1]:
        us, _ = _sort_last(u)
        vs, _ = _sort_last(v)
        diff = us - vs
        return (diff.square() if p == 2 else diff.abs().pow(p)).mean(-1)
    us, ui = _sort_last(u, need_indices=True)
    vs, vi = _sort_last(v, need_indices=True)
    n, m = u.shape[-1], v.shape[-1]
    a = u.new_full(u.shape, 1.0 / n) if u_weights is None else torch.gather(u_weights.expand_as(u), -1, ui)
    b = v.new_full(v.shape, 1.0 / m) if v_weights is None else torch.gather(v_weights.expand_as(v), -1, vi)
    ca, cb = torch.cumsum(a, -1), torch.cumsum(b, -1)
    batch = torch.broadcast_shapes(ca.shape[:-1], cb.shape[:-1])
    ca, cb = ca.expand(*batch, n), cb.expand(*batch, m)
    us, vs = us.expand(*batch, n), vs.expand(*batch, m)
    # breakpoints of both quantile functions; on (t_{k-1}, t_k] each is constant
    t, _ = torch.sort(torch.cat([ca, cb], -1), dim=-1)
    t = t.clamp(0, 1)
    left = torch.cat([torch.zeros_like(t[..., :1]), t[..., :-1]], -1)
    dt = t - left
    # the atom whose cumulative weight first exceeds the left end of each interval
    i = torch.searchsorted(ca.detach().contiguous(), left.detach().contiguous(), right=True).clamp_max(n - 1)
    j = torch.searchsorted(cb.detach().contiguous(), left.detach().contiguous(), right=True).clamp_max(m - 1)
    diff = (torch.gather(us, -1, i) - torch.gather(vs, -1, j)).abs()
    return ((diff.square() if p == 2 else diff.pow(p)) * dt).sum(-1)

"""Second-order pruning with M-FAC: the Optimal Brain Surgeon with the inverse empirical Fisher.

For weights ``w`` at a minimum of the loss with curvature ``F``, removing weight ``q`` (setting it to zero)
and moving the others to compensate in the best way raises the quadratic model of the loss by the
saliency

    ``rho_q = w_q^2 / (2 [F^{-1}]_qq)``,

and the best compensating move is ``delta w = -(w_q / [F^{-1}]_qq) F^{-1} e_q`` (Optimal Brain Surgeon,
Hassibi and Stork, NIPS 1992). M-FAC takes ``F = damp I + G^T G / m``, the damped empirical Fisher of ``m``
gradients, whose inverse it applies and whose diagonal it returns in ``O(d m)``
(:class:`~neuralnumerics.curvature.StaticMFAC`).

Pruning ``k`` weights at once, :func:`obs_prune` removes the ``k`` of lowest saliency and adds their
single-weight corrections, ``delta w = F^{-1} c`` with ``c_q = -w_q / [F^{-1}]_qq`` on the removed
weights (the paper's pruner: it ignores how the removed weights interact, exact for ``k = 1``, less so
the more weights go at once). :func:`mfac_prune` therefore reaches a high sparsity in
``steps`` smaller steps, re-estimating the Fisher from fresh gradients at the updated weights before each
(the paper's "recomputation"); each step's Fisher is over the weights still present only, so the pruned
ones stay at zero. :func:`magnitude_prune` is the usual baseline with the same interface.

Which weights: by default every parameter with at least two dimensions (the weights of linear,
convolutional and embedding layers; the paper's code prunes the convolution and fully connected weights);
biases and normalisation scales (one dimension) are left alone. ``params=`` names others. Sparsity is
global: a fraction of all the selected weights together, distributed among the tensors by the saliencies.

References:
    Frantar, Kurtic, Alistarh. "M-FAC: Efficient Matrix-Free Approximations of Second-Order
    Information", NeurIPS 2021 (the pruning experiments).
    Hassibi, Stork. "Second order derivatives for network pruning: Optimal Brain Surgeon", NIPS 1992.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from ..linalg.operators import LinearOperator
from .mfac import StaticMFAC, _check_count, _check_damp, _describe

__all__ = ["OBSResult", "obs_prune", "mfac_prune", "magnitude_prune", "apply_masks"]


# -- one OBS step on a flat weight vector ----------------------------------------------------------------------

@dataclass(frozen=True)
class OBSResult:
    """One Optimal Brain Surgeon step on a flat weight vector.

    Attributes:
        weights: ``(d,)``, the weights after the step: the pruned ones exactly zero, the others corrected.
        pruned: ``(d,)`` bool, the weights this step set to zero.
        saliency: ``(d,)``, ``w_q^2 / (2 [F^{-1}]_qq)`` of every weight before the step.
    """

    weights: torch.Tensor
    pruned: torch.Tensor
    saliency: torch.Tensor


def obs_prune(weights: torch.Tensor, inverse_fisher: LinearOperator, count: int) -> OBSResult:
    """Remove the ``count`` weights of lowest OBS saliency and correct the others.

    Saliency ``rho_q = w_q^2 / (2 [F^{-1}]_qq)``; with ``Q`` the ``count`` weights of lowest saliency, the
    new weights are ``w + F^{-1} c`` with ``c_q = -w_q / [F^{-1}]_qq`` for ``q`` in ``Q`` (0 elsewhere),
    then exactly 0 on ``Q``. For ``count = 1`` this is the exact minimiser of the quadratic model
    ``(w' - w)^T F (w' - w) / 2`` subject to ``w'_q = 0``, and the model rises by ``rho_q``; for larger
    ``count`` it sums the single-weight corrections (the paper's pruner).

    Diagonal entries of ``F^{-1}`` below ``eps * max(diag)`` (``eps`` of the operator's dtype) are below
    the rounding level of the M-FAC diagonal (``(1 - sum_i W_iq^2) / damp``) and are raised to it.

    Args:
        weights: ``(d,)``, a real floating tensor with the operator's dtype and device.
        inverse_fisher: ``F^{-1}`` as a ``d x d`` operator with ``mv`` and ``diagonal`` (e.g.
            :class:`~neuralnumerics.curvature.StaticMFAC`, or a
            :class:`~neuralnumerics.linalg.DenseOperator`).
        count: how many weights to remove, ``0 <= count <= d``.

    Returns:
        :class:`OBSResult`. Cost: one diagonal and one product with ``F^{-1}`` (``O(d m)`` for M-FAC) and a
        ``d``-element selection.

    Raises:
        ValueError: a weight vector of the wrong shape, dtype or device, an operator of the wrong size, a
            count outside ``[0, d]``, or a diagonal with no positive entry.
    """
    who = "obs_prune"
    if not isinstance(inverse_fisher, LinearOperator) or not inverse_fisher.is_square:
        raise ValueError(f"{who}: inverse_fisher must be a square LinearOperator for F^{{-1}} (e.g. StaticMFAC(grads, "
                         f"damp)), got {inverse_fisher!r}")
    d = inverse_fisher.shape[0]
    if not isinstance(weights, torch.Tensor) or weights.shape != (d,) or not weights.is_floating_point():
        raise ValueError(f"{who}: weights must be a real floating tensor of shape ({d},) (the operator is {d} x {d}), "
                         f"got {_describe(weights)}")
    if weights.dtype != inverse_fisher.dtype or weights.device != inverse_fisher.device:
        raise ValueError(f"{who}: weights are {weights.dtype} on {weights.device} but the operator works in "
                         f"{inverse_fisher.dtype} on {inverse_fisher.device}; convert one to the other")
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 0 <= count <= d:
        raise ValueError(f"{who}: count must be an integer in [0, {d}], the number of weights to remove, got {count!r}")
    w = weights.detach()
    diag = inverse_fisher.diagonal()
    top = diag.max()
    if not bool(torch.isfinite(diag).all()) or not bool(top > 0):
        raise ValueError(f"{who}: the diagonal of inverse_fisher has no positive entry or non-finite ones (max "
                         f"{float(top):.3g}); F^{{-1}} must be symmetric positive definite. Build it from float64 "
                         "gradients or with a larger damp")
    diag = diag.clamp_min(torch.finfo(diag.dtype).eps * top)
    saliency = w.square() / (2 * diag)
    drop = torch.topk(saliency, int(count), largest=False).indices
    pruned = torch.zeros(d, dtype=torch.bool, device=w.device)
    pruned[drop] = True
    if count == 0:
        return OBSResult(w.clone(), pruned, saliency)
    c = torch.zeros_like(w)
    c[drop] = -w[drop] / diag[drop]
    new = w + inverse_fisher.mv(c)
    new[drop] = 0
    return OBSResult(new, pruned, saliency)


# -- selecting the weights of a model -------------------------------------------------------------------------

def _select(model, params, masks, who: str, need_grad: bool) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs to prune: ``params`` if given, else the keys of ``masks`` if given, else
    every parameter with at least two dimensions."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    if params is None and masks is not None:
        if not isinstance(masks, Mapping):
            raise ValueError(f"{who}: masks must be a dict {{parameter name: bool tensor}} (as returned by mfac_prune "
                             f"or magnitude_prune), got {type(masks).__name__}")
        names = list(masks)
    elif params is None:
        names = [n for n, p in named.items() if p.ndim >= 2]
        if not names:
            raise ValueError(f"{who}: the model has no parameter with two or more dimensions to prune (the default "
                             "selection); name the parameters with params=[...] (see model.named_parameters())")
    else:
        if isinstance(params, str) or not isinstance(params, Iterable):
            raise ValueError(f"{who}: params must be a list of parameter names (from model.named_parameters()), got "
                             f"{params!r}; for one parameter pass [{params!r}]")
        names = list(params)
        if not names:
            raise ValueError(f"{who}: params is empty; name at least one parameter, or pass None for every weight "
                             "with two or more dimensions")
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"{who}: no parameter named {unknown[0]!r} in the model; its parameters are "
                         f"{list(named)[:8]}{' ...' if len(named) > 8 else ''}")
    if len(set(names)) != len(names):
        raise ValueError(f"{who}: params names a parameter twice: {names}")
    chosen = [(n, named[n]) for n in names]
    first = chosen[0][1]
    for n, p in chosen:
        if not p.is_floating_point() or p.is_complex() or p.layout != torch.strided:
            raise ValueError(f"{who}: parameter {n!r} is {p.dtype} with layout {p.layout}; only dense real floating "
                             "parameters can be pruned")
        if p.dtype != first.dtype or p.device != first.device:
            raise ValueError(f"{who}: the pruned parameters are treated as one vector, so they must share a dtype and "
                             f"device; {chosen[0][0]!r} is {first.dtype} on {first.device}, {n!r} is {p.dtype} on "
                             f"{p.device}. Convert the model with .to(dtype, device) first")
        if need_grad and not p.requires_grad:
            raise ValueError(f"{who}: parameter {n!r} does not require gradients, so it has no Fisher; call "
                             f"{n}.requires_grad_() or leave it out of params")
    return chosen


def _initial_keep(chosen, masks, who: str) -> torch.Tensor:
    """The flat bool vector of weights still present (True) from ``masks`` (all True without)."""
    d = sum(p.numel() for _, p in chosen)
    device = chosen[0][1].device
    if masks is None:
        return torch.ones(d, dtype=torch.bool, device=device)
    if not isinstance(masks, Mapping):
        raise ValueError(f"{who}: masks must be a dict {{parameter name: bool tensor}} (as returned by mfac_prune or "
                         f"magnitude_prune), got {type(masks).__name__}")
    names = [n for n, _ in chosen]
    if set(masks) != set(names):
        raise ValueError(f"{who}: masks has entries for {sorted(masks)} but the pruned parameters are {names}; pass "
                         "the masks of the same parameters (or params=None to use the masks' names)")
    pieces = []
    for n, p in chosen:
        mask = masks[n]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != p.shape:
            raise ValueError(f"{who}: masks[{n!r}] must be a bool tensor of shape {tuple(p.shape)} (True: kept), got "
                             f"{_describe(mask)}")
        pieces.append(mask.to(device).reshape(-1))
    return torch.cat(pieces)


def _check_sparsity(sparsity, who: str) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        hint = ""
        if isinstance(sparsity, numbers.Real) and 1 < sparsity <= 100:
            hint = f" (a percentage? {sparsity}% is sparsity={sparsity / 100:g})"
        elif isinstance(sparsity, numbers.Real) and sparsity == 1:
            hint = " (1 would remove every weight)"
        raise ValueError(f"{who}: sparsity must be a fraction in [0, 1), the share of the selected weights set to "
                         f"zero, got {sparsity!r}{hint}")
    return float(sparsity)


def _target(keep: torch.Tensor, sparsity: float, who: str) -> int:
    """The number of weights to keep; refuses targets below what ``masks`` already pruned."""
    d = keep.numel()
    pruned_now = d - int(keep.sum())
    n_prune = round(sparsity * d)
    if pruned_now > n_prune:
        raise ValueError(f"{who}: masks already prune {pruned_now} of {d} weights (sparsity {pruned_now / d:.4g}), "
                         f"more than sparsity={sparsity:g} asks ({n_prune}); pass a sparsity of at least "
                         f"{pruned_now / d:.4g}, or no masks to start from the dense model")
    return d - n_prune


def _flat(chosen) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for _, p in chosen])


@torch.no_grad()
def _write(chosen, flat: torch.Tensor) -> None:
    offset = 0
    for _, p in chosen:
        p.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def _masks(chosen, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for n, p in chosen:
        out[n] = keep[offset:offset + p.numel()].reshape(p.shape).clone()
        offset += p.numel()
    return out


# -- public entry points --------------------------------------------------------------------------------------

def apply_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set the pruned weights of ``model`` to zero, in place (``False`` entries of each mask).

    Call it after every optimiser step while fine-tuning a pruned model: gradients, momentum and weight
    decay would otherwise move the pruned weights away from zero.

    Args:
        model: the module whose parameters the masks name.
        masks: ``{parameter name: bool tensor of the parameter's shape}``, ``True`` for kept weights (as
            returned by :func:`mfac_prune` and :func:`magnitude_prune`).

    Raises:
        ValueError: a name the model does not have, or a mask of the wrong shape or dtype.
    """
    chosen = _select(model, None, masks, "apply_masks", need_grad=False)
    keep = _initial_keep(chosen, masks, "apply_masks")
    _write(chosen, _flat(chosen).masked_fill(~keep, 0))


def magnitude_prune(model: torch.nn.Module, sparsity: float, *, params: Iterable[str] | None = None,
                    masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: zero the ``round(sparsity * d)`` selected weights of smallest ``|w|``.

    The baseline for :func:`mfac_prune`, with the same selection, masks and result. The weights of
    ``model`` are changed in place.

    Args:
        model: the module to prune.
        sparsity: the fraction of the ``d`` selected weights to set to zero, in ``[0, 1)``.
        params: names (from ``model.named_parameters()``) of the parameters to prune; default: those of
            ``masks`` if given, else every parameter with two or more dimensions (no biases or norms).
        masks: bool masks from an earlier pruning (``True``: kept) to continue from; the weights they
            prune stay pruned and count towards ``sparsity``.

    Returns:
        ``{name: bool tensor of the parameter's shape}``, ``True`` for the weights kept; the others are 0.

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)`` or below what ``masks`` already prune, unknown or
            mixed-dtype parameters, malformed masks.
    """
    who = "magnitude_prune"
    sparsity = _check_sparsity(sparsity, who)
    chosen = _select(model, params, masks, who, need_grad=False)
    keep = _initial_keep(chosen, masks, who)
    n_keep = _target(keep, sparsity, who)
    w = _flat(chosen).masked_fill(~keep, 0)
    idx = keep.nonzero().squeeze(1)
    drop = torch.topk(w[idx].abs(), idx.numel() - n_keep, largest=False).indices
    keep[idx[drop]] = False
    _write(chosen, w.masked_fill(~keep, 0))
    return _masks(chosen, keep)


def mfac_prune(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, object], torch.Tensor],
               batches: Iterable, sparsity: float, *, m: int | None = None, damp: float = 1e-5,
               blocks: int | None = None, steps: int = 16, params: Iterable[str] | None = None,
               masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Prune ``model`` to ``sparsity`` with the Optimal Brain Surgeon and the M-FAC inverse Fisher.

    In each of ``steps`` steps: iterate over ``batches`` afresh (``iter(batches)``) and take the gradient of
    ``loss_fn(model, batch)`` for each of its first ``m`` batches, restricted to the weights still present
    (``G``, ``(m, d_left)``); build ``F^{-1}`` for ``F = damp I + G^T G / m``
    (:class:`~neuralnumerics.curvature.StaticMFAC`, block diagonal with ``blocks``); remove the weights of
    lowest saliency and correct the rest (:func:`obs_prune`). The number of weights kept shrinks
    geometrically, from ``d_0`` (the weights present at the start) to ``d_T = d - round(sparsity * d)``:
    after step ``j`` ``round(d_0 (d_T / d_0)^(j / steps))`` are left. The weights of ``model`` are changed in
    place; the pruned ones are exactly zero.

    Gradients are taken with :func:`torch.autograd.grad` (the ``.grad`` fields are not touched) in the
    model's current mode: call ``model.eval()`` first to switch off dropout and batch-norm updates, as
    the paper's code does. With a list of batches every step reuses the same data at the new weights; a
    shuffling ``DataLoader`` gives new batches each step; a generator is used up as it goes, so it must
    yield ``steps * m`` batches.

    Args:
        model: the module to prune; the pruned parameters must share a dtype and device.
        loss_fn: ``loss_fn(model, batch)`` returns the scalar loss of one batch, e.g.
            ``lambda net, b: F.cross_entropy(net(b[0]), b[1])``. One batch gives one gradient (a row of
            ``G``; the paper's code uses batches of 32 samples).
        batches: an iterable of batches, re-iterated at each step.
        sparsity: the fraction of the ``d`` selected weights to set to zero, in ``[0, 1)``.
        m: gradients per step (the paper's code defaults to 64); None takes every batch of ``batches``.
        damp: the dampening ``lambda > 0`` of ``F``; absolute, in the units of squared gradient entries
            (the paper's code: 1e-5).
        blocks: ``B`` for a block-diagonal Fisher of consecutive blocks of ``B`` weights (of the weights
            still present, in parameter order), each with the Fisher of its slice of the gradients, of rank
            up to ``min(m, B)`` where the full Fisher has rank ``m`` for all ``d`` weights; the paper's
            code uses ``B = 128`` by default. None for the full Fisher. Memory is ``O(d m)`` either way
            (see :class:`~neuralnumerics.curvature.StaticMFAC` for the costs).
        steps: the number of pruning steps, each with fresh gradients (16, the paper's code's default
            number of recomputations; 1 prunes everything at once: cheaper, and much worse at high
            sparsity).
        params: names of the parameters to prune; default: those of ``masks`` if given, else every
            parameter with two or more dimensions (no biases or norms).
        masks: bool masks from an earlier pruning (``True``: kept) to continue from, e.g. after
            fine-tuning; the weights they prune stay zero and count towards ``sparsity``.

    Returns:
        ``{name: bool tensor of the parameter's shape}``, ``True`` for the weights kept.

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)`` or below what ``masks`` already prune; ``m``, ``steps``
            or ``blocks`` not a positive integer; ``damp <= 0``; no batch, or fewer than ``m``, in a step;
            a loss that is not a scalar depending on the weights; non-finite gradients. Arguments are
            checked before the model is touched; a failure at a later step leaves the earlier steps'
            pruning in place.

    Complexity:
        per step: ``m`` forward and backward passes, ``O(d m^2)`` for the M-FAC precomputation (plus
        ``O(m^3)`` per block), ``O(d m)`` for the saliencies and the correction; memory ``O(d m)``.

    References:
        Frantar, Kurtic, Alistarh. "M-FAC: Efficient Matrix-Free Approximations of Second-Order
        Information", NeurIPS 2021 (the pruning experiments).
    """
    who = "mfac_prune"
    sparsity = _check_sparsity(sparsity, who)
    if m is not None:
        m = _check_count(m, "m", who, "it is the number of gradients (batches) per Fisher estimate, or None for "
                         "every batch")
    damp = _check_damp(damp, who)
    if blocks is not None:
        blocks = _check_count(blocks, "blocks", who, "it is the number of consecutive weights per diagonal block of "
                              "the Fisher (None for the full Fisher)")
    steps = _check_count(steps, "steps", who, "it is the number of pruning steps with fresh gradients (1 prunes "
                         "everything at once)")
    if not callable(loss_fn):
        raise ValueError(f"{who}: loss_fn must be callable as loss_fn(model, batch) -> scalar loss, got "
                         f"{type(loss_fn).__name__}")
    if isinstance(batches, (torch.Tensor, str)) or not isinstance(batches, Iterable):
        raise ValueError(f"{who}: batches must be an iterable of batches (a list, a DataLoader), each passed to "
                         f"loss_fn(model, batch), got {_describe(batches)}; for a single batch b pass [b]")
    try:
        size = len(batches)
    except TypeError:  # a generator, or a DataLoader over an IterableDataset
        size = None
    if size == 0:
        raise ValueError(f"{who}: batches is empty; pass at least one batch (one gradient per batch; the paper's "
                         "code uses 64 batches of 32 samples)")
    if size is not None and m is not None and size < m:
        raise ValueError(f"{who}: batches holds {size} batches but m={m} gradients per step were asked for; pass "
                         f"m={size} (or None for every batch) or more batches")
    chosen = _select(model, params, masks, who, need_grad=True)
    keep = _initial_keep(chosen, masks, who)
    n_keep = _target(keep, sparsity, who)
    w = _flat(chosen).masked_fill(~keep, 0)
    _write(chosen, w)
    start = int(keep.sum())
    for j in range(1, steps + 1):
        goal = n_keep if j == steps or start == 0 else round(start * (n_keep / start) ** (j / steps))
        left = int(keep.sum())
        if goal >= left:
            continue
        idx = keep.nonzero().squeeze(1)
        G = _gradients(model, loss_fn, batches, chosen, idx, m, f"{who} (step {j} of {steps})")
        result = obs_prune(w[idx], StaticMFAC(G, damp, blocks=blocks), left - goal)
        del G
        w[idx] = result.weights
        keep[idx[result.pruned]] = False
        w.masked_fill_(~keep, 0)
        _write(chosen, w)
    return _masks(chosen, keep)


def _gradients(model, loss_fn, batches, chosen, idx: torch.Tensor, m: int | None, who: str) -> torch.Tensor:
    """``(n, len(idx))``: one flat gradient per batch, restricted to ``idx``; ``n = m`` (or every batch)."""
    params = [p for _, p in chosen]
    rows = []
    for i, batch in enumerate(iter(batches)):
        loss = loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"{who}: loss_fn(model, batch) must return a scalar tensor, got {_describe(loss)} for "
                             f"batch {i}; reduce it, e.g. with .mean()")
        if not loss.requires_grad:
            raise ValueError(f"{who}: the loss of batch {i} does not depend on the pruned weights (no autograd graph); "
                             "compute it outside torch.no_grad() from model's output")
        grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
        flat = flat[idx]
        if not bool(torch.isfinite(flat).all()):
            raise ValueError(f"{who}: the gradient of batch {i} has non-finite (NaN or inf) entries; check the loss "
                             "for overflow (use float64, or a stable loss such as F.cross_entropy on logits)")
        rows.append(flat.detach())
        if m is not None and len(rows) == m:
            break
    if not rows:
        raise ValueError(f"{who}: batches yielded no batch. Pass a non-empty list or DataLoader; a generator is used "
                         "up by the first step, so with steps > 1 pass a list or a DataLoader")
    if m is not None and len(rows) < m:
        raise ValueError(f"{who}: batches yielded {len(rows)} batches but m={m} gradients were asked for; pass "
                         f"m={len(rows)} (or None for every batch) or more batches")
    return torch.stack(rows)

"""Sliced Wasserstein distances: plain Monte Carlo and the control-variate estimators of Nguyen & Ho (2024).

``SW_p^p(mu, nu) = E_theta[W_p^p(theta # mu, theta # nu)]`` over directions ``theta`` uniform on the sphere
``S^{d-1}``; ``theta # mu`` is the 1D measure of the projections ``theta . x``. The Monte Carlo estimate
averages ``W_l = W_p^p(theta_l # mu, theta_l # nu)`` over ``L`` directions.

Control variates (the paper's Sec. 3). Approximate each projected measure by the Gaussian with its mean and
variance: ``theta # mu ~ N(theta . m_mu, theta^T S_mu theta)`` (``m``, ``S`` the weighted mean and ``1/n``
covariance of the cloud). The squared 2-Wasserstein distance between the two Gaussians,
``(theta . dm)^2 + (sigma_mu - sigma_nu)^2`` with ``dm = m_mu - m_nu``, is bounded below and above by

* ``C_low(theta) = (theta . dm)^2`` and
* ``C_up(theta) = (theta . dm)^2 + theta^T S_mu theta + theta^T S_nu theta``,

quadratic forms in ``theta`` whose means over the sphere are known in closed form, ``E[theta^T M theta] =
tr(M) / d``: ``E[C_low] = |dm|^2 / d`` and ``E[C_up] = (|dm|^2 + tr S_mu + tr S_nu) / d``. With ``C_l`` the
control variate at the ``L`` directions, the estimate is ``mean(W) - gamma (mean(C) - E[C])``, with the
coefficient ``gamma = mean((W_l - mean W)(C_l - E[C])) / mean((C_l - E[C])^2)`` estimated from the same
directions, as in the paper's code (so the estimate has an ``O(1/L)`` bias, like the paper's).

Both control variates come from the projections already computed: ``theta . dm`` is the difference of the
projected means and ``theta^T S theta`` the projected variance, ``O(n L)`` extra work beyond the
``O(n d)`` moments. The reference code projects the centred clouds a second time for the upper bound.

References:
    Nguyen, Ho. "Sliced Wasserstein Estimation with Control Variates", ICLR 2024.
    Bonneel, Rabin, Peyre, Pfister. "Sliced and Radon Wasserstein Barycenters of Measures", JMIV 2015.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .directions import DIRECTION_KINDS, random_directions
from .wasserstein1d import wasserstein_1d

__all__ = ["sliced_wasserstein", "SlicedInfo", "CONTROL_VARIATES"]

CONTROL_VARIATES = ("lower", "upper")


@dataclass
class SlicedInfo:
    """What :func:`sliced_wasserstein` computed besides the distance (``...``: the batch shape).

    Attributes:
        projections: ``(L, d)`` or ``(..., L, d)``, the directions used.
        per_projection: ``(..., L)``, ``W_p^p`` of the projected measures, one per direction.
        estimate: ``(...)``, the estimate of ``SW_p^p`` (the distance returned is its ``p``-th root, taken
            after clamping at zero: a control-variate estimate can come out slightly negative when the
            distance is tiny).
        variance: ``(...)``, the estimated variance of ``estimate`` over draws of the directions: the
            sample variance of ``W_l`` over ``L``; with a control variate, the jackknife variance over the
            directions (``gamma`` is refitted without each one in turn). NaN for ``L = 1`` (``L < 3`` with
            a control variate).
        control_variate: the name, or None.
        control_values: ``(..., L)``, ``C_l`` (None without a control variate).
        control_mean: ``(...)``, ``E[C]`` in closed form (None without a control variate).
        coefficient: ``(...)``, ``gamma`` (None without a control variate).
    """

    projections: torch.Tensor
    per_projection: torch.Tensor
    estimate: torch.Tensor
    variance: torch.Tensor
    control_variate: str | None = None
    control_values: torch.Tensor | None = None
    control_mean: torch.Tensor | None = None
    coefficient: torch.Tensor | None = None


# -- validation ------------------------------------------------------------------------------------------------

def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"a {t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"
    return type(t).__name__


def _check_cloud(t, name: str, who: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim < 2:
        raise ValueError(f"{who}: {name} must be a tensor of shape (..., n, d), one point per row, got {_describe(t)}; "
                         f"a 1D sample of n values is {name}[:, None]")
    if not t.is_floating_point() or t.is_complex():
        raise ValueError(f"{who}: {name} must be a real floating tensor, got dtype {t.dtype}; convert it with "
                         ".to(torch.float32) or .to(torch.float64)")
    if t.shape[-2] < 1 or t.shape[-1] < 1:
        raise ValueError(f"{who}: {name} of shape {tuple(t.shape)} has no points or no coordinates")
    return t


def _reject_nonfinite(t: torch.Tensor, name: str, who: str) -> None:
    bad = ~torch.isfinite(t.detach())
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{who}: {name} has {int(bad.sum())} non-finite (NaN or inf) entries, the first at index "
                         f"{first}; remove or fix those points")


def _check_weights(w, cloud: torch.Tensor, name: str, who: str) -> torch.Tensor | None:
    if w is None:
        return None
    n = cloud.shape[-2]
    if not isinstance(w, torch.Tensor) or w.ndim < 1 or w.shape[-1] != n:
        raise ValueError(f"{who}: {name} must be None or a tensor of shape (..., {n}), one weight per point, got "
                         f"{_describe(w)}")
    if w.dtype != cloud.dtype or w.device != cloud.device:
        raise ValueError(f"{who}: {name} is {w.dtype} on {w.device} but the points are {cloud.dtype} on {cloud.device}; "
                         f"pass {name}.to(dtype={cloud.dtype}, device='{cloud.device}')")
    wd = w.detach()
    if not bool(torch.isfinite(wd).all()) or bool((wd < 0).any()):
        raise ValueError(f"{who}: {name} must be finite and non-negative")
    total = w.sum(-1, keepdim=True)
    if bool((total.detach() <= 0).any()):
        raise ValueError(f"{who}: {name} sums to zero for some measure; every measure needs positive total weight")
    return w / total  # probability weights


# -- the estimator ---------------------------------------------------------------------------------------------

def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, p: float = 2, n_projections: int = 100,
                       projections: torch.Tensor | None = None, weights=None, control_variate: str | None = None,
                       directions: str = "uniform", generator: torch.Generator | None = None,
                       return_info: bool = False):
    """The sliced ``p``-Wasserstein distance between point clouds, optionally with a control variate.

    Estimates ``SW_p(mu, nu) = (E_theta[W_p^p(theta # mu, theta # nu)])^{1/p}`` for the empirical measures
    ``mu`` of the rows of ``x`` and ``nu`` of the rows of ``y``, from ``L`` directions ``theta``: plain
    Monte Carlo (``control_variate=None``), or the paper's estimator with the lower-bound (``"lower"``) or
    upper-bound (``"upper"``) Gaussian control variate (see the module docstring). Batched over leading
    dimensions, differentiable in ``x``, ``y`` and the weights (through the sort: NumPy's on the CPU,
    ``torch.sort`` elsewhere), on any device, in the inputs' dtype. Like the paper's code, the gradient of a
    control-variate estimate flows through the coefficient ``gamma`` too.

    Args:
        x: ``(..., n, d)`` points of the first measure.
        y: ``(..., m, d)`` points of the second (``m`` may differ from ``n``); leading dimensions broadcast.
        p: the order, a number ``>= 1``.
        n_projections: ``L``, the number of directions drawn when ``projections`` is None.
        projections: ``(L, d)`` or ``(..., L, d)`` directions to use instead of drawing them (unit rows,
            uniform on the sphere for the control variates' closed-form means to hold).
        weights: None (uniform), or a pair ``(a, b)`` of ``(..., n)`` and ``(..., m)`` non-negative weights
            (either may be None), normalised here to sum to 1.
        control_variate: None, ``"lower"`` or ``"upper"``.
        directions: how to draw them: ``"uniform"`` (i.i.d.), ``"orthogonal"`` or ``"qmc"`` (see
            :func:`~neuralnumerics.ot.random_directions`).
        generator: the random source for the directions (None: torch's global generator).
        return_info: also return a :class:`SlicedInfo`.

    Returns:
        ``(...)``, the estimate of ``SW_p`` (the ``p``-th root of the ``SW_p^p`` estimate clamped at zero);
        with ``return_info``, ``(distance, info)``.

    Raises:
        ValueError: clouds that are not ``(..., n, d)`` real floating tensors, with NaN or inf, of different
            ``d``, dtype or device, or with batch shapes that do not broadcast; bad weights; ``p < 1``;
            an unknown control variate or kind of directions; projections of the wrong shape or, with a
            control variate, not of unit norm.

    Complexity:
        ``O(L (n + m) d)`` for the projections and ``O(L (n + m) log(n + m))`` for the sorts, per pair; the
        control variates add ``O((n + m) (d + L))``.

    Equivalent to ``ot.sliced_wasserstein_distance(x, y, a, b, n_projections, p, projections=theta.T)`` of
    POT for one pair without a control variate.

    References:
        Nguyen, Ho. "Sliced Wasserstein Estimation with Control Variates", ICLR 2024.
    """
    who = "sliced_wasserstein"
    x = _check_cloud(x, "x", who)
    y = _check_cloud(y, "y", who)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"{who}: x has points of dimension {x.shape[-1]} and y of dimension {y.shape[-1]}; both "
                         "clouds must live in the same space")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"{who}: x is {x.dtype} on {x.device} and y is {y.dtype} on {y.device}; convert one to match")
    try:
        batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{who}: the batch shapes {tuple(x.shape[:-2])} of x and {tuple(y.shape[:-2])} of y do not "
                         "broadcast") from None
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or p < 1:
        raise ValueError(f"{who}: p must be a finite number >= 1, got {p!r}")
    if control_variate is not None and control_variate not in CONTROL_VARIATES:
        raise ValueError(f"{who}: unknown control_variate {control_variate!r}; choose None, 'lower' or 'upper'")
    if weights is None:
        a = b = None
    else:
        if not isinstance(weights, (tuple, list)) or len(weights) != 2:
            raise ValueError(f"{who}: weights must be None or a pair (a, b) of weights for x and y (either may be "
                             f"None), got {type(weights).__name__}")
        a = _check_weights(weights[0], x, "weights[0]", who)
        b = _check_weights(weights[1], y, "weights[1]", who)
    d = x.shape[-1]
    if projections is None:
        if isinstance(n_projections, bool) or not isinstance(n_projections, numbers.Integral) or n_projections < 1:
            raise ValueError(f"{who}: n_projections must be a positive integer, got {n_projections!r}")
        if directions not in DIRECTION_KINDS:
            raise ValueError(f"{who}: unknown directions {directions!r}; choose one of "
                             f"{', '.join(map(repr, DIRECTION_KINDS))}")
        theta = random_directions(int(n_projections), d, kind=directions, generator=generator, dtype=x.dtype,
                                  device=x.device)
    else:
        theta = projections
        if not isinstance(theta, torch.Tensor) or theta.ndim < 2 or theta.shape[-1] != d or theta.shape[-2] < 1:
            raise ValueError(f"{who}: projections must be a tensor of shape (L, {d}) or (..., L, {d}), one direction "
                             f"per row, got {_describe(theta)}")
        if theta.dtype != x.dtype or theta.device != x.device:
            raise ValueError(f"{who}: projections are {theta.dtype} on {theta.device} but the points are {x.dtype} on "
                             f"{x.device}; pass projections.to(dtype={x.dtype}, device='{x.device}')")
        if control_variate is not None:
            norms = torch.linalg.vector_norm(theta.detach(), dim=-1)
            tol = 10 * math.sqrt(torch.finfo(theta.dtype).eps)
            if not bool(((norms - 1).abs() <= tol).all()):
                raise ValueError(f"{who}: with a control variate the projections must be unit vectors (their closed-form "
                                 f"mean assumes directions uniform on the sphere); row norms range over "
                                 f"[{float(norms.min()):.3g}, {float(norms.max()):.3g}]. Normalise the rows")
    L = theta.shape[-2]

    px = theta @ x.mT  # (..., L, n)
    py = theta @ y.mT  # (..., L, m)
    wa = None if a is None else a.unsqueeze(-2)
    wb = None if b is None else b.unsqueeze(-2)
    W = wasserstein_1d(px, py, p=p, u_weights=wa, v_weights=wb)  # (..., L)
    W = W.expand(*batch, L) if W.shape[:-1] != batch else W
    # a NaN or inf point makes its projections, hence some W_l, non-finite: one cheap check on the L values here
    # instead of an elementwise pass over the clouds (which costs more than the estimate for small L)
    if not bool(torch.isfinite(W.detach().sum())):
        _reject_nonfinite(x, "x", who)
        _reject_nonfinite(y, "y", who)
        raise ValueError(f"{who}: the projected distances overflowed {x.dtype} (the clouds' coordinates are too large); "
                         "rescale the clouds or use float64")
    A = W.mean(-1)

    if control_variate is None:
        estimate = A
        C = EC = gamma = None
    else:
        C, EC = _control_variate(control_variate, x, y, a, b, px, py, d)
        C = C.expand(*batch, L)
        EC = EC.expand(batch)
        D = C - EC.unsqueeze(-1)
        num = ((W - A.unsqueeze(-1)) * D).mean(-1)
        den = D.square().mean(-1)
        positive = den > 0
        gamma = torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(den))
        estimate = A - gamma * D.mean(-1)
    # the p-th root, with a zero (and a zero gradient) where the estimate is not positive
    positive = estimate > 0
    safe = torch.where(positive, estimate, torch.ones_like(estimate))
    root = safe.sqrt() if p == 2 else safe.pow(1.0 / p)
    distance = torch.where(positive, root, torch.zeros_like(estimate))
    if not return_info:
        return distance
    variance = _variance(W.detach(), None if C is None else D.detach())
    return distance, SlicedInfo(projections=theta, per_projection=W, estimate=estimate, variance=variance,
                                control_variate=control_variate, control_values=C, control_mean=EC,
                                coefficient=gamma)


def _variance(W: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """Estimated variance ``(...)`` of the estimate over draws of the ``L`` directions (``W``, ``D``: ``(..., L)``).

    Plain Monte Carlo: the sample variance of ``W_l`` over ``L``. With a control variate ``D_l = C_l - E[C]``
    the estimate ``mean(W) - gamma mean(D)`` is a nonlinear function of the directions (``gamma`` is fitted
    on them), so its variance is estimated by the jackknife over the directions: the ``L`` leave-one-out
    estimates, each from sums updated in ``O(1)``, ``(L - 1)/L sum_l (Z_(l) - mean Z_(.))^2``. (The sample
    variance of ``W_l - gamma D_l`` over ``L`` misses the coefficient's own uncertainty, which dominates when
    the control variate explains almost all of the spread.)
    """
    L = W.shape[-1]
    nan = torch.full_like(W[..., 0], math.nan)
    if D is None:
        return W.var(-1, correction=1) / L if L > 1 else nan
    if L < 3:
        return nan
    k = L - 1
    w_bar = (W.sum(-1, keepdim=True) - W) / k
    d_bar = (D.sum(-1, keepdim=True) - D) / k
    dw = ((D * W).sum(-1, keepdim=True) - D * W) / k
    dd = (D.square().sum(-1, keepdim=True) - D.square()) / k
    ok = dd > 0
    gamma = torch.where(ok, (dw - w_bar * d_bar) / torch.where(ok, dd, torch.ones_like(dd)), torch.zeros_like(dd))
    z = w_bar - gamma * d_bar
    return k / L * (z - z.mean(-1, keepdim=True)).square().sum(-1)


def _mean(t: torch.Tensor, w: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Mean of ``t`` over ``dim`` (``-2``: the points of ``(..., n, d)``; ``-1``: the projections ``(..., L, n)``),
    weighted by probability weights ``w`` ``(..., n)`` when given."""
    if w is None:
        return t.mean(dim)
    return (w.unsqueeze(-1) * t).sum(-2) if dim == -2 else (w.unsqueeze(-2) * t).sum(-1)


def _variance_along(t: torch.Tensor, w: torch.Tensor | None, dim: int) -> torch.Tensor:
    """The ``1/n``-type (weighted) variance of ``t`` over ``dim``, as :func:`_mean` (centred, then a norm:
    several times faster on the CPU than ``torch.var``'s single-pass kernel)."""
    dev = t - _mean(t, w, dim).unsqueeze(dim)
    if w is None:
        return torch.linalg.vector_norm(dev, dim=dim).square() / t.shape[dim]
    return _mean(dev.square(), w, dim)


def _trace_covariance(cloud: torch.Tensor, mean: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``tr S = mean_i |x_i - m|^2`` (weighted: ``sum_i w_i |x_i - m|^2``) of ``(..., n, d)`` points (centred
    first: no cancellation for clouds far from the origin)."""
    dist = torch.linalg.vector_norm(cloud - mean.unsqueeze(-2), dim=-1).square()  # (..., n)
    return dist.mean(-1) if w is None else (w * dist).sum(-1)


def _control_variate(kind, x, y, a, b, px, py, d):
    """``C_l`` ``(..., L)`` from the projections and ``E[C]`` ``(...)`` in closed form."""
    C = (_mean(px, a, -1) - _mean(py, b, -1)).square()
    mx, my = _mean(x, a, -2), _mean(y, b, -2)
    EC = (mx - my).square().sum(-1)
    if kind == "upper":
        C = C + _variance_along(px, a, -1) + _variance_along(py, b, -1)
        EC = EC + _trace_covariance(x, mx, a) + _trace_covariance(y, my, b)
    return C, EC / d

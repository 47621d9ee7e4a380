"""Spatial derivatives of neural fields, for batches of points.

A *field* here is any callable ``f(x)`` mapping points ``x`` of shape ``(n, d)`` to values of
shape ``(n, c)`` **pointwise**: row ``i`` of the output depends only on row ``i`` of the input
(true of every MLP, SIREN included). Derivatives are taken in forward mode
(:func:`torch.func.jvp`, one pass per spatial direction), so they compose with
:func:`torch.func.vmap` / :func:`torch.func.jacrev` over the weights and with ordinary autograd.
First derivatives and the Laplacian of a :class:`~neuralnumerics.fields.SIREN` (the module itself, or
:func:`~neuralnumerics.fields.functional_field` of one) come in closed form from
:class:`~neuralnumerics.fields.SirenJet` instead: one pass for all directions, differentiable in the
weights by autograd and faster than the forward-mode passes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp

from .params import FunctionalField
from .siren import SIREN, SirenJet

__all__ = ["Field", "jacobian", "gradient", "divergence", "laplacian", "directional_derivative",
           "linear_combination"]

Field = Callable[[torch.Tensor], torch.Tensor]


class LinearCombination:
    """The field ``x -> sum_i c_i f_i(x)``; its derivatives are the same combination of the parts'.

    Built by :func:`linear_combination`. The derivative operators of this module differentiate each
    part on its own, so parts that are SIRENs keep their closed-form derivatives (a plain
    ``lambda y: 0.5 * (f(y) + g(y))`` would be differentiated in forward mode as a whole).
    """

    __slots__ = ("coefficients", "fields")

    def __init__(self, coefficients: tuple[float, ...], fields: tuple[Field, ...]) -> None:
        self.coefficients, self.fields = coefficients, fields

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _combine(self, lambda f: f(x))


def linear_combination(*terms: tuple[float, Field]) -> Field:
    """The field ``x -> sum_i c_i f_i(x)`` from pairs ``(c_i, f_i)``.

    Use it instead of a lambda where a residual differentiates a sum of fields (an integrator's
    midpoint state, a step's increment): :func:`jacobian`, :func:`gradient`, :func:`divergence`,
    :func:`laplacian` and :func:`directional_derivative` then differentiate each part, in closed form
    for SIRENs.

    Example:
        >>> u_mid = linear_combination((0.5, u_new), (0.5, u_prev))  # doctest: +SKIP
    """
    if not terms:
        raise ValueError("linear_combination needs at least one (coefficient, field) pair")
    for term in terms:
        if not (isinstance(term, tuple) and len(term) == 2 and callable(term[1])):
            raise ValueError(f"linear_combination takes (coefficient, field) pairs, got {term!r}")
    return LinearCombination(tuple(float(c) for c, _ in terms), tuple(f for _, f in terms))


def _combine(f: LinearCombination, op: Callable[[Field], torch.Tensor]) -> torch.Tensor:
    out = None
    for c, part in zip(f.coefficients, f.fields):
        value = op(part)
        value = value if c == 1.0 else c * value
        out = value if out is None else out + value
    return out


def _check_points(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"points must be a tensor of shape (n, dim), got {shape}")


def _unit(x: torch.Tensor, k: int) -> torch.Tensor:
    e = torch.zeros_like(x)
    e[:, k] = 1.0
    return e


def directional_derivative(f: Field, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(v . grad) f`` at each point.

    Args:
        f: a pointwise field ``(n, d) -> (n, c)``.
        x: points, shape ``(n, d)``.
        v: directions, shape ``(n, d)`` (or broadcastable to it).

    Returns:
        Tensor of shape ``(n, c)``.
    """
    _check_points(x)
    if isinstance(f, LinearCombination):
        return _combine(f, lambda part: directional_derivative(part, x, v))
    return jvp(f, (x,), (torch.broadcast_to(v, x.shape).to(x),))[1]


def _siren_jet(f: Field, x: torch.Tensor, laplacian: bool = False) -> SirenJet | None:
    """The closed-form jet of a SIREN at ``x``, or ``None`` when ``f`` is not a SIREN."""
    if isinstance(f, FunctionalField) and isinstance(f.module, SIREN):
        module, params = f.module, f.params
    elif isinstance(f, SIREN):
        module, params = f, dict(f.named_parameters())
    else:
        return None
    if x.shape[1] != module.in_features:
        return None
    return SirenJet(module, params, x, laplacian=laplacian)


def _siren_jacobian(f: Field, x: torch.Tensor) -> torch.Tensor | None:
    jet = _siren_jet(f, x)
    return None if jet is None else jet.grad


def jacobian(f: Field, x: torch.Tensor) -> torch.Tensor:
    """Jacobian ``df_i/dx_j`` at each point, shape ``(n, c, d)``."""
    _check_points(x)
    if isinstance(f, LinearCombination):
        return _combine(f, lambda part: jacobian(part, x))
    closed = _siren_jacobian(f, x)
    if closed is not None:
        return closed
    cols = [jvp(f, (x,), (_unit(x, k),))[1] for k in range(x.shape[1])]
    return torch.stack(cols, dim=-1)


def gradient(f: Field, x: torch.Tensor) -> torch.Tensor:
    """Gradient of a scalar field, shape ``(n, d)``.

    Raises:
        ValueError: if the field has more than one channel (use :func:`jacobian`).
    """
    jac = jacobian(f, x)
    if jac.shape[1] != 1:
        raise ValueError(f"gradient needs a scalar field, this one has {jac.shape[1]} channels; "
                         "use jacobian() for vector fields")
    return jac[:, 0, :]


def divergence(f: Field, x: torch.Tensor) -> torch.Tensor:
    """Divergence ``sum_k df_k/dx_k`` of a vector field with ``c == d``, shape ``(n, 1)``."""
    _check_points(x)
    if isinstance(f, LinearCombination):
        return _combine(f, lambda part: divergence(part, x))
    closed = _siren_jacobian(f, x)
    if closed is not None:
        if closed.shape[1] != x.shape[1]:
            raise ValueError(f"divergence needs as many channels as dimensions, got {closed.shape[1]} "
                             f"channels in {x.shape[1]} dimensions")
        return closed.diagonal(dim1=1, dim2=2).sum(1, keepdim=True)
    out = None
    for k in range(x.shape[1]):
        col = jvp(f, (x,), (_unit(x, k),))[1]
        if col.shape[1] != x.shape[1]:
            raise ValueError(f"divergence needs as many channels as dimensions, got {col.shape[1]} "
                             f"channels in {x.shape[1]} dimensions")
        out = col[:, k:k + 1] if out is None else out + col[:, k:k + 1]
    return out


def laplacian(f: Field, x: torch.Tensor) -> torch.Tensor:
    """Laplacian ``sum_k d^2 f/dx_k^2`` of each channel, shape ``(n, c)``."""
    _check_points(x)
    if isinstance(f, LinearCombination):
        return _combine(f, lambda part: laplacian(part, x))
    jet = _siren_jet(f, x, laplacian=True)
    if jet is not None:
        return jet.lap
    out = None
    for k in range(x.shape[1]):
        e = _unit(x, k)
        second = jvp(lambda y: jvp(f, (y,), (e,))[1], (x,), (e,))[1]
        out = second if out is None else out + second
    return out

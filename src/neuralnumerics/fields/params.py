"""View a module's weights as one flat vector, and evaluate a module at given flat weights."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["flat_params", "load_flat_params", "unflatten_params", "param_count", "functional_field",
           "FunctionalField"]


def param_count(module: nn.Module) -> int:
    """Number of scalar weights of ``module``."""
    return sum(p.numel() for p in module.parameters())


def flat_params(module: nn.Module) -> torch.Tensor:
    """All weights of ``module`` concatenated in ``named_parameters()`` order, shape ``(p,)`` (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def unflatten_params(module: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat vector into a ``{name: tensor}`` dict shaped like ``module``'s weights (views)."""
    n = param_count(module)
    if flat.ndim != 1 or flat.numel() != n:
        raise ValueError(f"expected a flat vector of {n} weights, got shape {tuple(flat.shape)}")
    out, i = {}, 0
    for name, p in module.named_parameters():
        out[name] = flat[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


@torch.no_grad()
def load_flat_params(module: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector of weights into ``module`` in place."""
    for p, v in zip(module.parameters(), unflatten_params(module, flat.to(next(module.parameters()))).values()):
        p.copy_(v)


class FunctionalField:
    """``x -> module(x)`` with the weights ``params`` (a ``{name: tensor}`` dict) instead of the module's own.

    Knowing the module and its weights lets :func:`~neuralnumerics.fields.jacobian` take the spatial
    derivatives of a SIREN in closed form instead of by forward-mode autodiff.
    """

    __slots__ = ("module", "params")

    def __init__(self, module: nn.Module, params: dict[str, torch.Tensor]) -> None:
        self.module, self.params = module, params

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.params, (x,))


def functional_field(module: nn.Module, flat: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The field ``x -> module(x)`` evaluated with weights ``flat`` instead of the module's own.

    Differentiable with respect to ``flat`` (for autograd and :mod:`torch.func`).
    """
    return FunctionalField(module, unflatten_params(module, flat))

"""SIREN: a multilayer perceptron with sine activations (Sitzmann et al., NeurIPS 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SIREN"]


class SIREN(nn.Module):
    """A neural field ``R^in -> R^out`` with sine activations and the SIREN initialisation.

    The network is ``x -> sin(w0 (W_0 x + b_0)) -> sin(w (W_1 h + b_1)) -> ... -> W_L h + b_L``:
    ``hidden_layers + 2`` linear layers in all, the last one linear. ``hidden_layers=2,
    hidden_features=20`` is the "SIREN 2x20" of INSR's advection example (901 weights).

    Initialisation follows SIREN: first-layer weights ``U(-1/in, 1/in)``, later weights
    ``U(-sqrt(6/n)/w, sqrt(6/n)/w)`` so that pre-activations stay unit-scale, biases as
    ``torch.nn.Linear``'s default ``U(-1/sqrt(n), 1/sqrt(n))``.

    Args:
        in_features: spatial dimension ``d`` of the points.
        out_features: number of channels ``c`` of the field.
        hidden_features: width of every hidden layer.
        hidden_layers: number of hidden-to-hidden layers.
        first_omega: frequency ``w0`` of the first layer.
        hidden_omega: frequency ``w`` of the hidden layers.
        generator: random generator for the initialisation (the global one when ``None``).
        dtype, device: of the weights.

    Shapes:
        ``forward(x)``: ``x`` of shape ``(..., in_features)`` gives ``(..., out_features)``.

    References:
        Sitzmann, Martel, Bergman, Lindell, Wetzstein. "Implicit Neural Representations with
        Periodic Activation Functions." NeurIPS 2020.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 64,
        hidden_layers: int = 3,
        *,
        first_omega: float = 30.0,
        hidden_omega: float = 30.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("hidden_features", hidden_features)):
            if int(value) < 1:
                raise ValueError(f"SIREN: {name} must be a positive integer, got {value}")
        if int(hidden_layers) < 0:
            raise ValueError(f"SIREN: hidden_layers must be >= 0, got {hidden_layers}")
        if not (first_omega > 0 and hidden_omega > 0):
            raise ValueError("SIREN: first_omega and hidden_omega must be positive")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.hidden_features = int(hidden_features)
        self.hidden_layers = int(hidden_layers)
        self.first_omega = float(first_omega)
        self.hidden_omega = float(hidden_omega)
        widths = [self.in_features] + [self.hidden_features] * (self.hidden_layers + 1) + [self.out_features]
        # nn.Linear draws a default initialisation from the global generator; it is overwritten
        # below, so fork the global state to leave it untouched (randomness comes from `generator`).
        with torch.random.fork_rng(devices=[]):
            self.layers = nn.ModuleList(
                nn.Linear(a, b, dtype=dtype, device=device) for a, b in zip(widths[:-1], widths[1:])
            )
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw new weights from the SIREN initialisation."""
        for i, layer in enumerate(self.layers):
            n = layer.in_features
            bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / self.hidden_omega
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-1.0 / math.sqrt(n), 1.0 / math.sqrt(n), generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.first_omega * self.layers[0](x))
        for layer in self.layers[1:-1]:
            h = torch.sin(self.hidden_omega * layer(h))
        return self.layers[-1](h)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, width={self.hidden_features}, "
                f"hidden_layers={self.hidden_layers}, first_omega={self.first_omega}, "
                f"hidden_omega={self.hidden_omega}")

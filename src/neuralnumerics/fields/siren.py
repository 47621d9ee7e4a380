"""SIREN: a multilayer perceptron with sine activations (Sitzmann et al., NeurIPS 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SIREN", "SirenJet"]


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


class SirenJet:
    """Value, spatial gradient and their weight Jacobians of a SIREN at a batch of points, in closed form.

    ``SirenJet(siren, params, x)`` runs one forward pass of the network and of its ``d`` spatial
    tangents (forward mode, by hand) and keeps the activations. Then
    :meth:`weight_jacobian_t` returns, per point, the Jacobian with respect to all the weights of any
    linear combination of the field's value and first derivatives,

        ``r_o(x) = sum_c a[o, c] u_c(x) + sum_{c, k} b[o, c, k] du_c/dx_k (x)``,

    by one hand-written reverse pass through the value and its tangents together (forward-over-
    reverse). This is the residual Jacobian of every PDE residual that depends on the field through
    its first-order jet (advection, transport, first-order integrator residuals). Activations are
    kept points-last, ``(width, n)``, so that every per-layer outer product is a long contiguous
    elementwise kernel: several times faster than ``vmap(jacrev(...))`` over a residual that
    differentiates the network in ``x`` itself.

    Args:
        siren: the network (its architecture and frequencies).
        params: its weights by name (``dict(siren.named_parameters())`` or
            :func:`~neuralnumerics.fields.unflatten_params`).
        x: points, shape ``(n, in_features)``.
        laplacian: also carry the Laplacian through the network (one more stream of activations), for
            :attr:`lap` and residuals with Laplacian terms.

    Attributes:
        value: ``u(x)``, shape ``(n, c)``.
        grad: ``du_c/dx_k``, shape ``(n, c, d)``.
        lap: ``sum_k d^2 u_c/dx_k^2``, shape ``(n, c)`` (``None`` unless ``laplacian=True``).
    """

    def __init__(self, siren: SIREN, params: dict[str, torch.Tensor], x: torch.Tensor, *,
                 laplacian: bool = False) -> None:
        n, d = x.shape
        self.n, self.d = n, d
        self.weights = [(params[f"layers.{i}.weight"], params[f"layers.{i}.bias"])
                        for i in range(len(siren.layers))]
        self.omegas = [siren.first_omega] + [siren.hidden_omega] * (len(siren.layers) - 2)
        # inputs of each layer (h: (w, n), its tangents hd: (d, w, n), its Laplacian hl: (w, n)) and
        # pre-activations (s, sd, sl)
        h = x.mT
        hd = torch.eye(d, dtype=x.dtype, device=x.device)[:, :, None].expand(d, d, n)
        hl = torch.zeros_like(h) if laplacian else None
        self.h, self.hd, self.s, self.sd = [], [], [], []
        self.hl: list[torch.Tensor] | None = [] if laplacian else None
        self.sl: list[torch.Tensor] | None = [] if laplacian else None
        for (W, bias), omega in zip(self.weights[:-1], self.omegas):
            self.h.append(h)
            self.hd.append(hd)
            s = torch.addmm(bias[:, None], W, h).mul_(omega)
            sd = (W @ hd).mul_(omega)
            self.s.append(s)
            self.sd.append(sd)
            if laplacian:
                # lap sin(s) = cos(s) lap s - sin(s) |grad s|^2
                self.hl.append(hl)
                sl = (W @ hl).mul_(omega)
                self.sl.append(sl)
                hl = torch.cos(s) * sl - torch.sin(s) * sd.square().sum(0)
            h, hd = torch.sin(s), torch.cos(s) * sd
        self.h.append(h)
        self.hd.append(hd)
        W, bias = self.weights[-1]
        self.value = torch.addmm(bias[:, None], W, h).mT
        self.grad = (W @ hd).permute(2, 1, 0)
        self.lap = None
        if laplacian:
            self.hl.append(hl)
            self.lap = (W @ hl).mT

    def weight_jacobian_t(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Transposed per-point Jacobian of ``r_o = a[o] . u + sum_k b[o, :, k] . du/dx_k (+ c[o] . lap u)``
        in the weights.

        Args:
            a: value coefficients, shape ``(n, m, c)`` (``m`` residual components per point).
            b: gradient coefficients, shape ``(n, m, c, d)``.
            c: Laplacian coefficients, shape ``(n, m, c)``; needs a jet made with ``laplacian=True``.

        Returns:
            ``J^T``, shape ``(p, n * m)``: rows in the order of
            :func:`~neuralnumerics.fields.flat_params`, columns point-major (point ``i``, component
            ``o`` at ``i * m + o``).
        """
        if c is not None and self.hl is None:
            raise ValueError("SirenJet.weight_jacobian_t: Laplacian coefficients need a jet made with laplacian=True")
        n, m = a.shape[0], a.shape[1]
        cols = n * m
        rep = (lambda t: t.repeat_interleave(m, dim=-1)) if m > 1 else (lambda t: t)
        at = a.reshape(cols, -1).mT  # (c, n m)
        bt = b.reshape(cols, b.shape[2], self.d).permute(2, 1, 0)  # (d, c, n m)
        ct = None if c is None else c.reshape(cols, -1).mT
        offsets, row = [], 0
        for W, bias in self.weights:
            offsets.append(row)
            row += W.numel() + bias.numel()
        Jt = torch.empty(row, cols, dtype=a.dtype, device=a.device)

        def put(i, sbar, sdbar, slbar):
            # d/dW_i of s = W h + bias (and of its tangents sd_k = W hd_k and Laplacian sl = W hl):
            # sbar (x) h + sum_k sdbar_k (x) hd_k + slbar (x) hl
            W, _ = self.weights[i]
            h, hd = rep(self.h[i]), rep(self.hd[i])
            o, size = offsets[i], W.numel()
            gW = Jt[o:o + size].view(W.shape[0], W.shape[1], cols)
            torch.mul(sbar[:, None, :], h[None, :, :], out=gW)
            for k in range(self.d):
                gW.addcmul_(sdbar[k][:, None, :], hd[k][None, :, :])
            if slbar is not None:
                gW.addcmul_(slbar[:, None, :], rep(self.hl[i])[None, :, :])
            Jt[o + size:o + size + W.shape[0]] = sbar

        last = len(self.weights) - 1
        W, _ = self.weights[last]
        put(last, at, bt, ct)  # output layer u = W h + bias, with adjoints a (value), b (tangents), c (Laplacian)
        hbar, hdbar = W.mT @ at, W.mT @ bt  # adjoints of h (w, n m) and of its tangents (d, w, n m)
        hlbar = None if ct is None else W.mT @ ct
        for i in range(last - 1, -1, -1):
            W, _ = self.weights[i]
            omega = self.omegas[i]
            s, sd = rep(self.s[i]), rep(self.sd[i])
            cos, sin = torch.cos(s), torch.sin(s)
            # h' = sin(s), hd' = cos(s) sd, hl' = cos(s) sl - sin(s) |sd|^2, with s = omega (W h + bias),
            # sd = omega W hd, sl = omega W hl; the factor omega is folded into the adjoints of W h + bias
            sbar = hbar * cos - (hdbar * sd).sum(0) * sin
            sdbar = hdbar * cos
            slbar = None
            if hlbar is not None:
                sl = rep(self.sl[i])
                sbar -= hlbar * (sin * sl + cos * sd.square().sum(0))
                sdbar -= 2 * hlbar * sin * sd
                slbar = (hlbar * cos).mul_(omega)
            sbar.mul_(omega)
            sdbar.mul_(omega)
            put(i, sbar, sdbar, slbar)
            if i > 0:
                hbar, hdbar = W.mT @ sbar, W.mT @ sdbar
                hlbar = None if slbar is None else W.mT @ slbar
        return Jt

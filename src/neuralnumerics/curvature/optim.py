"""The M-FAC optimiser: SGD preconditioned by the inverse empirical Fisher of a sliding window of gradients."""

from __future__ import annotations

import math
import numbers

import torch

from .mfac import SlidingMFAC, _check_count, _check_damp

__all__ = ["MFAC"]


class MFAC(torch.optim.Optimizer):
    """M-FAC: steps along ``-lr F^{-1} g``, ``F`` the damped empirical Fisher of the last ``m`` gradients.

    Each :meth:`step` flattens the gradients of all parameters into one vector ``g`` of length ``d``
    (adding ``weight_decay * p`` first), adds it to a :class:`~neuralnumerics.curvature.SlidingMFAC`
    window (dropping the oldest once ``m`` are held) and computes ``u = F^{-1} g`` for the new window with
    :meth:`~neuralnumerics.curvature.SlidingMFAC.update_mv`. With ``momentum = mu > 0`` the step direction
    is the moving average ``v <- mu v + (1 - mu) u`` (from ``v = 0``), as in the paper's optimiser
    (``torch.optim.SGD``'s momentum has no ``1 - mu`` factor); then ``p <- p - lr v``. During the first
    ``m - 1`` steps the window is partly filled and ``F`` is the Fisher of the gradients seen so far.

    The window is one for all parameters, so ``m`` and ``damp`` are optimiser-wide; ``lr``, ``momentum``
    and ``weight_decay`` may differ per parameter group. All parameters must share a dtype and device
    (the window's). A parameter whose ``grad`` is None contributes a zero gradient (it still moves: ``F``
    couples it to the others). The window is exposed as :attr:`window`, a linear operator, e.g. for use
    as a preconditioner elsewhere.

    :meth:`state_dict` includes the window (``{"mfac": {"m": ..., "damp": ..., "window": ...}}`` beside
    torch's entries), so an optimiser built with the same parameters and loaded with it continues
    bit-for-bit.

    Args:
        params: an iterable of tensors or of parameter-group dicts (keys ``params``, ``lr``, ``momentum``,
            ``weight_decay``).
        lr: learning rate (the paper uses 1e-3).
        m: the window size (the paper uses 1024); memory is ``m`` copies of the parameters.
        damp: the dampening ``lambda > 0`` of ``F = lambda I + G^T G / m`` (the paper uses 1e-5).
        momentum: ``mu`` in ``[0, 1)``.
        weight_decay: ``>= 0``, L2 penalty added to the gradient before it enters the window.
        gram_dtype: passed to :class:`~neuralnumerics.curvature.SlidingMFAC`. None by default (unlike the
            window's own default): the Gram entries in the parameters' dtype, as the reference does. The
            step direction (``update_mv``) does not cancel, so float32 entries keep it accurate (measured:
            relative error at most 3e-3 where the reference's reaches 1.3); ``torch.float64`` costs 2-4x
            per step on the CPU.

    Raises:
        ValueError: bad hyperparameters, no parameters, parameters of mixed dtype or device, sparse or
            complex parameters; from :meth:`step`: no gradient at all, or non-finite gradients (the window
            and parameters are then unchanged).

    Complexity:
        per step ``O(d m + m^2)`` time once the window is full (``O(d m + m^3)`` while it fills and once
        every ``m`` steps); memory ``O(d m + m^2)``.

    References:
        Frantar, Kurtic, Alistarh. "M-FAC: Efficient Matrix-Free Approximations of Second-Order
        Information", NeurIPS 2021 (the dynamic algorithm and its optimiser).
    """

    def __init__(self, params, lr: float = 1e-3, m: int = 32, damp: float = 1e-5, momentum: float = 0.0,
                 weight_decay: float = 0.0, *, gram_dtype: torch.dtype | None = None) -> None:
        self.m = _check_count(m, "m", "MFAC", "it is the number of past gradients in the Fisher estimate "
                              "(the paper uses 1024)")
        self.damp = _check_damp(damp, "MFAC")
        self._building = True
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self._building = False
        flat = [p for group in self.param_groups for p in group["params"]]
        first = flat[0]
        for p in flat:
            if p.layout != torch.strided or not p.is_floating_point() or p.is_complex():
                raise ValueError(f"MFAC: parameters must be dense real floating tensors, got one of {p.dtype} "
                                 f"with layout {p.layout}")
            if p.dtype != first.dtype or p.device != first.device:
                raise ValueError(f"MFAC keeps one gradient window for all parameters, so they must share a dtype "
                                 f"and device; got {first.dtype} on {first.device} and {p.dtype} on {p.device}. "
                                 "Convert the model with .to(dtype, device) first")
        self.window = SlidingMFAC(sum(p.numel() for p in flat), self.m, self.damp, dtype=first.dtype,
                                  device=first.device, gram_dtype=gram_dtype)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group while the optimiser is built; later additions are refused (the window's dimension is
        fixed)."""
        if not getattr(self, "_building", False):
            raise ValueError("MFAC: the gradient window has a fixed dimension, so parameter groups cannot be added "
                             "after construction; build a new MFAC with all parameters")
        for key in ("m", "damp"):
            if key in param_group:
                raise ValueError(f"MFAC: {key!r} applies to the single gradient window of all parameters; pass it "
                                 "to MFAC(...) instead of a parameter group")
        for key, default in self.defaults.items():
            value = param_group.get(key, default)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"MFAC: {key} must be a finite number, got {value!r}")
        lr = param_group.get("lr", self.defaults["lr"])
        mu = param_group.get("momentum", self.defaults["momentum"])
        wd = param_group.get("weight_decay", self.defaults["weight_decay"])
        if lr < 0:
            raise ValueError(f"MFAC: lr must be >= 0, got {lr}")
        if not 0 <= mu < 1:
            raise ValueError(f"MFAC: momentum must be in [0, 1) (a moving-average coefficient), got {mu}")
        if wd < 0:
            raise ValueError(f"MFAC: weight_decay must be >= 0, got {wd}")
        super().add_param_group(param_group)

    def _flat_gradient(self) -> torch.Tensor:
        pieces, any_grad = [], False
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    g = torch.zeros_like(p).reshape(-1)
                else:
                    if p.grad.is_sparse:
                        raise ValueError("MFAC does not support sparse gradients (use dense embeddings)")
                    any_grad = True
                    g = p.grad.reshape(-1)
                if wd != 0:
                    g = g + wd * p.reshape(-1)
                pieces.append(g)
        if not any_grad:
            raise ValueError("MFAC.step: no parameter has a gradient; call loss.backward() before step()")
        return torch.cat(pieces)

    def _where(self, index: int) -> str:
        offset = 0
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if index < offset + p.numel():
                    return f"parameter {pi} of group {gi} (shape {tuple(p.shape)})"
                offset += p.numel()
        return "?"  # pragma: no cover

    def _reject_nonfinite(self, g: torch.Tensor) -> None:
        """Raise, naming the parameter, if ``g`` has NaN or inf entries (the window calls this when the new
        gradient's inner products are not finite, before it changes anything)."""
        bad = ~torch.isfinite(g)
        if bool(bad.any()):
            where = self._where(int(bad.nonzero()[0]))
            raise ValueError(f"MFAC.step: the gradient has {int(bad.sum())} non-finite (NaN or inf) entries, the first "
                             f"in {where}; the window and the parameters are unchanged. Lower the learning rate, "
                             "clip gradients or check the loss for overflow")

    @torch.no_grad()
    def step(self, closure=None):
        """One M-FAC step.

        Args:
            closure: optional, re-evaluates the model and returns the loss (called with gradients enabled).

        Returns:
            The closure's loss, or None.

        Raises:
            ValueError: no gradients, or non-finite gradients (nothing is changed).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        g = self._flat_gradient()
        direction = self.window._update_mv(g, "MFAC.step", on_nonfinite=self._reject_nonfinite)
        offset = 0
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                u = direction[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if mu != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.zeros_like(p)
                    buf.mul_(mu).add_(u, alpha=1 - mu)
                    u = buf
                p.add_(u, alpha=-lr)
        return loss

    def state_dict(self) -> dict:
        """torch's optimiser state plus ``"mfac"``: ``m``, ``damp`` and the window
        (:meth:`SlidingMFAC.state_dict`; live buffers, as torch's: save or deepcopy before stepping on)."""
        out = super().state_dict()
        out["mfac"] = {"m": self.m, "damp": self.damp, "window": self.window.state_dict()}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state saved by :meth:`state_dict`; tensors are copied, so the argument is not aliased.

        Raises:
            ValueError: no M-FAC window in ``state_dict`` (saved by another optimiser), or one of another
                ``m`` or dimension.
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("mfac", None)
        if not isinstance(extra, dict) or "window" not in extra:
            raise ValueError("MFAC.load_state_dict: the state dict has no 'mfac' entry with the gradient window; it "
                             "was not saved by MFAC.state_dict()")
        if extra.get("m") != self.m:
            raise ValueError(f"MFAC.load_state_dict: the saved window holds m={extra.get('m')} gradients but this "
                             f"optimiser has m={self.m}; construct MFAC with m={extra.get('m')}")
        self.window.load_state_dict(extra["window"])
        super().load_state_dict(state_dict)
        for st in self.state.values():  # torch keeps the loaded tensors; copy them so that stepping cannot alias
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    st[key] = value.clone()

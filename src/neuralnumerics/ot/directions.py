"""Directions on the unit sphere for sliced Wasserstein estimators: i.i.d. uniform, orthogonal blocks, or
randomised quasi-Monte Carlo.

Every kind gives directions that are each uniformly distributed on the sphere ``S^{d-1}`` (so
``E[theta theta^T] = I / d`` for each of them, which the control variates of
:func:`~neuralnumerics.ot.sliced_wasserstein` rely on); they differ in how the directions of one draw
depend on each other.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["random_directions", "DIRECTION_KINDS"]

DIRECTION_KINDS = ("uniform", "orthogonal", "qmc")


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return device if generator is None else generator.device


def random_directions(n: int, d: int, *, kind: str = "uniform", generator: torch.Generator | None = None,
                      dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` unit vectors in ``R^d``, each uniform on the sphere, as the rows of an ``(n, d)`` tensor.

    Kinds:

    * ``"uniform"``: independent, normalised standard Gaussian vectors (the papers' Monte Carlo).
    * ``"orthogonal"``: blocks of ``d`` orthonormal directions, each block the rows of an independent
      Haar-random rotation (QR of a Gaussian matrix with the signs of ``R``'s diagonal fixed); the last
      block is cut short when ``d`` does not divide ``n``. Directions within a block are exactly
      orthogonal, so they cover the sphere more evenly than independent ones.
    * ``"qmc"``: a scrambled Sobol sequence in ``[0, 1)^d`` (seeded from ``generator``) mapped through the
      inverse normal CDF and normalised: randomised quasi-Monte Carlo.

    Args:
        n: the number of directions (``>= 1``).
        d: the dimension (``>= 1``; ``"qmc"`` needs ``d <= 21201``, the Sobol engine's limit).
        kind: one of :data:`DIRECTION_KINDS`.
        generator: the random source (on any device; the draw is moved to ``device``). None uses torch's
            global generator.
        dtype, device: of the result (default: torch's default dtype, the CPU).

    Returns:
        ``(n, d)``, rows of unit norm.

    Raises:
        ValueError: ``n`` or ``d`` not a positive integer, an unknown ``kind``, ``d`` too large for
            ``"qmc"``.
    """
    who = "random_directions"
    for name, value in (("n", n), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    if kind not in DIRECTION_KINDS:
        raise ValueError(f"{who}: unknown kind {kind!r}; choose one of {', '.join(map(repr, DIRECTION_KINDS))}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    device = torch.device("cpu" if device is None else device)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    where = _draw_device(generator, device)
    if kind == "uniform":
        theta = torch.randn(n, d, generator=generator, dtype=work, device=where)
    elif kind == "orthogonal":
        blocks = []
        for start in range(0, n, d):
            A = torch.randn(d, d, generator=generator, dtype=work, device=where)
            Q, R = torch.linalg.qr(A)
            signs = torch.sign(torch.diagonal(R))
            signs[signs == 0] = 1
            blocks.append((Q * signs).mT[:min(d, n - start)])  # rows: orthonormal, Haar-distributed frame
        theta = torch.cat(blocks)
    else:
        limit = torch.quasirandom.SobolEngine.MAXDIM
        if d > limit:
            raise ValueError(f"{who}: kind='qmc' supports d <= {limit} (the Sobol engine's limit), got d={d}; use "
                             "kind='orthogonal' or 'uniform'")
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=where))
        engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed)
        u = engine.draw(n, dtype=torch.float64)
        tiny = 0.5 ** 53
        theta = torch.special.ndtri(u.clamp(tiny, 1 - tiny)).to(dtype=work, device=where)
    theta = theta / torch.linalg.vector_norm(theta, dim=-1, keepdim=True)
    return theta.to(dtype=dtype, device=device)

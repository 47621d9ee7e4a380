"""Families of sparse linear systems like those solved to make neural-operator training data.

Each generator draws N PDE instances (random coefficient fields, sources, wavenumbers, times),
discretises them with the 5-point finite-volume stencil on the unit square (``grid x grid`` interior
nodes, spacing ``h = 1 / (grid + 1)``, ``u = 0`` on the boundary) and returns a :class:`PDESystems`:
the systems as ``(SciPy CSR matrix, right-hand side tensor)`` pairs, and per-system features (the
parameters a neural operator would take as input) for :func:`~neuralnumerics.linalg.sequence.sort_systems`.
The families follow the SKR paper's benchmarks (Darcy flow, Poisson, Helmholtz, heat) at sizes a laptop
solves in seconds. Randomness comes only from the ``generator``/``seed`` given; nothing is downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["PDESystems", "gaussian_random_field", "darcy_flow", "poisson", "helmholtz", "heat"]


@dataclass
class PDESystems:
    """A family of linear systems drawn from one PDE.

    Attributes:
        name: the family (``"darcy"``, ``"poisson"``, ``"helmholtz"``, ``"heat"``).
        systems: N pairs ``(A, b)``: ``A`` a ``(n, n)`` SciPy CSR matrix (float64; every system has
            the same sparsity pattern), ``b`` a ``(n,)`` tensor, ``n = grid**2``, nodes in row-major order.
        features: ``(N, ...)`` float64 tensor, the parameters each system was made from, for sorting.
        parameters: the raw per-system draws, e.g. ``{"coefficient": (N, grid, grid)}``.
        grid: interior nodes per side.
        symmetric, positive_definite: structure of every matrix (tag operators with these).
    """

    name: str
    systems: list[tuple[sp.csr_matrix, torch.Tensor]]
    features: torch.Tensor
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)
    grid: int = 0
    symmetric: bool = True
    positive_definite: bool = True

    def __len__(self) -> int:
        return len(self.systems)

    def as_operators(self, *, device: torch.device | str | None = None) -> list[tuple]:
        """The systems with each matrix as a :class:`~neuralnumerics.linalg.SparseOperator` tagged with the
        family's structure (CG-type solvers refuse operators not tagged SPD), moved to ``device`` if given.
        """
        from ..linalg.operators import SparseOperator

        tags = dict(symmetric=self.symmetric, positive_definite=self.positive_definite)
        return [(SparseOperator.from_scipy(A, device=device, **tags), b if device is None else b.to(device))
                for A, b in self.systems]


def gaussian_random_field(n_samples: int, grid: int, *, alpha: float = 2.5, tau: float = 7.0,
                          generator: torch.Generator | None = None, seed: int | None = None,
                          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Samples of a zero-mean periodic Gaussian random field with covariance ``(-Laplacian + tau^2)^(-alpha)``.

    Drawn spectrally: Fourier coefficient ``k`` is a complex normal scaled by
    ``tau^(alpha - 1) (4 pi^2 |k|^2 + tau^2)^(-alpha / 2)``; the constant mode is zero. Larger ``alpha``
    gives smoother fields, larger ``tau`` shorter correlation lengths. This is the field family of the
    FNO/SKR Darcy data sets (``alpha=2``, ``tau=3``; SKR's Darcy and Helmholtz use 2.5 and 7).

    Args:
        n_samples, grid: output shape ``(n_samples, grid, grid)``.
        alpha, tau: smoothness and inverse length scale (positive).
        generator, seed: the randomness (see :func:`darcy_flow`).
        dtype: floating dtype of the result.

    Returns:
        Tensor ``(n_samples, grid, grid)``; the pointwise standard deviation is about 0.2 for the defaults.

    Raises:
        ValueError: on non-positive sizes or parameters, or both ``generator`` and ``seed``.

    References:
        Li et al. "Fourier neural operator for parametric partial differential equations", ICLR 2021
        (the data sets' field model).
    """
    _check_sizes(n_samples=n_samples, grid=grid)
    if not (alpha > 0 and tau > 0):
        raise ValueError(f"gaussian_random_field: alpha and tau must be positive, got alpha={alpha}, tau={tau}")
    gen = _generator(generator, seed)
    k = torch.fft.fftfreq(grid, d=1.0 / grid, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    scale = tau ** (alpha - 1) * (4 * math.pi ** 2 * k2 + tau ** 2) ** (-alpha / 2)
    scale[0, 0] = 0.0
    xi = torch.complex(torch.randn(n_samples, grid, grid, generator=gen, dtype=torch.float64),
                       torch.randn(n_samples, grid, grid, generator=gen, dtype=torch.float64))
    field_ = torch.fft.ifft2(xi * scale, norm="forward").real
    return field_.to(dtype)


def darcy_flow(n_systems: int = 100, grid: int = 32, *, coefficient: str = "lognormal", alpha: float = 2.5,
               tau: float = 7.0, contrast: tuple[float, float] = (12.0, 3.0), source: float = 1.0,
               generator: torch.Generator | None = None, seed: int | None = None,
               dtype: torch.dtype = torch.float64) -> PDESystems:
    """Darcy flow ``-div(a grad u) = f`` with a random permeability ``a`` per system (SPD systems).

    Args:
        n_systems, grid: N systems of ``grid**2`` unknowns.
        coefficient: ``"lognormal"``: ``a = exp(g)`` for a Gaussian random field ``g`` (the SKR paper's
            Darcy set); ``"piecewise"``: ``a = contrast[0]`` where ``g >= 0`` and ``contrast[1]`` elsewhere
            (the FNO Darcy set).
        alpha, tau: the field's parameters (:func:`gaussian_random_field`).
        contrast: the two values of the piecewise coefficient (positive).
        source: the constant forcing ``f``.
        generator, seed: the randomness: a ``torch.Generator`` (advanced by the call), or a seed for a
            fresh one; neither means seed 0; not both.
        dtype: dtype of the right-hand sides and features (matrices are float64).

    Returns:
        :class:`PDESystems` with ``features`` = the coefficient fields ``(N, grid, grid)`` and
        ``parameters = {"coefficient": ...}``.

    Raises:
        ValueError: on bad sizes, an unknown ``coefficient`` kind, non-positive contrast values, or both
            ``generator`` and ``seed``.

    References:
        Wang et al. "Accelerating data generation for neural operators via Krylov subspace recycling",
        ICLR 2024 (Darcy flow data set).
    """
    _check_sizes(n_systems=n_systems, grid=grid)
    if coefficient not in ("lognormal", "piecewise"):
        raise ValueError(f"darcy_flow: coefficient must be 'lognormal' or 'piecewise', got {coefficient!r}")
    if not (contrast[0] > 0 and contrast[1] > 0):
        raise ValueError(f"darcy_flow: contrast values must be positive, got {contrast}")
    g = gaussian_random_field(n_systems, grid, alpha=alpha, tau=tau, generator=_generator(generator, seed))
    a = g.exp() if coefficient == "lognormal" else torch.where(g >= 0, contrast[0], contrast[1])
    h = 1.0 / (grid + 1)
    b = torch.full((grid * grid,), float(source), dtype=dtype)
    systems = [(_diffusion_matrix(a[i].numpy(), h), b.clone()) for i in range(n_systems)]
    return PDESystems("darcy", systems, a.to(dtype), {"coefficient": a.to(dtype)}, grid)


def poisson(n_systems: int = 100, grid: int = 32, *, variation: float = 0.1, alpha: float = 2.5,
            tau: float = 7.0, generator: torch.Generator | None = None, seed: int | None = None,
            dtype: torch.dtype = torch.float64) -> PDESystems:
    """Poisson problems ``-div(a grad u) = f`` with a random source ``f`` and a mildly varying ``a`` (SPD).

    ``f`` is a Gaussian random field; ``a = exp(variation * g)`` for another field ``g``
    (``variation=0`` gives the Laplacian for every system, so only the right-hand sides differ).

    Args:
        n_systems, grid: N systems of ``grid**2`` unknowns.
        variation: amplitude of the log-coefficient (non-negative).
        alpha, tau: parameters of both fields.
        generator, seed, dtype: as in :func:`darcy_flow`.

    Returns:
        :class:`PDESystems` with ``features`` = ``(N, 2, grid, grid)``: the coefficient and the source,
        and ``parameters = {"coefficient": ..., "source": ...}``.

    Raises:
        ValueError: on bad sizes, a negative ``variation``, or both ``generator`` and ``seed``.
    """
    _check_sizes(n_systems=n_systems, grid=grid)
    if not variation >= 0:
        raise ValueError(f"poisson: variation must be non-negative, got {variation}")
    gen = _generator(generator, seed)
    a = (variation * gaussian_random_field(n_systems, grid, alpha=alpha, tau=tau, generator=gen)).exp()
    f = gaussian_random_field(n_systems, grid, alpha=alpha, tau=tau, generator=gen)
    h = 1.0 / (grid + 1)
    systems = [(_diffusion_matrix(a[i].numpy(), h), f[i].reshape(-1).to(dtype)) for i in range(n_systems)]
    features = torch.stack([a, f], dim=1).to(dtype)
    return PDESystems("poisson", systems, features, {"coefficient": a.to(dtype), "source": f.to(dtype)}, grid)


def helmholtz(n_systems: int = 100, grid: int = 32, *, wavenumber: tuple[float, float] = (4.0, 8.0),
              alpha: float = 2.5, tau: float = 7.0, source: float = 1.0,
              generator: torch.Generator | None = None, seed: int | None = None,
              dtype: torch.dtype = torch.float64) -> PDESystems:
    """Helmholtz problems ``-div(a grad u) - k^2 u = f`` with random ``a = exp(g)`` and wavenumber ``k``.

    The matrices are symmetric; once ``k^2`` passes the smallest eigenvalue of ``-div(a grad .)``
    (about ``2 pi^2 ~ 20`` for ``a ~ 1``) they are indefinite, so CG does not apply and unpreconditioned
    GMRES slows down: the regime where deflating the eigenvalues nearest zero pays most.

    Args:
        n_systems, grid: N systems of ``grid**2`` unknowns.
        wavenumber: ``k`` is uniform in this interval (``0 <= k_min <= k_max``).
        alpha, tau: the coefficient field's parameters.
        source: the constant forcing ``f``.
        generator, seed, dtype: as in :func:`darcy_flow`.

    Returns:
        :class:`PDESystems` (``positive_definite=False``) with ``features`` = ``(N, 2, grid, grid)``: the
        coefficient and ``(k / k_max)^2`` broadcast over the grid, and ``parameters = {"coefficient": ...,
        "wavenumber": (N,)}``.

    Raises:
        ValueError: on bad sizes, a bad ``wavenumber`` interval, or both ``generator`` and ``seed``.

    References:
        Wang et al. "Accelerating data generation for neural operators via Krylov subspace recycling",
        ICLR 2024 (Helmholtz data set: log-normal coefficient, random wavenumber).
    """
    _check_sizes(n_systems=n_systems, grid=grid)
    k_min, k_max = (float(v) for v in wavenumber)
    if not 0 <= k_min <= k_max or k_max == 0:
        raise ValueError(f"helmholtz: wavenumber must be an interval (k_min, k_max) with 0 <= k_min <= k_max, "
                         f"k_max > 0; got {wavenumber}")
    gen = _generator(generator, seed)
    a = gaussian_random_field(n_systems, grid, alpha=alpha, tau=tau, generator=gen).exp()
    k = k_min + (k_max - k_min) * torch.rand(n_systems, generator=gen, dtype=torch.float64)
    h = 1.0 / (grid + 1)
    eye = sp.identity(grid * grid, format="csr")
    b = torch.full((grid * grid,), float(source), dtype=dtype)
    systems = []
    for i in range(n_systems):
        A = (_diffusion_matrix(a[i].numpy(), h) - float(k[i]) ** 2 * eye).tocsr()
        A.sort_indices()
        systems.append((A, b.clone()))
    ksq = ((k / k_max) ** 2)[:, None, None].expand(n_systems, grid, grid)
    features = torch.stack([a, ksq], dim=1).to(dtype)
    return PDESystems("helmholtz", systems, features, {"coefficient": a.to(dtype), "wavenumber": k.to(dtype)},
                      grid, symmetric=True, positive_definite=False)


def heat(n_systems: int = 100, grid: int = 32, *, dt: float = 0.01, amplitude: float = 1.0, alpha: float = 2.5,
         tau: float = 7.0, generator: torch.Generator | None = None, seed: int | None = None,
         dtype: torch.dtype = torch.float64) -> PDESystems:
    """Implicit-Euler steps of ``u_t = div(a(x, t) grad u) + f(x, t)`` at random times (SPD systems).

    The conductivity moves along a smooth closed path in field space,
    ``a(x, t) = exp(amplitude (cos(pi t) g0(x) + sin(pi t) g1(x)))`` for two Gaussian random fields, and
    a Gaussian heat source (width 0.1, strength 10) circles the centre of the square. System i is the
    step ``(I + dt K(a(t_i))) u = u0 + dt f(t_i)`` from the fixed state ``u0 = sin(pi x) sin(pi y)``, at a
    time ``t_i`` uniform in ``[0, 1)``, drawn in random order: sorted by their conductivity, the systems
    line up by time, which is what the SKR sorting step recovers.

    Args:
        n_systems, grid: N systems of ``grid**2`` unknowns.
        dt: the time step (positive); larger steps give harder (worse conditioned) systems.
        amplitude: size of the log-conductivity (non-negative).
        alpha, tau: the fields' parameters.
        generator, seed, dtype: as in :func:`darcy_flow`.

    Returns:
        :class:`PDESystems` with ``features`` = the conductivity fields ``(N, grid, grid)`` and
        ``parameters = {"time": (N,), "coefficient": (N, grid, grid)}``.

    Raises:
        ValueError: on bad sizes, a non-positive ``dt``, a negative ``amplitude``, or both ``generator``
            and ``seed``.

    References:
        Wang et al. "Accelerating data generation for neural operators via Krylov subspace recycling",
        ICLR 2024 (thermal problem data set).
    """
    _check_sizes(n_systems=n_systems, grid=grid)
    if not dt > 0:
        raise ValueError(f"heat: dt must be positive, got {dt}")
    if not amplitude >= 0:
        raise ValueError(f"heat: amplitude must be non-negative, got {amplitude}")
    gen = _generator(generator, seed)
    g = gaussian_random_field(2, grid, alpha=alpha, tau=tau, generator=gen)
    t = torch.rand(n_systems, generator=gen, dtype=torch.float64)
    phase = math.pi * t[:, None, None]
    a = (amplitude * (torch.cos(phase) * g[0] + torch.sin(phase) * g[1])).exp()
    h = 1.0 / (grid + 1)
    xs = torch.arange(1, grid + 1, dtype=torch.float64) * h
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    u0 = (torch.sin(math.pi * X) * torch.sin(math.pi * Y)).reshape(-1)
    eye = sp.identity(grid * grid, format="csr")
    systems = []
    for i in range(n_systems):
        cx = 0.5 + 0.3 * math.cos(2 * math.pi * float(t[i]))
        cy = 0.5 + 0.3 * math.sin(2 * math.pi * float(t[i]))
        f = 10.0 * torch.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * 0.1 ** 2)).reshape(-1)
        A = (eye + dt * _diffusion_matrix(a[i].numpy(), h)).tocsr()
        A.sort_indices()
        systems.append((A, (u0 + dt * f).to(dtype)))
    return PDESystems("heat", systems, a.to(dtype), {"time": t.to(dtype), "coefficient": a.to(dtype)}, grid)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _diffusion_matrix(a: np.ndarray, h: float) -> sp.csr_matrix:
    """``-div(a grad .)`` on the interior nodes: 5-point finite volumes, harmonic means of ``a`` on the faces.

    ``a`` is ``(g, g)`` (nodal values); boundary faces (``u = 0`` one spacing outside) use the node's own
    value. The result is a symmetric M-matrix, scaled by ``1 / h^2``, in canonical CSR form.
    """
    g = a.shape[0]
    a = np.asarray(a, dtype=np.float64)
    idx = np.arange(g * g).reshape(g, g)
    fx = 2 * a[1:, :] * a[:-1, :] / (a[1:, :] + a[:-1, :])  # faces between rows i and i+1
    fy = 2 * a[:, 1:] * a[:, :-1] / (a[:, 1:] + a[:, :-1])  # faces between columns j and j+1
    diag = np.zeros((g, g))
    diag[:-1, :] += fx
    diag[1:, :] += fx
    diag[:, :-1] += fy
    diag[:, 1:] += fy
    diag[0, :] += a[0, :]
    diag[-1, :] += a[-1, :]
    diag[:, 0] += a[:, 0]
    diag[:, -1] += a[:, -1]
    rows = np.concatenate([idx[:-1, :].ravel(), idx[1:, :].ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel(),
                           idx.ravel()])
    cols = np.concatenate([idx[1:, :].ravel(), idx[:-1, :].ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel(),
                           idx.ravel()])
    vals = np.concatenate([-fx.ravel(), -fx.ravel(), -fy.ravel(), -fy.ravel(), diag.ravel()]) / h ** 2
    A = sp.csr_matrix((vals, (rows, cols)), shape=(g * g, g * g))
    A.sum_duplicates()
    A.sort_indices()
    return A


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("give a generator or a seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")

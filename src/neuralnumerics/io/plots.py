"""Pictures of runs: frames of 1D fields and animations. matplotlib and Pillow are imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["plot_field_1d", "plot_error_curve", "write_animation"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("pictures need matplotlib: pip install 'neuralnumerics[plot]'") from exc
    return plt


def _save(plt, fig, path) -> Path:
    """Lay out, write and close ``fig``; returns ``path`` as a Path."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_field_1d(path: str | Path, x: np.ndarray, values: np.ndarray, *, exact: np.ndarray | None = None,
                  title: str = "", ylim: tuple[float, float] | None = None, label: str = "INSR") -> Path:
    """Save a line plot of a 1D field (and the exact solution, dashed) to ``path`` (PNG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.plot(x, values, color="C0", lw=1.8, label=label)
    if exact is not None:
        ax.plot(x, exact, color="k", lw=1.0, ls="--", label="exact")
        ax.legend(loc="upper right", frameon=False)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlim(float(x.min()), float(x.max()))
    ax.set_xlabel("x")
    ax.set_ylabel("u")
    ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def plot_error_curve(path: str | Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], *,
                     xlabel: str = "t", ylabel: str = "relative L2 error", title: str = "") -> Path:
    """Save error-versus-time curves (log scale) to ``path``; ``curves`` maps a label to ``(t, error)``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for label, (t, err) in curves.items():
        ax.semilogy(t, err, lw=1.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False)
    return _save(plt, fig, path)


def plot_clouds_3d(path: str | Path, clouds: dict[str, np.ndarray], target: np.ndarray, *, limits=None,
                   title: str = "") -> Path:
    """Save one 3D scatter panel per cloud (``label -> (n, 3)``), each over the ``target`` cloud in grey."""
    plt = _pyplot()
    k = len(clouds)
    fig = plt.figure(figsize=(3.6 * k, 3.8), dpi=100)
    for i, (label, pts) in enumerate(clouds.items()):
        ax = fig.add_subplot(1, k, i + 1, projection="3d")
        ax.scatter(*target.T, s=1, c="0.7", depthshade=False)
        ax.scatter(*pts.T, s=1, c="C0", depthshade=False)
        if limits is not None:
            lo, hi = limits
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_zlim(lo[2], hi[2])
        ax.set_title(label, fontsize=9)
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_zticklabels([])
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_grid_field(path: str | Path, values: np.ndarray, *, mask: np.ndarray | None = None, title: str = "",
                    label: str = "") -> Path:
    """Save a 2D array as an image with a colour bar (axis 0 horizontal, axis 1 up); ``mask`` cells are grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=100)
    shown = np.ma.masked_array(values, mask=mask) if mask is not None else values
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.6")
    limit = float(np.abs(shown).max()) or 1.0
    image = ax.imshow(np.ma.transpose(shown) if mask is not None else shown.T, origin="lower", cmap=cmap,
                      vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(plt, fig, path)


def _draw_obstacles_2d(ax, obstacles, limits) -> None:
    from ..pde.obstacles import Bowl, Plane, Sphere

    (x0, y0), (x1, y1) = limits
    for ob in obstacles:
        if isinstance(ob, Plane):
            ax.fill_between([x0, x1], [y0, y0], [ob.height, ob.height], color="0.75", zorder=0)
        elif isinstance(ob, Sphere):
            from matplotlib.patches import Circle

            ax.add_patch(Circle(ob.center[:2], ob.radius, color="0.75", zorder=0))
        elif isinstance(ob, Bowl):
            t = np.linspace(np.pi, 2 * np.pi, 100)
            ax.plot(ob.center[0] + ob.radius * np.cos(t), ob.center[1] + ob.radius * np.sin(t), color="0.4", lw=2)


def plot_deformed_2d(path: str | Path, vertices: np.ndarray, triangles: np.ndarray, strain: np.ndarray, *,
                     obstacles=(), markers: np.ndarray | None = None, limits=None, vmax: float | None = None,
                     title: str = "") -> Path:
    """Save a deformed 2D body: triangles ``(E, 3)`` over deformed ``vertices`` ``(V, 2)`` coloured by a
    per-triangle ``strain`` ``(E,)``, with obstacles (planes, discs, bowls) in grey and optional ``markers``
    (``(m, 2)``, e.g. constraint targets) as small black dots; ``limits`` is ``((x0, y0), (x1, y1))``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=100)
    if limits is None:
        lo, hi = vertices.min(0), vertices.max(0)
        pad = 0.1 * float((hi - lo).max())
        limits = (lo - pad, hi + pad)
    _draw_obstacles_2d(ax, obstacles, limits)
    art = ax.tripcolor(vertices[:, 0], vertices[:, 1], triangles, facecolors=strain, cmap="viridis", vmin=0,
                       vmax=vmax if vmax else max(float(strain.max()), 1e-6), edgecolors="none")
    if markers is not None and len(markers):
        ax.plot(markers[:, 0], markers[:, 1], "k.", ms=1.5)
    fig.colorbar(art, ax=ax, label="strain |F - R|")
    ax.set_xlim(limits[0][0], limits[1][0])
    ax.set_ylim(limits[0][1], limits[1][1])
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def plot_points_3d(path: str | Path, points: np.ndarray, strain: np.ndarray, *, floor: float | None = None,
                   limits=None, vmax: float | None = None, title: str = "") -> Path:
    """Save a rendered view of deformed surface points ``(n, 3)`` (z up) coloured by ``strain`` ``(n,)``, over
    a grey floor at height ``floor``; ``limits`` is ``(lo (3,), hi (3,))``."""
    plt = _pyplot()
    fig = plt.figure(figsize=(5.6, 4.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    lo, hi = limits if limits is not None else (points.min(0), points.max(0))
    if floor is not None:
        xx, yy = np.meshgrid([lo[0], hi[0]], [lo[1], hi[1]])
        ax.plot_surface(xx, yy, np.full_like(xx, floor), color="0.8", alpha=0.5, shade=False)
    art = ax.scatter(*points.T, c=strain, s=3, cmap="viridis", vmin=0,
                     vmax=vmax if vmax else max(float(strain.max()), 1e-6), depthshade=True)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.set_box_aspect([float(h - l) for l, h in zip(lo, hi)])
    ax.view_init(elev=18, azim=-60)
    fig.colorbar(art, ax=ax, label="strain |F - R|", shrink=0.7)
    ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def write_animation(frames: Sequence[str | Path], path: str | Path, *, fps: int = 10) -> Path | None:
    """Join PNG frames into an animated GIF at ``path``; returns ``None`` when there are no frames."""
    if not frames:
        return None
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise ImportError("animations need Pillow: pip install 'neuralnumerics[plot]'") from exc
    images = [Image.open(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / max(fps, 1)), loop=0)
    return Path(path)

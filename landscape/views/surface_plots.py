"""Figures of surface files (numpy, h5py and matplotlib only; no torch), each as PNG, PDF and CSV.

1D: loss and accuracy along the line, several files overlaid (`<stems>_1d`). 2D, per file:
contour lines with the minimum marked and, for PCA directions, the trajectory with one marker per
snapshot (Li et al. Fig. 9) (`_contour`), filled contour (`_filled`), heatmap (`_heatmap`) and a 3D
surface (`_3d`); several 2D files also side by side on shared contour levels (`<stems>_contours`),
Li et al.'s sharp-versus-flat comparison.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from landscape.views.plots import save_figure  # noqa: E402
from landscape.files.surface_file import Surface  # noqa: E402

LEVELS = 30


def plot_surfaces(surfaces: list[Surface], out_dir: str | Path) -> list[Path]:
    """Draw every figure for `surfaces` into `out_dir`; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    written: list[Path] = []
    lines = [s for s in surfaces if s.dims == 1]
    planes = [s for s in surfaces if s.dims == 2]
    if lines:
        written += line_figure(lines, out_dir / ("_vs_".join(s.path.stem for s in lines) + "_1d"))
    for surface in planes:
        stem = out_dir / surface.path.stem
        written += contour_figure(surface, stem, filled=False)
        written += contour_figure(surface, stem, filled=True)
        written += heatmap_figure(surface, stem)
        written += surface_3d_figure(surface, stem)
    if len(planes) > 1:
        written += side_by_side_figure(planes, out_dir / ("_vs_".join(s.path.stem for s in planes) + "_contours"))
    return written


def describe_axes(surface: Surface) -> tuple[str, str]:
    kind = surface.attrs.get("directions", "random")
    if kind == "pca":
        ev = surface.explained_variance if surface.explained_variance is not None else [np.nan, np.nan]
        return tuple(f"PC{i + 1} ({100 * float(ev[i]):.1f}% of variance)" for i in range(2))  # type: ignore[return-value]
    if kind == "between":
        ends = str(surface.attrs.get("to", "")).split(",")
        return tuple(f"towards {e} (0: this run, 1: {e})" for e in ends + ["", ""])[:2]  # type: ignore[return-value]
    return (f"direction x ({surface.attrs.get('norm', 'filter')}-normalised)",
            f"direction y ({surface.attrs.get('norm', 'filter')}-normalised)")


def title(surface: Surface) -> str:
    return (f"{surface.label}: {surface.attrs.get('data', 'train')} loss, {surface.attrs.get('images')} images, "
            f"BN {surface.attrs.get('bn', 'eval')}")


def line_figure(surfaces: list[Surface], stem: Path) -> list[Path]:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = []
    for surface in surfaces:
        ax_loss.plot(surface.x, surface.loss, label=surface.label)
        ax_acc.plot(surface.x, 100 * surface.acc, label=surface.label)
        rows += [(surface.label, float(x), float(l), float(a)) for x, l, a in zip(surface.x, surface.loss, surface.acc)]
    ax_loss.set_xlabel(describe_axes(surfaces[0])[0])
    ax_acc.set_xlabel(describe_axes(surfaces[0])[0])
    ax_loss.set_ylabel(f"{surfaces[0].attrs.get('data', 'train')} loss (cross-entropy)")
    ax_acc.set_ylabel(f"{surfaces[0].attrs.get('data', 'train')} accuracy (%)")
    ax_loss.set_title("loss along the line")
    ax_acc.set_title("accuracy along the line")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize="small")
    return save_figure(fig, stem, ("label", "x", "loss", "acc"), rows)


def grid_rows(surface: Surface) -> list[tuple]:
    return [(float(x), float(y), float(surface.loss[iy, ix]), float(surface.acc[iy, ix]))
            for iy, y in enumerate(surface.y) for ix, x in enumerate(surface.x)]


def levels_of(losses: list[np.ndarray]) -> np.ndarray:
    """Contour levels from the lowest loss to the 95th percentile (higher values are clipped)."""
    values = np.concatenate([loss[np.isfinite(loss)].ravel() for loss in losses]) if losses else np.zeros(1)
    if values.size == 0:
        return np.linspace(0, 1, LEVELS)
    low, high = float(values.min()), float(np.percentile(values, 95))
    return np.linspace(low, high if high > low else low + 1e-6, LEVELS)


def draw_plane(ax, surface: Surface, levels: np.ndarray, filled: bool):
    """Contours of one surface on `ax`, the minimum marked, the trajectory over them (PCA)."""
    grid_x, grid_y = np.meshgrid(surface.x, surface.y)
    loss = np.clip(surface.loss, None, levels[-1])
    if filled:
        drawn = ax.contourf(grid_x, grid_y, loss, levels=levels, cmap="viridis")
    else:
        drawn = ax.contour(grid_x, grid_y, loss, levels=levels, cmap="viridis", linewidths=0.9)
        ax.clabel(drawn, drawn.levels[::6], inline=True, fontsize=7, fmt="%.2f")
    if np.isfinite(surface.loss).any():
        iy, ix = np.unravel_index(np.nanargmin(surface.loss), surface.loss.shape)
        ax.plot(surface.x[ix], surface.y[iy], marker="*", color="red", markersize=12, linestyle="none",
                label=f"minimum {surface.loss[iy, ix]:.3f}")
    if surface.trajectory is not None and "y" in surface.trajectory:
        ax.plot(surface.trajectory["x"], surface.trajectory["y"], marker="o", color="black", markersize=4,
                linewidth=1, label="trajectory (one marker per snapshot)")
        for epoch, x, y in zip(surface.trajectory["epoch"], surface.trajectory["x"], surface.trajectory["y"]):
            ax.annotate(str(int(epoch)), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    xlabel, ylabel = describe_axes(surface)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="x-small", loc="best", framealpha=0.8)
    return drawn


def contour_figure(surface: Surface, stem: Path, *, filled: bool) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    drawn = draw_plane(ax, surface, levels_of([surface.loss]), filled)
    fig.colorbar(drawn, ax=ax, label="loss")
    ax.set_title(title(surface), fontsize="small")
    return save_figure(fig, stem.with_name(stem.name + ("_filled" if filled else "_contour")),
                       ("x", "y", "loss", "acc"), grid_rows(surface))


def heatmap_figure(surface: Surface, stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    extent = (surface.x[0], surface.x[-1], surface.y[0], surface.y[-1])
    image = ax.imshow(np.clip(surface.loss, None, levels_of([surface.loss])[-1]), origin="lower", extent=extent,
                      aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="loss")
    xlabel, ylabel = describe_axes(surface)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title(surface), fontsize="small")
    return save_figure(fig, stem.with_name(stem.name + "_heatmap"), ("x", "y", "loss", "acc"), grid_rows(surface))


def surface_3d_figure(surface: Surface, stem: Path) -> list[Path]:
    fig = plt.figure(figsize=(7, 5.6))
    ax = fig.add_subplot(projection="3d")
    grid_x, grid_y = np.meshgrid(surface.x, surface.y)
    cap = levels_of([surface.loss])[-1]
    ax.plot_surface(grid_x, grid_y, np.clip(surface.loss, None, cap), cmap="viridis", linewidth=0, antialiased=True)
    xlabel, ylabel = describe_axes(surface)
    ax.set_xlabel(xlabel, fontsize="x-small")
    ax.set_ylabel(ylabel, fontsize="x-small")
    ax.set_zlabel("loss")
    ax.set_title(title(surface), fontsize="small")
    return save_figure(fig, stem.with_name(stem.name + "_3d"), ("x", "y", "loss", "acc"), grid_rows(surface))


def side_by_side_figure(surfaces: list[Surface], stem: Path) -> list[Path]:
    levels = levels_of([s.loss for s in surfaces])
    fig, axes = plt.subplots(1, len(surfaces), figsize=(5.6 * len(surfaces), 5), squeeze=False)
    drawn = None
    rows = []
    for ax, surface in zip(axes[0], surfaces):
        drawn = draw_plane(ax, surface, levels, filled=False)
        ax.set_title(surface.label, fontsize="small")
        rows += [(surface.label, *row) for row in grid_rows(surface)]
    fig.colorbar(drawn, ax=list(axes[0]), label="loss (shared levels)")
    fig.suptitle("same grid and contour levels: a wider basin is a flatter minimum (Li et al. 2018)", fontsize="small")
    return save_figure(fig, stem, ("label", "x", "y", "loss", "acc"), rows)

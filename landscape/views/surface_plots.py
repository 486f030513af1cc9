"""Figures of surface files (numpy, h5py and matplotlib only; no torch), each as PNG, PDF and CSV.

1D: the loss and each metric along the line, several files overlaid (`<stems>_1d`). 2D, per file: contour
lines with the minimum marked and, for PCA directions, the trajectory with one marker per snapshot (Li et al.
Fig. 9) (`_contour`), filled contour (`_filled`), heatmap (`_heatmap`) and a 3D surface (`_3d`); several 2D
files also side by side on shared contour levels (`<stems>_contours`), Li et al.'s sharp-versus-flat view.
Colours span the lowest loss to the 95th percentile; higher values are drawn in the top colour, and every
figure that does so says it (with the true maximum). Points not computed (a partial file) or whose loss is not
finite are left blank, and the title says how many.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from landscape.files.surface_file import Surface
from landscape.views.analysis import at_chance, chance_loss
from landscape.views.figures import category_colours, joined_stem, save_figure, setup, short_stem

LEVELS = 30
CLIP_PERCENTILE = 95


def plot_surfaces(surfaces: list[Surface], out_dir: str | Path) -> list[Path]:
    """Draw every figure for `surfaces` into `out_dir`; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup()
    written: list[Path] = []
    lines = [s for s in surfaces if s.dims == 1]
    planes = [s for s in surfaces if s.dims == 2]
    if lines:
        written += line_figure(lines, out_dir / joined_stem([s.path.stem for s in lines], "1d"))
    for surface in planes:
        stem = out_dir / short_stem(surface.path.stem)
        if contourable(surface):
            written += contour_figure(surface, stem, filled=False)
            written += contour_figure(surface, stem, filled=True)
            written += surface_3d_figure(surface, stem)
        written += heatmap_figure(surface, stem)
    contoured = [s for s in planes if contourable(s)]
    if len(contoured) > 1:
        written += side_by_side_figure(contoured, out_dir / joined_stem([s.path.stem for s in contoured], "contours"))
    return written


def contourable(surface: Surface) -> bool:
    """Contours and a 3D surface need at least 2 points along each direction; a thinner plane gets its heatmap."""
    return min(len(surface.x), len(surface.y)) >= 2


def thin_note(surface: Surface) -> str:
    """Says why a plane of fewer than 2 points along a direction has no contour or 3D figure ('' otherwise)."""
    if contourable(surface):
        return ""
    return f"{len(surface.x)} x {len(surface.y)} points: too few for contours or a 3D view, shown as a heatmap"


def axis_labels(surface: Surface) -> list[str]:
    """What each direction is, one label per dimension."""
    kind = surface.attrs.get("directions", "random")
    if kind == "pca":
        ev = surface.explained_variance if surface.explained_variance is not None else []
        return [f"PC{i + 1}" + (f" ({100 * float(ev[i]):.1f}% of variance)" if i < len(ev) else "")
                for i in range(surface.dims)]
    if kind == "between":
        ends = [e for e in str(surface.attrs.get("to", "")).split(",") if e] or ["the end point"]
        return [f"towards {ends[min(i, len(ends) - 1)]} (0: the centre, 1: the end)" for i in range(surface.dims)]
    if kind == "given":
        return [f"direction {name} (as given)" for name in ("x", "y")[:surface.dims]]
    norm = surface.attrs.get("norm", "filter")
    return [f"direction {name} ({norm}-normalised)" for name in ("x", "y")[:surface.dims]]


def missing_note(surface: Surface) -> str:
    """What the figure leaves blank, in words ('' when nothing)."""
    notes = []
    if not surface.done.all():
        notes.append(f"partial: {int(surface.done.sum())} of {surface.done.size} points computed")
    if surface.nonfinite:
        notes.append(f"{surface.nonfinite} point(s) with a non-finite loss left blank")
    return "; ".join(notes)


def centre_loss(surface: Surface) -> float:
    """The loss at the grid point nearest the centre (coordinates 0, 0)."""
    ix = int(np.argmin(np.abs(surface.x)))
    if surface.dims == 1:
        return float(finite_loss(surface)[ix])
    return float(finite_loss(surface)[int(np.argmin(np.abs(surface.y))), ix])


def chance_note(surface: Surface) -> str:
    """Says when the centre's loss is at chance level (ln of the classes the file records), '' otherwise."""
    classes = surface.attrs.get("num_classes")
    if not classes or not at_chance(centre_loss(surface), int(classes)):
        return ""
    return f"at chance loss (ln {int(classes)} = {chance_loss(int(classes)):.3f}): not a trained minimum"


def title(surface: Surface) -> str:
    notes = [note for note in (missing_note(surface), chance_note(surface)) if note]
    return "\n".join([f"{surface.label}: {surface.attrs.get('data', 'train')} loss, {surface.attrs.get('images')} "
                      f"images, BN {surface.attrs.get('bn', 'eval')}", *notes])


def finite_loss(surface: Surface) -> np.ndarray:
    """The loss with points not done or not finite as NaN (drawn blank)."""
    return np.where(surface.done & np.isfinite(surface.loss), surface.loss, np.nan)


def line_figure(surfaces: list[Surface], stem: Path) -> list[Path]:
    names = sorted({name for s in surfaces for name in s.metrics})
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(5.5 * (1 + len(names)), 4.2), squeeze=False)
    rows = []
    for surface, colour in zip(surfaces, category_colours(len(surfaces))):
        loss = finite_loss(surface)
        axes[0, 0].plot(surface.x, loss, marker="." if len(surface.x) <= 60 else None, color=colour,
                        label=surface.label + (f" ({missing_note(surface)})" if missing_note(surface) else ""))
        for ax, name in zip(axes[0, 1:], names):
            if name in surface.metrics:
                values = surface.metrics[name] * (100 if name == "acc" else 1)
                ax.plot(surface.x, np.where(np.isfinite(loss), values, np.nan), color=colour, label=surface.label)
        rows += [(surface.label, float(x), float(l), *(float(surface.metrics[n][i]) if n in surface.metrics
                                                        else float("nan") for n in names))
                 for i, (x, l) in enumerate(zip(surface.x, surface.loss))]
    xlabel = axis_labels(surfaces[0])[0]
    data = surfaces[0].attrs.get("data", "train")
    axes[0, 0].set(xlabel=xlabel, ylabel=f"{data} loss", title="loss along the line")
    for ax, name in zip(axes[0, 1:], names):
        ax.set(xlabel=xlabel, ylabel=f"{data} accuracy (%)" if name == "acc" else f"{data} {name}",
               title=f"{'accuracy' if name == 'acc' else name} along the line")
    for ax in axes[0]:
        ax.legend(fontsize="small")
    return save_figure(fig, stem, ("label", "x", "loss", *names), rows)


def grid_rows(surface: Surface) -> list[tuple]:
    names = list(surface.metrics)
    return [(float(x), float(y), float(surface.loss[iy, ix]), *(float(surface.metrics[n][iy, ix]) for n in names))
            for iy, y in enumerate(surface.y) for ix, x in enumerate(surface.x)]


def grid_header(surface: Surface) -> tuple[str, ...]:
    return ("x", "y", "loss", *surface.metrics)


def levels_of(losses: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Contour levels from the lowest loss to the 95th percentile, and the true maximum (above the levels when
    higher values are clipped)."""
    values = np.concatenate([loss[np.isfinite(loss)].ravel() for loss in losses]) if losses else np.zeros(0)
    if values.size == 0:
        return np.linspace(0, 1, LEVELS), float("nan")
    low, high = float(values.min()), float(np.percentile(values, CLIP_PERCENTILE))
    return np.linspace(low, high if high > low else low + 1e-6, LEVELS), float(values.max())


def clip_label(levels: np.ndarray, maximum: float) -> str:
    """The colour bar's label: says when values above the top level are drawn in the top colour."""
    if np.isfinite(maximum) and maximum > levels[-1] * (1 + 1e-9):
        return f"loss (clipped at p{CLIP_PERCENTILE} = {levels[-1]:.3g}; max {maximum:.3g})"
    return "loss"


def draw_plane(ax, surface: Surface, levels: np.ndarray, filled: bool):
    """Contours of one surface on `ax`, the minimum marked, the trajectory over them (PCA)."""
    grid_x, grid_y = np.meshgrid(surface.x, surface.y)
    loss = finite_loss(surface)
    shown = np.clip(loss, None, levels[-1])
    if filled:
        drawn = ax.contourf(grid_x, grid_y, shown, levels=levels, cmap="viridis")
    else:
        drawn = ax.contour(grid_x, grid_y, shown, levels=levels, cmap="viridis", linewidths=0.9)
        ax.clabel(drawn, drawn.levels[::6], inline=True, fontsize=7, fmt="%.2f")
    if np.isfinite(loss).any():
        iy, ix = np.unravel_index(np.nanargmin(loss), loss.shape)
        ax.plot(surface.x[ix], surface.y[iy], marker="*", color="red", markersize=12, linestyle="none",
                label=f"minimum {loss[iy, ix]:.3f}")
    if surface.trajectory is not None and "y" in surface.trajectory:
        ax.plot(surface.trajectory["x"], surface.trajectory["y"], marker="o", color="black", markersize=4,
                linewidth=1, label="trajectory (one marker per snapshot)")
        for epoch, x, y in zip(surface.trajectory["epoch"], surface.trajectory["x"], surface.trajectory["y"]):
            ax.annotate(str(int(epoch)), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    xlabel, ylabel = axis_labels(surface)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="x-small", loc="best", framealpha=0.8)
    return drawn


def contour_figure(surface: Surface, stem: Path, *, filled: bool) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6.6, 5.4))
    levels, maximum = levels_of([finite_loss(surface)])
    drawn = draw_plane(ax, surface, levels, filled)
    fig.colorbar(drawn, ax=ax, label=clip_label(levels, maximum))
    ax.set_title(title(surface), fontsize="small")
    return save_figure(fig, stem.with_name(stem.name + ("_filled" if filled else "_contour")), grid_header(surface),
                       grid_rows(surface))


def heatmap_figure(surface: Surface, stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6.6, 5.4))
    extent = (*half_step_edges(surface.x), *half_step_edges(surface.y))
    levels, maximum = levels_of([finite_loss(surface)])
    image = ax.imshow(np.clip(finite_loss(surface), None, levels[-1]), origin="lower", extent=extent, aspect="auto",
                      cmap="viridis")
    fig.colorbar(image, ax=ax, label=clip_label(levels, maximum))
    xlabel, ylabel = axis_labels(surface)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title(surface) + (f"\n{thin_note(surface)}" if thin_note(surface) else ""), fontsize="small")
    return save_figure(fig, stem.with_name(stem.name + "_heatmap"), grid_header(surface), grid_rows(surface))


def half_step_edges(coordinates: np.ndarray) -> tuple[float, float]:
    """The outer edges of the cells centred on the first and last coordinate (a lone point gets a cell of 1)."""
    step = float(coordinates[1] - coordinates[0]) if len(coordinates) > 1 else 1.0
    return float(coordinates[0]) - step / 2, float(coordinates[-1]) + step / 2


def surface_3d_figure(surface: Surface, stem: Path) -> list[Path]:
    fig = plt.figure(figsize=(7.5, 6))
    ax = fig.add_subplot(projection="3d")
    grid_x, grid_y = np.meshgrid(surface.x, surface.y)
    levels, maximum = levels_of([finite_loss(surface)])
    ax.plot_surface(grid_x, grid_y, np.clip(finite_loss(surface), None, levels[-1]), cmap="viridis", linewidth=0,
                    antialiased=True)
    xlabel, ylabel = axis_labels(surface)
    ax.set_xlabel(xlabel.split(" (")[0], fontsize="x-small", labelpad=6)
    ax.set_ylabel(ylabel.split(" (")[0], fontsize="x-small", labelpad=6)
    ax.set_zlabel(clip_label(levels, maximum).split(" (")[0], fontsize="x-small", labelpad=6)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(plt.MaxNLocator(4))  # few ticks: the labels of a small 3D box do not overlap
    ax.tick_params(labelsize=7, pad=1)
    clipped = clip_label(levels, maximum)
    ax.set_title(title(surface) + (f"\n{clipped}" if clipped != "loss" else ""), fontsize="x-small")
    return save_figure(fig, stem.with_name(stem.name + "_3d"), grid_header(surface), grid_rows(surface))


def side_by_side_figure(surfaces: list[Surface], stem: Path) -> list[Path]:
    levels, maximum = levels_of([finite_loss(s) for s in surfaces])
    fig, axes = plt.subplots(1, len(surfaces), figsize=(5.6 * len(surfaces) + 1.2, 5), squeeze=False,
                             layout="constrained")
    drawn = None
    rows = []
    untrained = []
    for ax, surface in zip(axes[0], surfaces):
        drawn = draw_plane(ax, surface, levels, filled=False)
        notes = [note for note in (missing_note(surface), chance_note(surface)) if note]
        untrained += [surface.label] if chance_note(surface) else []
        ax.set_title("\n".join([surface.label, *notes]), fontsize="small")
        rows += [(surface.label, *row[:3]) for row in grid_rows(surface)]
    fig.colorbar(drawn, ax=axes[0, -1], location="right", label="loss, shared levels")
    clipped = clip_label(levels, maximum)
    claim = ("same grid and contour levels: a wider basin is a flatter minimum (Li et al. 2018)" if not untrained else
             f"same grid and contour levels; CAUTION: {', '.join(untrained)} at chance loss, not a trained minimum, "
             f"so its basin's width says nothing about flatness")
    fig.suptitle(claim + (f"\n{clipped[len('loss ('):-1]}: higher values in the top colour" if clipped != "loss" else ""),
                 fontsize="small")
    return save_figure(fig, stem, ("label", "x", "y", "loss"), rows)

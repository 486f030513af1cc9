"""Figures of curvature (numpy, h5py and matplotlib only; no torch), each as PNG, PDF and CSV.

- `<stems>_eigenvalues`: the top Hessian eigenvalues of every measured run against the snapshot epoch, files
  overlaid: colour by file, marker by learning rate; an eigenvalue that did not converge is a hollow marker;
- `<stems>_density`: the spectral densities on a log scale (Ghorbani et al. 2019, Fig. 1), files overlaid;
- `<stems>_sharpness` (from run files with `--sharpness-every`): the top eigenvalue of every rate against the
  training step (a marker per measurement), each rate's stability threshold (2/lr for SGD, (2 + 2b)/lr with
  momentum b, Cohen et al. 2021) dashed in the same colour, the converged checks as crosses, and the probes'
  beta (Santurkar et al.) where recorded.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from landscape.files.hessian_file import HessianResult
from landscape.files.run_file import Run
from landscape.views.analysis import check_errors, stability_threshold, threshold_formula
from landscape.views.figures import (LINE_STYLES, category_colours, colour_of, joined_stem, marker_of, rate_colours,
                                     rate_markers, rate_text, save_figure, setup)


def plot_hessians(results: list[HessianResult], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup()
    stems = [r.path.stem for r in results]
    written = eigenvalue_figure(results, out_dir / joined_stem(stems, "eigenvalues"))
    with_density = [r for r in results if "density/grid" in r.arrays and r.done.any()]
    if with_density:
        written += density_figure(with_density, out_dir / joined_stem([r.path.stem for r in with_density], "density"))
    return written


def partial_note(results: list[HessianResult]) -> str:
    notes = [f"{r.path.name}: partial ({int(r.done.sum())} of {r.done.size} measured)" for r in results if r.partial]
    return ("; " + "; ".join(notes)) if notes else ""


def eigenvalue_figure(results: list[HessianResult], stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    rows = []
    markers = rate_markers(np.concatenate([r.arrays["lrs"] for r in results]))
    unconverged = 0
    for colour, result in zip(category_colours(len(results)), results):
        epochs, values = result.arrays["epochs"], result.arrays["eigenvalues"]
        converged = result.converged
        for i, lr in enumerate(result.arrays["lrs"]):
            marker = marker_of(markers, lr)
            for rank in range(values.shape[2]):
                ok = converged[i, :, rank] if converged is not None else np.ones(len(epochs), dtype=bool)
                unconverged += int((~ok & np.isfinite(values[i, :, rank])).sum())
                ax.plot(epochs, values[i, :, rank], linestyle="-" if rank == 0 else ":", color=colour,
                        alpha=1.0 if rank == 0 else 0.5, linewidth=1 if rank == 0 else 0.7)
                if rank == 0:  # the legend shows the marker that tells the rates apart
                    ax.plot([], [], linestyle="-", marker=marker, color=colour, markersize=6,
                            label=f"{result.label} {rate_text(lr)}")
                size = 6 if rank == 0 else 3
                ax.plot(epochs[ok], values[i, ok, rank], linestyle="none", marker=marker, color=colour, markersize=size)
                ax.plot(epochs[~ok], values[i, ~ok, rank], linestyle="none", marker=marker, markerfacecolor="white",
                        color=colour, markersize=size)
                rows += [(result.label, float(lr), int(e), rank + 1, float(v), int(c))
                         for e, v, c in zip(epochs, values[i, :, rank], ok)]
    epochs = np.unique(np.concatenate([r.arrays["epochs"] for r in results]))
    if (epochs < 0).all():  # a foreign model: its given weights, no epoch
        ax.set_xticks([-1], ["the given weights"])
        ax.set_xlabel("")
    else:
        ax.set_xticks(epochs if len(epochs) <= 12 else epochs[:: -(-len(epochs) // 12)])  # whole epochs only
        ax.set_xlabel("snapshot epoch")
    ax.set_ylabel("Hessian eigenvalue (top: solid; next: dotted)")
    note = f"; hollow: {unconverged} not converged (raise --max-steps)" if unconverged else ""
    ax.set_title(f"top-{values.shape[2]} Hessian eigenvalues, BN {results[0].attrs.get('bn')}, "
                 f"{results[0].attrs.get('images')} images; colour: file, marker: rate{note}"
                 f"{partial_note(results)}", fontsize="x-small")
    ax.legend(fontsize="x-small")
    return save_figure(fig, stem, ("label", "lr", "epoch", "rank", "eigenvalue", "converged"), rows)


def density_figure(results: list[HessianResult], stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    lines = [(f, result, i, lr) for f, result in enumerate(results) for i, lr in enumerate(result.arrays["lrs"])
             if result.done[i].any()]
    for colour, (f, result, i, lr) in zip(category_colours(len(lines)), lines):  # a colour per line, a style per file
        grid, values = result.arrays["density/grid"], result.arrays["density/values"]
        j = int(np.flatnonzero(result.done[i])[-1])  # the last measured epoch
        epoch = int(result.arrays["epochs"][j])
        ax.semilogy(grid[i, j], np.maximum(values[i, j], 1e-12), linestyle=LINE_STYLES[f % len(LINE_STYLES)],
                    color=colour, linewidth=1.4, label=f"{result.label} {rate_text(lr)}" +
                    (f" epoch {epoch}" if epoch >= 0 else ""))
        rows += [(result.label, float(lr), epoch, float(x), float(y)) for x, y in zip(grid[i, j], values[i, j])]
    ax.set_ylim(bottom=1e-6)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title("Hessian spectral density (stochastic Lanczos quadrature)" + partial_note(results), fontsize="small")
    ax.legend(fontsize="x-small")
    return save_figure(fig, stem, ("label", "lr", "epoch", "eigenvalue", "density"), rows)


def method_label(sharp: dict) -> str:
    """What the sharpness curve is, from its group's `sharpness_method` attribute."""
    return {"critical": "critical sharpness", "directional": "curvature along the update"}.get(
        str(sharp["attrs"].get("sharpness_method", "lanczos")), "sharpness")


def sharpness_figure(runs: list[tuple[Run, str]], stem: Path) -> list[Path]:
    """Sharpness of every rate of every file against steps, with thresholds, checks and the probes' beta."""
    fig, ax = plt.subplots(figsize=(11, 4.8))
    colours = rate_colours(np.concatenate([run.lrs for run, _ in runs]))
    rows = []
    notes = set()
    for style, (run, label) in zip(LINE_STYLES * 4, runs):
        sharp = run.sharpness
        steps, top = sharp["step"], sharp["top"]
        config = run.config
        epoch_lr = run.epoch["lr"]
        hvps = sharp.get("hvps")
        for r, lr in enumerate(run.lrs):
            colour = colour_of(colours, lr)
            ax.plot(steps, top[r, :, 0], linestyle=style, marker="o", markersize=3, color=colour,
                    label=f"{label} lr={lr:g} {method_label(sharp)}")
            if "check_top" in sharp and len(sharp["check_step"]):
                ax.plot(sharp["check_step"], sharp["check_top"][r, :, 0], linestyle="none", marker="x", color=colour,
                        markersize=7, label=f"{label} lr={lr:g} converged check")
            epochs = run.train_epoch[np.minimum(steps, len(run.train_epoch) - 1)] if len(run.train_epoch) else steps * 0
            rates = np.where(np.isfinite(epoch_lr[r, epochs]), epoch_lr[r, epochs], lr) if epoch_lr.size else \
                np.full(len(steps), float(lr))
            thresholds = np.array([stability_threshold(config, float(x)) or np.nan for x in rates])
            if np.isfinite(thresholds).any():
                ax.plot(steps, thresholds, linestyle=(0, (4, 3)), color=colour, linewidth=1,
                        label=f"{label} lr={lr:g} threshold {threshold_formula(config).split(',')[0]}")
            else:
                notes.add(f"{config.get('optimizer')}: no 2/lr threshold applies (adaptive preconditioning)")
            if run.probe is not None and len(run.probe["step"]):
                ax.plot(run.probe["step"], run.probe["beta"][r], linestyle="none", marker=".", color=colour,
                        alpha=0.7, label=f"{label} lr={lr:g} probe beta")
            used = hvps[r] if hvps is not None and hvps.shape[-1] == len(steps) else np.full(len(steps), -1)
            rows += [(label, float(lr), int(s), float(v), float(t), int(h))
                     for s, v, t, h in zip(steps, top[r, :, 0], thresholds, used)]
    if hvps is not None and (hvps > 0).any():
        notes.add(f"{int(np.median(hvps[hvps > 0])) if (hvps > 0).any() else 0} Hessian-vector products per "
                  f"measurement (median)")
    errors = [check_errors(run) for run, _ in runs]
    errors = [e for e in errors if e is not None]
    if errors:
        notes.add("warm estimate against converged checks: median error " +
                  ", ".join(f"{100 * e[0]:.2g}%" for e in errors) + ", worst " +
                  ", ".join(f"{100 * e[1]:.2g}%" for e in errors))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("curvature (log scale)")
    title = f"{method_label(runs[0][0].sharpness)} on {runs[0][0].sharpness['images']} training images"
    ax.set_title(title + ("; " + "; ".join(sorted(notes)) if notes else ""), fontsize="x-small")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, stem, ("label", "lr", "step", "sharpness", "threshold", "hvps"), rows)

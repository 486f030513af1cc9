"""Figures of curvature (numpy, h5py and matplotlib only; no torch), each as PNG, PDF and CSV.

- `<stems>_eigenvalues`: the top Hessian eigenvalues of every measured run against the snapshot epoch,
  files overlaid (one colour per learning rate, one line style per file);
- `<stems>_density`: the spectral densities on a log scale (Ghorbani et al. 2019, Fig. 1), files overlaid;
- `<stems>_sharpness` (from run files with `--sharpness-every`): the top eigenvalue of every rate against
  the training step, each rate's stability threshold (2/lr for SGD, (2 + 2b)/lr with momentum b, Cohen et
  al. 2021) dashed in the same colour, and the probes' beta (Santurkar et al.) dotted when recorded.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from landscape.views.analysis import stability_threshold, threshold_formula  # noqa: E402
from landscape.files.hessian_file import HessianResult  # noqa: E402
from landscape.views.plots import save_figure  # noqa: E402
from landscape.files.run_file import Run  # noqa: E402

LINE_STYLES = ("-", "--", ":", "-.")


def rate_colours(rates) -> dict[float, tuple]:
    """One colour per learning rate, the same in every curvature figure."""
    rates = sorted({float(r) for r in rates}, reverse=True)
    return dict(zip(rates, sns.color_palette("viridis", max(len(rates), 1))))


def plot_hessians(results: list[HessianResult], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    stem = "_vs_".join(r.path.stem for r in results)
    colours = rate_colours(np.concatenate([r.arrays["lrs"] for r in results]))
    written = eigenvalue_figure(results, out_dir / f"{stem}_eigenvalues", colours)
    if any("density/grid" in r.arrays for r in results):
        written += density_figure([r for r in results if "density/grid" in r.arrays], out_dir / f"{stem}_density",
                                  colours)
    return written


def eigenvalue_figure(results: list[HessianResult], stem: Path, colours: dict) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for style, result in zip(LINE_STYLES * 4, results):
        epochs, values = result.arrays["epochs"], result.arrays["eigenvalues"]
        for i, lr in enumerate(result.arrays["lrs"]):
            for rank in range(values.shape[2]):
                ax.plot(epochs, values[i, :, rank], linestyle=style, marker="o", color=colours[float(lr)],
                        alpha=1.0 if rank == 0 else 0.45, markersize=4 if rank == 0 else 2,
                        label=f"{result.label} lr={lr:g}" if rank == 0 else None)
                rows += [(result.label, float(lr), int(e), rank + 1, float(v)) for e, v in zip(epochs, values[i, :, rank])]
    ax.set_xlabel("snapshot epoch")
    ax.set_ylabel("Hessian eigenvalue (top: bold; next: faint)")
    ax.set_title(f"top-{values.shape[2]} Hessian eigenvalues, BN {results[0].attrs.get('bn')}, "
                 f"{results[0].attrs.get('images')} images", fontsize="small")
    ax.legend(fontsize="x-small")
    return save_figure(fig, stem, ("label", "lr", "epoch", "rank", "eigenvalue"), rows)


def density_figure(results: list[HessianResult], stem: Path, colours: dict) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for style, result in zip(LINE_STYLES * 4, results):
        grid, values = result.arrays["density/grid"], result.arrays["density/values"]
        for i, lr in enumerate(result.arrays["lrs"]):
            j = grid.shape[1] - 1  # the last measured epoch
            epoch = int(result.arrays["epochs"][j])
            ax.semilogy(grid[i, j], np.maximum(values[i, j], 1e-12), linestyle=style, color=colours[float(lr)],
                        label=f"{result.label} lr={lr:g} epoch {epoch}")
            rows += [(result.label, float(lr), epoch, float(x), float(y)) for x, y in zip(grid[i, j], values[i, j])]
    ax.set_ylim(bottom=1e-6)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title("Hessian spectral density (stochastic Lanczos quadrature)", fontsize="small")
    ax.legend(fontsize="x-small")
    return save_figure(fig, stem, ("label", "lr", "epoch", "eigenvalue", "density"), rows)


def sharpness_figure(runs: list[tuple[Run, str]], stem: Path) -> list[Path]:
    """Sharpness of every rate of every file against steps, with thresholds and the probes' beta."""
    fig, ax = plt.subplots(figsize=(11, 4.8))
    colours = rate_colours(np.concatenate([run.lrs for run, _ in runs]))
    rows = []
    notes = set()
    for style, (run, label) in zip(LINE_STYLES * 4, runs):
        steps, top = run.sharpness["step"], run.sharpness["top"]
        config = json.loads(run.attrs["config"])
        epoch_lr = run.epoch["lr"]
        for r, lr in enumerate(run.lrs):
            colour = colours[float(lr)]
            ax.plot(steps, top[r, :, 0], linestyle=style, color=colour, label=f"{label} lr={lr:g} sharpness")
            epochs = run.train_epoch[np.minimum(steps, len(run.train_epoch) - 1)] if len(run.train_epoch) else steps * 0
            rates = np.where(np.isfinite(epoch_lr[r, epochs]), epoch_lr[r, epochs], lr) if epoch_lr.size else \
                np.full(len(steps), float(lr))
            thresholds = np.array([stability_threshold(config, float(x)) or np.nan for x in rates])
            if np.isfinite(thresholds).any():
                ax.plot(steps, thresholds, linestyle=(0, (4, 3)), color=colour, linewidth=1,
                        label=f"{label} lr={lr:g} threshold {threshold_formula(config).split(',')[0]}")
            else:
                notes.add(f"{config.get('optimizer')}: no 2/lr threshold applies (adaptive preconditioning)")
            beta = None
            if run.probe is not None and len(run.probe["step"]):
                beta = run.probe["beta"][r]
                ax.plot(run.probe["step"], beta, linestyle=":", color=colour, alpha=0.7,
                        label=f"{label} lr={lr:g} probe beta")
            rows += [(label, float(lr), int(s), float(v), float(t)) for s, v, t in zip(steps, top[r, :, 0], thresholds)]
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("curvature (log scale)")
    title = f"sharpness on {runs[0][0].sharpness['images']} training images"
    ax.set_title(title + ("; " + "; ".join(sorted(notes)) if notes else ""), fontsize="small")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, stem, ("label", "lr", "step", "sharpness", "threshold"), rows)

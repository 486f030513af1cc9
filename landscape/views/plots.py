"""Figures of stored runs (numpy, h5py and matplotlib only; no torch).

Every figure is saved as PNG and PDF, beside a CSV of exactly the numbers it draws, under one stem:
- `<stem>_per_rate`: each learning rate's loss curve with the envelope band behind (one run file);
- `<stems>_envelope`: the min-max band of every file overlaid (report 004, Figures 11-12);
- `<stems>_range`: max - min per step for every file (report 004, Figure 13).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from landscape.files.run_file import Run
from landscape.views.analysis import (RANGE_CAVEAT, Envelope, envelope, moving_average, probe_bands, run_cautions,
                                     run_label)
from landscape.views.figures import category_colours, joined_stem, rate_colours, save_figure, setup, short_stem


def plot_runs(runs: list[Run], out_dir: str | Path, *, smooth: int = 1, stride: int = 1,
              log_y: bool = False) -> list[Path]:
    """Draw every figure for `runs` into `out_dir`; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup()
    labels = [run_label(run, runs) for run in runs]
    bands = [envelope(run.train_loss, smooth=smooth, stride=stride) for run in runs]
    stems = [run.path.stem for run in runs]
    written: list[Path] = []
    for run, label in zip(runs, labels):
        written += per_rate_figure(run, label, out_dir / f"{short_stem(run.path.stem)}_per_rate",
                                   smooth=smooth, stride=stride, log_y=log_y)
    caution = cautions_line([c for run, label in zip(runs, labels) for c in run_cautions(run, label)])
    written += envelope_figure(labels, bands, out_dir / joined_stem(stems, "envelope"), log_y=log_y,
                               title="loss landscape: min-max training loss over learning rates" + caution)
    written += range_figure(labels, bands, out_dir / joined_stem(stems, "range"),
                            title=f"loss range: max - min over learning rates\n({RANGE_CAVEAT})" + caution)
    probed = [(run, label) for run, label in zip(runs, labels) if run.probe is not None and len(run.probe["step"])]
    for lr in sorted({float(lr) for run, _ in probed for lr in run.lrs}, reverse=True):
        written += probe_figure(probed, lr, out_dir / joined_stem(stems, f"probes_lr{lr:g}"), log_y=log_y,
                                caution=cautions_line([c for run, label in probed for c in run_cautions(run, label)]))
    tracked = [(run, label) for run, label in zip(runs, labels)
               if run.sharpness is not None and len(run.sharpness["step"])]
    if tracked:
        from landscape.views.curvature_plots import sharpness_figure

        written += sharpness_figure(tracked, out_dir / joined_stem(stems, "sharpness"))
    return written


def per_rate_figure(run: Run, label: str, stem: Path, *, smooth: int, stride: int, log_y: bool) -> list[Path]:
    """One loss curve per learning rate, over the run's envelope band."""
    losses = moving_average(run.train_loss, smooth) if smooth > 1 else run.train_loss.astype(np.float64)
    steps = np.arange(losses.shape[1])[::stride]
    losses = losses[:, ::stride]
    band = envelope(run.train_loss, smooth=smooth, stride=stride)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.fill_between(band.steps, band.low, band.high, color="0.85", label="min-max over rates")
    colours = rate_colours(run.lrs)
    rows = []
    for lr, curve in sorted(zip(run.lrs, losses), key=lambda pair: -pair[0]):
        ax.plot(steps, curve, color=colours[float(lr)], lw=0.9, label=f"lr = {lr:g}")
        rows += [(label, f"{lr:g}", int(s), float(v)) for s, v in zip(steps, curve)]
    finish(ax, f"{label}: training loss per learning rate", "loss", log_y)
    return save_figure(fig, stem, ("label", "lr", "step", "loss"), rows)


def envelope_figure(labels: list[str], bands: list[Envelope], stem: Path, *, log_y: bool,
                    title: str = "loss landscape: min-max training loss over learning rates") -> list[Path]:
    """The min-max band of each file, overlaid, with the min and max drawn as lines."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows = []
    for label, band, color in zip(labels, bands, category_colours(len(bands))):
        ax.fill_between(band.steps, band.low, band.high, color=color, alpha=0.35, lw=0, label=label)
        ax.plot(band.steps, band.low, color=color, lw=0.6)
        ax.plot(band.steps, band.high, color=color, lw=0.6)
        rows += envelope_rows(label, band)
    finish(ax, title, "loss", log_y)
    return save_figure(fig, stem, ("label", "step", "min", "max", "range"), rows)


def range_figure(labels: list[str], bands: list[Envelope], stem: Path,
                 title: str = "loss range: max - min over learning rates") -> list[Path]:
    """max - min over learning rates at each step, one curve per file."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows = []
    for label, band, color in zip(labels, bands, category_colours(len(bands))):
        ax.plot(band.steps, band.range, color=color, lw=0.9, label=label)
        rows += envelope_rows(label, band)
    finish(ax, title, "max - min loss", log_y=False)
    return save_figure(fig, stem, ("label", "step", "min", "max", "range"), rows)


def probe_figure(probed: list[tuple[Run, str]], lr: float, stem: Path, *, log_y: bool,
                 caution: str = "") -> list[Path]:
    """Santurkar et al. Fig. 4 at one learning rate: loss variation, gradient predictiveness, beta."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rows = []
    for (run, label), color in zip(probed, category_colours(len(probed))):
        matches = np.flatnonzero(np.isclose(run.lrs, lr))
        if not matches.size:
            continue
        b = probe_bands(run, int(matches[0]))
        # measured only at the probed steps: markers there, a thin band between them
        axes[0].fill_between(b.steps, b.loss_low, b.loss_high, color=color, alpha=0.25, lw=0, label=label)
        axes[1].fill_between(b.steps, b.grad_low, b.grad_high, color=color, alpha=0.25, lw=0, label=label)
        for ax, low, high in ((axes[0], b.loss_low, b.loss_high), (axes[1], b.grad_low, b.grad_high)):
            ax.vlines(b.steps, low, high, color=color, lw=1.2)
            ax.plot(b.steps, low, "v", b.steps, high, "^", color=color, markersize=4)
        axes[2].plot(b.steps, b.beta, color=color, lw=0.6, marker="o", markersize=4, label=label)
        rows += [(label, f"{lr:g}", int(s), *map(float, v)) for s, *v in
                 zip(b.steps, b.loss_low, b.loss_high, b.grad_low, b.grad_high, b.beta)]
    titles = ("loss variation", "gradient predictiveness", "effective beta-smoothness")
    fig.suptitle("measured at the probed steps (markers: min and max over the step multipliers)" + caution,
                 fontsize="small")
    ylabels = ("loss along the step", "||grad(p) - grad(w)||", "max ||grad(p) - grad(w)|| / ||p - w||")
    for ax, title, ylabel in zip(axes, titles, ylabels):
        finish(ax, f"{title} (lr = {lr:g})", ylabel, log_y)
    return save_figure(fig, stem, ("label", "lr", "step", "loss_min", "loss_max", "grad_dist_min", "grad_dist_max", "beta"),
                rows)


def envelope_rows(label: str, band: Envelope) -> list[tuple]:
    """Long-format CSV rows of one band."""
    return [(label, int(s), float(lo), float(hi), float(r))
            for s, lo, hi, r in zip(band.steps, band.low, band.high, band.range)]


def cautions_line(cautions: list[str]) -> str:
    """The report's trust warnings as a figure's last title line ('' when there are none)."""
    return ("\nCAUTION: " + "; ".join(cautions)) if cautions else ""


def finish(ax, title: str, ylabel: str, log_y: bool) -> None:
    """Title, axis labels, log scale and legend shared by every figure."""
    ax.set_title(title, fontsize="small" if "\n" in title else None)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.legend(frameon=True, fontsize="small")

"""Figures of a spec's results (numpy, h5py and matplotlib only), shared by `ablate table` and `ablate figures`:
training curves of cells, a metric across cells, loss envelopes and ranges of multi-rate cells.

Cells are unordered categories unless their axis is numeric: a categorical palette, and markers without
connecting lines for categories; train solid, test dashed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.ablations.results import Row, summary
from landscape.ablations.spec import METRICS, Spec

PANELS = {"loss": ("train_loss", "test_loss", "loss"), "acc": ("train_acc", "test_acc", "accuracy (%)")}
CURVE_COLUMNS = ("cell", "run_lr", "epoch", "lr", "train_loss", "test_loss", "train_acc", "test_acc")


def rate_index(run, lr: float | None = None) -> int:
    """The run of a multi-rate file shown: the rate asked for, else the one with the best test accuracy."""
    if lr is not None:
        matches = np.flatnonzero(np.isclose(run.lrs, lr))
        if matches.size:
            return int(matches[0])
    return int(np.argmax(np.nan_to_num(run.epoch["test_acc"], nan=-1).max(axis=1))) if run.epochs_done else 0


def curves_figure(rows: list[Row], stem: Path, title: str, panels=("loss", "acc"), splits=("train", "test"),
                  lr: float | None = None) -> list[Path]:
    """Per-epoch training and test loss and accuracy (the panels asked for) of the cells, and the learning rate."""
    import matplotlib.pyplot as plt

    from landscape.views.figures import category_colours, save_figure, setup

    setup(1.0)
    panels = list(panels) + ["lr"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False)
    data = []
    for row, colour in zip(rows, category_colours(len(rows))):
        if row.missing:
            continue
        run = row.runs[0]
        r = rate_index(run, lr)
        epochs = np.arange(1, run.epochs_done + 1)
        values = {name: run.epoch[name][r].astype(float) for name in CURVE_COLUMNS[3:]}
        for ax, panel in zip(axes[0], panels):
            if panel == "lr":
                ax.plot(epochs, values["lr"], color=colour, marker=".", label=row.cell.label)
                continue
            train_name, test_name, _ = PANELS[panel]
            scale = 100 if panel == "acc" else 1
            if "train" in splits:
                ax.plot(epochs, scale * values[train_name], color=colour, linestyle="-", marker=".",
                        label=f"{row.cell.label} train")
            if "test" in splits:
                ax.plot(epochs, scale * values[test_name], color=colour, linestyle="--", marker=".",
                        label=f"{row.cell.label} test")
        data += [(row.cell.label, float(run.lrs[r]), int(e), *(float(values[n][i]) for n in CURVE_COLUMNS[3:]))
                 for i, e in enumerate(epochs)]
    for ax, panel in zip(axes[0], panels):
        ylabel = "learning rate" if panel == "lr" else PANELS[panel][2]
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.set_title(ylabel + ("" if panel == "lr" else " (solid: train, dashed: test)"), fontsize="small")
        if ax.lines:
            ax.legend(fontsize="x-small")
    fig.suptitle(title, fontsize="small")
    return save_figure(fig, stem, CURVE_COLUMNS, data)


def metric_figure(spec: Spec, rows: list[Row], stem: Path, title: str, preset: str) -> list[Path]:
    """The spec's first metric across the cells, ours against the report's: markers, and a line only where the
    cells lie on one numeric axis (an ordered quantity)."""
    import matplotlib.pyplot as plt

    from landscape.views.figures import save_figure, setup

    setup(1.0)
    metric = spec.metrics[0]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    labels = [row.cell.label for row in rows]
    stats = [summary(row.values.get(metric, [])) for row in rows]
    reported = [row.cell.reference.get(metric, np.nan) for row in rows]
    numeric = len(spec.axes) == 1 and all(isinstance(row.cell.axis.get(spec.axes[0]), (int, float))
                                          and not isinstance(row.cell.axis.get(spec.axes[0]), bool) for row in rows)
    x = np.asarray([row.cell.axis[spec.axes[0]] for row in rows], dtype=float) if numeric else np.arange(len(rows))
    ax.errorbar(x, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt="o-" if numeric else "o", capsize=3,
                label=f"ours (preset {preset})")
    if np.isfinite(reported).any():
        ax.plot(x, reported, "s--" if numeric else "s", color="0.4", label="reported (the report's own setting)")
    if not numeric:
        ax.set_xticks(x, labels, rotation=30 if max(map(len, labels)) > 8 else 0, ha="right")
    ax.set(xlabel=", ".join(spec.axes) or "cell", ylabel=METRICS[metric][0])
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="small")
    return save_figure(fig, stem, ("cell", "reported", "mean", "std", "n"),
                       [(l, r, s[0], s[1], s[2]) for l, r, s in zip(labels, reported, stats)])


def envelope_or_range(rows: list[Row], stem: Path, title: str, kind: str) -> list[Path]:
    """The min-max envelope (or the range) over the learning rates of exactly these cells, one band each."""
    import matplotlib.pyplot as plt

    from landscape.views.analysis import RANGE_CAVEAT, envelope
    from landscape.views.figures import save_figure
    from landscape.views.plots import envelope_figure, range_figure

    present = [row for row in rows if not row.missing]
    if not present:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.set_title(title, fontsize="small")
        return save_figure(fig, stem, ("label", "step", "min", "max", "range"), [])
    labels = [row.cell.label for row in present]
    bands = [envelope(row.runs[0].train_loss) for row in present]
    if kind == "envelope":
        return envelope_figure(labels, bands, stem, log_y=False, title=title)
    return range_figure(labels, bands, stem, title=f"{title}\n({RANGE_CAVEAT})")


def landscape_groups(spec: Spec, rows: list[Row], stem: Path) -> list[Path]:
    """For cells that train several rates: an envelope and a range per value of the axes other than the model (report
    004's Figs. 11 and 12 are one batch size each), never one band of cells the report keeps apart."""
    multi = [row for row in rows if row.runs and len(row.runs[0].lrs) > 1]
    if not multi:
        return []
    others = [axis for axis in spec.axes if axis != "model"]
    groups: dict[tuple, list[Row]] = {}
    for row in multi:
        groups.setdefault(tuple(row.cell.axis.get(axis) for axis in others), []).append(row)
    written = []
    for key, members in groups.items():
        name = "_".join(f"{a}{v}" for a, v in zip(others, key)) or "all"
        where = ", ".join(f"{a}={v}" for a, v in zip(others, key))
        for kind in ("envelope", "range"):
            written += envelope_or_range(members, stem.with_name(f"{stem.name}_{name}_{kind}"),
                                         f"{spec.title}: loss {kind} over the learning rates" +
                                         (f" ({where})" if where else ""), kind)
    return written

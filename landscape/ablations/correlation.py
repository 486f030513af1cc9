"""Does a measure explain the ablation? Rank correlations of each measure with test accuracy and the generalization
gap over a spec's cells and seeds, and their table and scatter figure (numpy, scipy, matplotlib; no torch).

- Kendall's tau (scipy's `kendalltau`, tau-b) over every (cell, seed) with a 95% percentile bootstrap interval
  (resampling the (cell, seed) points, seeded);
- with several axes, Jiang et al.'s (2019) granulated tau: for each axis, the mean of the taus over the groups of
  cells that differ in that axis alone (the other axes held fixed), then the mean over the axes;
- a plain note when the points are too few (under 8) or a measure barely varies (all within 1% of each other) for
  a correlation to mean anything, or when the interval includes 0.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from landscape.files.measures_file import MeasuresTable, read_measures
from landscape.views.csv_cells import inert_row

TARGETS = {"test accuracy": "final_test_acc", "generalization gap": "gap_acc"}
FEW = 8


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b over the pairs where both are finite (NaN with fewer than 2, or a constant side)."""
    from scipy.stats import kendalltau

    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan")
    return float(kendalltau(x[keep], y[keep]).statistic)


def bootstrap_interval(x: np.ndarray, y: np.ndarray, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 2.5% and 97.5% percentiles of tau over resamples of the points."""
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if keep.size < 3:
        return float("nan"), float("nan")
    taus = [kendall(x[picked], y[picked]) for picked in (rng.choice(keep, keep.size) for _ in range(draws))]
    taus = np.asarray([t for t in taus if np.isfinite(t)])
    return (float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))) if taus.size else (np.nan, np.nan)


def granulated(x: np.ndarray, y: np.ndarray, axes: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    """Jiang et al.'s granulated tau: per axis the mean tau over groups that share every other axis, then the mean
    over the axes that have such groups."""
    per_axis = {}
    for axis, values in axes.items():
        others = [axes[a] for a in axes if a != axis]
        keys = [tuple(column[i] for column in others) for i in range(len(x))]
        taus = []
        for key in dict.fromkeys(keys):
            members = np.array([k == key for k in keys])
            if len(set(values[members])) > 1:
                taus.append(kendall(x[members], y[members]))
        taus = [t for t in taus if np.isfinite(t)]
        per_axis[axis] = float(np.mean(taus)) if taus else float("nan")
    finite = [t for t in per_axis.values() if np.isfinite(t)]
    return (float(np.mean(finite)) if finite else float("nan")), per_axis


def measure_names(table: MeasuresTable) -> list[str]:
    """The measures to correlate: all but the accuracies and losses themselves."""
    plain = {"train_loss", "train_acc", "test_loss", "test_acc", "gap_loss", "gap_acc"}
    return [name for name in table.values if name not in plain and not name.endswith("_capped")]


def targets_of(table: MeasuresTable) -> dict[str, np.ndarray]:
    done = table.done.astype(bool)
    accuracy = np.array([float(table.info.get(c, {}).get("final_test_acc", np.nan)) for c in table.cells])
    gap = table.values.get("gap_acc", np.full(len(table.cells), np.nan)) * 100
    return {"test accuracy": np.where(done, accuracy, np.nan), "generalization gap": np.where(done, gap, np.nan)}


def correlations(table: MeasuresTable, axes: list[str]) -> list[dict]:
    """One row per measure: tau with test accuracy (interval, granulated) and with the gap, and the note."""
    targets = targets_of(table)
    columns = {axis: np.array([str(table.info.get(c, {}).get(axis, "")) for c in table.cells]) for axis in axes}
    rows = []
    for name in measure_names(table):
        x = table.values[name]
        row = {"measure": name, "points": int(np.isfinite(x).sum())}
        for target, y in targets.items():
            row[f"tau {target}"] = kendall(x, y)
            row[f"interval {target}"] = bootstrap_interval(x, y)
            row[f"granulated {target}"] = granulated(x, y, columns)[0] if len(columns) > 1 else float("nan")
        finite = x[np.isfinite(x)]
        notes = []
        if finite.size < FEW:
            notes.append(f"only {finite.size} points: too few for a rank correlation to mean anything")
        elif np.ptp(finite) <= 0.01 * max(np.abs(finite).max(), 1e-12):
            notes.append("the measure barely varies across the cells")
        low, high = row["interval test accuracy"]
        if not notes and (not np.isfinite(low) or low <= 0 <= high):
            notes.append("the interval includes 0: no evidence of a correlation with accuracy either way")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return rows


def fmt(value: float) -> str:
    return f"{value:+.2f}" if np.isfinite(value) else "-"


def write_measure_tables(path: Path, axes: list[str], title: str) -> list[Path]:
    """measures_table.md and .csv (every cell's measures beside its accuracy) and correlations.md beside the file."""
    table = read_measures(path)
    folder = path.parent
    names = list(table.values)
    rows = [[c, *[str(table.info.get(c, {}).get(a, "")) for a in axes],
             f"{float(table.info.get(c, {}).get('final_test_acc', np.nan)):.2f}",
             *[f"{table.values[n][i]:.4g}" for n in names]] for i, c in enumerate(table.cells) if table.done[i]]
    header = ["cell", *axes, "final test acc (%)", *names]
    with open(folder / "measures_table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(inert_row(header))
        writer.writerows(inert_row(row) for row in rows)
    lines = [f"# {title}: measures of every cell", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]
    (folder / "measures_table.md").write_text("\n".join(lines) + "\n")
    found = correlations(table, axes)
    lines = [f"# {title}: does a measure track accuracy?", "",
             "Kendall's tau over every (cell, seed) with a 95% bootstrap interval; granulated tau (Jiang et al. 2019: "
             "the mean over axes of the mean tau among cells differing in that axis alone) when the spec has several "
             "axes. Test accuracy is the final one of the rate the table reports; the gap is train minus test "
             "accuracy (points).", "",
             "| measure | points | tau, test acc | 95% interval | granulated | tau, gap | 95% interval | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in found:
        low, high = row["interval test accuracy"]
        glow, ghigh = row["interval generalization gap"]
        lines.append(f"| {row['measure']} | {row['points']} | {fmt(row['tau test accuracy'])} | [{fmt(low)}, "
                     f"{fmt(high)}] | {fmt(row['granulated test accuracy'])} | {fmt(row['tau generalization gap'])} | "
                     f"[{fmt(glow)}, {fmt(ghigh)}] | {row['note']} |")
    (folder / "correlations.md").write_text("\n".join(lines) + "\n")
    return [folder / "measures_table.md", folder / "measures_table.csv", folder / "correlations.md"]


def spans_decades(values: np.ndarray) -> bool:
    """Positive values whose largest is over 100 times the smallest: drawn on a log axis."""
    finite = values[np.isfinite(values)]
    return finite.size > 1 and bool((finite > 0).all()) and finite.max() > 100 * finite.min()


def scatter_figure(path: Path, axes: list[str], title: str, columns: int = 4) -> list[Path]:
    """Each measure against test accuracy and against the gap, a point per (cell, seed), marked by the first axis:
    a grid `columns` panels wide (readable at a page's width), log axes where a measure spans decades, tau and its
    interval in each panel's title."""
    import matplotlib.pyplot as plt

    from landscape.views.figures import save_figure

    table = read_measures(path)
    names = measure_names(table)
    if not names:
        return []
    targets = targets_of(table)
    marks = np.array([str(table.info.get(c, {}).get(axes[0], c)) if axes else c for c in table.cells])
    panels = [(name, target) for name in names for target in targets]
    lines = -(-len(panels) // columns)
    fig, grid = plt.subplots(lines, columns, figsize=(12, 2.9 * lines), squeeze=False)
    rows = []
    for index, (name, target) in enumerate(panels):
        ax, x, y = grid[index // columns][index % columns], table.values[name], targets[target]
        for mark in dict.fromkeys(marks):
            chosen = marks == mark
            ax.scatter(x[chosen], y[chosen], label=mark, s=16)
        if spans_decades(x):
            ax.set_xscale("log")
        low, high = bootstrap_interval(x, y)
        ax.set_title(f"tau {fmt(kendall(x, y))} [{fmt(low)}, {fmt(high)}]", fontsize="small")
        ax.set_xlabel(name, fontsize="small")
        ax.set_ylabel(f"{target} (%)", fontsize="small")
        ax.tick_params(labelsize="x-small")
        rows += [(table.cells[i], name, target, float(x[i]), float(y[i])) for i in range(len(table.cells))]
    for index in range(len(panels), lines * columns):
        grid[index // columns][index % columns].axis("off")
    grid[0][0].legend(fontsize="xx-small", title=axes[0] if axes else "cell", title_fontsize="xx-small")
    fig.suptitle(f"{title}: measures against test accuracy and the generalization gap (95% bootstrap intervals)",
                 fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path.parent / "measures_scatter", ("cell", "measure", "target", "value", "target_value"),
                       rows)

"""A study's curves: measures against its axis (mean and 95% t interval over the models that met their criterion),
and the loss along the paths of its pairs (`pairs/<row>.h5`), as numbers and figures for `finding.md` and the
report (numpy and matplotlib, no torch)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landscape.ablations.spec import Spec
from landscape.ablations.study import t_interval
from landscape.files.measures_file import MeasuresTable, info_columns


@dataclass
class Point:
    """One axis value of a curve: the mean over its models, the 95% interval, the count."""

    value: str
    mean: float
    low: float
    high: float
    models: int


def axis_curves(spec: Spec, table: MeasuresTable, met: np.ndarray) -> dict[str, list[Point]]:
    """measure -> its points along the spec's first axis, in the spec's order of values (models in `met` only)."""
    if not spec.axes or spec.study is None:
        return {}
    axis = spec.axes[0]
    columns = info_columns(table)
    where = np.asarray(columns.get(axis, [""] * len(table.cells)), dtype=object).astype(str)
    values = list(dict.fromkeys(str(cell.axis[axis]) for cell in spec.cells))
    curves = {}
    for measure in spec.study.curves:
        column = table.values.get(measure)
        if column is None:
            continue
        points = []
        for value in values:
            group = column[(where == value) & met & np.isfinite(column)]
            low, high = t_interval(group)
            points.append(Point(value, float(group.mean()) if len(group) else np.nan, low, high, len(group)))
        curves[measure] = points
    return curves


def pair_path(folder: Path, row: str) -> Path:
    """Where the paths of the pair stored in measures row `row` are written (`ablations.pairs`)."""
    return Path(folder) / "pairs" / (re.sub(r"[^A-Za-z0-9.]+", "-", row).strip("-").lower() + ".h5")


def path_series(spec: Spec, table: MeasuresTable, folder: Path, split: str | None = None) -> dict[str, dict[str, list]]:
    """path name (line, aligned_line) -> axis value -> the loss along t of each pair measured there, on `split`
    (by default the split of the study's first curve: test for a `..._test_...` column, else train)."""
    if split is None:
        split = path_split(spec)
    from landscape.errors import UsageError
    from landscape.files.path_file import read_path

    axis = spec.axes[0] if spec.axes else None
    series: dict[str, dict[str, list]] = {}
    for cell in table.cells:
        path = pair_path(folder, cell)
        if axis is None or not path.is_file():
            continue
        try:
            held = read_path(path)
        except UsageError:
            continue
        value = str(table.info.get(cell, {}).get(axis, ""))
        for name, splits in held.values.items():
            loss = splits.get(split, {}).get("loss")
            if loss is not None:
                series.setdefault(name, {}).setdefault(value, []).append((held.t, np.asarray(loss)))
    return series


def path_split(spec: Spec) -> str:
    """The split whose loss the paths are drawn on: the one of the study's first curve."""
    curves = spec.study.curves if spec.study is not None else ()
    return "test" if curves and "_test_" in curves[0] else "train"


def curves_figure(spec: Spec, curves: dict[str, list[Point]], series: dict, out: Path) -> Path | None:
    """One PNG: each curve against the axis (mean, interval band), then the mean test loss along each kind of
    path, a line per axis value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(curves) + len(series)
    if not panels:
        return None
    columns = min(panels, 3)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    flat = list(axes.ravel())
    axis = spec.axes[0]
    numeric = all(is_number(p.value) for points in curves.values() for p in points)
    for ax, (measure, points) in zip(flat, curves.items()):
        x = [float(p.value) for p in points] if numeric else list(range(len(points)))
        mean = np.array([p.mean for p in points])
        ax.plot(x, mean, "o-", color="C0")
        ax.fill_between(x, [p.low for p in points], [p.high for p in points], color="C0", alpha=0.2,
                        label="95% interval over seeds")
        if not numeric:
            ax.set_xticks(x, [p.value for p in points])
        elif min(x) > 0 and max(x) >= 8 * min(x):
            ax.set_xscale("log", base=2)
        ax.set_xlabel(axis)
        ax.set_ylabel(measure)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.legend(fontsize=7)
    for ax, (name, by_value) in zip(flat[len(curves):], series.items()):
        for index, (value, pairs) in enumerate(by_value.items()):
            t = pairs[0][0]
            ax.plot(t, np.mean([loss for _, loss in pairs], axis=0), color=f"C{index % 10}",
                    label=f"{axis}={value} (n={len(pairs)})")
        ax.set_xlabel("t (0: first model, 1: second)")
        ax.set_ylabel(f"{path_split(spec)} loss, mean over pairs")
        ax.set_title({"line": "straight line", "aligned_line": "after weight matching"}.get(name, name), fontsize=9)
        ax.legend(fontsize=7)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(spec.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False

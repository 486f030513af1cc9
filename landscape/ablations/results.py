"""A spec's results: the run files of its cells under a results folder, read into rows of metric values (numpy and
h5py only). Shared by the tables, the figures and the report."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landscape.ablations.spec import Cell, Spec
from landscape.errors import UsageError
from landscape.files.run_file import Run, read_run


@dataclass
class Row:
    """One table row: a cell, its runs (one per seed found) and per metric (reported, our values)."""

    cell: Cell
    runs: list[Run]
    values: dict[str, list[float]]
    problems: list[str]

    @property
    def missing(self) -> bool:
        return not self.runs


def metric_value(run: Run, metric: str, horizon: int | None = None) -> float:
    """A metric of one run file, within the first `horizon` epochs if given. Accuracies in percent.

    A file with several learning rates gives the value of its best rate (highest best test accuracy).
    """
    acc = run.epoch["test_acc"][:, :horizon] if horizon else run.epoch["test_acc"]
    if metric == "parameters":
        return float(run.attrs.get("parameters", np.nan))
    if metric == "model_size_mb":
        return float(run.attrs.get("model_size_mb", np.nan))
    if acc.shape[1] == 0:
        return float("nan")
    filled = np.where(np.isfinite(acc), acc, -np.inf)
    best_rate = int(np.argmax(filled.max(axis=1)))
    best = filled[best_rate]
    if metric == "best_test_acc":
        return float(100 * best.max())
    if metric == "best_epoch":
        return float(np.argmax(best) + 1)
    if metric == "final_test_acc":
        finite = np.flatnonzero(np.isfinite(acc[best_rate]))  # an early-stopped run ends at its last epoch
        return float(100 * acc[best_rate, finite[-1]]) if finite.size else float("nan")
    if metric == "wall_time":
        wall = run.epoch["wall_time"][:horizon] if horizon else run.epoch["wall_time"]
        return float(wall[-1]) if wall.size else float("nan")
    raise UsageError(f"unknown metric {metric!r}")


def collect(spec: Spec, preset: str, root: Path) -> list[Row]:
    """Read every cell's run files (all seeds found); cells with none, or only unreadable ones, are missing."""
    rows = []
    for cell in spec.cells:
        folder = spec.result_path(root, preset, cell, 0).parent
        runs, problems = [], []
        for path in sorted(p for p in folder.glob(f"{cell.file_slug}_seed*.h5")
                           if re.fullmatch(r"_seed\d+\.h5", p.name[len(cell.file_slug):])):  # not .weights.h5
            try:
                run = read_run(path)
            except UsageError as exc:
                problems.append(str(exc))
                continue
            if run.status == "complete":
                runs.append(run)
            else:
                problems.append(f"{path}: {run.status} ({run.epochs_done} epochs); `landscape ablate run` finishes it")
        horizon = cell.horizons.get(preset)
        values = {m: [metric_value(r, m, horizon) for r in runs] for m in spec.metrics}
        rows.append(Row(cell, runs, values, problems))
    return rows


def summary(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = np.asarray([v for v in values if np.isfinite(v)])
    if not finite.size:
        return float("nan"), float("nan"), 0
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0, int(finite.size)

"""Tables and figures of ablation specs, regenerated from the stored run files; never trains.

Per spec and preset, under `<root>/<spec>/<preset>/`: `table.md`, `table.csv` and `table.tex`
(booktabs) with the cells' axis values, the report's number, ours as mean ± std over seeds (n) and
the difference; `metric.{png,pdf,csv}` (the table's first metric against the cells) and
`curves.{png,pdf,csv}` (test accuracy and training loss per epoch of every cell, overlaid); for
cells that train several learning rates, the loss-landscape figures of `landscape plot`. One
`index_<preset>.md` under `<root>` links them all. numpy, h5py and seaborn only.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landscape.ablations.spec import METRICS, Cell, Spec, format_value
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


def fmt(value: float, metric: str, signed: bool = False) -> str:
    """A metric as the tables print it: counts and epochs as integers, the rest with two decimals."""
    if not np.isfinite(value):
        return "-"
    sign = "+" if signed else ""
    if metric in ("parameters", "best_epoch"):
        return f"{value:{sign},.0f}"
    return f"{value:{sign}.2f}"


def ours_text(values: list[float], metric: str, missing: bool) -> str:
    """'mean ± std (n)' for several seeds, the value alone for one, 'missing' or '-'."""
    mean, std, n = summary(values)
    if missing:
        return "missing"
    if not n:
        return "-"
    return f"{fmt(mean, metric)} ± {fmt(std, metric)} (n={n})" if n > 1 else f"{fmt(mean, metric)} (n=1)"


def table_cells(spec: Spec, rows: list[Row], preset: str = "full") -> tuple[list[str], list[list[str]], list[list]]:
    """Header, display rows and machine rows (for CSV) of a spec's table.

    The difference to the report is shown only under the `full` preset, the report's own configuration:
    against a smaller, shorter quick run it would measure the preset, not the method.
    """
    label_columns = spec.axes if spec.axes else ["cell"]
    header = list(label_columns)
    comparable = preset == "full"
    for metric in spec.metrics:
        name = METRICS[metric][0]
        header += [f"{name} reported", f"{name} ours"] + (["difference"] if comparable else [])
    shown, machine = [], []
    for row in rows:
        labels = [format_value(row.cell.axis[a]) for a in spec.axes] if spec.axes else [row.cell.label]
        line, record = list(labels), list(labels)
        for metric in spec.metrics:
            reported = row.cell.reference.get(metric, float("nan"))
            mean, std, n = summary(row.values.get(metric, []))
            diff = mean - reported if n and np.isfinite(reported) and comparable else float("nan")
            line += [fmt(reported, metric), ours_text(row.values.get(metric, []), metric, row.missing)]
            line += [fmt(diff, metric, signed=True)] if comparable else []
            record += [reported, mean, std if n > 1 else float("nan"), n, diff]
        shown.append(line)
        machine.append(record)
    return header, shown, machine


def preset_note(spec: Spec, preset: str) -> str:
    """What the preset that produced our numbers changes from the report's configuration."""
    if preset == "full":
        return "Ours: preset `full`, the report's own configuration"
    changes = dict(spec.presets.get(preset, {}))
    for cell in spec.cells:
        for key, value in cell.quick_settings.items():
            changes.setdefault(key, value)
    described = ", ".join(f"{k}={format_value(v)}" for k, v in changes.items()) or "nothing"
    return (f"Ours: preset `{preset}` (changes {described}; the difference to the report is not shown, since "
            f"it would measure the smaller setting)")


def write_tables(spec: Spec, rows: list[Row], folder: Path, preset: str) -> list[Path]:
    """table.md, table.csv and table.tex for one spec."""
    folder.mkdir(parents=True, exist_ok=True)
    header, shown, machine = table_cells(spec, rows, preset)
    missing = sum(r.missing for r in rows)
    md = folder / "table.md"
    lines = [f"# {spec.title}", "", spec.description.strip(), "", f"Reported: {spec.source}. {preset_note(spec, preset)}; "
             f"mean ± std over seeds (n), the std only for n > 1.", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in shown]
    lines += ["", f"{len(rows) - missing} of {len(rows)} cells done" + (f"; {missing} missing" if missing else "") + "."]
    for row in rows:
        lines += [f"- {problem}" for problem in row.problems]
    md.write_text("\n".join(lines) + "\n")
    csv_path = folder / "table.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        label_columns = spec.axes if spec.axes else ["cell"]
        writer.writerow(label_columns + [f"{m}_{k}" for m in spec.metrics
                                         for k in ("reported", "mean", "std", "n", "difference")])
        writer.writerows(machine)
    tex = folder / "table.tex"
    escape = lambda t: t.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$").replace("&", r"\&")
    body = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule", " & ".join(escape(h) for h in header) + r" \\",
            r"\midrule"] + [" & ".join(escape(c) for c in line) + r" \\" for line in shown] + [r"\bottomrule",
                                                                                                r"\end{tabular}"]
    tex.write_text("% " + spec.title + "\n" + "\n".join(body) + "\n")
    return [md, csv_path, tex]


def write_figures(spec: Spec, rows: list[Row], folder: Path) -> list[Path]:
    """The metric against the cells, the training curves of the cells, and loss landscapes where present."""
    from landscape.views.plots import plot_runs, save_figure

    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    metric = spec.metrics[0]
    written = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [r.cell.label for r in rows]
    stats = [summary(r.values.get(metric, [])) for r in rows]
    reported = [r.cell.reference.get(metric, np.nan) for r in rows]
    x = np.arange(len(rows))
    ax.errorbar(x, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt="o-", capsize=3, label="ours")
    if np.isfinite(reported).any():
        ax.plot(x, reported, "s--", color="0.4", label=f"reported ({spec.source.split(',')[0]}, its full setting)")
    ax.set_xticks(x, labels, rotation=30 if max(len(l) for l in labels) > 8 else 0, ha="right")
    ax.set_xlabel(", ".join(spec.axes) if spec.axes else "")
    ax.set_ylabel(METRICS[metric][0])
    ax.set_title(spec.title)
    ax.legend()
    data = [(l, r, s[0], s[1], s[2]) for l, r, s in zip(labels, reported, stats)]
    written += save_figure(fig, folder / "metric", ("cell", "reported", "mean", "std", "n"), data)

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    curves = []
    for row, color in zip(rows, sns.color_palette("viridis", len(rows))):
        if row.missing:
            continue
        run = row.runs[0]
        best = int(np.argmax(np.nan_to_num(run.epoch["test_acc"], nan=-1).max(axis=1)))
        epochs = np.arange(1, run.epochs_done + 1)
        acc, loss = 100 * run.epoch["test_acc"][best], run.epoch["train_loss"][best]
        acc_ax.plot(epochs, acc, color=color, label=row.cell.label)
        loss_ax.plot(epochs, loss, color=color, label=row.cell.label)
        curves += [(row.cell.label, int(e), float(a), float(l)) for e, a, l in zip(epochs, acc, loss)]
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    if curves:
        acc_ax.legend(fontsize="small")
    written += save_figure(fig, folder / "curves", ("cell", "epoch", "test_acc", "train_loss"), curves)
    landscapes = [r.runs[0] for r in rows if r.runs and len(r.runs[0].lrs) > 1]
    if landscapes:
        written += plot_runs(landscapes, folder / "landscape")
    return written


def regenerate(specs: list[Spec], preset: str, root: Path) -> tuple[list[Path], int, int]:
    """Tables and figures of every spec, and the index of every spec with results under `root` (not only
    these); returns (paths, cells done, cells missing) of these specs."""
    written, done, missing = [], 0, 0
    for spec in specs:
        folder = root / spec.name / preset
        rows = collect(spec, preset, root)
        written += write_tables(spec, rows, folder, preset) + write_figures(spec, rows, folder)
        spec_missing = sum(r.missing for r in rows)
        done, missing = done + len(rows) - spec_missing, missing + spec_missing
    index = [f"# Ablation studies (preset `{preset}`)", ""]
    for table in sorted(root.glob(f"*/{preset}/table.md")):  # every spec with results, from any call
        folder = table.parent
        title = table.read_text().splitlines()[0].lstrip("# ").strip()
        done_line = next((line for line in table.read_text().splitlines() if "cells done" in line), "")
        links = ", ".join(f"[{p.name}]({p.relative_to(root).as_posix()})" for p in sorted(folder.glob("*"))
                          if p.suffix in (".md", ".png"))
        index.append(f"- **{title}** ({done_line.rstrip('.')}): {links}")
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / f"index_{preset}.md"
    index_path.write_text("\n".join(index) + "\n")
    return written + [index_path], done, missing

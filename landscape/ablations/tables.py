"""Tables and figures of ablation specs, regenerated from the stored run files; never trains.

Per spec and preset, under `<root>/<spec>/<preset>/`: `table.md`, `table.csv` and `table.tex`
(booktabs) with the cells' axis values, the report's number, ours as mean ± std over seeds (n) and
the difference; `metric.{png,pdf,csv}` (the table's first metric against the cells) and
`curves.{png,pdf,csv}` (test accuracy and training loss per epoch of every cell, overlaid); for
cells that train several learning rates, the loss-landscape figures of `landscape plot`. One
`index_<preset>.md` under `<root>` links them all. numpy, h5py and matplotlib only.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from landscape.ablations.results import Row, collect, summary
from landscape.ablations.spec import METRICS, Spec, format_value
from landscape.views.csv_cells import inert_row


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
        writer.writerow(inert_row(label_columns + [f"{m}_{k}" for m in spec.metrics
                                                   for k in ("reported", "mean", "std", "n", "difference")]))
        writer.writerows(inert_row(row) for row in machine)
    tex = folder / "table.tex"
    escape = lambda t: t.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$").replace("&", r"\&")
    body = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule", " & ".join(escape(h) for h in header) + r" \\",
            r"\midrule"] + [" & ".join(escape(c) for c in line) + r" \\" for line in shown] + [r"\bottomrule",
                                                                                                r"\end{tabular}"]
    tex.write_text("% " + spec.title + "\n" + "\n".join(body) + "\n")
    return [md, csv_path, tex]


def write_figures(spec: Spec, rows: list[Row], folder: Path, preset: str) -> list[Path]:
    """The metric across the cells, every cell's training curves (train and test loss and accuracy, and the learning
    rate), and for cells that train several rates, the loss envelopes and ranges grouped as the reports group them:
    one figure per value of the axes other than the model (report 004: one per batch size)."""
    from landscape.ablations.drawing import curves_figure, landscape_groups, metric_figure

    written = metric_figure(spec, rows, folder / "metric", f"{spec.title} ({preset_note(spec, preset)})", preset)
    written += curves_figure(rows, folder / "curves", f"{spec.title}: training curves of every cell (preset {preset})")
    written += landscape_groups(spec, rows, folder / "landscape")
    return written


def regenerate(specs: list[Spec], preset: str, root: Path) -> tuple[list[Path], int, int]:
    """Tables and figures of every spec, and the index of every spec with results under `root` (not only
    these); returns (paths, cells done, cells missing) of these specs."""
    written, done, missing = [], 0, 0
    for spec in specs:
        folder = root / spec.name / preset
        rows = collect(spec, preset, root)
        written += write_tables(spec, rows, folder, preset) + write_figures(spec, rows, folder, preset)
        if (folder / "measures.h5").exists():  # `ablate measure` ran: the measures beside the accuracy
            from landscape.ablations.correlation import scatter_figure, write_measure_tables

            written += write_measure_tables(folder / "measures.h5", spec.axes, spec.title)
            written += scatter_figure(folder / "measures.h5", spec.axes, spec.title)
            from landscape.ablations.finding import write_finding

            finding = write_finding(spec, preset, folder / "measures.h5")
            written += [finding] if finding else []
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

"""A study's finding: `finding.md` beside its measures (question, design, the rule, each claim's result with its
interval and verdict), written by `ablate table` and `ablate measure` from `measures.h5` (numpy, no torch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from landscape.ablations.spec import Spec
from landscape.ablations.study import VERDICT_RULE, Verdict, judge
from landscape.files.atomic import write_atomically
from landscape.files.measures_file import MeasuresTable, info_columns, read_measures

VERDICT_MARK = {"agrees": "agrees", "disagrees": "**disagrees**", "inconclusive": "inconclusive"}


def criterion_met(table: MeasuresTable) -> np.ndarray:
    """True for each measured model that met its training criterion (or was trained without one)."""
    columns = info_columns(table)
    met = columns.get("criterion_met", np.full(len(table.cells), np.nan))
    return table.done.astype(bool) & ~(np.asarray(met, dtype=float) == 0)


def verdicts(spec: Spec, table: MeasuresTable, preset: str) -> list[Verdict]:
    """Every claim of the spec's study judged on the measured models (all of the study's cells and seeds)."""
    done = table.done.astype(bool)
    columns = info_columns(table)
    values = {name: np.where(done, column, np.nan) for name, column in table.values.items()}
    for name in ("final_test_acc", "best_test_acc"):
        if name in columns:
            values[name] = np.where(done, columns[name], np.nan)
    info = {axis: np.asarray(columns.get(axis, [""] * len(table.cells)), dtype=object).astype(str)
            for axis in spec.axes}
    met = criterion_met(table) | ~done
    return [judge(claim, values, info, met, dropped_criterion(spec, preset)) for claim in spec.study.claims]


def dropped_criterion(spec: Spec, preset: str) -> str:
    """Why a preset's models are not the study's design: the study trains to a criterion the preset turns off."""
    study_has = any(spec.base.get(key) for key in ("until_train_loss", "until_train_acc"))
    settings = {**spec.base, **spec.presets.get(preset, {})}
    if study_has and not any(settings.get(key) for key in ("until_train_loss", "until_train_acc")):
        return f"the {preset} preset trains without the study's criterion (a check of the machinery, not the design)"
    return ""


def design_lines(spec: Spec, preset: str, table: MeasuresTable) -> list[str]:
    """What was trained and measured: cells, seeds, models, criterion, images."""
    from landscape.ablations.spec import format_value

    settings = {**spec.base, **spec.presets.get(preset, {})}
    seeds = sorted({int(info.get("seed", 0)) for info in table.info.values()})
    criterion = ("train loss < " + format_value(settings["until_train_loss"]) if settings.get("until_train_loss")
                 else f"train acc >= {100 * settings['until_train_acc']:g}%" if settings.get("until_train_acc")
                 else f"{settings.get('epochs', 20)} epochs, no criterion")
    met = criterion_met(table)
    done = int(table.done.sum())
    columns = info_columns(table)
    epochs = columns.get("epochs_trained")
    trained = f", {np.nanmin(epochs):.0f}-{np.nanmax(epochs):.0f} epochs" if epochs is not None and \
        np.isfinite(epochs).any() else ""
    axes = "; ".join(f"{axis} in {{{', '.join(sorted({str(c.axis[axis]) for c in spec.cells}, key=sort_key))}}}"
                     for axis in spec.axes)
    fixed = ", ".join(f"{k}={format_value(v) if not isinstance(v, (list, tuple)) else ','.join(map(format_value, v))}"
                      for k, v in settings.items() if k not in ("until_train_loss", "until_train_acc"))
    branching = ["- branching: one parent per seed trains the whole schedule; at each branch epoch two children "
                 "start from its state and finish under their own data orders; a row is the first child, the pair "
                 "is the two children"] if spec.branching else []
    return [f"- cells: {len(spec.cells)} ({axes}), seeds {', '.join(map(str, seeds)) or '-'}: {done} models measured",
            *branching,
            f"- fixed ({preset} preset): {fixed}",
            f"- training criterion: {criterion} on the whole training subset; met by {int(met.sum())} of "
            f"{done} models{trained}",
            f"- measured on {table.attrs.get('images', '?')} training and {table.attrs.get('test_images', '?')} test "
            f"images; measures: {table.attrs.get('measures', '?')}; perturbation bound {table.attrs.get('bound', '-')}"
            f", {table.attrs.get('draws', '-')} Monte Carlo draws, search tolerance {table.attrs.get('tolerance', '-')}"]


def sort_key(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def finding_text(spec: Spec, preset: str, table: MeasuresTable) -> str:
    study = spec.study
    lines = [f"# Finding: {spec.title}", "", f"**Question.** {study.question}", "", f"**Paper.** {study.paper}", ""]
    if study.design:
        lines += [study.design.strip(), ""]
    lines += ["## Design", "", *design_lines(spec, preset, table), "", "## Rule (stated before the numbers)", "",
              VERDICT_RULE, "", "## Results", "",
              "| claim (paper) | statistic | 95% interval | models | verdict |", "| --- | --- | --- | --- | --- |"]
    judged = verdicts(spec, table, preset)
    for verdict in judged:
        claim = verdict.claim
        what = {"difference": f"mean {claim.measure}: {claim.axis}={claim.high} minus {claim.axis}={claim.low}, "
                              f"paper: {claim.expect}",
                "level": f"mean {claim.measure} at {claim.axis}={claim.at} minus {claim.threshold:g}, paper: "
                         f"{claim.expect}",
                "correlation": f"Kendall tau of {claim.measure} with {claim.target}, paper: {claim.expect}"}[claim.kind]
        low, high = verdict.interval
        lines.append(f"| {claim.claim} ({claim.source}) <br> {what} | {number(verdict.statistic)} | "
                     f"[{number(low)}, {number(high)}] | {verdict.models} | {VERDICT_MARK[verdict.verdict]} |")
    details = [f"- {v.claim.measure}: {v.detail}" for v in judged if v.detail]
    if details:
        lines += ["", *details]
    lines += curves_section(spec, table, met=criterion_met(table))
    lines += line_section(spec, table.path.parent)
    counts = {name: sum(v.verdict == name for v in judged) for name in VERDICT_MARK}
    lines += ["", f"**Summary.** {counts['agrees']} agree, {counts['disagrees']} disagree, {counts['inconclusive']} "
                  f"inconclusive, of {len(judged)} claims. A disagreement at this scale (a CIFAR-10 subset, small "
                  f"networks, few seeds) is a result about this setting, not a refutation of the paper; the `full` "
                  f"preset repeats the design at the paper's scale.", ""]
    return "\n".join(lines)


def curves_section(spec: Spec, table: MeasuresTable, met: np.ndarray) -> list[str]:
    """The study's curves (ablations/curves.py): a table per measure, then the figure if it was drawn."""
    from landscape.ablations.curves import axis_curves

    curves = axis_curves(spec, table, met)
    if not curves:
        return []
    axis = spec.axes[0]
    lines = ["", f"## Against {axis} (mean and 95% interval over the models)", ""]
    for measure, points in curves.items():
        lines += [f"| {axis} | {measure} | 95% interval | models |", "| --- | --- | --- | --- |"]
        lines += [f"| {p.value} | {number(p.mean)} | [{number(p.low)}, {number(p.high)}] | {p.models} |"
                  for p in points]
        lines.append("")
    if (table.path.parent / CURVES_FIGURE).is_file():
        lines.append(f"![{spec.study.curves[0]} against {axis}, and the loss along the paths]({CURVES_FIGURE})")
    return lines


CURVES_FIGURE = "curves.png"


def line_section(spec: Spec, folder: Path) -> list[str]:
    """The study's 1D line between two cells (ablations/line.py), when it has been computed."""
    from landscape.errors import UsageError
    from landscape.files.path_file import read_path

    line = spec.study.line
    path = folder / f"line_{line['a']}_{line['b']}.h5" if line else None
    if path is None or not path.is_file():
        return []
    try:
        held = read_path(path)
    except UsageError as exc:
        return ["", f"The line file could not be read: {exc}"]
    lines = ["", f"## The line from {line['axis']}={line['a']} to {line['axis']}={line['b']} (seed 0 of each)", "",
             "| split | loss at A | loss at B | loss barrier | accuracy drop |", "| --- | --- | --- | --- | --- |"]
    for split, metrics in held.values.get("line", {}).items():
        loss = metrics.get("loss")
        barrier = held.barriers["line"][split]
        drop = barrier.get("acc")
        lines.append(f"| {split} | {number(float(loss[0]))} | {number(float(loss[-1]))} | "
                     f"{number(barrier.get('loss', np.nan))} | "
                     f"{'-' if drop is None else f'{100 * drop:.2f}%'} |")
    figures = sorted(p.name for p in folder.glob(f"{path.stem}*.png"))
    lines += [""] + [f"![the line]({name})" for name in figures]
    return lines


def number(value: float) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def write_finding(spec: Spec, preset: str, measures: Path) -> Path | None:
    """finding.md beside `measures` for a spec with a study (None for a spec without one)."""
    if spec.study is None or not measures.is_file():
        return None
    from landscape.ablations.curves import axis_curves, curves_figure, path_series

    table = read_measures(measures)
    curves = axis_curves(spec, table, criterion_met(table))
    if curves:
        curves_figure(spec, curves, path_series(spec, table, measures.parent), measures.parent / CURVES_FIGURE)
    path = measures.parent / "finding.md"
    text = finding_text(spec, preset, table)
    write_atomically(path, lambda buffer: buffer.write(text.encode("utf-8")))
    return path

"""Every figure of the five reports, regenerated from the results of their specs: `landscape ablate figures`.

`figures.toml` (beside this file) lists each figure: its report and caption, what it shows, the spec and cells it
is drawn from, and its kind: `curves` (per-epoch training and test loss and accuracy, and the learning rate, of one
cell or a few side by side), `schedule` (the learning rate per epoch, from the configuration, with the rates a run
recorded), `architecture` (the model's stages with output shapes and parameter counts, from the model itself),
`envelope` and `range` (report 004's loss landscape of VGG against VGG-BN, grouped as the report groups them) and
`metric` (a table's metric across its cells). Each is written as PNG, PDF and the CSV of what it draws under
`<results>/figures/<preset>/<id>`. numpy, h5py and matplotlib only, but for `architecture`, which builds the model
on PyTorch's meta device.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landscape.ablations.drawing import curves_figure, envelope_or_range, metric_figure
from landscape.ablations.results import Row, collect
from landscape.ablations.spec import Spec, load_spec, spec_paths
from landscape.errors import UsageError

FIGURES_FILE = Path(__file__).parent / "figures.toml"
KINDS = ("curves", "schedule", "architecture", "envelope", "range", "metric", "none")


@dataclass(frozen=True)
class Figure:
    """One figure of a report and how it is regenerated."""

    id: str
    report: str
    figure: str
    shows: str
    kind: str
    spec: str = ""
    cells: tuple[str, ...] | None = None
    panels: tuple[str, ...] = ("loss", "acc")
    splits: tuple[str, ...] = ("train", "test")
    lr: float | None = None
    reason: str = ""


def load_figures(path: Path = FIGURES_FILE) -> list[Figure]:
    """The figure list, checked: known kinds, existing specs and cells."""
    raw = tomllib.loads(path.read_text(encoding="utf-8")).get("figure", [])
    figures = []
    for entry in raw:
        figure = Figure(**{**entry, **{k: tuple(entry[k]) for k in ("cells", "panels", "splits") if k in entry}})
        if figure.kind not in KINDS:
            raise UsageError(f"{path}: figure {figure.id}: unknown kind {figure.kind!r}; one of {', '.join(KINDS)}")
        if figure.kind != "none":
            spec = load_spec(spec_paths([figure.spec])[0])
            labels = {c.label for c in spec.cells}
            unknown = [c for c in figure.cells or () if c not in labels]
            if unknown:
                raise UsageError(f"{path}: figure {figure.id}: spec {figure.spec} has no cell {unknown[0]!r}")
        figures.append(figure)
    ids = [f.id for f in figures]
    if len(set(ids)) != len(ids):
        raise UsageError(f"{path}: two figures share an id")
    return figures


def select(figures: list[Figure], names: list[str]) -> list[Figure]:
    """Figures by id, or every figure of a report ('004'); UsageError for a name that matches none."""
    chosen = []
    for name in names:
        matched = [f for f in figures if f.id == name or f.report == name]
        if not matched:
            raise UsageError(f"no report figure {name!r}: give a report (000..004) or a figure id from "
                             f"`landscape ablate figures --list`")
        chosen += [f for f in matched if f not in chosen]
    return chosen


def output_stem(root: Path, preset: str, figure: Figure) -> Path:
    return Path(root) / "figures" / preset / figure.id


def title_of(figure: Figure, preset: str, missing: list[str]) -> str:
    text = f"report {figure.report}, {figure.figure}\n{figure.shows} (preset {preset})"
    if missing:
        text += f"\nno results yet for: {', '.join(missing)} (run `landscape ablate run {figure.spec} --preset {preset}`)"
    return text


def rows_of(figure: Figure, preset: str, root: Path) -> tuple[Spec, list[Row]]:
    spec = load_spec(spec_paths([figure.spec])[0])
    rows = collect(spec, preset, root)
    if figure.cells:
        by_label = {row.cell.label: row for row in rows}
        rows = [by_label[label] for label in figure.cells]
    return spec, rows


def draw(figure: Figure, preset: str, root: Path) -> tuple[list[Path], list[str]]:
    """Draw one figure from the results under `root`; return the files written and the cells without results."""
    stem = output_stem(root, preset, figure)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if figure.kind == "architecture":
        return architecture_figure(figure, preset, stem), []
    spec, rows = rows_of(figure, preset, root)
    missing = [row.cell.label for row in rows if row.missing]
    title = title_of(figure, preset, missing)
    if figure.kind == "curves":
        paths = curves_figure(rows, stem, title, figure.panels, figure.splits, figure.lr)
    elif figure.kind == "schedule":
        paths = schedule_figure(spec, rows, stem, title, preset)
    elif figure.kind in ("envelope", "range"):
        paths = envelope_or_range(rows, stem, title, figure.kind)
    else:
        paths = metric_figure(spec, rows, stem, title, preset)
    return paths, missing


def schedule_figure(spec: Spec, rows: list[Row], stem: Path, title: str, preset: str) -> list[Path]:
    """The learning rate of every epoch as the configuration sets it, with what a run recorded over it."""
    import matplotlib.pyplot as plt

    from landscape.training.schedules import lr_at_epoch
    from landscape.views.figures import category_colours, save_figure, setup

    setup(1.0)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    data = []
    for row, colour in zip(rows, category_colours(len(rows))):
        config = spec.config(row.cell, preset)
        epochs = np.arange(config.epochs)
        planned = [lr_at_epoch(config.lrs[0], int(e), schedule=config.schedule, epochs=config.epochs,
                               step_size=config.step_size, gamma=config.gamma, milestones=config.milestones,
                               cosine_extra=config.cosine_extra, warmup_epochs=config.warmup_epochs) for e in epochs]
        what = f"cosine, T_max = epochs + {config.cosine_extra}" if config.schedule == "cosine" else config.schedule
        ax.plot(epochs + 1, planned, color=colour, label=f"{row.cell.label}: {what}")
        recorded = row.runs[0].epoch["lr"][0] if not row.missing else np.zeros(0)
        if recorded.size:
            ax.plot(np.arange(1, len(recorded) + 1), recorded, "o", color=colour, markersize=4,
                    label=f"{row.cell.label}: recorded by the run")
        data += [(row.cell.label, int(e) + 1, float(p), float(recorded[i]) if i < len(recorded) else float("nan"))
                 for i, (e, p) in enumerate(zip(epochs, planned))]
    ax.set(xlabel="epoch", ylabel="learning rate")
    ax.legend(fontsize="x-small")
    ax.set_title(title, fontsize="small")
    return save_figure(fig, stem, ("cell", "epoch", "lr_planned", "lr_recorded"), data)


def architecture_rows(model, image_size: int) -> list[tuple[str, str, str, int]]:
    """(layer, type, output shape, parameters) for the model's stages, found by a meta-device forward pass."""
    import torch
    from torch import nn

    stages = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 6:  # VGG's features and classifier: their layers
            stages += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            stages.append((name, child))
    shapes: dict[str, tuple] = {}  # in the order the forward pass reaches them

    def seen(name: str, output) -> None:
        shapes.setdefault(name, tuple(output.shape[1:]))

    hooks = [module.register_forward_hook(lambda m, i, o, name=name: seen(name, o)) for name, module in stages]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    rows = [("input", "image", f"3x{image_size}x{image_size}", 0)]
    counted = set()
    modules = dict(stages)
    for name, module in [(n, modules[n]) for n in shapes] + [(n, m) for n, m in stages if n not in shapes]:
        params = [p for p in module.parameters() if id(p) not in counted]
        counted.update(id(p) for p in params)
        shape = "x".join(map(str, shapes.get(name, ()))) or "-"
        rows.append((name, type(module).__name__, shape, sum(p.numel() for p in params)))
    rest = [p for p in model.parameters() if id(p) not in counted]
    if rest:
        rows.append(("(other)", "-", "-", sum(p.numel() for p in rest)))
    return rows


def architecture_figure(figure: Figure, preset: str, stem: Path) -> list[Path]:
    """A layer table of the cell's model: stages, output shapes, parameters, and the total."""
    import matplotlib.pyplot as plt
    import torch

    from landscape.training.data import DEFAULT_IMAGE_SIZE
    from landscape.training.models import build_model
    from landscape.views.figures import save_figure

    spec = load_spec(spec_paths([figure.spec])[0])
    cell = next(c for c in spec.cells if c.label == (figure.cells or [spec.cells[0].label])[0])
    config = spec.config(cell, preset)
    classes = {"cifar10": 10, "cifar100": 100, "imagenette": 10, "synthetic": 10}.get(config.dataset, 200)
    size = config.image_size or DEFAULT_IMAGE_SIZE.get(config.dataset, 64)
    with torch.device("meta"):
        model = build_model(config.model, width=config.width, num_classes=classes, image_size=size,
                            **{**config.model_options(), "pretrained": False})
    rows = architecture_rows(model, size)
    total = sum(p.numel() for p in model.parameters())
    table = [(n, t, s, f"{p:,}") for n, t, s, p in rows] + [("total", "", "", f"{total:,}")]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(table) + 0.8))
    ax.axis("off")
    drawn = ax.table(cellText=table, colLabels=["layer", "type", "output (C x H x W)", "parameters"],
                     loc="center", cellLoc="left")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(8)
    drawn.scale(1, 1.2)
    ax.set_title(f"report {figure.report}, {figure.figure}\n{config.model}, width {config.width:g}, "
                 f"{size}x{size} inputs, {classes} classes (preset {preset}): {figure.shows}", fontsize="small")
    return save_figure(fig, stem, ("layer", "type", "output_shape", "parameters"),
                       [*rows, ("total", "", "", total)])


def regenerate_figures(figures: list[Figure], preset: str, root: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """Draw each figure; return the files written and, per figure, the cells still without results."""
    written, missing = [], {}
    for figure in figures:
        if figure.kind == "none":
            continue
        paths, absent = draw(figure, preset, root)
        written += paths
        if absent:
            missing[figure.id] = absent
    return written, missing


def index_table(figures: list[Figure]) -> str:
    """The README's table of every report figure: report, figure, what it shows, the command, the output."""
    lines = ["| report | figure | what it shows | command | output |", "| --- | --- | --- | --- | --- |"]
    for f in figures:
        command = f"`landscape ablate figures {f.id}`" if f.kind != "none" else f"not regenerated: {f.reason}"
        lines.append(f"| {f.report} | {f.figure} | {f.shows} | {command} | "
                     f"{'`figures/<preset>/' + f.id + '.png`' if f.kind != 'none' else '-'} |")
    return "\n".join(lines)


def describe(figures: list[Figure]) -> str:
    return "\n".join(f"{f.id:<22} {f.kind:<12} {f.spec:<34} {f.figure}" for f in figures)

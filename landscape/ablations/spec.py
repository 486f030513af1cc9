"""Ablation specs: one TOML file per table of the reference reports, parsed and validated.

A spec names a base configuration (any `landscape run` option), the cells of its table (a grid
over one or more axes, or a list of named combinations), the metrics the table shows, the numbers
the report gives for each cell (with report and table), and presets: `full` (the report's own
setting) and `quick` (the same cells, small enough for two CPU cores in minutes). Errors name the
spec file, the line and the key. Nothing here imports torch.

    title = "ResNet-18 on CIFAR-10: label smoothing"
    source = "report 004, section 1.3.4 (2), loss function table"
    metrics = ["best_test_acc"]
    [base]
    model = "resnet18"
    ...
    [[axes]]
    name = "label_smoothing"
    values = [0.0, 0.1, 0.2, 0.3]
    [[reference]]
    where = { label_smoothing = 0.1 }
    best_test_acc = 91.30
    [presets.quick]
    epochs = 2
"""
from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from landscape.ablations.study import Study, parse_study
from landscape.training.config import RunConfig, config_values
from landscape.errors import UsageError

SPEC_FOLDER = Path(__file__).parent / "specs"
PRESETS = ("full", "quick", "cpu")  # cpu: a study's setting for a 2-core machine without a GPU
# metric -> (heading, unit, how a run file gives it); accuracies are in percent as the reports print them
METRICS = {
    "best_test_acc": ("best test acc (%)", "%"),
    "final_test_acc": ("final test acc (%)", "%"),
    "best_epoch": ("epoch of best", "epoch"),
    "wall_time": ("training time (s)", "s"),
    "parameters": ("parameters", ""),
    "model_size_mb": ("model size (MB)", "MB"),
}
AXIS_ALIASES = {"lr": "lrs"}  # an axis "lr" sets a single learning rate
SPEC_KEYS = {"title", "description", "source", "metrics", "base", "axes", "cells", "reference", "presets", "study"}


@dataclass
class Cell:
    """One cell of a table: its label, the options it sets on top of the base, its reported numbers."""

    label: str
    settings: dict
    reference: dict = field(default_factory=dict)
    axis: dict = field(default_factory=dict)  # grid cells: axis name -> value, as the spec writes them
    quick_settings: dict = field(default_factory=dict)  # the axes' quick_values, for the quick preset
    horizons: dict = field(default_factory=dict)  # preset -> epochs counted (the "horizon" axis)
    branch_epochs: dict = field(default_factory=dict)  # preset -> epoch K its runs branch from (the "branch_epoch"
    # axis); a float is a fraction of training's epochs, branched at the step it falls on
    file_label: str = ""  # cells differing only by horizon share one run file

    @property
    def file_slug(self) -> str:
        """A file-name form of the label of the run this cell reads."""
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.file_label or self.label).strip("-").lower() or "run"


@dataclass
class Spec:
    """A validated ablation study."""

    name: str
    path: Path
    title: str
    description: str
    source: str
    metrics: list[str]
    base: dict
    axes: list[str]
    cells: list[Cell]
    presets: dict[str, dict]
    study: Study | None = None  # a study with claims to check (ablations/study.py), or None for a report's table

    def config(self, cell: Cell, preset: str, seed: int = 0) -> RunConfig:
        """The run configuration of `cell` under `preset` (base, preset, then the cell's own settings)."""
        values = {**self.base, **self.presets.get(preset, {}), **cell.settings}
        if preset == "quick":
            values.update(cell.quick_settings)
        if cell.horizons:
            values["epochs"] = max(c.horizons[preset] for c in self.cells)
        values["seed"] = values.get("seed", 0) + seed
        return RunConfig(**values)

    def result_path(self, root: str | Path, preset: str, cell: Cell, seed: int) -> Path:
        """Where the run file of one cell and seed lives (of a branching cell: its first child)."""
        return Path(root) / self.name / preset / f"{cell.file_slug}_seed{seed}.h5"

    @property
    def branching(self) -> bool:
        """Cells are branch epochs of parent runs (a "branch_epoch" axis; Frankle et al. 2020's design)."""
        return any(cell.branch_epochs for cell in self.cells)

    def parent_path(self, root: str | Path, preset: str, seed: int) -> Path:
        """A branching spec's parent run of one seed, shared by every cell."""
        return Path(root) / self.name / preset / f"parent_seed{seed}.h5"

    def twin_path(self, root: str | Path, preset: str, cell: Cell, seed: int) -> Path:
        """A branching cell's second child: the same parent and epoch, another data order."""
        return Path(root) / self.name / preset / f"{cell.file_slug}_seed{seed}_twin.h5"


def child_data_seed(seed: int, child: int) -> int:
    """The data order of child 0 or 1 of the parent with `seed`: distinct from each other and from the parent's."""
    return 1000 * (child + 1) + seed


def spec_paths(names: list[str] | None = None) -> list[Path]:
    """Spec files for names (a stem in ablations/specs or a path to a .toml); all of them for None."""
    if not names:
        return sorted(SPEC_FOLDER.glob("*.toml"))
    paths = []
    for name in names:
        path = Path(name)
        if path.suffix != ".toml":
            path = SPEC_FOLDER / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(SPEC_FOLDER.glob("*.toml")))
            raise UsageError(f"no ablation spec {name!r}: give a .toml path or one of {known}")
        paths.append(path)
    return paths


def load_spec(path: str | Path) -> Spec:
    """Parse and validate one spec; UsageError naming the file, line and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; save the spec as UTF-8") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a spec file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None

    def fail(key: str, problem: str, occurrence: int = 0) -> UsageError:
        return UsageError(f"{path}:{line_of(text, key, occurrence)}: {key}: {problem}")

    for key in raw:
        if key not in SPEC_KEYS:
            raise fail(key, f"unknown spec key; known keys are {', '.join(sorted(SPEC_KEYS))}")
    for key in ("title", "source", "metrics", "base"):
        if key not in raw:
            raise UsageError(f"{path}: missing '{key}'")
    for key in ("title", "source", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise fail(key, "must be a string")
    metrics = raw["metrics"]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise fail("metrics", "must be a list of metric names, e.g. [\"best_test_acc\"]")
    if not metrics:
        raise fail("metrics", "name at least one metric")
    for metric in metrics:
        if metric not in METRICS:
            raise fail("metrics", f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    base = checked_options(raw["base"], fail, "base")
    if ("axes" in raw) == ("cells" in raw):
        raise UsageError(f"{path}: give either [[axes]] (a grid) or [[cells]] (named combinations), not both")
    for key in ("axes", "cells", "reference"):
        if key in raw and not (isinstance(raw[key], list) and all(isinstance(e, dict) for e in raw[key])):
            raise fail(key, f"must be an array of tables ([[{key}]])")
    if "axes" in raw:
        axes, cells = grid_cells(raw["axes"], fail)
    else:
        axes, cells = [], named_cells(raw["cells"], fail)
    attach_references(raw.get("reference", []), cells, metrics, fail)
    presets = {}
    if not isinstance(raw.get("presets", {}), dict):
        raise fail("presets", "must be a table of presets ([presets.quick])")
    for preset, values in raw.get("presets", {}).items():
        if preset not in PRESETS:
            raise fail(preset, f"unknown preset; use {' or '.join(PRESETS)}")
        presets[preset] = checked_options(values, fail, f"presets.{preset}")
    study = parse_study(raw["study"], axes, fail) if "study" in raw else None
    spec = Spec(name=path.stem, path=path, title=raw["title"], description=raw.get("description", ""),
                source=raw["source"], metrics=list(metrics), base=base, axes=axes, cells=cells, presets=presets,
                study=study)
    for cell in cells:
        for preset in PRESETS:
            try:
                spec.config(cell, preset).validate()
            except UsageError as exc:
                raise UsageError(f"{path}: cell {cell.label!r} under preset {preset}: {exc}") from None
    if spec.branching:
        check_branching(spec, fail)
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        raise UsageError(f"{path}: two cells have the same label")
    runs_by_file: dict[str, set] = {}
    for cell in cells:
        runs_by_file.setdefault(cell.file_slug, set()).add(cell.file_label or cell.label)
    for slug, names in runs_by_file.items():
        if len(names) > 1:
            raise UsageError(f"{path}: cells {sorted(names)} would share the file name {slug!r}; rename one")
    return spec


def check_branching(spec: Spec, fail) -> None:
    """A branch_epoch axis: the parents keep their state at every whole branch epoch, within their training (a
    fractional one is kept after the step it falls on, whatever the snapshots)."""
    if len(spec.axes) != 1:
        raise fail("branch_epoch", "a branch_epoch axis is the spec's only axis (its cells are the branch epochs)")
    for preset in PRESETS:
        parent = spec.config(spec.cells[0], preset)
        whole = any(isinstance(cell.branch_epochs[preset], int) for cell in spec.cells)
        if whole and (not parent.branch_points or not parent.snapshots):
            raise fail("branch_epoch", "the parents must keep their state: set branch_points = true (with snapshots)")
        if parent.until_train_loss or parent.until_train_acc or parent.patience or len(parent.lrs) != 1:
            raise fail("branch_epoch", "a branching spec trains one rate for a fixed number of epochs: one lr, no "
                                       "criterion, no patience")
        every = parent.snapshot_every
        for cell in spec.cells:
            epoch = cell.branch_epochs[preset]
            if isinstance(epoch, float):
                if epoch >= parent.epochs:
                    raise fail("branch_epoch", f"branch epoch {epoch:g} under preset {preset}: the parents train "
                                               f"{parent.epochs} epochs; pick one within them")
                continue
            if epoch > parent.epochs or not (epoch in (0, parent.epochs) or (every and epoch % every == 0)):
                raise fail("branch_epoch", f"branch epoch {epoch} under preset {preset}: the parents train "
                                           f"{parent.epochs} epochs and keep every {every or 'no'} epoch(s) "
                                           f"(snapshot_every); pick kept epochs")


def checked_options(values: dict, fail, where: str) -> dict:
    """Run options of a spec section, converted; errors through `fail` name the key."""
    if not isinstance(values, dict):
        raise fail(where, "must be a table of run options")
    out = {}
    for key, value in values.items():
        name = AXIS_ALIASES.get(key, key)
        if name == "lrs" and key == "lr":
            value = [value]
        try:
            out.update(config_values({name: value}, where=where))
        except UsageError as exc:
            raise fail(key, str(exc).split(": ", 1)[-1]) from None
    return out


def grid_cells(axes: list[dict], fail) -> tuple[list[str], list[Cell]]:
    """The cells of a grid: every combination of the axes' values, labelled by them."""
    names, value_lists = [], []
    for axis in axes:
        if "name" not in axis or "values" not in axis or not axis["values"]:
            raise fail("axes", "each axis needs a name and a non-empty list of values")
        if not isinstance(axis["name"], str):
            raise fail("name", "an axis name must be a string")
        for key in axis:
            if key not in ("name", "values", "quick_values"):
                raise fail(key, f"unknown axis key in axis {axis['name']}; an axis has name, values and quick_values")
        for key in ("values", "quick_values"):
            if key in axis and not isinstance(axis[key], list):
                raise fail(key, f"axis {axis['name']}: {key} must be a list")
        quick = axis.get("quick_values", axis["values"])
        if len(quick) != len(axis["values"]):
            raise fail("quick_values", f"axis {axis['name']} needs as many quick_values as values")
        names.append(axis["name"])
        value_lists.append(list(zip(axis["values"], quick)))
    cells = []
    for combination in itertools.product(*value_lists):
        settings, quick_settings, horizons = {}, {}, {}
        branch_epochs = {}
        for name, (value, quick) in zip(names, combination):
            if name == "branch_epoch":
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf
                           for v in (value, quick)):
                    raise fail("branch_epoch", "branch epochs are numbers of epochs, 0 (initialisation) or more; "
                                               "fractions (0.25) branch within an epoch")
                value, quick = (int(v) if float(v).is_integer() else float(v) for v in (value, quick))
                branch_epochs = {"full": value, "quick": quick, "cpu": value}
                continue
            if name == "horizon":
                if not (isinstance(value, int) and isinstance(quick, int) and value > 0 and quick > 0):
                    raise fail("horizon", "horizons are positive epoch counts")
                horizons = {"full": value, "quick": quick, "cpu": quick}
                continue
            settings.update(checked_options({name: value}, fail, f"axes {name}"))
            if quick != value:
                quick_settings.update(checked_options({name: quick}, fail, f"axes {name} quick_values"))
        values = [v for v, _ in combination]
        label = ", ".join(f"{n}={format_value(v)}" for n, v in zip(names, values)) if len(names) > 1 \
            else format_value(values[0])
        file_label = ", ".join(f"{n}={format_value(v)}" for n, v in zip(names, values) if n != "horizon")
        cells.append(Cell(label=label, settings=settings, axis=dict(zip(names, values)), quick_settings=quick_settings,
                          horizons=horizons, branch_epochs=branch_epochs, file_label=file_label or "run"))
    return names, cells


def named_cells(entries: list[dict], fail) -> list[Cell]:
    """Named combinations: [[cells]] with name, set = {options}, and optionally reference = {metric: value}."""
    cells = []
    for entry in entries:
        if not isinstance(entry.get("name"), str):
            raise fail("cells", "each cell needs a name (a string)")
        if not isinstance(entry.get("reference", {}), dict):
            raise fail("reference", f"cell {entry['name']}: reference must be a table of metric = number")
        settings = checked_options(entry.get("set", {}), fail, f"cell {entry['name']}")
        cells.append(Cell(label=entry["name"], settings=settings, reference=dict(entry.get("reference", {}))))
    return cells


def attach_references(entries: list[dict], cells: list[Cell], metrics: list[str], fail) -> None:
    """[[reference]] entries (where = {axis: value}, metric = number) onto the grid cells they match."""
    for index, entry in enumerate(entries):
        where = entry.get("where", {})
        if not isinstance(where, dict):
            raise fail("where", "must be a table of axis = value, e.g. where = { label_smoothing = 0.1 }", index)
        numbers = {k: v for k, v in entry.items() if k != "where"}
        matches = [c for c in cells if where and all(c.axis.get(k) == v for k, v in where.items())]
        if len(matches) != 1:
            raise fail("where", f"reference {where} matches {len(matches)} cells, not one", index)
        matches[0].reference.update(numbers)
    for cell in cells:
        for metric, value in cell.reference.items():
            if metric not in metrics and metric not in METRICS:
                raise fail(metric, f"reference for cell {cell.label!r} names an unknown metric")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail(metric, f"reference for cell {cell.label!r} must be a number")


def format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def line_of(text: str, key: str, occurrence: int = 0) -> int:
    """The line (from 1) where `key` is set or opened for the `occurrence`-th time in the TOML text; 1 if not found."""
    pattern = re.compile(rf'^\s*(\[+\s*)?"?{re.escape(key)}"?\s*(=|\]|\.)', re.MULTILINE)
    matches = list(pattern.finditer(text)) or list(re.finditer(re.escape(key), text))
    if not matches:
        return 1
    match = matches[min(occurrence, len(matches) - 1)]
    return text.count("\n", 0, match.start()) + 1

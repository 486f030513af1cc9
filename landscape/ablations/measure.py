"""`landscape ablate measure`: the flatness and sharpness measures of every finished cell (every seed) of a spec.

For each complete run file of the spec's cells under `<results>/<spec>/<preset>/`, the final weights of its best
rate (the rate the tables report) are measured by `engine.measures` on the first `images` training and
`test_images` test images of the run's own data, with the initial snapshot for the distance from init. Each
(cell, seed) is one task for an executor (this process, or Ray as `ablate run` and `surface` use); the table is
written to `<results>/<spec>/<preset>/measures.h5` after every cell, and cells already there (same options) are
skipped, so an interrupted measurement resumes cell by cell.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscape.ablations.final_model import cached_model
from landscape.ablations.curves import pair_path
from landscape.ablations.pairs import PAIR_GROUPS, pair_tasks, pair_values
from landscape.ablations.results import collect, metric_value
from landscape.ablations.spec import Spec
from landscape.engine.batches import BatchSet, Objective
from landscape.engine.measures import MeasureOptions, Measures, compute_measures
from landscape.errors import UsageError
from landscape.files.atomic import check_writable_folder
from landscape.files.lock import WriterLock
from landscape.files.measures_file import MeasuresTable, read_measures, write_measures


@dataclass
class MeasureTask:
    """One (cell, seed): the model skeleton, its final and initial weights, and its images; picklable."""

    module: nn.Module
    params: dict
    buffers: dict
    init: dict | None
    batches: BatchSet
    test_batches: BatchSet
    options: MeasureOptions
    device: str = "auto"

    def __call__(self) -> Measures:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" \
            else torch.device(self.device)
        move = lambda state: {n: v.to(device) for n, v in state.items()} if state is not None else None  # noqa: E731
        return compute_measures(self.module, move(self.params), move(self.buffers), self.batches.to(device),
                                Objective(metrics=None), self.options, self.test_batches.to(device), move(self.init))


def measures_path(spec: Spec, preset: str, root: Path) -> Path:
    return Path(root) / spec.name / preset / "measures.h5"


def cell_tasks(spec: Spec, preset: str, root: Path, options: MeasureOptions, images: int, test_images: int,
               device: torch.device, on_ray: bool, data_root: str | None = None,
               cache: dict | None = None) -> list[tuple[str, dict, MeasureTask]]:
    """(cell name, what describes it, its task) for every complete run file of the spec's cells (models read into
    `cache`, which the pairs reuse)."""
    out = []
    for row in collect(spec, preset, root):
        for run in row.runs:
            seed = int(run.config.get("seed", 0))
            name = f"{row.cell.label} seed{seed}"
            try:
                found = cached_model(run, images, test_images, device, data_root, cache)
            except UsageError as exc:
                raise UsageError(f"cell {row.cell.label} (seed {seed}): {exc}") from None
            rate = found.rate
            info = {**{axis: str(value) for axis, value in row.cell.axis.items()}, "label": row.cell.label,
                    "seed": seed, "lr": float(run.lrs[rate]),
                    **{metric: metric_value(run, metric, row.cell.horizons.get(preset))
                       for metric in ("best_test_acc", "final_test_acc")}}
            if run.criterion is not None:  # trained to a criterion: did this rate meet it, and when
                met_epoch = int(run.criterion["met_epoch"][rate])
                info.update(criterion_met=float(met_epoch > 0),
                            epochs_trained=float(met_epoch if met_epoch > 0 else run.epochs_done))
            out.append((name, info, MeasureTask(found.module, found.params, found.buffers, found.init, found.batches,
                                                found.test_batches, options, "auto" if on_ray else str(device))))
    return out


def measure_spec(spec: Spec, preset: str, root: Path, options: MeasureOptions, *, images: int = 1024,
                 test_images: int = 1024, device: torch.device | None = None, executor=None,
                 data_root: str | None = None, report=print) -> Path:
    """Measure every finished cell of `spec` (see the module docstring); return the measures file."""
    options.validate()
    device = device or torch.device("cpu")
    on_ray = type(executor).__name__ == "RayExecutor"  # its workers pick their own device
    models: dict = {}  # every run file read once
    tasks = cell_tasks(spec, preset, root, options, images, test_images, device, on_ray, data_root, models)
    pairs = pair_tasks(spec, preset, root, options, images, test_images, device, on_ray, data_root, models) \
        if set(options.measures) & set(PAIR_GROUPS) else []
    if not tasks:
        raise UsageError(f"{spec.name}: no finished cell under {Path(root) / spec.name / preset}; run `landscape "
                         f"ablate run {spec.name} --preset {preset}` first")
    path = measures_path(spec, preset, root)
    check_writable_folder(path.parent, "--results")
    with WriterLock(path):  # one writer per measures file: a second `ablate measure` on the same results refuses
        return measure_cells(spec, preset, path, tasks, options, images, test_images, executor, report, pairs)


def measure_cells(spec: Spec, preset: str, path: Path, tasks: list, options: MeasureOptions, images: int,
                  test_images: int, executor, report, pairs: list | None = None) -> Path:
    """Measure the tasks not yet in `path` (the lock held), writing the table after every cell."""
    from landscape.engine.executors import InProcess

    stored = json.dumps({**asdict(options), "images": images, "test_images": test_images}, sort_keys=True)
    names = [name for name, _, _ in tasks]
    table = MeasuresTable(path, {"spec": spec.name, "preset": preset, "options": stored,
                                 "axes": ",".join(spec.axes)}, names)
    if path.exists():
        done = read_measures(path)
        if done.attrs.get("options") != stored:
            raise UsageError(f"{path} was measured with other options; give the same options to resume, or remove it")
        for row, name in enumerate(done.cells):
            if done.done[row] and name in names:
                table.put(name, Measures({k: v[row] for k, v in done.values.items() if np.isfinite(v[row])},
                                         {k: v[row] for k, v in done.stderr.items() if np.isfinite(v[row])}),
                          done.info.get(name, {}))
    todo = [(name, info, task) for name, info, task in tasks if not table.done[names.index(name)]]

    def landed(index: int, result: Measures) -> None:
        name, info, _ = todo[index]
        table.put(name, result, info)
        write_measures(table)
        report(f"measured {spec.name} / {name} ({result.attrs.get('seconds', 0):.1f}s)")

    pairs = [pair for pair in pairs or [] if pair.row in names and not np.isfinite(
        table.column(table.values, pair.column)[names.index(pair.row)])]

    def paired(index: int, connection) -> None:
        pair = pairs[index]
        row, values = names.index(pair.row), pair_values(connection)
        for name, value in values.items():
            table.column(table.values, name)[row] = value
        write_measures(table)
        pair_path(path.parent, pair.row).parent.mkdir(exist_ok=True)
        connection.save(pair_path(path.parent, pair.row))
        report(f"measured the barrier between {pair.row} and {pair.other}: "
               f"{values[pair.column]:.4g} ({pair.column})")

    if todo or pairs:
        with executor or InProcess() as runner:
            if todo:
                runner.run_tasks([task for _, _, task in todo], landed, lambda: False)
            if pairs:
                runner.run_tasks([pair.task for pair in pairs], paired, lambda: False)
    return path

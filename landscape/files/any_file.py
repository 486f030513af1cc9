"""Reading a mix of our files by kind (run, surface, Hessian, path, measures), as `info`, `plot` and `report` take them (no torch).

One unreadable or foreign file is one note; the others are read."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from landscape.errors import UsageError
from landscape.files.hdf5 import file_format
from landscape.files.hessian_file import HessianResult, read_hessian
from landscape.files.measures_file import MeasuresTable, read_measures
from landscape.files.path_file import PathFile, read_path
from landscape.files.run_file import Run, read_run
from landscape.files.surface_file import Surface, read_surface


@dataclass
class Inputs:
    """Files read and sorted by kind (in the order given), with one note per file that could not be used."""

    runs: list[Run] = field(default_factory=list)
    surfaces: list[Surface] = field(default_factory=list)
    hessians: list[HessianResult] = field(default_factory=list)
    paths: list[PathFile] = field(default_factory=list)
    measures: list[MeasuresTable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    order: list = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.runs or self.surfaces or self.hessians or self.paths or self.measures)


def read_inputs(paths, need_steps: bool = False) -> Inputs:
    """Every file it can read; `need_steps`: a run file without a completed epoch is a note too."""
    inputs = Inputs()
    for path in map(Path, paths):
        kind = file_format(path) if path.is_file() else None
        try:
            if kind == "landscape-surface":
                item = read_surface(path)
                inputs.surfaces.append(item)
            elif kind == "landscape-hessian":
                item = read_hessian(path)
                inputs.hessians.append(item)
            elif kind == "landscape-path":
                item = read_path(path)
                inputs.paths.append(item)
            elif kind == "landscape-measures":
                item = read_measures(path)
                inputs.measures.append(item)
            else:
                item = read_run(path)
                if need_steps and item.steps == 0:
                    raise UsageError(f"{path}: no completed epoch yet, nothing to plot; wait for the first epoch")
                inputs.runs.append(item)
            inputs.order.append(item)
        except UsageError as exc:
            inputs.notes.append(str(exc))
    return inputs

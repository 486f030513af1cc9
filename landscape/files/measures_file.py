"""The measures file (`landscape.measures(...).save`, `landscape ablate measure`): HDF5 schema version 1 (numpy, h5py).

A table of models (cells) by measures. `/cells` [C] names the models (an ablation cell and seed, or `model`);
`/values/<measure>` [C] holds each measure (NaN: not measured), named as `engine.measures` names them
(`hessian_top`, `sharpness_worst_rho0.05`, `flatness_li_r0.1`, `gap_acc`, ...); `/stderr/<measure>` [C] the
standard error of a stochastic one; `/cell_info/<key>` [C] what describes each cell (for a grid: the axis values
as text, the seed, the final test accuracy). `/done` [C] marks the cells measured, so a grid resumes cell by cell.
Root attributes: the options (measures, rho, radius, steps, restarts, samples, directions, m, bn, seed, images).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from landscape.errors import UsageError
from landscape.files.atomic import write_atomically
from landscape.files.hdf5 import read_versioned, root_attrs

MEASURES_FORMAT = "landscape-measures"
MEASURES_SCHEMA_VERSION = 1
NUMERIC_INFO = ("final_test_acc", "best_test_acc", "seed", "lr", "criterion_met", "epochs_trained")


@dataclass
class MeasuresTable:
    """Measures of several models: `values[name]`, `stderr[name]` [C], `info[key]` [C] (text or numbers)."""

    path: Path
    attrs: dict
    cells: list[str]
    info: dict[str, dict] = field(default_factory=dict)  # cell -> its description (key -> value)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    stderr: dict[str, np.ndarray] = field(default_factory=dict)
    done: np.ndarray | None = None

    def __post_init__(self):
        if self.done is None:
            self.done = np.zeros(len(self.cells), dtype=np.uint8)

    def column(self, table: dict, name: str) -> np.ndarray:
        if name not in table:
            table[name] = np.full(len(self.cells), np.nan)
        return table[name]

    def put(self, cell: str, measures, info: dict) -> None:
        """Store one model's `engine.measures.Measures` (and what describes it) in row `cell`."""
        row = self.cells.index(cell)
        for name, value in measures.values.items():
            self.column(self.values, name)[row] = value
        for name, value in measures.stderr.items():
            self.column(self.stderr, name)[row] = value
        self.info[cell] = dict(info)
        self.done[row] = 1
        for key, value in measures.attrs.items():
            if key not in ("seconds", "loss_evaluations", "created") and \
                    not key.endswith(("_products", "_steps_taken", "_evaluations", "_passes")):  # per model: not the table's
                self.attrs.setdefault(key, value)


def info_columns(table: MeasuresTable) -> dict[str, np.ndarray]:
    keys = sorted({key for info in table.info.values() for key in info})
    columns = {}
    for key in keys:
        items = [table.info.get(cell, {}).get(key) for cell in table.cells]
        if all(isinstance(v, (int, float, np.number)) or v is None for v in items):
            columns[key] = np.array([np.nan if v is None else float(v) for v in items])
        else:
            columns[key] = np.array(["" if v is None else str(v) for v in items], dtype=object)
    return columns


def write_measures(table: MeasuresTable) -> Path:
    """Write the table atomically, every dataset described; return its path."""

    def write(target) -> None:
        with h5py.File(target, "w") as f:
            f.attrs.update(root_attrs(MEASURES_FORMAT, MEASURES_SCHEMA_VERSION, table.attrs))
            f.create_dataset("cells", data=np.array(table.cells, dtype=object), dtype=h5py.string_dtype())
            f["cells"].attrs["description"] = "the models measured (an ablation cell and seed, or model)"
            f.create_dataset("done", data=table.done).attrs["description"] = "1 where the cell has been measured"
            for group, arrays, text in (("values", table.values, "the measure of each cell (NaN: not measured)"),
                                        ("stderr", table.stderr, "standard error of the stochastic measure")):
                for name, array in arrays.items():
                    f.create_dataset(f"{group}/{name}", data=array).attrs["description"] = text
            for key, column in info_columns(table).items():
                data = column if column.dtype != object else np.array(column, dtype=object)
                dset = f.create_dataset(f"cell_info/{key}", data=data,
                                        **({"dtype": h5py.string_dtype()} if column.dtype == object else {}))
                dset.attrs["description"] = f"{key} of each cell"

    write_atomically(table.path, write)
    return table.path


def table_problem(table: MeasuresTable, columns: dict) -> str | None:
    """What is wrong with a measures table read from a file (None when it is sound): every value and standard error
    one number per cell, every description one entry per cell, `done` one flag per cell."""
    count = len(table.cells)
    if table.done.shape != (count,) or table.done.dtype.kind not in "biu":
        return "/done does not hold one flag per cell"
    for group, arrays in (("values", table.values), ("stderr", table.stderr)):
        for name, array in arrays.items():
            if array.shape != (count,) or array.dtype.kind not in "fiu":
                return f"/{group}/{name} does not hold one number per cell"
    for key, column in columns.items():
        if len(column) != count or np.ndim(column) != 1:
            return f"/cell_info/{key} does not hold one entry per cell"
        if key in NUMERIC_INFO and not all(isinstance(v, (int, float, np.number)) for v in column):
            return f"/cell_info/{key} holds text where numbers belong"
    return None


def read_measures(path: str | Path) -> MeasuresTable:
    """Read a measures file; UsageError (one line) when it is missing, damaged, not ours or too new."""

    def read(f, attrs: dict) -> MeasuresTable:
        cells = [c.decode() if isinstance(c, bytes) else str(c) for c in f["cells"][...]]
        table = MeasuresTable(Path(path), attrs, cells, done=f["done"][...])
        table.values = {k: v[...] for k, v in f["values"].items()} if "values" in f else {}
        table.stderr = {k: v[...] for k, v in f["stderr"].items()} if "stderr" in f else {}
        columns = {k: [x.decode() if isinstance(x, bytes) else x for x in v[...]] for k, v in f["cell_info"].items()} \
            if "cell_info" in f else {}
        table.info = {cell: {k: columns[k][i] for k in columns} for i, cell in enumerate(cells) if table.done[i]}
        problem = table_problem(table, columns)
        if problem:
            raise UsageError(f"{path}: inconsistent measures file: {problem}; it was damaged or edited, rerun "
                             f"`landscape ablate measure` (or measures(...).save) to recreate it")
        return table

    return read_versioned(path, MEASURES_FORMAT, MEASURES_SCHEMA_VERSION, "landscape ablate measure", read)

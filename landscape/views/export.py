"""A surface file as plain arrays for other tools: a VTK structured grid for ParaView, CSV or NumPy (no torch).

- `vts`: VTK's XML structured grid (ASCII, every value written with 17 significant digits, so it reads back
  exactly): one point per grid point at (x, y, z) with z the loss (its natural log with `log_scale`, as
  loss-landscape's h52vtp offers), and point data `loss`, `log_loss`, each metric and `done`. A 1D surface is a
  line of points (y = 0). ParaView opens it as it is (File > Open; colour by `loss`, Warp By Scalar for relief).
- `csv`: one row per grid point: x, y (2D), loss, each metric, done.
- `npz`: `x`, `y` (2D), `loss`, `metric_<name>`, `done`, and `attributes` (the file's root attributes as JSON).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from xml.sax.saxutils import quoteattr

import numpy as np

from landscape.errors import UsageError
from landscape.files.atomic import check_output, write_atomically
from landscape.files.surface_file import Surface
from landscape.views.csv_cells import inert_row

FORMATS = ("vtk", "csv", "npz")
SUFFIX = {"vtk": ".vts", "csv": ".csv", "npz": ".npz"}


def grid_columns(surface: Surface) -> dict[str, np.ndarray]:
    """Every point's coordinates and values, flattened in the grid's row order (x fastest)."""
    x = surface.x
    y = surface.y if surface.y is not None else np.zeros(1)
    grid_x, grid_y = np.meshgrid(x, y)
    columns = {"x": grid_x.ravel(), "y": grid_y.ravel(), "loss": surface.loss.ravel()}
    columns.update({name: values.ravel() for name, values in surface.metrics.items()})
    columns["done"] = surface.done.ravel().astype(np.int64)
    return columns


def numbers(values: np.ndarray) -> str:
    return " ".join("nan" if not np.isfinite(v) else repr(float(v)) for v in np.asarray(values, dtype=np.float64))


def vts_text(surface: Surface, log_scale: bool) -> str:
    """The VTK XML StructuredGrid document of `surface`."""
    columns = grid_columns(surface)
    nx, ny = len(surface.x), 1 if surface.y is None else len(surface.y)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_loss = np.log(columns["loss"])
    z = log_loss if log_scale else columns["loss"]
    points = np.stack([columns["x"], columns["y"], np.where(np.isfinite(z), z, np.nan)], axis=1)
    extent = f"0 {nx - 1} 0 {ny - 1} 0 0"
    arrays = {"loss": columns["loss"], "log_loss": log_loss,
              **{name: columns[name] for name in surface.metrics}}
    data = "".join(f'<DataArray type="Float64" Name={quoteattr(name)} format="ascii">{numbers(values)}'
                   f'</DataArray>\n' for name, values in arrays.items())
    data += f'<DataArray type="Int64" Name="done" format="ascii">{" ".join(map(str, columns["done"]))}</DataArray>\n'
    return (f'<?xml version="1.0"?>\n<VTKFile type="StructuredGrid" version="1.0" byte_order="LittleEndian">\n'
            f'<StructuredGrid WholeExtent="{extent}">\n<Piece Extent="{extent}">\n'
            f'<PointData Scalars="loss">\n{data}</PointData>\n'
            f'<Points>\n<DataArray type="Float64" NumberOfComponents="3" format="ascii">{numbers(points.ravel())}'
            f'</DataArray>\n</Points>\n</Piece>\n</StructuredGrid>\n</VTKFile>\n')


def export_surface(surface: Surface, out: str | Path, fmt: str, *, log_scale: bool = False,
                   overwrite: bool = False) -> Path:
    """Write `surface` as `fmt` (vtk, csv or npz) to `out` (atomically; never over the surface file itself)."""
    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r} is unknown: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    check_output(out, overwrite, [surface.path] if surface.path is not None else [])
    out.parent.mkdir(parents=True, exist_ok=True)  # a new folder, as the check allowed
    if fmt == "vtk":
        text = vts_text(surface, log_scale)
        write_atomically(out, lambda buffer: buffer.write(text.encode()))
    elif fmt == "csv":
        columns = grid_columns(surface)
        if surface.y is None:
            columns.pop("y")
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(inert_row(columns))
        writer.writerows(zip(*(values.tolist() for values in columns.values())))
        write_atomically(out, lambda buffer: buffer.write(rows.getvalue().encode()))
    else:
        arrays = {"x": surface.x, "loss": surface.loss, "done": surface.done.astype(np.uint8),
                  "attributes": np.asarray(json.dumps({k: str(v) for k, v in surface.attrs.items()}))}
        if surface.y is not None:
            arrays["y"] = surface.y
        arrays.update({f"metric_{name}": values for name, values in surface.metrics.items()})
        write_atomically(out, lambda buffer: np.savez(buffer, **arrays))
    return out


def export_file(path: str | Path, fmt: str, out: str | Path | None = None, *, log_scale: bool = False,
                overwrite: bool = False) -> Path:
    """`landscape export`: the surface file `path` as `fmt`, to `out` (default: beside it, with the format's suffix)."""
    from landscape.files.surface_file import read_surface

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is unknown: choose one of {', '.join(FORMATS)}")
    path = Path(path)
    return export_surface(read_surface(path), out or path.with_suffix(SUFFIX[fmt]), fmt, log_scale=log_scale,
                          overwrite=overwrite)

"""The surface file: HDF5 schema version 2, writer and reader (numpy and h5py only).

One file holds the loss and metrics of one model's neighbourhood on a 1D line or a 2D grid. `/x` [nx]
(and `/y` [ny]) are the coordinates along the directions, attached as HDF5 dimension scales of `/loss`,
`/done` and every `/metrics/<name>` ([ny, nx] in 2D: row iy is y = y[iy], as a matrix is drawn; [nx] in
1D); `/done` marks the points already computed (the others are NaN), so an interrupted surface resumes.
`/trajectory` (PCA directions) holds the snapshots projected onto the plane. Every option is in the
`options` attribute (JSON); random directions are regenerated from `seed`. Version 1 (before metrics
other than accuracy) kept the accuracy at `/acc`; it is read as the metric `acc`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from landscape.errors import UsageError
from landscape.files.atomic import write_atomically
from landscape.files.attributes import FILE_NAME, NUMBER, STRING, WHOLE, is_numeric
from landscape.files.hdf5 import read_versioned, root_attrs
from landscape.files.lock import current_status

SURFACE_FORMAT = "landscape-surface"
SURFACE_SCHEMA_VERSION = 2
STATUSES = ("running", "interrupted", "complete", "failed")
ATTRIBUTE_KINDS = {"lr": NUMBER, "epoch": WHOLE, "run": WHOLE, "model": STRING, "run_file": FILE_NAME,
                   "weights_file": FILE_NAME, "source": STRING, "status": STRING, "message": STRING,
                   "options": STRING, "dims": WHOLE, "directions": STRING, "norm": STRING, "ignore": STRING,
                   "seed": WHOLE, "to": STRING, "data": STRING, "images": WHOLE, "images_used": STRING, "bn": STRING,
                   "bn_images": WHOLE, "batch_size": WHOLE, "precision": STRING, "points_per_pass": WHOLE,
                   "device": STRING, "threads": WHOLE, "seconds": NUMBER, "nonfinite_points": WHOLE,
                   "num_classes": WHOLE}
METRIC_TEXT = {"acc": "fraction of the samples classified correctly at each point"}


@dataclass
class Surface:
    """A surface: coordinates, loss and metric grids (numpy), which points are done, and where they came from.

    What `landscape.surface(...)` returns and `read_surface` reads: `.loss`, `.x`, `.y` (None in 1D),
    `.metrics` (name -> grid; `.acc` for the accuracy), `.done`, `.options`; `.save(path)` writes the file.
    """

    path: Path | None
    attrs: dict
    x: np.ndarray
    y: np.ndarray | None
    loss: np.ndarray
    metrics: dict[str, np.ndarray]
    done: np.ndarray
    trajectory: dict[str, np.ndarray] | None = None
    explained_variance: np.ndarray | None = field(default=None)

    @property
    def dims(self) -> int:
        return 1 if self.y is None else 2

    @property
    def acc(self) -> np.ndarray | None:
        return self.metrics.get("acc")

    @property
    def options(self) -> dict:
        return json.loads(self.attrs.get("options", "{}"))

    @property
    def status(self) -> str:
        """As written, except that a file still `running` whose writer is gone (killed) is `interrupted`."""
        return current_status(str(self.attrs.get("status", "unknown")), self.path)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def label(self) -> str:
        lr = self.attrs.get("lr")
        rate = f" lr={float(lr):g}" if lr is not None and np.isfinite(float(lr)) else ""
        epoch = self.attrs.get("epoch")
        when = f" epoch {epoch}" if epoch is not None and int(epoch) >= 0 else ""
        return f"{self.attrs.get('model', '?')}{rate}{when}"

    @property
    def nonfinite(self) -> int:
        """Points computed whose loss is NaN or infinite."""
        return int((self.done & ~np.isfinite(self.loss)).sum())

    def save(self, path: str | Path | None = None) -> Path:
        """Write the surface file (atomically) to `path`, or where it was read from; return the path."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            raise UsageError("give the path to save the surface to: surface.save('surface.h5')")
        write_surface(self)
        return self.path


def write_surface(surface: Surface) -> None:
    """Write `surface` to its path atomically (a new copy, fsynced, renamed into place)."""

    def write(target) -> None:
        with h5py.File(target, "w") as f:
            f.attrs.update(root_attrs(SURFACE_FORMAT, SURFACE_SCHEMA_VERSION, surface.attrs))
            scales = []
            for name, values in (("x", surface.x), ("y", surface.y)):
                if values is None:
                    continue
                axis = f.create_dataset(name, fletcher32=True, data=np.asarray(values, dtype=np.float64))
                axis.attrs["description"] = f"coordinate along direction {name} (units of the direction)"
                axis.make_scale(name)
                scales.append(axis)
            scales.reverse()  # [ny, nx]: y is axis 0
            grids = [("loss", surface.loss, "mean loss over the samples at each point; NaN if not computed"),
                     ("done", surface.done.astype(np.uint8), "1 where the point has been computed")]
            grids += [(f"metrics/{name}", values, METRIC_TEXT.get(name, f"mean {name} over the samples at each point"))
                      for name, values in surface.metrics.items()]
            for name, values, text in grids:
                dset = f.create_dataset(name, fletcher32=True, data=values)
                dset.attrs["description"] = text
                for axis, scale in enumerate(scales):
                    dset.dims[axis].attach_scale(scale)
                    dset.dims[axis].label = scale.name.strip("/")
            if surface.explained_variance is not None:
                ev = f.create_dataset("explained_variance", fletcher32=True, data=surface.explained_variance)
                ev.attrs["description"] = "fraction of the trajectory's variance along each PCA direction"
            if surface.trajectory is not None:
                group = f.create_group("trajectory")
                group.attrs["description"] = ("the trajectory's points (snapshots) projected onto the directions "
                                              "(least squares), relative to the centre")
                for name, values in surface.trajectory.items():
                    group.create_dataset(name, fletcher32=True, data=values)

    write_atomically(surface.path, write)


def read_surface(path: str | Path) -> Surface:
    """Read a surface file; UsageError if it is missing, damaged, inconsistent, not a surface or too new."""

    def read(f, attrs: dict) -> Surface:
        metrics = {name: d[...] for name, d in f["metrics"].items()} if "metrics" in f else {}
        if "acc" in f and isinstance(f["acc"], h5py.Dataset):
            metrics["acc"] = f["acc"][...]  # schema 1
        trajectory = ({k: v[...] for k, v in f["trajectory"].items()} if "trajectory" in f else None)
        return Surface(path=Path(path), attrs=attrs, x=f["x"][...], y=f["y"][...] if "y" in f else None,
                       loss=f["loss"][...], metrics=metrics, done=f["done"][...].astype(bool), trajectory=trajectory,
                       explained_variance=f["explained_variance"][...] if "explained_variance" in f else None)

    surface = read_versioned(path, SURFACE_FORMAT, SURFACE_SCHEMA_VERSION, "landscape surface", read,
                             ATTRIBUTE_KINDS)
    check_consistent(surface)
    return surface


def check_consistent(surface: Surface) -> None:
    """Raise UsageError if a surface file's parts disagree (hand-edited or written by something else)."""
    shape = (len(surface.x),) if surface.y is None else (len(surface.y), len(surface.x))
    problem = None
    arrays = [surface.x, surface.loss, *surface.metrics.values(), *(surface.trajectory or {}).values()] + \
        [a for a in (surface.y, surface.explained_variance) if a is not None]
    if not all(is_numeric(a) for a in arrays):
        problem = "a dataset of coordinates or values holds text, not numbers"
    elif surface.x.ndim != 1 or len(surface.x) == 0 or (surface.y is not None and (surface.y.ndim != 1 or not len(surface.y))):
        problem = "/x or /y is not a non-empty list of coordinates"
    elif not (np.isfinite(surface.x).all() and (surface.y is None or np.isfinite(surface.y).all())):
        problem = "its coordinates are not finite"
    elif surface.loss.shape != shape or surface.done.shape != shape:
        problem = f"/loss {surface.loss.shape} and /done {surface.done.shape} are not the grid's {shape}"
    elif any(values.shape != shape for values in surface.metrics.values()):
        problem = "a metric is not on the grid"
    elif not np.issubdtype(surface.loss.dtype, np.floating):
        problem = "/loss is not floating point"
    elif surface.trajectory is not None and (
            "x" not in surface.trajectory or
            len({len(np.atleast_1d(v)) for v in surface.trajectory.values()}) != 1):
        problem = "/trajectory datasets disagree in length"
    elif surface.status not in STATUSES + ("unknown",):
        problem = f"its status {surface.status!r} is unknown"
    else:
        try:
            surface.options
        except (TypeError, ValueError):
            problem = "its options attribute is not JSON"
    if problem:
        raise UsageError(f"{surface.path}: inconsistent surface file: {problem}; it was damaged or edited, compute "
                         f"it again with `landscape surface`")

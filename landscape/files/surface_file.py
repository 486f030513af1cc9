"""The surface file (`landscape surface`): HDF5 schema version 1, writer and reader (numpy and h5py only).

One file holds the loss and accuracy of one snapshot's neighbourhood on a 1D line or a 2D grid.
`/x` [nx] (and `/y` [ny]) are the coordinates along the directions, attached as HDF5 dimension
scales of `/loss` and `/acc` ([ny, nx] in 2D: row iy is y = y[iy], as a matrix is drawn; [nx] in 1D);
`/done` marks the points already computed (the others are NaN), so an interrupted surface resumes.
`/trajectory` (PCA directions) holds the snapshots projected onto the plane. Every option is in
the `options` attribute (JSON); the random directions are regenerated from `seed`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from landscape import __version__
from landscape.files.run_file import read_versioned, write_atomically

SURFACE_FORMAT = "landscape-surface"
SURFACE_SCHEMA_VERSION = 1


@dataclass
class Surface:
    """A surface in memory: coordinates, values, which points are done, and where they came from."""

    path: Path
    attrs: dict
    x: np.ndarray
    y: np.ndarray | None
    loss: np.ndarray
    acc: np.ndarray
    done: np.ndarray
    trajectory: dict[str, np.ndarray] | None = None
    explained_variance: np.ndarray | None = field(default=None)

    @property
    def dims(self) -> int:
        return 1 if self.y is None else 2

    @property
    def options(self) -> dict:
        return json.loads(self.attrs["options"])

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def label(self) -> str:
        return f"{self.attrs.get('model', '?')} lr={float(self.attrs.get('lr', np.nan)):g} epoch {self.attrs.get('epoch')}"


def write_surface(surface: Surface) -> None:
    """Write `surface` to its path atomically (a new copy, fsynced, renamed into place)."""

    def write(target) -> None:
        with h5py.File(target, "w") as f:
            f.attrs.update({"format": SURFACE_FORMAT, "schema_version": SURFACE_SCHEMA_VERSION,
                            "landscape_version": __version__,
                            **{k: (str(v) if isinstance(v, str) else v) for k, v in surface.attrs.items()}})
            scales = []
            for name, values in (("x", surface.x), ("y", surface.y)):
                if values is None:
                    continue
                axis = f.create_dataset(name, fletcher32=True, data=np.asarray(values, dtype=np.float64))
                axis.attrs["description"] = f"coordinate along direction {name} (units of the direction)"
                axis.make_scale(name)
                scales.append(axis)
            scales.reverse()  # [ny, nx]: y is axis 0
            for name, values, text in (
                    ("loss", surface.loss, "mean cross-entropy over the images at each point; NaN if not computed"),
                    ("acc", surface.acc, "fraction of the images classified correctly at each point"),
                    ("done", surface.done.astype(np.uint8), "1 where the point has been computed")):
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
                group.attrs["description"] = ("the run's snapshots projected onto the directions (least squares), "
                                              "relative to the centre snapshot")
                for name, values in surface.trajectory.items():
                    group.create_dataset(name, fletcher32=True, data=values)

    write_atomically(surface.path, write)


def read_surface(path: str | Path) -> Surface:
    """Read a surface file; UsageError if it is missing, damaged, not a surface or too new."""

    def read(f, attrs: dict) -> Surface:
        trajectory = ({k: v[...] for k, v in f["trajectory"].items()} if "trajectory" in f else None)
        return Surface(path=Path(path), attrs=attrs, x=f["x"][...], y=f["y"][...] if "y" in f else None,
                       loss=f["loss"][...], acc=f["acc"][...], done=f["done"][...].astype(bool), trajectory=trajectory,
                       explained_variance=f["explained_variance"][...] if "explained_variance" in f else None)

    return read_versioned(path, SURFACE_FORMAT, SURFACE_SCHEMA_VERSION, "landscape surface", read)

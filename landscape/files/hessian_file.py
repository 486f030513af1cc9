"""The Hessian file (`landscape hessian`): HDF5 schema version 1, writer and reader (numpy and h5py only).

One file holds the curvature of chosen snapshots of one run file: runs (`/lrs`, `/runs`) by
snapshot epochs (`/epochs`). `/eigenvalues` [run, epoch, k] are the top k eigenvalues (descending)
of the Hessian of the mean training cross-entropy over the file's images, `/residuals` their Lanczos
residual estimates, `/lanczos_steps` and `/hvps` what they cost. With `--trace`: `/trace` and
`/trace_stderr`; with `--density`: `/density/nodes` and `/density/weights` [run, epoch, probe, step]
(stochastic Lanczos quadrature) and the smoothed `/density/grid`, `/density/values` [run, epoch, G].
NaN marks what was not computed. Every option is in the `options` attribute (JSON).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from landscape import __version__
from landscape.files.run_file import read_versioned, write_atomically

HESSIAN_FORMAT = "landscape-hessian"
HESSIAN_SCHEMA_VERSION = 1

DESCRIPTIONS = {
    "lrs": ("run",), "runs": ("run",), "epochs": ("epoch",),
    "eigenvalues": ("run", "epoch", "k"), "residuals": ("run", "epoch", "k"),
    "lanczos_steps": ("run", "epoch"), "hvps": ("run", "epoch"), "seconds": ("run", "epoch"),
    "trace": ("run", "epoch"), "trace_stderr": ("run", "epoch"),
    "density/nodes": ("run", "epoch", "probe", "step"), "density/weights": ("run", "epoch", "probe", "step"),
    "density/grid": ("run", "epoch", "point"), "density/values": ("run", "epoch", "point"),
}
TEXT = {
    "lrs": "learning rate of each measured run", "runs": "index of each measured run in the run file",
    "epochs": "snapshot epochs measured (0: the initialisation)",
    "eigenvalues": "largest eigenvalues of the Hessian of the mean training loss, descending",
    "residuals": "Ritz residual norm |beta_m s_mi| of each eigenvalue (|error| <= it; Lanczos stopped when "
                 "min(residual, residual^2 / gap) <= tol |eigenvalue|)",
    "lanczos_steps": "Lanczos steps taken for the eigenvalues", "hvps": "Hessian-vector products computed in all",
    "seconds": "wall time of the measurement", "trace": "Hutchinson estimate of the Hessian trace",
    "trace_stderr": "standard error of the trace estimate",
    "density/nodes": "stochastic Lanczos quadrature nodes (Ritz values) per probe vector",
    "density/weights": "quadrature weights (squared first eigenvector components), summing to one per probe",
    "density/grid": "eigenvalue axis of the smoothed density", "density/values": "smoothed spectral density",
}


@dataclass
class HessianResult:
    """A Hessian file in memory."""

    path: Path
    attrs: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def options(self) -> dict:
        return json.loads(self.attrs["options"])

    @property
    def label(self) -> str:
        return str(self.attrs.get("model", self.path.stem))


def write_hessian(result: HessianResult) -> None:
    """Write the file atomically; every dataset labelled and described."""

    def write(target) -> None:
        with h5py.File(target, "w") as f:
            f.attrs.update({"format": HESSIAN_FORMAT, "schema_version": HESSIAN_SCHEMA_VERSION,
                            "landscape_version": __version__,
                            **{k: (str(v) if isinstance(v, str) else v) for k, v in result.attrs.items()}})
            for name, values in result.arrays.items():
                dset = f.create_dataset(name, fletcher32=True, data=values)
                dset.attrs["description"] = TEXT[name]
                for axis, label in enumerate(DESCRIPTIONS[name]):
                    dset.dims[axis].label = label

    write_atomically(result.path, write)


def read_hessian(path: str | Path) -> HessianResult:
    """Read a Hessian file; UsageError if it is missing, damaged, not ours or too new."""

    def read(f, attrs: dict) -> HessianResult:
        return HessianResult(path=Path(path), attrs=attrs, arrays={name: f[name][...] for name in DESCRIPTIONS
                                                                   if name in f})

    return read_versioned(path, HESSIAN_FORMAT, HESSIAN_SCHEMA_VERSION, "landscape hessian", read)


def file_format(path: str | Path) -> str | None:
    """The `format` attribute of an HDF5 file, or None when it has none or is not HDF5."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("format")
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)

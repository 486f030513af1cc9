"""The Hessian file: HDF5 schema version 2, writer and reader (numpy and h5py only).

One file holds the curvature of chosen snapshots of one model: runs (`/lrs`, `/runs`) by snapshot epochs
(`/epochs`). `/eigenvalues` [run, epoch, k] are the top k eigenvalues (descending) of the Hessian of the
mean training loss over the file's samples, with their Lanczos residuals, error bounds and whether each met
the tolerance (`/converged`); `/eigen_hvps`, `/trace_hvps`, `/density_hvps` count each measurement's
Hessian-vector products apart. With trace: `/trace`, `/trace_stderr`; with density: `/density/nodes`
and `/density/weights` [run, epoch, probe, step] (stochastic Lanczos quadrature) and the smoothed
`/density/grid`, `/density/values` [run, epoch, G]. `/done` marks the measurements made; NaN marks what
was not computed. The root attribute `operator` names the matrix (hessian, ggn: the generalized Gauss-Newton
matrix, fisher: the empirical Fisher; absent: hessian); `/basis_vectors` and `/restarts` say how many vectors
the Lanczos basis held and how often it was restarted to stay within them (absent in older files: all steps, 0). The `status` attribute says `running`, `interrupted` (partial) or `complete`. Version 1
(before `/done`, `/converged` and the split product counts) is read too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from landscape.errors import UsageError
from landscape.files.atomic import write_atomically
from landscape.files.attributes import FILE_NAME, NUMBER, STRING, WHOLE
from landscape.files.hdf5 import read_versioned, root_attrs
from landscape.files.lock import current_status

HESSIAN_FORMAT = "landscape-hessian"
HESSIAN_SCHEMA_VERSION = 2
STATUSES = ("running", "interrupted", "complete", "failed")

AXES = {
    "lrs": ("run",), "runs": ("run",), "epochs": ("epoch",),
    "eigenvalues": ("run", "epoch", "k"), "residuals": ("run", "epoch", "k"), "error_bounds": ("run", "epoch", "k"),
    "converged": ("run", "epoch", "k"), "done": ("run", "epoch"),
    "lanczos_steps": ("run", "epoch"), "eigen_hvps": ("run", "epoch"), "trace_hvps": ("run", "epoch"),
    "density_hvps": ("run", "epoch"), "seconds": ("run", "epoch"),
    "basis_vectors": ("run", "epoch"), "restarts": ("run", "epoch"),
    "trace": ("run", "epoch"), "trace_stderr": ("run", "epoch"),
    "density/nodes": ("run", "epoch", "probe", "step"), "density/weights": ("run", "epoch", "probe", "step"),
    "density/grid": ("run", "epoch", "point"), "density/values": ("run", "epoch", "point"),
    "hvps": ("run", "epoch"),  # schema 1: all products together
}
TEXT = {
    "lrs": "learning rate of each measured run (NaN: a model measured outside a run file)",
    "runs": "index of each measured run in the run file",
    "epochs": "snapshot epochs measured (0: the initialisation; -1: a model measured outside a run file)",
    "eigenvalues": "largest eigenvalues of the mean training loss's curvature matrix (root attribute operator: "
                   "hessian, ggn or fisher), descending",
    "residuals": "Ritz residual norm |beta_m s_mi| of each eigenvalue (a true eigenvalue lies within it)",
    "error_bounds": "error bound min(residual, residual^2 / gap) of each eigenvalue",
    "converged": "1 where the error bound is within tol x |eigenvalue|; 0: Lanczos stopped at max_steps first",
    "done": "1 where the measurement has been made",
    "lanczos_steps": "Lanczos steps taken for the eigenvalues",
    "eigen_hvps": "Hessian-vector products spent on the eigenvalues",
    "trace_hvps": "Hessian-vector products spent on the trace",
    "density_hvps": "Hessian-vector products spent on the density",
    "seconds": "wall time of the measurement",
    "basis_vectors": "vectors the Lanczos basis held (fewer than lanczos_steps: thick-restarted to fit in memory)",
    "restarts": "thick restarts of the Lanczos basis (0: plain Lanczos)",
    "trace": "estimate of the Hessian trace (by the root attribute trace_method: krylov, xtrace, hutch++ or hutchinson)",
    "trace_stderr": "standard error of the trace estimate",
    "density/nodes": "stochastic Lanczos quadrature nodes (Ritz values) per probe vector",
    "density/weights": "quadrature weights (squared first eigenvector components), summing to one per probe",
    "density/grid": "eigenvalue axis of the smoothed density", "density/values": "smoothed spectral density",
    "hvps": "Hessian-vector products computed in all (schema 1)",
}
DENSITY_POINTS = 1000
ATTRIBUTE_KINDS = {"run_file": FILE_NAME, "weights_file": FILE_NAME, "model": STRING, "source": STRING,
                   "optimizer": STRING, "momentum": NUMBER, "status": STRING, "message": STRING, "options": STRING,
                   "bn": STRING, "hvp": STRING, "images": WHOLE, "images_used": STRING, "params": STRING,
                   "batch_size": WHOLE, "tol": NUMBER, "max_steps": WHOLE, "seed": WHOLE, "device": STRING,
                   "threads": WHOLE, "trace_method": STRING, "trace_products": WHOLE,
                   "operator": STRING, "density_reorthogonalisation": STRING}


@dataclass
class HessianResult:
    """A Hessian file in memory: attributes and arrays by dataset name."""

    path: Path
    attrs: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def options(self) -> dict:
        return json.loads(self.attrs.get("options", "{}"))

    @property
    def label(self) -> str:
        return str(self.attrs.get("model", self.path.stem))

    @property
    def status(self) -> str:
        """As written, except that a file still `running` whose writer is gone (killed) is `interrupted`."""
        return current_status(str(self.attrs.get("status", "complete")), self.path)

    @property
    def done(self) -> np.ndarray:
        """[run, epoch] bool: measurements made (schema 1: where an eigenvalue is finite)."""
        if "done" in self.arrays:
            return self.arrays["done"].astype(bool)
        return np.isfinite(self.arrays["eigenvalues"][..., 0])

    @property
    def partial(self) -> bool:
        return not bool(self.done.all())

    @property
    def converged(self) -> np.ndarray | None:
        return self.arrays["converged"].astype(bool) if "converged" in self.arrays else None

    def put(self, i: int, j: int, spectrum) -> None:
        """Store one measurement (an `engine.curvature.Spectrum`) at run i, epoch j."""
        a, k = self.arrays, len(spectrum.eigenvalues)
        a["eigenvalues"][i, j, :k], a["residuals"][i, j, :k] = spectrum.eigenvalues, spectrum.residuals
        a["error_bounds"][i, j, :k], a["converged"][i, j, :k] = spectrum.error_bounds, spectrum.converged
        a["lanczos_steps"][i, j], a["eigen_hvps"][i, j] = spectrum.lanczos_steps, spectrum.eigen_hvps
        a["seconds"][i, j], a["done"][i, j] = spectrum.seconds, 1
        a["basis_vectors"][i, j], a["restarts"][i, j] = spectrum.basis_vectors, spectrum.restarts
        if "trace" in a:
            a["trace"][i, j], a["trace_stderr"][i, j] = spectrum.trace, spectrum.trace_stderr
            a["trace_hvps"][i, j] = spectrum.trace_hvps
        if "density/nodes" in a:
            a["density/nodes"][i, j], a["density/weights"][i, j] = spectrum.density_nodes, spectrum.density_weights
            a["density/grid"][i, j], a["density/values"][i, j] = spectrum.density_grid, spectrum.density
            a["density_hvps"][i, j] = spectrum.density_hvps


def hessian_result(path: Path, attrs: dict, lrs, runs, epochs, k: int, *, trace: bool = False,
                   density: tuple[int, int] | None = None) -> HessianResult:
    """An empty Hessian file of len(runs) runs by len(epochs) snapshots (NaN, nothing done)."""
    shape = (len(runs), len(epochs))
    arrays = {"lrs": np.asarray(lrs, dtype=np.float64), "runs": np.asarray(runs, dtype=np.int64),
              "epochs": np.asarray(epochs, dtype=np.int64), "eigenvalues": np.full((*shape, k), np.nan),
              "residuals": np.full((*shape, k), np.nan), "error_bounds": np.full((*shape, k), np.nan),
              "converged": np.zeros((*shape, k), dtype=np.uint8), "done": np.zeros(shape, dtype=np.uint8),
              "lanczos_steps": np.zeros(shape, dtype=np.int64), "eigen_hvps": np.zeros(shape, dtype=np.int64),
              "seconds": np.zeros(shape), "basis_vectors": np.zeros(shape, dtype=np.int64),
              "restarts": np.zeros(shape, dtype=np.int64)}
    if trace:
        arrays.update(trace=np.full(shape, np.nan), trace_stderr=np.full(shape, np.nan),
                      trace_hvps=np.zeros(shape, dtype=np.int64))
    if density is not None:
        arrays.update({"density/nodes": np.full((*shape, *density), np.nan),
                       "density/weights": np.zeros((*shape, *density)),
                       "density/grid": np.full((*shape, DENSITY_POINTS), np.nan),
                       "density/values": np.full((*shape, DENSITY_POINTS), np.nan),
                       "density_hvps": np.zeros(shape, dtype=np.int64)})
    return HessianResult(Path(path), dict(attrs), arrays)


def write_hessian(result: HessianResult) -> None:
    """Write the file atomically; every dataset labelled and described."""

    def write(target) -> None:
        with h5py.File(target, "w") as f:
            f.attrs.update(root_attrs(HESSIAN_FORMAT, HESSIAN_SCHEMA_VERSION, result.attrs))
            for name, values in result.arrays.items():
                dset = f.create_dataset(name, fletcher32=True, data=values)
                dset.attrs["description"] = TEXT[name]
                for axis, label in enumerate(AXES[name]):
                    dset.dims[axis].label = label

    write_atomically(result.path, write)


def read_hessian(path: str | Path) -> HessianResult:
    """Read a Hessian file; UsageError if it is missing, damaged, inconsistent, not ours or too new."""

    def read(f, attrs: dict) -> HessianResult:
        return HessianResult(path=Path(path), attrs=attrs, arrays={name: f[name][...] for name in AXES if name in f})

    result = read_versioned(path, HESSIAN_FORMAT, HESSIAN_SCHEMA_VERSION, "landscape hessian", read, ATTRIBUTE_KINDS)
    if "eigen_hvps" not in result.arrays and "hvps" in result.arrays:
        result.arrays["eigen_hvps"] = result.arrays["hvps"]  # schema 1 counted all products together
    check_consistent(result)
    return result


def check_consistent(result: HessianResult) -> None:
    """Raise UsageError if the file's arrays disagree (hand-edited, damaged or written by something else)."""
    a = result.arrays
    problem = None
    for required in ("lrs", "runs", "epochs", "eigenvalues"):
        if required not in a:
            problem = f"it has no /{required}"
            break
    else:
        runs, epochs = len(a["lrs"]), len(a["epochs"])
        if a["lrs"].ndim != 1 or a["runs"].shape != (runs,) or a["epochs"].ndim != 1 or not runs or not epochs:
            problem = "/lrs, /runs and /epochs are not one list each"
        elif a["eigenvalues"].ndim != 3 or a["eigenvalues"].shape[:2] != (runs, epochs):
            problem = f"/eigenvalues has shape {a['eigenvalues'].shape}, not [{runs} runs, {epochs} epochs, k]"
        else:
            k = a["eigenvalues"].shape[2]
            for name, axes in AXES.items():
                if name not in a or axes[0] != "run" or len(axes) < 2:
                    continue
                if a[name].ndim != len(axes) or a[name].shape[:2] != (runs, epochs) or \
                        (axes[-1] == "k" and a[name].shape[2] != k):
                    problem = f"/{name} has shape {a[name].shape}, not that of the measurements"
                    break
                if not np.issubdtype(a[name].dtype, np.number):
                    problem = f"/{name} is not numeric"
                    break
    if problem is None and result.status not in STATUSES:
        problem = f"its status {result.status!r} is unknown"
    if problem is None:
        try:
            result.options
        except (TypeError, ValueError):
            problem = "its options attribute is not JSON"
    if problem:
        raise UsageError(f"{result.path}: inconsistent Hessian file: {problem}; it was damaged or edited, measure it "
                         f"again with `landscape hessian`")

"""The run file: HDF5 schema version 1, its writer and its reader (numpy and h5py only).

One file holds one `landscape run`: R runs (one per learning rate) trained in lockstep.
Axis names are stored as HDF5 dimension labels ("run", "step", "epoch") and every dataset has a
`description` attribute, so a user with h5py alone can tell what each array means. The README
documents the same schema. The writer opens the file only while it appends, so `landscape info`
and `landscape plot` can read a run that is still training.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from landscape import __version__
from landscape.errors import UsageError

SCHEMA_VERSION = 1
FORMAT_NAME = "landscape-run"
STATUSES = ("running", "complete", "failed", "interrupted")

# name -> (dtype, description); each is [R, E]: one value per run per completed epoch.
EPOCH_METRICS: dict[str, tuple[str, str]] = {
    "lr": ("float64", "learning rate during the epoch (after schedule and warmup)"),
    "train_loss": ("float32", "mean training loss over the epoch's steps (train mode, with label smoothing if set)"),
    "train_acc": ("float32", "fraction of training images classified correctly during the epoch (train mode)"),
    "test_loss": ("float32", "mean cross-entropy on the test split after the epoch (eval mode, no label smoothing)"),
    "test_acc": ("float32", "fraction of the test split classified correctly after the epoch (eval mode)"),
    "best_test_acc": ("float32", "best test accuracy up to and including the epoch"),
    "best_epoch": ("int32", "epoch (from 1) of best_test_acc; 0 if none yet"),
}

# name -> (axes after "run", description); stored float64 under /probe, one row per probed step.
PROBE_DATASETS: dict[str, tuple[tuple[str, ...], str]] = {
    "loss": (("probe", "multiplier"), "loss variation: L_B(p_j) at the probe point p_j = w + m_j d on the step's "
                                      "batch B (train-mode BatchNorm, running statistics untouched)"),
    "grad_dist": (("probe", "multiplier"), "gradient predictiveness: ||grad L_B(p_j) - grad L_B(w)||_2"),
    "distance": (("probe", "multiplier"), "distance moved: ||p_j - w||_2 = m_j ||d||_2"),
    "beta": (("probe",), "effective beta-smoothness: max_j grad_dist_j / distance_j"),
    "grad_norm": (("probe",), "||grad L_B(w)||_2, the gradient norm at the probed step"),
}
PROBE_FIELDS = tuple(PROBE_DATASETS)


def _label_axes(dset: h5py.Dataset, *labels: str) -> None:
    for axis, label in enumerate(labels):
        dset.dims[axis].label = label


def _append(dset: h5py.Dataset, block: np.ndarray, axis: int) -> None:
    start = dset.shape[axis]
    dset.resize(start + block.shape[axis], axis=axis)
    index = [slice(None)] * dset.ndim
    index[axis] = slice(start, start + block.shape[axis])
    dset[tuple(index)] = block


class RunWriter:
    """Creates a run file and appends to it; every call opens, writes, flushes and closes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def create(self, *, config_json: str, lrs: list[float], attrs: dict, overwrite: bool = False,
               probe_multipliers: list[float] | None = None, probe_direction: str = "update") -> None:
        """Write an empty run file; refuses to replace an existing one unless `overwrite`.

        With `probe_multipliers`, the /probe group is laid out too.
        """
        runs = len(lrs)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(temp, "w") as f:
                self._layout(f, runs, lrs, config_json, attrs)
                if probe_multipliers:
                    self._probe_layout(f, runs, probe_multipliers, probe_direction)
            if overwrite:
                os.replace(temp, self.path)
            else:
                os.link(temp, self.path)  # atomic, and fails rather than replace a file created meanwhile
        except FileExistsError:
            raise UsageError(f"{self.path} already exists: pass --overwrite to replace it, "
                             f"or choose another --out") from None
        finally:
            temp.unlink(missing_ok=True)

    @staticmethod
    def _layout(f: h5py.File, runs: int, lrs: list[float], config_json: str, attrs: dict) -> None:
        """Create the empty datasets and root attributes of schema version 1."""
        f.attrs.update({
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "message": "",
            "config": config_json,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python_version": platform.python_version(),
            "landscape_version": __version__,
            **{k: (str(v) if isinstance(v, str) else v) for k, v in attrs.items()},
        })
        lr = f.create_dataset("lrs", data=np.asarray(lrs, dtype=np.float64))
        lr.attrs["description"] = "learning rate of each run; the 'run' axis of every [R, ...] dataset"
        _label_axes(lr, "run")
        loss = f.create_dataset("train/loss", shape=(runs, 0), maxshape=(runs, None), dtype="float32",
                                chunks=(runs, 4096), fillvalue=np.nan)
        loss.attrs["description"] = ("training loss of each run at each optimizer step, on the batch of that "
                                     "step before the update (train mode); NaN after a run diverged")
        _label_axes(loss, "run", "step")
        step_epoch = f.create_dataset("train/epoch", shape=(0,), maxshape=(None,), dtype="int32", chunks=(4096,))
        step_epoch.attrs["description"] = "epoch (from 0) that each step belongs to"
        _label_axes(step_epoch, "step")
        for name, (dtype, text) in EPOCH_METRICS.items():
            d = f.create_dataset(f"epoch/{name}", shape=(runs, 0), maxshape=(runs, None), dtype=dtype,
                                 chunks=(runs, 64), fillvalue=0 if dtype.startswith("int") else np.nan)
            d.attrs["description"] = text
            _label_axes(d, "run", "epoch")
        wall = f.create_dataset("epoch/wall_time", shape=(0,), maxshape=(None,), dtype="float64", chunks=(64,))
        wall.attrs.update(description="seconds since training started, at the end of each epoch "
                                      "(runs advance in lockstep and share one clock)", units="s")
        _label_axes(wall, "epoch")
        div = f.create_dataset("diverged_step", data=np.full(runs, -1, dtype=np.int64))
        div.attrs["description"] = "first step whose loss was not finite, per run; -1 if the run never diverged"
        _label_axes(div, "run")
        stop = f.create_dataset("stopped_epoch", data=np.full(runs, -1, dtype=np.int64))
        stop.attrs["description"] = ("epoch (from 1) after which early stopping ended the run; -1 if it was not "
                                     "stopped early")
        _label_axes(stop, "run")

    @staticmethod
    def _probe_layout(f: h5py.File, runs: int, multipliers: list[float], direction: str) -> None:
        """The /probe group: probed steps, multipliers and one dataset per measure."""
        group = f.create_group("probe")
        group.attrs["direction"] = direction
        group.attrs["description"] = (
            "Santurkar et al. (2018) probes: at each probed step, with w the weights before the step, "
            "d the probe direction ('update': w_next - w; 'gradient': -lr * grad) and m_j the multipliers, "
            "the loss and gradient at p_j = w + m_j d on the same batch")
        step = group.create_dataset("step", shape=(0,), maxshape=(None,), dtype="int64", chunks=(256,))
        step.attrs["description"] = "training step (index into /train/loss) of each probe"
        _label_axes(step, "probe")
        mult = group.create_dataset("multipliers", data=np.asarray(multipliers, dtype=np.float64))
        mult.attrs["description"] = "step multipliers m_j"
        _label_axes(mult, "multiplier")
        jcount = len(multipliers)
        for name, (axes, text) in PROBE_DATASETS.items():
            shape, maxshape, chunks = (runs, 0), (runs, None), (runs, 256)
            if "multiplier" in axes:
                shape, maxshape, chunks = shape + (jcount,), maxshape + (jcount,), chunks + (jcount,)
            d = group.create_dataset(name, shape=shape, maxshape=maxshape, dtype="float64", chunks=chunks,
                                     fillvalue=np.nan)
            d.attrs["description"] = text
            _label_axes(d, "run", *axes)

    def append_epoch(self, *, step_losses: np.ndarray, epoch: int, metrics: dict[str, np.ndarray],
                     wall_time: float, diverged_step: np.ndarray, stopped_epoch: np.ndarray,
                     probes: dict[str, np.ndarray] | None = None) -> None:
        """Append one finished epoch: its step losses [R, k], metrics (each [R]), wall time, divergences.

        Steps and epoch metrics are written in one open, so a reader never sees one without the other.
        """
        with h5py.File(self.path, "a") as f:
            _append(f["train/loss"], np.asarray(step_losses, dtype=np.float32), axis=1)
            _append(f["train/epoch"], np.full(step_losses.shape[1], epoch, dtype=np.int32), axis=0)
            for name in EPOCH_METRICS:
                _append(f[f"epoch/{name}"], np.asarray(metrics[name], dtype=EPOCH_METRICS[name][0])[:, None], axis=1)
            _append(f["epoch/wall_time"], np.asarray([wall_time], dtype=np.float64), axis=0)
            f["diverged_step"][...] = diverged_step
            f["stopped_epoch"][...] = stopped_epoch
            if probes is not None and len(probes["step"]):
                _append(f["probe/step"], np.asarray(probes["step"], dtype=np.int64), axis=0)
                for name in PROBE_FIELDS:
                    _append(f[f"probe/{name}"], np.asarray(probes[name], dtype=np.float64), axis=1)

    def set_status(self, status: str, message: str = "") -> None:
        """Mark the file running, complete, failed or interrupted, with a one-line message."""
        assert status in STATUSES, status
        with h5py.File(self.path, "a") as f:
            f.attrs["status"] = status
            f.attrs["message"] = message


@dataclass
class Run:
    """A run file read into numpy arrays."""

    path: Path
    attrs: dict
    config: dict
    lrs: np.ndarray
    train_loss: np.ndarray  # [R, S]
    train_epoch: np.ndarray  # [S]
    epoch: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [R, E] (wall_time [E])
    diverged_step: np.ndarray | None = None
    stopped_epoch: np.ndarray | None = None
    probe: dict[str, np.ndarray] | None = None  # step [P], multipliers [J], and PROBE_FIELDS [R, P(, J)]

    @property
    def model(self) -> str:
        return str(self.config.get("model", self.path.stem))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def steps(self) -> int:
        return int(self.train_loss.shape[1])

    @property
    def epochs_done(self) -> int:
        return int(self.epoch["test_acc"].shape[1]) if "test_acc" in self.epoch else 0


def read_run(path: str | Path) -> Run:
    """Read a run file; raise UsageError if it is missing, not HDF5, not ours, or too new."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give the .h5 file written by `landscape run`")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path}: not an HDF5 file; give the .h5 file written by `landscape run`")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT_NAME or "schema_version" not in attrs:
                raise UsageError(f"{path}: an HDF5 file, but not a landscape run (no format={FORMAT_NAME!r} attribute)")
            version = int(attrs["schema_version"])
            if version > SCHEMA_VERSION:
                raise UsageError(f"{path}: schema version {version} is newer than this landscape "
                                 f"({__version__}, schema {SCHEMA_VERSION}); upgrade landscape to read it")
            epoch = {name: f[f"epoch/{name}"][...] for name in EPOCH_METRICS}
            epoch["wall_time"] = f["epoch/wall_time"][...]
            probe = None
            if "probe" in f:
                probe = {name: f[f"probe/{name}"][...] for name in ("step", "multipliers", *PROBE_FIELDS)}
            return Run(path=path, attrs=attrs, config=json.loads(attrs["config"]), lrs=f["lrs"][...],
                       train_loss=f["train/loss"][...], train_epoch=f["train/epoch"][...], epoch=epoch,
                       diverged_step=f["diverged_step"][...], stopped_epoch=f["stopped_epoch"][...], probe=probe)
    except (OSError, KeyError) as exc:
        raise UsageError(f"{path}: unreadable or incomplete run file ({exc}); it may be corrupt") from None

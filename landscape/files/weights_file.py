"""Weight snapshots: every run's parameters and buffers at chosen epochs, in `<run>.weights.h5` (no torch).

`landscape run` saves the shared initialisation (epoch 0), every `--snapshot-every` epochs and the
end of the run. The surfaces (`landscape.engine.surface`) and curvature (`landscape.engine.curvature`) read them.
Schema version 1: `/lrs` [R]; one group `/snapshots/epoch_EEEE` per saved epoch (attributes `epoch`,
`step`) holding one dataset per state-dict entry, [R, *shape], float32 for floating tensors (an
integer buffer such as BatchNorm's `num_batches_tracked` keeps its type), with the attribute
`kind` = `parameter` or `buffer`. The file is written like the run file: built in memory, written to a new copy, fsynced
and renamed into place, so a crash or a full disk leaves the last good one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from landscape import __version__
from landscape.errors import UsageError
from landscape.files.atomic import write_atomically
from landscape.files.attributes import FILE_NAME, STRING
from landscape.files.hdf5 import open_ours, read_versioned

WEIGHTS_FORMAT = "landscape-weights"
WEIGHTS_SCHEMA_VERSION = 1
ATTRIBUTE_KINDS = {"run_file": FILE_NAME, "config": STRING, "model": STRING}


def weights_path(run_path: str | Path) -> Path:
    """Where the snapshots of `run_path` live: `<run>.weights.h5` beside it."""
    run_path = Path(run_path)
    return run_path.with_name(run_path.stem + ".weights.h5")


def group_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


class SnapshotWriter:
    """Adds snapshots to a weights file, one atomic rewrite per snapshot (the file is copied, then extended)."""

    def __init__(self, path: str | Path, *, run_file: str, lrs: list[float], config_json: str, model: str):
        self.path = Path(path)
        self.attrs = {"format": WEIGHTS_FORMAT, "schema_version": WEIGHTS_SCHEMA_VERSION, "run_file": run_file,
                      "config": config_json, "model": model, "landscape_version": __version__,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.lrs = np.asarray(lrs, dtype=np.float64)

    def add(self, epoch: int, step: int, tensors: dict[str, np.ndarray], parameter_names: set[str]) -> None:
        """Save the state of every run at `epoch` (each tensor [R, ...]); replaces a snapshot of the same epoch."""

        def write(buffer) -> None:
            if self.path.exists():
                buffer.write(self.path.read_bytes())
                buffer.seek(0)
            with h5py.File(buffer, "a") as f:
                if "lrs" not in f:
                    f.attrs.update(self.attrs)
                    lrs = f.create_dataset("lrs", fletcher32=True, data=self.lrs)
                    lrs.attrs["description"] = "learning rate of each run (axis 0 of every snapshot dataset)"
                    lrs.dims[0].label = "run"
                    group = f.create_group("snapshots")
                    group.attrs["description"] = ("one group per saved epoch: each run's state-dict entries as "
                                                  "[run, *shape]; epoch 0 is the shared initialisation")
                snapshots = f["snapshots"]
                name = group_name(epoch)
                if name in snapshots:
                    del snapshots[name]
                group = snapshots.create_group(name)
                group.attrs.update(epoch=epoch, step=step)
                for key, value in tensors.items():
                    data = value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
                    dset = group.create_dataset(key, fletcher32=True, data=data)
                    dset.attrs["kind"] = "parameter" if key in parameter_names else "buffer"
                    dset.dims[0].label = "run"

        write_atomically(self.path, write)


@dataclass
class Weights:
    """A weights file's index: which epochs and tensors it holds. Tensors are read on demand by `state`."""

    path: Path
    attrs: dict
    lrs: np.ndarray
    epochs: list[int]
    steps: list[int]
    names: list[str]
    kinds: dict[str, str]
    shapes: dict[str, tuple[int, ...]]

    @property
    def parameter_names(self) -> list[str]:
        return [n for n in self.names if self.kinds[n] == "parameter"]

    @property
    def config(self) -> dict:
        return json.loads(self.attrs["config"])

    def state(self, epoch: int, run: int) -> dict[str, np.ndarray]:
        """Every state-dict entry of run `run` at `epoch`, as numpy arrays."""
        if epoch not in self.epochs:
            raise UsageError(f"{self.path} has no snapshot at epoch {epoch}; it has epochs "
                             f"{', '.join(map(str, self.epochs))}")
        with open_ours(self.path, WEIGHTS_FORMAT, WEIGHTS_SCHEMA_VERSION, "landscape run") as (f, _):
            group = f["snapshots"][group_name(epoch)]
            return {name: np.asarray(group[name][run]) for name in self.names}


def weights_of_run(run) -> Weights:
    """The snapshots of a run file (`store.Run`), from the `weights_file` it records or the default name."""
    name = run.attrs.get("weights_file")
    path = run.path.with_name(name) if name else weights_path(run.path)
    if not name and not path.exists():
        raise UsageError(f"{run.path} has no weight snapshots (run with --no-snapshots, or by a landscape before "
                         f"0.2); rerun `landscape run` to save them")
    return read_weights(path)


def resolve_run(lrs: np.ndarray, lr: float | None, index: int | None, path: Path) -> int:
    """The run index picked by `--lr RATE` or `--run INDEX` (the only run when there is one)."""
    rates = ", ".join(f"{v:g}" for v in lrs)
    if lr is not None and index is not None:
        raise UsageError("give --lr or --run, not both")
    if index is not None:
        if not 0 <= index < len(lrs):
            raise UsageError(f"--run {index} is out of range: {path} has {len(lrs)} runs (0..{len(lrs) - 1})")
        return index
    if lr is None:
        if len(lrs) == 1:
            return 0
        raise UsageError(f"{path} holds several runs: pick one with --lr (one of {rates}) or --run INDEX")
    matches = np.flatnonzero(np.isclose(lrs, lr, rtol=1e-9, atol=0))
    if not matches.size:
        raise UsageError(f"--lr {lr:g} is not a rate of {path}: choose one of {rates}")
    return int(matches[0])


def resolve_epoch(weights: Weights, epoch: int | None) -> int:
    """The snapshot epoch picked by `--epoch` (default: the last one saved)."""
    if epoch is None:
        return weights.epochs[-1]
    if epoch not in weights.epochs:
        raise UsageError(f"--epoch {epoch}: {weights.path} has snapshots at epochs "
                         f"{', '.join(map(str, weights.epochs))}; pick one of those, or rerun with --snapshot-every")
    return epoch


def read_weights(path: str | Path) -> Weights:
    """Open a weights file; UsageError if it is missing, damaged, not ours or too new."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no weight snapshots; rerun `landscape run` without --no-snapshots "
                         f"(snapshots are saved by default)")

    def read(f, attrs: dict) -> Weights:
        groups = sorted(f["snapshots"].values(), key=lambda g: int(g.attrs["epoch"]))
        if not groups:
            raise UsageError(f"{path}: holds no snapshot yet; wait for the run to save one")
        first = groups[0]
        names = list(first.keys())
        return Weights(path=path, attrs=attrs, lrs=f["lrs"][...], epochs=[int(g.attrs["epoch"]) for g in groups],
                       steps=[int(g.attrs["step"]) for g in groups], names=names,
                       kinds={n: str(first[n].attrs["kind"]) for n in names},
                       shapes={n: tuple(first[n].shape[1:]) for n in names})

    return read_versioned(path, WEIGHTS_FORMAT, WEIGHTS_SCHEMA_VERSION, "landscape run", read, ATTRIBUTE_KINDS)

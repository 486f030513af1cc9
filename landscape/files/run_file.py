"""The run file: HDF5 schema version 1, its writer and its reader (numpy and h5py only).

One file holds one `landscape run`: R runs (one per learning rate) trained in lockstep.
Axis names are stored as HDF5 dimension labels ("run", "step", "epoch") and every dataset has a
`description` attribute, so a user with h5py alone can tell what each array means. The README
documents the same schema. Every dataset carries an HDF5 Fletcher-32 checksum, so a damaged chunk is
an error when read, never a wrong number. The writer opens the file only while it appends, so `landscape info`
and `landscape plot` can read a run that is still training.
"""
from __future__ import annotations

import errno
import io
import json
import os
import platform
import signal
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


def _growing(group: h5py.Group, name: str, data: np.ndarray, description: str, *labels: str) -> None:
    """A checksummed dataset that grows along the axis labelled by `labels[1]` (or the only one), described."""
    data = np.asarray(data)
    grows = 1 if data.ndim > 1 else 0
    maxshape = tuple(None if axis == grows else size for axis, size in enumerate(data.shape))
    chunks = tuple(256 if axis == grows else size for axis, size in enumerate(data.shape))
    dset = group.create_dataset(name, fletcher32=True, data=data, maxshape=maxshape, chunks=chunks)
    dset.attrs["description"] = description
    _label_axes(dset, *labels)


_writes: dict[str, int] = {}


def kill_before_rename(path: Path) -> None:
    """Fault injection for the crash tests: LANDSCAPE_TEST_KILL_BEFORE_RENAME=NAME:N kills this process with
    SIGKILL during the N-th write of the file NAME, after the new copy is written, before it replaces the old."""
    target = os.environ.get("LANDSCAPE_TEST_KILL_BEFORE_RENAME")
    if target:
        _writes[path.name] = _writes.get(path.name, 0) + 1
        if target == f"{path.name}:{_writes[path.name]}":
            os.kill(os.getpid(), signal.SIGKILL)


def check_writable_folder(folder: Path, option: str) -> None:
    """Raise UsageError unless `folder` is, or can be created as, a writable folder; touches nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file, not a folder: give a folder")
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot create {folder}: {ancestor} is a file; choose another {option}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {folder}: {ancestor} is not a writable folder; choose another {option}")


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary copies of `path` left by a killed writer (call while holding the run's lock)."""
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        temp.unlink(missing_ok=True)


class WriteFailed(OSError):
    """Writing a file failed (no space left, a file-size limit, an I/O error); the old file is untouched."""

    def __init__(self, path: Path, cause: OSError):
        full = cause.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        reason = "no space left on the device (or a file-size limit)" if full else \
            f"{type(cause).__name__}: {' '.join(str(cause).split())[:200]}"
        super().__init__(f"{reason} while writing {Path(path).name}")
        self.path = Path(path)


def write_atomically(path: Path, write, *, replace: bool = True) -> None:
    """Write `path` through `write(buffer)` into memory, then to a temporary copy, fsync, rename into place (or
    link, if not `replace`).

    A reader, or a crash at any moment, sees the old file or the new one, never a mix. HDF5 and torch.save
    write only into memory, so a full disk or a file-size limit fails in a plain write here (WriteFailed),
    never inside the HDF5 library (whose failed writes end in a segmentation fault). With `replace=False`
    an existing `path` is never touched (FileExistsError).
    """
    buffer = io.BytesIO()
    write(buffer)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            with open(temp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise WriteFailed(path, exc) from None
        del buffer
        kill_before_rename(path)
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # atomic, and fails rather than replace a file created meanwhile
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        temp.unlink(missing_ok=True)


class RunWriter:
    """A run's record, held in memory and written whole to the run file at every flush.

    The record is small (one float per run and step, a few per epoch), so each flush rewrites the
    file through a temporary copy and a rename: the file on disk is always a complete, readable run,
    whatever happens to the process, and a reader may open it at any time while it trains.
    """

    def __init__(self, path: str | Path, *, config_json: str, lrs: list[float], attrs: dict,
                 probe_multipliers: list[float] | None = None, probe_direction: str = "update",
                 sharpness: dict | None = None):
        self.path = Path(path)
        runs = len(lrs)
        self.lrs = np.asarray(lrs, dtype=np.float64)
        self.attrs = {
            "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "status": "running", "message": "",
            "config": config_json, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python_version": platform.python_version(), "landscape_version": __version__,
            **{k: (str(v) if isinstance(v, str) else v) for k, v in attrs.items()},
        }
        self.train_loss = np.zeros((runs, 0), dtype=np.float32)
        self.train_epoch = np.zeros(0, dtype=np.int32)
        self.epoch = {name: np.zeros((runs, 0), dtype=dtype) for name, (dtype, _) in EPOCH_METRICS.items()}
        self.wall_time = np.zeros(0, dtype=np.float64)
        self.diverged_step = np.full(runs, -1, dtype=np.int64)
        self.stopped_epoch = np.full(runs, -1, dtype=np.int64)
        self.probe = None
        if probe_multipliers:
            self.probe = {"step": np.zeros(0, dtype=np.int64), "multipliers": np.asarray(probe_multipliers, dtype=np.float64),
                          "direction": probe_direction}
            for name, (axes, _) in PROBE_DATASETS.items():
                self.probe[name] = np.zeros((runs, 0, len(probe_multipliers)) if "multiplier" in axes else (runs, 0))
        self.sharpness = None
        if sharpness:  # attributes: top_k, images, iterations, bn, method
            self.sharpness = {"step": np.zeros(0, dtype=np.int64), "top": np.zeros((runs, 0, int(sharpness["top_k"]))),
                              "attrs": dict(sharpness)}

    @classmethod
    def continuing(cls, run: "Run", *, epochs: int) -> "RunWriter":
        """A writer holding `run`'s record cut back to its first `epochs` epochs (to resume from a checkpoint)."""
        writer = cls(run.path, config_json=run.attrs["config"], lrs=list(run.lrs), attrs={},
                     probe_multipliers=list(run.probe["multipliers"]) if run.probe is not None else None,
                     probe_direction=run.probe["direction"] if run.probe is not None else "update",
                     sharpness=run.sharpness["attrs"] if run.sharpness is not None else None)
        writer.attrs.update(run.attrs)
        steps = int(np.searchsorted(run.train_epoch, epochs))  # steps of the first `epochs` epochs
        writer.train_loss, writer.train_epoch = run.train_loss[:, :steps], run.train_epoch[:steps]
        writer.epoch = {name: run.epoch[name][:, :epochs] for name in EPOCH_METRICS}
        writer.wall_time = run.epoch["wall_time"][:epochs]
        writer.diverged_step = np.where(run.diverged_step < steps, run.diverged_step, -1)
        writer.stopped_epoch = np.where(run.stopped_epoch <= epochs, run.stopped_epoch, -1)
        if run.probe is not None:
            kept = int(np.searchsorted(run.probe["step"], steps))
            writer.probe["step"] = run.probe["step"][:kept]
            for name in PROBE_FIELDS:
                writer.probe[name] = run.probe[name][:, :kept]
        if run.sharpness is not None:
            kept = int(np.searchsorted(run.sharpness["step"], steps))
            writer.sharpness["step"] = run.sharpness["step"][:kept]
            writer.sharpness["top"] = run.sharpness["top"][:, :kept]
        return writer

    def create(self, overwrite: bool = False) -> None:
        """Write the (empty) run file; refuses to replace an existing one unless `overwrite`."""
        try:
            write_atomically(self.path, self._write, replace=overwrite)
        except FileExistsError:
            raise UsageError(f"{self.path} already exists: pass --overwrite to replace it, "
                             f"or choose another --out") from None

    def append_epoch(self, *, step_losses: np.ndarray, epoch: int, metrics: dict[str, np.ndarray],
                     wall_time: float, diverged_step: np.ndarray, stopped_epoch: np.ndarray,
                     probes: dict[str, np.ndarray] | None = None,
                     sharpness: dict[str, np.ndarray] | None = None) -> None:
        """Add one finished epoch (step losses [R, k], metrics each [R], wall time, divergences) and flush.

        If the flush fails (disk full...), the record goes back to what the file on disk holds.
        """
        saved = (self.train_loss, self.train_epoch, dict(self.epoch), self.wall_time, self.diverged_step,
                 self.stopped_epoch, dict(self.probe) if self.probe is not None else None,
                 dict(self.sharpness) if self.sharpness is not None else None)
        try:
            self._add_epoch(step_losses, epoch, metrics, wall_time, diverged_step, stopped_epoch, probes)
            if sharpness is not None and len(sharpness["step"]):
                self.sharpness["step"] = np.concatenate([self.sharpness["step"], sharpness["step"]])
                self.sharpness["top"] = np.concatenate([self.sharpness["top"], sharpness["top"]], axis=1)
            self.flush()
        except OSError:
            (self.train_loss, self.train_epoch, self.epoch, self.wall_time, self.diverged_step,
             self.stopped_epoch, self.probe, self.sharpness) = saved
            raise

    def _add_epoch(self, step_losses, epoch, metrics, wall_time, diverged_step, stopped_epoch, probes) -> None:
        self.train_loss = np.concatenate([self.train_loss, np.asarray(step_losses, dtype=np.float32)], axis=1)
        self.train_epoch = np.concatenate([self.train_epoch, np.full(step_losses.shape[1], epoch, dtype=np.int32)])
        for name, (dtype, _) in EPOCH_METRICS.items():
            self.epoch[name] = np.concatenate([self.epoch[name], np.asarray(metrics[name], dtype=dtype)[:, None]], axis=1)
        self.wall_time = np.append(self.wall_time, wall_time)
        self.diverged_step, self.stopped_epoch = np.asarray(diverged_step), np.asarray(stopped_epoch)
        if probes is not None and len(probes["step"]):
            self.probe["step"] = np.concatenate([self.probe["step"], probes["step"]])
            for name in PROBE_FIELDS:
                self.probe[name] = np.concatenate([self.probe[name], probes[name]], axis=1)

    def set_status(self, status: str, message: str = "") -> None:
        """Mark the file running, complete, failed or interrupted, with a one-line message, and flush."""
        assert status in STATUSES, status
        self.attrs["status"], self.attrs["message"] = status, message
        self.flush()

    def flush(self) -> None:
        """Rewrite the run file from the record, atomically."""
        write_atomically(self.path, self._write)

    def _write(self, path: Path) -> None:
        with h5py.File(path, "w") as f:
            f.attrs.update(self.attrs)
            runs = len(self.lrs)
            lr = f.create_dataset("lrs", fletcher32=True, data=self.lrs)
            lr.attrs["description"] = "learning rate of each run; the 'run' axis of every [R, ...] dataset"
            _label_axes(lr, "run")
            loss = f.create_dataset("train/loss", fletcher32=True, data=self.train_loss, maxshape=(runs, None),
                                    chunks=(runs, 4096), fillvalue=np.nan)
            loss.attrs["description"] = ("training loss of each run at each optimizer step, on the batch of that "
                                         "step before the update (train mode); NaN after a run diverged or stopped")
            _label_axes(loss, "run", "step")
            step_epoch = f.create_dataset("train/epoch", fletcher32=True, data=self.train_epoch, maxshape=(None,),
                                          chunks=(4096,))
            step_epoch.attrs["description"] = "epoch (from 0) that each step belongs to"
            _label_axes(step_epoch, "step")
            for name, (_, text) in EPOCH_METRICS.items():
                d = f.create_dataset(f"epoch/{name}", fletcher32=True, data=self.epoch[name], maxshape=(runs, None),
                                     chunks=(runs, 64))
                d.attrs["description"] = text
                _label_axes(d, "run", "epoch")
            wall = f.create_dataset("epoch/wall_time", fletcher32=True, data=self.wall_time, maxshape=(None,),
                                    chunks=(64,))
            wall.attrs.update(description="seconds spent training, at the end of each epoch (runs advance in "
                                          "lockstep and share one clock; a resumed run adds to it)", units="s")
            _label_axes(wall, "epoch")
            div = f.create_dataset("diverged_step", fletcher32=True, data=self.diverged_step)
            div.attrs["description"] = "first step whose loss was not finite, per run; -1 if the run never diverged"
            _label_axes(div, "run")
            stop = f.create_dataset("stopped_epoch", fletcher32=True, data=self.stopped_epoch)
            stop.attrs["description"] = ("epoch (from 1) after which early stopping ended the run; -1 if it was not "
                                         "stopped early")
            _label_axes(stop, "run")
            if self.probe is not None:
                self._write_probes(f, runs)
            if self.sharpness is not None:
                self._write_sharpness(f, runs)

    def _write_sharpness(self, f: h5py.File, runs: int) -> None:
        """The /sharpness group: measured steps and each run's top Hessian eigenvalues there."""
        group = f.create_group("sharpness")
        group.attrs.update(self.sharpness["attrs"])
        group.attrs["description"] = (
            "sharpness: the top Hessian eigenvalues of the mean training loss over a fixed, seeded subset of "
            "training images (attribute images), by Lanczos (attribute iterations, fixed), BatchNorm with batch "
            "statistics, dropout off; measured before the step's update")
        _growing(group, "step", self.sharpness["step"], "training step (index into /train/loss) of each measurement",
                 "measurement")
        _growing(group, "top", np.asarray(self.sharpness["top"], dtype=np.float64),
                 "largest Hessian eigenvalues of each run at each measured step, descending", "run", "measurement", "k")

    def _write_probes(self, f: h5py.File, runs: int) -> None:
        """The /probe group: probed steps, multipliers and one dataset per measure."""
        group = f.create_group("probe")
        group.attrs["direction"] = self.probe["direction"]
        group.attrs["description"] = (
            "Santurkar et al. (2018) probes: at each probed step, with w the weights before the step, "
            "d the probe direction ('update': w_next - w; 'gradient': -lr * grad) and m_j the multipliers, "
            "the loss and gradient at p_j = w + m_j d on the same batch")
        _growing(group, "step", self.probe["step"], "training step (index into /train/loss) of each probe", "probe")
        mult = group.create_dataset("multipliers", fletcher32=True, data=self.probe["multipliers"])
        mult.attrs["description"] = "step multipliers m_j"
        _label_axes(mult, "multiplier")
        for name, (axes, text) in PROBE_DATASETS.items():
            _growing(group, name, np.asarray(self.probe[name], dtype=np.float64), text, "run", *axes)


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
    sharpness: dict | None = None  # step [M], top [R, M, k], attrs

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
                probe["direction"] = str(f["probe"].attrs.get("direction", "update"))
            sharpness = None
            if "sharpness" in f:
                group = f["sharpness"]
                sharpness = {"step": group["step"][...], "top": group["top"][...],
                             "attrs": {k: v for k, v in group.attrs.items() if k != "description"}}
                sharpness["images"] = int(sharpness["attrs"].get("images", 0))
            run = Run(path=path, attrs=attrs, config=json.loads(attrs["config"]), lrs=f["lrs"][...],
                      train_loss=f["train/loss"][...], train_epoch=f["train/epoch"][...], epoch=epoch,
                      diverged_step=f["diverged_step"][...], stopped_epoch=f["stopped_epoch"][...], probe=probe,
                      sharpness=sharpness)
        check_consistent(run)
        return run
    except UsageError:
        raise
    except Exception as exc:  # h5py reports damage as OSError, KeyError, ValueError, RuntimeError...
        raise UsageError(f"{path}: unreadable run file, it may be truncated or corrupt "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None


def read_versioned(path: str | Path, format_name: str, version: int, writer: str, read):
    """Open one of our HDF5 files, check its `format` and `schema_version`, and return `read(file, attrs)`;
    UsageError (one line) when it is missing, foreign, too new, or damaged."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file; give a file written by `{writer}`")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            if attrs.get("format") != format_name:
                raise UsageError(f"{path}: not a {format_name} file (no format={format_name!r} attribute); give a "
                                 f"file written by `{writer}`")
            if int(attrs.get("schema_version", 0)) > version:
                raise UsageError(f"{path}: schema version {attrs['schema_version']} of {format_name} is newer than "
                                 f"this landscape ({__version__}); upgrade landscape to read it")
            return read(f, attrs)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path}: unreadable {format_name} file, it may be truncated or corrupt "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None


def check_consistent(run: Run) -> None:
    """Raise UsageError if a run file's parts disagree (hand-edited or written by something else)."""
    problem = None
    runs, steps = len(run.lrs), run.train_loss.shape[-1] if run.train_loss.ndim == 2 else -1
    epochs = run.epoch["test_acc"].shape[1] if run.epoch["test_acc"].ndim == 2 else -1
    if not isinstance(run.config, dict):
        problem = "its config attribute is not a JSON object"
    elif runs == 0 or run.lrs.ndim != 1:
        problem = "it holds no learning rate (/lrs is empty)"
    elif run.train_loss.ndim != 2 or run.train_loss.shape[0] != runs:
        problem = f"/train/loss has shape {run.train_loss.shape}, not [{runs} runs, steps]"
    elif run.train_epoch.shape != (steps,):
        problem = f"/train/epoch has {run.train_epoch.shape} entries for {steps} steps"
    elif any(v.shape != ((epochs,) if name == "wall_time" else (runs, epochs)) for name, v in run.epoch.items()):
        problem = "the /epoch datasets disagree in shape"
    elif run.diverged_step.shape != (runs,) or run.stopped_epoch.shape != (runs,):
        problem = "/diverged_step or /stopped_epoch does not have one entry per run"
    if problem:
        raise UsageError(f"{run.path}: inconsistent run file: {problem}; it was damaged or edited, "
                         f"rerun `landscape run` to recreate it")


def writer_alive(path: Path) -> bool:
    """Whether a process holds the run's writer lock (`RUN.h5.lock`, flock) right now; touches nothing."""
    import fcntl

    lock = Path(path).with_name(Path(path).name + ".lock")
    try:
        handle = open(lock, "r")
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        handle.close()
    return False


def shown_status(run: Run) -> str:
    """The status to show: a file that says `running` while no process writes it was interrupted (killed)."""
    if run.status == "running" and not writer_alive(run.path):
        return f"interrupted (writer gone; resume with: landscape run --resume {run.path})"
    return run.status


def never_completed(path: Path) -> bool:
    """True for a run file that no process writes and that holds no completed epoch (safe to replace)."""
    try:
        run = read_run(path)
    except UsageError:
        return False
    return run.epochs_done == 0 and run.status != "complete" and not writer_alive(path)


def read_runs(paths, need_steps: bool = False) -> tuple[list[Run], list[str]]:
    """Read every file it can; return the runs and one message per file it could not use."""
    runs, problems = [], []
    for path in paths:
        try:
            run = read_run(path)
        except UsageError as exc:
            problems.append(str(exc))
            continue
        if need_steps and run.steps == 0:
            problems.append(f"{path}: no completed epoch yet, nothing to plot; wait for the first epoch")
            continue
        runs.append(run)
    return runs, problems

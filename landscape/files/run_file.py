"""The run file: HDF5 schema version 1, its writer and its reader (numpy and h5py only).

One file holds one `landscape run`: R runs (one per learning rate) trained in lockstep.
Axis names are stored as HDF5 dimension labels ("run", "step", "epoch") and every dataset has a
`description` attribute, so a user with h5py alone can tell what each array means. The README
documents the same schema. Every dataset carries an HDF5 Fletcher-32 checksum, so a damaged chunk is
an error when read, never a wrong number. The writer opens the file only while it appends, so `landscape info`
and `landscape plot` can read a run that is still training.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from landscape import __version__
from landscape.errors import UsageError
from landscape.files.atomic import write_atomically
from landscape.files.attributes import FILE_NAME, FLAG, NUMBER, NUMBERS, STRING, WHOLE, check_kinds, wrong_kind
from landscape.files.hdf5 import open_ours
from landscape.files.lock import writer_alive

SCHEMA_VERSION = 1
FORMAT_NAME = "landscape-run"
STATUSES = ("running", "complete", "failed", "interrupted")
REDO = "rerun `landscape run` to recreate it"
# the /sharpness group's attributes that views convert (engine/sharpness.py writes them)
SHARPNESS_KINDS = {"top_k": WHOLE, "iterations": WHOLE, "cold_iterations": WHOLE, "warm_start": FLAG,
                   "check_every": WHOLE, "bn": STRING, "seed": WHOLE, "sharpness_method": STRING, "method": STRING,
                   "forward_passes": WHOLE}
# the kinds of the root attributes and of the stored config's entries that readers and views convert
ATTRIBUTE_KINDS = {"status": STRING, "message": STRING, "config": STRING, "model": STRING, "dataset": STRING,
                   "device": STRING, "source": STRING, "model_def": STRING, "engine": STRING,
                   "weights_file": FILE_NAME, "parameters": WHOLE, "model_size_mb": NUMBER, "image_size": WHOLE,
                   "num_classes": WHOLE, "steps_per_epoch": WHOLE, "train_images": WHOLE, "test_images": WHOLE,
                   "threads": WHOLE, "parent_file": STRING, "parent_lr": NUMBER, "branch_epoch": WHOLE,
                   "branch_step": WHOLE, "data_seed": WHOLE}
CONFIG_KINDS = {"model": STRING, "dataset": STRING, "optimizer": STRING, "schedule": STRING, "augment": STRING,
                "norm": STRING, "probe_direction": STRING, "width": NUMBER, "momentum": NUMBER,
                "weight_decay": NUMBER, "label_smoothing": NUMBER, "until_train_loss": NUMBER, "until_train_acc": NUMBER, "dropout": NUMBER, "nesterov": FLAG,
                "epochs": WHOLE, "batch_size": WHOLE, "seed": WHOLE, "image_size": WHOLE, "train_subset": WHOLE,
                "lrs": NUMBERS, "probe_multipliers": NUMBERS}

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

# name -> (axes, dtype, description); stored under /sharpness, growing along "measurement" or "check".
SHARPNESS_DATASETS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "step": (("measurement",), "int64", "training step (index into /train/loss) of each measurement, before its update"),
    "top": (("run", "measurement", "k"), "float64",
            "largest Hessian eigenvalues of each run at each measured step, descending (NaN: run stopped)"),
    "hvps": (("run", "measurement"), "int64", "Hessian-vector products each measurement used"),
    "check_step": (("check",), "int64", "steps where the estimate was checked by a cold Lanczos run to convergence"),
    "check_top": (("run", "check", "k"), "float64",
                  "the converged top eigenvalues at each checked step: the truth the estimate at that step is held to"),
}
SHARPNESS_AXES = {"measurement": "step", "check": "check_step"}  # growing axis -> the dataset of its steps

# /criterion (runs trained to a criterion, --until-train-loss / --until-train-acc): name -> (dtype, description)
CRITERION_DATASETS: dict[str, tuple[str, str]] = {
    "train_loss": ("float32", "mean cross-entropy on the whole training subset after the epoch (eval mode, no "
                              "augmentation, no label smoothing); NaN once the run stopped"),
    "train_acc": ("float32", "fraction of the whole training subset classified correctly after the epoch (eval "
                             "mode, no augmentation); NaN once the run stopped"),
}
CRITERION_METRICS = {"train_loss": "<", "train_acc": ">="}  # the criterion's metric -> how it is met


def criterion_text(metric: str, threshold: float) -> str:
    """'train loss < 0.01' or 'train acc >= 99%': a criterion as info and the studies write it."""
    if metric == "train_acc":
        return f"train acc >= {threshold * 100:g}%"
    return f"train loss < {threshold:g}"


def empty_sharpness(runs: int, top_k: int) -> dict[str, np.ndarray]:
    """Every /sharpness dataset with no measurement yet."""
    return {name: np.zeros([{"run": runs, "k": top_k}.get(axis, 0) for axis in axes], dtype=dtype)
            for name, (axes, dtype, _) in SHARPNESS_DATASETS.items()}


def join_along_growing_axis(old: np.ndarray, new: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
    """`old` and `new` joined along their growing axis (the one that is not run or k)."""
    axis = next(i for i, a in enumerate(axes) if a in SHARPNESS_AXES)
    return np.concatenate([old, np.asarray(new, dtype=old.dtype)], axis=axis)


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


class RunWriter:
    """A run's record, held in memory and written whole to the run file at every flush.

    The record is small (one float per run and step, a few per epoch), so each flush rewrites the
    file through a temporary copy and a rename: the file on disk is always a complete, readable run,
    whatever happens to the process, and a reader may open it at any time while it trains.
    """

    def __init__(self, path: str | Path, *, config_json: str, lrs: list[float], attrs: dict,
                 probe_multipliers: list[float] | None = None, probe_direction: str = "update",
                 sharpness: dict | None = None, criterion: tuple[str, float] | None = None):
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
        self.criterion = None
        if criterion:  # the metric and threshold a run trains to, each epoch's values, the epoch each met it
            self.criterion = {"metric": criterion[0], "threshold": float(criterion[1]),
                              "met_epoch": np.full(runs, -1, dtype=np.int64),
                              **{name: np.zeros((runs, 0), dtype=dtype) for name, (dtype, _) in CRITERION_DATASETS.items()}}
        self.sharpness = None
        if sharpness:  # the group's attributes: top_k, images, steps, method...
            self.sharpness = {**empty_sharpness(runs, int(sharpness["top_k"])), "attrs": dict(sharpness)}

    @classmethod
    def continuing(cls, run: "Run", *, epochs: int) -> "RunWriter":
        """A writer holding `run`'s record cut back to its first `epochs` epochs (to resume from a checkpoint)."""
        writer = cls(run.path, config_json=run.attrs["config"], lrs=list(run.lrs), attrs={},
                     probe_multipliers=list(run.probe["multipliers"]) if run.probe is not None else None,
                     probe_direction=run.probe["direction"] if run.probe is not None else "update",
                     sharpness=run.sharpness["attrs"] if run.sharpness is not None else None,
                     criterion=(run.criterion["metric"], run.criterion["threshold"]) if run.criterion else None)
        writer.attrs.update(run.attrs)
        steps = int(np.searchsorted(run.train_epoch, epochs))  # steps of the first `epochs` epochs
        writer.train_loss, writer.train_epoch = run.train_loss[:, :steps], run.train_epoch[:steps]
        writer.epoch = {name: run.epoch[name][:, :epochs] for name in EPOCH_METRICS}
        writer.wall_time = run.epoch["wall_time"][:epochs]
        writer.diverged_step = np.where(run.diverged_step < steps, run.diverged_step, -1)
        writer.stopped_epoch = np.where(run.stopped_epoch <= epochs, run.stopped_epoch, -1)
        if run.criterion is not None:
            writer.criterion["met_epoch"] = np.where(run.criterion["met_epoch"] <= epochs, run.criterion["met_epoch"], -1)
            for name in CRITERION_DATASETS:
                writer.criterion[name] = run.criterion[name][:, :epochs]
        if run.probe is not None:
            kept = int(np.searchsorted(run.probe["step"], steps))
            writer.probe["step"] = run.probe["step"][:kept]
            for name in PROBE_FIELDS:
                writer.probe[name] = run.probe[name][:, :kept]
        if run.sharpness is not None:
            for name, (axes, _, _) in SHARPNESS_DATASETS.items():
                if name not in run.sharpness:
                    continue  # a file from before the dataset existed
                axis = next(i for i, a in enumerate(axes) if a in SHARPNESS_AXES)
                kept = int(np.searchsorted(run.sharpness[SHARPNESS_AXES[axes[axis]]], steps))
                writer.sharpness[name] = np.take(run.sharpness[name], np.arange(kept), axis=axis)
        return writer

    def keep_only(self, run: int) -> None:
        """Keep run `run` alone, as the first run of this record (a branch continues one run of its parent)."""
        pick = slice(run, run + 1)
        self.lrs, self.train_loss = self.lrs[pick], self.train_loss[pick]
        self.epoch = {name: values[pick] for name, values in self.epoch.items()}
        self.diverged_step, self.stopped_epoch = self.diverged_step[pick], self.stopped_epoch[pick]
        if self.probe is not None:
            for name in PROBE_FIELDS:
                self.probe[name] = self.probe[name][pick]
        if self.criterion is not None:
            for name in (*CRITERION_DATASETS, "met_epoch"):
                self.criterion[name] = self.criterion[name][pick]
        if self.sharpness is not None:
            for name, (axes, _, _) in SHARPNESS_DATASETS.items():
                if "run" in axes:
                    self.sharpness[name] = np.take(self.sharpness[name], [run], axis=axes.index("run"))

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
                     sharpness: dict[str, np.ndarray] | None = None, criterion: dict[str, np.ndarray] | None = None) -> None:
        """Add one finished epoch (step losses [R, k], metrics each [R], wall time, divergences) and flush.

        `criterion` (runs trained to one): this epoch's train_loss and train_acc [R] and met_epoch [R] so far.

        If the flush fails (disk full...), the record goes back to what the file on disk holds.
        """
        saved = (self.train_loss, self.train_epoch, dict(self.epoch), self.wall_time, self.diverged_step,
                 self.stopped_epoch, dict(self.probe) if self.probe is not None else None,
                 dict(self.sharpness) if self.sharpness is not None else None,
                 dict(self.criterion) if self.criterion is not None else None)
        try:
            self._add_epoch(step_losses, epoch, metrics, wall_time, diverged_step, stopped_epoch, probes)
            if criterion is not None:
                for name, (dtype, _) in CRITERION_DATASETS.items():
                    self.criterion[name] = np.concatenate(
                        [self.criterion[name], np.asarray(criterion[name], dtype=dtype)[:, None]], axis=1)
                self.criterion["met_epoch"] = np.asarray(criterion["met_epoch"], dtype=np.int64)
            if sharpness is not None:
                for name, (axes, _, _) in SHARPNESS_DATASETS.items():
                    if name in sharpness:
                        self.sharpness[name] = join_along_growing_axis(self.sharpness[name], sharpness[name], axes)
            self.flush()
        except OSError:
            (self.train_loss, self.train_epoch, self.epoch, self.wall_time, self.diverged_step,
             self.stopped_epoch, self.probe, self.sharpness, self.criterion) = saved
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
            if self.criterion is not None:
                self._write_criterion(f)

    def _write_criterion(self, f: h5py.File) -> None:
        """The /criterion group: what each run trains to, its value after every epoch, the epoch it was met."""
        group = f.create_group("criterion")
        metric, threshold = self.criterion["metric"], self.criterion["threshold"]
        group.attrs.update(metric=metric, threshold=threshold, text=criterion_text(metric, threshold))
        group.attrs["description"] = (
            "training to a criterion: after every epoch the whole training subset is evaluated (eval mode); a run "
            f"stops after the first epoch whose `metric` is {CRITERION_METRICS[metric]} `threshold`, and "
            "--epochs caps the others")
        for name, (_, text) in CRITERION_DATASETS.items():
            _growing(group, name, self.criterion[name], text, "run", "epoch")
        met = group.create_dataset("met_epoch", fletcher32=True, data=self.criterion["met_epoch"])
        met.attrs["description"] = "epoch (from 1) after which the run met the criterion and stopped; -1: not met " \
                                   "(cap reached, diverged, or still training)"
        _label_axes(met, "run")

    def _write_sharpness(self, f: h5py.File, runs: int) -> None:
        """The /sharpness group: measured steps, each run's top Hessian eigenvalues there, their cost and checks."""
        group = f.create_group("sharpness")
        group.attrs.update(self.sharpness["attrs"])
        group.attrs["description"] = (
            "sharpness: the top Hessian eigenvalues of the mean training loss on the images of attribute `images`, "
            "by Lanczos (warm-started from the previous measurement's Ritz vectors when attribute warm_start is 1), "
            "BatchNorm with batch statistics, dropout off; measured before the step's update. check_*: the same "
            "measured cold and to convergence every check_every-th measurement")
        for name, (axes, _, text) in SHARPNESS_DATASETS.items():
            _growing(group, name, self.sharpness[name], text, *axes)

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
    criterion: dict | None = None  # metric, threshold, met_epoch [R], train_loss / train_acc [R, E]

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
    """Read a run file; raise UsageError if it is missing, not HDF5, not ours, too new, reads outside itself,
    is damaged or inconsistent."""
    path = Path(path)
    with open_ours(path, FORMAT_NAME, SCHEMA_VERSION, "landscape run", ATTRIBUTE_KINDS) as (f, attrs):
        epoch = {name: f[f"epoch/{name}"][...] for name in EPOCH_METRICS}
        epoch["wall_time"] = f["epoch/wall_time"][...]
        probe = None
        if "probe" in f:
            probe = {name: f[f"probe/{name}"][...] for name in ("step", "multipliers", *PROBE_FIELDS)}
            probe["direction"] = str(f["probe"].attrs.get("direction", "update"))
        sharpness = None
        if "sharpness" in f:
            group = f["sharpness"]
            sharpness = {name: group[name][...] for name in SHARPNESS_DATASETS if name in group}
            sharpness["attrs"] = {k: v for k, v in group.attrs.items() if k != "description"}
            check_kinds(sharpness["attrs"], SHARPNESS_KINDS, path, REDO)
            sharpness["images"] = sharpness["attrs"].get("images", 0)
        criterion = None
        if "criterion" in f:
            group = f["criterion"]
            criterion = {name: group[name][...] for name in (*CRITERION_DATASETS, "met_epoch")}
            criterion.update(metric=str(group.attrs.get("metric", "")), threshold=group.attrs.get("threshold"))
        config = json.loads(attrs["config"])
        run = Run(path=path, attrs=attrs, config=config, lrs=f["lrs"][...],
                  train_loss=f["train/loss"][...], train_epoch=f["train/epoch"][...], epoch=epoch,
                  diverged_step=f["diverged_step"][...], stopped_epoch=f["stopped_epoch"][...], probe=probe,
                  sharpness=sharpness, criterion=criterion)
    check_consistent(run)
    return run


def check_consistent(run: Run) -> None:
    """Raise UsageError if a run file's parts disagree (hand-edited or written by something else)."""
    problem = None
    runs, steps = len(run.lrs), run.train_loss.shape[-1] if run.train_loss.ndim == 2 else -1
    epochs = run.epoch["test_acc"].shape[1] if run.epoch["test_acc"].ndim == 2 else -1
    if not isinstance(run.config, dict):
        problem = "its config attribute is not a JSON object"
    elif wrong_kind(run.config, CONFIG_KINDS):
        problem = "in its config, " + wrong_kind(run.config, CONFIG_KINDS)
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
    elif run.criterion is not None:
        problem = criterion_problem(run.criterion, runs, epochs)
    if problem:
        raise UsageError(f"{run.path}: inconsistent run file: {problem}; it was damaged or edited, {REDO}")


def criterion_problem(criterion: dict, runs: int, epochs: int) -> str | None:
    """What is wrong with a /criterion group read from a file (None when it is sound)."""
    threshold = criterion["threshold"]
    if criterion["metric"] not in CRITERION_METRICS:
        return f"/criterion names the metric {criterion['metric']!r}, not one of {', '.join(CRITERION_METRICS)}"
    if isinstance(threshold, (bytes, str)) or np.ndim(threshold) or not np.isfinite(threshold):
        return "/criterion's threshold is not a number"
    if criterion["met_epoch"].shape != (runs,) or not np.issubdtype(criterion["met_epoch"].dtype, np.integer):
        return "/criterion/met_epoch does not hold one whole number per run"
    if any(criterion[name].shape != (runs, epochs) or criterion[name].dtype.kind != "f" for name in CRITERION_DATASETS):
        return "/criterion's datasets do not hold one number per run and epoch"
    return None


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

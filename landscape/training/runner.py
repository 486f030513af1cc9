"""Training R runs (one per learning rate) in lockstep and recording them into one HDF5 file.

All runs start from the same initial weights and see the same batch at every step, so they
differ only by learning rate. An engine (`loop.LockstepRuns`, or `fused.FusedRuns`) advances
every run by one step and returns the step's losses as a device tensor [R]; `record_epochs`
drives it over epochs, copies losses to the host in blocks of `log_every` steps (never per step),
checks for divergence there, evaluates after each epoch, appends to the run file and checkpoints.
`train` starts a run, `resume` continues one from its checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import platform
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscape.files.atomic import check_output, remove_stale_temporaries
from landscape.files.lock import WriterLock
from landscape.stopping import StopSignals, ignore_file_size_signal
from landscape.training.checkpoint import (checkpoint_path, load_checkpoint, random_state, remove_branch_points,
                                           restore_random_state, save_branch_point, save_checkpoint)
from landscape.options import DEFAULT_SHARPNESS_IMAGES
from landscape.training.config import RunConfig, format_lrs
from landscape.training.data import (Dataset, Normalizer, Split, eval_batches, load_dataset, steps_per_epoch,
                                     train_batches)
from landscape.errors import RunFailed, UsageError
from landscape.training.fused import FusedRuns
from landscape.engine.batches import BatchSet
from landscape.engine.devices import resolve_device, set_threads
from landscape.engine.sharpness import SharpnessTracker
from landscape.training.models import build_model, check_model_options, count_parameters, model_size_mb
from landscape.training.optim import make_optimizer
from landscape.training.schedules import lr_at_epoch
from landscape.training.loop import LockstepRuns
from landscape.engine.memory import check_model_fits
from landscape.engine.probe import ModelProbe
from landscape.machine import available_memory
from landscape.progress import bar, duration, live
from landscape.files.weights_file import SnapshotWriter, weights_path
from landscape.files.run_file import RunWriter, never_completed, read_run
from landscape.training.records import StepLosses, probes_to_host, sharpness_to_host


Engine = LockstepRuns | FusedRuns


def build_runs(config: RunConfig, dataset: Dataset, device: torch.device) -> tuple[Engine, nn.Module]:
    """The engine holding R identical copies of the model (initialised from `config.seed`), and that model."""
    torch.manual_seed(config.seed)
    base = build_model(config.model, width=config.width, num_classes=dataset.num_classes,
                       image_size=dataset.image_size, **config.model_options()).to(device)
    probe = ModelProbe(config.probe_multipliers, config.probe_direction, config.probe_batch) \
        if config.probe_every else None
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if choose_engine(config) == "fused":
        return FusedRuns(base, list(config.lrs), config.optimizer, momentum=config.momentum,
                         weight_decay=config.weight_decay, nesterov=config.nesterov, eps=config.eps,
                         label_smoothing=config.label_smoothing, probe=probe, autocast_dtype=autocast_dtype), base
    models = [copy.deepcopy(base) for _ in config.lrs]
    optimizers = [make_optimizer(config.optimizer, m.parameters(), lr=lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay, nesterov=config.nesterov, eps=config.eps)
                  for m, lr in zip(models, config.lrs)]
    return LockstepRuns(models, optimizers, probe, config.label_smoothing, autocast_dtype=autocast_dtype,
                        channels_last=config.channels_last, compile=config.compile), base


def choose_engine(config: RunConfig) -> str:
    """`--engine auto` is the loop: on CPU it measured faster than fused (benchmarks/bench_speed.py)."""
    return "loop" if config.engine == "auto" else config.engine


class Progress:
    """On a terminal, a bar per epoch (steps, losses, images per second, the epoch's and the run's time left);
    otherwise one line per epoch; nothing with --quiet."""

    def __init__(self, config: RunConfig, steps: int, enabled: bool = True, epochs_done: int = 0):
        self.config, self.steps, self.enabled = config, steps, enabled
        self.live = live(enabled)
        self.bar = None
        self.epochs_done = epochs_done
        self.started = time.perf_counter()

    def step(self, epoch: int, step: int, last_losses: np.ndarray) -> None:
        if not self.live:
            return
        if self.bar is None:
            self.bar = bar(self.steps, f"epoch {epoch + 1}/{self.config.epochs}", "step")
        self.bar.update(step - self.bar.n)
        rate = self.bar.format_dict.get("rate") or 0.0  # steps per second
        left = ((self.config.epochs - epoch) * self.steps - step) / rate if rate else float("nan")
        images = rate * self.config.batch_size * int(np.isfinite(last_losses).sum())
        losses = " ".join(f"{v:.3f}" for v in last_losses)
        self.bar.set_postfix_str(f"loss[{format_lrs(self.config.lrs)}] {losses} | {images:,.0f} img/s | run "
                                 f"{duration(left) if np.isfinite(left) else '?'} left", refresh=True)

    def epoch(self, epoch: int, test_acc: np.ndarray, seconds: float) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            accs = " ".join(f"{a:.3f}" for a in test_acc)
            sys.stderr.write(f"epoch {epoch + 1}/{self.config.epochs} done in {seconds:.1f}s, "
                             f"test acc[{format_lrs(self.config.lrs)}] {accs}\n")
            sys.stderr.flush()


class EarlyStopping:
    """Per-run early stopping on test accuracy: stop after `patience` epochs without a gain above `min_delta`.

    Report 004: patience 5, min_delta 0.1% (0.001). patience 0 never stops.
    """

    def __init__(self, runs: int, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best = np.full(runs, -np.inf)
        self.waited = np.zeros(runs, dtype=np.int64)

    def update(self, test_acc: np.ndarray) -> np.ndarray:
        """Take one epoch's accuracies; return a bool mask of runs to stop now (NaN never improves)."""
        improved = np.nan_to_num(test_acc, nan=-np.inf) > self.best + self.min_delta
        self.best = np.where(improved, test_acc, self.best)
        self.waited = np.where(improved, 0, self.waited + 1)
        return (self.waited >= self.patience) if self.patience else np.zeros_like(improved)


@dataclass
class TrainingState:
    """The loop's counters: what a checkpoint stores besides the engine and the random state.

    `epoch` epochs are complete ("global_step" steps). After an interruption (and in a branch point kept
    mid-epoch), `partial` holds the part of epoch `epoch` already done: its step count, step losses, correct
    counts and probes.
    """

    epoch: int
    global_step: int
    diverged_step: np.ndarray
    stopped_epoch: np.ndarray
    best_acc: np.ndarray
    best_epoch: np.ndarray
    early_best: np.ndarray
    early_waited: np.ndarray
    elapsed: float = 0.0
    partial: dict | None = None
    criterion_epoch: np.ndarray | None = None  # epoch (from 1) each run met its criterion; -1 not yet

    def __post_init__(self):
        if self.criterion_epoch is None:  # a fresh state, or a checkpoint from before criteria existed
            self.criterion_epoch = np.full(len(self.stopped_epoch), -1, dtype=np.int64)

    @classmethod
    def fresh(cls, runs: int) -> "TrainingState":
        return cls(epoch=0, global_step=0, diverged_step=np.full(runs, -1, dtype=np.int64),
                   stopped_epoch=np.full(runs, -1, dtype=np.int64), best_acc=np.full(runs, np.nan),
                   best_epoch=np.zeros(runs, dtype=np.int32), early_best=np.full(runs, -np.inf),
                   early_waited=np.zeros(runs, dtype=np.int64))

    def to_checkpoint(self) -> dict:
        """Tensors and plain values only (checkpoints load with weights_only=True)."""
        return as_tensors(dict(self.__dict__))

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainingState":
        return cls(**as_arrays(saved))


def as_tensors(value):
    """numpy arrays, at any depth of dicts and lists, as torch tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict):
        return {k: as_tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_tensors(v) for v in value]
    return value


def as_arrays(value):
    """The inverse of `as_tensors`."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: as_arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_arrays(v) for v in value]
    return value


def prepare(config: RunConfig, download: bool, progress: bool = False) -> tuple[torch.device, Dataset, Engine, nn.Module,
                                                        SharpnessTracker | None]:
    """Check the options, load the data, build the engine and the sharpness tracker; touches nothing on disk."""
    config.validate()
    check_model_options(config.model, config.model_options())
    set_threads(config.threads, hint=progress)
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_root, device=device, train_subset=config.train_subset,
                           download=download, seed=config.seed, image_size=config.image_size,
                           imagenette_size=config.imagenette_size)
    check_runs_fit(config, dataset, device)
    check_branch_steps(config, steps_per_epoch(len(dataset.train), config.batch_size))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runs, base = build_runs(config, dataset, device)
    return device, dataset, runs, base, sharpness_tracker(config, dataset) if config.sharpness_every else None


def check_runs_fit(config: RunConfig, dataset: Dataset, device: torch.device) -> None:
    """Refuse, before building anything, runs that cannot train: BatchNorm on batches of one image, or
    weights, optimizer state and activations larger than the device's memory."""
    batch = min(config.batch_size, len(dataset.train))
    uses_batchnorm = config.model.startswith("vgg_bn") or (config.model.startswith("resnet") and config.norm == "bn")
    if uses_batchnorm and batch < 2:
        raise UsageError(f"{config.model} normalises with BatchNorm, which needs at least 2 images per batch "
                         f"(got {batch}): raise --batch-size or --train-subset, or use a model without BatchNorm")

    def build() -> nn.Module:
        return build_model(config.model, width=config.width, num_classes=dataset.num_classes,
                           image_size=dataset.image_size, **{**config.model_options(), "pretrained": False})

    check_model_fits(build, name=f"{config.model} at --width {config.width:g}", runs=len(config.lrs),
                     batch_size=batch, image_size=dataset.image_size, device=device,
                     stacked=choose_engine(config) == "fused")
    if config.probe_every:  # the probe record (loss, gradient distance, distance per multiplier) stays in memory
        probes = config.epochs * steps_per_epoch(len(dataset.train), config.batch_size) // config.probe_every + 1
        need = len(config.lrs) * probes * len(config.probe_multipliers) * 3 * 8
        have = available_memory()
        if need > 0.25 * have:
            raise UsageError(f"--probe-multipliers: {len(config.probe_multipliers):,} multipliers at {probes:,} probes "
                             f"x {len(config.lrs)} runs need {need / 2 ** 30:,.1f} GiB of probe records, more than a "
                             f"quarter of the {have / 2 ** 30:,.1f} GiB available: give fewer multipliers (e.g. "
                             f"0.5:4:8) or a larger --probe-every")


def check_branch_steps(config: RunConfig, steps: int) -> None:
    """Refuse --branch-steps past the run's last step (`steps` per epoch)."""
    last = config.epochs * steps
    if config.branch_steps and config.branch_steps[-1] > last:
        raise UsageError(f"--branch-steps {config.branch_steps[-1]} is past the run's last step ({last}: "
                         f"{config.epochs} epochs of {steps} steps): give steps up to {last}")


def train(config: RunConfig, out: str | Path, *, overwrite: bool = False, download: bool = False,
          progress: bool = True, checkpoint_every: int = 1, keep_checkpoint: bool = False,
          on_checkpoint=None) -> Path:
    """Train one run per learning rate in lockstep and record them in the HDF5 file `out`.

    Bad options, data or output paths raise UsageError before anything is written. A checkpoint
    is saved beside `out` every `checkpoint_every` epochs (0: never) and on SIGINT/SIGTERM, and
    removed when the run completes unless `keep_checkpoint`. `on_checkpoint(out, epochs_done)` is called after
    every checkpoint (the ablation executors ship the files to where the results live).
    """
    out = Path(out)
    config.validate()
    ignore_file_size_signal()
    overwrite = overwrite or (out.is_file() and never_completed(out))  # a failed start blocks no retry
    check_output(out, overwrite)
    device, dataset, runs, base, tracker = prepare(config, download, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(out):
        check_output(out, overwrite)  # again, now that no other writer can slip in
        for leftover in (out, checkpoint_path(out), weights_path(out)):
            remove_stale_temporaries(leftover)
        writer = RunWriter(out, config_json=config.to_json(), lrs=list(config.lrs), attrs={
            "model": config.model, "dataset": config.dataset, "device": str(device),
            "torch_version": torch.__version__, "parameters": count_parameters(base),
            "model_size_mb": model_size_mb(base), "engine": type(runs).__name__, "image_size": dataset.image_size,
            "num_classes": dataset.num_classes, "steps_per_epoch": steps_per_epoch(len(dataset.train), config.batch_size),
            "train_images": len(dataset.train), "test_images": len(dataset.test), "host": platform.node(),
            "threads": torch.get_num_threads(),
            **({"weights_file": weights_path(out).name} if config.snapshots else {}),
        }, probe_multipliers=list(config.probe_multipliers) if config.probe_every else None,
            probe_direction=config.probe_direction, sharpness=tracker.attrs if tracker is not None else None,
            criterion=config.criterion)
        writer.create(overwrite)
        forget_replaced_run(out)
        snapshots = snapshot_writer(config, out)
        return drive(config, dataset, runs, writer, TrainingState.fresh(len(config.lrs)), device, snapshots, tracker,
                     progress=progress, checkpoint_every=checkpoint_every, keep_checkpoint=keep_checkpoint,
                     on_checkpoint=on_checkpoint, starting=True)


def forget_replaced_run(out: Path) -> None:
    """Remove the checkpoint, snapshots and branch points of the run that `out` replaces."""
    checkpoint_path(out).unlink(missing_ok=True)
    weights_path(out).unlink(missing_ok=True)
    remove_branch_points(out)


def snapshot_writer(config: RunConfig, out: Path) -> SnapshotWriter | None:
    """The writer of `out`'s weight snapshots, or None with --no-snapshots."""
    if not config.snapshots:
        return None
    return SnapshotWriter(weights_path(out), run_file=out.name, lrs=list(config.lrs), config_json=config.to_json(),
                          model=config.model)


def save_snapshot(snapshots: SnapshotWriter, runs: "Engine", *, epoch: int, step: int) -> None:
    """Copy every run's parameters and buffers to the host and add them to the weights file."""
    tensors = {name: value.detach().cpu().numpy() for name, value in runs.snapshot().items()}
    snapshots.add(epoch, step, tensors, runs.parameter_names())


def snapshot_due(config: RunConfig, epochs_done: int, runs: "Engine") -> bool:
    """After this epoch: every --snapshot-every epochs, and at the end (last epoch, or every run stopped)."""
    every = config.snapshot_every
    return epochs_done == config.epochs or not any(runs.active) or bool(every and epochs_done % every == 0)


def resume(path: str | Path, overrides: dict | None = None, *, download: bool = False, progress: bool = True,
           checkpoint_every: int = 1, keep_checkpoint: bool = False, on_checkpoint=None) -> tuple[Path, bool]:
    """Continue the run in `path` from its checkpoint; return (path, False) if it was already complete.

    `overrides` are options the user gave again: any that differs from the run's is refused, except `threads`
    (default: the threads the run used, so the resumed steps compute exactly as the first ones did).
    """
    path = Path(path)
    ignore_file_size_signal()
    run = read_run(path)
    config = RunConfig.from_json(run.attrs["config"])
    overrides = dict(overrides or {})
    # the machine's choice, not the run's: the threads given now, else those the run used (the same arithmetic)
    config.threads = overrides.pop("threads", 0) or int(run.attrs.get("threads") or 0) or config.threads
    differing = [f"--{k.replace('_', '-')} {v} (the run has {getattr(config, k)})"
                 for k, v in overrides.items() if getattr(config, k) != v]
    if differing:
        raise UsageError(f"cannot resume {path} with changed options: {'; '.join(differing)}; "
                         f"drop them, or start a new run with another --out")
    if run.status == "complete":
        return path, False
    device, dataset, runs, _, tracker = prepare(config, download, progress)
    with WriterLock(path):
        run = read_run(path)  # as it is now that we hold the lock
        for leftover in (path, checkpoint_path(path)):
            remove_stale_temporaries(leftover)
        saved = load_checkpoint(path)
        if saved is None and run.epochs_done:
            raise UsageError(f"{checkpoint_path(path)} is missing: resuming would restart from epoch 0 and drop the "
                             f"{run.epochs_done} epoch(s) recorded; to start over, rerun the same options with "
                             f"--out {path} --overwrite")
        state = TrainingState.fresh(len(config.lrs))
        if saved is not None:
            if saved.get("config") != run.attrs["config"]:
                raise UsageError(f"{checkpoint_path(path)} belongs to another run; delete it to restart {path}")
            state = TrainingState.from_checkpoint(saved["state"])
            runs.load_state_dict(saved["engine"])
            restore_random_state(saved["random"], device)
            if tracker is not None and "sharpness" in saved:
                tracker.load_state_dict(saved["sharpness"], device)
        writer = RunWriter.continuing(run, epochs=state.epoch)
        writer.set_status("running")
        remove_stale_temporaries(weights_path(path))
        snapshots = snapshot_writer(config, path)
        return drive(config, dataset, runs, writer, state, device, snapshots, tracker, progress=progress,
                     checkpoint_every=checkpoint_every, keep_checkpoint=keep_checkpoint,
                     on_checkpoint=on_checkpoint, starting=saved is None), True  # no checkpoint: from the start


def drive(config: RunConfig, dataset: Dataset, runs: Engine, writer: RunWriter, state: TrainingState,
          device: torch.device, snapshots: SnapshotWriter | None, tracker: SharpnessTracker | None, *,
          progress: bool, checkpoint_every: int, keep_checkpoint: bool, on_checkpoint=None,
          starting: bool = False) -> Path:
    """Run the remaining epochs under signal handling; set the final status; translate failures.

    `starting` (a new run or a new branch): first save the snapshot, branch point and checkpoint of `state` (a
    branch from mid-epoch saves only the checkpoint: snapshots and epoch branch points are taken between epochs)."""
    out = writer.path

    def content(state: TrainingState) -> dict:
        return {"config": writer.attrs["config"], "state": state.to_checkpoint(), "engine": runs.state_dict(),
                "random": random_state(device), **({"sharpness": tracker.state_dict()} if tracker is not None else {})}

    def save(state: TrainingState) -> None:
        save_checkpoint(out, content(state))
        if on_checkpoint is not None:
            on_checkpoint(out, state.epoch)

    def keep(state: TrainingState, step: int | None = None) -> None:
        save_branch_point(out, state.epoch, content(state), step=step)

    resume_line = f"resume with: landscape run --resume {out}"
    try:
        if starting:
            between_epochs = state.partial is None
            if snapshots is not None and between_epochs:  # the shared initialisation (a branch: where it starts)
                save_snapshot(snapshots, runs, epoch=state.epoch, step=state.global_step)
            if config.branch_points and between_epochs:
                keep(state)
            if state.global_step in config.branch_steps and between_epochs:
                keep(state, step=state.global_step)
            if checkpoint_every:
                save(state)  # a run killed before its first epoch's checkpoint resumes from the start
        with StopSignals() as signals:
            outcome = record_epochs(config, dataset, runs, writer, state, progress, signals,
                                    save if checkpoint_every else None, checkpoint_every, snapshots, tracker,
                                    keep if config.branch_points else None, keep if config.branch_steps else None)
        writer.set_status("complete", outcome)
    except Interrupted as stop:
        try:
            save(stop.state)
            writer.set_status("interrupted", str(stop))
        except OSError as exc:
            mark_failed(writer, f"{stop}, then {exc}")
            raise RunFailed(f"{stop}, but could not save: {exc}; the last good files are kept, free space and "
                            f"{resume_line}") from None
        raise RunFailed(f"{stop}; {resume_line}") from None
    except OSError as exc:
        mark_failed(writer, str(exc))
        raise RunFailed(f"could not go on: {exc}; the epochs saved before are intact, free space and "
                        f"{resume_line}") from None
    except BaseException as exc:
        mark_failed(writer, f"{type(exc).__name__}: {exc}")
        raise
    if not keep_checkpoint:
        checkpoint_path(out).unlink(missing_ok=True)
    return out


def mark_failed(writer: RunWriter, message: str) -> None:
    """Best effort: record status failed and why (the disk may be the problem; then the file keeps its last state)."""
    try:
        writer.set_status("failed", message)
    except OSError:
        pass


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `state` is where the loop stopped (mid-epoch)."""

    def __init__(self, message: str, state: TrainingState):
        super().__init__(message)
        self.state = state


def record_epochs(config: RunConfig, dataset: Dataset, runs: Engine, writer: RunWriter, state: TrainingState,
                  progress_on: bool, signals: StopSignals, save, checkpoint_every: int,
                  snapshots: SnapshotWriter | None = None, tracker: SharpnessTracker | None = None,
                  keep=None, keep_step=None) -> str:
    """The training loop: every epoch, step all runs, copy losses out in blocks, evaluate, append.

    Continues from `state` (mid-epoch too). `keep(state)` keeps a branch point at every snapshot epoch,
    `keep_step(state, step)` after every global step in `--branch-steps`. Returns a note on runs that diverged or
    stopped early.
    """
    normalize = Normalizer(dataset.mean, dataset.std, dataset.train.device)
    steps = steps_per_epoch(len(dataset.train), config.batch_size)
    early = EarlyStopping(len(runs), config.patience, config.min_delta)
    early.best, early.waited = state.early_best, state.early_waited
    progress = Progress(config, steps, progress_on, state.epoch)
    start = time.perf_counter() - state.elapsed
    for epoch in range(state.epoch, config.epochs):
        if not any(runs.active):
            break
        epoch_start = time.perf_counter()
        lrs = runs.set_learning_rates([lr_at_epoch(lr, epoch, schedule=config.schedule, epochs=config.epochs,
                                                   step_size=config.step_size, gamma=config.gamma,
                                                   milestones=config.milestones, cosine_extra=config.cosine_extra,
                                                   warmup_epochs=config.warmup_epochs) for lr in config.lrs])
        partial, state.partial = state.partial or {}, None
        step_losses = StepLosses(dataset.train.device)
        blocks: list[np.ndarray] = [partial["losses"]] if "losses" in partial else []
        correct = torch.as_tensor(partial.get("correct", np.zeros(len(runs))), dtype=torch.float32,
                                  device=dataset.train.device)
        probe_steps: list[int] = list(partial.get("probe_steps", []))
        probe_values: list[dict[str, torch.Tensor]] = [
            {k: torch.from_numpy(v[:, i]).to(dataset.train.device) for k, v in partial["probes"].items()}
            for i in range(len(probe_steps))
        ] if probe_steps else []
        done = int(partial.get("step", 0))
        sharp_steps: list[int] = list(partial.get("sharpness_steps", []))
        sharp_values: list[dict[str, torch.Tensor]] = [
            {k: torch.from_numpy(v).to(dataset.train.device) for k, v in record.items()}
            for record in partial.get("sharpness", [])]

        def take(landed: list[np.ndarray], blocks: list[np.ndarray] = blocks, epoch: int = epoch) -> None:
            for block in landed:  # the only host copies of step losses
                mark_divergence(block, state.global_step + sum(b.shape[1] for b in blocks), runs, state.diverged_step)
                blocks.append(block)
                progress.step(epoch, sum(b.shape[1] for b in blocks), block[:, -1])

        batches = train_batches(dataset.train, normalize, batch_size=config.batch_size, seed=config.order_seed,
                                epoch=epoch, augment=config.augment)
        for step, (images, labels) in enumerate(batches):
            if step < done:
                continue  # already trained before an interruption; the batch stream stays in step
            measuring = tracker is not None and (state.global_step + step) % config.sharpness_every == 0
            own_batch = (images, labels) if tracker is not None and tracker.batches is None else None
            if measuring and not tracker.needs_update:
                sharp_steps.append(state.global_step + step)
                sharp_values.append(tracker.measure(runs, state.global_step + step, own_batch))
            before = tracker.before_step(runs) if measuring and tracker.needs_update else None
            probing = bool(config.probe_every) and (state.global_step + step) % config.probe_every == 0
            losses, hits, probes = runs.train_step(images, labels, probe=probing)
            if before is not None:  # critical or directional: along the update just taken, from the weights before
                sharp_steps.append(state.global_step + step)
                sharp_values.append(tracker.measure_after(runs, before, state.global_step + step, own_batch, lrs))
            if probes is not None:
                probe_steps.append(state.global_step + step)
                probe_values.append(probes)
            step_losses.add(losses)
            correct += hits
            if (step + 1) % config.log_every == 0:
                step_losses.send()
                take(step_losses.landed())
            kept_here = keep_step is not None and state.global_step + step + 1 in config.branch_steps
            stopping = signals.received is not None  # read once a step
            if (stopping or kept_here) and step + 1 < steps:
                take(step_losses.drain())  # the epoch so far, on the host (values unchanged)
                so_far = {"step": step + 1, "losses": np.concatenate(blocks, axis=1),
                           "correct": correct.cpu().numpy(), "probe_steps": list(probe_steps),
                           "probes": {k: v for k, v in probes_to_host(probe_steps, probe_values).items()
                                      if k != "step" and v is not None},
                           "sharpness_steps": list(sharp_steps),
                           "sharpness": [{k: v.cpu().numpy() for k, v in record.items()} for record in sharp_values]}
                elapsed = time.perf_counter() - start
                if kept_here:
                    keep_step(dataclasses.replace(state, elapsed=elapsed, partial=so_far),
                              state.global_step + step + 1)
            if stopping and step + 1 < steps:
                state.elapsed, state.partial = elapsed, so_far
                name = signal.Signals(signals.received).name
                raise Interrupted(f"stopped by {name} at epoch {epoch + 1}, step {step + 1} of {steps}", state)
        take(step_losses.drain())
        epoch_losses = np.concatenate(blocks, axis=1)
        trained = np.array(runs.active)  # runs that trained through this epoch
        test_loss, test_correct = runs.evaluate(eval_batches(dataset.test, normalize, config.eval_batch_size))
        test_acc = test_correct.cpu().numpy() / len(dataset.test)
        stop_now = early.update(test_acc) & trained
        criterion = criterion_values(config, runs, dataset, normalize, trained, epoch, state)
        for run in np.flatnonzero(stop_now):
            state.stopped_epoch[run] = epoch + 1
        for run in np.flatnonzero(stop_now | (state.criterion_epoch == epoch + 1)):
            runs.stop(run)
        better = np.nan_to_num(test_acc, nan=-np.inf) > np.nan_to_num(state.best_acc, nan=-np.inf)
        state.best_acc = np.where(better, test_acc, state.best_acc)
        state.best_epoch = np.where(better, epoch + 1, state.best_epoch)
        metrics = {
            "lr": np.where(trained, lrs, np.nan),
            "train_loss": epoch_losses.mean(axis=1),
            "train_acc": np.where(trained, correct.cpu().numpy() / trained_images(len(dataset.train), config.batch_size),
                                  np.nan),
            "test_loss": test_loss.cpu().numpy() / len(dataset.test),
            "test_acc": test_acc,
            "best_test_acc": state.best_acc,
            "best_epoch": state.best_epoch,
        }
        state.global_step += epoch_losses.shape[1]
        state.epoch = epoch + 1
        state.elapsed = time.perf_counter() - start
        state.early_best, state.early_waited = early.best, early.waited
        writer.append_epoch(step_losses=epoch_losses, epoch=epoch, metrics=metrics, wall_time=state.elapsed,
                            diverged_step=state.diverged_step, stopped_epoch=state.stopped_epoch,
                            probes=probes_to_host(probe_steps, probe_values) if config.probe_every else None,
                            sharpness=sharpness_to_host(sharp_steps, sharp_values) if tracker is not None else None,
                            criterion=criterion)
        if snapshot_due(config, state.epoch, runs):
            if snapshots is not None:
                save_snapshot(snapshots, runs, epoch=state.epoch, step=state.global_step)
            if keep is not None:
                keep(state)  # a branch point (--branch-points) at every snapshot epoch
        if keep_step is not None and state.global_step in config.branch_steps:
            keep_step(state, state.global_step)  # a listed step that ends an epoch: the state between epochs
        if save is not None and (state.epoch % checkpoint_every == 0 or signals.received is not None):
            save(state)
        progress.epoch(epoch, metrics["test_acc"], time.perf_counter() - epoch_start)
        if signals.received is not None and state.epoch < config.epochs:
            name = signal.Signals(signals.received).name
            raise Interrupted(f"stopped by {name} after epoch {epoch + 1}", state)
    notes = [f"diverged: lr={','.join(f'{config.lrs[r]:g}' for r in np.flatnonzero(state.diverged_step >= 0))}"
             if (state.diverged_step >= 0).any() else "",
             f"stopped early: lr={','.join(f'{config.lrs[r]:g}' for r in np.flatnonzero(state.stopped_epoch >= 0))}"
             if (state.stopped_epoch >= 0).any() else "",
             criterion_note(config, state.criterion_epoch) if state.epoch >= config.epochs or not any(runs.active) else "",
             tracker.failure_note() if tracker is not None else ""]
    return "; ".join(n for n in notes if n)


def criterion_values(config: RunConfig, runs: Engine, dataset: Dataset, normalize: Normalizer, trained: np.ndarray,
                     epoch: int, state: TrainingState) -> dict[str, np.ndarray] | None:
    """With a criterion (--until-train-loss/--until-train-acc): evaluate the whole training subset (eval mode, no
    augmentation), mark in `state.criterion_epoch` the runs that meet it after this epoch, and return the values."""
    if config.criterion is None:
        return None
    loss, correct = runs.evaluate(eval_batches(dataset.train, normalize, config.eval_batch_size))
    values = {"train_loss": loss.cpu().numpy() / len(dataset.train),
              "train_acc": correct.cpu().numpy() / len(dataset.train)}
    metric, threshold = config.criterion
    value = np.nan_to_num(values[metric], nan=np.inf if metric == "train_loss" else -np.inf)
    met = (value < threshold if metric == "train_loss" else value >= threshold) & trained & (state.criterion_epoch < 0)
    state.criterion_epoch[met] = epoch + 1
    return {**values, "met_epoch": state.criterion_epoch}


def criterion_note(config: RunConfig, criterion_epoch: np.ndarray) -> str:
    """Which runs never met their criterion (the cap, --epochs, was reached or they diverged)."""
    missed = np.flatnonzero(criterion_epoch < 0)
    if config.criterion is None or not len(missed):
        return ""
    return f"criterion not met (cap of {config.epochs} epochs): lr={','.join(f'{config.lrs[r]:g}' for r in missed)}"


def sharpness_tracker(config: RunConfig, dataset: Dataset) -> SharpnessTracker:
    """The sharpness measurement of `--sharpness-every`: on a fixed seeded subset of the training images, or
    (`--sharpness-images batch`) on each measured step's own batch."""
    images = config.sharpness_images
    if images == "batch":
        batches = None
    else:
        split = dataset.train
        images = images or min(DEFAULT_SHARPNESS_IMAGES, len(split))  # the default adapts to a small subset
        if images > len(split):
            raise UsageError(f"--sharpness-images {images} exceeds the {len(split)} training images: give at most "
                             f"{len(split)}, or batch (each step's own batch)")
        index = torch.randperm(len(split), generator=torch.Generator().manual_seed(config.seed + 15_485_863))[:images]
        index = index.sort().values.to(split.images.device)
        subset = Split(split.images[index], split.labels[index], split.device)
        normalize = Normalizer(dataset.mean, dataset.std, dataset.train.device)
        batches = BatchSet(list(eval_batches(subset, normalize, config.batch_size)))
    return SharpnessTracker(batches, top_k=config.sharpness_top_k, steps=config.sharpness_iters,
                            cold_steps=config.sharpness_cold_iters, seed=config.seed, warm=config.sharpness_warm,
                            check_every=config.sharpness_check_every, images=images, method=config.sharpness_method)


def trained_images(n: int, batch_size: int) -> int:
    """Images seen per epoch (all of them, less a dropped trailing batch of one)."""
    return min(n, steps_per_epoch(n, batch_size) * batch_size)


def mark_divergence(block: np.ndarray, first_step: int, runs: Engine, diverged_step: np.ndarray) -> None:
    """Find runs whose loss turned non-finite in `block`, stop them, and NaN their later losses (in place)."""
    for run in range(block.shape[0]):
        bad = np.flatnonzero(~np.isfinite(block[run]))
        if runs.active[run] and bad.size:
            diverged_step[run] = first_step + bad[0]
            runs.stop(run)
        if diverged_step[run] >= 0:
            block[run, max(0, diverged_step[run] - first_step):] = np.nan


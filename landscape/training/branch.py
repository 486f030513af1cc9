"""Branching a run: a child that starts from one run of a parent at a kept point and goes on under its own data order.

The parent keeps its full training state at every snapshot epoch (`landscape run --branch-points`:
`RUN.h5.epoch_KKKK.ckpt`, the checkpoint's content) and after listed global steps (`--branch-steps`:
`RUN.h5.step_SSSSSSS.ckpt`, mid-epoch too). `branch` takes run `lr` of that state (weights, optimizer state,
BatchNorm statistics, step count, schedule position, counters, the part of the epoch done), writes the child's run
file with the parent's epochs completed by then, records the lineage (`parent_file`, `parent_lr`, `branch_epoch`,
`branch_step`, `data_seed`) and trains the remaining steps with the data order and augmentation seeded by
`data_seed`. With the parent's own order the child repeats the parent's remaining steps exactly (same device and
threads); with another seed the random state (dropout) is reseeded from it too. From mid-epoch, the child's rest of
that epoch is the same steps of its own order's permutation of the epoch (as open_lth does). Frankle et al. (2020)
branch this way to measure when training becomes stable to SGD noise.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from landscape.errors import UsageError
from landscape.files.atomic import check_outputs, remove_stale_temporaries
from landscape.files.lock import WriterLock, lock_file
from landscape.files.run_file import RunWriter, read_run
from landscape.files.weights_file import resolve_run, weights_path
from landscape.training.checkpoint import (branch_point_epochs, branch_point_path, branch_point_steps, checkpoint_path,
                                           load_checkpoint, restore_random_state)
from landscape.training.config import RunConfig
from landscape.training.data import load_dataset, steps_per_epoch
from landscape.training.runner import (TrainingState, drive, forget_replaced_run, prepare,
                                       snapshot_writer)

# options a child may set differently from its parent: where and how fast it runs, what it keeps
MAY_DIFFER = ("threads", "device", "log_every", "snapshots", "snapshot_every", "branch_points", "branch_steps")


def branch(parent: str | Path, out: str | Path, *, data_seed: int, epoch: int | None = None, step: int | None = None,
           lr: float | None = None,
           options: dict | None = None, overwrite: bool = False, download: bool = False, progress: bool = True,
           checkpoint_every: int = 1, keep_checkpoint: bool = False, on_checkpoint=None) -> Path:
    """Train the child of run `lr` of `parent` branched after `epoch` epochs (or after global step `step`), under the
    data order `data_seed`, into `out`. `options` are run options given again: they must equal the parent's,
    except those in MAY_DIFFER.
    `on_checkpoint(out, epochs_done)`: as for `training.runner.train`."""
    parent, out = Path(parent), Path(out)
    run = read_run(parent)
    config = RunConfig.from_json(run.attrs["config"])
    index = resolve_run(run.lrs, lr, None, parent)
    child = child_config(config, index, data_seed, dict(options or {}), parent)
    if (epoch is None) == (step is None):
        raise UsageError("give the branch point as an epoch (--epoch K) or a step (--step S), one of them")
    if step is None:
        check_branch_epoch(run, index, epoch, parent)
    else:
        check_branch_step(run, index, step, parent)
    check_outputs([out, weights_path(out), checkpoint_path(out), lock_file(out)], overwrite, inputs=[parent],
                  continued=[lock_file(out)])
    saved = load_checkpoint(parent, epoch, step=step)
    if saved is None or saved.get("config") != run.attrs["config"]:
        raise UsageError(f"{branch_point_path(parent, epoch, step=step)} is missing or belongs to another run: rerun "
                         f"the parent with --branch-points{' --branch-steps' if step is not None else ''}")
    state = one_run_state(TrainingState.from_checkpoint(saved["state"]), index)
    device, dataset, runs, _, tracker = prepare(child, download, progress)
    runs.load_state_dict(type(runs).select(saved["engine"], index))
    same_order = child.order_seed == config.order_seed
    restore_random_state(saved["random"] if same_order else {"seed": branch_seed(data_seed, epoch, step)}, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(out):
        check_outputs([out, weights_path(out), checkpoint_path(out)], overwrite, inputs=[parent])
        for leftover in (out, checkpoint_path(out), weights_path(out)):
            remove_stale_temporaries(leftover)
        done_in_epoch = int(state.partial["step"]) if state.partial else 0
        writer = child_writer(run, index, state.epoch, child, out, step=state.global_step + done_in_epoch,
                              parent=parent)
        writer.attrs["threads"] = torch.get_num_threads()
        writer.attrs["device"] = str(device)
        writer.create(overwrite)
        forget_replaced_run(out)
        return drive(child, dataset, runs, writer, state, device, snapshot_writer(child, out), tracker,
                     progress=progress, checkpoint_every=checkpoint_every, keep_checkpoint=keep_checkpoint,
                     on_checkpoint=on_checkpoint, starting=True)


def child_config(config: RunConfig, index: int, data_seed: int, options: dict, parent: Path) -> RunConfig:
    """The parent's config for its run `index` alone, with the child's data seed and machine options; UsageError
    naming every option given with another value than the parent's."""
    options.pop("data_seed", None)  # the child's own, given as `data_seed`
    differing = [f"--{k.replace('_', '-')} {v} (the parent has {getattr(config, k)})" for k, v in options.items()
                 if k not in MAY_DIFFER and getattr(config, k) != v]
    if differing:
        raise UsageError(f"a branch continues {parent} with its own options; these differ: {'; '.join(differing)}: "
                         f"drop them (only {', '.join('--' + k.replace('_', '-') for k in MAY_DIFFER)} may differ)")
    changes = {k: v for k, v in options.items() if k in MAY_DIFFER}
    return dataclasses.replace(config, lrs=(float(config.lrs[index]),), data_seed=data_seed, **changes).validate()


def check_branch_epoch(run, index: int, epoch: int, parent: Path) -> None:
    """Refuse a branch epoch the parent has no state for, or at which its run had already stopped."""
    kept = branch_point_epochs(parent)
    if not kept:
        raise UsageError(f"{parent} kept no branch points: rerun it with --branch-points (and --snapshot-every N to "
                         f"keep every N-th epoch)")
    if epoch > run.epochs_done:
        raise UsageError(f"--epoch {epoch} is past {parent}'s last epoch ({run.epochs_done}): pick one of "
                         f"{', '.join(map(str, kept))}")
    if epoch not in kept:
        raise UsageError(f"--epoch {epoch}: {parent} kept its state at epochs {', '.join(map(str, kept))}; pick one "
                         f"of those, or rerun it with a --snapshot-every that includes {epoch}")
    check_trained_until(run, index, epoch * int(run.attrs["steps_per_epoch"]), f"epoch {epoch}", parent)


def check_branch_step(run, index: int, step: int, parent: Path) -> None:
    """Refuse a branch step the parent kept no state after, or at which its run had already stopped."""
    kept = branch_point_steps(parent)
    if not kept:
        raise UsageError(f"{parent} kept no step branch points: rerun it with --branch-steps S1,S2,... (the global "
                         f"steps to branch after)")
    if step not in kept:
        last = run.epochs_done * int(run.attrs["steps_per_epoch"])
        past = f" (it trained {last} steps)" if step > max(last, kept[-1]) else ""
        raise UsageError(f"--step {step}: {parent} kept its state after steps {', '.join(map(str, kept))}{past}; "
                         f"pick one of those, or rerun it with --branch-steps including {step}")
    check_trained_until(run, index, step, f"step {step}", parent)


def check_trained_until(run, index: int, step: int, point: str, parent: Path) -> None:
    """Refuse a branch point (global `step`, `point` in words) after which run `index` no longer trained."""
    steps = int(run.attrs["steps_per_epoch"])
    diverged, stopped = int(run.diverged_step[index]), int(run.stopped_epoch[index])
    met = int(run.criterion["met_epoch"][index]) if run.criterion else -1
    stops = {f"diverged at step {diverged}": diverged,  # when: the step before which the run stopped training
             f"stopped early after epoch {stopped}": stopped * steps if stopped >= 0 else -1,
             f"met its criterion after epoch {met}": met * steps if met >= 0 else -1}
    for what, when in stops.items():
        if 0 <= when < step:
            raise UsageError(f"{parent}: run lr={run.lrs[index]:g} {what}, before {point}: branch at an earlier "
                             f"point")


def one_run_state(state: TrainingState, index: int) -> TrainingState:
    """The loop's counters of run `index` alone (and of the part of an epoch done, for a mid-epoch branch point):
    every array's first axis is the runs."""
    def pick(value):
        if isinstance(value, np.ndarray):
            return value[index:index + 1]
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        if isinstance(value, list):
            return [pick(v) for v in value]
        return value

    return dataclasses.replace(state, **{name: pick(value) for name, value in vars(state).items()})


def child_writer(run, index: int, epoch: int, child: RunConfig, out: Path, *, step: int, parent: Path) -> RunWriter:
    """The child's record: the parent's first `epoch` epochs of run `index`, the child's config and its lineage."""
    writer = RunWriter.continuing(run, epochs=epoch)
    writer.keep_only(index)
    writer.path = out
    writer.attrs.update(config=child.to_json(), status="running", message="", host=platform.node(),
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        parent_file=parent_reference(parent, out), parent_lr=float(run.lrs[index]),
                        branch_epoch=epoch, branch_step=step, data_seed=child.order_seed)
    if child.snapshots:
        writer.attrs["weights_file"] = weights_path(out).name
    else:
        writer.attrs.pop("weights_file", None)
    return writer


def parent_reference(parent: Path, out: Path) -> str:
    """The parent's path relative to the child's folder when they share a root, else absolute."""
    try:
        return os.path.relpath(parent.resolve(), out.resolve().parent)
    except ValueError:  # another drive
        return str(parent.resolve())


def branch_seed(data_seed: int, epoch: int | None, step: int | None = None) -> int:
    """The global random seed (dropout, per-image augmentation) of a child with its own data order, branched after
    `epoch` epochs or after global `step`."""
    point = epoch * 7919 if step is None else step * 104_729 + 3
    return (data_seed * 1_000_003 + point + 17) % 2 ** 63



def step_of(epoch: float, steps_per_epoch: int) -> int:
    """The global step a fractional epoch falls on: the nearest, halves rounded up."""
    return math.floor(epoch * steps_per_epoch + 0.5)


def steps_of_epochs(config: RunConfig, epochs: tuple[float, ...], download: bool = False) -> tuple[int, ...]:
    """The global steps that fractional `epochs` fall on in a run of `config` (its data read to count its steps)."""
    dataset = load_dataset(config.dataset, config.data_root, device=torch.device("cpu"), download=download,
                           train_subset=config.train_subset, seed=config.seed, image_size=config.image_size,
                           imagenette_size=config.imagenette_size)
    steps = steps_per_epoch(len(dataset.train), config.batch_size)
    return tuple(sorted({step_of(epoch, steps) for epoch in epochs}))


def branch_point_of(parent: Path, epoch: int | float) -> dict:
    """`branch`'s keyword for a branch `epoch` of `parent`: a whole epoch as it is, a fraction as its step."""
    if isinstance(epoch, int):
        return {"epoch": epoch}
    return {"step": step_of(epoch, int(read_run(parent).attrs["steps_per_epoch"]))}

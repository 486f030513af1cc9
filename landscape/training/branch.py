"""Branching a run: a child that starts from one run of a parent at a kept epoch and goes on under its own data order.

The parent keeps its full training state at every snapshot epoch (`landscape run --branch-points`:
`RUN.h5.epoch_KKKK.ckpt`, the checkpoint's content). `branch` takes run `lr` of that state (weights, optimizer
state, BatchNorm statistics, step count, schedule position, counters), writes the child's run file with the
parent's first K epochs of that run, records the lineage (`parent_file`, `parent_lr`, `branch_epoch`,
`branch_step`, `data_seed`) and trains the remaining epochs with the data order and augmentation seeded by
`data_seed`. With the parent's own order the child repeats the parent's remaining epochs exactly (same device and
threads); with another seed the random state (dropout) is reseeded from it too. Frankle et al. (2020) branch
this way to measure when training becomes stable to SGD noise.
"""
from __future__ import annotations

import dataclasses
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
from landscape.training.checkpoint import (branch_point_epochs, branch_point_path, checkpoint_path, load_checkpoint,
                                           restore_random_state)
from landscape.training.config import RunConfig
from landscape.training.runner import (TrainingState, drive, forget_replaced_run, prepare,
                                       snapshot_writer)

# options a child may set differently from its parent: where and how fast it runs, what it keeps
MAY_DIFFER = ("threads", "device", "log_every", "snapshots", "snapshot_every", "branch_points")


def branch(parent: str | Path, out: str | Path, *, epoch: int, data_seed: int, lr: float | None = None,
           options: dict | None = None, overwrite: bool = False, download: bool = False, progress: bool = True,
           checkpoint_every: int = 1, keep_checkpoint: bool = False, on_checkpoint=None) -> Path:
    """Train the child of run `lr` of `parent` branched after `epoch` epochs, under the data order `data_seed`,
    into `out`. `options` are run options given again: they must equal the parent's, except those in MAY_DIFFER.
    `on_checkpoint(out, epochs_done)`: as for `training.runner.train`."""
    parent, out = Path(parent), Path(out)
    run = read_run(parent)
    config = RunConfig.from_json(run.attrs["config"])
    index = resolve_run(run.lrs, lr, None, parent)
    child = child_config(config, index, data_seed, dict(options or {}), parent)
    check_branch_epoch(run, index, epoch, parent)
    check_outputs([out, weights_path(out), checkpoint_path(out), lock_file(out)], overwrite, inputs=[parent],
                  continued=[lock_file(out)])
    saved = load_checkpoint(parent, epoch)
    if saved is None or saved.get("config") != run.attrs["config"]:
        raise UsageError(f"{branch_point_path(parent, epoch)} is missing or belongs to another run: rerun the parent "
                         f"with --branch-points")
    state = one_run_state(TrainingState.from_checkpoint(saved["state"]), index)
    device, dataset, runs, _, tracker = prepare(child, download, progress)
    runs.load_state_dict(type(runs).select(saved["engine"], index))
    same_order = child.order_seed == config.order_seed
    restore_random_state(saved["random"] if same_order else {"seed": branch_seed(data_seed, epoch)}, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(out):
        check_outputs([out, weights_path(out), checkpoint_path(out)], overwrite, inputs=[parent])
        for leftover in (out, checkpoint_path(out), weights_path(out)):
            remove_stale_temporaries(leftover)
        writer = child_writer(run, index, epoch, child, out, step=state.global_step, parent=parent)
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
    diverged = run.diverged_step[index]
    stops = {f"diverged at step {diverged}": diverged // run.attrs["steps_per_epoch"] if diverged >= 0 else -1,
             f"stopped early after epoch {run.stopped_epoch[index]}": run.stopped_epoch[index],
             f"met its criterion after epoch {run.criterion['met_epoch'][index] if run.criterion else -1}":
                 run.criterion["met_epoch"][index] if run.criterion else -1}
    for what, when in stops.items():  # `when`: the epoch in which (or after which) the run stopped training
        if 0 <= when < epoch:
            raise UsageError(f"{parent}: run lr={run.lrs[index]:g} {what}, before epoch {epoch}: branch at an "
                             f"earlier epoch")


def one_run_state(state: TrainingState, index: int) -> TrainingState:
    """The loop's counters of run `index` alone."""
    return dataclasses.replace(state, **{name: value[index:index + 1] for name, value in vars(state).items()
                                         if isinstance(value, np.ndarray)})


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


def branch_seed(data_seed: int, epoch: int) -> int:
    """The global random seed (dropout, per-image augmentation) of a child with its own data order."""
    return (data_seed * 1_000_003 + epoch * 7919 + 17) % 2 ** 63


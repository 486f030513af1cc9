"""Checkpoints beside a run file, and the lock that keeps a second writer away.

`RUN.h5.ckpt` holds everything needed to continue a run exactly: the engine's weights and
optimizer states, torch's random state, the loop's counters (epoch, step, divergence, early
stopping, best accuracy) and, after an interruption, the part of the epoch already done. It is
written like the run file (temporary copy, fsync, rename), so a crash never leaves half of one.
The writer's lock is `files.lock.WriterLock`.

Branch points (`--branch-points`): the same content, kept at every snapshot epoch as `RUN.h5.epoch_KKKK.ckpt`, so
that `landscape run --branch-from RUN.h5 --epoch K` can continue one of its runs from there.
"""
from __future__ import annotations

from pathlib import Path

import torch

from landscape.errors import UsageError
from landscape.files.atomic import companions, write_atomically


def checkpoint_path(run_path: str | Path) -> Path:
    """Where the checkpoint of `run_path` lives."""
    run_path = Path(run_path)
    return run_path.with_name(run_path.name + ".ckpt")


def save_checkpoint(run_path: str | Path, state: dict) -> None:
    """Save `state` (tensors, numbers, strings, lists, dicts) atomically beside the run file."""
    write_atomically(checkpoint_path(run_path), lambda temp: torch.save(state, temp))


def branch_point_path(run_path: str | Path, epoch: int) -> Path:
    """Where the training state of `run_path` after `epoch` epochs is kept (`--branch-points`)."""
    run_path = Path(run_path)
    return run_path.with_name(f"{run_path.name}.epoch_{epoch:04d}.ckpt")


def branch_point_epochs(run_path: str | Path) -> list[int]:
    """The epochs at which `run_path` kept its training state, ascending."""
    run_path = Path(run_path)
    epochs = []
    for path in companions(run_path):
        digits = path.name[len(run_path.name) + len(".epoch_"):-len(".ckpt")]
        if path.name.startswith(run_path.name + ".epoch_") and digits.isdigit():
            epochs.append(int(digits))
    return sorted(epochs)


def save_branch_point(run_path: str | Path, epoch: int, state: dict) -> None:
    """Keep `state` (a checkpoint's content) as the branch point of `run_path` at `epoch`, atomically."""
    write_atomically(branch_point_path(run_path, epoch), lambda temp: torch.save(state, temp))


def remove_branch_points(run_path: str | Path) -> None:
    """Delete the branch points of a run being replaced."""
    for epoch in branch_point_epochs(run_path):
        branch_point_path(run_path, epoch).unlink(missing_ok=True)


def load_checkpoint(run_path: str | Path, epoch: int | None = None) -> dict | None:
    """The checkpoint of `run_path` (or its branch point at `epoch`), or None if there is none; UsageError if it
    is damaged."""
    path = checkpoint_path(run_path) if epoch is None else branch_point_path(run_path, epoch)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if epoch is not None:
            raise UsageError(f"{path}: damaged branch point ({type(exc).__name__}); branch at another epoch, or "
                             f"rerun the parent with --branch-points") from None
        raise UsageError(f"{path}: damaged checkpoint ({type(exc).__name__}); delete it to restart the run from "
                         f"scratch with --resume, or start a new run") from None


def random_state(device: torch.device) -> dict:
    """torch's global random state (CPU, and the CUDA device in use)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: dict, device: torch.device) -> None:
    """Put back a saved random state; {"seed": S} (a branch with its own data order) seeds every device instead."""
    if "seed" in state:
        torch.manual_seed(int(state["seed"]))
        return
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)

"""Checkpoints beside a run file, and the lock that keeps a second writer away.

`RUN.h5.ckpt` holds everything needed to continue a run exactly: the engine's weights and
optimizer states, torch's random state, the loop's counters (epoch, step, divergence, early
stopping, best accuracy) and, after an interruption, the part of the epoch already done. It is
written like the run file (temporary copy, fsync, rename), so a crash never leaves half of one.
The writer's lock is `files.lock.WriterLock`.

Branch points: the same content, kept at every snapshot epoch as `RUN.h5.epoch_KKKK.ckpt` (`--branch-points`)
and after chosen global steps as `RUN.h5.step_SSSSSSS.ckpt` (`--branch-steps`, mid-epoch too: then with the part
of the epoch done, as after an interruption), so that `landscape run --branch-from RUN.h5 --epoch K` (or `--step S`)
can continue one of its runs from there.
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


def branch_point_path(run_path: str | Path, epoch: int | None = None, *, step: int | None = None) -> Path:
    """Where the training state of `run_path` after `epoch` epochs (`--branch-points`), or after global step `step`
    (`--branch-steps`), is kept."""
    run_path = Path(run_path)
    if step is not None:
        return run_path.with_name(f"{run_path.name}.step_{step:07d}.ckpt")
    return run_path.with_name(f"{run_path.name}.epoch_{epoch:04d}.ckpt")


def kept_points(run_path: str | Path, kind: str) -> list[int]:
    """The epochs (`kind` "epoch") or steps ("step") at which `run_path` kept its training state, ascending."""
    run_path = Path(run_path)
    prefix = f"{run_path.name}.{kind}_"
    numbers = []
    for path in companions(run_path):
        digits = path.name[len(prefix):-len(".ckpt")]
        if path.name.startswith(prefix) and path.name.endswith(".ckpt") and digits.isdigit():
            numbers.append(int(digits))
    return sorted(numbers)


def branch_point_epochs(run_path: str | Path) -> list[int]:
    """The epochs at which `run_path` kept its training state, ascending."""
    return kept_points(run_path, "epoch")


def branch_point_steps(run_path: str | Path) -> list[int]:
    """The global steps after which `run_path` kept its training state (`--branch-steps`), ascending."""
    return kept_points(run_path, "step")


def save_branch_point(run_path: str | Path, epoch: int, state: dict, *, step: int | None = None) -> None:
    """Keep `state` (a checkpoint's content) as the branch point of `run_path` at `epoch` (or at global step
    `step`), atomically."""
    write_atomically(branch_point_path(run_path, epoch, step=step), lambda temp: torch.save(state, temp))


def remove_branch_points(run_path: str | Path) -> None:
    """Delete the branch points of a run being replaced."""
    for epoch in branch_point_epochs(run_path):
        branch_point_path(run_path, epoch).unlink(missing_ok=True)
    for step in branch_point_steps(run_path):
        branch_point_path(run_path, step=step).unlink(missing_ok=True)


def load_checkpoint(run_path: str | Path, epoch: int | None = None, *, step: int | None = None) -> dict | None:
    """The checkpoint of `run_path` (or its branch point at `epoch`, or at global step `step`), or None if there is
    none; UsageError if it is damaged."""
    kept = epoch is not None or step is not None
    path = branch_point_path(run_path, epoch, step=step) if kept else checkpoint_path(run_path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if kept:
            raise UsageError(f"{path}: damaged branch point ({type(exc).__name__}); branch at another point, or "
                             f"rerun the parent") from None
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

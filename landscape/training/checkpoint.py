"""Checkpoints beside a run file, and the lock that keeps a second writer away.

`RUN.h5.ckpt` holds everything needed to continue a run exactly: the engine's weights and
optimizer states, torch's random state, the loop's counters (epoch, step, divergence, early
stopping, best accuracy) and, after an interruption, the part of the epoch already done. It is
written like the run file (temporary copy, fsync, rename), so a crash never leaves half of one.
The writer's lock is `files.lock.WriterLock`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from landscape.errors import UsageError
from landscape.files.atomic import write_atomically


def checkpoint_path(run_path: str | Path) -> Path:
    """Where the checkpoint of `run_path` lives."""
    run_path = Path(run_path)
    return run_path.with_name(run_path.name + ".ckpt")


def save_checkpoint(run_path: str | Path, state: dict) -> None:
    """Save `state` (tensors, numbers, strings, lists, dicts) atomically beside the run file."""
    write_atomically(checkpoint_path(run_path), lambda temp: torch.save(state, temp))


def load_checkpoint(run_path: str | Path) -> dict | None:
    """The checkpoint of `run_path`, or None if there is none; UsageError if it is damaged."""
    path = checkpoint_path(run_path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"{path}: damaged checkpoint ({type(exc).__name__}); delete it to restart the run from "
                         f"scratch with --resume, or start a new run") from None


def random_state(device: torch.device) -> dict:
    """torch's global random state (CPU, and the CUDA device in use)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)

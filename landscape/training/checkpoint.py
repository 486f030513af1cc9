"""Checkpoints beside a run file, and the lock that keeps a second writer away.

`RUN.h5.ckpt` holds everything needed to continue a run exactly: the engine's weights and
optimizer states, torch's random state, the loop's counters (epoch, step, divergence, early
stopping, best accuracy) and, after an interruption, the part of the epoch already done. It is
written like the run file (temporary copy, fsync, rename), so a crash never leaves half of one.
`RUN.h5.lock` is held with flock for a writer's whole life; the kernel drops it when the process
dies, so a lock left by a killed process is simply taken over.
"""
from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

import torch

from landscape.errors import UsageError
from landscape.files.run_file import write_atomically


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


class RunLock:
    """An exclusive lock on a run file for as long as one process writes it (context manager)."""

    def __init__(self, run_path: str | Path):
        run_path = Path(run_path)
        self.path = run_path.with_name(run_path.name + ".lock")
        self.handle = None
        self.created = False

    def __enter__(self) -> "RunLock":
        self.created = not self.path.exists()
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"{self.path.with_suffix('')} is being written by {holder}; wait for it to finish, "
                             f"or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {platform.node()}")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # still locked by us, so nobody else holds this file
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()

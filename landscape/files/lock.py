"""One writer per output: `<file>.lock`, held with flock for the writer's whole life (no torch).

The kernel drops the lock when the process dies, so a lock left by a killed writer is simply taken
over; `writer_alive` tells a reader whether a file that says `running` still has its writer.
"""
from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

from landscape.errors import UsageError
from landscape.files.atomic import lock_file


class WriterLock:
    """An exclusive lock on an output file for as long as one process writes it (context manager); its folder is
    created first when missing."""

    def __init__(self, run_path: str | Path):
        run_path = Path(run_path)
        self.path = lock_file(run_path)
        self.handle = None
        self.created = False

    def __enter__(self) -> "WriterLock":
        self.created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)  # the output's folder, as every writing command needs
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(f"{self.path.with_suffix('')} is being written by {holder}; wait for it to finish, "
                             f"or stop it first") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {platform.node()}")
            handle.flush()
        except OSError as exc:  # a full disk or quota: no lock is left behind, and the error is one line
            self.path.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)
            try:
                handle.close()  # closes the file even when flushing what could not be written fails again
            except OSError:
                pass
            raise UsageError(f"cannot write {self.path} ({exc.strerror or exc}): free space on "
                             f"{self.path.parent}, or write elsewhere") from None
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # still locked by us, so nobody else holds this file
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def writer_alive(path: Path) -> bool:
    """Whether a process holds the writer lock of `path` (`<file>.lock`, flock) right now; touches nothing."""
    lock = lock_file(Path(path))
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


def current_status(status: str, path: Path | None) -> str:
    """A file's status as it stands: one that says `running` while no process holds its writer lock was stopped
    without saying so (killed), so it is `interrupted`."""
    if status == "running" and path is not None and not writer_alive(path):
        return "interrupted"
    return status

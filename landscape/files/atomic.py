"""Writing files so that nothing is ever half-written, and checking where a command may write (no torch).

`write_atomically` builds a file in memory, writes it to a temporary copy, fsyncs and renames it into
place: a reader, or a crash at any moment, sees the old file or the new one. `check_output` refuses,
before anything is computed, an output that exists (without `overwrite`), is a folder, lies in a folder
that cannot be written, or is one of the command's own inputs (even with `overwrite`).
"""
from __future__ import annotations

import errno
import io
import os
import signal
from pathlib import Path

from landscape.errors import UsageError

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


def check_output(out: Path, overwrite: bool, inputs=(), option: str = "--out") -> None:
    """Raise UsageError if `out` cannot be written, without touching the disk.

    Never an input of the same command (`inputs`), even with `overwrite`; an existing file only with it."""
    out = Path(out)
    for given in inputs:
        if Path(given).exists() and out.exists() and os.path.samefile(given, out):
            raise UsageError(f"{option} {out} is one of this command's inputs: choose another {option}")
        if Path(given).resolve() == out.resolve():
            raise UsageError(f"{option} {out} is one of this command's inputs: choose another {option}")
    if out.is_dir():
        raise UsageError(f"{option} {out} is a folder: give a file path such as {out / 'out.h5'}")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists: pass --overwrite to replace it, or choose another {option}")
    check_writable_folder(out.parent, option)

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


def withdraw_output(out: Path, resume: bool, mark_interrupted) -> None:
    """After a refusal once the work began (a budget exceeded): a new output is removed, so nothing is left of the
    command; a resumed one is kept, `mark_interrupted()` setting it back to resumable."""
    if resume:
        mark_interrupted()
    else:
        out.unlink(missing_ok=True)


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


FIGURE_FORMATS = ("png", "pdf")  # every figure is written in these formats, with its data as CSV beside them
LONGEST_NAME = 255 - len(".lock") - len(".4194304.tmp") - 1  # the name, its lock and its temporary copy must fit


def figure_files(stem: Path) -> list[Path]:
    """The files a figure saved under `stem` writes: one per format and its CSV."""
    return [stem.parent / f"{stem.name}.{ext}" for ext in (*FIGURE_FORMATS, "csv")]


def lock_file(path: Path) -> Path:
    """The writer lock beside an output."""
    return path.with_name(path.name + ".lock")


def companions(path: Path) -> list[Path]:
    """The files an input brings with it: a run file's snapshots (`<run>.weights.h5`), the checkpoint of a run
    (`<run>.ckpt`) or of a curve (`<out>.curve.pt`), a run's branch points; only those that exist."""
    path = Path(path)
    around = [path.with_name(path.stem + ".weights.h5"), path.with_name(path.name + ".ckpt"),
              path.with_name(path.name + ".curve.pt")]
    name = "".join(f"[{c}]" if c in "*?[" else c for c in path.name)
    kept = sorted(path.parent.glob(name + ".epoch_*.ckpt")) + sorted(path.parent.glob(name + ".step_*.ckpt"))
    return [path] + [p for p in around if p.exists()] + kept  # a run's branch points (--branch-points, --branch-steps)


def same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs(outputs, overwrite: bool, inputs=(), option: str = "--out", continued=()) -> None:
    """Raise UsageError, touching nothing, unless every file a command will write can be written: `outputs` (the
    result first, then its figures, CSVs, checkpoints, locks) are never one of the command's inputs or the files
    those bring (`companions`), even with `overwrite`; never two of them one file; never a folder, never a name too
    long to write; an existing one only with `overwrite`, or when the command continues it (`continued`, e.g. the
    result and its checkpoint under --resume)."""
    outputs = [Path(p) for p in outputs]
    main = outputs[0]
    read = [q for given in inputs if given is not None for q in companions(Path(given))]
    continued = [Path(p) for p in continued]
    seen: dict[Path, Path] = {}
    for out in outputs:
        what = f"{option} {out}" if out == main else f"{option} {main} would write {out}, which"
        if len(out.name.encode()) > LONGEST_NAME:  # first: asking the file system about such a name fails
            raise UsageError(f"{option}: the file name {out.name[:40]}... is {len(out.name.encode())} bytes long; "
                             f"give a name of at most {LONGEST_NAME} bytes")
        for given in read:
            if same_file(given, out):
                raise UsageError(f"{what} is one of this command's inputs" +
                                 (f" (it comes with {given})" if given not in map(Path, inputs) else "") +
                                 f": choose another {option}")
        key = out.resolve()
        if key in seen:
            raise UsageError(f"{option} {main}: {seen[key].name} and {out.name} would be one file ({out}): choose "
                             f"another {option}" + (" (a path file ends in .h5)" if main.suffix != ".h5" else ""))
        seen[key] = out
        if out.is_dir():
            raise UsageError(f"{what} is a folder: give a file path such as {out / 'out.h5'}")
        if out.exists() and not overwrite and not any(same_file(out, c) for c in continued):
            raise UsageError(f"{out} already exists: pass --overwrite to replace it, or choose another {option}")
    for folder in {out.parent for out in outputs}:
        check_writable_folder(folder, option)


def check_output(out: Path, overwrite: bool, inputs=(), option: str = "--out") -> None:
    """`check_outputs` of a command that writes one file (and its lock)."""
    out = Path(out)
    check_outputs([out, lock_file(out)], overwrite, inputs, option, continued=[lock_file(out)])

"""Shared fixtures: the real CIFAR-10 subset (skipped with a reason where absent) and small run files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One thread per process, in this process and every command a test starts: pytest runs one worker per core, and
# two OpenMP threads per worker would stall each other at every barrier (the suite took 690 s instead of 5xx).
# Tests that need more threads say so (--threads, or an environment without this variable).
os.environ.setdefault("OMP_NUM_THREADS", "1")
DATA_ENV = "LANDSCAPE_TEST_DATA"


def real_data_root() -> Path | None:
    """Folder holding cifar-10-batches-py/: $LANDSCAPE_TEST_DATA, else ../shared/data beside the repo."""
    candidates = [os.environ.get(DATA_ENV), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip(f"real CIFAR-10 subset not found: set {DATA_ENV} to the folder holding cifar-10-batches-py/")
    return root


@pytest.fixture(scope="session")
def tiny_config():
    """A run that takes about a second on CPU: synthetic data, width 1/16, 2 rates, 2 epochs, one thread (runs that
    are compared bit for bit must share their arithmetic, whatever the machine's load)."""
    from landscape.training.config import RunConfig

    def make(**overrides) -> RunConfig:
        base = dict(model="vgg_bn", lrs=(1e-3, 3e-4), width=1 / 16, dataset="synthetic", train_subset=256,
                    epochs=2, batch_size=32, eval_batch_size=256, log_every=3, device="cpu", threads=1)
        base.update(overrides)
        return RunConfig(**base)

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config) -> Path:
    """A finished run file of `tiny_config()`, made once per session."""
    from landscape.training.runner import train

    return train(tiny_config(), tmp_path_factory.mktemp("runs") / "tiny.h5", progress=False)


# No correctness test waits on the clock: a subprocess is waited for until it exits or prints what the test awaits,
# and this guard only ends a test that hangs (a busy machine may be many times slower than a quiet one).
HANG_GUARD = 1800


def cut_at_epoch_three(monkeypatch, config, path: Path) -> None:
    """Train `config` into `path` with the run file's flush of epoch 3 failing (a full disk): the file keeps epochs 1
    and 2 and the checkpoint, as after a kill; the writer is restored afterwards."""
    import errno

    import landscape.files.run_file as store
    from landscape.errors import RunFailed
    from landscape.training.runner import train

    real, calls = store.write_atomically, {"n": 0}

    def fail_epoch_three(target, write, replace=True):
        calls["n"] += target.name == path.name
        if target.name == path.name and calls["n"] == 4:  # the run file: create, epoch 1, epoch 2, then epoch 3
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(target, write, replace=replace)

    monkeypatch.setattr(store, "write_atomically", fail_epoch_three)
    with pytest.raises(RunFailed):
        train(config, path, progress=False)
    monkeypatch.setattr(store, "write_atomically", real)


def wait_for(condition, process=None, poll: float = 0.05):
    """Poll `condition()` until it holds; fail (with the process's output) if `process` ends first or the hang
    guard passes."""
    import time

    started = time.monotonic()
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before the awaited event: "
                                 f"{process.communicate()}")
        if time.monotonic() - started > HANG_GUARD:
            raise AssertionError("the awaited event did not come within the hang guard")
        time.sleep(poll)


def read_until(stream, marker: str) -> str:
    """Lines of `stream` up to and including the first that contains `marker` (fails at end of stream)."""
    seen = ""
    for line in iter(stream.readline, ""):
        seen += line
        if marker in line:
            return seen
    raise AssertionError(f"the output ended without {marker!r}:\n{seen}")


def descendants(pid: int) -> list[int]:
    """The processes started, directly or not, by process `pid` (read from /proc): a test signals only these, never
    a process found by name across the machine."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # ended meanwhile
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    """The process's command line as it shows itself now ('' once it has ended)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""

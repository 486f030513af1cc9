"""Where the work runs: the device by name, and the CPU threads torch uses."""
from __future__ import annotations

import functools
import sys
from contextlib import contextmanager

import torch

from landscape.errors import UsageError
from landscape.machine import cores_busy_elsewhere, idle_cores, usable_cores
from landscape.options import check_device_name, check_threads


def resolve_device(name: str | torch.device | None, option: str = "--device",
                   default: torch.device | None = None) -> torch.device:
    """'auto' (or None) picks `default`, else CUDA when available; 'cuda' without a GPU is a usage error."""
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "auto"):
        if default is not None:
            return default
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(option, name)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name} asked for, but torch sees no CUDA GPU: use {option} cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"{option} {name}: torch sees {torch.cuda.device_count()} GPU(s); give cuda:0.."
                             f"{torch.cuda.device_count() - 1}")
    return torch.device(name)


TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before any command set another
AUTO = "auto"  # threads chosen from the load at the start: faster beside other work, not reproducible


def default_threads() -> int:
    """torch's own choice, capped at the cores this process may use (its affinity, as a scheduler sets it): the same
    number whatever else runs on the machine, so the same command gives the same numbers (results depend on the
    thread count through the order of floating-point sums)."""
    return max(1, min(TORCH_DEFAULT_THREADS, usable_cores()))


def load_aware_threads() -> int:
    """`--threads auto`: the default, but never more threads than the cores that other processes do not keep busy
    right now (`machine.idle_cores`): an OpenMP thread that shares a core with other work stalls all the others at
    every barrier (benchmarks/bench_threads.py measures it). Faster on a busy machine; the count, and so the
    rounding, depends on the moment."""
    return max(1, min(TORCH_DEFAULT_THREADS, idle_cores()))


def resolve_threads(threads: int | str | None) -> int:
    """The number of threads a `threads` option means: N, 0/None (`default_threads`) or 'auto'."""
    if threads == AUTO:
        return load_aware_threads()
    return threads or default_threads()


def busy_hint(threads: int) -> str | None:
    """A line for a user at a terminal when other processes keep some of this process's cores busy, else None."""
    busy = round(cores_busy_elsewhere())
    idle = load_aware_threads()
    if busy < 1 or threads <= idle:
        return None
    return (f"{busy} core(s) busy elsewhere: --threads {idle} (or auto) is faster here and gives different rounding; "
            f"the default ({threads}) keeps results identical whatever the load")


def set_threads(threads: int | str | None, option: str = "--threads", hint: bool = False) -> int:
    """Use `threads` CPU threads (N, 0/None: `default_threads()`, 'auto': `load_aware_threads()`); return the
    number in use. With `hint`, a busy machine and the default on a terminal, say that fewer would be faster."""
    check_threads(option, threads or 0)
    torch.set_num_threads(resolve_threads(threads))
    chosen = torch.get_num_threads()
    if hint and not threads and sys.stderr.isatty():
        line = busy_hint(chosen)
        if line:
            print(line, file=sys.stderr)
    return chosen


@contextmanager
def call_threads(threads: int | str | None, option: str = "threads"):
    """The Python API's `threads=`: that many CPU threads for the call, then torch's setting as it was. None: the
    caller's own `torch.set_num_threads` if they changed torch's default, else `default_threads()`; 'auto':
    `load_aware_threads()`."""
    check_threads(option, threads or 0)
    before = torch.get_num_threads()
    chosen = resolve_threads(threads) if threads else (before if before != TORCH_DEFAULT_THREADS else default_threads())
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)


def with_threads(function):
    """An API function run under `call_threads` of its keyword argument `threads` (in its signature, default None)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with call_threads(kwargs.get("threads")):
            return function(*args, **kwargs)

    return wrapper

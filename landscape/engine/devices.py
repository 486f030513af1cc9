"""Where the work runs: the device by name, and the CPU threads torch uses."""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch

from landscape.errors import UsageError
from landscape.machine import idle_cores
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


def default_threads() -> int:
    """torch's own choice, but never more threads than the cores this process may use that other processes do not
    keep busy right now (`machine.idle_cores`): an OpenMP thread that shares a core with other work stalls all the
    others at every barrier (benchmarks/bench_threads.py measures it)."""
    return max(1, min(TORCH_DEFAULT_THREADS, idle_cores()))


def set_threads(threads: int | None, option: str = "--threads") -> int:
    """Use `threads` CPU threads (0 or None: `default_threads()`); return the number in use."""
    check_threads(option, threads or 0)
    torch.set_num_threads(threads or default_threads())
    return torch.get_num_threads()


@contextmanager
def call_threads(threads: int | None, option: str = "threads"):
    """The Python API's `threads=`: that many CPU threads for the call, then torch's setting as it was. None: the
    caller's own `torch.set_num_threads` if they changed torch's default, else `default_threads()`."""
    check_threads(option, threads or 0)
    before = torch.get_num_threads()
    chosen = threads or (before if before != TORCH_DEFAULT_THREADS else default_threads())
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

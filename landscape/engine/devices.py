"""Where the work runs: the device by name, and the CPU threads torch uses."""
from __future__ import annotations

import torch

from landscape.errors import UsageError
from landscape.options import check_device_name, check_threads, usable_cores


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
    """torch's own choice, but never more threads than the cores this process may use."""
    return max(1, min(TORCH_DEFAULT_THREADS, usable_cores()))


def set_threads(threads: int | None, option: str = "--threads") -> int:
    """Use `threads` CPU threads (0 or None: `default_threads()`); return the number in use."""
    check_threads(option, threads or 0)
    torch.set_num_threads(threads or default_threads())
    return torch.get_num_threads()

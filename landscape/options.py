"""Checks of option values shared by every command and the Python API (no torch).

Each raises `UsageError` with one line naming the option, what was wrong and what to give instead.
The option is named as the caller's user sees it: `--bn` on the command line, `bn` in Python.
"""
from __future__ import annotations

import math

from landscape.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PROBE_DIRECTIONS = ("update", "gradient")  # along the optimizer's step, or -lr * gradient
SHARPNESS_METHODS = ("lanczos", "critical", "directional")
SEED_LIMIT = 2 ** 32
DEFAULT_SHARPNESS_IMAGES = 2048  # --sharpness-images 0: this many, or all the training images when fewer


def option_name(option: str, dash: str = "--") -> str:
    """An option as its caller writes it: `--max-steps` on the command line (`dash` "--"), `max_steps` in Python."""
    return f"{dash}{option}" if dash else option.replace("-", "_")


def choose(option: str, value, allowed: tuple) -> None:
    """Raise UsageError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise UsageError(f"{option} {value!r} is unknown: choose one of {', '.join(map(str, allowed))}")


def positive(option: str, value) -> None:
    """Raise UsageError unless `value` is a positive integer."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise UsageError(f"{option} must be a positive integer, got {value}")


def non_negative(option: str, value) -> None:
    """Raise UsageError unless `value` is an integer >= 0."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise UsageError(f"{option} must be 0 or a positive integer, got {value}")


def at_most(option: str, value: int, limit: int, why: str) -> None:
    """Raise UsageError if `value` exceeds `limit` (`why` says where the limit comes from)."""
    if value > limit:
        raise UsageError(f"{option} {value:,} is more than {why} ({limit:,}): give at most {limit:,}")


def in_range(option: str, value, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> None:
    """Raise UsageError unless `value` is a finite number within [low, high] (ends open as asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise UsageError(f"{option} must be in {left}{low:g}, {high:g}{right}, got {value}")


def check_seed(option: str, seed) -> None:
    """A seed torch and numpy both accept: a whole number in [0, 2**32)."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT):
        raise UsageError(f"{option} must be a whole number from 0 to {SEED_LIMIT - 1}, got {seed}")


def check_device_name(option: str, name) -> None:
    """auto, cpu, cuda or cuda:N (what exists is checked when the device is resolved)."""
    text = str(name)
    if text in DEVICES or (text.startswith("cuda:") and text[5:].isdigit()):
        return
    raise UsageError(f"{option} {text!r} is unknown: choose auto, cpu, cuda or cuda:N")


THREADS_HELP = ("CPU threads: 0, the cores this process may use (the same whatever the load, so the same numbers); "
                "auto, fewer when other processes keep cores busy (faster there, other rounding); or N")


def check_threads(option: str, threads) -> None:
    """0 (the reproducible default), 'auto' (from the load) or a positive number of threads."""
    if threads == "auto":
        return
    if isinstance(threads, str):
        raise UsageError(f"{option} {threads!r} is unknown: give a number of threads, 0 (the default) or auto")
    non_negative(option, threads)


def parse_threads(text: str, option: str = "--threads") -> int | str:
    """The command line's --threads: a whole number or auto."""
    text = str(text).strip()
    value = int(text) if text.isdigit() else text
    check_threads(option, value)
    return value


def check_gpus(option: str, gpus: float) -> None:
    """A GPU request Ray can schedule: a fraction up to 1, or a whole number above it."""
    in_range(option, gpus, 0, math.inf)
    if gpus > 1 and gpus != int(gpus):
        raise UsageError(f"{option} {gpus:g}: above 1 a task takes whole GPUs; give a fraction up to 1 "
                         f"(0.25 packs four on one GPU) or a whole number")


def check_sharpness_options(top_k: int, steps: int, cold_steps: int, check_every: int, dash: str = "--",
                            method: str = "lanczos") -> None:
    """One line per bad value, named as the command line names it (`dash` "--"; "" for Python, with underscores)."""
    def name(option: str) -> str:
        return option_name(option, dash)

    choose(name("sharpness-method"), method, SHARPNESS_METHODS)
    if method != "lanczos" and top_k != 1:
        raise UsageError(f"{name('sharpness-top-k')} {top_k}: the {method} sharpness is one number per measurement; "
                         f"give 1, or {name('sharpness-method')} lanczos for the top k eigenvalues")
    positive(name("sharpness-top-k"), top_k)
    positive(name("sharpness-iters"), steps)
    positive(name("sharpness-cold-iters"), cold_steps)
    non_negative(name("sharpness-check-every"), check_every)
    for option, value in (("sharpness-iters", steps), ("sharpness-cold-iters", cold_steps)):
        if top_k > value:
            raise UsageError(f"{name('sharpness-top-k')} {top_k} needs at least as many {name(option)} (got {value}): "
                             f"raise {name(option)}")
